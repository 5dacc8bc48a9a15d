-- dalgo 0.1.0 -> 0.2.0
--
-- Every change to an installed object made while 0.2.0 is under work goes
-- both into its sql/ fragment (which builds the fresh install script) and
-- here, in the same commit.  test/t/upgrade_equals_fresh.pl checks that a
-- 0.1.0 database updated with this script equals a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION dalgo UPDATE TO '0.2.0'" to load this file. \quit

-- rsec: warehouse isolation (types resolve only in pg_catalog and the
-- organization's schema, read-only previews, settings rolled back after each
-- warehouse step, dependencies only where the recipe contract allows them,
-- one producer per warehouse table, no adoption of foreign roles/schemas)

ALTER TABLE dalgo.warehouse_tables ADD COLUMN output_id uuid;
COMMENT ON COLUMN dalgo.warehouse_tables.output_id IS 'The output whose refresh produced the table (a dalgo addition); source_id, transformation_id and output_id name the one producer that may replace it';
ALTER TABLE dalgo.warehouse_tables DROP CONSTRAINT warehouse_tables_one_producer;
ALTER TABLE dalgo.warehouse_tables ADD CONSTRAINT warehouse_tables_one_producer
	CHECK (num_nonnulls(source_id, transformation_id, output_id) <= 1);
ALTER TABLE dalgo.warehouse_tables ADD CONSTRAINT warehouse_tables_output_fkey
	FOREIGN KEY (organization_id, output_id)
	REFERENCES dalgo.outputs (organization_id, id) ON DELETE CASCADE;
CREATE INDEX warehouse_tables_output_id_idx ON dalgo.warehouse_tables (output_id);
COMMENT ON INDEX dalgo.warehouse_tables_output_id_idx IS 'Foreign key index';

CREATE OR REPLACE FUNCTION dalgo.warehouse_schema(organization_id uuid) RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	hex text := replace(organization_id::text, '-', '');
	schema_name text := 'org_' || hex;
	role_name text := 'dalgo_wh_' || hex;
	r pg_roles;
	problem text;
BEGIN
	IF organization_id IS NULL THEN
		RAISE EXCEPTION 'organization_id is required' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT dalgo.caller_may(organization_id, 'viewer')
	   OR NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = warehouse_schema.organization_id AND o.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	SELECT * INTO r FROM pg_roles WHERE rolname = role_name;
	IF NOT FOUND THEN
		EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT', role_name);
		EXECUTE format('COMMENT ON ROLE %I IS %L', role_name, 'dalgo: owns the warehouse of organization ' || organization_id);
	ELSE
		-- A role of that name that dalgo did not make the way it makes them is
		-- never adopted: everything a viewer previews runs as this role.
		problem := concat_ws(', ',
			CASE WHEN r.rolcanlogin THEN 'it can log in' END,
			CASE WHEN r.rolsuper THEN 'it is a superuser' END,
			CASE WHEN r.rolbypassrls THEN 'it bypasses row-level security' END,
			CASE WHEN r.rolcreaterole THEN 'it can create roles' END,
			CASE WHEN r.rolcreatedb THEN 'it can create databases' END,
			CASE WHEN r.rolreplication THEN 'it is a replication role' END,
			(SELECT 'it is a member of ' || string_agg(quote_ident(g.rolname), ', ' ORDER BY g.rolname)
			 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid),
			(SELECT 'it is granted to ' || string_agg(quote_ident(u.rolname), ', ' ORDER BY u.rolname)
			 FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member WHERE m.roleid = r.oid));
		IF problem <> '' THEN
			RAISE EXCEPTION 'role "%" exists but is not a warehouse role dalgo can use: %', role_name, problem
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  HINT = 'A warehouse role is NOLOGIN, NOSUPERUSER, NOBYPASSRLS, NOCREATEROLE, NOCREATEDB, NOREPLICATION and in no role membership; a superuser must fix or drop it.';
		END IF;
	END IF;
	IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = schema_name) THEN
		EXECUTE format('CREATE SCHEMA %I AUTHORIZATION %I', schema_name, role_name);
		EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', schema_name);
		EXECUTE format('COMMENT ON SCHEMA %I IS %L', schema_name, 'dalgo: warehouse of organization ' || organization_id);
	ELSIF NOT EXISTS (SELECT FROM pg_namespace n JOIN pg_roles o ON o.oid = n.nspowner
					  WHERE n.nspname = schema_name AND o.rolname = role_name) THEN
		RAISE EXCEPTION 'schema "%" exists but is not owned by the warehouse role "%"', schema_name, role_name
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'dalgo never adopts a schema it did not create for the organization; a superuser must fix its owner or drop it.';
	END IF;
	INSERT INTO dalgo.warehouse_connections (organization_id, database_name, is_connected, last_connected_at)
		SELECT warehouse_schema.organization_id, current_database(), true, now()
		WHERE NOT EXISTS (SELECT FROM dalgo.warehouse_connections w
						  WHERE w.organization_id = warehouse_schema.organization_id AND w.deleted_at IS NULL);
	RETURN schema_name;
