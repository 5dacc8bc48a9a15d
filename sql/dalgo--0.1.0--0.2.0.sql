-- dalgo 0.1.0 -> 0.2.0
--
-- Every change to an installed object made while 0.2.0 is under work goes
-- both into its sql/ fragment (which builds the fresh install script) and
-- here, in the same commit.  test/t/upgrade_equals_fresh.pl checks that a
-- 0.1.0 database updated with this script equals a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION dalgo UPDATE TO '0.2.0'" to load this file. \quit

-- dump: pg_dump is a real backup.  Every dalgo table is an extension
-- configuration table (its rows are dumped), and dalgo.restoring() lets the
-- triggers that create versions, compute next_run_at, create warehouses and
-- write the audit trail leave restored rows as they were dumped.
CREATE FUNCTION dalgo.restoring() RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_restoring_sql'
	LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.restoring() IS
	'True while the session restores a dump: row_security is off (pg_dump and pg_restore set it) and both the current and the outer role bypass row-level security. Triggers return early on restored INSERTs then. App roles cannot write dalgo tables with row_security off, so they never see true';
-- Every role that writes a dalgo table runs the triggers that ask.
GRANT EXECUTE ON FUNCTION dalgo.restoring() TO PUBLIC;

DO $$
DECLARE
	r regclass;
BEGIN
	FOR r IN SELECT c.oid FROM pg_catalog.pg_class c
			 WHERE c.relnamespace = 'dalgo'::regnamespace AND c.relkind IN ('r', 'p', 'S')
			 ORDER BY c.relname
	LOOP
		PERFORM pg_catalog.pg_extension_config_dump(r, '');
	END LOOP;
END
$$;

-- dump: early return on restored INSERTs (transformations, warehouse connections, schedules).
CREATE OR REPLACE FUNCTION dalgo.create_warehouse_for_connection() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF dalgo.restoring() THEN RETURN NULL; END IF;	-- restored: the schema is in the dump
	PERFORM dalgo.warehouse_schema(NEW.organization_id);
	RETURN NULL;
END
$$;
CREATE OR REPLACE FUNCTION dalgo.transformation_before_save() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	deps uuid[];
BEGIN
	IF TG_OP = 'INSERT' AND dalgo.restoring() THEN RETURN NEW; END IF;	-- restored as dumped
	IF TG_OP = 'UPDATE' AND NEW.recipe IS NOT DISTINCT FROM OLD.recipe THEN
		NEW.current_version := OLD.current_version;
		RETURN NEW;
	END IF;
	PERFORM dalgo.check_recipe_sql(NEW.organization_id, dalgo.compile_recipe(NEW.organization_id, NEW.recipe));
	deps := dalgo.recipe_dependencies(NEW.recipe);
	IF NEW.id = ANY (deps) OR EXISTS (
		WITH RECURSIVE walk(id) AS (
			SELECT unnest(deps)
			UNION
			SELECT d FROM walk JOIN dalgo.transformations t ON t.id = walk.id,
				unnest(dalgo.recipe_dependencies(t.recipe)) d)
		SELECT FROM walk WHERE walk.id = NEW.id) THEN
		RAISE EXCEPTION 'recipe: transformation % would depend on itself (a dependency cycle)', NEW.id
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NEW.output_table_name IS NOT NULL AND EXISTS (
		SELECT FROM dalgo.sources s WHERE s.organization_id = NEW.organization_id AND s.deleted_at IS NULL
		AND s.warehouse_table_name = NEW.output_table_name) THEN
		RAISE EXCEPTION 'output table "%" is a source''s warehouse table', NEW.output_table_name
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	NEW.current_version := CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE OLD.current_version + 1 END;
	RETURN NEW;
END
$$;
CREATE OR REPLACE FUNCTION dalgo.transformation_record_version() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP = 'INSERT' AND dalgo.restoring() THEN RETURN NULL; END IF;	-- its versions are restored too
	INSERT INTO dalgo.transformation_versions (organization_id, transformation_id, version_number, recipe,
											   generated_sql, created_by_id, change_description)
	VALUES (NEW.organization_id, NEW.id, NEW.current_version, NEW.recipe,
			dalgo.compile_recipe(NEW.organization_id, NEW.recipe), dalgo.current_user_id(),
			nullif(current_setting('dalgo.change_description'), ''));
	RETURN NULL;
END
$$;
CREATE OR REPLACE FUNCTION dalgo.schedule_before_save() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP = 'INSERT' AND dalgo.restoring() THEN RETURN NEW; END IF;	-- keeps the dumped next_run_at
	IF NOT NEW.is_active OR NEW.deleted_at IS NOT NULL THEN
		NEW.next_run_at := NULL;
	ELSIF TG_OP = 'INSERT' OR NEW.next_run_at IS NULL
		  OR (NEW.frequency, NEW.run_at_time, NEW.run_at_day, NEW.timezone)
			 IS DISTINCT FROM (OLD.frequency, OLD.run_at_time, OLD.run_at_day, OLD.timezone) THEN
		NEW.next_run_at := dalgo.next_run(NEW.frequency, NEW.run_at_time, NEW.run_at_day, NEW.timezone, now());
	END IF;
	RETURN NEW;
END
$$;