END
$$;
COMMENT ON FUNCTION dalgo.warehouse_schema(uuid) IS
	'The organization''s warehouse schema (org_<id>, owned by role dalgo_wh_<id>), created with its warehouse_connections row on first use; a role or schema of that name that dalgo would not have made (login, superuser, role memberships, another owner...) is refused, never adopted';

CREATE OR REPLACE FUNCTION dalgo.recipe_dependencies(recipe jsonb) RETURNS uuid[]
	AS 'MODULE_PATHNAME', 'dalgo_recipe_dependencies'
	LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.recipe_dependencies(jsonb) IS
	'Ids of the transformations a recipe reads, only from where the recipe contract allows a reference: source, join.with and union.with[] ({"transformation_id": ...}); sorted, without duplicates';

CREATE OR REPLACE FUNCTION dalgo.transformation_upstream(transformation_id uuid)
	RETURNS TABLE (id uuid, depth integer)
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
	bad uuid;
BEGIN
	SELECT t.organization_id INTO org FROM dalgo.transformations t WHERE t.id = transformation_upstream.transformation_id;
	-- The walk follows only transformations of the same organization; any
	-- other dependency (another organization's, deleted, unknown) is an error,
	-- with or without an identity (run workers have none).
	SELECT d INTO bad
	FROM dalgo.transformations t, unnest(dalgo.recipe_dependencies(t.recipe)) d
	WHERE t.id = transformation_upstream.transformation_id
	  AND NOT EXISTS (SELECT FROM dalgo.transformations x WHERE x.id = d AND x.organization_id = org AND x.deleted_at IS NULL)
	LIMIT 1;
	IF bad IS NULL THEN
		WITH RECURSIVE up(id, depth) AS (
			SELECT d, 1 FROM dalgo.transformations t, unnest(dalgo.recipe_dependencies(t.recipe)) d
			WHERE t.id = transformation_upstream.transformation_id
			UNION ALL
			SELECT d, up.depth + 1 FROM up JOIN dalgo.transformations t ON t.id = up.id AND t.organization_id = org,
				unnest(dalgo.recipe_dependencies(t.recipe)) d
			WHERE up.depth < 100)
		SELECT u.id INTO bad FROM up u
		WHERE NOT EXISTS (SELECT FROM dalgo.transformations x WHERE x.id = u.id AND x.organization_id = org AND x.deleted_at IS NULL)
		LIMIT 1;
	END IF;
	IF bad IS NOT NULL THEN
		RAISE EXCEPTION 'transformation % reads %, which is not a live transformation of its organization', transformation_id, bad
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN QUERY
		WITH RECURSIVE up(id, depth) AS (
			SELECT d, 1 FROM dalgo.transformations t, unnest(dalgo.recipe_dependencies(t.recipe)) d
			WHERE t.id = transformation_upstream.transformation_id
			UNION ALL
			SELECT d, up.depth + 1 FROM up JOIN dalgo.transformations t ON t.id = up.id AND t.organization_id = org,
				unnest(dalgo.recipe_dependencies(t.recipe)) d
			WHERE up.depth < 100)
		SELECT u.id, max(u.depth) FROM up u GROUP BY u.id ORDER BY max(u.depth) DESC, u.id;
END
$$;
COMMENT ON FUNCTION dalgo.transformation_upstream(uuid) IS
	'The transformations a transformation reads, directly or not, deepest first (the order to run them in); all of its own organization, or an error';

CREATE FUNCTION dalgo.warehouse_table_claimant(organization_id uuid, table_name text, source_id uuid,
												transformation_id uuid, output_id uuid) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_warehouse_table_claimant'
	LANGUAGE C VOLATILE PARALLEL UNSAFE
	SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION dalgo.warehouse_table_claimant(uuid, text, uuid, uuid, uuid) IS
	'Internal: which other live source, transformation or output of the organization claims a warehouse table name (NULL if none); serialized per organization and read from the latest committed rows';

CREATE FUNCTION dalgo.check_warehouse_table_name(organization_id uuid, table_name text, source_id uuid,
												 transformation_id uuid, output_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	claimant text := dalgo.warehouse_table_claimant(organization_id, table_name, source_id, transformation_id, output_id);
BEGIN
	IF claimant IS NOT NULL AND NOT dalgo.caller_may(organization_id, 'viewer') THEN
		-- Never name another organization's objects: row-level security refuses this row anyway.
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF claimant IS NOT NULL THEN
		RAISE EXCEPTION 'warehouse table "%" already belongs to %', table_name, claimant
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Each warehouse table has one producer: a source, a transformation or an output. Choose another name.';
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.check_warehouse_table_name(uuid, text, uuid, uuid, uuid) IS
	'Internal: refuse a warehouse table name that another live producer of the organization claims';

CREATE OR REPLACE FUNCTION dalgo.transformation_before_save() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	deps uuid[];
BEGIN
	-- The output table name is checked on every insert and update, whatever changed.
	IF NEW.deleted_at IS NULL AND NEW.output_table_name IS NOT NULL THEN
		PERFORM dalgo.check_warehouse_table_name(NEW.organization_id, NEW.output_table_name, NULL, NEW.id, NULL);
	END IF;
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
			SELECT d FROM walk JOIN dalgo.transformations t ON t.id = walk.id AND t.organization_id = NEW.organization_id,
				unnest(dalgo.recipe_dependencies(t.recipe)) d)
		SELECT FROM walk WHERE walk.id = NEW.id) THEN
		RAISE EXCEPTION 'recipe: transformation % would depend on itself (a dependency cycle)', NEW.id
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	NEW.current_version := CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE OLD.current_version + 1 END;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo.transformation_before_save() IS
	'BEFORE trigger on transformations: the output table must belong to no other producer (every insert and update); a new or changed recipe must compile and type-check, must not create a cycle, and bumps current_version';
CREATE FUNCTION dalgo.source_check_table_name() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.deleted_at IS NULL AND NEW.warehouse_table_name IS NOT NULL THEN
		PERFORM dalgo.check_warehouse_table_name(NEW.organization_id, NEW.warehouse_table_name, NEW.id, NULL, NULL);
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo.source_check_table_name() IS
	'BEFORE trigger on sources: the warehouse table must belong to no other producer (every insert and update)';
CREATE TRIGGER check_table_name BEFORE INSERT OR UPDATE ON dalgo.sources
	FOR EACH ROW EXECUTE FUNCTION dalgo.source_check_table_name();
COMMENT ON TRIGGER check_table_name ON dalgo.sources IS 'A source''s warehouse table belongs to no transformation or output';

CREATE FUNCTION dalgo.output_check_table_name() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.deleted_at IS NULL AND NEW.destination_config ? 'name' THEN
		IF jsonb_typeof(NEW.destination_config->'name') <> 'string' OR NEW.destination_config->>'name' = '' THEN
			RAISE EXCEPTION 'destination_config.name must be a non-empty string' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		-- Publishing the transformation's own table claims nothing of its own.
		IF NEW.destination_config->>'name' IS DISTINCT FROM
		   (SELECT t.output_table_name FROM dalgo.transformations t
			WHERE t.id = NEW.transformation_id AND t.organization_id = NEW.organization_id) THEN
			PERFORM dalgo.check_warehouse_table_name(NEW.organization_id, NEW.destination_config->>'name', NULL,
													 NEW.transformation_id, NEW.id);
		END IF;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo.output_check_table_name() IS
	'BEFORE trigger on outputs: destination_config.name must belong to no other producer (every insert and update)';
CREATE TRIGGER check_table_name BEFORE INSERT OR UPDATE ON dalgo.outputs
	FOR EACH ROW EXECUTE FUNCTION dalgo.output_check_table_name();
COMMENT ON TRIGGER check_table_name ON dalgo.outputs IS 'An output''s destination table belongs to no source or other transformation';

-- Swap a freshly built warehouse table in under its real name.
CREATE OR REPLACE FUNCTION dalgo.swap_warehouse_table(organization_id uuid, build_name text, table_name text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := 'org_' || replace(organization_id::text, '-', '');
	by_source uuid;
	by_transformation uuid;
	by_output uuid;
	context uuid;
	claimant text;
	reg dalgo.warehouse_tables;
BEGIN
	-- The producer is the run the build is named after: dalgo names each
	-- build table _dalgo_build_<transformation run>, _dalgo_sync_<sync run>
	-- or _dalgo_out_<output refresh run>.
	IF build_name ~ '^_dalgo_build_[0-9a-f]{32}$' THEN
		SELECT r.transformation_id INTO by_transformation FROM dalgo.transformation_runs r
		WHERE r.id = substr(build_name, 14)::uuid AND r.organization_id = swap_warehouse_table.organization_id;
		context := by_transformation;
	ELSIF build_name ~ '^_dalgo_sync_[0-9a-f]{32}$' THEN
		SELECT r.source_id INTO by_source FROM dalgo.sync_runs r
		WHERE r.id = substr(build_name, 13)::uuid AND r.organization_id = swap_warehouse_table.organization_id;
	ELSIF build_name ~ '^_dalgo_out_[0-9a-f]{32}$' THEN
		SELECT o.id, o.transformation_id INTO by_output, context
		FROM dalgo.transformation_runs r
		JOIN dalgo.schedules s ON s.id::text = r.details->>'schedule_id' AND s.organization_id = r.organization_id
		JOIN dalgo.outputs o ON o.id = s.output_id AND o.organization_id = s.organization_id
		WHERE r.id = substr(build_name, 12)::uuid AND r.organization_id = swap_warehouse_table.organization_id
		  AND o.transformation_id = r.transformation_id;
	END IF;
	IF num_nonnulls(by_source, by_transformation, by_output) <> 1 THEN
		RAISE EXCEPTION 'warehouse table build "%" belongs to no run of this organization', build_name
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- Checked again at the moment of the swap, under the organization's name lock.
	claimant := dalgo.warehouse_table_claimant(organization_id, table_name, by_source, context, by_output);
	IF claimant IS NOT NULL THEN
		RAISE EXCEPTION 'warehouse table "%" belongs to %; it is not replaced', table_name, claimant
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	SELECT * INTO reg FROM dalgo.warehouse_tables w
	WHERE w.organization_id = swap_warehouse_table.organization_id AND w.table_name = swap_warehouse_table.table_name
	  AND w.deleted_at IS NULL
	FOR UPDATE;
	-- A table may be replaced only by the producer that made it.
	IF to_regclass(format('%I.%I', schema_name, table_name)) IS NOT NULL
	   AND (reg.id IS NULL OR reg.source_id IS DISTINCT FROM by_source
			OR reg.transformation_id IS DISTINCT FROM by_transformation OR reg.output_id IS DISTINCT FROM by_output) THEN
		RAISE EXCEPTION 'warehouse table "%" was not produced by this %; it is not replaced', table_name,
			CASE WHEN by_source IS NOT NULL THEN 'source' WHEN by_transformation IS NOT NULL THEN 'transformation' ELSE 'output' END
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = CASE WHEN reg.id IS NULL THEN 'The table is not registered in dalgo.warehouse_tables.'
						   ELSE 'dalgo.warehouse_tables records another producer for it.' END;
	END IF;
	PERFORM dalgo.warehouse_execute(organization_id, format('DROP TABLE IF EXISTS %I.%I', schema_name, table_name));
	PERFORM dalgo.warehouse_execute(organization_id, format('ALTER TABLE %I.%I RENAME TO %I', schema_name, build_name, table_name));
	-- Record the producer (row count and size follow in register_warehouse_table).
	IF reg.id IS NOT NULL THEN
		UPDATE dalgo.warehouse_tables w SET source_id = by_source, transformation_id = by_transformation,
			output_id = by_output, last_updated_at = now()
		WHERE w.id = reg.id;
	ELSE
		INSERT INTO dalgo.warehouse_tables (organization_id, warehouse_connection_id, table_name, source_id,
											transformation_id, output_id, last_updated_at)
		SELECT swap_warehouse_table.organization_id, c.id, swap_warehouse_table.table_name, by_source,
			by_transformation, by_output, now()
		FROM dalgo.warehouse_connections c
		WHERE c.organization_id = swap_warehouse_table.organization_id AND c.deleted_at IS NULL;
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.swap_warehouse_table(uuid, text, text) IS
	'Internal: replace a warehouse table by a freshly built one, atomically; only the producer (source, transformation or output) that the build''s run names, whose name no other producer claims, and that produced the existing table, if any; records it in warehouse_tables';

CREATE OR REPLACE FUNCTION dalgo.run_transformation(transformation_id uuid, with_upstream boolean DEFAULT false)
	RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t dalgo.transformations;
	run_id uuid;
	up record;
BEGIN
	SELECT * INTO t FROM dalgo.transformations x
	WHERE x.id = run_transformation.transformation_id AND x.deleted_at IS NULL;
	IF NOT FOUND OR NOT dalgo.caller_may(t.organization_id, 'viewer') THEN
		RAISE EXCEPTION 'transformation % does not exist', transformation_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT dalgo.caller_may(t.organization_id, 'member') THEN
		RAISE EXCEPTION 'running a transformation needs the member role' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF with_upstream THEN
		-- transformation_upstream refuses a dependency outside the organization;
		-- checked again here for each run, identity or not.
		FOR up IN SELECT u.id, x.organization_id FROM dalgo.transformation_upstream(t.id) u
				  LEFT JOIN dalgo.transformations x ON x.id = u.id LOOP
			IF up.organization_id IS DISTINCT FROM t.organization_id THEN
				RAISE EXCEPTION 'transformation % reads %, which is not a transformation of its organization', t.id, up.id
					USING ERRCODE = 'invalid_parameter_value';
			END IF;
			PERFORM dalgo.run_transformation(up.id, false);
		END LOOP;
	END IF;
	INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, version_number, status, started_at,
										   triggered_by_id)
	VALUES (t.organization_id, t.id, t.current_version, 'running', clock_timestamp(), dalgo.current_user_id())
	RETURNING id INTO run_id;
	PERFORM dalgo.build_transformation(t.id, run_id);
	RETURN run_id;
END
$$;
COMMENT ON FUNCTION dalgo.run_transformation(uuid, boolean) IS
	'Build a transformation''s output table (atomic swap) and record the run; with_upstream runs what it reads first. Members and above. A failure is recorded on the run row, reported as a WARNING, and leaves the previous output intact';

REVOKE ALL ON FUNCTION dalgo.warehouse_table_claimant(uuid, text, uuid, uuid, uuid),
	dalgo.check_warehouse_table_name(uuid, text, uuid, uuid, uuid),
	dalgo.source_check_table_name(), dalgo.output_check_table_name()
	FROM PUBLIC;

-- Outputs refreshed into a table of their own before 0.2.0 did not record
-- themselves as its producer: record them, where no other producer did.
INSERT INTO dalgo.warehouse_tables (organization_id, warehouse_connection_id, table_name, output_id, last_updated_at)
SELECT DISTINCT ON (o.organization_id, o.destination_config->>'name')
	o.organization_id, c.id, o.destination_config->>'name', o.id, o.last_refreshed_at
FROM dalgo.outputs o
JOIN dalgo.transformations t ON t.id = o.transformation_id
JOIN dalgo.warehouse_connections c ON c.organization_id = o.organization_id AND c.deleted_at IS NULL
WHERE o.deleted_at IS NULL AND coalesce(o.destination_config->>'type', 'table') = 'table'
  AND jsonb_typeof(o.destination_config->'name') = 'string'
  AND o.destination_config->>'name' IS DISTINCT FROM t.output_table_name
  AND to_regclass(format('%I.%I', 'org_' || replace(o.organization_id::text, '-', ''), o.destination_config->>'name')) IS NOT NULL
  AND NOT EXISTS (SELECT FROM dalgo.warehouse_tables w WHERE w.warehouse_connection_id = c.id
				  AND w.table_name = o.destination_config->>'name' AND w.deleted_at IS NULL)
ORDER BY o.organization_id, o.destination_config->>'name', o.last_refreshed_at DESC NULLS LAST;
