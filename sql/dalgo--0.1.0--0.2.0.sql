-- dalgo 0.1.0 -> 0.2.0
--
-- Every change to an installed object made while 0.2.0 is under work goes
-- both into its sql/ fragment (which builds the fresh install script) and
-- here, in the same commit.  test/t/upgrade_equals_fresh.pl checks that a
-- 0.1.0 database updated with this script equals a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION dalgo UPDATE TO '0.2.0'" to load this file. \quit

-- quota: quotas per organization (sql/quotas.sql, src/quota.c)
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
	PERFORM dalgo.check_run_quota(t.organization_id);
	IF with_upstream THEN
		FOR up IN SELECT * FROM dalgo.transformation_upstream(t.id) LOOP
			PERFORM dalgo.run_transformation(up.id, false);
		END LOOP;
	END IF;
	INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, version_number, status, started_at,
										   triggered_by_id, details)
	VALUES (t.organization_id, t.id, t.current_version, 'running', clock_timestamp(), dalgo.current_user_id(),
			jsonb_build_object('runner_pid', pg_backend_pid()))
	RETURNING id INTO run_id;
	PERFORM dalgo.build_transformation(t.id, run_id);
	RETURN run_id;
END
$$;
COMMENT ON FUNCTION dalgo.run_transformation(uuid, boolean) IS
	'Build a transformation''s output table (atomic swap) and record the run; with_upstream runs what it reads first. Members and above. A failure is recorded on the run row, reported as a WARNING, and leaves the previous output intact';

CREATE OR REPLACE FUNCTION dalgo.build_transformation(transformation_id uuid, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t dalgo.transformations;
	sql text;
	schema_name text;
	build_name text := '_dalgo_build_' || replace(run_id::text, '-', '');
	n bigint;
	err text;
BEGIN
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = build_transformation.transformation_id;
	UPDATE dalgo.transformation_runs r SET version_number = t.current_version WHERE r.id = run_id;
	BEGIN
		IF t.output_table_name IS NULL THEN
			RAISE EXCEPTION 'transformation % has no output_table_name', t.id USING ERRCODE = 'invalid_parameter_value';
		END IF;
		schema_name := dalgo.warehouse_schema(t.organization_id);
		sql := dalgo.compile_recipe(t.organization_id, t.recipe);
		-- Build under a private name, then swap: readers never see a half-built table,
		-- and a failure leaves the previous output as it was.
		n := dalgo.warehouse_execute(t.organization_id, format('CREATE TABLE %I.%I AS %s', schema_name, build_name, sql));
		PERFORM dalgo.check_warehouse_quota(t.organization_id, t.output_table_name);
		PERFORM dalgo.swap_warehouse_table(t.organization_id, build_name, t.output_table_name);
		PERFORM dalgo.register_warehouse_table(t.organization_id, t.output_table_name, NULL, t.id, n);
		UPDATE dalgo.transformations x SET last_run_at = now() WHERE x.id = t.id;
		UPDATE dalgo.transformation_runs r SET status = 'success', completed_at = clock_timestamp(),
			rows_affected = least(n, 2147483647), executed_sql = sql
		WHERE r.id = run_id;
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS err = MESSAGE_TEXT;
		UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(),
			error_message = err, executed_sql = sql
		WHERE r.id = run_id;
		RAISE WARNING 'transformation run % failed: %', run_id, err;
	END;
END
$$;
COMMENT ON FUNCTION dalgo.build_transformation(uuid, uuid) IS
	'Internal: build a transformation''s output for an existing run row (atomic swap) and record the outcome on it';

CREATE OR REPLACE FUNCTION dalgo.execute_scheduled_run(run_kind text, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo.check_run_quota(CASE WHEN run_kind = 's'
		THEN (SELECT r.organization_id FROM dalgo.sync_runs r WHERE r.id = run_id)
		ELSE (SELECT r.organization_id FROM dalgo.transformation_runs r WHERE r.id = run_id) END);
	IF run_kind = 's' THEN
		PERFORM dalgo.sync_source(run_id);
	ELSIF run_kind = 'o' THEN
		PERFORM dalgo.refresh_output(run_id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.execute_scheduled_run(text, uuid) IS 'Internal: execute a claimed run (what a run worker does)';

CREATE OR REPLACE FUNCTION dalgo.sync_source(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	src dalgo.sources;
	schema_name text;
	build_name text := '_dalgo_sync_' || replace(run_id::text, '-', '');
	target text;
	n bigint;
	relation text;
	path text;
	header text;
	cols text;
BEGIN
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.id = run_id;
	SELECT * INTO src FROM dalgo.sources x WHERE x.id = r.source_id AND x.deleted_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'the source of run % no longer exists', run_id;
	END IF;
	schema_name := dalgo.warehouse_schema(src.organization_id);
	target := coalesce(src.warehouse_table_name, 'source_' || left(replace(src.id::text, '-', ''), 12));
	IF src.source_type = 'postgres' THEN
		-- Read as the warehouse role: it sees only what it was granted.
		relation := dalgo.source_relation(src.config);
		n := dalgo.warehouse_execute(src.organization_id,
			format('CREATE TABLE %I.%I AS SELECT * FROM %s', schema_name, build_name, relation));
	ELSIF src.source_type = 'csv' THEN
		path := dalgo.csv_path(src.config->>'path');
		header := split_part(pg_read_file(path, 0, 65536), E'\n', 1);
		SELECT string_agg(format('%I text', trim(both '"' FROM trim(c))), ', ') INTO cols
		FROM unnest(string_to_array(rtrim(header, E'\r'), ',')) c;
		IF cols IS NULL THEN
			RAISE EXCEPTION 'csv file % has no header line', src.config->>'path' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		PERFORM dalgo.warehouse_execute(src.organization_id, format('CREATE TABLE %I.%I (%s)', schema_name, build_name, cols));
		EXECUTE format('COPY %I.%I FROM %L WITH (FORMAT csv, HEADER true)', schema_name, build_name, path);
		GET DIAGNOSTICS n = ROW_COUNT;
	ELSE
		RAISE EXCEPTION '% sources are synced by a connector', src.source_type;
	END IF;
	PERFORM dalgo.check_warehouse_quota(src.organization_id, target);
	PERFORM dalgo.swap_warehouse_table(src.organization_id, build_name, target);
	PERFORM dalgo.register_warehouse_table(src.organization_id, target, src.id, NULL, n);

	-- source_schemas: columns, types, order and nullability of what was synced.
	DELETE FROM dalgo.source_schemas x WHERE x.source_id = src.id;
	INSERT INTO dalgo.source_schemas (organization_id, source_id, column_name, column_type, column_order, is_nullable)
	SELECT src.organization_id, src.id, a.attname, format_type(a.atttypid, a.atttypmod), a.attnum, NOT a.attnotnull
	FROM pg_attribute a
	WHERE a.attrelid = to_regclass(format('%I.%I', schema_name, target)) AND a.attnum > 0 AND NOT a.attisdropped;
	IF relation IS NOT NULL THEN
		UPDATE dalgo.source_schemas x SET is_nullable = NOT a.attnotnull
		FROM pg_attribute a
		WHERE x.source_id = src.id AND a.attrelid = relation::regclass
		  AND a.attname = x.column_name;
	END IF;

	UPDATE dalgo.sources x SET last_synced_at = now(), warehouse_table_name = target WHERE x.id = src.id;
	UPDATE dalgo.sync_runs x SET status = 'success', completed_at = clock_timestamp(), rows_synced = least(n, 2147483647)
	WHERE x.id = run_id;
END
$$;
COMMENT ON FUNCTION dalgo.sync_source(uuid) IS 'Internal: an in-database sync of a postgres or csv source into its warehouse table';

CREATE FUNCTION dalgo.organization_quota(organization_id uuid, quota text) RETURNS bigint
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT nullif(coalesce(
		(SELECT (o.settings->'quotas'->>quota)::numeric::bigint FROM dalgo.organizations o
		 WHERE o.id = organization_quota.organization_id AND o.settings->'quotas' ? quota),
		CASE quota
			WHEN 'warehouse_bytes' THEN pg_size_bytes(current_setting('dalgo.quota_warehouse_size'))
			WHEN 'concurrent_runs' THEN current_setting('dalgo.quota_concurrent_runs')::bigint
			WHEN 'runs_per_hour' THEN current_setting('dalgo.quota_runs_per_hour')::bigint
			WHEN 'run_seconds' THEN extract(epoch FROM current_setting('dalgo.quota_run_seconds')::interval)::bigint
		END), 0)
$$;
COMMENT ON FUNCTION dalgo.organization_quota(uuid, text) IS
	'Internal: an organization''s limit for one quota (its settings->''quotas'' override, else the dalgo.quota_* default); NULL means no limit';

-- What an organization uses now, quota by quota.
CREATE FUNCTION dalgo.organization_usage(organization_id uuid, OUT quota text, OUT used bigint, OUT quota_limit bigint)
	RETURNS SETOF record
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := organization_usage.organization_id;
BEGIN
	quota := 'warehouse_bytes';
	used := coalesce((SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
					  WHERE c.relnamespace = to_regnamespace('org_' || replace(org::text, '-', ''))
						AND c.relkind IN ('r', 'm', 'p')), 0);
	quota_limit := dalgo.organization_quota(org, quota);
	RETURN NEXT;
	quota := 'concurrent_runs';
	used := (SELECT count(*) FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.status = 'running')
		  + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.organization_id = org AND r.status = 'running');
	quota_limit := dalgo.organization_quota(org, quota);
	RETURN NEXT;
	quota := 'runs_per_hour';
	used := (SELECT count(*) FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.started_at > now() - interval '1 hour'
			 AND NOT r.details ? 'skipped')
		  + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.organization_id = org
			 AND r.started_at > now() - interval '1 hour' AND NOT r.details ? 'skipped');
	quota_limit := dalgo.organization_quota(org, quota);
	RETURN NEXT;
	quota := 'run_seconds';
	used := NULL;
	quota_limit := dalgo.organization_quota(org, quota);
	RETURN NEXT;
END
$$;
COMMENT ON FUNCTION dalgo.organization_usage(uuid) IS
	'Internal: an organization''s usage and limit for each quota (see dalgo.quota_usage)';

CREATE FUNCTION dalgo.quota_usage(organization_id uuid, OUT quota text, OUT used bigint, OUT quota_limit bigint)
	RETURNS SETOF record
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT dalgo.caller_may(quota_usage.organization_id, 'viewer') THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', quota_usage.organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN QUERY SELECT * FROM dalgo.organization_usage(quota_usage.organization_id);
END
$$;
COMMENT ON FUNCTION dalgo.quota_usage(uuid) IS
	'An organization''s quotas: for each, what it uses now and its limit (NULL: no limit); its members only. run_seconds has no "used" figure';

-- Refuse a run that would take the organization past a quota.  The runs
-- this backend is executing (a scheduled run's own row, an outer
-- run_transformation) are not counted: an upstream run is part of the run
-- that asked for it.
CREATE FUNCTION dalgo.check_run_quota(organization_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := check_run_quota.organization_id;
	me text := pg_backend_pid()::text;
	lim bigint;
	n bigint;
BEGIN
	lim := dalgo.organization_quota(org, 'concurrent_runs');
	IF lim IS NOT NULL THEN
		n := (SELECT count(*) FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.status = 'running'
			  AND r.details->>'runner_pid' IS DISTINCT FROM me)
		   + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.organization_id = org AND r.status = 'running'
			  AND r.details->>'runner_pid' IS DISTINCT FROM me);
		IF n >= lim THEN
			RAISE EXCEPTION 'quota concurrent_runs exceeded: % runs of the organization are in progress, the limit is %', n, lim
				USING ERRCODE = 'configuration_limit_exceeded',
					  HINT = 'Wait for a run to finish; a superuser can raise the quota.';
		END IF;
	END IF;
	lim := dalgo.organization_quota(org, 'runs_per_hour');
	IF lim IS NOT NULL THEN
		n := (SELECT count(*) FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.started_at > now() - interval '1 hour'
			  AND NOT r.details ? 'skipped' AND NOT (r.status = 'running' AND r.details->>'runner_pid' = me))
		   + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.organization_id = org
			  AND r.started_at > now() - interval '1 hour' AND NOT r.details ? 'skipped'
			  AND NOT (r.status = 'running' AND r.details->>'runner_pid' = me));
		IF n >= lim THEN
			RAISE EXCEPTION 'quota runs_per_hour exceeded: the organization started % runs in the last hour, the limit is %', n, lim
				USING ERRCODE = 'configuration_limit_exceeded',
					  HINT = 'Try again later; a superuser can raise the quota.';
		END IF;
	END IF;
	PERFORM dalgo.check_warehouse_quota(org, NULL);
END
$$;
COMMENT ON FUNCTION dalgo.check_run_quota(uuid) IS
	'Internal: refuse a run that would exceed the organization''s concurrent_runs, runs_per_hour or warehouse_bytes quota';

-- Refuse when the warehouse is at or over its size quota.  replacing names
-- the table a swap is about to replace: it no longer counts.
CREATE FUNCTION dalgo.check_warehouse_quota(organization_id uuid, replacing text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := check_warehouse_quota.organization_id;
	lim bigint := dalgo.organization_quota(org, 'warehouse_bytes');
	ns oid;
	n bigint;
BEGIN
	IF lim IS NULL THEN
		RETURN;
	END IF;
	ns := to_regnamespace('org_' || replace(org::text, '-', ''));
	n := coalesce((SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
				   WHERE c.relnamespace = ns AND c.relkind IN ('r', 'm', 'p')
					 AND c.relname IS DISTINCT FROM replacing), 0);
	IF n > lim OR (replacing IS NULL AND n >= lim) THEN
		RAISE EXCEPTION 'quota warehouse_bytes exceeded: the warehouse % % bytes, the limit is %',
			CASE WHEN replacing IS NULL THEN 'holds' ELSE 'would hold' END, n, lim
			USING ERRCODE = 'configuration_limit_exceeded',
				  HINT = 'Drop tables or outputs the organization no longer needs; a superuser can raise the quota.';
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.check_warehouse_quota(uuid, text) IS
	'Internal: refuse when the organization''s warehouse is over its warehouse_bytes quota (not counting the table a swap replaces)';

-- Only superusers set or change an organization's quotas, and only to
-- known quotas with whole, non-negative figures.
CREATE FUNCTION dalgo.guard_organization_quotas() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	q jsonb := NEW.settings->'quotas';
	k text;
	v jsonb;
BEGIN
	IF TG_OP = 'UPDATE' AND q IS NOT DISTINCT FROM OLD.settings->'quotas' THEN
		RETURN NEW;
	END IF;
	IF q IS NULL THEN
		IF TG_OP = 'INSERT' THEN
			RETURN NEW;
		END IF;
	END IF;
	IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
		RAISE EXCEPTION 'only a superuser can change an organization''s quotas'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'organizations.settings->''quotas'' sets the limits of a shared server.';
	END IF;
	IF q IS NULL THEN
		RETURN NEW;
	END IF;
	IF jsonb_typeof(q) <> 'object' THEN
		RAISE EXCEPTION 'settings->''quotas'' must be an object' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR k, v IN SELECT * FROM jsonb_each(q) LOOP
		IF k NOT IN ('warehouse_bytes', 'concurrent_runs', 'runs_per_hour', 'run_seconds') THEN
			RAISE EXCEPTION 'unknown quota "%"', k USING ERRCODE = 'invalid_parameter_value',
				HINT = 'Quotas are warehouse_bytes, concurrent_runs, runs_per_hour and run_seconds.';
		END IF;
		IF jsonb_typeof(v) <> 'number' OR v::text::numeric < 0 OR v::text::numeric <> trunc(v::text::numeric)
		   OR v::text::numeric > 9223372036854775807 THEN
			RAISE EXCEPTION 'quota "%" must be a whole number of at least 0 (0: no limit), not %', k, v
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
	END LOOP;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo.guard_organization_quotas() IS
	'BEFORE INSERT OR UPDATE row trigger on organizations: only superusers set settings->''quotas'', to known quotas and valid figures';
CREATE TRIGGER guard_organization_quotas BEFORE INSERT OR UPDATE OF settings ON dalgo.organizations
	FOR EACH ROW EXECUTE FUNCTION dalgo.guard_organization_quotas();
COMMENT ON TRIGGER guard_organization_quotas ON dalgo.organizations IS 'Quotas are set by superusers only';

REVOKE ALL ON FUNCTION dalgo.organization_quota(uuid, text), dalgo.organization_usage(uuid), dalgo.quota_usage(uuid),
	dalgo.check_run_quota(uuid), dalgo.check_warehouse_quota(uuid, text), dalgo.guard_organization_quotas()
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.quota_usage(uuid) TO dalgo_authenticated, dalgo_service;

-- runs: run and version rows are written only by dalgo's own code (item 9.3)
REVOKE INSERT, UPDATE, DELETE ON dalgo.source_schemas, dalgo.sync_runs, dalgo.warehouse_tables,
	dalgo.transformation_versions, dalgo.transformation_runs FROM dalgo_authenticated;
REVOKE INSERT, UPDATE, DELETE ON dalgo.sync_runs, dalgo.transformation_runs, dalgo.transformation_versions
	FROM dalgo_service;
DROP POLICY tenant_insert ON dalgo.source_schemas;
DROP POLICY tenant_update ON dalgo.source_schemas;
DROP POLICY tenant_delete ON dalgo.source_schemas;
DROP POLICY tenant_insert ON dalgo.sync_runs;
DROP POLICY tenant_update ON dalgo.sync_runs;
DROP POLICY tenant_delete ON dalgo.sync_runs;
DROP POLICY tenant_insert ON dalgo.warehouse_tables;
DROP POLICY tenant_update ON dalgo.warehouse_tables;
DROP POLICY tenant_delete ON dalgo.warehouse_tables;
DROP POLICY tenant_insert ON dalgo.transformation_versions;
DROP POLICY tenant_update ON dalgo.transformation_versions;
DROP POLICY tenant_insert ON dalgo.transformation_runs;
DROP POLICY tenant_update ON dalgo.transformation_runs;
DROP POLICY tenant_delete ON dalgo.transformation_runs;
ALTER FUNCTION dalgo.transformation_record_version() SECURITY DEFINER;

CREATE FUNCTION dalgo.verify_scheduled_run(run_kind text, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	det jsonb;
	run_org uuid;
	run_source uuid;
	run_transformation uuid;
	sid uuid;
	s dalgo.schedules;
	agree boolean := false;
BEGIN
	IF run_kind = 's' THEN
		SELECT r.details, r.organization_id, r.source_id INTO det, run_org, run_source
		FROM dalgo.sync_runs r WHERE r.id = run_id;
	ELSIF run_kind = 'o' THEN
		SELECT r.details, r.organization_id, r.transformation_id INTO det, run_org, run_transformation
		FROM dalgo.transformation_runs r WHERE r.id = run_id;
	END IF;
	BEGIN
		sid := (det->>'schedule_id')::uuid;
	EXCEPTION WHEN invalid_text_representation THEN
		sid := NULL;
	END;
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = sid;
	IF FOUND AND s.organization_id = run_org THEN
		IF run_kind = 's' THEN
			agree := s.source_id = run_source
				AND EXISTS (SELECT FROM dalgo.sources x WHERE x.id = run_source AND x.organization_id = run_org);
		ELSE
			agree := EXISTS (SELECT FROM dalgo.outputs o JOIN dalgo.transformations t ON t.id = o.transformation_id
							 WHERE o.id = s.output_id AND o.organization_id = run_org AND t.organization_id = run_org
							   AND t.id = run_transformation);
		END IF;
	END IF;
	IF NOT coalesce(agree, false) THEN
		RAISE EXCEPTION 'run % was refused: it does not match its schedule', run_id
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'A scheduled run must name the schedule that created it, and schedule, source or output, transformation and run must belong to one organization.';
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.verify_scheduled_run(text, uuid) IS
	'Internal: refuse a run row whose schedule, source or output, transformation and organization do not agree (a forged row); sync_source and refresh_output call it first';

REVOKE ALL ON FUNCTION dalgo.verify_scheduled_run(text, uuid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION dalgo.sync_source(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	src dalgo.sources;
	schema_name text;
	build_name text := '_dalgo_sync_' || replace(run_id::text, '-', '');
	target text;
	n bigint;
	relation text;
	path text;
	header text;
	cols text;
BEGIN
	PERFORM dalgo.verify_scheduled_run('s', run_id);
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.id = run_id;
	SELECT * INTO src FROM dalgo.sources x WHERE x.id = r.source_id AND x.deleted_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'the source of run % no longer exists', run_id;
	END IF;
	schema_name := dalgo.warehouse_schema(src.organization_id);
	target := coalesce(src.warehouse_table_name, 'source_' || left(replace(src.id::text, '-', ''), 12));
	IF src.source_type = 'postgres' THEN
		-- Read as the warehouse role: it sees only what it was granted.
		relation := dalgo.source_relation(src.config);
		n := dalgo.warehouse_execute(src.organization_id,
			format('CREATE TABLE %I.%I AS SELECT * FROM %s', schema_name, build_name, relation));
	ELSIF src.source_type = 'csv' THEN
		path := dalgo.csv_path(src.organization_id, src.config->>'path');
		header := split_part(pg_read_file(path, 0, 65536), E'\n', 1);
		SELECT string_agg(format('%I text', trim(both '"' FROM trim(c))), ', ') INTO cols
		FROM unnest(string_to_array(rtrim(header, E'\r'), ',')) c;
		IF cols IS NULL THEN
			RAISE EXCEPTION 'csv file % has no header line', src.config->>'path' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		PERFORM dalgo.warehouse_execute(src.organization_id, format('CREATE TABLE %I.%I (%s)', schema_name, build_name, cols));
		EXECUTE format('COPY %I.%I FROM %L WITH (FORMAT csv, HEADER true)', schema_name, build_name, path);
		GET DIAGNOSTICS n = ROW_COUNT;
	ELSE
		RAISE EXCEPTION '% sources are synced by a connector', src.source_type;
	END IF;
	PERFORM dalgo.swap_warehouse_table(src.organization_id, build_name, target);
	PERFORM dalgo.register_warehouse_table(src.organization_id, target, src.id, NULL, n);

	-- source_schemas: columns, types, order and nullability of what was synced.
	DELETE FROM dalgo.source_schemas x WHERE x.source_id = src.id;
	INSERT INTO dalgo.source_schemas (organization_id, source_id, column_name, column_type, column_order, is_nullable)
	SELECT src.organization_id, src.id, a.attname, format_type(a.atttypid, a.atttypmod), a.attnum, NOT a.attnotnull
	FROM pg_attribute a
	WHERE a.attrelid = to_regclass(format('%I.%I', schema_name, target)) AND a.attnum > 0 AND NOT a.attisdropped;
	IF relation IS NOT NULL THEN
		UPDATE dalgo.source_schemas x SET is_nullable = NOT a.attnotnull
		FROM pg_attribute a
		WHERE x.source_id = src.id AND a.attrelid = relation::regclass
		  AND a.attname = x.column_name;
	END IF;

	UPDATE dalgo.sources x SET last_synced_at = now(), warehouse_table_name = target WHERE x.id = src.id;
	UPDATE dalgo.sync_runs x SET status = 'success', completed_at = clock_timestamp(), rows_synced = least(n, 2147483647)
	WHERE x.id = run_id;
END
$$;
COMMENT ON FUNCTION dalgo.sync_source(uuid) IS 'Internal: an in-database sync of a postgres or csv source into its warehouse table';

CREATE OR REPLACE FUNCTION dalgo.claim_sync_run() RETURNS dalgo.sync_runs
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	org uuid;
BEGIN
	FOR org IN
		SELECT x.organization_id FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status IN ('pending', 'running') AND dalgo.is_connector_source(s.source_type) AND x.deleted_at IS NULL
		GROUP BY x.organization_id
		HAVING bool_or(x.status = 'pending')
		ORDER BY count(*) FILTER (WHERE x.status = 'running'), min(x.created_at) FILTER (WHERE x.status = 'pending'),
				 x.organization_id
	LOOP
		SELECT x.* INTO r FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status = 'pending' AND x.organization_id = org AND dalgo.is_connector_source(s.source_type)
		  AND x.deleted_at IS NULL
		ORDER BY x.created_at LIMIT 1 FOR UPDATE OF x SKIP LOCKED;
		IF FOUND THEN
			UPDATE dalgo.sync_runs x SET status = 'running', started_at = clock_timestamp() WHERE x.id = r.id RETURNING * INTO r;
			RETURN r;
		END IF;
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo.claim_sync_run() IS
	'Connector protocol: claim a pending connector sync run (SKIP LOCKED; the organization with the fewest running, then the oldest) and mark it running; NULL when there is none';

CREATE OR REPLACE FUNCTION dalgo.complete_sync_run(run_id uuid, rows_synced integer, error_message text DEFAULT NULL,
										details jsonb DEFAULT '{}')
	RETURNS dalgo.sync_runs
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
BEGIN
	UPDATE dalgo.sync_runs x SET status = CASE WHEN complete_sync_run.error_message IS NULL THEN 'success' ELSE 'failed' END::dalgo.run_status,
		completed_at = clock_timestamp(), rows_synced = complete_sync_run.rows_synced,
		error_message = complete_sync_run.error_message, details = x.details || coalesce(complete_sync_run.details, '{}')
	WHERE x.id = run_id AND x.status = 'running'
	RETURNING * INTO r;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'sync run % is not running (claim it first)', run_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF r.status = 'success' THEN
		UPDATE dalgo.sources s SET last_synced_at = now() WHERE s.id = r.source_id;
	END IF;
	RETURN r;
END
$$;
COMMENT ON FUNCTION dalgo.complete_sync_run(uuid, integer, text, jsonb) IS
	'Connector protocol: finish a claimed run with its row count, or with an error message (then it fails)';


-- runs: a fair run queue between organizations (item 9.3)

CREATE OR REPLACE FUNCTION dalgo.take_pending_run(OUT run_kind text, OUT run_id uuid)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
BEGIN
	FOR org IN
		WITH queued AS (
			SELECT r.organization_id, r.status, r.created_at
			FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
			WHERE r.status IN ('pending', 'running') AND NOT dalgo.is_connector_source(s.source_type)
			  AND r.details ? 'schedule_id'
			UNION ALL
			SELECT r.organization_id, r.status, r.created_at FROM dalgo.transformation_runs r
			WHERE r.status IN ('pending', 'running') AND r.details ? 'schedule_id')
		SELECT q.organization_id FROM queued q
		GROUP BY q.organization_id
		HAVING bool_or(q.status = 'pending')
		ORDER BY count(*) FILTER (WHERE q.status = 'running'), min(q.created_at) FILTER (WHERE q.status = 'pending'),
				 q.organization_id
	LOOP
		SELECT 's', r.id INTO run_kind, run_id FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
		WHERE r.status = 'pending' AND r.organization_id = org AND NOT dalgo.is_connector_source(s.source_type)
		  AND r.details ? 'schedule_id'
		ORDER BY r.created_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED;
		IF NOT FOUND THEN
			SELECT 'o', r.id INTO run_kind, run_id FROM dalgo.transformation_runs r
			WHERE r.status = 'pending' AND r.organization_id = org AND r.details ? 'schedule_id'
			ORDER BY r.created_at LIMIT 1 FOR UPDATE SKIP LOCKED;
		END IF;
		EXIT WHEN run_id IS NOT NULL;
	END LOOP;
	IF run_id IS NOT NULL THEN
		PERFORM dalgo.start_scheduled_run(run_kind, run_id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.take_pending_run() IS
	'Internal: a run worker takes a pending in-database run and marks it running: the organization with the fewest running runs first, then the one waiting longest';

CREATE OR REPLACE FUNCTION dalgo.claim_due_schedules(at timestamptz, max_runs integer, only_schedule uuid DEFAULT NULL)
	RETURNS TABLE (schedule_id uuid, run_kind text, run_id uuid)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s dalgo.schedules;
	src dalgo.sources;
	out dalgo.outputs;
	busy boolean;
	det jsonb;
	rid uuid;
BEGIN
	IF max_runs <= 0 THEN
		RETURN;
	END IF;
	-- Fair between organizations: each organization's oldest due schedule
	-- first, then each one's second, and so on, so that one organization's
	-- backlog never holds another's due schedule back to a later tick.  The
	-- due test is repeated on x: a row another claimer committed in between is
	-- re-checked after its lock.
	FOR s IN SELECT * FROM dalgo.schedules x
			 WHERE x.is_active AND x.deleted_at IS NULL AND x.next_run_at <= at
			   AND (only_schedule IS NULL OR x.id = only_schedule)
			   AND x.id IN (SELECT d.id FROM (
						SELECT y.id, y.next_run_at,
							   row_number() OVER (PARTITION BY y.organization_id ORDER BY y.next_run_at, y.id) AS turn
						FROM dalgo.schedules y
						WHERE y.is_active AND y.deleted_at IS NULL AND y.next_run_at <= at
						  AND (only_schedule IS NULL OR y.id = only_schedule)) d
					ORDER BY d.turn, d.next_run_at LIMIT max_runs)
			 ORDER BY x.next_run_at FOR UPDATE SKIP LOCKED
	LOOP
		det := jsonb_build_object('schedule_id', s.id, 'attempt', 1,
								  'lag_ms', round(extract(epoch FROM clock_timestamp() - s.next_run_at) * 1000));
		UPDATE dalgo.schedules x SET last_run_at = at,
			next_run_at = dalgo.next_run(s.frequency, s.run_at_time, s.run_at_day, s.timezone, greatest(at, s.next_run_at))
		WHERE x.id = s.id;
		schedule_id := s.id;
		IF s.source_id IS NOT NULL THEN
			SELECT * INTO src FROM dalgo.sources x WHERE x.id = s.source_id;
			busy := EXISTS (SELECT FROM dalgo.sync_runs r WHERE r.source_id = s.source_id
							AND r.status IN ('pending', 'running') AND r.deleted_at IS NULL);
			IF busy THEN
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, started_at, completed_at, error_message, details)
				VALUES (s.organization_id, s.source_id, 'failed', clock_timestamp(), clock_timestamp(),
						'skipped: the previous run of this schedule is still going', det || '{"skipped": true}')
				RETURNING id INTO rid;
				run_kind := 'skipped';
			ELSE
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, details)
				VALUES (s.organization_id, s.source_id, 'pending', det) RETURNING id INTO rid;
				IF dalgo.is_connector_source(src.source_type) THEN
					-- Anyone can LISTEN: the payload is empty, connectors learn
					-- the work from claim_sync_run().
					PERFORM pg_notify('dalgo_sync', '');
					run_kind := 'connector';
				ELSE
					run_kind := 's';
				END IF;
			END IF;
		ELSE
			SELECT * INTO out FROM dalgo.outputs x WHERE x.id = s.output_id;
			busy := EXISTS (SELECT FROM dalgo.transformation_runs r WHERE r.transformation_id = out.transformation_id
							AND r.status IN ('pending', 'running') AND r.details->>'schedule_id' = s.id::text);
			INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, started_at, completed_at,
												   error_message, details)
			VALUES (s.organization_id, out.transformation_id, CASE WHEN busy THEN 'failed' ELSE 'pending' END::dalgo.run_status,
					CASE WHEN busy THEN clock_timestamp() END, CASE WHEN busy THEN clock_timestamp() END,
					CASE WHEN busy THEN 'skipped: the previous run of this schedule is still going' END,
					det || CASE WHEN busy THEN '{"skipped": true}'::jsonb ELSE '{}'::jsonb END)
			RETURNING id INTO rid;
			run_kind := CASE WHEN busy THEN 'skipped' ELSE 'o' END;
		END IF;
		run_id := rid;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo.claim_due_schedules(timestamptz, integer, uuid) IS
	'Internal: claim up to max_runs due schedules (FOR UPDATE SKIP LOCKED), advance them and create their run rows';


-- runs: output views are dropped and created again around the swaps of a refresh (item 9.18)

CREATE FUNCTION dalgo.drop_output_views(organization_id uuid, table_names text[]) RETURNS jsonb
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := 'org_' || replace(organization_id::text, '-', '');
	v record;
	dropped jsonb := '[]';
BEGIN
	FOR v IN SELECT DISTINCT coalesce(x.destination_config->>'name', y.output_table_name) AS view_name,
					y.output_table_name AS table_name
			 FROM dalgo.outputs x JOIN dalgo.transformations y ON y.id = x.transformation_id
			 WHERE x.organization_id = drop_output_views.organization_id
			   AND y.organization_id = drop_output_views.organization_id
			   AND x.deleted_at IS NULL AND x.destination_config->>'type' = 'view'
			   AND y.output_table_name = ANY (table_names)
	LOOP
		IF v.view_name <> v.table_name AND EXISTS (
				SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
				WHERE n.nspname = schema_name AND c.relname = v.view_name AND c.relkind = 'v') THEN
			PERFORM dalgo.warehouse_execute(organization_id, format('DROP VIEW %I.%I', schema_name, v.view_name));
			dropped := dropped || jsonb_build_object('view_name', v.view_name, 'table_name', v.table_name);
		END IF;
	END LOOP;
	RETURN dropped;
END
$$;
COMMENT ON FUNCTION dalgo.drop_output_views(uuid, text[]) IS
	'Internal: drop the organization''s output views over the given warehouse tables before they are swapped; returns what restore_output_views needs';

CREATE FUNCTION dalgo.restore_output_views(organization_id uuid, dropped jsonb) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := 'org_' || replace(organization_id::text, '-', '');
	v record;
BEGIN
	FOR v IN SELECT * FROM jsonb_to_recordset(dropped) AS d(view_name text, table_name text) LOOP
		IF to_regclass(format('%I.%I', schema_name, v.table_name)) IS NOT NULL THEN
			PERFORM dalgo.warehouse_execute(organization_id, format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I',
				schema_name, v.view_name, schema_name, v.table_name));
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo.restore_output_views(uuid, jsonb) IS
	'Internal: create again, over the (new) tables, the output views drop_output_views dropped';

REVOKE ALL ON FUNCTION dalgo.drop_output_views(uuid, text[]), dalgo.restore_output_views(uuid, jsonb) FROM PUBLIC;

CREATE OR REPLACE FUNCTION dalgo.refresh_output(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.transformation_runs;
	o dalgo.outputs;
	t dalgo.transformations;
	v record;
	dropped jsonb;
	schema_name text;
	dest text;
	kind text;
BEGIN
	PERFORM dalgo.verify_scheduled_run('o', run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;
	SELECT * INTO o FROM dalgo.outputs x
	WHERE x.id = (SELECT s.output_id FROM dalgo.schedules s WHERE s.id = (r.details->>'schedule_id')::uuid);
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = o.transformation_id;
	schema_name := 'org_' || replace(o.organization_id::text, '-', '');
	kind := coalesce(o.destination_config->>'type', 'table');
	dest := coalesce(o.destination_config->>'name', t.output_table_name);
	IF kind NOT IN ('table', 'view') THEN
		RAISE EXCEPTION 'unknown destination type "%" (use table or view)', kind USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF kind = 'view' AND dest = t.output_table_name THEN
		RAISE EXCEPTION 'a view destination needs a name other than the transformation''s table "%"', dest
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Set destination_config.name.';
	END IF;

	-- The tables this refresh swaps: the transformation's and its upstream's.
	dropped := dalgo.drop_output_views(o.organization_id, ARRAY(
		SELECT y.output_table_name FROM dalgo.transformations y
		WHERE y.organization_id = o.organization_id AND y.output_table_name IS NOT NULL
		  AND (y.id = t.id OR y.id IN (SELECT u.id FROM dalgo.transformation_upstream(t.id) u))));

	FOR v IN SELECT u.id FROM dalgo.transformation_upstream(t.id) u LOOP
		PERFORM dalgo.run_transformation(v.id, false);
	END LOOP;
	PERFORM dalgo.build_transformation(t.id, run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;

	-- The views dropped above, again over the (new, or on failure the old) tables.
	PERFORM dalgo.restore_output_views(o.organization_id, dropped);
	IF r.status <> 'success' THEN
		RETURN;
	END IF;
	IF kind = 'view' THEN
		PERFORM dalgo.warehouse_execute(o.organization_id, format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I',
			schema_name, dest, schema_name, t.output_table_name));
	ELSIF dest <> t.output_table_name THEN
		PERFORM dalgo.warehouse_execute(o.organization_id, format('CREATE TABLE %I.%I AS SELECT * FROM %I.%I',
			schema_name, '_dalgo_out_' || replace(run_id::text, '-', ''), schema_name, t.output_table_name));
		PERFORM dalgo.swap_warehouse_table(o.organization_id, '_dalgo_out_' || replace(run_id::text, '-', ''), dest);
	END IF;
	UPDATE dalgo.outputs x SET last_refreshed_at = now() WHERE x.id = o.id;
END
$$;
COMMENT ON FUNCTION dalgo.refresh_output(uuid) IS
	'Internal: run an output''s transformation with its upstream, then refresh destination_config ({"type": "table"|"view", "name": ...}); output views over rebuilt tables are dropped and created again around the swap';


-- runs: the dalgo_sync notification carries no run id (item 9.9)
-- (claim_due_schedules above sends it with an empty payload)

-- runs: csv sources read only their organization's directory csv_dir/org_<hex id>/ (item 9.5)
DROP FUNCTION dalgo.csv_path(text);

CREATE FUNCTION dalgo.csv_path(organization_id uuid, relative_path text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_csv_path_org'
	LANGUAGE C STABLE;
COMMENT ON FUNCTION dalgo.csv_path(uuid, text) IS
	'Internal: the canonical path of a readable csv file under dalgo.csv_dir/org_<hex id>/; ".." and absolute paths are refused, and a missing file and a path that leaves the directory give one error';

-- A csv source's path is checked when the source is saved, and again at sync time.
CREATE FUNCTION dalgo.check_csv_source() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.source_type <> 'csv' OR NEW.deleted_at IS NOT NULL OR NOT coalesce(NEW.config ? 'path', false) THEN
		RETURN NEW;
	END IF;
	IF TG_OP = 'UPDATE' AND OLD.source_type = 'csv' AND OLD.deleted_at IS NULL
	   AND (NEW.organization_id, NEW.config->'path') IS NOT DISTINCT FROM (OLD.organization_id, OLD.config->'path') THEN
		RETURN NEW;
	END IF;
	IF jsonb_typeof(NEW.config->'path') <> 'string' THEN
		RAISE EXCEPTION 'a csv source''s config.path must be a string' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- With csv sources disabled only the form of the path can be checked.
	IF current_setting('dalgo.csv_dir') = '' THEN
		IF NEW.config->>'path' = '' OR NEW.config->>'path' LIKE '/%' OR '..' = ANY (string_to_array(NEW.config->>'path', '/')) THEN
			RAISE EXCEPTION 'csv path "%" must be relative to the organization''s csv directory and must not contain ".."',
				NEW.config->>'path' USING ERRCODE = 'insufficient_privilege';
		END IF;
	ELSE
		PERFORM dalgo.csv_path(NEW.organization_id, NEW.config->>'path');
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo.check_csv_source() IS
	'BEFORE trigger on sources: a csv source''s config.path must be a readable file in its organization''s csv directory (dalgo.csv_dir/org_<hex id>/)';
CREATE TRIGGER check_csv_source BEFORE INSERT OR UPDATE ON dalgo.sources
	FOR EACH ROW WHEN (NEW.source_type = 'csv') EXECUTE FUNCTION dalgo.check_csv_source();
COMMENT ON TRIGGER check_csv_source ON dalgo.sources IS 'A csv source reads only its organization''s csv directory';

REVOKE ALL ON FUNCTION dalgo.csv_path(uuid, text), dalgo.check_csv_source() FROM PUBLIC;

-- merge (runs + quota): the final definitions of functions that both changed
CREATE OR REPLACE FUNCTION dalgo.build_transformation(transformation_id uuid, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t dalgo.transformations;
	sql text;
	schema_name text;
	build_name text := '_dalgo_build_' || replace(run_id::text, '-', '');
	n bigint;
	err text;
BEGIN
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = build_transformation.transformation_id;
	UPDATE dalgo.transformation_runs r SET version_number = t.current_version WHERE r.id = run_id;
	BEGIN
		IF t.output_table_name IS NULL THEN
			RAISE EXCEPTION 'transformation % has no output_table_name', t.id USING ERRCODE = 'invalid_parameter_value';
		END IF;
		schema_name := dalgo.warehouse_schema(t.organization_id);
		sql := dalgo.compile_recipe(t.organization_id, t.recipe);
		-- Build under a private name, then swap: readers never see a half-built table,
		-- and a failure leaves the previous output as it was.
		n := dalgo.warehouse_execute(t.organization_id, format('CREATE TABLE %I.%I AS %s', schema_name, build_name, sql));
		PERFORM dalgo.check_warehouse_quota(t.organization_id, t.output_table_name);
		PERFORM dalgo.swap_warehouse_table(t.organization_id, build_name, t.output_table_name);
		PERFORM dalgo.register_warehouse_table(t.organization_id, t.output_table_name, NULL, t.id, n);
		UPDATE dalgo.transformations x SET last_run_at = now() WHERE x.id = t.id;
		UPDATE dalgo.transformation_runs r SET status = 'success', completed_at = clock_timestamp(),
			rows_affected = least(n, 2147483647), executed_sql = sql
		WHERE r.id = run_id;
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS err = MESSAGE_TEXT;
		UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(),
			error_message = err, executed_sql = sql
		WHERE r.id = run_id;
		RAISE WARNING 'transformation run % failed: %', run_id, err;
	END;
END
$$;
COMMENT ON FUNCTION dalgo.build_transformation(uuid, uuid) IS
	'Internal: build a transformation''s output for an existing run row (atomic swap) and record the outcome on it';

CREATE OR REPLACE FUNCTION dalgo.sync_source(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	src dalgo.sources;
	schema_name text;
	build_name text := '_dalgo_sync_' || replace(run_id::text, '-', '');
	target text;
	n bigint;
	relation text;
	path text;
	header text;
	cols text;
BEGIN
	PERFORM dalgo.verify_scheduled_run('s', run_id);
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.id = run_id;
	SELECT * INTO src FROM dalgo.sources x WHERE x.id = r.source_id AND x.deleted_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'the source of run % no longer exists', run_id;
	END IF;
	schema_name := dalgo.warehouse_schema(src.organization_id);
	target := coalesce(src.warehouse_table_name, 'source_' || left(replace(src.id::text, '-', ''), 12));
	IF src.source_type = 'postgres' THEN
		-- Read as the warehouse role: it sees only what it was granted.
		relation := dalgo.source_relation(src.config);
		n := dalgo.warehouse_execute(src.organization_id,
			format('CREATE TABLE %I.%I AS SELECT * FROM %s', schema_name, build_name, relation));
	ELSIF src.source_type = 'csv' THEN
		path := dalgo.csv_path(src.organization_id, src.config->>'path');
		header := split_part(pg_read_file(path, 0, 65536), E'\n', 1);
		SELECT string_agg(format('%I text', trim(both '"' FROM trim(c))), ', ') INTO cols
		FROM unnest(string_to_array(rtrim(header, E'\r'), ',')) c;
		IF cols IS NULL THEN
			RAISE EXCEPTION 'csv file % has no header line', src.config->>'path' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		PERFORM dalgo.warehouse_execute(src.organization_id, format('CREATE TABLE %I.%I (%s)', schema_name, build_name, cols));
		EXECUTE format('COPY %I.%I FROM %L WITH (FORMAT csv, HEADER true)', schema_name, build_name, path);
		GET DIAGNOSTICS n = ROW_COUNT;
	ELSE
		RAISE EXCEPTION '% sources are synced by a connector', src.source_type;
	END IF;
	PERFORM dalgo.check_warehouse_quota(src.organization_id, target);
	PERFORM dalgo.swap_warehouse_table(src.organization_id, build_name, target);
	PERFORM dalgo.register_warehouse_table(src.organization_id, target, src.id, NULL, n);

	-- source_schemas: columns, types, order and nullability of what was synced.
	DELETE FROM dalgo.source_schemas x WHERE x.source_id = src.id;
	INSERT INTO dalgo.source_schemas (organization_id, source_id, column_name, column_type, column_order, is_nullable)
	SELECT src.organization_id, src.id, a.attname, format_type(a.atttypid, a.atttypmod), a.attnum, NOT a.attnotnull
	FROM pg_attribute a
	WHERE a.attrelid = to_regclass(format('%I.%I', schema_name, target)) AND a.attnum > 0 AND NOT a.attisdropped;
	IF relation IS NOT NULL THEN
		UPDATE dalgo.source_schemas x SET is_nullable = NOT a.attnotnull
		FROM pg_attribute a
		WHERE x.source_id = src.id AND a.attrelid = relation::regclass
		  AND a.attname = x.column_name;
	END IF;

	UPDATE dalgo.sources x SET last_synced_at = now(), warehouse_table_name = target WHERE x.id = src.id;
	UPDATE dalgo.sync_runs x SET status = 'success', completed_at = clock_timestamp(), rows_synced = least(n, 2147483647)
	WHERE x.id = run_id;
END
$$;
COMMENT ON FUNCTION dalgo.sync_source(uuid) IS 'Internal: an in-database sync of a postgres or csv source into its warehouse table';

CREATE OR REPLACE FUNCTION dalgo.execute_scheduled_run(run_kind text, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo.check_run_quota(CASE WHEN run_kind = 's'
		THEN (SELECT r.organization_id FROM dalgo.sync_runs r WHERE r.id = run_id)
		ELSE (SELECT r.organization_id FROM dalgo.transformation_runs r WHERE r.id = run_id) END);
	IF run_kind = 's' THEN
		PERFORM dalgo.sync_source(run_id);
	ELSIF run_kind = 'o' THEN
		PERFORM dalgo.refresh_output(run_id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.execute_scheduled_run(text, uuid) IS 'Internal: execute a claimed run (what a run worker does)';


-- member: EXECUTE grants follow the documented API: check_recipe_sql is
-- internal (its trigger caller runs as definer), is_connector_source is not
-- PUBLIC's
ALTER FUNCTION dalgo.transformation_before_save() SECURITY DEFINER;
REVOKE EXECUTE ON FUNCTION dalgo.check_recipe_sql(uuid, text) FROM dalgo_authenticated, dalgo_service;
REVOKE ALL ON FUNCTION dalgo.is_connector_source(dalgo.source_type) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.is_connector_source(dalgo.source_type) TO dalgo_authenticated, dalgo_service;

-- member: a row never moves to another organization
CREATE FUNCTION dalgo.refuse_tenant_move() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_refuse_tenant_move'
	LANGUAGE C;
REVOKE ALL ON FUNCTION dalgo.refuse_tenant_move() FROM PUBLIC;
COMMENT ON FUNCTION dalgo.refuse_tenant_move() IS
	'BEFORE UPDATE row trigger for tenant tables: a row''s organization (the column named by the trigger argument, default organization_id) is fixed when it is created; changing it is refused (42501), whoever runs the update';

-- A row never moves to another organization: every table with a tenant
-- column refuses a change of organization_id (audit_logs is append-only
-- already).
DO $$
DECLARE
	t text;
BEGIN
	FOR t IN SELECT c.relname FROM pg_catalog.pg_class c
			 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'organization_id' AND NOT a.attisdropped
			 WHERE c.relnamespace = 'dalgo'::regnamespace AND c.relkind = 'r' AND c.relname <> 'audit_logs'
			 ORDER BY c.relname
	LOOP
		EXECUTE format('CREATE TRIGGER tenant_fixed BEFORE UPDATE ON dalgo.%I '
					   'FOR EACH ROW EXECUTE FUNCTION dalgo.refuse_tenant_move()', t);
		EXECUTE format('COMMENT ON TRIGGER tenant_fixed ON dalgo.%I IS %L',
					   t, 'A row never moves to another organization');
	END LOOP;
END
$$;

-- member: a removed owner's membership is restored only by an owner; nobody
-- grants a role above their own; the last-owner check counts owners under a
-- fresh snapshot after the organization's lock (REPEATABLE READ races)
CREATE FUNCTION dalgo.live_owner_count(organization_id uuid, except_membership uuid) RETURNS integer
	AS 'MODULE_PATHNAME', 'dalgo_live_owner_count'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION dalgo.live_owner_count(uuid, uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo.live_owner_count(uuid, uuid) IS
	'Internal (guard_membership): live owner memberships of active, live users in the organization, but except_membership, counted under a fresh snapshot (the latest committed state), whatever the isolation level';

CREATE OR REPLACE FUNCTION dalgo.guard_membership() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	org uuid;
	my_role dalgo.member_role;
	old_role dalgo.member_role;
	new_role dalgo.member_role;
	was_live boolean := false;
	is_live boolean := false;
	grants boolean;
	first_owner boolean := false;
BEGIN
	IF TG_OP = 'UPDATE' AND (NEW.organization_id <> OLD.organization_id OR NEW.user_id <> OLD.user_id) THEN
		RAISE EXCEPTION 'a membership cannot be moved to another organization or user'
			USING ERRCODE = 'insufficient_privilege', HINT = 'Remove it and add a new membership.';
	END IF;

	-- The row before and after: a role held while live.
	IF TG_OP = 'DELETE' THEN
		org := OLD.organization_id;
	ELSE
		org := NEW.organization_id;
		new_role := NEW.role;
		is_live := NEW.deleted_at IS NULL;
	END IF;
	IF TG_OP <> 'INSERT' THEN
		old_role := OLD.role;
		was_live := OLD.deleted_at IS NULL;
	END IF;
	-- Does the change hand out a role the row did not give before?  An
	-- insert, a restore (deleted_at back to NULL) and a raise all do.
	grants := is_live AND (NOT was_live OR new_role > old_role);

	-- What the acting user may do (service work without an identity is not limited here).
	IF me IS NOT NULL THEN
		my_role := dalgo.org_role(org);
		-- The first owner of a new organization, which has no live members yet.
		IF TG_OP = 'INSERT' AND new_role = 'owner' AND NEW.user_id = me THEN
			first_owner := NOT EXISTS (SELECT FROM dalgo.organization_members m
									   WHERE m.organization_id = org AND m.deleted_at IS NULL);
		END IF;
		IF NOT first_owner THEN
			-- Nobody raises their own role, also not by restoring an old membership.
			IF grants AND NEW.user_id = me AND (my_role IS NULL OR new_role > my_role) THEN
				RAISE EXCEPTION 'you cannot raise your own role'
					USING ERRCODE = 'insufficient_privilege';
			END IF;
			-- Owner rows are an owner's: adding, granting, revoking, restoring, removing.
			IF my_role IS DISTINCT FROM 'owner' THEN
				IF TG_OP = 'INSERT' AND new_role = 'owner' THEN
					RAISE EXCEPTION 'only an owner can add an owner'
						USING ERRCODE = 'insufficient_privilege';
				ELSIF TG_OP = 'UPDATE' AND (new_role = 'owner' OR old_role = 'owner') AND new_role <> old_role THEN
					RAISE EXCEPTION 'only an owner can grant or revoke the owner role'
						USING ERRCODE = 'insufficient_privilege';
				ELSIF TG_OP = 'UPDATE' AND old_role = 'owner' AND was_live AND NOT is_live THEN
					RAISE EXCEPTION 'only an owner can remove an owner'
						USING ERRCODE = 'insufficient_privilege';
				ELSIF TG_OP = 'UPDATE' AND new_role = 'owner' AND is_live AND NOT was_live THEN
					RAISE EXCEPTION 'only an owner can restore an owner''s membership'
						USING ERRCODE = 'insufficient_privilege',
							  HINT = 'Restoring an owner row grants the owner role.';
				ELSIF TG_OP = 'DELETE' AND old_role = 'owner' THEN
					RAISE EXCEPTION 'only an owner can remove an owner'
						USING ERRCODE = 'insufficient_privilege';
				END IF;
			END IF;
			-- Nobody hands out a role above their own.
			IF grants AND (my_role IS NULL OR new_role > my_role) THEN
				RAISE EXCEPTION 'you cannot grant a role above your own'
					USING ERRCODE = 'insufficient_privilege',
						  DETAIL = pg_catalog.format('Your role is %s; the membership would give %s.',
													 coalesce(my_role::text, 'none'), new_role);
			END IF;
		END IF;
	END IF;

	-- An organization never loses its last owner (whoever acts).
	IF was_live AND old_role = 'owner' AND NOT (is_live AND new_role = 'owner') THEN
		-- Every owner removal locks the organization row, so they run one
		-- at a time; the count then reads the latest committed state, not
		-- this transaction's snapshot, so a removal committed while we
		-- waited is seen under REPEATABLE READ and SERIALIZABLE too.
		-- A deleted organization (its members cascading away) has no row left.
		PERFORM FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL FOR NO KEY UPDATE;
		IF FOUND AND dalgo.live_owner_count(org, OLD.id) = 0 THEN
			RAISE EXCEPTION 'cannot remove the last owner of organization %', org
				USING ERRCODE = 'check_violation',
					  HINT = 'Make another member an owner first, or delete the organization.';
		END IF;
	END IF;

	IF TG_OP = 'DELETE' THEN
		RETURN OLD;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo.guard_membership() IS
	'BEFORE row trigger on organization_members: only owners add, grant, revoke, restore or remove the owner role, nobody raises their own role or grants one above their own (restoring a membership grants its role), memberships never move, and an organization keeps at least one live owner (checked under the organization''s row lock against the latest committed state)';

-- member: the membership cache invalidation fires on logical-replication
-- subscribers too
ALTER TABLE dalgo.users ENABLE ALWAYS TRIGGER membership_changed;
ALTER TABLE dalgo.organizations ENABLE ALWAYS TRIGGER membership_changed;
ALTER TABLE dalgo.organization_members ENABLE ALWAYS TRIGGER membership_changed;

-- member: row triggers invalidate the membership cache on a logical-replication
-- subscriber (its apply worker fires row triggers only)
CREATE TRIGGER membership_replicated AFTER INSERT OR UPDATE OR DELETE ON dalgo.users
	FOR EACH ROW EXECUTE FUNCTION dalgo.membership_changed();
CREATE TRIGGER membership_replicated AFTER INSERT OR UPDATE OR DELETE ON dalgo.organizations
	FOR EACH ROW EXECUTE FUNCTION dalgo.membership_changed();
CREATE TRIGGER membership_replicated AFTER INSERT OR UPDATE OR DELETE ON dalgo.organization_members
	FOR EACH ROW EXECUTE FUNCTION dalgo.membership_changed();
ALTER TABLE dalgo.users ENABLE REPLICA TRIGGER membership_replicated;
ALTER TABLE dalgo.organizations ENABLE REPLICA TRIGGER membership_replicated;
ALTER TABLE dalgo.organization_members ENABLE REPLICA TRIGGER membership_replicated;
COMMENT ON TRIGGER membership_replicated ON dalgo.users IS 'Invalidates membership caches for rows a logical-replication apply worker writes';
COMMENT ON TRIGGER membership_replicated ON dalgo.organizations IS 'Invalidates membership caches for rows a logical-replication apply worker writes';
COMMENT ON TRIGGER membership_replicated ON dalgo.organization_members IS 'Invalidates membership caches for rows a logical-replication apply worker writes';
COMMENT ON FUNCTION dalgo.membership_changed() IS
	'AFTER statement (and, for logical-replication apply, row) trigger on users, organizations and organization_members: invalidates every backend''s membership cache (this transaction''s next statement, other sessions at commit)';

-- ident: identity lasts one transaction, claims are trusted from named
-- authenticators only, tokens may be bound to an audience and issuer
COMMENT ON FUNCTION dalgo.current_user_id() IS
	'The caller''s user id: from dalgo.authenticate(), else the dalgo.user_id setting, else request.jwt.claims->>''sub'' when session_user is listed in dalgo.claims_authenticators; settings count only in the transaction that set them; NULL when there is none or it is malformed';
COMMENT ON FUNCTION dalgo.authenticate(text, boolean) IS
	'Verify an HS256 JWT signed with dalgo.jwt_secret (exp required, nbf honoured, no crit header, aud and iss checked when dalgo.jwt_audience and dalgo.jwt_issuer are set, sub = an active user) and make its subject the caller''s identity for this transaction; session => true is refused (0A000); any failure raises 28000 "authentication failed"';
COMMENT ON FUNCTION dalgo.sign_out() IS 'Forget the identity set by dalgo.authenticate() in this transaction (RESET ALL does the same); refused while a data-modifying statement runs';
-- ident: dalgo.jwt_secret is no longer accepted from ALTER DATABASE/ROLE ... SET
-- (every role can read pg_db_role_setting); say so if 0.1.0 left one there.
DO $$
DECLARE
	n bigint;
BEGIN
	SELECT count(*) INTO n FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c
	WHERE pg_catalog.lower(c) LIKE 'dalgo.jwt_secret=%';
	IF n > 0 THEN
		RAISE WARNING 'dalgo.jwt_secret is stored in pg_db_role_setting % time(s); every role can read it there, and dalgo 0.2.0 ignores it', n
			USING HINT = 'Remove it with ALTER DATABASE/ROLE ... RESET dalgo.jwt_secret, rotate the secret, and set the new one in postgresql.conf or with ALTER SYSTEM.';
	END IF;
END
$$;

-- audit: the shared redaction, dalgo.redact(jsonb) and dalgo.redact(text)
CREATE FUNCTION dalgo.redact(document jsonb) RETURNS jsonb
	AS 'MODULE_PATHNAME', 'dalgo_redact_jsonb_sql'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.redact(jsonb) IS
	'The document with secrets redacted, as the audit trail writes it: values of keys naming secrets (password, token, api_key, dsn, *_secret, *_key, *_token, *_password, ...) become "[redacted]"; URL credentials, secret=value pairs and bearer tokens inside strings become ***';

CREATE FUNCTION dalgo.redact(value text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_redact_text_sql'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.redact(text) IS
	'The text with credentials stripped: URL user information (scheme://***@host), secret=value pairs and bearer tokens become ***';

REVOKE ALL ON FUNCTION dalgo.redact(jsonb), dalgo.redact(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.redact(jsonb), dalgo.redact(text) TO dalgo_authenticated, dalgo_service;

-- audit: purge_audit_logs() finds old rows through a BRIN index on created_at
CREATE INDEX audit_logs_created_at_idx ON dalgo.audit_logs USING brin (created_at) WITH (autosummarize = on);
COMMENT ON INDEX dalgo.audit_logs_created_at_idx IS 'Time index for dalgo.purge_audit_logs(): BRIN, the trail is appended in time order';

-- audit: sources.config is write-only for end users; dalgo.source_config() reads it redacted
-- End users read every column of sources but config.
REVOKE SELECT ON dalgo.sources FROM dalgo_authenticated;
GRANT SELECT (id, organization_id, name, description, source_type, warehouse_table_name, last_synced_at,
			  created_by_id, created_at, updated_at, deleted_at)
	ON dalgo.sources TO dalgo_authenticated;

CREATE FUNCTION dalgo.source_config(source_id uuid) RETURNS jsonb
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
	doc jsonb;
BEGIN
	SELECT s.organization_id, s.config INTO org, doc FROM dalgo.sources s WHERE s.id = source_config.source_id;
	-- The same test as the read policy on sources: no row, no answer.
	IF NOT FOUND OR NOT coalesce(org OPERATOR(pg_catalog.=) ANY (dalgo.current_org_ids('viewer')), false) THEN
		RETURN NULL;
	END IF;
	RETURN dalgo.redact(doc);
END
$$;
COMMENT ON FUNCTION dalgo.source_config(uuid) IS
	'A source''s config with its secrets redacted (dalgo.redact), for members of the source''s organization; NULL for a source the caller cannot see. Stored secrets are write-only: replace them with UPDATE';

REVOKE ALL ON FUNCTION dalgo.source_config(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.source_config(uuid) TO dalgo_authenticated;
COMMENT ON COLUMN dalgo.sources.config IS
	'Source settings, credentials included: write-only for end users (read it redacted with dalgo.source_config()); dalgo_service reads it whole; redacted in the audit trail';
-- Run history is read by every member: what a connector or a failed sync
-- writes into a sync run passes through the same redaction.
CREATE FUNCTION dalgo.redact_sync_run() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	NEW.error_message := dalgo.redact(NEW.error_message);
	NEW.details := dalgo.redact(NEW.details);
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo.redact_sync_run() IS
	'BEFORE trigger on sync_runs: error_message and details pass through dalgo.redact(), so run history never shows credentials';
REVOKE ALL ON FUNCTION dalgo.redact_sync_run() FROM PUBLIC;
CREATE TRIGGER redact_secrets BEFORE INSERT OR UPDATE OF error_message, details ON dalgo.sync_runs
	FOR EACH ROW EXECUTE FUNCTION dalgo.redact_sync_run();
COMMENT ON TRIGGER redact_secrets ON dalgo.sync_runs IS 'Run history never shows credentials (dalgo.redact)';

-- rlim: size-guarded text functions for compiled recipes (schema dalgo_recipe)
CREATE SCHEMA dalgo_recipe;
COMMENT ON SCHEMA dalgo_recipe IS 'dalgo: size-guarded text functions that compiled recipe SQL calls';
GRANT USAGE ON SCHEMA dalgo_recipe TO PUBLIC;

CREATE FUNCTION dalgo_recipe.concat(VARIADIC "any") RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_concat'
	LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.concat("any") IS
	'CONCAT that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.concat_ws(text, VARIADIC "any") RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_concat_ws'
	LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.concat_ws(text, "any") IS
	'CONCAT_WS that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.replace(text, text, text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_replace'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.replace(text, text, text) IS
	'REPLACE that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.lpad(text, integer) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_lpad'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.lpad(text, integer) IS
	'LPAD that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.lpad(text, integer, text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_lpad'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.lpad(text, integer, text) IS
	'LPAD that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.rpad(text, integer) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_rpad'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.rpad(text, integer) IS
	'RPAD that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.rpad(text, integer, text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_rpad'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.rpad(text, integer, text) IS
	'RPAD that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';

-- quota: run_seconds caps the deadline of run_transformation with its upstream
-- run_seconds: a cap on the deadline of the statement that runs a
-- transformation with its upstream (src/deadline.c).
CREATE FUNCTION dalgo.cap_statement_deadline(seconds bigint) RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_cap_statement_deadline'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION dalgo.cap_statement_deadline(bigint) IS
	'Internal: cap the current statement''s recipe deadline (dalgo.statement_timeout) at this many seconds from now; the outermost cap wins';

CREATE FUNCTION dalgo.run_time_quota_hit() RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_run_time_quota_hit'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION dalgo.run_time_quota_hit() IS
	'Internal: true when the current statement has passed the cap that cap_statement_deadline set (the run_seconds quota)';

REVOKE ALL ON FUNCTION dalgo.cap_statement_deadline(bigint), dalgo.run_time_quota_hit() FROM PUBLIC;

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
	PERFORM dalgo.check_run_quota(t.organization_id);
	-- The run_seconds quota caps this call with its upstream (the outermost cap wins).
	PERFORM dalgo.cap_statement_deadline(dalgo.organization_quota(t.organization_id, 'run_seconds'));
	BEGIN
		IF with_upstream THEN
			FOR up IN SELECT * FROM dalgo.transformation_upstream(t.id) LOOP
				PERFORM dalgo.run_transformation(up.id, false);
			END LOOP;
		END IF;
		INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, version_number, status, started_at,
											   triggered_by_id, details)
		VALUES (t.organization_id, t.id, t.current_version, 'running', clock_timestamp(), dalgo.current_user_id(),
				jsonb_build_object('runner_pid', pg_backend_pid()))
		RETURNING id INTO run_id;
		PERFORM dalgo.build_transformation(t.id, run_id);
	EXCEPTION WHEN query_canceled THEN
		IF dalgo.run_time_quota_hit() THEN
			RAISE EXCEPTION 'quota run_seconds exceeded: the run with its upstream took more than % seconds',
				dalgo.organization_quota(t.organization_id, 'run_seconds')
				USING ERRCODE = 'configuration_limit_exceeded',
					  HINT = 'Split the work, or ask a superuser to raise the quota.';
		END IF;
		RAISE;
	END;
	RETURN run_id;
END
$$;
COMMENT ON FUNCTION dalgo.run_transformation(uuid, boolean) IS
	'Build a transformation''s output table (atomic swap) and record the run; with_upstream runs what it reads first. Members and above. A failure is recorded on the run row, reported as a WARNING, and leaves the previous output intact';


-- quota: connector runs of an organization at a quota stay pending
CREATE OR REPLACE FUNCTION dalgo.claim_sync_run() RETURNS dalgo.sync_runs
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	org uuid;
BEGIN
	FOR org IN
		SELECT x.organization_id FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status IN ('pending', 'running') AND dalgo.is_connector_source(s.source_type) AND x.deleted_at IS NULL
		GROUP BY x.organization_id
		HAVING bool_or(x.status = 'pending')
		ORDER BY count(*) FILTER (WHERE x.status = 'running'), min(x.created_at) FILTER (WHERE x.status = 'pending'),
				 x.organization_id
	LOOP
		-- An organization at a quota keeps its runs pending until it is below it.
		BEGIN
			PERFORM dalgo.check_run_quota(org);
		EXCEPTION WHEN configuration_limit_exceeded THEN
			CONTINUE;
		END;
		SELECT x.* INTO r FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status = 'pending' AND x.organization_id = org AND dalgo.is_connector_source(s.source_type)
		  AND x.deleted_at IS NULL
		ORDER BY x.created_at LIMIT 1 FOR UPDATE OF x SKIP LOCKED;
		IF FOUND THEN
			UPDATE dalgo.sync_runs x SET status = 'running', started_at = clock_timestamp() WHERE x.id = r.id RETURNING * INTO r;
			RETURN r;
		END IF;
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo.claim_sync_run() IS
	'Connector protocol: claim a pending connector sync run (SKIP LOCKED; the organization with the fewest running, then the oldest) and mark it running; NULL when there is none';
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
	-- The output table name is checked on every insert and update, whatever changed
	-- (a move to another organization is refused by the tenant_fixed trigger).
	IF NEW.deleted_at IS NULL AND NEW.output_table_name IS NOT NULL
	   AND (TG_OP = 'INSERT' OR NEW.organization_id = OLD.organization_id) THEN
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
	IF NEW.deleted_at IS NULL AND NEW.warehouse_table_name IS NOT NULL
	   AND (TG_OP = 'INSERT' OR NEW.organization_id = OLD.organization_id) THEN
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
	IF NEW.deleted_at IS NULL AND NEW.destination_config ? 'name'
	   AND (TG_OP = 'INSERT' OR NEW.organization_id = OLD.organization_id) THEN
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
	PERFORM dalgo.check_run_quota(t.organization_id);
	-- The run_seconds quota caps this call with its upstream (the outermost cap wins).
	PERFORM dalgo.cap_statement_deadline(dalgo.organization_quota(t.organization_id, 'run_seconds'));
	BEGIN
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
											   triggered_by_id, details)
		VALUES (t.organization_id, t.id, t.current_version, 'running', clock_timestamp(), dalgo.current_user_id(),
				jsonb_build_object('runner_pid', pg_backend_pid()))
		RETURNING id INTO run_id;
		PERFORM dalgo.build_transformation(t.id, run_id);
	EXCEPTION WHEN query_canceled THEN
		IF dalgo.run_time_quota_hit() THEN
			RAISE EXCEPTION 'quota run_seconds exceeded: the run with its upstream took more than % seconds',
				dalgo.organization_quota(t.organization_id, 'run_seconds')
				USING ERRCODE = 'configuration_limit_exceeded',
					  HINT = 'Split the work, or ask a superuser to raise the quota.';
		END IF;
		RAISE;
	END;
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

-- sched: the scheduler's recovery judges a run's worker by pid and backend start, on every tick.
CREATE OR REPLACE FUNCTION dalgo.recover_interrupted_runs() RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	m integer;
	seen timestamptz;
	live_pids integer[];
	live_starts timestamptz[];
BEGIN
	-- A run is alive while the backend that marked it running is: the same
	-- pid, started no later than the run (a reused pid starts later).  Only
	-- runs marked before the list of backends was read are judged by it.
	PERFORM pg_stat_clear_snapshot();
	seen := clock_timestamp();
	SELECT array_agg(a.pid), array_agg(a.backend_start) INTO live_pids, live_starts
	FROM pg_stat_activity a WHERE a.backend_start IS NOT NULL;
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = 'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)'
	FROM dalgo.sources s
	WHERE s.id = r.source_id AND NOT dalgo.is_connector_source(s.source_type) AND r.status = 'running'
	  AND r.details ? 'schedule_id' AND coalesce(r.started_at, '-infinity') < seen
	  AND NOT EXISTS (SELECT FROM unnest(live_pids, live_starts) a(pid, started)
					  WHERE a.pid::text = r.details->>'runner_pid' AND a.started <= r.started_at);
	GET DIAGNOSTICS n = ROW_COUNT;
	UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = 'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)'
	WHERE r.status = 'running' AND r.details ? 'schedule_id' AND coalesce(r.started_at, '-infinity') < seen
	  AND NOT EXISTS (SELECT FROM unnest(live_pids, live_starts) a(pid, started)
					  WHERE a.pid::text = r.details->>'runner_pid' AND a.started <= r.started_at);
	GET DIAGNOSTICS m = ROW_COUNT;
	RETURN n + m;
END
$$;
COMMENT ON FUNCTION dalgo.recover_interrupted_runs() IS
	'Mark scheduled runs whose worker is gone (same pid and a backend start no later than the run''s) as failed; the scheduler calls it on every tick (pending runs simply wait for a worker)';

-- sched: a connector that claimed a run and went away.
CREATE FUNCTION dalgo.expire_stalled_connector_runs(timeout_seconds integer) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
BEGIN
	IF timeout_seconds IS NULL OR timeout_seconds <= 0 THEN
		RETURN 0;
	END IF;
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = format('the connector did not complete the run within %s seconds of claiming it', timeout_seconds)
	WHERE r.status = 'running' AND coalesce(r.started_at, r.created_at) < now() - make_interval(secs => timeout_seconds)
	  AND EXISTS (SELECT FROM dalgo.sources s WHERE s.id = r.source_id AND dalgo.is_connector_source(s.source_type));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo.expire_stalled_connector_runs(integer) IS
	'Mark connector runs claimed but not completed within timeout_seconds (dalgo.run_timeout) as failed; 0 disables it';
REVOKE ALL ON FUNCTION dalgo.expire_stalled_connector_runs(integer) FROM PUBLIC;

-- sched: run_at_time 24:00 is refused.  Existing 24:00 rows become 00:00 of
-- the next day: hourly and daily simply 00:00, weekly the next weekday,
-- monthly the next day of the month (31 becomes 1, the first after the
-- month's last day).
UPDATE dalgo.schedules SET run_at_time = '00:00',
	run_at_day = CASE frequency WHEN 'weekly' THEN run_at_day % 7 + 1
								WHEN 'monthly' THEN run_at_day % 31 + 1 END
WHERE run_at_time = '24:00';
ALTER TABLE dalgo.schedules ADD CONSTRAINT schedules_run_at_time_of_day CHECK (run_at_time < '24:00');
COMMENT ON CONSTRAINT schedules_run_at_time_of_day ON dalgo.schedules IS
	'run_at_time is a time of day, 00:00 to 23:59:59.999999; 24:00 is refused (use 00:00 of the next day)';

-- sched: the scheduler idles while a database's dalgo is older than the library; wake it now.
SELECT dalgo.wake_launcher();

-- lead: a swap keeps the output views over the swapped table (manual runs too)
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
	dropped jsonb;
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
	-- Output views over the table depend on it: drop them around the swap
	-- (in this transaction, so readers never miss them).
	dropped := dalgo.drop_output_views(organization_id, ARRAY[table_name]);
	PERFORM dalgo.warehouse_execute(organization_id, format('DROP TABLE IF EXISTS %I.%I', schema_name, table_name));
	PERFORM dalgo.warehouse_execute(organization_id, format('ALTER TABLE %I.%I RENAME TO %I', schema_name, build_name, table_name));
	PERFORM dalgo.restore_output_views(organization_id, dropped);
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


-- attack1: an output's destination replaces only what its own refreshes made
-- (a member's destination_config.name dropped an admin's source table or an
-- operator's view); a copied destination counts against warehouse_bytes
CREATE FUNCTION dalgo.output_view_reads(organization_id uuid, view_name text, table_name text) RETURNS boolean
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce((
		SELECT c.relkind = 'v' AND tbl IS NOT NULL
			AND bool_and(d.refobjid = tbl) AND bool_or(d.refobjid = tbl)
		FROM pg_class c
		JOIN pg_rewrite rw ON rw.ev_class = c.oid
		LEFT JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
			AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> c.oid,
		LATERAL (SELECT to_regclass(format('%I.%I', 'org_' || replace(output_view_reads.organization_id::text, '-', ''),
										   output_view_reads.table_name))::oid AS tbl) x
		WHERE c.oid = to_regclass(format('%I.%I', 'org_' || replace(output_view_reads.organization_id::text, '-', ''),
										 output_view_reads.view_name))
		GROUP BY c.relkind, tbl), false)
$$;
COMMENT ON FUNCTION dalgo.output_view_reads(uuid, text, text) IS
	'Internal: true when the warehouse relation view_name is a view that reads the warehouse table table_name and no other relation (an output view dalgo made)';
REVOKE ALL ON FUNCTION dalgo.output_view_reads(uuid, text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION dalgo.drop_output_views(organization_id uuid, table_names text[]) RETURNS jsonb
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := 'org_' || replace(organization_id::text, '-', '');
	v record;
	dropped jsonb := '[]';
BEGIN
	FOR v IN SELECT DISTINCT coalesce(x.destination_config->>'name', y.output_table_name) AS view_name,
					y.output_table_name AS table_name
			 FROM dalgo.outputs x JOIN dalgo.transformations y ON y.id = x.transformation_id
			 WHERE x.organization_id = drop_output_views.organization_id
			   AND y.organization_id = drop_output_views.organization_id
			   AND x.deleted_at IS NULL AND x.destination_config->>'type' = 'view'
			   AND y.output_table_name = ANY (table_names)
	LOOP
		IF v.view_name <> v.table_name AND dalgo.output_view_reads(organization_id, v.view_name, v.table_name) THEN
			PERFORM dalgo.warehouse_execute(organization_id, format('DROP VIEW %I.%I', schema_name, v.view_name));
			dropped := dropped || jsonb_build_object('view_name', v.view_name, 'table_name', v.table_name);
		END IF;
	END LOOP;
	RETURN dropped;
END
$$;
COMMENT ON FUNCTION dalgo.drop_output_views(uuid, text[]) IS
	'Internal: drop the organization''s output views over the given warehouse tables before they are swapped; returns what restore_output_views needs';

CREATE OR REPLACE FUNCTION dalgo.refresh_output(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.transformation_runs;
	o dalgo.outputs;
	t dalgo.transformations;
	v record;
	dropped jsonb;
	schema_name text;
	dest text;
	kind text;
BEGIN
	PERFORM dalgo.verify_scheduled_run('o', run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;
	SELECT * INTO o FROM dalgo.outputs x
	WHERE x.id = (SELECT s.output_id FROM dalgo.schedules s WHERE s.id = (r.details->>'schedule_id')::uuid);
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = o.transformation_id;
	schema_name := 'org_' || replace(o.organization_id::text, '-', '');
	kind := coalesce(o.destination_config->>'type', 'table');
	dest := coalesce(o.destination_config->>'name', t.output_table_name);
	IF kind NOT IN ('table', 'view') THEN
		RAISE EXCEPTION 'unknown destination type "%" (use table or view)', kind USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF kind = 'view' AND dest = t.output_table_name THEN
		RAISE EXCEPTION 'a view destination needs a name other than the transformation''s table "%"', dest
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Set destination_config.name.';
	END IF;
	-- destination_config.name is a member's text: it may name only what this
	-- output makes.  Longer names would be truncated to another table's name.
	IF dest = '' OR octet_length(dest) >= 64 OR dest LIKE '\_dalgo\_%' THEN
		RAISE EXCEPTION 'output destination name "%" is not allowed', dest
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use a name of 1 to 63 bytes that does not start with _dalgo_.';
	END IF;
	IF dest <> t.output_table_name AND to_regclass(format('%I.%I', schema_name, dest)) IS NOT NULL
	   AND NOT (CASE WHEN kind = 'view' THEN dalgo.output_view_reads(o.organization_id, dest, t.output_table_name)
				ELSE EXISTS (SELECT FROM dalgo.warehouse_tables w
							 WHERE w.organization_id = o.organization_id AND w.table_name = dest
							   AND w.deleted_at IS NULL AND w.source_id IS NULL AND w.transformation_id = t.id) END) THEN
		RAISE EXCEPTION 'output destination "%" exists and was not made by this output', dest
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'An output replaces only a table or view that its own refreshes made.',
				  HINT = 'Set destination_config.name to a new name.';
	END IF;

	-- The tables this refresh swaps: the transformation's and its upstream's.
	dropped := dalgo.drop_output_views(o.organization_id, ARRAY(
		SELECT y.output_table_name FROM dalgo.transformations y
		WHERE y.organization_id = o.organization_id AND y.output_table_name IS NOT NULL
		  AND (y.id = t.id OR y.id IN (SELECT u.id FROM dalgo.transformation_upstream(t.id) u))));

	FOR v IN SELECT u.id FROM dalgo.transformation_upstream(t.id) u LOOP
		PERFORM dalgo.run_transformation(v.id, false);
	END LOOP;
	PERFORM dalgo.build_transformation(t.id, run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;

	-- The views dropped above, again over the (new, or on failure the old) tables.
	PERFORM dalgo.restore_output_views(o.organization_id, dropped);
	IF r.status <> 'success' THEN
		RETURN;
	END IF;
	IF kind = 'view' THEN
		PERFORM dalgo.warehouse_execute(o.organization_id, format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I',
			schema_name, dest, schema_name, t.output_table_name));
	ELSIF dest <> t.output_table_name THEN
		PERFORM dalgo.warehouse_execute(o.organization_id, format('CREATE TABLE %I.%I AS SELECT * FROM %I.%I',
			schema_name, '_dalgo_out_' || replace(run_id::text, '-', ''), schema_name, t.output_table_name));
		PERFORM dalgo.check_warehouse_quota(o.organization_id, dest);
		PERFORM dalgo.swap_warehouse_table(o.organization_id, '_dalgo_out_' || replace(run_id::text, '-', ''), dest);
		PERFORM dalgo.register_warehouse_table(o.organization_id, dest, NULL, t.id, r.rows_affected);
	END IF;
	UPDATE dalgo.outputs x SET last_refreshed_at = now() WHERE x.id = o.id;
END
$$;
COMMENT ON FUNCTION dalgo.refresh_output(uuid) IS
	'Internal: run an output''s transformation with its upstream, then refresh destination_config ({"type": "table"|"view", "name": ...}); output views over rebuilt tables are dropped and created again around the swap';

-- (Existing destination tables are registered to their output by the rsec
-- section above.)

-- attack1: concurrent run_transformation calls count against concurrent_runs
-- and runs_per_hour before their rows are visible (a run slot advisory lock
-- per organization, taken under a gate with the check)
CREATE OR REPLACE FUNCTION dalgo.check_run_quota(organization_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := check_run_quota.organization_id;
	me text := pg_backend_pid()::text;
	slot bigint := hashtextextended('dalgo run slot ' || org::text, 0);
	gate bigint := hashtextextended('dalgo run gate ' || org::text, 0);
	others text[];
	unseen bigint;
	lim bigint;
	n bigint;
BEGIN
	PERFORM pg_advisory_lock(gate);
	BEGIN
		-- Other backends executing a run of the organization now.
		others := ARRAY(SELECT DISTINCT l.pid::text FROM pg_locks l
						WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid()
						  AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
						  AND l.classid = ((slot >> 32) & 4294967295)::text::oid
						  AND l.objid = (slot & 4294967295)::text::oid AND l.objsubid = 1);
		-- ... of which this snapshot sees no running row yet.
		unseen := (SELECT count(*) FROM unnest(others) p
				   WHERE NOT EXISTS (SELECT FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.status = 'running'
									 AND r.details->>'runner_pid' = p)
					 AND NOT EXISTS (SELECT FROM dalgo.transformation_runs r WHERE r.organization_id = org
									 AND r.status = 'running' AND r.details->>'runner_pid' = p));
		lim := dalgo.organization_quota(org, 'concurrent_runs');
		IF lim IS NOT NULL THEN
			n := (SELECT count(*) FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.status = 'running'
				  AND r.details->>'runner_pid' IS DISTINCT FROM me)
			   + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.organization_id = org AND r.status = 'running'
				  AND r.details->>'runner_pid' IS DISTINCT FROM me)
			   + unseen;
			IF n >= lim THEN
				RAISE EXCEPTION 'quota concurrent_runs exceeded: % runs of the organization are in progress, the limit is %', n, lim
					USING ERRCODE = 'configuration_limit_exceeded',
						  HINT = 'Wait for a run to finish; a superuser can raise the quota.';
			END IF;
		END IF;
		lim := dalgo.organization_quota(org, 'runs_per_hour');
		IF lim IS NOT NULL THEN
			n := (SELECT count(*) FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.started_at > now() - interval '1 hour'
				  AND NOT r.details ? 'skipped' AND NOT (r.status = 'running' AND r.details->>'runner_pid' = me))
			   + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.organization_id = org
				  AND r.started_at > now() - interval '1 hour' AND NOT r.details ? 'skipped'
				  AND NOT (r.status = 'running' AND r.details->>'runner_pid' = me))
			   + unseen;
			IF n >= lim THEN
				RAISE EXCEPTION 'quota runs_per_hour exceeded: the organization started % runs in the last hour, the limit is %', n, lim
					USING ERRCODE = 'configuration_limit_exceeded',
						  HINT = 'Try again later; a superuser can raise the quota.';
			END IF;
		END IF;
		PERFORM dalgo.check_warehouse_quota(org, NULL);
		PERFORM pg_advisory_xact_lock_shared(slot);
	EXCEPTION WHEN OTHERS OR query_canceled THEN
		PERFORM pg_advisory_unlock(gate);
		RAISE;
	END;
	PERFORM pg_advisory_unlock(gate);
END
$$;
COMMENT ON FUNCTION dalgo.check_run_quota(uuid) IS
	'Internal: refuse a run that would exceed the organization''s concurrent_runs, runs_per_hour or warehouse_bytes quota';

-- attack1: connector runs are counted and refused by the organization's
-- quotas in claim_sync_run; complete_sync_run drops dalgo's own details keys
CREATE OR REPLACE FUNCTION dalgo.claim_sync_run() RETURNS dalgo.sync_runs
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	org uuid;
	msg text;
BEGIN
	FOR org IN
		SELECT x.organization_id FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status IN ('pending', 'running') AND dalgo.is_connector_source(s.source_type) AND x.deleted_at IS NULL
		GROUP BY x.organization_id
		HAVING bool_or(x.status = 'pending')
		ORDER BY count(*) FILTER (WHERE x.status = 'running'), min(x.created_at) FILTER (WHERE x.status = 'pending'),
				 x.organization_id
	LOOP
		SELECT x.* INTO r FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status = 'pending' AND x.organization_id = org AND dalgo.is_connector_source(s.source_type)
		  AND x.deleted_at IS NULL
		ORDER BY x.created_at LIMIT 1 FOR UPDATE OF x SKIP LOCKED;
		IF FOUND THEN
			-- A connector run is a run: the organization's quotas apply, as
			-- to in-database runs (a refused run fails with the quota's message).
			BEGIN
				PERFORM dalgo.check_run_quota(org);
			EXCEPTION WHEN configuration_limit_exceeded THEN
				GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
				UPDATE dalgo.sync_runs x SET status = 'failed', completed_at = clock_timestamp(), error_message = msg
				WHERE x.id = r.id;
				CONTINUE;
			END;
			UPDATE dalgo.sync_runs x SET status = 'running', started_at = clock_timestamp() WHERE x.id = r.id RETURNING * INTO r;
			RETURN r;
		END IF;
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo.claim_sync_run() IS
	'Connector protocol: claim a pending connector sync run (SKIP LOCKED; the organization with the fewest running, then the oldest) and mark it running; a run over its organization''s quota fails instead; NULL when there is none';

CREATE OR REPLACE FUNCTION dalgo.complete_sync_run(run_id uuid, rows_synced integer, error_message text DEFAULT NULL,
										details jsonb DEFAULT '{}')
	RETURNS dalgo.sync_runs
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
BEGIN
	IF jsonb_typeof(coalesce(complete_sync_run.details, '{}')) <> 'object' THEN
		RAISE EXCEPTION 'details must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- The keys dalgo's own code reads (the schedule, skips that quotas do not
	-- count, the runner) are dalgo's: a connector does not set them.
	UPDATE dalgo.sync_runs x SET status = CASE WHEN complete_sync_run.error_message IS NULL THEN 'success' ELSE 'failed' END::dalgo.run_status,
		completed_at = clock_timestamp(), rows_synced = complete_sync_run.rows_synced,
		error_message = complete_sync_run.error_message,
		details = x.details || (coalesce(complete_sync_run.details, '{}')
								- ARRAY['schedule_id', 'skipped', 'runner_pid', 'attempt', 'lag_ms'])
	WHERE x.id = run_id AND x.status = 'running'
	RETURNING * INTO r;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'sync run % is not running (claim it first)', run_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF r.status = 'success' THEN
		UPDATE dalgo.sources s SET last_synced_at = now() WHERE s.id = r.source_id;
	END IF;
	RETURN r;
END
$$;
COMMENT ON FUNCTION dalgo.complete_sync_run(uuid, integer, text, jsonb) IS
	'Connector protocol: finish a claimed run with its row count, or with an error message (then it fails); details (an object) is merged in, except dalgo''s own keys schedule_id, skipped, runner_pid, attempt and lag_ms';

-- attack1: a scheduled run refused by a quota fails without counting as
-- started (refusals no longer fill the next hour's runs_per_hour)
CREATE OR REPLACE FUNCTION dalgo.execute_scheduled_run(run_kind text, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	msg text;
BEGIN
	-- A run refused by a quota did not start: it fails with the quota's
	-- message and, like a skipped slot, does not count against runs_per_hour
	-- (else an organization whose schedules ask for more than its quota
	-- would be refused for good, each refusal filling the next hour).
	BEGIN
		PERFORM dalgo.check_run_quota(CASE WHEN run_kind = 's'
			THEN (SELECT r.organization_id FROM dalgo.sync_runs r WHERE r.id = run_id)
			ELSE (SELECT r.organization_id FROM dalgo.transformation_runs r WHERE r.id = run_id) END);
	EXCEPTION WHEN configuration_limit_exceeded THEN
		GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
		IF run_kind = 's' THEN
			UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(), error_message = msg,
				details = r.details || '{"skipped": true, "quota_refused": true}'
			WHERE r.id = run_id;
		ELSE
			UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(), error_message = msg,
				details = r.details || '{"skipped": true, "quota_refused": true}'
			WHERE r.id = run_id;
		END IF;
		RETURN;
	END;
	IF run_kind = 's' THEN
		PERFORM dalgo.sync_source(run_id);
	ELSIF run_kind = 'o' THEN
		PERFORM dalgo.refresh_output(run_id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.execute_scheduled_run(text, uuid) IS 'Internal: execute a claimed run (what a run worker does); a run over a quota fails without counting as started';

-- attack1: the claim's limit applies after SKIP LOCKED, so locked schedule
-- rows no longer use up its places
CREATE OR REPLACE FUNCTION dalgo.claim_due_schedules(at timestamptz, max_runs integer, only_schedule uuid DEFAULT NULL)
	RETURNS TABLE (schedule_id uuid, run_kind text, run_id uuid)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s dalgo.schedules;
	src dalgo.sources;
	out dalgo.outputs;
	busy boolean;
	det jsonb;
	rid uuid;
BEGIN
	IF max_runs <= 0 THEN
		RETURN;
	END IF;
	-- Fair between organizations: each organization's oldest due schedule
	-- first, then each one's second, and so on, so that one organization's
	-- backlog never holds another's due schedule back to a later tick.  The
	-- due test is repeated on x: a row another claimer committed in between is
	-- re-checked after its lock.
	-- The limit applies after SKIP LOCKED: a schedule row another
	-- transaction holds (run_schedule_now's run, an open UPDATE) is passed
	-- over and does not use up a place, so locked rows cannot crowd every
	-- other organization's due schedule out of the claim.
	FOR s IN SELECT x.* FROM dalgo.schedules x
			 JOIN (SELECT y.id,
						  row_number() OVER (PARTITION BY y.organization_id ORDER BY y.next_run_at, y.id) AS turn
				   FROM dalgo.schedules y
				   WHERE y.is_active AND y.deleted_at IS NULL AND y.next_run_at <= at
					 AND (only_schedule IS NULL OR y.id = only_schedule)) d ON d.id = x.id
			 WHERE x.is_active AND x.deleted_at IS NULL AND x.next_run_at <= at
			   AND (only_schedule IS NULL OR x.id = only_schedule)
			 ORDER BY d.turn, x.next_run_at, x.id
			 LIMIT max_runs
			 FOR UPDATE OF x SKIP LOCKED
	LOOP
		det := jsonb_build_object('schedule_id', s.id, 'attempt', 1,
								  'lag_ms', round(extract(epoch FROM clock_timestamp() - s.next_run_at) * 1000));
		UPDATE dalgo.schedules x SET last_run_at = at,
			next_run_at = dalgo.next_run(s.frequency, s.run_at_time, s.run_at_day, s.timezone, greatest(at, s.next_run_at))
		WHERE x.id = s.id;
		schedule_id := s.id;
		IF s.source_id IS NOT NULL THEN
			SELECT * INTO src FROM dalgo.sources x WHERE x.id = s.source_id;
			busy := EXISTS (SELECT FROM dalgo.sync_runs r WHERE r.source_id = s.source_id
							AND r.status IN ('pending', 'running') AND r.deleted_at IS NULL);
			IF busy THEN
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, started_at, completed_at, error_message, details)
				VALUES (s.organization_id, s.source_id, 'failed', clock_timestamp(), clock_timestamp(),
						'skipped: the previous run of this schedule is still going', det || '{"skipped": true}')
				RETURNING id INTO rid;
				run_kind := 'skipped';
			ELSE
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, details)
				VALUES (s.organization_id, s.source_id, 'pending', det) RETURNING id INTO rid;
				IF dalgo.is_connector_source(src.source_type) THEN
					-- Anyone can LISTEN: the payload is empty, connectors learn
					-- the work from claim_sync_run().
					PERFORM pg_notify('dalgo_sync', '');
					run_kind := 'connector';
				ELSE
					run_kind := 's';
				END IF;
			END IF;
		ELSE
			SELECT * INTO out FROM dalgo.outputs x WHERE x.id = s.output_id;
			busy := EXISTS (SELECT FROM dalgo.transformation_runs r WHERE r.transformation_id = out.transformation_id
							AND r.status IN ('pending', 'running') AND r.details->>'schedule_id' = s.id::text);
			INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, started_at, completed_at,
												   error_message, details)
			VALUES (s.organization_id, out.transformation_id, CASE WHEN busy THEN 'failed' ELSE 'pending' END::dalgo.run_status,
					CASE WHEN busy THEN clock_timestamp() END, CASE WHEN busy THEN clock_timestamp() END,
					CASE WHEN busy THEN 'skipped: the previous run of this schedule is still going' END,
					det || CASE WHEN busy THEN '{"skipped": true}'::jsonb ELSE '{}'::jsonb END)
			RETURNING id INTO rid;
			run_kind := CASE WHEN busy THEN 'skipped' ELSE 'o' END;
		END IF;
		run_id := rid;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo.claim_due_schedules(timestamptz, integer, uuid) IS
	'Internal: claim up to max_runs due schedules (FOR UPDATE SKIP LOCKED), advance them and create their run rows';

-- attack1: the quota check waits at most 10 s for its organization's gate
-- (advisory lock keys are shared by every role)
CREATE OR REPLACE FUNCTION dalgo.check_run_quota(organization_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := check_run_quota.organization_id;
	me text := pg_backend_pid()::text;
	slot bigint := hashtextextended('dalgo run slot ' || org::text, 0);
	gate bigint := hashtextextended('dalgo run gate ' || org::text, 0);
	old_timeout text := current_setting('lock_timeout');
	others text[];
	unseen bigint;
	lim bigint;
	n bigint;
BEGIN
	-- Advisory lock keys are one namespace for every role: a session that
	-- holds this one must not stall the organization's runs for ever.
	BEGIN
		PERFORM set_config('lock_timeout', '10s', true);
		PERFORM pg_advisory_lock(gate);
		PERFORM set_config('lock_timeout', old_timeout, true);
	EXCEPTION WHEN lock_not_available THEN
		RAISE EXCEPTION 'the quota check of organization % is busy', org
			USING ERRCODE = 'lock_not_available',
				  DETAIL = 'Another session held the organization''s run gate for 10 seconds.',
				  HINT = 'Try again.';
	END;
	BEGIN
		-- Other backends executing a run of the organization now.
		others := ARRAY(SELECT DISTINCT l.pid::text FROM pg_locks l
						WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid()
						  AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
						  AND l.classid = ((slot >> 32) & 4294967295)::text::oid
						  AND l.objid = (slot & 4294967295)::text::oid AND l.objsubid = 1);
		-- ... of which this snapshot sees no running row yet.
		unseen := (SELECT count(*) FROM unnest(others) p
				   WHERE NOT EXISTS (SELECT FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.status = 'running'
									 AND r.details->>'runner_pid' = p)
					 AND NOT EXISTS (SELECT FROM dalgo.transformation_runs r WHERE r.organization_id = org
									 AND r.status = 'running' AND r.details->>'runner_pid' = p));
		lim := dalgo.organization_quota(org, 'concurrent_runs');
		IF lim IS NOT NULL THEN
			n := (SELECT count(*) FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.status = 'running'
				  AND r.details->>'runner_pid' IS DISTINCT FROM me)
			   + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.organization_id = org AND r.status = 'running'
				  AND r.details->>'runner_pid' IS DISTINCT FROM me)
			   + unseen;
			IF n >= lim THEN
				RAISE EXCEPTION 'quota concurrent_runs exceeded: % runs of the organization are in progress, the limit is %', n, lim
					USING ERRCODE = 'configuration_limit_exceeded',
						  HINT = 'Wait for a run to finish; a superuser can raise the quota.';
			END IF;
		END IF;
		lim := dalgo.organization_quota(org, 'runs_per_hour');
		IF lim IS NOT NULL THEN
			n := (SELECT count(*) FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.started_at > now() - interval '1 hour'
				  AND NOT r.details ? 'skipped' AND NOT (r.status = 'running' AND r.details->>'runner_pid' = me))
			   + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.organization_id = org
				  AND r.started_at > now() - interval '1 hour' AND NOT r.details ? 'skipped'
				  AND NOT (r.status = 'running' AND r.details->>'runner_pid' = me))
			   + unseen;
			IF n >= lim THEN
				RAISE EXCEPTION 'quota runs_per_hour exceeded: the organization started % runs in the last hour, the limit is %', n, lim
					USING ERRCODE = 'configuration_limit_exceeded',
						  HINT = 'Try again later; a superuser can raise the quota.';
			END IF;
		END IF;
		PERFORM dalgo.check_warehouse_quota(org, NULL);
		PERFORM pg_advisory_xact_lock_shared(slot);
	EXCEPTION WHEN OTHERS OR query_canceled THEN
		PERFORM pg_advisory_unlock(gate);
		RAISE;
	END;
	PERFORM pg_advisory_unlock(gate);
END
$$;
COMMENT ON FUNCTION dalgo.check_run_quota(uuid) IS
	'Internal: refuse a run that would exceed the organization''s concurrent_runs, runs_per_hour or warehouse_bytes quota';

-- attack1: with an identity in force only a superadmin grants or revokes
-- users.is_superadmin (dalgo_service acting for a member made them owner of
-- every organization)
CREATE FUNCTION dalgo.guard_superadmin() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
BEGIN
	IF me IS NOT NULL
	   AND ((TG_OP = 'INSERT' AND NEW.is_superadmin)
			OR (TG_OP = 'UPDATE' AND NEW.is_superadmin IS DISTINCT FROM OLD.is_superadmin))
	   AND NOT coalesce((SELECT u.is_superadmin AND u.is_active AND u.deleted_at IS NULL
						 FROM dalgo.users u WHERE u.id = me), false) THEN
		RAISE EXCEPTION 'only a superadmin can grant or revoke the superadmin flag'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'A superadmin counts as an owner of every organization.';
	END IF;
	RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION dalgo.guard_superadmin() FROM PUBLIC;
COMMENT ON FUNCTION dalgo.guard_superadmin() IS
	'BEFORE INSERT OR UPDATE row trigger on users: with an identity in force, only a superadmin grants or revokes is_superadmin (it makes a user owner of every organization)';
CREATE TRIGGER guard_superadmin BEFORE INSERT OR UPDATE OF is_superadmin ON dalgo.users
	FOR EACH ROW EXECUTE FUNCTION dalgo.guard_superadmin();
COMMENT ON TRIGGER guard_superadmin ON dalgo.users IS 'Only a superadmin grants or revokes the superadmin flag';

-- attack1: deactivating or deleting an account: with an identity only the
-- user (or a superadmin), restores only by a superadmin, and never the last
-- live owner of an organization
CREATE FUNCTION dalgo.guard_user_liveness() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	was_live boolean := OLD.is_active AND OLD.deleted_at IS NULL;
	is_live boolean := NEW.is_active AND NEW.deleted_at IS NULL;
	m record;
BEGIN
	IF was_live = is_live THEN
		RETURN NEW;
	END IF;
	IF me IS NOT NULL AND NOT coalesce((SELECT u.is_superadmin AND u.is_active AND u.deleted_at IS NULL
										 FROM dalgo.users u WHERE u.id = me), false)
	   AND (is_live OR me <> NEW.id) THEN
		RAISE EXCEPTION 'only the user or a superadmin deactivates or deletes an account, and only a superadmin restores one'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF was_live THEN
		FOR m IN SELECT x.id, x.organization_id FROM dalgo.organization_members x
				 WHERE x.user_id = NEW.id AND x.role = 'owner' AND x.deleted_at IS NULL
				 ORDER BY x.organization_id
		LOOP
			PERFORM FROM dalgo.organizations o WHERE o.id = m.organization_id AND o.deleted_at IS NULL FOR NO KEY UPDATE;
			IF FOUND AND dalgo.live_owner_count(m.organization_id, m.id) = 0 THEN
				RAISE EXCEPTION 'cannot deactivate or delete the last owner of organization %', m.organization_id
					USING ERRCODE = 'check_violation',
						  HINT = 'Make another member an owner first, or delete the organization.';
			END IF;
		END LOOP;
	END IF;
	RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION dalgo.guard_user_liveness() FROM PUBLIC;
COMMENT ON FUNCTION dalgo.guard_user_liveness() IS
	'BEFORE UPDATE row trigger on users: with an identity in force only the user deactivates or deletes their own account (a superadmin anyone''s) and only a superadmin restores one; whoever acts, no organization loses its last live owner';
CREATE TRIGGER guard_user_liveness BEFORE UPDATE OF is_active, deleted_at ON dalgo.users
	FOR EACH ROW EXECUTE FUNCTION dalgo.guard_user_liveness();
COMMENT ON TRIGGER guard_user_liveness ON dalgo.users IS 'Accounts: who deactivates them, and never the last owner';

-- merge (attack1 + lead): claim_sync_run fails connector runs over a quota
CREATE OR REPLACE FUNCTION dalgo.claim_sync_run() RETURNS dalgo.sync_runs
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	org uuid;
	msg text;
BEGIN
	FOR org IN
		SELECT x.organization_id FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status IN ('pending', 'running') AND dalgo.is_connector_source(s.source_type) AND x.deleted_at IS NULL
		GROUP BY x.organization_id
		HAVING bool_or(x.status = 'pending')
		ORDER BY count(*) FILTER (WHERE x.status = 'running'), min(x.created_at) FILTER (WHERE x.status = 'pending'),
				 x.organization_id
	LOOP
		SELECT x.* INTO r FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status = 'pending' AND x.organization_id = org AND dalgo.is_connector_source(s.source_type)
		  AND x.deleted_at IS NULL
		ORDER BY x.created_at LIMIT 1 FOR UPDATE OF x SKIP LOCKED;
		IF FOUND THEN
			-- A connector run is a run: the organization's quotas apply, as
			-- to in-database runs (a refused run fails with the quota's message).
			BEGIN
				PERFORM dalgo.check_run_quota(org);
			EXCEPTION WHEN configuration_limit_exceeded THEN
				GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
				UPDATE dalgo.sync_runs x SET status = 'failed', completed_at = clock_timestamp(), error_message = msg
				WHERE x.id = r.id;
				CONTINUE;
			END;
			UPDATE dalgo.sync_runs x SET status = 'running', started_at = clock_timestamp() WHERE x.id = r.id RETURNING * INTO r;
			RETURN r;
		END IF;
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo.claim_sync_run() IS
	'Connector protocol: claim a pending connector sync run (SKIP LOCKED; the organization with the fewest running, then the oldest) and mark it running; a run over its organization''s quota fails instead; NULL when there is none';


-- merge (attack1 + rsec): refresh_output checks the destination against its output producer
CREATE OR REPLACE FUNCTION dalgo.refresh_output(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.transformation_runs;
	o dalgo.outputs;
	t dalgo.transformations;
	v record;
	dropped jsonb;
	schema_name text;
	dest text;
	kind text;
BEGIN
	PERFORM dalgo.verify_scheduled_run('o', run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;
	SELECT * INTO o FROM dalgo.outputs x
	WHERE x.id = (SELECT s.output_id FROM dalgo.schedules s WHERE s.id = (r.details->>'schedule_id')::uuid);
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = o.transformation_id;
	schema_name := 'org_' || replace(o.organization_id::text, '-', '');
	kind := coalesce(o.destination_config->>'type', 'table');
	dest := coalesce(o.destination_config->>'name', t.output_table_name);
	IF kind NOT IN ('table', 'view') THEN
		RAISE EXCEPTION 'unknown destination type "%" (use table or view)', kind USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF kind = 'view' AND dest = t.output_table_name THEN
		RAISE EXCEPTION 'a view destination needs a name other than the transformation''s table "%"', dest
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Set destination_config.name.';
	END IF;
	-- destination_config.name is a member's text: it may name only what this
	-- output makes.  Longer names would be truncated to another table's name.
	IF dest = '' OR octet_length(dest) >= 64 OR dest LIKE '\_dalgo\_%' THEN
		RAISE EXCEPTION 'output destination name "%" is not allowed', dest
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use a name of 1 to 63 bytes that does not start with _dalgo_.';
	END IF;
	IF dest <> t.output_table_name AND to_regclass(format('%I.%I', schema_name, dest)) IS NOT NULL
	   AND NOT (CASE WHEN kind = 'view' THEN dalgo.output_view_reads(o.organization_id, dest, t.output_table_name)
				ELSE EXISTS (SELECT FROM dalgo.warehouse_tables w
							 WHERE w.organization_id = o.organization_id AND w.table_name = dest
							   AND w.deleted_at IS NULL AND w.output_id = o.id) END) THEN
		RAISE EXCEPTION 'output destination "%" exists and was not made by this output', dest
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'An output replaces only a table or view that its own refreshes made.',
				  HINT = 'Set destination_config.name to a new name.';
	END IF;

	-- The tables this refresh swaps: the transformation's and its upstream's.
	dropped := dalgo.drop_output_views(o.organization_id, ARRAY(
		SELECT y.output_table_name FROM dalgo.transformations y
		WHERE y.organization_id = o.organization_id AND y.output_table_name IS NOT NULL
		  AND (y.id = t.id OR y.id IN (SELECT u.id FROM dalgo.transformation_upstream(t.id) u))));

	FOR v IN SELECT u.id FROM dalgo.transformation_upstream(t.id) u LOOP
		PERFORM dalgo.run_transformation(v.id, false);
	END LOOP;
	PERFORM dalgo.build_transformation(t.id, run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;

	-- The views dropped above, again over the (new, or on failure the old) tables.
	PERFORM dalgo.restore_output_views(o.organization_id, dropped);
	IF r.status <> 'success' THEN
		RETURN;
	END IF;
	IF kind = 'view' THEN
		PERFORM dalgo.warehouse_execute(o.organization_id, format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I',
			schema_name, dest, schema_name, t.output_table_name));
	ELSIF dest <> t.output_table_name THEN
		PERFORM dalgo.warehouse_execute(o.organization_id, format('CREATE TABLE %I.%I AS SELECT * FROM %I.%I',
			schema_name, '_dalgo_out_' || replace(run_id::text, '-', ''), schema_name, t.output_table_name));
		PERFORM dalgo.check_warehouse_quota(o.organization_id, dest);
		-- The swap records this output as the table's producer.
		PERFORM dalgo.swap_warehouse_table(o.organization_id, '_dalgo_out_' || replace(run_id::text, '-', ''), dest);
	END IF;
	UPDATE dalgo.outputs x SET last_refreshed_at = now() WHERE x.id = o.id;
END
$$;
COMMENT ON FUNCTION dalgo.refresh_output(uuid) IS
	'Internal: run an output''s transformation with its upstream, then refresh destination_config ({"type": "table"|"view", "name": ...}); output views over rebuilt tables are dropped and created again around the swap';


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

-- merge (dump + rsec/runs): the final definitions of triggers both changed
CREATE OR REPLACE FUNCTION dalgo.transformation_before_save() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	deps uuid[];
BEGIN
	IF TG_OP = 'INSERT' AND dalgo.restoring() THEN RETURN NEW; END IF;	-- restored as dumped
	-- The output table name is checked on every insert and update, whatever changed
	-- (a move to another organization is refused by the tenant_fixed trigger).
	IF NEW.deleted_at IS NULL AND NEW.output_table_name IS NOT NULL
	   AND (TG_OP = 'INSERT' OR NEW.organization_id = OLD.organization_id) THEN
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

CREATE OR REPLACE FUNCTION dalgo.transformation_record_version() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
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
COMMENT ON FUNCTION dalgo.transformation_record_version() IS
	'AFTER trigger on transformations: records a transformation_versions row for each new recipe (change_description from the setting dalgo.change_description)';

-- accounts: accounts in the database (sql/accounts.sql, src/accounts.c; issue 11)
-- accounts.sql: accounts in the database.  Sign-up, sign-in with lockout,
-- rotating refresh tokens with reuse detection, password reset and change,
-- invitations, the mail delivery queue and API keys.  Every secret is
-- stored as a hash (bcrypt for passwords, SHA-256 for random tokens); raw
-- tokens exist only in a function's result and, until delivered, in a
-- queued message that only dalgo_service reads.
--
-- pgcrypto: dalgo does not require the pgcrypto extension to be created.
-- It declares three private functions that call pgcrypto's library
-- ($libdir/pgcrypto, shipped with PostgreSQL's contrib) directly, so that
-- crypt(), gen_salt() and gen_random_bytes() are found whatever schema
-- pgcrypto lives in, or whether it is installed in the database at all.

-- ---------------------------------------------------------------------------
-- Private helpers
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.pgcrypto_crypt(password text, salt text) RETURNS text
	AS '$libdir/pgcrypto', 'pg_crypt'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.pgcrypto_crypt(text, text) IS 'pgcrypto''s crypt(), called in pgcrypto''s library (private)';

CREATE FUNCTION dalgo.pgcrypto_gen_salt(kind text, rounds integer) RETURNS text
	AS '$libdir/pgcrypto', 'pg_gen_salt_rounds'
	LANGUAGE C VOLATILE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.pgcrypto_gen_salt(text, integer) IS 'pgcrypto''s gen_salt(kind, rounds), called in pgcrypto''s library (private)';

CREATE FUNCTION dalgo.pgcrypto_random_bytes(n integer) RETURNS bytea
	AS '$libdir/pgcrypto', 'pg_random_bytes'
	LANGUAGE C VOLATILE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.pgcrypto_random_bytes(integer) IS 'pgcrypto''s gen_random_bytes(), called in pgcrypto''s library (private)';

CREATE FUNCTION dalgo.new_token(nbytes integer) RETURNS text
	LANGUAGE sql VOLATILE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN translate(rtrim(encode(dalgo.pgcrypto_random_bytes(nbytes), 'base64'), '='), E'+/\n', '-_');
COMMENT ON FUNCTION dalgo.new_token(integer) IS 'nbytes random bytes from gen_random_bytes, base64url without padding (private)';

CREATE FUNCTION dalgo.token_digest(token text) RETURNS text
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN encode(sha256(convert_to(token, 'UTF8')), 'hex');
COMMENT ON FUNCTION dalgo.token_digest(text) IS 'Hex SHA-256 of a token: what refresh_tokens, password_reset_tokens, invitations and api_keys store (private)';

CREATE FUNCTION dalgo.email_key(email text) RETURNS bytea
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN sha256(convert_to(lower(btrim(email)), 'UTF8'));
COMMENT ON FUNCTION dalgo.email_key(text) IS 'SHA-256 of a trimmed, lower-cased email: the key of sign-in attempts, so unknown emails are not stored in clear (private)';

CREATE FUNCTION dalgo.setting_interval(name text) RETURNS interval
	LANGUAGE sql STABLE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN current_setting(name)::interval;
COMMENT ON FUNCTION dalgo.setting_interval(text) IS 'A duration setting (dalgo.access_token_ttl and the like) as an interval in seconds (private)';

CREATE FUNCTION dalgo.sign_access_token(user_id uuid, expires_at timestamptz) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_sign_access_token'
	LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.sign_access_token(uuid, timestamptz) IS
	'An HS256 access token {sub, iat, exp} signed with dalgo.jwt_secret, as dalgo.authenticate() accepts it (private)';

CREATE FUNCTION dalgo.run_autonomously(action text, key bytea, id uuid) RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_run_autonomously'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo.run_autonomously(text, bytea, uuid) IS
	'Run a recorder (failed_sign_in: dalgo.note_failed_sign_in; token_reuse: dalgo.note_token_reuse) in a background worker''s own, committed transaction, so the record survives the caller''s error (private)';

CREATE FUNCTION dalgo.set_api_key_identity(key_id uuid, user_id uuid, organization_id uuid, role text) RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_set_api_key_identity'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo.set_api_key_identity(uuid, uuid, uuid, text) IS
	'Make user_id the caller for this transaction, seen by membership functions only in organization_id and at most at role (private; used by dalgo.authenticate_api_key)';

CREATE FUNCTION dalgo.act_as(user_id uuid) RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_act_as'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo.act_as(uuid) IS
	'Make user_id the caller for the rest of this transaction (private; dalgo.accept_invitation adds the member under the inviter''s identity)';

CREATE FUNCTION dalgo.api_key_is_live(id uuid) RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_api_key_is_live'
	LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.api_key_is_live(uuid) IS
	'True if the API key is neither revoked nor expired in the latest committed state, whatever the isolation level (private)';

CREATE FUNCTION dalgo.require_read_committed(what text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION '% must run in a READ COMMITTED transaction', what
			USING ERRCODE = 'invalid_transaction_state',
				  DETAIL = 'An older snapshot would not see the attempts and rotations other sessions committed.';
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.require_read_committed(text) IS
	'Raise 25000 unless the transaction is READ COMMITTED: the lockout count and the reuse and single-use checks must see the latest commits (private)';

CREATE FUNCTION dalgo.current_api_key_id() RETURNS uuid
	AS 'MODULE_PATHNAME', 'dalgo_current_api_key_id'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.current_api_key_id() IS 'The API key this transaction authenticated with (dalgo.authenticate_api_key), or NULL';

CREATE FUNCTION dalgo.account_audit(action text, user_id uuid, organization_id uuid,
									resource_type text, resource_id uuid, details jsonb DEFAULT '{}')
	RETURNS void
	LANGUAGE sql
	SET search_path = pg_catalog, pg_temp
	-- (a string body: no parse-time dependency on audit_logs' columns, which may change shape)
AS $$
	INSERT INTO dalgo.audit_logs (id, organization_id, user_id, action, resource_type, resource_id, details)
		VALUES (dalgo.uuid_v7(), account_audit.organization_id, account_audit.user_id, account_audit.action,
				account_audit.resource_type, account_audit.resource_id, account_audit.details);
$$;
COMMENT ON FUNCTION dalgo.account_audit(text, uuid, uuid, text, uuid, jsonb) IS
	'Write one audit row for an account flow (never with a password, token or hash in it) (private)';

CREATE FUNCTION dalgo.check_new_password(password text) RETURNS text
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF password IS NULL OR char_length(password) < current_setting('dalgo.min_password_length')::integer THEN
		RAISE EXCEPTION 'password must be at least % characters long', current_setting('dalgo.min_password_length')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF octet_length(password) > 72 THEN
		RAISE EXCEPTION 'password must be at most 72 bytes long'
			USING ERRCODE = 'invalid_parameter_value', DETAIL = 'bcrypt ignores what follows the 72nd byte.';
	END IF;
	RETURN dalgo.pgcrypto_crypt(password, dalgo.pgcrypto_gen_salt('bf', current_setting('dalgo.bcrypt_cost')::integer));
END
$$;
COMMENT ON FUNCTION dalgo.check_new_password(text) IS
	'Check a new password against dalgo.min_password_length and bcrypt''s 72-byte limit (22023 otherwise) and return its bcrypt hash at dalgo.bcrypt_cost (private)';

CREATE FUNCTION dalgo.check_email(email text) RETURNS text
	LANGUAGE plpgsql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	e text := btrim(email);
BEGIN
	IF e IS NULL OR octet_length(e) > 254 OR e !~ '^[^@[:space:]]+@[^@[:space:].]+(\.[^@[:space:].]+)+$' THEN
		RAISE EXCEPTION 'invalid email address'
			USING ERRCODE = 'invalid_parameter_value', HINT = 'An email address looks like name@example.org.';
	END IF;
	RETURN e;
END
$$;
COMMENT ON FUNCTION dalgo.check_email(text) IS 'Trim an email and check its form (22023 if malformed); returns the trimmed email (private)';

CREATE FUNCTION dalgo.refuse_api_key(what text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF dalgo.current_api_key_id() IS NOT NULL THEN
		RAISE EXCEPTION '% needs a signed-in user, not an API key', what
			USING ERRCODE = 'insufficient_privilege';
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.refuse_api_key(text) IS 'Raise 42501 when the transaction authenticated with an API key: account management needs a person (private)';

-- ---------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------

-- Refresh tokens rotate within a family: the first token of a sign-in
-- starts one, each refresh adds the next.  replaced_at marks a token that
-- was rotated: presenting it again is reuse.
ALTER TABLE dalgo.refresh_tokens
	ADD COLUMN family_id uuid NOT NULL DEFAULT gen_random_uuid(),
	ADD COLUMN replaced_at timestamptz;
COMMENT ON COLUMN dalgo.refresh_tokens.token_hash IS 'Hex SHA-256 of the refresh token (the token itself is never stored)';
COMMENT ON COLUMN dalgo.refresh_tokens.family_id IS 'Sign-in the token descends from: a reused token revokes its whole family';
COMMENT ON COLUMN dalgo.refresh_tokens.replaced_at IS 'When the token was rotated by dalgo.refresh_session(); presenting it again is reuse';
CREATE INDEX refresh_tokens_family_id_idx ON dalgo.refresh_tokens (family_id);
COMMENT ON INDEX dalgo.refresh_tokens_family_id_idx IS 'Revocation of a token family';

COMMENT ON COLUMN dalgo.password_reset_tokens.token_hash IS 'Hex SHA-256 of the reset token (the token itself is never stored)';
COMMENT ON COLUMN dalgo.password_reset_tokens.used_at IS 'When the token was used, or superseded by a newer request; a token works once';

ALTER TABLE dalgo.invitations ADD COLUMN revoked_at timestamptz;
COMMENT ON COLUMN dalgo.invitations.token IS 'Hex SHA-256 of the invitation token (the raw token is delivered through dalgo.mail_messages and never stored); never written to the audit trail';
COMMENT ON COLUMN dalgo.invitations.revoked_at IS 'When the invitation was revoked or replaced by a newer one to the same email';
CREATE INDEX invitations_pending_idx ON dalgo.invitations (organization_id, lower(email))
	WHERE accepted_at IS NULL AND revoked_at IS NULL;
COMMENT ON INDEX dalgo.invitations_pending_idx IS 'Pending invitations of an organization by email (re-invitation replaces)';

-- No foreign key: attempts are kept for unknown emails too, and outlive users.
CREATE TABLE dalgo.sign_in_attempts (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	email_hash		bytea NOT NULL CHECK (octet_length(email_hash) = 32),
	user_id			uuid,
	succeeded		boolean NOT NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE dalgo.sign_in_attempts IS 'Sign-in attempts by email, for the lockout; failures are written by an autonomous recorder so they survive the failed call';
COMMENT ON COLUMN dalgo.sign_in_attempts.email_hash IS 'SHA-256 of the lower-cased, trimmed email (unknown emails are not stored in clear)';
COMMENT ON COLUMN dalgo.sign_in_attempts.user_id IS 'The user the email belonged to at the time, if any; deliberately not a foreign key';
CREATE INDEX sign_in_attempts_email_hash_idx ON dalgo.sign_in_attempts (email_hash, created_at);
COMMENT ON INDEX dalgo.sign_in_attempts_email_hash_idx IS 'Lockout check: the recent attempts of one email';

CREATE TABLE dalgo.mail_messages (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	kind			text NOT NULL CHECK (kind IN ('password_reset', 'invitation')),
	recipient		text NOT NULL CHECK (recipient <> ''),
	payload			jsonb,
	state			text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'cancelled')),
	attempts		integer NOT NULL DEFAULT 0,
	claimed_at		timestamptz,
	completed_at	timestamptz,
	error			text,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	CHECK (payload IS NULL OR state IN ('pending', 'sending'))
);
COMMENT ON TABLE dalgo.mail_messages IS 'Mail delivery queue (readable by dalgo_service only): dalgo.claim_messages() hands messages to a mailer, dalgo.complete_message() finishes them and drops the payload';
COMMENT ON COLUMN dalgo.mail_messages.kind IS 'password_reset or invitation';
COMMENT ON COLUMN dalgo.mail_messages.payload IS 'What the mail needs, including the raw token; NULL once the message is finished, so no raw token stays at rest';
COMMENT ON COLUMN dalgo.mail_messages.state IS 'pending -> sending -> sent | failed; cancelled when the token it carries was revoked or replaced';
CREATE INDEX mail_messages_queue_idx ON dalgo.mail_messages (created_at) WHERE state IN ('pending', 'sending');
COMMENT ON INDEX dalgo.mail_messages_queue_idx IS 'The mailer''s scan of unfinished messages, oldest first';

CREATE TABLE dalgo.api_keys (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	organization_id	uuid NOT NULL REFERENCES dalgo.organizations (id) ON DELETE CASCADE,
	name			text NOT NULL CHECK (name <> '' AND char_length(name) <= 200),
	key_prefix		text NOT NULL,
	key_hash		text NOT NULL,
	role			dalgo.member_role NOT NULL DEFAULT 'member',
	expires_at		timestamptz,
	last_used_at	timestamptz,
	revoked_at		timestamptz,
	created_by_id	uuid REFERENCES dalgo.users (id) ON DELETE SET NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE dalgo.api_keys IS 'API keys for automations and connectors: each acts for its creator in one organization, at most at its role';
COMMENT ON COLUMN dalgo.api_keys.key_prefix IS 'First characters of the key, to tell keys apart (not enough to use one)';
COMMENT ON COLUMN dalgo.api_keys.key_hash IS 'Hex SHA-256 of the key (the key is shown once, by dalgo.create_api_key, and never stored)';
COMMENT ON COLUMN dalgo.api_keys.role IS 'Highest role the key acts with; the creator''s current role caps it further';
COMMENT ON COLUMN dalgo.api_keys.created_by_id IS 'The user the key acts for; a key whose creator is gone, inactive or no longer a member does not authenticate';
CREATE UNIQUE INDEX api_keys_key_hash_key ON dalgo.api_keys (key_hash);
COMMENT ON INDEX dalgo.api_keys_key_hash_key IS 'Key validation by hash';
CREATE INDEX api_keys_organization_id_idx ON dalgo.api_keys (organization_id);
COMMENT ON INDEX dalgo.api_keys_organization_id_idx IS 'Foreign key and tenant index';
CREATE INDEX api_keys_created_by_id_idx ON dalgo.api_keys (created_by_id);
COMMENT ON INDEX dalgo.api_keys_created_by_id_idx IS 'Foreign key index';

CREATE TRIGGER set_updated_at BEFORE UPDATE ON dalgo.sign_in_attempts
	FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at();
COMMENT ON TRIGGER set_updated_at ON dalgo.sign_in_attempts IS 'Stamps updated_at with now() on every update';
CREATE TRIGGER set_updated_at BEFORE UPDATE ON dalgo.mail_messages
	FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at();
COMMENT ON TRIGGER set_updated_at ON dalgo.mail_messages IS 'Stamps updated_at with now() on every update';
CREATE TRIGGER set_updated_at BEFORE UPDATE ON dalgo.api_keys
	FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at();
COMMENT ON TRIGGER set_updated_at ON dalgo.api_keys IS 'Stamps updated_at with now() on every update';
CREATE TRIGGER tenant_fixed BEFORE UPDATE ON dalgo.api_keys
	FOR EACH ROW EXECUTE FUNCTION dalgo.refuse_tenant_move();
COMMENT ON TRIGGER tenant_fixed ON dalgo.api_keys IS 'A row never moves to another organization';

-- Audit: the queue without its payload, keys without their hash.  Sign-in
-- attempts are not audited row by row: the flows write their own audit rows.
SELECT dalgo.enable_audit('dalgo.mail_messages', '{payload}', '');
SELECT dalgo.enable_audit('dalgo.api_keys', '{key_hash}');

-- Privileges and row-level security.  Only dalgo's functions write these
-- tables; app roles read no secret column.
REVOKE ALL ON dalgo.sign_in_attempts, dalgo.mail_messages, dalgo.api_keys FROM PUBLIC;
GRANT SELECT ON dalgo.sign_in_attempts, dalgo.mail_messages TO dalgo_service;
GRANT SELECT (id, organization_id, name, key_prefix, role, expires_at, last_used_at, revoked_at,
			  created_by_id, created_at, updated_at)
	ON dalgo.api_keys TO dalgo_authenticated, dalgo_service;
-- Invitations are written through invite_member/accept_invitation/revoke_invitation
-- only: a direct INSERT would skip the token hashing and the owner rule.
REVOKE INSERT, UPDATE ON dalgo.invitations FROM dalgo_authenticated;

ALTER TABLE dalgo.sign_in_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE dalgo.sign_in_attempts FORCE ROW LEVEL SECURITY;
ALTER TABLE dalgo.mail_messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE dalgo.mail_messages FORCE ROW LEVEL SECURITY;
ALTER TABLE dalgo.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE dalgo.api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY service_all ON dalgo.sign_in_attempts TO dalgo_service USING (true) WITH CHECK (true);
CREATE POLICY service_all ON dalgo.mail_messages TO dalgo_service USING (true) WITH CHECK (true);
CREATE POLICY service_all ON dalgo.api_keys TO dalgo_service USING (true) WITH CHECK (true);
COMMENT ON POLICY service_all ON dalgo.sign_in_attempts IS 'dalgo_service passes the tenant policies';
COMMENT ON POLICY service_all ON dalgo.mail_messages IS 'dalgo_service passes the tenant policies';
COMMENT ON POLICY service_all ON dalgo.api_keys IS 'dalgo_service passes the tenant policies';
CREATE POLICY tenant_select ON dalgo.api_keys FOR SELECT TO dalgo_authenticated
	USING (organization_id OPERATOR(pg_catalog.=) ANY ((SELECT dalgo.current_org_ids('admin'))::uuid[]));
COMMENT ON POLICY tenant_select ON dalgo.api_keys IS 'Admins and owners see their organizations'' keys (never the hash)';

-- ---------------------------------------------------------------------------
-- Sessions
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.issue_session(for_user uuid, in_family uuid)
	RETURNS TABLE (user_id uuid, access_token text, refresh_token text, expires_at timestamptz)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	uid uuid := issue_session.for_user;
	raw text := dalgo.new_token(32);
	access_expires timestamptz := to_timestamp(floor(extract(epoch FROM now() + dalgo.setting_interval('dalgo.access_token_ttl'))));
BEGIN
	INSERT INTO dalgo.refresh_tokens AS t (user_id, token_hash, expires_at, family_id)
		VALUES (uid, dalgo.token_digest(raw), now() + dalgo.setting_interval('dalgo.refresh_token_ttl'),
				coalesce(issue_session.in_family, gen_random_uuid()));
	RETURN QUERY SELECT uid, dalgo.sign_access_token(uid, access_expires), raw, access_expires;
END
$$;
COMMENT ON FUNCTION dalgo.issue_session(uuid, uuid) IS
	'Issue an access token and a new refresh token (in in_family, or a new family) for a user (private)';

CREATE FUNCTION dalgo.note_failed_sign_in(email_hash bytea, user_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO dalgo.sign_in_attempts (email_hash, user_id, succeeded)
		VALUES (note_failed_sign_in.email_hash, note_failed_sign_in.user_id, false);
	PERFORM dalgo.account_audit('sign_in_failed', NULL, NULL, 'user', note_failed_sign_in.user_id);
END
$$;
COMMENT ON FUNCTION dalgo.note_failed_sign_in(bytea, uuid) IS
	'Record a failed sign-in and its audit row; run by the autonomous recorder, so it commits although the sign-in fails (private)';

CREATE FUNCTION dalgo.note_token_reuse(unused bytea, family_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
	SET lock_timeout = '10s'
AS $$
DECLARE
	owner uuid;
	n bigint;
BEGIN
	-- Wait for a refresh of this family in flight, then revoke what it left.
	PERFORM pg_advisory_xact_lock(1684826471, hashtext(note_token_reuse.family_id::text));
	WITH r AS (
		UPDATE dalgo.refresh_tokens t SET revoked_at = now()
		WHERE t.family_id = note_token_reuse.family_id AND t.revoked_at IS NULL
		RETURNING t.user_id)
	SELECT max(r.user_id::text)::uuid, count(*) INTO owner, n FROM r;
	IF owner IS NULL THEN
		SELECT t.user_id INTO owner FROM dalgo.refresh_tokens t WHERE t.family_id = note_token_reuse.family_id LIMIT 1;
	END IF;
	PERFORM dalgo.account_audit('refresh_token_reused', NULL, NULL, 'user', owner,
								jsonb_build_object('family_id', note_token_reuse.family_id, 'revoked', n));
END
$$;
COMMENT ON FUNCTION dalgo.note_token_reuse(bytea, uuid) IS
	'Revoke every live token of a refresh-token family after a rotated token was presented again, with an audit row; run by the autonomous recorder (private)';

CREATE FUNCTION dalgo.sign_up(email text, password text, full_name text DEFAULT NULL) RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	e text := dalgo.check_email(sign_up.email);
	hash text := dalgo.check_new_password(sign_up.password);
	uid uuid := gen_random_uuid();
	org uuid;
BEGIN
	IF EXISTS (SELECT FROM dalgo.users u WHERE lower(u.email) = lower(e) AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'an account with this email address already exists'
			USING ERRCODE = 'unique_violation', HINT = 'Sign in, or reset the password.';
	END IF;
	BEGIN
		INSERT INTO dalgo.users (id, email, password_hash, full_name)
			VALUES (uid, e, hash, nullif(btrim(sign_up.full_name), ''));
	EXCEPTION WHEN unique_violation THEN
		RAISE EXCEPTION 'an account with this email address already exists'
			USING ERRCODE = 'unique_violation', HINT = 'Sign in, or reset the password.';
	END;
	INSERT INTO dalgo.organizations (name, slug, org_type)
		VALUES (coalesce(nullif(btrim(sign_up.full_name), ''), e), 'personal-' || replace(uid::text, '-', ''), 'personal')
		RETURNING id INTO org;
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES (org, uid, 'owner');
	PERFORM dalgo.account_audit('sign_up', uid, org, 'user', uid);
	RETURN uid;
END
$$;
COMMENT ON FUNCTION dalgo.sign_up(text, text, text) IS
	'Create an account (email unique case-insensitively among live users; password of dalgo.min_password_length characters to 72 bytes, hashed with bcrypt at dalgo.bcrypt_cost) and its personal organization, owned by it; returns the user id. Errors: 22023 malformed email or password, 23505 email taken';

CREATE FUNCTION dalgo.sign_in(email text, password text)
	RETURNS TABLE (user_id uuid, access_token text, refresh_token text, expires_at timestamptz)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	k bytea := dalgo.email_key(sign_in.email);
	usr record;
	last_success timestamptz;
	failures bigint;
	ok boolean := false;
BEGIN
	PERFORM dalgo.require_read_committed('dalgo.sign_in');
	IF k IS NULL OR sign_in.password IS NULL THEN
		RAISE EXCEPTION 'invalid email or password' USING ERRCODE = 'invalid_password';
	END IF;
	-- One attempt per email at a time, so the count below is exact.
	PERFORM pg_advisory_xact_lock(1684826469, hashtext(encode(k, 'hex')));
	SELECT max(a.created_at) INTO last_success FROM dalgo.sign_in_attempts a
		WHERE a.email_hash = k AND a.succeeded AND a.created_at > now() - dalgo.setting_interval('dalgo.sign_in_lockout');
	SELECT count(*) INTO failures FROM dalgo.sign_in_attempts a
		WHERE a.email_hash = k AND NOT a.succeeded
		  AND a.created_at > greatest(clock_timestamp() - dalgo.setting_interval('dalgo.sign_in_lockout'),
									  coalesce(last_success, '-infinity'));
	IF failures >= current_setting('dalgo.max_failed_sign_ins')::integer THEN
		RAISE EXCEPTION 'too many failed sign-ins for this email; try again later'
			USING ERRCODE = '28L01';
	END IF;

	SELECT u.id, u.password_hash, u.is_active INTO usr
		FROM dalgo.users u WHERE lower(u.email) = lower(btrim(sign_in.email)) AND u.deleted_at IS NULL;
	IF usr.id IS NOT NULL AND usr.password_hash IS NOT NULL THEN
		ok := dalgo.pgcrypto_crypt(sign_in.password, usr.password_hash) = usr.password_hash AND usr.is_active;
	ELSE
		-- An unknown email spends the same bcrypt work as a wrong password.
		PERFORM dalgo.pgcrypto_crypt(sign_in.password,
			dalgo.pgcrypto_gen_salt('bf', current_setting('dalgo.bcrypt_cost')::integer));
	END IF;
	IF ok IS NOT TRUE THEN
		PERFORM dalgo.run_autonomously('failed_sign_in', k, usr.id);
		RAISE EXCEPTION 'invalid email or password' USING ERRCODE = 'invalid_password';
	END IF;

	INSERT INTO dalgo.sign_in_attempts (email_hash, user_id, succeeded) VALUES (k, usr.id, true);
	PERFORM dalgo.account_audit('sign_in', usr.id, NULL, 'user', usr.id);
	RETURN QUERY SELECT * FROM dalgo.issue_session(usr.id, NULL);
END
$$;
COMMENT ON FUNCTION dalgo.sign_in(text, text) IS
	'Check an email and password; returns an access token (HS256, dalgo.access_token_ttl) and a refresh token (dalgo.refresh_token_ttl). Unknown email, wrong password, inactive or deleted user: 28P01 "invalid email or password", recorded although the call fails; after dalgo.max_failed_sign_ins failures within dalgo.sign_in_lockout: 28L01 at once';

CREATE FUNCTION dalgo.refresh_session(token text)
	RETURNS TABLE (user_id uuid, access_token text, refresh_token text, expires_at timestamptz)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	h text := dalgo.token_digest(refresh_session.token);
	tok record;
BEGIN
	PERFORM dalgo.require_read_committed('dalgo.refresh_session');
	SELECT t.id, t.user_id, t.family_id, t.expires_at, t.revoked_at, t.replaced_at INTO tok
		FROM dalgo.refresh_tokens t WHERE t.token_hash = h;
	IF tok.id IS NULL THEN
		RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	IF tok.replaced_at IS NOT NULL THEN
		-- A rotated token came back: stolen-token signal.  The family dies
		-- (in a transaction of its own, so it stays dead) and the call fails.
		PERFORM dalgo.run_autonomously('token_reuse', NULL, tok.family_id);
		RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	-- A refresh of this family in flight: this one loses, without killing the family.
	IF NOT pg_try_advisory_xact_lock(1684826471, hashtext(tok.family_id::text)) THEN
		RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	SELECT t.id, t.user_id, t.family_id, t.expires_at, t.revoked_at, t.replaced_at INTO tok
		FROM dalgo.refresh_tokens t WHERE t.id = tok.id FOR UPDATE;
	IF tok.revoked_at IS NOT NULL OR tok.expires_at <= now()
	   OR NOT EXISTS (SELECT FROM dalgo.users u WHERE u.id = tok.user_id AND u.is_active AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	UPDATE dalgo.refresh_tokens t SET revoked_at = now(), replaced_at = now() WHERE t.id = tok.id;
	RETURN QUERY SELECT * FROM dalgo.issue_session(tok.user_id, tok.family_id);
END
$$;
COMMENT ON FUNCTION dalgo.refresh_session(text) IS
	'Rotate a refresh token (the argument is named token, as refresh_token is a result column): revoke it and issue a new access and refresh token in the same family. A token that was already rotated revokes its whole family and fails (reuse detection); of two concurrent refreshes exactly one succeeds. Any failure: 28000 "invalid refresh token"';

CREATE FUNCTION dalgo.end_session(refresh_token text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	tok record;
BEGIN
	SELECT t.user_id, t.family_id INTO tok FROM dalgo.refresh_tokens t
		WHERE t.token_hash = dalgo.token_digest(end_session.refresh_token);
	IF tok.family_id IS NULL THEN
		RETURN;
	END IF;
	UPDATE dalgo.refresh_tokens t SET revoked_at = now()
		WHERE t.family_id = tok.family_id AND t.revoked_at IS NULL;
	PERFORM dalgo.account_audit('session_ended', tok.user_id, NULL, 'user', tok.user_id,
								jsonb_build_object('family_id', tok.family_id));
END
$$;
COMMENT ON FUNCTION dalgo.end_session(text) IS 'Sign out one session: revoke every token of the refresh token''s family (an unknown token does nothing)';

CREATE FUNCTION dalgo.end_all_sessions() RETURNS bigint
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	n bigint;
BEGIN
	PERFORM dalgo.refuse_api_key('ending sessions');
	IF me IS NULL THEN
		RAISE EXCEPTION 'ending sessions needs a signed-in user' USING ERRCODE = 'insufficient_privilege';
	END IF;
	WITH r AS (UPDATE dalgo.refresh_tokens t SET revoked_at = now()
			   WHERE t.user_id = me AND t.revoked_at IS NULL RETURNING 1)
	SELECT count(*) INTO n FROM r;
	PERFORM dalgo.account_audit('all_sessions_ended', me, NULL, 'user', me, jsonb_build_object('revoked', n));
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo.end_all_sessions() IS 'Sign the current user out everywhere: revoke all of their refresh tokens; returns how many';

-- ---------------------------------------------------------------------------
-- Mail queue
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.queue_mail(kind text, recipient text, payload jsonb) RETURNS uuid
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id uuid;
BEGIN
	INSERT INTO dalgo.mail_messages AS m (kind, recipient, payload)
		VALUES (queue_mail.kind, queue_mail.recipient, queue_mail.payload) RETURNING m.id INTO id;
	-- The payload says nothing: anyone may LISTEN; the mailer claims the work.
	PERFORM pg_notify('dalgo_mail', '');
	RETURN id;
END
$$;
COMMENT ON FUNCTION dalgo.queue_mail(text, text, jsonb) IS 'Queue a message and NOTIFY dalgo_mail with an empty payload (private)';

CREATE FUNCTION dalgo.claim_messages(max integer DEFAULT 10) RETURNS SETOF dalgo.mail_messages
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF max IS NULL OR max < 1 OR max > 1000 THEN
		RAISE EXCEPTION 'max must be between 1 and 1000' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN QUERY
	UPDATE dalgo.mail_messages m SET state = 'sending', claimed_at = now(), attempts = m.attempts + 1
	WHERE m.id IN (SELECT q.id FROM dalgo.mail_messages q
				   WHERE q.state = 'pending'
					  OR (q.state = 'sending' AND q.claimed_at < now() - dalgo.setting_interval('dalgo.mail_claim_timeout'))
				   ORDER BY q.created_at, q.id LIMIT claim_messages.max
				   FOR UPDATE SKIP LOCKED)
	RETURNING m.*;
END
$$;
COMMENT ON FUNCTION dalgo.claim_messages(integer) IS
	'Mailer (dalgo_service): claim up to max unfinished messages, oldest first, skipping those another mailer holds (SKIP LOCKED); a claim older than dalgo.mail_claim_timeout can be claimed again';

CREATE FUNCTION dalgo.complete_message(id uuid, error text DEFAULT NULL) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE dalgo.mail_messages m
		SET state = CASE WHEN complete_message.error IS NULL THEN 'sent' ELSE 'failed' END,
			payload = NULL, error = complete_message.error, completed_at = now()
		WHERE m.id = complete_message.id AND m.state = 'sending';
	IF NOT FOUND THEN
		RAISE EXCEPTION 'message % is not being sent', complete_message.id
			USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Claim it with dalgo.claim_messages() first.';
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.complete_message(uuid, text) IS
	'Mailer (dalgo_service): finish a claimed message, sent (error NULL) or failed; either way its payload, and the raw token in it, is dropped';

-- ---------------------------------------------------------------------------
-- Passwords
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.request_password_reset(email text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	usr record;
	raw text;
	rid uuid;
BEGIN
	SELECT u.id, u.email INTO usr FROM dalgo.users u
		WHERE lower(u.email) = lower(btrim(request_password_reset.email)) AND u.deleted_at IS NULL AND u.is_active;
	IF usr.id IS NULL THEN
		RETURN;					-- says nothing about whether the email exists
	END IF;
	-- Only the newest token works.
	UPDATE dalgo.password_reset_tokens t SET used_at = now() WHERE t.user_id = usr.id AND t.used_at IS NULL;
	UPDATE dalgo.mail_messages m SET state = 'cancelled', payload = NULL
		WHERE m.kind = 'password_reset' AND m.state = 'pending' AND m.payload->>'user_id' = usr.id::text;
	raw := dalgo.new_token(32);
	INSERT INTO dalgo.password_reset_tokens AS t (user_id, token_hash, expires_at)
		VALUES (usr.id, dalgo.token_digest(raw), now() + dalgo.setting_interval('dalgo.password_reset_ttl'))
		RETURNING t.id INTO rid;
	PERFORM dalgo.queue_mail('password_reset', usr.email,
		jsonb_build_object('token', raw, 'user_id', usr.id,
						   'expires_at', now() + dalgo.setting_interval('dalgo.password_reset_ttl')));
	PERFORM dalgo.account_audit('password_reset_requested', NULL, NULL, 'user', usr.id);
END
$$;
COMMENT ON FUNCTION dalgo.request_password_reset(text) IS
	'Start a password reset: for a live, active user, a single-use token (dalgo.password_reset_ttl) goes to the mail queue; says nothing about whether the email exists';

CREATE FUNCTION dalgo.reset_password(token text, new_password text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	hash text := dalgo.check_new_password(reset_password.new_password);
	tok record;
BEGIN
	PERFORM dalgo.require_read_committed('dalgo.reset_password');
	SELECT t.id, t.user_id, t.used_at, t.expires_at INTO tok FROM dalgo.password_reset_tokens t
		WHERE t.token_hash = dalgo.token_digest(reset_password.token) FOR UPDATE;
	IF tok.id IS NULL OR tok.used_at IS NOT NULL OR tok.expires_at <= now()
	   OR NOT EXISTS (SELECT FROM dalgo.users u WHERE u.id = tok.user_id AND u.is_active AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'invalid or expired password reset token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	UPDATE dalgo.password_reset_tokens t SET used_at = now() WHERE t.id = tok.id;
	UPDATE dalgo.users u SET password_hash = hash WHERE u.id = tok.user_id;
	UPDATE dalgo.refresh_tokens t SET revoked_at = now() WHERE t.user_id = tok.user_id AND t.revoked_at IS NULL;
	PERFORM dalgo.account_audit('password_reset', tok.user_id, NULL, 'user', tok.user_id);
END
$$;
COMMENT ON FUNCTION dalgo.reset_password(text, text) IS
	'Set a new password with a reset token: works once, before it expires; revokes all of the user''s refresh tokens. Errors: 22023 weak password, 28000 invalid or expired token';

CREATE FUNCTION dalgo.change_password(current_password text, new_password text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	old_hash text;
	hash text;
BEGIN
	PERFORM dalgo.refuse_api_key('changing a password');
	IF me IS NULL THEN
		RAISE EXCEPTION 'changing a password needs a signed-in user' USING ERRCODE = 'insufficient_privilege';
	END IF;
	SELECT u.password_hash INTO old_hash FROM dalgo.users u
		WHERE u.id = me AND u.is_active AND u.deleted_at IS NULL FOR UPDATE;
	IF old_hash IS NULL OR current_password IS NULL
	   OR dalgo.pgcrypto_crypt(current_password, old_hash) IS DISTINCT FROM old_hash THEN
		RAISE EXCEPTION 'invalid password' USING ERRCODE = 'invalid_password';
	END IF;
	hash := dalgo.check_new_password(new_password);
	UPDATE dalgo.users u SET password_hash = hash WHERE u.id = me;
	PERFORM dalgo.account_audit('password_changed', me, NULL, 'user', me);
END
$$;
COMMENT ON FUNCTION dalgo.change_password(text, text) IS
	'Change the signed-in user''s password after checking the current one (28P01 if wrong); not with an API key';

-- ---------------------------------------------------------------------------
-- Invitations
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.invite_member(organization_id uuid, email text, role dalgo.member_role) RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	org uuid := invite_member.organization_id;
	e text := dalgo.check_email(invite_member.email);
	raw text := dalgo.new_token(32);
	org_name text;
	iid uuid;
BEGIN
	IF me IS NULL OR org IS NULL OR invite_member.role IS NULL OR NOT dalgo.is_org_member(org, 'admin') THEN
		RAISE EXCEPTION 'only admins and owners of the organization can invite'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF invite_member.role = 'owner' AND NOT dalgo.is_org_member(org, 'owner') THEN
		RAISE EXCEPTION 'only an owner can invite an owner' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF EXISTS (SELECT FROM dalgo.organization_members m JOIN dalgo.users u ON u.id = m.user_id
			   WHERE m.organization_id = org AND m.deleted_at IS NULL
				 AND lower(u.email) = lower(e) AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION '% is already a member of this organization', e USING ERRCODE = 'unique_violation';
	END IF;
	SELECT o.name INTO org_name FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL;

	-- Re-inviting a pending email replaces the earlier invitation.
	UPDATE dalgo.mail_messages m SET state = 'cancelled', payload = NULL
		WHERE m.kind = 'invitation' AND m.state = 'pending'
		  AND (m.payload->>'invitation_id')::uuid IN (
			SELECT i.id FROM dalgo.invitations i
			WHERE i.organization_id = org AND lower(i.email) = lower(e)
			  AND i.accepted_at IS NULL AND i.revoked_at IS NULL);
	UPDATE dalgo.invitations i SET revoked_at = now()
		WHERE i.organization_id = org AND lower(i.email) = lower(e) AND i.accepted_at IS NULL AND i.revoked_at IS NULL;

	INSERT INTO dalgo.invitations AS i (email, organization_id, role, token, expires_at, invited_by_id)
		VALUES (e, org, invite_member.role, dalgo.token_digest(raw),
				now() + dalgo.setting_interval('dalgo.invitation_ttl'), me)
		RETURNING i.id INTO iid;
	PERFORM dalgo.queue_mail('invitation', e,
		jsonb_build_object('token', raw, 'invitation_id', iid, 'organization_id', org,
						   'organization_name', org_name, 'role', invite_member.role,
						   'expires_at', now() + dalgo.setting_interval('dalgo.invitation_ttl')));
	PERFORM dalgo.account_audit('invitation_sent', me, org, 'invitation', iid,
								jsonb_build_object('role', invite_member.role));
	RETURN iid;
END
$$;
COMMENT ON FUNCTION dalgo.invite_member(uuid, text, dalgo.member_role) IS
	'Invite an email to an organization at a role (admins and owners; only owners invite owners); replaces a pending invitation to the same email; the token (dalgo.invitation_ttl) goes to the mail queue and only its hash is stored. Returns the invitation id';

CREATE FUNCTION dalgo.accept_invitation(token text) RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	inv record;
	my_email text;
BEGIN
	PERFORM dalgo.refuse_api_key('accepting an invitation');
	IF me IS NULL THEN
		RAISE EXCEPTION 'accepting an invitation needs a signed-in user' USING ERRCODE = 'insufficient_privilege';
	END IF;
	SELECT i.* INTO inv FROM dalgo.invitations i
		WHERE i.token = dalgo.token_digest(accept_invitation.token) FOR UPDATE;
	IF inv.id IS NULL THEN
		RAISE EXCEPTION 'invalid invitation token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	SELECT u.email INTO my_email FROM dalgo.users u WHERE u.id = me AND u.is_active AND u.deleted_at IS NULL;
	IF my_email IS NULL OR lower(my_email) <> lower(inv.email) THEN
		RAISE EXCEPTION 'this invitation was sent to another email address' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF inv.accepted_at IS NOT NULL THEN
		RAISE EXCEPTION 'this invitation has already been accepted' USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	IF inv.revoked_at IS NOT NULL THEN
		RAISE EXCEPTION 'this invitation has been revoked' USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	IF inv.expires_at <= now() THEN
		RAISE EXCEPTION 'this invitation has expired' USING ERRCODE = 'object_not_in_prerequisite_state',
			HINT = 'Ask for a new invitation.';
	END IF;
	IF EXISTS (SELECT FROM dalgo.organization_members m
			   WHERE m.organization_id = inv.organization_id AND m.user_id = me AND m.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'you are already a member of this organization' USING ERRCODE = 'unique_violation';
	END IF;

	-- The member is added by the inviter, under the inviter's current role:
	-- an invitation never grants more than its sender may grant now.
	IF inv.invited_by_id IS NULL THEN
		RAISE EXCEPTION 'the inviter can no longer invite to this organization' USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM dalgo.act_as(inv.invited_by_id);
	IF NOT dalgo.is_org_member(inv.organization_id, CASE WHEN inv.role = 'owner' THEN 'owner' ELSE 'admin' END::dalgo.member_role) THEN
		PERFORM dalgo.act_as(me);
		RAISE EXCEPTION 'the inviter can no longer invite to this organization' USING ERRCODE = 'insufficient_privilege';
	END IF;
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES (inv.organization_id, me, inv.role);
	PERFORM dalgo.act_as(me);

	UPDATE dalgo.invitations i SET accepted_at = now() WHERE i.id = inv.id;
	PERFORM dalgo.account_audit('invitation_accepted', me, inv.organization_id, 'invitation', inv.id,
								jsonb_build_object('role', inv.role));
	RETURN inv.organization_id;
END
$$;
COMMENT ON FUNCTION dalgo.accept_invitation(text) IS
	'Accept an invitation as the signed-in user whose email it was sent to (case-insensitively): adds the membership at the invited role, as long as the inviter may still grant it; returns the organization id. Errors: 28000 unknown token, 42501 wrong user, 55000 expired, revoked or used';

CREATE FUNCTION dalgo.revoke_invitation(invitation_id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	inv record;
BEGIN
	SELECT i.id, i.organization_id INTO inv FROM dalgo.invitations i WHERE i.id = revoke_invitation.invitation_id
		FOR UPDATE;
	IF inv.id IS NULL OR NOT dalgo.is_org_member(inv.organization_id, 'admin') THEN
		RAISE EXCEPTION 'invitation not found' USING ERRCODE = 'no_data_found';
	END IF;
	UPDATE dalgo.invitations i SET revoked_at = now()
		WHERE i.id = inv.id AND i.accepted_at IS NULL AND i.revoked_at IS NULL;
	IF FOUND THEN
		UPDATE dalgo.mail_messages m SET state = 'cancelled', payload = NULL
			WHERE m.kind = 'invitation' AND m.state = 'pending' AND m.payload->>'invitation_id' = inv.id::text;
		PERFORM dalgo.account_audit('invitation_revoked', dalgo.current_user_id(), inv.organization_id,
									'invitation', inv.id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.revoke_invitation(uuid) IS 'Revoke a pending invitation (admins and owners of its organization); its queued mail is cancelled';

-- ---------------------------------------------------------------------------
-- API keys
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.create_api_key(organization_id uuid, name text, role dalgo.member_role DEFAULT 'member',
									 expires_at timestamptz DEFAULT NULL)
	RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	org uuid := create_api_key.organization_id;
	raw text := 'dk_' || dalgo.new_token(32);
	kid uuid;
BEGIN
	PERFORM dalgo.refuse_api_key('creating an API key');
	IF me IS NULL OR org IS NULL OR NOT dalgo.is_org_member(org, 'admin') THEN
		RAISE EXCEPTION 'only admins and owners of the organization can create API keys'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF create_api_key.role IS NULL OR NOT dalgo.is_org_member(org, create_api_key.role) THEN
		RAISE EXCEPTION 'an API key''s role cannot exceed yours' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF create_api_key.expires_at IS NOT NULL AND create_api_key.expires_at <= now() THEN
		RAISE EXCEPTION 'expires_at must be in the future' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	INSERT INTO dalgo.api_keys AS k (organization_id, name, key_prefix, key_hash, role, expires_at, created_by_id)
		VALUES (org, create_api_key.name, left(raw, 11), dalgo.token_digest(raw), create_api_key.role,
				create_api_key.expires_at, me)
		RETURNING k.id INTO kid;
	PERFORM dalgo.account_audit('api_key_created', me, org, 'api_key', kid,
								jsonb_build_object('name', create_api_key.name, 'role', create_api_key.role,
												   'key_prefix', left(raw, 11)));
	RETURN raw;
END
$$;
COMMENT ON FUNCTION dalgo.create_api_key(uuid, text, dalgo.member_role, timestamptz) IS
	'Create an API key for an organization (admins and owners; the key''s role at most the creator''s); returns the key, once: only its hash is stored';

CREATE FUNCTION dalgo.revoke_api_key(id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k record;
BEGIN
	SELECT a.id, a.organization_id INTO k FROM dalgo.api_keys a WHERE a.id = revoke_api_key.id FOR UPDATE;
	IF k.id IS NULL OR NOT dalgo.is_org_member(k.organization_id, 'admin') THEN
		RAISE EXCEPTION 'API key not found' USING ERRCODE = 'no_data_found';
	END IF;
	UPDATE dalgo.api_keys a SET revoked_at = now() WHERE a.id = k.id AND a.revoked_at IS NULL;
	IF FOUND THEN
		PERFORM dalgo.account_audit('api_key_revoked', dalgo.current_user_id(), k.organization_id, 'api_key', k.id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.revoke_api_key(uuid) IS 'Revoke an API key (admins and owners of its organization)';

CREATE FUNCTION dalgo.authenticate_api_key(key text) RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k record;
BEGIN
	SELECT a.id, a.organization_id, a.role, a.created_by_id, a.expires_at, a.revoked_at, a.last_used_at INTO k
		FROM dalgo.api_keys a WHERE a.key_hash = dalgo.token_digest(authenticate_api_key.key);
	IF k.id IS NULL OR k.revoked_at IS NOT NULL OR k.expires_at <= now() OR k.created_by_id IS NULL
	   OR NOT dalgo.api_key_is_live(k.id)
	   OR NOT EXISTS (SELECT FROM dalgo.users u WHERE u.id = k.created_by_id AND u.is_active AND u.deleted_at IS NULL)
	   OR NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = k.organization_id AND o.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'invalid API key' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	IF (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute')
	   AND NOT current_setting('transaction_read_only')::boolean THEN
		UPDATE dalgo.api_keys a SET last_used_at = now() WHERE a.id = k.id;
	END IF;
	PERFORM dalgo.set_api_key_identity(k.id, k.created_by_id, k.organization_id, k.role::text);
	RETURN k.organization_id;
END
$$;
COMMENT ON FUNCTION dalgo.authenticate_api_key(text) IS
	'Verify an API key and make its creator the caller for this transaction, seen by every membership function and policy in the key''s organization only, at the lesser of the key''s role and the creator''s current role; returns the organization id. Unknown, revoked or expired: 28000 "invalid API key"';

CREATE FUNCTION dalgo.refuse_api_key_organization() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo.refuse_api_key('creating an organization');
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo.refuse_api_key_organization() IS
	'BEFORE INSERT trigger on organizations: an API key acts in its one organization and creates no other (dalgo.create_organization, dalgo.sign_up)';
CREATE TRIGGER api_key_scope BEFORE INSERT ON dalgo.organizations
	FOR EACH ROW EXECUTE FUNCTION dalgo.refuse_api_key_organization();
COMMENT ON TRIGGER api_key_scope ON dalgo.organizations IS 'An API key creates no organization';

-- ---------------------------------------------------------------------------
-- Privileges
-- ---------------------------------------------------------------------------

REVOKE ALL ON FUNCTION
	dalgo.pgcrypto_crypt(text, text), dalgo.pgcrypto_gen_salt(text, integer), dalgo.pgcrypto_random_bytes(integer),
	dalgo.new_token(integer), dalgo.token_digest(text), dalgo.email_key(text), dalgo.setting_interval(text),
	dalgo.sign_access_token(uuid, timestamptz), dalgo.run_autonomously(text, bytea, uuid),
	dalgo.set_api_key_identity(uuid, uuid, uuid, text), dalgo.act_as(uuid), dalgo.current_api_key_id(),
	dalgo.api_key_is_live(uuid), dalgo.require_read_committed(text), dalgo.refuse_api_key_organization(),
	dalgo.account_audit(text, uuid, uuid, text, uuid, jsonb), dalgo.check_new_password(text),
	dalgo.check_email(text), dalgo.refuse_api_key(text), dalgo.issue_session(uuid, uuid),
	dalgo.note_failed_sign_in(bytea, uuid), dalgo.note_token_reuse(bytea, uuid),
	dalgo.sign_up(text, text, text), dalgo.sign_in(text, text), dalgo.refresh_session(text),
	dalgo.end_session(text), dalgo.end_all_sessions(), dalgo.queue_mail(text, text, jsonb),
	dalgo.claim_messages(integer), dalgo.complete_message(uuid, text),
	dalgo.request_password_reset(text), dalgo.reset_password(text, text), dalgo.change_password(text, text),
	dalgo.invite_member(uuid, text, dalgo.member_role), dalgo.accept_invitation(text), dalgo.revoke_invitation(uuid),
	dalgo.create_api_key(uuid, text, dalgo.member_role, timestamptz), dalgo.revoke_api_key(uuid),
	dalgo.authenticate_api_key(text)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
	dalgo.sign_up(text, text, text), dalgo.sign_in(text, text), dalgo.refresh_session(text),
	dalgo.end_session(text), dalgo.request_password_reset(text), dalgo.reset_password(text, text),
	dalgo.authenticate_api_key(text), dalgo.current_api_key_id()
	TO dalgo_anon, dalgo_authenticated;
GRANT EXECUTE ON FUNCTION
	dalgo.end_all_sessions(), dalgo.change_password(text, text),
	dalgo.invite_member(uuid, text, dalgo.member_role), dalgo.accept_invitation(text), dalgo.revoke_invitation(uuid),
	dalgo.create_api_key(uuid, text, dalgo.member_role, timestamptz), dalgo.revoke_api_key(uuid)
	TO dalgo_authenticated;
GRANT EXECUTE ON FUNCTION dalgo.claim_messages(integer), dalgo.complete_message(uuid, text), dalgo.current_api_key_id()
	TO dalgo_service;

-- accounts: membership caches are invalidated only by writes that can change membership (issue 11)
DROP TRIGGER membership_changed ON dalgo.users;
DROP TRIGGER membership_changed ON dalgo.organizations;
CREATE TRIGGER membership_changed AFTER INSERT OR DELETE OR TRUNCATE ON dalgo.users
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo.membership_changed();
CREATE TRIGGER membership_changed_update AFTER UPDATE OF id, is_active, deleted_at, is_superadmin ON dalgo.users
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo.membership_changed();
CREATE TRIGGER membership_changed AFTER INSERT OR DELETE OR TRUNCATE ON dalgo.organizations
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo.membership_changed();
CREATE TRIGGER membership_changed_update AFTER UPDATE OF id, deleted_at ON dalgo.organizations
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo.membership_changed();
COMMENT ON TRIGGER membership_changed ON dalgo.users IS 'Invalidates membership caches';
COMMENT ON TRIGGER membership_changed ON dalgo.organizations IS 'Invalidates membership caches';
COMMENT ON TRIGGER membership_changed_update ON dalgo.users IS 'Invalidates membership caches when is_active, deleted_at or is_superadmin (or id) is written';
COMMENT ON TRIGGER membership_changed_update ON dalgo.organizations IS 'Invalidates membership caches when deleted_at (or id) is written';
ALTER TABLE dalgo.users ENABLE ALWAYS TRIGGER membership_changed;
ALTER TABLE dalgo.organizations ENABLE ALWAYS TRIGGER membership_changed;
ALTER TABLE dalgo.users ENABLE ALWAYS TRIGGER membership_changed_update;
ALTER TABLE dalgo.organizations ENABLE ALWAYS TRIGGER membership_changed_update;

-- merge (accounts + attack1): a personal organization does not keep its only user active
CREATE OR REPLACE FUNCTION dalgo.guard_user_liveness() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	was_live boolean := OLD.is_active AND OLD.deleted_at IS NULL;
	is_live boolean := NEW.is_active AND NEW.deleted_at IS NULL;
	m record;
BEGIN
	IF was_live = is_live THEN
		RETURN NEW;
	END IF;
	IF me IS NOT NULL AND NOT coalesce((SELECT u.is_superadmin AND u.is_active AND u.deleted_at IS NULL
										 FROM dalgo.users u WHERE u.id = me), false)
	   AND (is_live OR me <> NEW.id) THEN
		RAISE EXCEPTION 'only the user or a superadmin deactivates or deletes an account, and only a superadmin restores one'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF was_live THEN
		FOR m IN SELECT x.id, x.organization_id FROM dalgo.organization_members x
				 WHERE x.user_id = NEW.id AND x.role = 'owner' AND x.deleted_at IS NULL
				 ORDER BY x.organization_id
		LOOP
			-- A personal organization belongs to its one user: it goes with them.
			PERFORM FROM dalgo.organizations o WHERE o.id = m.organization_id AND o.deleted_at IS NULL
				AND o.org_type <> 'personal' FOR NO KEY UPDATE;
			IF FOUND AND dalgo.live_owner_count(m.organization_id, m.id) = 0 THEN
				RAISE EXCEPTION 'cannot deactivate or delete the last owner of organization %', m.organization_id
					USING ERRCODE = 'check_violation',
						  HINT = 'Make another member an owner first, or delete the organization.';
			END IF;
		END LOOP;
	END IF;
	RETURN NEW;
END
$$;


-- toolkit: secure any schema (policy patterns, redaction, retention, security report); the whole of sql/toolkit.sql
-- toolkit.sql: secure any table with one call (docs/toolkit.md).
--
-- Policy patterns (enable_org_rows, enable_own_rows, enable_public_read,
-- enable_shared_rows) and helpers (enable_updated_at, enable_redaction),
-- each idempotent with a disable_ counterpart; retention policies; a
-- security report.  Who may call them: the functions run with the caller's
-- rights (no SECURITY DEFINER), EXECUTE is revoked from PUBLIC, and each
-- checks that the caller owns the table: superusers, or a table owner a
-- superuser granted EXECUTE to.  search_path is pinned to pg_catalog,
-- pg_temp and every name is built from the catalog with %I, so neither a
-- caller's search_path nor a temporary object changes what is created.
-- Generated policies use the index-friendly forms of sql/rls.sql: the
-- membership list and the caller's id are computed once per statement (an
-- initPlan over dalgo.current_org_ids / dalgo.current_user_id).

CREATE FUNCTION dalgo.redact_jsonb(value jsonb, keys text[] DEFAULT NULL, pii boolean DEFAULT false)
	RETURNS jsonb
	AS 'MODULE_PATHNAME', 'dalgo_redact_jsonb_keys'
	LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.redact_jsonb(jsonb, text[], boolean) IS
	'The document with the values of keys (at any depth; NULL: the secret names the audit trail redacts) made "[redacted]", credentials inside strings stripped, and with pii e-mail addresses and phone numbers masked (***); the audit trail''s rules (src/redact.c)';

CREATE FUNCTION dalgo.redact_trigger() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_redact_trigger'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo.redact_trigger() IS
	'BEFORE INSERT OR UPDATE row trigger redacting one jsonb or text column (arguments: column, pii flag, keys); attach it with dalgo.enable_redaction()';

CREATE FUNCTION dalgo.toolkit_condition(tbl regclass, condition text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_toolkit_condition'
	LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION dalgo.toolkit_condition(regclass, text) IS
	'Internal: parses and analyzes a public-read condition (one boolean expression over the table''s own columns, no subquery, only immutable functions) and returns it deparsed';

CREATE FUNCTION dalgo.toolkit_policy_problems(qual pg_node_tree) RETURNS text[]
	AS 'MODULE_PATHNAME', 'dalgo_toolkit_policy_problems'
	LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION dalgo.toolkit_policy_problems(pg_node_tree) IS
	'Internal: the volatile and per-row function calls of a policy expression, for dalgo.security_report()';

CREATE FUNCTION dalgo.is_secret_name(name text) RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_is_secret_name'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.is_secret_name(text) IS
	'True if a key or column name names a secret by the audit trail''s rules (password, token, api_key, *_secret, ...)';

-- The checked, schema-qualified name of a table the caller may secure.
CREATE FUNCTION dalgo.toolkit_target(tbl regclass) RETURNS text
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c record;
BEGIN
	SELECT n.nspname, r.relname, r.relkind, r.relowner, r.relpersistence INTO c
	FROM pg_catalog.pg_class r JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) r.relnamespace
	WHERE r.oid OPERATOR(pg_catalog.=) tbl;
	IF NOT FOUND OR c.relkind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = 'wrong_object_type';
	END IF;
	IF c.nspname = 'dalgo' THEN
		RAISE EXCEPTION 'dalgo''s own tables have their own policies' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'The toolkit secures the tables of other schemas.';
	END IF;
	IF c.relpersistence = 't' THEN
		RAISE EXCEPTION '% is a temporary table', tbl USING ERRCODE = 'wrong_object_type';
	END IF;
	IF NOT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', c.relname USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN pg_catalog.format('%I.%I', c.nspname, c.relname);
END
$$;
COMMENT ON FUNCTION dalgo.toolkit_target(regclass) IS
	'Internal: the qualified name of a table the caller owns, outside schema dalgo; raises otherwise';

-- The type of a column of tbl, checked against the allowed types.
CREATE FUNCTION dalgo.toolkit_column(tbl regclass, col name, types regtype[]) RETURNS regtype
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t regtype;
BEGIN
	SELECT a.atttypid::regtype INTO t FROM pg_catalog.pg_attribute a
	WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) col
	  AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped;
	IF t IS NULL THEN
		RAISE EXCEPTION 'column "%" of % does not exist', col, tbl USING ERRCODE = 'undefined_column';
	END IF;
	IF types IS NOT NULL AND NOT t OPERATOR(pg_catalog.=) ANY (types) THEN
		RAISE EXCEPTION 'column "%" of % is of type %, not %', col, tbl, t, pg_catalog.array_to_string(types, ' or ')
			USING ERRCODE = 'datatype_mismatch';
	END IF;
	RETURN t;
END
$$;
COMMENT ON FUNCTION dalgo.toolkit_column(regclass, name, regtype[]) IS
	'Internal: the type of a column, which must exist and be of one of the given types';

-- Create a btree index on col unless an index already leads with it.
CREATE FUNCTION dalgo.toolkit_ensure_index(tbl regclass, col name) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	attnum int2;
BEGIN
	SELECT a.attnum INTO attnum FROM pg_catalog.pg_attribute a
	WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) col AND NOT a.attisdropped;
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_index i
				   WHERE i.indrelid OPERATOR(pg_catalog.=) tbl AND i.indkey[0] OPERATOR(pg_catalog.=) attnum
					 AND i.indpred IS NULL AND i.indisvalid) THEN
		EXECUTE pg_catalog.format('CREATE INDEX ON %s (%I)', dalgo.toolkit_target(tbl), col);
		RAISE NOTICE 'dalgo: created an index on %(%)', tbl, col;
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.toolkit_ensure_index(regclass, name) IS
	'Internal: creates the btree index a policy pattern needs on a column (with a NOTICE) unless an index leads with it';

-- Drop the policies of tbl whose names start with prefix.
CREATE FUNCTION dalgo.toolkit_drop_policies(tbl regclass, prefix text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p name;
	target text := dalgo.toolkit_target(tbl);
BEGIN
	FOR p IN SELECT polname FROM pg_catalog.pg_policy
			 WHERE polrelid OPERATOR(pg_catalog.=) tbl AND pg_catalog.starts_with(polname, prefix)
	LOOP
		EXECUTE pg_catalog.format('DROP POLICY %I ON %s', p, target);
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo.toolkit_drop_policies(regclass, text) IS 'Internal: drops the policies a pattern created';

-- Enable and force RLS, give the schema to the app roles, let dalgo_service through.
CREATE FUNCTION dalgo.toolkit_prepare(tbl regclass, roles text[], service_writes boolean DEFAULT true)
	RETURNS text
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo.toolkit_target(tbl);
	nsp oid := (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) tbl);
	r text;
	s text;
BEGIN
	EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', target);
	EXECUTE pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', target);
	FOREACH r IN ARRAY roles || ARRAY['dalgo_service'] LOOP
		IF NOT pg_catalog.has_schema_privilege(r, nsp, 'USAGE') THEN
			EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %I TO %I', nsp::regnamespace::text, r);
		END IF;
		-- Sequences behind identity and serial columns, for INSERT.
		FOR s IN SELECT pg_catalog.format('%I.%I', sn.nspname, sc.relname)
				 FROM pg_catalog.pg_depend d
				 JOIN pg_catalog.pg_class sc ON sc.oid OPERATOR(pg_catalog.=) d.objid AND sc.relkind = 'S'
				 JOIN pg_catalog.pg_namespace sn ON sn.oid OPERATOR(pg_catalog.=) sc.relnamespace
				 WHERE d.refobjid OPERATOR(pg_catalog.=) tbl AND d.classid = 'pg_catalog.pg_class'::regclass
				   AND d.deptype IN ('a', 'i')
		LOOP
			IF r <> 'dalgo_anon' THEN
				EXECUTE pg_catalog.format('GRANT USAGE ON SEQUENCE %s TO %I', s, r);
			END IF;
		END LOOP;
	END LOOP;
	PERFORM dalgo.toolkit_drop_policies(tbl, 'dalgo_service');
	IF service_writes THEN
		EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO dalgo_service', target);
		EXECUTE pg_catalog.format('CREATE POLICY dalgo_service ON %s TO dalgo_service USING (true) WITH CHECK (true)', target);
		EXECUTE pg_catalog.format('COMMENT ON POLICY dalgo_service ON %s IS %L', target, 'dalgo_service passes (dalgo toolkit)');
	ELSE
		EXECUTE pg_catalog.format('GRANT SELECT, INSERT ON %s TO dalgo_service', target);
		EXECUTE pg_catalog.format('REVOKE UPDATE, DELETE, TRUNCATE ON %s FROM dalgo_service', target);
		EXECUTE pg_catalog.format('CREATE POLICY dalgo_service_select ON %s FOR SELECT TO dalgo_service USING (true)', target);
		EXECUTE pg_catalog.format('CREATE POLICY dalgo_service_insert ON %s FOR INSERT TO dalgo_service WITH CHECK (true)', target);
		EXECUTE pg_catalog.format('COMMENT ON POLICY dalgo_service_select ON %s IS %L', target, 'dalgo_service reads (dalgo toolkit, immutable rows)');
		EXECUTE pg_catalog.format('COMMENT ON POLICY dalgo_service_insert ON %s IS %L', target, 'dalgo_service inserts (dalgo toolkit, immutable rows)');
	END IF;
	RETURN target;
END
$$;
COMMENT ON FUNCTION dalgo.toolkit_prepare(regclass, text[], boolean) IS
	'Internal: enables and forces row-level security, grants the schema and sequences to the app roles and lets dalgo_service through';

-- Create one policy with its comment.
CREATE FUNCTION dalgo.toolkit_policy(tbl regclass, policy name, command text, roles text, using_expr text,
									 check_expr text, description text)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo.toolkit_target(tbl);
BEGIN
	EXECUTE pg_catalog.format('CREATE POLICY %I ON %s FOR %s TO %s', policy, target, command, roles)
		|| CASE WHEN using_expr IS NOT NULL THEN ' USING (' || using_expr || ')' ELSE '' END
		|| CASE WHEN check_expr IS NOT NULL THEN ' WITH CHECK (' || check_expr || ')' ELSE '' END;
	EXECUTE pg_catalog.format('COMMENT ON POLICY %I ON %s IS %L', policy, target, description || ' (dalgo toolkit)');
END
$$;
COMMENT ON FUNCTION dalgo.toolkit_policy(regclass, name, text, text, text, text, text) IS
	'Internal: creates one policy of a pattern, with its comment';

-- The index-friendly test "the caller is at least role in the row's organization".
CREATE FUNCTION dalgo.toolkit_org_test(col name, role dalgo.member_role) RETURNS text
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
	RETURN pg_catalog.format('%I OPERATOR(pg_catalog.=) ANY ((SELECT dalgo.current_org_ids(%L::dalgo.member_role))::uuid[])',
							 col, role);
COMMENT ON FUNCTION dalgo.toolkit_org_test(name, dalgo.member_role) IS
	'Internal: the policy expression testing membership at a role, an initPlan over dalgo.current_org_ids()';

-- The index-friendly test "the row is the caller's".
CREATE FUNCTION dalgo.toolkit_own_test(col name) RETURNS text
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
	RETURN pg_catalog.format('%I OPERATOR(pg_catalog.=) (SELECT dalgo.current_user_id())', col);
COMMENT ON FUNCTION dalgo.toolkit_own_test(name) IS
	'Internal: the policy expression testing ownership, an initPlan over dalgo.current_user_id()';

-- ---------------------------------------------------------------------------
-- Policy patterns
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.disable_org_rows(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo.toolkit_drop_policies(tbl, 'dalgo_org_');
END
$$;
COMMENT ON FUNCTION dalgo.disable_org_rows(regclass) IS
	'Removes the policies of dalgo.enable_org_rows(); row-level security stays on (no end user sees the rows until another pattern or policy allows it)';

CREATE FUNCTION dalgo.enable_org_rows(tbl regclass, org_column name DEFAULT 'organization_id',
									  read_role dalgo.member_role DEFAULT 'viewer',
									  write_role dalgo.member_role DEFAULT 'member',
									  owner_column name DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo.toolkit_target(tbl);
	r_read text := dalgo.toolkit_org_test(org_column, read_role);
	r_write text := dalgo.toolkit_org_test(org_column, write_role);
	w_check text;
BEGIN
	IF read_role IS NULL OR write_role IS NULL THEN
		RAISE EXCEPTION 'read_role and write_role are required' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF write_role OPERATOR(pg_catalog.<) read_role THEN
		RAISE EXCEPTION 'write_role (%) must be at least read_role (%)', write_role, read_role
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM dalgo.toolkit_column(tbl, org_column, ARRAY['uuid'::regtype]);
	w_check := r_write;
	IF owner_column IS NOT NULL THEN
		PERFORM dalgo.toolkit_column(tbl, owner_column, ARRAY['uuid'::regtype]);
		r_read := r_read || ' OR ' || dalgo.toolkit_own_test(owner_column);
		-- An owner's row may stay outside any organization; it never enters
		-- one where the owner lacks write_role.
		w_check := r_write || pg_catalog.format(' OR (%I IS NULL AND ', org_column) || dalgo.toolkit_own_test(owner_column) || ')';
		r_write := r_write || ' OR ' || dalgo.toolkit_own_test(owner_column);
	END IF;
	PERFORM dalgo.toolkit_prepare(tbl, ARRAY['dalgo_authenticated']);
	PERFORM dalgo.toolkit_drop_policies(tbl, 'dalgo_org_');
	PERFORM dalgo.toolkit_policy(tbl, 'dalgo_org_select', 'SELECT', 'dalgo_authenticated', r_read, NULL,
		pg_catalog.format('Rows of organizations where the caller is at least %s', read_role)
		|| CASE WHEN owner_column IS NOT NULL THEN ', and the caller''s own rows' ELSE '' END);
	PERFORM dalgo.toolkit_policy(tbl, 'dalgo_org_insert', 'INSERT', 'dalgo_authenticated', NULL, w_check,
		pg_catalog.format('Only %s and above add rows, and only to their organizations', write_role));
	PERFORM dalgo.toolkit_policy(tbl, 'dalgo_org_update', 'UPDATE', 'dalgo_authenticated', r_write, w_check,
		pg_catalog.format('Only %s and above change rows, and never move them to an organization where they are less', write_role));
	PERFORM dalgo.toolkit_policy(tbl, 'dalgo_org_delete', 'DELETE', 'dalgo_authenticated', r_write, NULL,
		pg_catalog.format('Only %s and above delete rows', write_role));
	EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO dalgo_authenticated', target);
	PERFORM dalgo.toolkit_ensure_index(tbl, org_column);
	IF owner_column IS NOT NULL THEN
		PERFORM dalgo.toolkit_ensure_index(tbl, owner_column);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.enable_org_rows(regclass, name, dalgo.member_role, dalgo.member_role, name) IS
	'Secure a table by organization: members at read_role or above read, at write_role or above write; with owner_column the owner also reads and writes their rows. No row enters an organization where the writer lacks write_role. Idempotent; undo with dalgo.disable_org_rows()';

CREATE FUNCTION dalgo.disable_own_rows(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo.toolkit_drop_policies(tbl, 'dalgo_own_');
END
$$;
COMMENT ON FUNCTION dalgo.disable_own_rows(regclass) IS
	'Removes the policies of dalgo.enable_own_rows(); row-level security stays on';

CREATE FUNCTION dalgo.enable_own_rows(tbl regclass, owner_column name DEFAULT 'user_id', immutable boolean DEFAULT false)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo.toolkit_target(tbl);
	mine text := dalgo.toolkit_own_test(owner_column);
BEGIN
	PERFORM dalgo.toolkit_column(tbl, owner_column, ARRAY['uuid'::regtype]);
	PERFORM dalgo.toolkit_prepare(tbl, ARRAY['dalgo_authenticated'], NOT coalesce(immutable, false));
	PERFORM dalgo.toolkit_drop_policies(tbl, 'dalgo_own_');
	PERFORM dalgo.toolkit_policy(tbl, 'dalgo_own_select', 'SELECT', 'dalgo_authenticated', mine, NULL,
		'Users read only their own rows');
	PERFORM dalgo.toolkit_policy(tbl, 'dalgo_own_insert', 'INSERT', 'dalgo_authenticated', NULL, mine,
		'Users add rows only as themselves');
	IF coalesce(immutable, false) THEN
		EXECUTE pg_catalog.format('GRANT SELECT, INSERT ON %s TO dalgo_authenticated', target);
		EXECUTE pg_catalog.format('REVOKE UPDATE, DELETE, TRUNCATE ON %s FROM dalgo_authenticated, dalgo_anon', target);
	ELSE
		PERFORM dalgo.toolkit_policy(tbl, 'dalgo_own_update', 'UPDATE', 'dalgo_authenticated', mine, mine,
			'Users change only their own rows, and cannot give them away');
		PERFORM dalgo.toolkit_policy(tbl, 'dalgo_own_delete', 'DELETE', 'dalgo_authenticated', mine, NULL,
			'Users delete only their own rows');
		EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO dalgo_authenticated', target);
	END IF;
	PERFORM dalgo.toolkit_ensure_index(tbl, owner_column);
END
$$;
COMMENT ON FUNCTION dalgo.enable_own_rows(regclass, name, boolean) IS
	'Secure a table by owner: only the owner reads and writes a row. With immutable (zero trust), rows are only inserted and read: no update or delete by anyone, dalgo_service included. Idempotent; undo with dalgo.disable_own_rows()';

CREATE FUNCTION dalgo.disable_public_read(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo.toolkit_drop_policies(tbl, 'dalgo_public_');
	EXECUTE pg_catalog.format('REVOKE SELECT ON %s FROM dalgo_anon', dalgo.toolkit_target(tbl));
END
$$;
COMMENT ON FUNCTION dalgo.disable_public_read(regclass) IS
	'Removes the policy of dalgo.enable_public_read() and dalgo_anon''s SELECT; row-level security stays on';

CREATE FUNCTION dalgo.enable_public_read(tbl regclass, condition text DEFAULT NULL) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo.toolkit_target(tbl);
	cond text := 'true';
BEGIN
	IF condition IS NOT NULL THEN
		cond := dalgo.toolkit_condition(tbl, condition);
	END IF;
	PERFORM dalgo.toolkit_prepare(tbl, ARRAY['dalgo_authenticated', 'dalgo_anon']);
	PERFORM dalgo.toolkit_drop_policies(tbl, 'dalgo_public_');
	PERFORM dalgo.toolkit_policy(tbl, 'dalgo_public_select', 'SELECT', 'dalgo_anon, dalgo_authenticated', cond, NULL,
		CASE WHEN condition IS NULL THEN 'Everyone reads every row' ELSE 'Everyone reads the rows where ' || cond END);
	EXECUTE pg_catalog.format('GRANT SELECT ON %s TO dalgo_anon, dalgo_authenticated', target);
END
$$;
COMMENT ON FUNCTION dalgo.enable_public_read(regclass, text) IS
	'Everyone, dalgo_anon included, reads the rows where condition holds (a boolean expression over the table''s own columns: no subquery, only immutable functions; NULL: every row); only dalgo_service writes. Idempotent; undo with dalgo.disable_public_read()';

-- Checked outside the policies: a policy on the shares table that read the
-- shared table would recurse (that table's policy reads the shares).
CREATE FUNCTION dalgo.toolkit_share_guard() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	owned boolean;
BEGIN
	-- Arguments: shared table (qualified), its key column, the shares' key column, its owner column.
	IF TG_NARGS <> 4 THEN
		RAISE EXCEPTION 'dalgo.toolkit_share_guard() takes 4 arguments' USING ERRCODE = 'E0001',
			HINT = 'Attach it with dalgo.enable_shared_rows().';
	END IF;
	IF pg_catalog.pg_has_role(current_user, 'dalgo_authenticated', 'MEMBER')
	   AND NOT pg_catalog.pg_has_role(current_user, 'dalgo_service', 'MEMBER') THEN
		EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s p WHERE p.%I OPERATOR(pg_catalog.=) ($1).%I '
								  'AND p.%I OPERATOR(pg_catalog.=) dalgo.current_user_id())',
								  TG_ARGV[0], TG_ARGV[1], TG_ARGV[2], TG_ARGV[3])
			INTO owned USING NEW;
		IF NOT owned THEN
			RAISE EXCEPTION 'only the owner of a row shares it' USING ERRCODE = 'insufficient_privilege';
		END IF;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo.toolkit_share_guard() IS
	'BEFORE INSERT OR UPDATE trigger of a shares table (dalgo.enable_shared_rows()): end users share only rows they own';

CREATE FUNCTION dalgo.disable_shared_rows(tbl regclass, shares regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo.toolkit_drop_policies(tbl, 'dalgo_shared_');
	PERFORM dalgo.toolkit_drop_policies(shares, 'dalgo_shares_');
	EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS dalgo_shares_guard ON %s', dalgo.toolkit_target(shares));
END
$$;
COMMENT ON FUNCTION dalgo.disable_shared_rows(regclass, regclass) IS
	'Removes the policies of dalgo.enable_shared_rows() from both tables; row-level security stays on';

CREATE FUNCTION dalgo.enable_shared_rows(tbl regclass, shares regclass,
										 owner_column name DEFAULT 'user_id',
										 shared_with_column name DEFAULT 'user_id',
										 permission_column name DEFAULT 'permission',
										 shared_by_column name DEFAULT 'shared_by',
										 public_column name DEFAULT 'is_public')
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo.toolkit_target(tbl);
	shares_target text := dalgo.toolkit_target(shares);
	key_col name;
	ref_col name;
	has_public boolean;
	mine text := dalgo.toolkit_own_test(owner_column);
	shared text;
	editable text;
	read_expr text;
	cols text;
BEGIN
	-- The shares table points at tbl with a one-column foreign key.
	SELECT ka.attname, ra.attname INTO key_col, ref_col
	FROM pg_catalog.pg_constraint c
	JOIN pg_catalog.pg_attribute ka ON ka.attrelid OPERATOR(pg_catalog.=) c.conrelid AND ka.attnum OPERATOR(pg_catalog.=) c.conkey[1]
	JOIN pg_catalog.pg_attribute ra ON ra.attrelid OPERATOR(pg_catalog.=) c.confrelid AND ra.attnum OPERATOR(pg_catalog.=) c.confkey[1]
	WHERE c.contype = 'f' AND c.conrelid OPERATOR(pg_catalog.=) shares AND c.confrelid OPERATOR(pg_catalog.=) tbl
	  AND pg_catalog.cardinality(c.conkey) OPERATOR(pg_catalog.=) 1
	ORDER BY c.conname LIMIT 1;
	IF key_col IS NULL THEN
		RAISE EXCEPTION '% has no one-column foreign key to %', shares, tbl USING ERRCODE = 'invalid_foreign_key';
	END IF;
	PERFORM dalgo.toolkit_column(tbl, owner_column, ARRAY['uuid'::regtype]);
	PERFORM dalgo.toolkit_column(shares, shared_with_column, ARRAY['uuid'::regtype]);
	PERFORM dalgo.toolkit_column(shares, permission_column, NULL);
	PERFORM dalgo.toolkit_column(shares, shared_by_column, ARRAY['uuid'::regtype]);
	has_public := public_column IS NOT NULL AND EXISTS (SELECT FROM pg_catalog.pg_attribute
		WHERE attrelid OPERATOR(pg_catalog.=) tbl AND attname OPERATOR(pg_catalog.=) public_column AND NOT attisdropped);
	IF has_public THEN
		PERFORM dalgo.toolkit_column(tbl, public_column, ARRAY['boolean'::regtype]);
	END IF;

	-- Row ids shared with the caller: one uncorrelated subquery (an initPlan).
	shared := pg_catalog.format('%I OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT s.%I FROM %s s WHERE s.%I OPERATOR(pg_catalog.=) '
		'(SELECT dalgo.current_user_id()) AND s.%I::text OPERATOR(pg_catalog.=) ANY (%%L::text[])))',
		ref_col, key_col, shares_target, shared_with_column, permission_column);
	editable := pg_catalog.format(shared, '{edit}');
	shared := pg_catalog.format(shared, '{view,edit}');
	read_expr := mine || ' OR ' || shared;
	IF has_public THEN
		read_expr := read_expr || pg_catalog.format(' OR %I', public_column);
	END IF;

	PERFORM dalgo.toolkit_prepare(tbl, ARRAY['dalgo_authenticated']);
	PERFORM dalgo.toolkit_prepare(shares, ARRAY['dalgo_authenticated']);
	PERFORM dalgo.toolkit_drop_policies(tbl, 'dalgo_shared_');
	PERFORM dalgo.toolkit_drop_policies(shares, 'dalgo_shares_');
	PERFORM dalgo.toolkit_policy(tbl, 'dalgo_shared_select', 'SELECT', 'dalgo_authenticated', read_expr, NULL,
		'Owners, users with a view or edit share' || CASE WHEN has_public THEN ', and everyone signed in for public rows' ELSE '' END);
	PERFORM dalgo.toolkit_policy(tbl, 'dalgo_shared_insert', 'INSERT', 'dalgo_authenticated', NULL, mine,
		'Users create rows only as their owner');
	PERFORM dalgo.toolkit_policy(tbl, 'dalgo_shared_update', 'UPDATE', 'dalgo_authenticated', mine || ' OR ' || editable,
		mine || ' OR ' || editable, 'Owners and users with an edit share change rows (never the owner or the id)');
	PERFORM dalgo.toolkit_policy(tbl, 'dalgo_shared_delete', 'DELETE', 'dalgo_authenticated', mine, NULL,
		'Only owners delete rows');
	-- Editors change every column but the owner and the shared id.
	SELECT pg_catalog.string_agg(pg_catalog.quote_ident(attname), ', ' ORDER BY attnum) INTO cols
	FROM pg_catalog.pg_attribute
	WHERE attrelid OPERATOR(pg_catalog.=) tbl AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped
	  AND attname NOT IN (owner_column, ref_col);
	EXECUTE pg_catalog.format('REVOKE UPDATE ON %s FROM dalgo_authenticated', target);
	EXECUTE pg_catalog.format('GRANT SELECT, INSERT, DELETE ON %s TO dalgo_authenticated', target);
	IF cols IS NOT NULL THEN
		EXECUTE pg_catalog.format('GRANT UPDATE (%s) ON %s TO dalgo_authenticated', cols, target);
	END IF;

	-- The shares: seen by the user shared with and by who shared; made by
	-- the row's owner (checked by a trigger, see toolkit_share_guard).
	PERFORM dalgo.toolkit_policy(shares, 'dalgo_shares_select', 'SELECT', 'dalgo_authenticated',
		dalgo.toolkit_own_test(shared_with_column) || ' OR ' || dalgo.toolkit_own_test(shared_by_column), NULL,
		'A share is seen by the user it is for and by who shared');
	PERFORM dalgo.toolkit_policy(shares, 'dalgo_shares_insert', 'INSERT', 'dalgo_authenticated', NULL,
		dalgo.toolkit_own_test(shared_by_column), 'Shares are made in the name of who shares, the row''s owner');
	PERFORM dalgo.toolkit_policy(shares, 'dalgo_shares_update', 'UPDATE', 'dalgo_authenticated',
		dalgo.toolkit_own_test(shared_by_column), dalgo.toolkit_own_test(shared_by_column),
		'Who shared changes the share');
	PERFORM dalgo.toolkit_policy(shares, 'dalgo_shares_delete', 'DELETE', 'dalgo_authenticated',
		dalgo.toolkit_own_test(shared_by_column) || ' OR ' || dalgo.toolkit_own_test(shared_with_column), NULL,
		'Who shared revokes a share; the user it is for leaves it');
	EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER dalgo_shares_guard BEFORE INSERT OR UPDATE ON %s '
							  'FOR EACH ROW EXECUTE FUNCTION dalgo.toolkit_share_guard(%L, %L, %L, %L)',
							  shares_target, target, ref_col, key_col, owner_column);
	EXECUTE pg_catalog.format('COMMENT ON TRIGGER dalgo_shares_guard ON %s IS %L', shares_target,
							  pg_catalog.format('Only the owner of a %s row shares it (dalgo toolkit)', target));
	EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO dalgo_authenticated', shares_target);

	PERFORM dalgo.toolkit_ensure_index(tbl, owner_column);
	PERFORM dalgo.toolkit_ensure_index(shares, shared_with_column);
	PERFORM dalgo.toolkit_ensure_index(shares, key_col);
	PERFORM dalgo.toolkit_ensure_index(shares, shared_by_column);
END
$$;
COMMENT ON FUNCTION dalgo.enable_shared_rows(regclass, regclass, name, name, name, name, name) IS
	'Secure an owner-plus-shares table: owners read and write their rows; users with a view or edit share (a row of shares, found by its foreign key to tbl) read them, edit shares change them (never the owner column); rows whose public_column is true are read by everyone signed in. Also secures shares: only a row''s owner shares it, in their name (shared_by_column). Idempotent; undo with dalgo.disable_shared_rows()';

CREATE FUNCTION dalgo.disable_child_rows(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo.toolkit_drop_policies(tbl, 'dalgo_child_');
END
$$;
COMMENT ON FUNCTION dalgo.disable_child_rows(regclass) IS
	'Removes the policies of dalgo.enable_child_rows(); row-level security stays on';

CREATE FUNCTION dalgo.enable_child_rows(tbl regclass, parent regclass, parent_column name DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo.toolkit_target(tbl);
	parent_target text := dalgo.toolkit_target(parent);
	key_col name;
	ref_col name;
	readable text;
	writable text;
BEGIN
	SELECT ka.attname, ra.attname INTO key_col, ref_col
	FROM pg_catalog.pg_constraint c
	JOIN pg_catalog.pg_attribute ka ON ka.attrelid OPERATOR(pg_catalog.=) c.conrelid AND ka.attnum OPERATOR(pg_catalog.=) c.conkey[1]
	JOIN pg_catalog.pg_attribute ra ON ra.attrelid OPERATOR(pg_catalog.=) c.confrelid AND ra.attnum OPERATOR(pg_catalog.=) c.confkey[1]
	WHERE c.contype = 'f' AND c.conrelid OPERATOR(pg_catalog.=) tbl AND c.confrelid OPERATOR(pg_catalog.=) parent
	  AND pg_catalog.cardinality(c.conkey) OPERATOR(pg_catalog.=) 1
	  AND (parent_column IS NULL OR ka.attname OPERATOR(pg_catalog.=) parent_column)
	ORDER BY c.conname LIMIT 1;
	IF key_col IS NULL THEN
		RAISE EXCEPTION '% has no one-column foreign key to %', tbl, parent USING ERRCODE = 'invalid_foreign_key';
	END IF;
	-- The parent rows the caller reads (its SELECT policies), and those it
	-- may update (a locking clause applies its UPDATE policies too; KEY
	-- SHARE, the lock a foreign key takes, blocks no ordinary update): one
	-- uncorrelated subquery each, an initPlan.
	readable := pg_catalog.format('%I OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT p.%I FROM %s p))', key_col, ref_col, parent_target);
	writable := pg_catalog.format('%I OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT p.%I FROM %s p FOR KEY SHARE))', key_col, ref_col, parent_target);
	PERFORM dalgo.toolkit_prepare(tbl, ARRAY['dalgo_authenticated']);
	PERFORM dalgo.toolkit_drop_policies(tbl, 'dalgo_child_');
	PERFORM dalgo.toolkit_policy(tbl, 'dalgo_child_select', 'SELECT', 'dalgo_authenticated', readable, NULL,
		pg_catalog.format('Rows whose %s row the caller reads', parent_target));
	PERFORM dalgo.toolkit_policy(tbl, 'dalgo_child_insert', 'INSERT', 'dalgo_authenticated', NULL, writable,
		pg_catalog.format('Rows are added under a %s row the caller may change', parent_target));
	PERFORM dalgo.toolkit_policy(tbl, 'dalgo_child_update', 'UPDATE', 'dalgo_authenticated', writable, writable,
		pg_catalog.format('Rows under a %s row the caller may change are changed, and stay under one', parent_target));
	PERFORM dalgo.toolkit_policy(tbl, 'dalgo_child_delete', 'DELETE', 'dalgo_authenticated', writable, NULL,
		pg_catalog.format('Rows under a %s row the caller may change are deleted', parent_target));
	EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO dalgo_authenticated', target);
	PERFORM dalgo.toolkit_ensure_index(tbl, key_col);
END
$$;
COMMENT ON FUNCTION dalgo.enable_child_rows(regclass, regclass, name) IS
	'Secure a table whose rows belong to a row of parent (through a one-column foreign key, or parent_column): a row is read by whoever reads its parent and written by whoever may update its parent, by the parent''s own policies. Idempotent; undo with dalgo.disable_child_rows()';

CREATE FUNCTION dalgo.enable_service_only(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo.toolkit_target(tbl);
BEGIN
	PERFORM dalgo.toolkit_prepare(tbl, '{}'::text[]);
	EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM dalgo_authenticated, dalgo_anon', target);
END
$$;
COMMENT ON FUNCTION dalgo.enable_service_only(regclass) IS
	'Secure a table for dalgo_service alone (the service-role pattern): row-level security on and forced, no end-user privilege. Undo by enabling another pattern';

-- ---------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.disable_updated_at(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS dalgo_updated_at ON %s', dalgo.toolkit_target(tbl));
END
$$;
COMMENT ON FUNCTION dalgo.disable_updated_at(regclass) IS 'Removes the trigger of dalgo.enable_updated_at()';

CREATE FUNCTION dalgo.enable_updated_at(tbl regclass, "column" name DEFAULT 'updated_at') RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo.toolkit_target(tbl);
BEGIN
	PERFORM dalgo.toolkit_column(tbl, "column", ARRAY['timestamptz'::regtype, 'timestamp'::regtype]);
	EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER dalgo_updated_at BEFORE UPDATE ON %s '
							  'FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at(%L)', target, "column");
	EXECUTE pg_catalog.format('COMMENT ON TRIGGER dalgo_updated_at ON %s IS %L', target,
							  pg_catalog.format('%s is set on every update (dalgo toolkit)', "column"));
END
$$;
COMMENT ON FUNCTION dalgo.enable_updated_at(regclass, name) IS
	'Attach dalgo.set_updated_at() to a table: the column (timestamptz or timestamp) is set on every update. Idempotent; undo with dalgo.disable_updated_at()';

CREATE FUNCTION dalgo.disable_redaction(tbl regclass, "column" name) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s', 'dalgo_redact_' || "column", dalgo.toolkit_target(tbl));
END
$$;
COMMENT ON FUNCTION dalgo.disable_redaction(regclass, name) IS 'Removes the trigger of dalgo.enable_redaction()';

CREATE FUNCTION dalgo.enable_redaction(tbl regclass, "column" name, keys text[] DEFAULT NULL, pii boolean DEFAULT false)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo.toolkit_target(tbl);
	args text;
BEGIN
	PERFORM dalgo.toolkit_column(tbl, "column", ARRAY['jsonb'::regtype, 'text'::regtype, 'varchar'::regtype]);
	SELECT pg_catalog.string_agg(pg_catalog.quote_literal(a), ', ' ORDER BY o) INTO args
	FROM pg_catalog.unnest(ARRAY["column", CASE WHEN pii THEN 't' ELSE 'f' END]
						   || coalesce(keys, '{}'::text[])) WITH ORDINALITY AS u(a, o)
	WHERE a IS NOT NULL;
	EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER %I BEFORE INSERT OR UPDATE ON %s '
							  'FOR EACH ROW EXECUTE FUNCTION dalgo.redact_trigger(%s)',
							  'dalgo_redact_' || "column", target, args);
	EXECUTE pg_catalog.format('COMMENT ON TRIGGER %I ON %s IS %L', 'dalgo_redact_' || "column", target,
							  pg_catalog.format('%s is redacted before it is stored (dalgo toolkit)', "column"));
END
$$;
COMMENT ON FUNCTION dalgo.enable_redaction(regclass, name, text[], boolean) IS
	'Redact a jsonb or text column before every insert and update, as dalgo.redact_jsonb(value, keys, pii) does (keys NULL: the secret names). Idempotent; undo with dalgo.disable_redaction()';

-- ---------------------------------------------------------------------------
-- Retention
-- ---------------------------------------------------------------------------

CREATE TABLE dalgo.retention_policies (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	table_name regclass NOT NULL UNIQUE,
	time_column name NOT NULL,
	retention_days integer NOT NULL CHECK (retention_days > 0),
	action text NOT NULL DEFAULT 'delete' CHECK (action IN ('delete', 'anonymize')),
	columns text[] CHECK ((action = 'anonymize') = (columns IS NOT NULL AND cardinality(columns) > 0)),
	enabled boolean NOT NULL DEFAULT true,
	last_run_at timestamptz,
	last_rows bigint,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE dalgo.retention_policies IS
	'One retention policy per table: rows whose time_column is older than retention_days are deleted, or have columns set to NULL (anonymize), by dalgo.apply_retention(). Written by superusers through dalgo.set_retention()';
COMMENT ON COLUMN dalgo.retention_policies.id IS 'Primary key';
COMMENT ON COLUMN dalgo.retention_policies.table_name IS 'The table the policy covers (one policy per table)';
COMMENT ON COLUMN dalgo.retention_policies.time_column IS 'The timestamp column that dates a row';
COMMENT ON COLUMN dalgo.retention_policies.retention_days IS 'Rows older than this many days are expired';
COMMENT ON COLUMN dalgo.retention_policies.action IS 'delete, or anonymize (set columns to NULL)';
COMMENT ON COLUMN dalgo.retention_policies.columns IS 'For anonymize: the columns set to NULL';
COMMENT ON COLUMN dalgo.retention_policies.enabled IS 'Disabled policies are kept but not applied';
COMMENT ON COLUMN dalgo.retention_policies.last_run_at IS 'When dalgo.apply_retention() last applied the policy';
COMMENT ON COLUMN dalgo.retention_policies.last_rows IS 'Rows deleted or anonymized by that run';
COMMENT ON COLUMN dalgo.retention_policies.created_at IS 'When the policy was created';
COMMENT ON COLUMN dalgo.retention_policies.updated_at IS 'When the policy was last changed';
ALTER TABLE dalgo.retention_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE dalgo.retention_policies FORCE ROW LEVEL SECURITY;
REVOKE ALL ON dalgo.retention_policies FROM PUBLIC;
CREATE TRIGGER set_updated_at BEFORE UPDATE ON dalgo.retention_policies
	FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at();
-- The audit trail is covered too (through dalgo.purge_audit_logs()).
INSERT INTO dalgo.retention_policies (table_name, time_column, retention_days)
	VALUES ('dalgo.audit_logs', 'created_at', 365);
SELECT dalgo.enable_audit('dalgo.retention_policies', '{}', '');

CREATE FUNCTION dalgo.disable_retention(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM dalgo.retention_policies WHERE table_name OPERATOR(pg_catalog.=) tbl;
END
$$;
COMMENT ON FUNCTION dalgo.disable_retention(regclass) IS 'Removes a table''s retention policy';

CREATE FUNCTION dalgo.set_retention(tbl regclass, time_column name, retention_days integer,
								   action text DEFAULT 'delete', columns text[] DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c text;
BEGIN
	IF tbl OPERATOR(pg_catalog.<>) 'dalgo.audit_logs'::regclass THEN
		PERFORM dalgo.toolkit_target(tbl);
		IF (SELECT relkind FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) tbl) = 'p' THEN
			RAISE EXCEPTION '% is partitioned', tbl USING ERRCODE = 'wrong_object_type',
				HINT = 'Expire the rows of a partitioned table by detaching and dropping its old partitions.';
		END IF;
	ELSIF time_column <> 'created_at' OR action <> 'delete' THEN
		RAISE EXCEPTION 'the audit trail only expires by created_at, with delete' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM dalgo.toolkit_column(tbl, time_column, ARRAY['timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype]);
	IF action IS NULL OR action NOT IN ('delete', 'anonymize') THEN
		RAISE EXCEPTION 'action must be delete or anonymize' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF action = 'anonymize' THEN
		IF columns IS NULL OR pg_catalog.cardinality(columns) = 0 THEN
			RAISE EXCEPTION 'anonymize needs the columns to set to NULL' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		FOREACH c IN ARRAY columns LOOP
			PERFORM dalgo.toolkit_column(tbl, c, NULL);
			IF EXISTS (SELECT FROM pg_catalog.pg_attribute WHERE attrelid OPERATOR(pg_catalog.=) tbl
					   AND attname OPERATOR(pg_catalog.=) c AND attnotnull) THEN
				RAISE EXCEPTION 'column "%" of % is NOT NULL and cannot be anonymized', c, tbl
					USING ERRCODE = 'invalid_parameter_value';
			END IF;
		END LOOP;
	ELSIF columns IS NOT NULL THEN
		RAISE EXCEPTION 'columns are only for anonymize' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	INSERT INTO dalgo.retention_policies AS p (table_name, time_column, retention_days, action, columns)
		VALUES (tbl, time_column, retention_days, action, columns)
		ON CONFLICT (table_name) DO UPDATE
		SET time_column = excluded.time_column, retention_days = excluded.retention_days,
			action = excluded.action, columns = excluded.columns, enabled = true;
	IF tbl OPERATOR(pg_catalog.<>) 'dalgo.audit_logs'::regclass THEN
		PERFORM dalgo.toolkit_ensure_index(tbl, time_column);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.set_retention(regclass, name, integer, text, text[]) IS
	'Add or replace a table''s retention policy: rows whose time_column is older than retention_days are deleted, or (action anonymize) have columns set to NULL, by dalgo.apply_retention(). Superusers (the policies table is theirs)';

CREATE FUNCTION dalgo.apply_retention(batch_size integer DEFAULT 10000, max_batches integer DEFAULT NULL)
	RETURNS TABLE (table_name text, action text, rows_affected bigint, batches integer)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p record;
	target text;
	cutoff timestamptz;
	stmt text;
	n bigint;
BEGIN
	IF batch_size IS NULL OR batch_size < 1 THEN
		RAISE EXCEPTION 'batch_size must be positive' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR p IN SELECT r.*, c.relnamespace, c.relname
			 FROM dalgo.retention_policies r JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.table_name
			 WHERE r.enabled ORDER BY r.table_name::oid
	LOOP
		cutoff := pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(days => p.retention_days);
		table_name := p.table_name::text;
		action := p.action;
		rows_affected := 0;
		batches := 0;
		IF p.table_name OPERATOR(pg_catalog.=) 'dalgo.audit_logs'::regclass THEN
			rows_affected := dalgo.purge_audit_logs(pg_catalog.make_interval(days => p.retention_days));
			batches := 1;
		ELSE
			target := pg_catalog.format('%I.%I', p.relnamespace::regnamespace::text, p.relname);
			IF p.action = 'delete' THEN
				stmt := pg_catalog.format('DELETE FROM ONLY %s WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY('
					'SELECT ctid FROM ONLY %s WHERE %I OPERATOR(pg_catalog.<) $1 LIMIT $2 FOR UPDATE SKIP LOCKED))',
					target, target, p.time_column);
			ELSE
				stmt := pg_catalog.format('UPDATE ONLY %s SET %s WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY('
					'SELECT ctid FROM ONLY %s WHERE %I OPERATOR(pg_catalog.<) $1 AND (%s) LIMIT $2 FOR UPDATE SKIP LOCKED))',
					target,
					(SELECT pg_catalog.string_agg(pg_catalog.format('%I = NULL', c), ', ') FROM pg_catalog.unnest(p.columns) c),
					target, p.time_column,
					(SELECT pg_catalog.string_agg(pg_catalog.format('%I IS NOT NULL', c), ' OR ') FROM pg_catalog.unnest(p.columns) c));
			END IF;
			LOOP
				EXECUTE stmt USING cutoff, batch_size;
				GET DIAGNOSTICS n = ROW_COUNT;
				rows_affected := rows_affected OPERATOR(pg_catalog.+) n;
				batches := batches OPERATOR(pg_catalog.+) 1;
				EXIT WHEN n OPERATOR(pg_catalog.<) batch_size
					OR (max_batches IS NOT NULL AND batches OPERATOR(pg_catalog.>=) max_batches);
			END LOOP;
		END IF;
		UPDATE dalgo.retention_policies r SET last_run_at = pg_catalog.now(), last_rows = rows_affected
			WHERE r.table_name OPERATOR(pg_catalog.=) p.table_name;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo.apply_retention(integer, integer) IS
	'Apply every enabled retention policy, batch_size rows per statement (at most max_batches per table; NULL: until done); returns what it did per table. Superusers and dalgo_service. Run daily with CALL dalgo.run_retention(), which commits between batches';

-- A procedure with SET or SECURITY DEFINER cannot commit: this one has
-- neither, runs with the caller's rights, and names everything qualified.
CREATE PROCEDURE dalgo.run_retention(batch_size integer DEFAULT 10000)
	LANGUAGE plpgsql
AS $$
DECLARE
	n bigint;
BEGIN
	LOOP
		SELECT pg_catalog.sum(r.rows_affected) INTO n FROM dalgo.apply_retention(batch_size, 1) r;
		COMMIT;
		EXIT WHEN n IS NULL OR n OPERATOR(pg_catalog.=) 0;
	END LOOP;
END
$$;
COMMENT ON PROCEDURE dalgo.run_retention(integer) IS
	'Apply every retention policy one batch at a time, committing after each batch, so that no lock is held longer than one batch; run it daily (docs/toolkit.md#retention)';

-- ---------------------------------------------------------------------------
-- Secrets at rest
-- ---------------------------------------------------------------------------
-- A column handed to dalgo.enable_encryption() stores
-- 'dalgo:pgp1:' || base64(pgp_sym_encrypt(value, key)) (as a JSON string in
-- json and jsonb columns), written by a BEFORE trigger; the key lives in the
-- file dalgo_secret.key of the data directory, readable by superusers only,
-- never in the database (so never in a dump).  Readers get plaintext from
-- dalgo.read_secret() (members at the column's read_role) or
-- dalgo.read_secret_service() (dalgo_service).

-- The schema of pgcrypto, which encryption needs.
CREATE FUNCTION dalgo.toolkit_pgcrypto() RETURNS text
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	nsp text;
BEGIN
	SELECT pg_catalog.quote_ident(n.nspname) INTO nsp
	FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
	WHERE e.extname = 'pgcrypto';
	IF nsp IS NULL THEN
		RAISE EXCEPTION 'encryption at rest needs the pgcrypto extension' USING ERRCODE = 'undefined_object',
			HINT = 'CREATE EXTENSION pgcrypto;';
	END IF;
	RETURN nsp;
END
$$;
COMMENT ON FUNCTION dalgo.toolkit_pgcrypto() IS 'Internal: the quoted schema of pgcrypto; raises if it is not installed';

-- The current key, from the data directory.
CREATE FUNCTION dalgo.toolkit_secret_key() RETURNS text
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
BEGIN
	IF k IS NULL OR k = '' THEN
		RAISE EXCEPTION 'no secret key is set' USING ERRCODE = 'object_not_in_prerequisite_state',
			HINT = 'A superuser sets one with SELECT dalgo.rotate_secret_key();';
	END IF;
	RETURN k;
END
$$;
COMMENT ON FUNCTION dalgo.toolkit_secret_key() IS
	'Internal: the encryption key, read from dalgo_secret.key in the data directory';

-- Encrypt one value (already encrypted values are returned as they are).
CREATE FUNCTION dalgo.toolkit_encrypt(plain text, key text) RETURNS text
	LANGUAGE plpgsql VOLATILE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c bytea;
BEGIN
	IF plain IS NULL OR pg_catalog.starts_with(plain, 'dalgo:pgp1:') THEN
		RETURN plain;
	END IF;
	EXECUTE pg_catalog.format('SELECT %s.pgp_sym_encrypt($1, $2, %L)', dalgo.toolkit_pgcrypto(), 'cipher-algo=aes256')
		INTO c USING plain, pg_catalog.split_part(key, E'\n', 1);
	RETURN 'dalgo:pgp1:' || pg_catalog.translate(pg_catalog.encode(c, 'base64'), E'\n', '');
END
$$;
COMMENT ON FUNCTION dalgo.toolkit_encrypt(text, text) IS 'Internal: pgp_sym_encrypt (AES-256) a value into dalgo''s stored form';

-- Decrypt one stored value.
CREATE FUNCTION dalgo.toolkit_decrypt(stored text, key text) RETURNS text
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p text;
	k text;
	q text;
BEGIN
	IF stored IS NULL OR NOT pg_catalog.starts_with(stored, 'dalgo:pgp1:') THEN
		RETURN stored;
	END IF;
	q := pg_catalog.format('SELECT %s.pgp_sym_decrypt($1, $2)', dalgo.toolkit_pgcrypto());
	-- The current key first, then the previous one (see rotate_secret_key).
	FOREACH k IN ARRAY pg_catalog.string_to_array(key, E'\n') LOOP
		BEGIN
			EXECUTE q INTO p USING pg_catalog.decode(pg_catalog.substr(stored, 12), 'base64'), k;
			RETURN p;
		EXCEPTION WHEN external_routine_invocation_exception OR data_exception THEN
			NULL;
		END;
	END LOOP;
	RAISE EXCEPTION 'a stored secret cannot be decrypted with the current or the previous key'
		USING ERRCODE = 'data_corrupted';
END
$$;
COMMENT ON FUNCTION dalgo.toolkit_decrypt(text, text) IS
	'Internal: decrypt a value stored by dalgo.toolkit_encrypt(), with the current key or else the previous one';

-- The stored text of a column value (a JSON string is its content).
CREATE FUNCTION dalgo.toolkit_stored_text(value jsonb, is_json boolean) RETURNS text
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
	RETURN CASE WHEN value IS NULL OR value OPERATOR(pg_catalog.=) 'null'::jsonb THEN NULL
				WHEN NOT is_json OR pg_catalog.jsonb_typeof(value) = 'string' THEN value OPERATOR(pg_catalog.#>>) '{}'::text[]
				ELSE value::text END;
COMMENT ON FUNCTION dalgo.toolkit_stored_text(jsonb, boolean) IS 'Internal: the text that encryption reads from a column value';

CREATE FUNCTION dalgo.encrypt_trigger() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	col text := TG_ARGV[0];
	is_json boolean;
	plain text;
BEGIN
	SELECT a.atttypid IN ('json'::regtype, 'jsonb'::regtype) INTO is_json FROM pg_catalog.pg_attribute a
	WHERE a.attrelid OPERATOR(pg_catalog.=) TG_RELID AND a.attname OPERATOR(pg_catalog.=) col;
	plain := dalgo.toolkit_stored_text(pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.->) col, is_json);
	IF plain IS NULL OR pg_catalog.starts_with(plain, 'dalgo:pgp1:') THEN
		RETURN NEW;
	END IF;
	RETURN pg_catalog.jsonb_populate_record(NEW, pg_catalog.jsonb_build_object(col,
		dalgo.toolkit_encrypt(plain, dalgo.toolkit_secret_key())));
END
$$;
COMMENT ON FUNCTION dalgo.encrypt_trigger() IS
	'BEFORE INSERT OR UPDATE trigger storing a column encrypted (arguments: column, organization column, read role); attach it with dalgo.enable_encryption()';

-- Rewrite a column without the audit trail recording the rewrite: the
-- values do not change, and an audit row would hold the plaintext.
CREATE FUNCTION dalgo.toolkit_rewrite_unaudited(tbl regclass, stmt text, arg1 text DEFAULT NULL, arg2 text DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo.toolkit_target(tbl);
	quiet name[];
	t name;
	n bigint;
BEGIN
	SELECT pg_catalog.array_agg(tgname) INTO quiet FROM pg_catalog.pg_trigger
	WHERE tgrelid OPERATOR(pg_catalog.=) tbl AND tgname IN ('dalgo_audit', 'dalgo_audit_update') AND tgenabled <> 'D';
	FOREACH t IN ARRAY coalesce(quiet, '{}') LOOP
		EXECUTE pg_catalog.format('ALTER TABLE %s DISABLE TRIGGER %I', target, t);
	END LOOP;
	EXECUTE stmt USING arg1, arg2;
	GET DIAGNOSTICS n = ROW_COUNT;
	FOREACH t IN ARRAY coalesce(quiet, '{}') LOOP
		EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE TRIGGER %I', target, t);
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo.toolkit_rewrite_unaudited(regclass, text, text, text) IS
	'Internal: runs an UPDATE that encrypts or decrypts a column in place with the table''s audit triggers off';

CREATE FUNCTION dalgo.enable_encryption(tbl regclass, "column" name, org_column name DEFAULT 'organization_id',
										read_role dalgo.member_role DEFAULT 'admin')
	RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo.toolkit_target(tbl);
BEGIN
	PERFORM dalgo.toolkit_pgcrypto();
	PERFORM dalgo.toolkit_secret_key();
	PERFORM dalgo.toolkit_column(tbl, "column", ARRAY['text'::regtype, 'varchar'::regtype, 'json'::regtype, 'jsonb'::regtype]);
	PERFORM dalgo.toolkit_column(tbl, org_column, ARRAY['uuid'::regtype]);
	IF read_role IS NULL THEN
		RAISE EXCEPTION 'read_role is required' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF (SELECT pg_catalog.count(*) FROM pg_catalog.pg_constraint WHERE conrelid OPERATOR(pg_catalog.=) tbl AND contype = 'p'
		AND pg_catalog.cardinality(conkey) OPERATOR(pg_catalog.=) 1) OPERATOR(pg_catalog.<>) 1 THEN
		RAISE EXCEPTION '% needs a one-column primary key', tbl USING ERRCODE = 'invalid_table_definition';
	END IF;
	EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER %I BEFORE INSERT OR UPDATE ON %s '
							  'FOR EACH ROW EXECUTE FUNCTION dalgo.encrypt_trigger(%L, %L, %L)',
							  'dalgo_encrypt_' || "column", target, "column", org_column, read_role);
	EXECUTE pg_catalog.format('COMMENT ON TRIGGER %I ON %s IS %L', 'dalgo_encrypt_' || "column", target,
							  pg_catalog.format('%s is stored encrypted (dalgo toolkit)', "column"));
	-- Encrypt what is there (the trigger does the work).
	RETURN dalgo.toolkit_rewrite_unaudited(tbl,
		pg_catalog.format('UPDATE %s SET %I = %I WHERE %I IS NOT NULL', target, "column", "column", "column"));
END
$$;
COMMENT ON FUNCTION dalgo.enable_encryption(regclass, name, name, dalgo.member_role) IS
	'Store a text, json or jsonb column encrypted at rest (pgcrypto, AES-256, key in the data directory): existing values are encrypted now, new ones on write. Members at read_role of the row''s organization read it with dalgo.read_secret(), dalgo_service with dalgo.read_secret_service(). Superusers; returns the rows encrypted';

CREATE FUNCTION dalgo.disable_encryption(tbl regclass, "column" name) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo.toolkit_target(tbl);
	is_json boolean;
	coltype text;
	k text := dalgo.toolkit_secret_key();
BEGIN
	EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s', 'dalgo_encrypt_' || "column", target);
	SELECT a.atttypid IN ('json'::regtype, 'jsonb'::regtype), pg_catalog.format_type(a.atttypid, a.atttypmod)
	INTO is_json, coltype FROM pg_catalog.pg_attribute a
	WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) "column";
	RETURN dalgo.toolkit_rewrite_unaudited(tbl,
		pg_catalog.format('UPDATE %s SET %I = dalgo.toolkit_decrypt(dalgo.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1::boolean), $2)::%s '
						  'WHERE pg_catalog.starts_with(dalgo.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1::boolean), ''dalgo:pgp1:'')',
						  target, "column", "column", coltype, "column"), is_json::text, k);
END
$$;
COMMENT ON FUNCTION dalgo.disable_encryption(regclass, name) IS
	'Store a column in plaintext again: drops the trigger of dalgo.enable_encryption() and decrypts the stored values; returns the rows decrypted';

-- Read one encrypted value: the row by its primary key, checked by the caller.
CREATE FUNCTION dalgo.toolkit_read_secret(tbl regclass, "column" name, id text, check_membership boolean) RETURNS text
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	args text[];
	pk name;
	pktype text;
	is_json boolean;
	org uuid;
	stored jsonb;
BEGIN
	-- Only columns a superuser handed to enable_encryption().
	SELECT pg_catalog.string_to_array(pg_catalog.rtrim(pg_catalog.encode(t.tgargs, 'escape'), E'\\000'), E'\\000') INTO args
	FROM pg_catalog.pg_trigger t
	WHERE t.tgrelid OPERATOR(pg_catalog.=) tbl AND t.tgname OPERATOR(pg_catalog.=) ('dalgo_encrypt_' || "column")::name
	  AND t.tgfoid OPERATOR(pg_catalog.=) 'dalgo.encrypt_trigger()'::regprocedure;
	IF args IS NULL OR args[1] OPERATOR(pg_catalog.<>) "column" THEN
		RAISE EXCEPTION 'column "%" of % is not encrypted by dalgo', "column", tbl USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) INTO pk, pktype
	FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_attribute a
		ON a.attrelid OPERATOR(pg_catalog.=) c.conrelid AND a.attnum OPERATOR(pg_catalog.=) c.conkey[1]
	WHERE c.conrelid OPERATOR(pg_catalog.=) tbl AND c.contype = 'p';
	SELECT a.atttypid IN ('json'::regtype, 'jsonb'::regtype) INTO is_json FROM pg_catalog.pg_attribute a
	WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) "column";
	EXECUTE pg_catalog.format('SELECT %I, pg_catalog.to_jsonb(%I) FROM %s WHERE %I OPERATOR(pg_catalog.=) $1::%s',
							  args[2], "column", tbl, pk, pktype)
		INTO org, stored USING id;
	IF check_membership AND NOT coalesce(org OPERATOR(pg_catalog.=) ANY (dalgo.current_org_ids(args[3]::dalgo.member_role)), false) THEN
		RETURN NULL;
	END IF;
	RETURN dalgo.toolkit_decrypt(dalgo.toolkit_stored_text(stored, is_json), dalgo.toolkit_secret_key());
END
$$;
COMMENT ON FUNCTION dalgo.toolkit_read_secret(regclass, name, text, boolean) IS
	'Internal: the plaintext of one encrypted value, by the row''s primary key, with or without the membership check';

CREATE FUNCTION dalgo.read_secret(tbl regclass, "column" name, id text) RETURNS text
	LANGUAGE sql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	RETURN dalgo.toolkit_read_secret(tbl, "column", id, true);
COMMENT ON FUNCTION dalgo.read_secret(regclass, name, text) IS
	'The plaintext of an encrypted column (dalgo.enable_encryption()) of the row whose primary key is id, for members at the column''s read_role of the row''s organization; NULL for anyone else or no such row';

CREATE FUNCTION dalgo.read_secret_service(tbl regclass, "column" name, id text) RETURNS text
	LANGUAGE sql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	RETURN dalgo.toolkit_read_secret(tbl, "column", id, false);
COMMENT ON FUNCTION dalgo.read_secret_service(regclass, name, text) IS
	'The plaintext of an encrypted column of the row whose primary key is id, for dalgo_service (workers that use the credentials)';

CREATE FUNCTION dalgo.rotate_secret_key(new_key text DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	old_key text := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
	k text := new_key;
	t record;
	n bigint;
	total bigint := 0;
BEGIN
	IF k IS NULL THEN
		EXECUTE pg_catalog.format('SELECT pg_catalog.encode(%s.gen_random_bytes(32), ''hex'')', dalgo.toolkit_pgcrypto()) INTO k;
	ELSIF pg_catalog.length(k) OPERATOR(pg_catalog.<) 16 OR k !~ '^[A-Za-z0-9+/=_-]+$' THEN
		RAISE EXCEPTION 'a secret key has at least 16 characters among A-Z, a-z, 0-9, +, /, =, _ and -'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF old_key IS NOT NULL AND old_key <> '' THEN
		old_key := dalgo.toolkit_secret_key();
		FOR t IN SELECT tr.tgrelid::regclass AS tbl, a.attname, a.atttypid IN ('json'::regtype, 'jsonb'::regtype) AS is_json,
					  pg_catalog.format_type(a.atttypid, a.atttypmod) AS coltype
				 FROM pg_catalog.pg_trigger tr
				 JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) tr.tgrelid
					AND a.attname OPERATOR(pg_catalog.=) pg_catalog.split_part(pg_catalog.encode(tr.tgargs, 'escape'), E'\\000', 1)
				 WHERE tr.tgfoid OPERATOR(pg_catalog.=) 'dalgo.encrypt_trigger()'::regprocedure
		LOOP
			EXECUTE pg_catalog.format('UPDATE %s SET %I = %s(dalgo.toolkit_encrypt(dalgo.toolkit_decrypt('
				'dalgo.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1), $2), $3))::%s '
				'WHERE pg_catalog.starts_with(dalgo.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1), ''dalgo:pgp1:'')',
				t.tbl, t.attname, CASE WHEN t.is_json THEN 'pg_catalog.to_jsonb' ELSE '' END, t.attname, t.coltype, t.attname)
				USING t.is_json, old_key, k;
			GET DIAGNOSTICS n = ROW_COUNT;
			total := total OPERATOR(pg_catalog.+) n;
		END LOOP;
	END IF;
	-- The file keeps the previous key after the new one: if this transaction
	-- rolls back after the file is written, the values it re-encrypted are
	-- still readable.  The key never appears in a statement's text (logs,
	-- error contexts).
	PERFORM pg_catalog.set_config('dalgo_toolkit.pending_key',
		k || coalesce(E'\n' || NULLIF(pg_catalog.split_part(old_key, E'\n', 1), ''), ''), true);
	EXECUTE pg_catalog.format('COPY (SELECT pg_catalog.unnest(pg_catalog.string_to_array('
							  'pg_catalog.current_setting(''dalgo_toolkit.pending_key''), E''\n''))) TO %L',
							  pg_catalog.current_setting('data_directory') || '/dalgo_secret.key');
	PERFORM pg_catalog.set_config('dalgo_toolkit.pending_key', '', true);
	RETURN total;
END
$$;
COMMENT ON FUNCTION dalgo.rotate_secret_key(text) IS
	'Set the encryption key (new_key, or 32 random bytes) and re-encrypt every value stored by dalgo.enable_encryption() under it; returns the values re-encrypted. Superusers. The key is the file dalgo_secret.key in the data directory: back it up apart from the database';

-- ---------------------------------------------------------------------------
-- Security report
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.security_report(schema name DEFAULT NULL)
	RETURNS TABLE (table_name text, severity text, problem text, fix text)
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	WITH nsp AS (
		SELECT n.oid, n.nspname FROM pg_catalog.pg_namespace n
		WHERE (security_report.schema IS NULL AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
			   AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%')
		   OR n.nspname OPERATOR(pg_catalog.=) security_report.schema
	), rel AS (
		SELECT c.oid, c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity, c.relacl, c.relispartition,
			   pg_catalog.format('%I.%I', nsp.nspname, c.relname) AS qname
		FROM pg_catalog.pg_class c JOIN nsp ON nsp.oid OPERATOR(pg_catalog.=) c.relnamespace
	), findings AS (
		SELECT r.qname, 'high' AS severity, 'row-level security is not enabled' AS problem,
			   pg_catalog.format('SELECT dalgo.enable_org_rows(%L) (or enable_own_rows, enable_public_read, enable_shared_rows)', r.qname) AS fix
		FROM rel r WHERE r.relkind IN ('r', 'p') AND NOT r.relispartition AND NOT r.relrowsecurity
		UNION ALL
		SELECT r.qname, 'medium', 'row-level security is not forced: the table owner bypasses it',
			   pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', r.qname)
		FROM rel r WHERE r.relkind IN ('r', 'p') AND NOT r.relispartition AND r.relrowsecurity AND NOT r.relforcerowsecurity
		UNION ALL
		SELECT r.qname, 'medium', pg_catalog.format('policy %I %s', pol.polname, prob),
			   'Wrap per-row calls in a scalar subquery, (SELECT f()), so they run once per statement; never call volatile functions in a policy'
		FROM rel r JOIN pg_catalog.pg_policy pol ON pol.polrelid OPERATOR(pg_catalog.=) r.oid
		CROSS JOIN LATERAL pg_catalog.unnest(
			coalesce(dalgo.toolkit_policy_problems(pol.polqual), '{}'::text[])
			OPERATOR(pg_catalog.||) coalesce(dalgo.toolkit_policy_problems(pol.polwithcheck), '{}'::text[])) AS prob
		UNION ALL
		SELECT DISTINCT r.qname, 'medium',
			   pg_catalog.format('column %I is tested by a policy but has no index', a.attname),
			   pg_catalog.format('CREATE INDEX ON %s (%I)', r.qname, a.attname)
		FROM rel r
		JOIN pg_catalog.pg_depend d ON d.refobjid OPERATOR(pg_catalog.=) r.oid
			AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_policy'::pg_catalog.regclass
			AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
			AND d.refobjsubid OPERATOR(pg_catalog.>) 0
		JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) r.oid
			AND a.attnum OPERATOR(pg_catalog.=) d.refobjsubid
		WHERE a.atttypid IN ('uuid'::pg_catalog.regtype, 'int4'::pg_catalog.regtype, 'int8'::pg_catalog.regtype)
		  AND NOT EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid OPERATOR(pg_catalog.=) r.oid
						  AND i.indkey[0] OPERATOR(pg_catalog.=) a.attnum AND i.indpred IS NULL)
		UNION ALL
		SELECT r.qname, 'high',
			   pg_catalog.format('column %I looks like a credential and is stored in plaintext', a.attname),
			   pg_catalog.format('SELECT dalgo.enable_encryption(%L, %L), store only a hash, or SELECT dalgo.enable_redaction(%L, %L)', r.qname, a.attname, r.qname, a.attname)
		FROM rel r JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) r.oid
		WHERE r.relkind IN ('r', 'p', 'f', 'v', 'm') AND NOT r.relispartition AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
		  AND dalgo.is_secret_name(a.attname::text)
		  AND a.attname::text !~* '(hash|digest|encrypted|_enc)$'
		  AND coalesce(pg_catalog.col_description(r.oid, a.attnum) !~ '\[not a secret\]', true)
		  AND a.atttypid NOT IN ('bytea'::pg_catalog.regtype, 'bool'::pg_catalog.regtype)
		  AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid OPERATOR(pg_catalog.=) r.oid
						  AND t.tgname IN (('dalgo_redact_' OPERATOR(pg_catalog.||) a.attname::text)::name,
										   ('dalgo_encrypt_' OPERATOR(pg_catalog.||) a.attname::text)::name))
		UNION ALL
		SELECT r.qname, CASE WHEN acl.privilege_type = 'SELECT' THEN 'medium' ELSE 'high' END,
			   pg_catalog.format('PUBLIC has %s', acl.privilege_type),
			   pg_catalog.format('REVOKE %s ON %s FROM PUBLIC', acl.privilege_type, r.qname)
		FROM rel r CROSS JOIN LATERAL pg_catalog.aclexplode(r.relacl) acl
		WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND acl.grantee OPERATOR(pg_catalog.=) 0
		UNION ALL
		SELECT p.oid::pg_catalog.regprocedure::text, 'high',
			   CASE WHEN NOT coalesce(pg_catalog.array_to_string(p.proconfig, ',') ~ 'search_path=', false)
					THEN 'SECURITY DEFINER function without a fixed search_path'
					ELSE 'SECURITY DEFINER function whose search_path does not list pg_temp (it is searched first)' END,
			   pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', p.oid::pg_catalog.regprocedure)
		FROM pg_catalog.pg_proc p JOIN nsp ON nsp.oid OPERATOR(pg_catalog.=) p.pronamespace
		WHERE p.prosecdef AND NOT EXISTS (SELECT FROM pg_catalog.unnest(p.proconfig) s
										  WHERE s ~ '^search_path=' AND s ~ 'pg_temp')
		UNION ALL
		SELECT p.oid::pg_catalog.regprocedure::text, 'high',
			   'PUBLIC may execute this SECURITY DEFINER function',
			   pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', p.oid::pg_catalog.regprocedure)
		FROM pg_catalog.pg_proc p JOIN nsp ON nsp.oid OPERATOR(pg_catalog.=) p.pronamespace
		CROSS JOIN LATERAL pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) acl
		WHERE p.prosecdef AND acl.grantee OPERATOR(pg_catalog.=) 0
		UNION ALL
		SELECT nsp.nspname::text, 'high', 'PUBLIC may create objects in the schema',
			   pg_catalog.format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', nsp.nspname)
		FROM nsp JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) nsp.oid
		CROSS JOIN LATERAL pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) acl
		WHERE acl.grantee OPERATOR(pg_catalog.=) 0 AND acl.privilege_type = 'CREATE'
	)
	SELECT f.qname, f.severity, f.problem, f.fix FROM findings f
	ORDER BY CASE f.severity WHEN 'high' THEN 0 ELSE 1 END, 1, 3;
END;
COMMENT ON FUNCTION dalgo.security_report(name) IS
	'What is unprotected in a schema (NULL: every schema): tables without row-level security or not forcing it, policies calling volatile or per-row functions, policy columns without an index, SECURITY DEFINER functions without a fixed search_path or executable by PUBLIC, grants to PUBLIC, credentials-looking columns in plaintext (a column whose comment says [not a secret] is not one)';

REVOKE ALL ON FUNCTION
	dalgo.redact_jsonb(jsonb, text[], boolean), dalgo.redact_trigger(), dalgo.toolkit_condition(regclass, text),
	dalgo.toolkit_policy_problems(pg_node_tree), dalgo.is_secret_name(text), dalgo.toolkit_target(regclass),
	dalgo.toolkit_column(regclass, name, regtype[]), dalgo.toolkit_ensure_index(regclass, name),
	dalgo.toolkit_drop_policies(regclass, text), dalgo.toolkit_prepare(regclass, text[], boolean),
	dalgo.toolkit_policy(regclass, name, text, text, text, text, text),
	dalgo.toolkit_org_test(name, dalgo.member_role), dalgo.toolkit_own_test(name),
	dalgo.enable_org_rows(regclass, name, dalgo.member_role, dalgo.member_role, name), dalgo.disable_org_rows(regclass),
	dalgo.enable_own_rows(regclass, name, boolean), dalgo.disable_own_rows(regclass),
	dalgo.enable_public_read(regclass, text), dalgo.disable_public_read(regclass),
	dalgo.enable_shared_rows(regclass, regclass, name, name, name, name, name), dalgo.disable_shared_rows(regclass, regclass),
	dalgo.toolkit_share_guard(), dalgo.enable_child_rows(regclass, regclass, name), dalgo.disable_child_rows(regclass), dalgo.enable_service_only(regclass),
	dalgo.enable_updated_at(regclass, name), dalgo.disable_updated_at(regclass),
	dalgo.enable_redaction(regclass, name, text[], boolean), dalgo.disable_redaction(regclass, name),
	dalgo.set_retention(regclass, name, integer, text, text[]), dalgo.disable_retention(regclass),
	dalgo.apply_retention(integer, integer), dalgo.security_report(name),
	dalgo.toolkit_pgcrypto(), dalgo.toolkit_secret_key(), dalgo.toolkit_encrypt(text, text), dalgo.toolkit_decrypt(text, text),
	dalgo.toolkit_stored_text(jsonb, boolean), dalgo.encrypt_trigger(),
	dalgo.enable_encryption(regclass, name, name, dalgo.member_role), dalgo.disable_encryption(regclass, name),
	dalgo.toolkit_read_secret(regclass, name, text, boolean), dalgo.read_secret(regclass, name, text),
	dalgo.read_secret_service(regclass, name, text), dalgo.rotate_secret_key(text),
	dalgo.toolkit_rewrite_unaudited(regclass, text, text, text)
	FROM PUBLIC;
REVOKE ALL ON PROCEDURE dalgo.run_retention(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.redact_jsonb(jsonb, text[], boolean) TO dalgo_authenticated, dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.apply_retention(integer, integer) TO dalgo_service;
GRANT EXECUTE ON PROCEDURE dalgo.run_retention(integer) TO dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.read_secret(regclass, name, text) TO dalgo_authenticated;
GRANT EXECUTE ON FUNCTION dalgo.read_secret_service(regclass, name, text) TO dalgo_service;

-- lead: a restored retention policy replaces the installed one
-- The install script writes the audit_logs policy above; a restore brings
-- the dumped one back.  While restoring, a dumped policy for a table that
-- already has one replaces it (with its id), instead of failing on the
-- unique key, so a changed audit_logs policy survives pg_dump/pg_restore.
CREATE FUNCTION dalgo.restore_retention_policy() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT dalgo.restoring() THEN
		RETURN NEW;
	END IF;
	UPDATE dalgo.retention_policies p
	SET id = NEW.id, time_column = NEW.time_column, retention_days = NEW.retention_days, action = NEW.action,
		columns = NEW.columns, enabled = NEW.enabled, last_run_at = NEW.last_run_at, last_rows = NEW.last_rows,
		created_at = NEW.created_at, updated_at = NEW.updated_at
	WHERE p.table_name = NEW.table_name;
	IF FOUND THEN
		RETURN NULL;
	END IF;
	RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION dalgo.restore_retention_policy() FROM PUBLIC;
COMMENT ON FUNCTION dalgo.restore_retention_policy() IS
	'Internal: BEFORE INSERT trigger on retention_policies; while restoring a dump, a policy for a table that already has one (the installed audit_logs policy) replaces it';
CREATE TRIGGER restore_retention_policy BEFORE INSERT ON dalgo.retention_policies
	FOR EACH ROW EXECUTE FUNCTION dalgo.restore_retention_policy();
COMMENT ON TRIGGER restore_retention_policy ON dalgo.retention_policies IS
	'A restored policy replaces the one the install script wrote';

-- r1: public API apart from internals (issue 10 item 1).  Every function no
-- application role may execute, and every trigger function, moves to schema
-- dalgo_internal, on which application roles have no USAGE; \df dalgo.*
-- then lists the documented API.  SET SCHEMA keeps each function's oid, so
-- triggers, policies, ACLs and comments follow; the bodies that call a moved
-- function by name are replaced below.
CREATE SCHEMA dalgo_internal;
COMMENT ON SCHEMA dalgo_internal IS 'dalgo: internal functions (triggers, scheduler steps, helpers); no application role may use them';
REVOKE ALL ON SCHEMA dalgo_internal FROM PUBLIC;
ALTER FUNCTION dalgo.account_audit(action text, user_id uuid, organization_id uuid, resource_type text, resource_id uuid, details jsonb) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.act_as(user_id uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.api_key_is_live(id uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.audit_log_guard() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.audit_trigger() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.build_transformation(transformation_id uuid, run_id uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.cap_statement_deadline(seconds bigint) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.check_csv_source() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.check_email(email text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.check_new_password(password text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.check_recipe_sql(organization_id uuid, sql text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.check_run_quota(organization_id uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.check_warehouse_quota(organization_id uuid, replacing text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.check_warehouse_table_name(organization_id uuid, table_name text, source_id uuid, transformation_id uuid, output_id uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.claim_due_schedules(at timestamp with time zone, max_runs integer, only_schedule uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.create_warehouse_for_connection() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.csv_path(organization_id uuid, relative_path text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.drop_output_views(organization_id uuid, table_names text[]) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.email_key(email text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.execute_claimed(claimed_runs uuid[], kinds text[]) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.execute_scheduled_run(run_kind text, run_id uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.expire_connector_runs(timeout_seconds integer) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.expire_stalled_connector_runs(timeout_seconds integer) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.fail_scheduled_run(run_kind text, run_id uuid, message text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.fill_organization_id() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.guard_membership() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.guard_organization() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.guard_organization_quotas() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.guard_superadmin() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.guard_user_liveness() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.issue_session(for_user uuid, in_family uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.live_owner_count(organization_id uuid, except_membership uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.membership_changed() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.new_token(nbytes integer) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.note_failed_sign_in(email_hash bytea, user_id uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.note_token_reuse(unused bytea, family_id uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.organization_quota(organization_id uuid, quota text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.organization_usage(organization_id uuid, OUT quota text, OUT used bigint, OUT quota_limit bigint) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.output_check_table_name() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.output_view_reads(organization_id uuid, view_name text, table_name text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.pending_runs() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.pgcrypto_crypt(password text, salt text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.pgcrypto_gen_salt(kind text, rounds integer) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.pgcrypto_random_bytes(n integer) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.purge_run_history(days integer) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.queue_mail(kind text, recipient text, payload jsonb) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.recover_interrupted_runs() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.redact_sync_run() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.refresh_output(run_id uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.refuse_api_key(what text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.refuse_api_key_organization() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.refuse_tenant_move() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.register_warehouse_table(organization_id uuid, table_name text, source_id uuid, transformation_id uuid, row_count bigint) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.require_read_committed(what text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.restore_output_views(organization_id uuid, dropped jsonb) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.run_autonomously(action text, key bytea, id uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.run_time_quota_hit() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.schedule_before_save() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.set_api_key_identity(key_id uuid, user_id uuid, organization_id uuid, role text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.setting_interval(name text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.sign_access_token(user_id uuid, expires_at timestamp with time zone) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.source_check_table_name() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.source_relation(config jsonb) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.start_scheduled_run(run_kind text, run_id uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.swap_warehouse_table(organization_id uuid, build_name text, table_name text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.sync_source(run_id uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.take_pending_run(OUT run_kind text, OUT run_id uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.token_digest(token text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.transformation_before_save() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.transformation_record_version() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.verify_scheduled_run(run_kind text, run_id uuid) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.wake_launcher() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.wake_scheduler() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.warehouse_execute(organization_id uuid, sql text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.warehouse_query(organization_id uuid, sql text, row_limit integer) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.warehouse_table_claimant(organization_id uuid, table_name text, source_id uuid, transformation_id uuid, output_id uuid) SET SCHEMA dalgo_internal;
-- The bodies that name a moved function, now dalgo_internal.f().
CREATE OR REPLACE FUNCTION dalgo.accept_invitation(token text)
 RETURNS uuid
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	me uuid := dalgo.current_user_id();
	inv record;
	my_email text;
BEGIN
	PERFORM dalgo_internal.refuse_api_key('accepting an invitation');
	IF me IS NULL THEN
		RAISE EXCEPTION 'accepting an invitation needs a signed-in user' USING ERRCODE = 'insufficient_privilege';
	END IF;
	SELECT i.* INTO inv FROM dalgo.invitations i
		WHERE i.token = dalgo_internal.token_digest(accept_invitation.token) FOR UPDATE;
	IF inv.id IS NULL THEN
		RAISE EXCEPTION 'invalid invitation token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	SELECT u.email INTO my_email FROM dalgo.users u WHERE u.id = me AND u.is_active AND u.deleted_at IS NULL;
	IF my_email IS NULL OR lower(my_email) <> lower(inv.email) THEN
		RAISE EXCEPTION 'this invitation was sent to another email address' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF inv.accepted_at IS NOT NULL THEN
		RAISE EXCEPTION 'this invitation has already been accepted' USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	IF inv.revoked_at IS NOT NULL THEN
		RAISE EXCEPTION 'this invitation has been revoked' USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	IF inv.expires_at <= now() THEN
		RAISE EXCEPTION 'this invitation has expired' USING ERRCODE = 'object_not_in_prerequisite_state',
			HINT = 'Ask for a new invitation.';
	END IF;
	IF EXISTS (SELECT FROM dalgo.organization_members m
			   WHERE m.organization_id = inv.organization_id AND m.user_id = me AND m.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'you are already a member of this organization' USING ERRCODE = 'unique_violation';
	END IF;

	-- The member is added by the inviter, under the inviter's current role:
	-- an invitation never grants more than its sender may grant now.
	IF inv.invited_by_id IS NULL THEN
		RAISE EXCEPTION 'the inviter can no longer invite to this organization' USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM dalgo_internal.act_as(inv.invited_by_id);
	IF NOT dalgo.is_org_member(inv.organization_id, CASE WHEN inv.role = 'owner' THEN 'owner' ELSE 'admin' END::dalgo.member_role) THEN
		PERFORM dalgo_internal.act_as(me);
		RAISE EXCEPTION 'the inviter can no longer invite to this organization' USING ERRCODE = 'insufficient_privilege';
	END IF;
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES (inv.organization_id, me, inv.role);
	PERFORM dalgo_internal.act_as(me);

	UPDATE dalgo.invitations i SET accepted_at = now() WHERE i.id = inv.id;
	PERFORM dalgo_internal.account_audit('invitation_accepted', me, inv.organization_id, 'invitation', inv.id,
								jsonb_build_object('role', inv.role));
	RETURN inv.organization_id;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.authenticate_api_key(key text)
 RETURNS uuid
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	k record;
BEGIN
	SELECT a.id, a.organization_id, a.role, a.created_by_id, a.expires_at, a.revoked_at, a.last_used_at INTO k
		FROM dalgo.api_keys a WHERE a.key_hash = dalgo_internal.token_digest(authenticate_api_key.key);
	IF k.id IS NULL OR k.revoked_at IS NOT NULL OR k.expires_at <= now() OR k.created_by_id IS NULL
	   OR NOT dalgo_internal.api_key_is_live(k.id)
	   OR NOT EXISTS (SELECT FROM dalgo.users u WHERE u.id = k.created_by_id AND u.is_active AND u.deleted_at IS NULL)
	   OR NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = k.organization_id AND o.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'invalid API key' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	IF (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute')
	   AND NOT current_setting('transaction_read_only')::boolean THEN
		UPDATE dalgo.api_keys a SET last_used_at = now() WHERE a.id = k.id;
	END IF;
	PERFORM dalgo_internal.set_api_key_identity(k.id, k.created_by_id, k.organization_id, k.role::text);
	RETURN k.organization_id;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.change_password(current_password text, new_password text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	me uuid := dalgo.current_user_id();
	old_hash text;
	hash text;
BEGIN
	PERFORM dalgo_internal.refuse_api_key('changing a password');
	IF me IS NULL THEN
		RAISE EXCEPTION 'changing a password needs a signed-in user' USING ERRCODE = 'insufficient_privilege';
	END IF;
	SELECT u.password_hash INTO old_hash FROM dalgo.users u
		WHERE u.id = me AND u.is_active AND u.deleted_at IS NULL FOR UPDATE;
	IF old_hash IS NULL OR current_password IS NULL
	   OR dalgo_internal.pgcrypto_crypt(current_password, old_hash) IS DISTINCT FROM old_hash THEN
		RAISE EXCEPTION 'invalid password' USING ERRCODE = 'invalid_password';
	END IF;
	hash := dalgo_internal.check_new_password(new_password);
	UPDATE dalgo.users u SET password_hash = hash WHERE u.id = me;
	PERFORM dalgo_internal.account_audit('password_changed', me, NULL, 'user', me);
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.claim_messages(max integer DEFAULT 10)
 RETURNS SETOF dalgo.mail_messages
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
	IF max IS NULL OR max < 1 OR max > 1000 THEN
		RAISE EXCEPTION 'max must be between 1 and 1000' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN QUERY
	UPDATE dalgo.mail_messages m SET state = 'sending', claimed_at = now(), attempts = m.attempts + 1
	WHERE m.id IN (SELECT q.id FROM dalgo.mail_messages q
				   WHERE q.state = 'pending'
					  OR (q.state = 'sending' AND q.claimed_at < now() - dalgo_internal.setting_interval('dalgo.mail_claim_timeout'))
				   ORDER BY q.created_at, q.id LIMIT claim_messages.max
				   FOR UPDATE SKIP LOCKED)
	RETURNING m.*;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.claim_sync_run()
 RETURNS dalgo.sync_runs
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	r dalgo.sync_runs;
	org uuid;
	msg text;
BEGIN
	FOR org IN
		SELECT x.organization_id FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status IN ('pending', 'running') AND dalgo.is_connector_source(s.source_type) AND x.deleted_at IS NULL
		GROUP BY x.organization_id
		HAVING bool_or(x.status = 'pending')
		ORDER BY count(*) FILTER (WHERE x.status = 'running'), min(x.created_at) FILTER (WHERE x.status = 'pending'),
				 x.organization_id
	LOOP
		SELECT x.* INTO r FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status = 'pending' AND x.organization_id = org AND dalgo.is_connector_source(s.source_type)
		  AND x.deleted_at IS NULL
		ORDER BY x.created_at LIMIT 1 FOR UPDATE OF x SKIP LOCKED;
		IF FOUND THEN
			-- A connector run is a run: the organization's quotas apply, as
			-- to in-database runs (a refused run fails with the quota's message).
			BEGIN
				PERFORM dalgo_internal.check_run_quota(org);
			EXCEPTION WHEN configuration_limit_exceeded THEN
				GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
				UPDATE dalgo.sync_runs x SET status = 'failed', completed_at = clock_timestamp(), error_message = msg
				WHERE x.id = r.id;
				CONTINUE;
			END;
			UPDATE dalgo.sync_runs x SET status = 'running', started_at = clock_timestamp() WHERE x.id = r.id RETURNING * INTO r;
			RETURN r;
		END IF;
	END LOOP;
	RETURN NULL;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.create_api_key(organization_id uuid, name text, role dalgo.member_role DEFAULT 'member'::dalgo.member_role, expires_at timestamp with time zone DEFAULT NULL::timestamp with time zone)
 RETURNS text
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	me uuid := dalgo.current_user_id();
	org uuid := create_api_key.organization_id;
	raw text := 'dk_' || dalgo_internal.new_token(32);
	kid uuid;
BEGIN
	PERFORM dalgo_internal.refuse_api_key('creating an API key');
	IF me IS NULL OR org IS NULL OR NOT dalgo.is_org_member(org, 'admin') THEN
		RAISE EXCEPTION 'only admins and owners of the organization can create API keys'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF create_api_key.role IS NULL OR NOT dalgo.is_org_member(org, create_api_key.role) THEN
		RAISE EXCEPTION 'an API key''s role cannot exceed yours' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF create_api_key.expires_at IS NOT NULL AND create_api_key.expires_at <= now() THEN
		RAISE EXCEPTION 'expires_at must be in the future' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	INSERT INTO dalgo.api_keys AS k (organization_id, name, key_prefix, key_hash, role, expires_at, created_by_id)
		VALUES (org, create_api_key.name, left(raw, 11), dalgo_internal.token_digest(raw), create_api_key.role,
				create_api_key.expires_at, me)
		RETURNING k.id INTO kid;
	PERFORM dalgo_internal.account_audit('api_key_created', me, org, 'api_key', kid,
								jsonb_build_object('name', create_api_key.name, 'role', create_api_key.role,
												   'key_prefix', left(raw, 11)));
	RETURN raw;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.enable_audit(tbl regclass, exclude text[] DEFAULT '{}'::text[], organization_column text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	kind "char";
	orgcol text := organization_column;
	c text;
	args text;
BEGIN
	SELECT relkind INTO kind FROM pg_class WHERE oid = tbl;
	IF kind IS NULL OR kind NOT IN ('r', 'p', 'f') THEN
		RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = 'wrong_object_type';
	END IF;
	IF tbl = 'dalgo.audit_logs'::regclass THEN
		RAISE EXCEPTION 'dalgo.audit_logs cannot audit itself' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOREACH c IN ARRAY coalesce(exclude, '{}') LOOP
		IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = c AND attnum > 0 AND NOT attisdropped) THEN
			RAISE EXCEPTION 'column "%" of % does not exist', c, tbl USING ERRCODE = 'undefined_column';
		END IF;
	END LOOP;
	IF orgcol IS NULL THEN
		orgcol := CASE WHEN EXISTS (SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = 'organization_id'
									AND atttypid = 'uuid'::regtype AND NOT attisdropped)
					   THEN 'organization_id' ELSE '' END;
	ELSIF orgcol <> '' AND NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = orgcol
									   AND atttypid = 'uuid'::regtype AND NOT attisdropped) THEN
		RAISE EXCEPTION 'organization column "%" of % does not exist or is not a uuid', orgcol, tbl
			USING ERRCODE = 'undefined_column';
	END IF;

	PERFORM dalgo.disable_audit(tbl);
	SELECT string_agg(quote_literal(a), ', ') INTO args FROM unnest(ARRAY[orgcol] || coalesce(exclude, '{}')) a;
	IF kind = 'f' THEN
		-- Foreign tables cannot have transition tables: audit them row by row.
		EXECUTE format('CREATE TRIGGER dalgo_audit AFTER INSERT OR UPDATE OR DELETE ON %s '
					   'FOR EACH ROW EXECUTE FUNCTION dalgo_internal.audit_trigger(%s)', tbl, args);
	ELSE
		EXECUTE format('CREATE TRIGGER dalgo_audit_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
					   'FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.audit_trigger(%s)', tbl, args);
		EXECUTE format('CREATE TRIGGER dalgo_audit_update AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows '
					   'NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.audit_trigger(%s)', tbl, args);
		EXECUTE format('CREATE TRIGGER dalgo_audit_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
					   'FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.audit_trigger(%s)', tbl, args);
		EXECUTE format('CREATE TRIGGER dalgo_audit_truncate AFTER TRUNCATE ON %s '
					   'FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.audit_trigger(%s)', tbl, args);
	END IF;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.end_all_sessions()
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	me uuid := dalgo.current_user_id();
	n bigint;
BEGIN
	PERFORM dalgo_internal.refuse_api_key('ending sessions');
	IF me IS NULL THEN
		RAISE EXCEPTION 'ending sessions needs a signed-in user' USING ERRCODE = 'insufficient_privilege';
	END IF;
	WITH r AS (UPDATE dalgo.refresh_tokens t SET revoked_at = now()
			   WHERE t.user_id = me AND t.revoked_at IS NULL RETURNING 1)
	SELECT count(*) INTO n FROM r;
	PERFORM dalgo_internal.account_audit('all_sessions_ended', me, NULL, 'user', me, jsonb_build_object('revoked', n));
	RETURN n;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.end_session(refresh_token text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	tok record;
BEGIN
	SELECT t.user_id, t.family_id INTO tok FROM dalgo.refresh_tokens t
		WHERE t.token_hash = dalgo_internal.token_digest(end_session.refresh_token);
	IF tok.family_id IS NULL THEN
		RETURN;
	END IF;
	UPDATE dalgo.refresh_tokens t SET revoked_at = now()
		WHERE t.family_id = tok.family_id AND t.revoked_at IS NULL;
	PERFORM dalgo_internal.account_audit('session_ended', tok.user_id, NULL, 'user', tok.user_id,
								jsonb_build_object('family_id', tok.family_id));
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.invite_member(organization_id uuid, email text, role dalgo.member_role)
 RETURNS uuid
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	me uuid := dalgo.current_user_id();
	org uuid := invite_member.organization_id;
	e text := dalgo_internal.check_email(invite_member.email);
	raw text := dalgo_internal.new_token(32);
	org_name text;
	iid uuid;
BEGIN
	IF me IS NULL OR org IS NULL OR invite_member.role IS NULL OR NOT dalgo.is_org_member(org, 'admin') THEN
		RAISE EXCEPTION 'only admins and owners of the organization can invite'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF invite_member.role = 'owner' AND NOT dalgo.is_org_member(org, 'owner') THEN
		RAISE EXCEPTION 'only an owner can invite an owner' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF EXISTS (SELECT FROM dalgo.organization_members m JOIN dalgo.users u ON u.id = m.user_id
			   WHERE m.organization_id = org AND m.deleted_at IS NULL
				 AND lower(u.email) = lower(e) AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION '% is already a member of this organization', e USING ERRCODE = 'unique_violation';
	END IF;
	SELECT o.name INTO org_name FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL;

	-- Re-inviting a pending email replaces the earlier invitation.
	UPDATE dalgo.mail_messages m SET state = 'cancelled', payload = NULL
		WHERE m.kind = 'invitation' AND m.state = 'pending'
		  AND (m.payload->>'invitation_id')::uuid IN (
			SELECT i.id FROM dalgo.invitations i
			WHERE i.organization_id = org AND lower(i.email) = lower(e)
			  AND i.accepted_at IS NULL AND i.revoked_at IS NULL);
	UPDATE dalgo.invitations i SET revoked_at = now()
		WHERE i.organization_id = org AND lower(i.email) = lower(e) AND i.accepted_at IS NULL AND i.revoked_at IS NULL;

	INSERT INTO dalgo.invitations AS i (email, organization_id, role, token, expires_at, invited_by_id)
		VALUES (e, org, invite_member.role, dalgo_internal.token_digest(raw),
				now() + dalgo_internal.setting_interval('dalgo.invitation_ttl'), me)
		RETURNING i.id INTO iid;
	PERFORM dalgo_internal.queue_mail('invitation', e,
		jsonb_build_object('token', raw, 'invitation_id', iid, 'organization_id', org,
						   'organization_name', org_name, 'role', invite_member.role,
						   'expires_at', now() + dalgo_internal.setting_interval('dalgo.invitation_ttl')));
	PERFORM dalgo_internal.account_audit('invitation_sent', me, org, 'invitation', iid,
								jsonb_build_object('role', invite_member.role));
	RETURN iid;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.preview_recipe(organization_id uuid, recipe jsonb, row_limit integer DEFAULT 50)
 RETURNS SETOF jsonb
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
	IF NOT dalgo.caller_may(organization_id, 'viewer') THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF row_limit IS NULL OR row_limit < 1 OR row_limit > 10000 THEN
		RAISE EXCEPTION 'row_limit must be between 1 and 10000' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM dalgo.warehouse_schema(organization_id);
	RETURN QUERY SELECT * FROM dalgo_internal.warehouse_query(organization_id, dalgo.compile_recipe(organization_id, recipe), row_limit);
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.quota_usage(organization_id uuid, OUT quota text, OUT used bigint, OUT quota_limit bigint)
 RETURNS SETOF record
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
	IF NOT dalgo.caller_may(quota_usage.organization_id, 'viewer') THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', quota_usage.organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN QUERY SELECT * FROM dalgo_internal.organization_usage(quota_usage.organization_id);
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.refresh_session(token text)
 RETURNS TABLE(user_id uuid, access_token text, refresh_token text, expires_at timestamp with time zone)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_variable
DECLARE
	h text := dalgo_internal.token_digest(refresh_session.token);
	tok record;
BEGIN
	PERFORM dalgo_internal.require_read_committed('dalgo.refresh_session');
	SELECT t.id, t.user_id, t.family_id, t.expires_at, t.revoked_at, t.replaced_at INTO tok
		FROM dalgo.refresh_tokens t WHERE t.token_hash = h;
	IF tok.id IS NULL THEN
		RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	IF tok.replaced_at IS NOT NULL THEN
		-- A rotated token came back: stolen-token signal.  The family dies
		-- (in a transaction of its own, so it stays dead) and the call fails.
		PERFORM dalgo_internal.run_autonomously('token_reuse', NULL, tok.family_id);
		RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	-- A refresh of this family in flight: this one loses, without killing the family.
	IF NOT pg_try_advisory_xact_lock(1684826471, hashtext(tok.family_id::text)) THEN
		RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	SELECT t.id, t.user_id, t.family_id, t.expires_at, t.revoked_at, t.replaced_at INTO tok
		FROM dalgo.refresh_tokens t WHERE t.id = tok.id FOR UPDATE;
	IF tok.revoked_at IS NOT NULL OR tok.expires_at <= now()
	   OR NOT EXISTS (SELECT FROM dalgo.users u WHERE u.id = tok.user_id AND u.is_active AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	UPDATE dalgo.refresh_tokens t SET revoked_at = now(), replaced_at = now() WHERE t.id = tok.id;
	RETURN QUERY SELECT * FROM dalgo_internal.issue_session(tok.user_id, tok.family_id);
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.request_password_reset(email text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	usr record;
	raw text;
	rid uuid;
BEGIN
	SELECT u.id, u.email INTO usr FROM dalgo.users u
		WHERE lower(u.email) = lower(btrim(request_password_reset.email)) AND u.deleted_at IS NULL AND u.is_active;
	IF usr.id IS NULL THEN
		RETURN;					-- says nothing about whether the email exists
	END IF;
	-- Only the newest token works.
	UPDATE dalgo.password_reset_tokens t SET used_at = now() WHERE t.user_id = usr.id AND t.used_at IS NULL;
	UPDATE dalgo.mail_messages m SET state = 'cancelled', payload = NULL
		WHERE m.kind = 'password_reset' AND m.state = 'pending' AND m.payload->>'user_id' = usr.id::text;
	raw := dalgo_internal.new_token(32);
	INSERT INTO dalgo.password_reset_tokens AS t (user_id, token_hash, expires_at)
		VALUES (usr.id, dalgo_internal.token_digest(raw), now() + dalgo_internal.setting_interval('dalgo.password_reset_ttl'))
		RETURNING t.id INTO rid;
	PERFORM dalgo_internal.queue_mail('password_reset', usr.email,
		jsonb_build_object('token', raw, 'user_id', usr.id,
						   'expires_at', now() + dalgo_internal.setting_interval('dalgo.password_reset_ttl')));
	PERFORM dalgo_internal.account_audit('password_reset_requested', NULL, NULL, 'user', usr.id);
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.reset_password(token text, new_password text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	hash text := dalgo_internal.check_new_password(reset_password.new_password);
	tok record;
BEGIN
	PERFORM dalgo_internal.require_read_committed('dalgo.reset_password');
	SELECT t.id, t.user_id, t.used_at, t.expires_at INTO tok FROM dalgo.password_reset_tokens t
		WHERE t.token_hash = dalgo_internal.token_digest(reset_password.token) FOR UPDATE;
	IF tok.id IS NULL OR tok.used_at IS NOT NULL OR tok.expires_at <= now()
	   OR NOT EXISTS (SELECT FROM dalgo.users u WHERE u.id = tok.user_id AND u.is_active AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'invalid or expired password reset token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	UPDATE dalgo.password_reset_tokens t SET used_at = now() WHERE t.id = tok.id;
	UPDATE dalgo.users u SET password_hash = hash WHERE u.id = tok.user_id;
	UPDATE dalgo.refresh_tokens t SET revoked_at = now() WHERE t.user_id = tok.user_id AND t.revoked_at IS NULL;
	PERFORM dalgo_internal.account_audit('password_reset', tok.user_id, NULL, 'user', tok.user_id);
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.revoke_api_key(id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	k record;
BEGIN
	SELECT a.id, a.organization_id INTO k FROM dalgo.api_keys a WHERE a.id = revoke_api_key.id FOR UPDATE;
	IF k.id IS NULL OR NOT dalgo.is_org_member(k.organization_id, 'admin') THEN
		RAISE EXCEPTION 'API key not found' USING ERRCODE = 'no_data_found';
	END IF;
	UPDATE dalgo.api_keys a SET revoked_at = now() WHERE a.id = k.id AND a.revoked_at IS NULL;
	IF FOUND THEN
		PERFORM dalgo_internal.account_audit('api_key_revoked', dalgo.current_user_id(), k.organization_id, 'api_key', k.id);
	END IF;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.revoke_invitation(invitation_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	inv record;
BEGIN
	SELECT i.id, i.organization_id INTO inv FROM dalgo.invitations i WHERE i.id = revoke_invitation.invitation_id
		FOR UPDATE;
	IF inv.id IS NULL OR NOT dalgo.is_org_member(inv.organization_id, 'admin') THEN
		RAISE EXCEPTION 'invitation not found' USING ERRCODE = 'no_data_found';
	END IF;
	UPDATE dalgo.invitations i SET revoked_at = now()
		WHERE i.id = inv.id AND i.accepted_at IS NULL AND i.revoked_at IS NULL;
	IF FOUND THEN
		UPDATE dalgo.mail_messages m SET state = 'cancelled', payload = NULL
			WHERE m.kind = 'invitation' AND m.state = 'pending' AND m.payload->>'invitation_id' = inv.id::text;
		PERFORM dalgo_internal.account_audit('invitation_revoked', dalgo.current_user_id(), inv.organization_id,
									'invitation', inv.id);
	END IF;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.run_due_schedules(at timestamp with time zone DEFAULT now())
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	ids uuid[];
	kinds text[];
BEGIN
	IF dalgo.current_user_id() IS NOT NULL OR NOT pg_has_role(session_user, 'dalgo_service', 'MEMBER') THEN
		RAISE EXCEPTION 'run_due_schedules is for dalgo_service and superusers' USING ERRCODE = 'insufficient_privilege';
	END IF;
	SELECT array_agg(c.run_id), array_agg(c.run_kind) INTO ids, kinds FROM dalgo_internal.claim_due_schedules(at, 1000) c;
	PERFORM dalgo_internal.execute_claimed(ids, kinds);
	RETURN (SELECT count(*) FROM unnest(kinds) k WHERE k IN ('s', 'o', 'connector'));
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.run_schedule_now(schedule_id uuid)
 RETURNS uuid
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	s dalgo.schedules;
	c record;
BEGIN
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = run_schedule_now.schedule_id AND x.deleted_at IS NULL;
	IF NOT FOUND OR NOT dalgo.caller_may(s.organization_id, 'admin') THEN
		RAISE EXCEPTION 'schedule % does not exist or you are not an admin of its organization', schedule_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- Make it due now and claim it like the scheduler would (a concurrent claim wins the lock).
	PERFORM FROM dalgo.schedules x WHERE x.id = s.id FOR UPDATE;
	UPDATE dalgo.schedules x SET next_run_at = clock_timestamp(), is_active = true WHERE x.id = s.id;
	SELECT * INTO c FROM dalgo_internal.claim_due_schedules(clock_timestamp(), 1, s.id);
	PERFORM dalgo_internal.execute_claimed(ARRAY[c.run_id], ARRAY[c.run_kind]);
	UPDATE dalgo.schedules x SET is_active = s.is_active,
		next_run_at = CASE WHEN s.is_active THEN dalgo.next_run(s.frequency, s.run_at_time, s.run_at_day, s.timezone, now()) END
	WHERE x.id = s.id;
	RETURN c.run_id;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.run_transformation(transformation_id uuid, with_upstream boolean DEFAULT false)
 RETURNS uuid
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
	PERFORM dalgo_internal.check_run_quota(t.organization_id);
	-- The run_seconds quota caps this call with its upstream (the outermost cap wins).
	PERFORM dalgo_internal.cap_statement_deadline(dalgo_internal.organization_quota(t.organization_id, 'run_seconds'));
	BEGIN
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
											   triggered_by_id, details)
		VALUES (t.organization_id, t.id, t.current_version, 'running', clock_timestamp(), dalgo.current_user_id(),
				jsonb_build_object('runner_pid', pg_backend_pid()))
		RETURNING id INTO run_id;
		PERFORM dalgo_internal.build_transformation(t.id, run_id);
	EXCEPTION WHEN query_canceled THEN
		IF dalgo_internal.run_time_quota_hit() THEN
			RAISE EXCEPTION 'quota run_seconds exceeded: the run with its upstream took more than % seconds',
				dalgo_internal.organization_quota(t.organization_id, 'run_seconds')
				USING ERRCODE = 'configuration_limit_exceeded',
					  HINT = 'Split the work, or ask a superuser to raise the quota.';
		END IF;
		RAISE;
	END;
	RETURN run_id;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.sign_in(email text, password text)
 RETURNS TABLE(user_id uuid, access_token text, refresh_token text, expires_at timestamp with time zone)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_variable
DECLARE
	k bytea := dalgo_internal.email_key(sign_in.email);
	usr record;
	last_success timestamptz;
	failures bigint;
	ok boolean := false;
BEGIN
	PERFORM dalgo_internal.require_read_committed('dalgo.sign_in');
	IF k IS NULL OR sign_in.password IS NULL THEN
		RAISE EXCEPTION 'invalid email or password' USING ERRCODE = 'invalid_password';
	END IF;
	-- One attempt per email at a time, so the count below is exact.
	PERFORM pg_advisory_xact_lock(1684826469, hashtext(encode(k, 'hex')));
	SELECT max(a.created_at) INTO last_success FROM dalgo.sign_in_attempts a
		WHERE a.email_hash = k AND a.succeeded AND a.created_at > now() - dalgo_internal.setting_interval('dalgo.sign_in_lockout');
	SELECT count(*) INTO failures FROM dalgo.sign_in_attempts a
		WHERE a.email_hash = k AND NOT a.succeeded
		  AND a.created_at > greatest(clock_timestamp() - dalgo_internal.setting_interval('dalgo.sign_in_lockout'),
									  coalesce(last_success, '-infinity'));
	IF failures >= current_setting('dalgo.max_failed_sign_ins')::integer THEN
		RAISE EXCEPTION 'too many failed sign-ins for this email; try again later'
			USING ERRCODE = '28L01';
	END IF;

	SELECT u.id, u.password_hash, u.is_active INTO usr
		FROM dalgo.users u WHERE lower(u.email) = lower(btrim(sign_in.email)) AND u.deleted_at IS NULL;
	IF usr.id IS NOT NULL AND usr.password_hash IS NOT NULL THEN
		ok := dalgo_internal.pgcrypto_crypt(sign_in.password, usr.password_hash) = usr.password_hash AND usr.is_active;
	ELSE
		-- An unknown email spends the same bcrypt work as a wrong password.
		PERFORM dalgo_internal.pgcrypto_crypt(sign_in.password,
			dalgo_internal.pgcrypto_gen_salt('bf', current_setting('dalgo.bcrypt_cost')::integer));
	END IF;
	IF ok IS NOT TRUE THEN
		PERFORM dalgo_internal.run_autonomously('failed_sign_in', k, usr.id);
		RAISE EXCEPTION 'invalid email or password' USING ERRCODE = 'invalid_password';
	END IF;

	INSERT INTO dalgo.sign_in_attempts (email_hash, user_id, succeeded) VALUES (k, usr.id, true);
	PERFORM dalgo_internal.account_audit('sign_in', usr.id, NULL, 'user', usr.id);
	RETURN QUERY SELECT * FROM dalgo_internal.issue_session(usr.id, NULL);
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.sign_up(email text, password text, full_name text DEFAULT NULL::text)
 RETURNS uuid
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	e text := dalgo_internal.check_email(sign_up.email);
	hash text := dalgo_internal.check_new_password(sign_up.password);
	uid uuid := gen_random_uuid();
	org uuid;
BEGIN
	IF EXISTS (SELECT FROM dalgo.users u WHERE lower(u.email) = lower(e) AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'an account with this email address already exists'
			USING ERRCODE = 'unique_violation', HINT = 'Sign in, or reset the password.';
	END IF;
	BEGIN
		INSERT INTO dalgo.users (id, email, password_hash, full_name)
			VALUES (uid, e, hash, nullif(btrim(sign_up.full_name), ''));
	EXCEPTION WHEN unique_violation THEN
		RAISE EXCEPTION 'an account with this email address already exists'
			USING ERRCODE = 'unique_violation', HINT = 'Sign in, or reset the password.';
	END;
	INSERT INTO dalgo.organizations (name, slug, org_type)
		VALUES (coalesce(nullif(btrim(sign_up.full_name), ''), e), 'personal-' || replace(uid::text, '-', ''), 'personal')
		RETURNING id INTO org;
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES (org, uid, 'owner');
	PERFORM dalgo_internal.account_audit('sign_up', uid, org, 'user', uid);
	RETURN uid;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.build_transformation(transformation_id uuid, run_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	t dalgo.transformations;
	sql text;
	schema_name text;
	build_name text := '_dalgo_build_' || replace(run_id::text, '-', '');
	n bigint;
	err text;
BEGIN
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = build_transformation.transformation_id;
	UPDATE dalgo.transformation_runs r SET version_number = t.current_version WHERE r.id = run_id;
	BEGIN
		IF t.output_table_name IS NULL THEN
			RAISE EXCEPTION 'transformation % has no output_table_name', t.id USING ERRCODE = 'invalid_parameter_value';
		END IF;
		schema_name := dalgo.warehouse_schema(t.organization_id);
		sql := dalgo.compile_recipe(t.organization_id, t.recipe);
		-- Build under a private name, then swap: readers never see a half-built table,
		-- and a failure leaves the previous output as it was.
		n := dalgo_internal.warehouse_execute(t.organization_id, format('CREATE TABLE %I.%I AS %s', schema_name, build_name, sql));
		PERFORM dalgo_internal.check_warehouse_quota(t.organization_id, t.output_table_name);
		PERFORM dalgo_internal.swap_warehouse_table(t.organization_id, build_name, t.output_table_name);
		PERFORM dalgo_internal.register_warehouse_table(t.organization_id, t.output_table_name, NULL, t.id, n);
		UPDATE dalgo.transformations x SET last_run_at = now() WHERE x.id = t.id;
		UPDATE dalgo.transformation_runs r SET status = 'success', completed_at = clock_timestamp(),
			rows_affected = least(n, 2147483647), executed_sql = sql
		WHERE r.id = run_id;
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS err = MESSAGE_TEXT;
		UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(),
			error_message = err, executed_sql = sql
		WHERE r.id = run_id;
		RAISE WARNING 'transformation run % failed: %', run_id, err;
	END;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.check_csv_source()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
	IF NEW.source_type <> 'csv' OR NEW.deleted_at IS NOT NULL OR NOT coalesce(NEW.config ? 'path', false) THEN
		RETURN NEW;
	END IF;
	IF TG_OP = 'UPDATE' AND OLD.source_type = 'csv' AND OLD.deleted_at IS NULL
	   AND (NEW.organization_id, NEW.config->'path') IS NOT DISTINCT FROM (OLD.organization_id, OLD.config->'path') THEN
		RETURN NEW;
	END IF;
	IF jsonb_typeof(NEW.config->'path') <> 'string' THEN
		RAISE EXCEPTION 'a csv source''s config.path must be a string' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- With csv sources disabled only the form of the path can be checked.
	IF current_setting('dalgo.csv_dir') = '' THEN
		IF NEW.config->>'path' = '' OR NEW.config->>'path' LIKE '/%' OR '..' = ANY (string_to_array(NEW.config->>'path', '/')) THEN
			RAISE EXCEPTION 'csv path "%" must be relative to the organization''s csv directory and must not contain ".."',
				NEW.config->>'path' USING ERRCODE = 'insufficient_privilege';
		END IF;
	ELSE
		PERFORM dalgo_internal.csv_path(NEW.organization_id, NEW.config->>'path');
	END IF;
	RETURN NEW;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.check_new_password(password text)
 RETURNS text
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
	IF password IS NULL OR char_length(password) < current_setting('dalgo.min_password_length')::integer THEN
		RAISE EXCEPTION 'password must be at least % characters long', current_setting('dalgo.min_password_length')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF octet_length(password) > 72 THEN
		RAISE EXCEPTION 'password must be at most 72 bytes long'
			USING ERRCODE = 'invalid_parameter_value', DETAIL = 'bcrypt ignores what follows the 72nd byte.';
	END IF;
	RETURN dalgo_internal.pgcrypto_crypt(password, dalgo_internal.pgcrypto_gen_salt('bf', current_setting('dalgo.bcrypt_cost')::integer));
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.check_recipe_sql(organization_id uuid, sql text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	msg text;
BEGIN
	IF NOT dalgo.caller_may(organization_id, 'member') THEN
		RAISE EXCEPTION 'saving a transformation needs the member role' USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM dalgo.warehouse_schema(organization_id);
	BEGIN
		PERFORM * FROM dalgo_internal.warehouse_query(organization_id, sql, 0);
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
		RAISE EXCEPTION 'recipe does not type-check: %', msg USING ERRCODE = 'invalid_parameter_value';
	END;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.check_run_quota(organization_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	org uuid := check_run_quota.organization_id;
	me text := pg_backend_pid()::text;
	slot bigint := hashtextextended('dalgo run slot ' || org::text, 0);
	gate bigint := hashtextextended('dalgo run gate ' || org::text, 0);
	old_timeout text := current_setting('lock_timeout');
	others text[];
	unseen bigint;
	lim bigint;
	n bigint;
BEGIN
	-- Advisory lock keys are one namespace for every role: a session that
	-- holds this one must not stall the organization's runs for ever.
	BEGIN
		PERFORM set_config('lock_timeout', '10s', true);
		PERFORM pg_advisory_lock(gate);
		PERFORM set_config('lock_timeout', old_timeout, true);
	EXCEPTION WHEN lock_not_available THEN
		RAISE EXCEPTION 'the quota check of organization % is busy', org
			USING ERRCODE = 'lock_not_available',
				  DETAIL = 'Another session held the organization''s run gate for 10 seconds.',
				  HINT = 'Try again.';
	END;
	BEGIN
		-- Other backends executing a run of the organization now.
		others := ARRAY(SELECT DISTINCT l.pid::text FROM pg_locks l
						WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid()
						  AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
						  AND l.classid = ((slot >> 32) & 4294967295)::text::oid
						  AND l.objid = (slot & 4294967295)::text::oid AND l.objsubid = 1);
		-- ... of which this snapshot sees no running row yet.
		unseen := (SELECT count(*) FROM unnest(others) p
				   WHERE NOT EXISTS (SELECT FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.status = 'running'
									 AND r.details->>'runner_pid' = p)
					 AND NOT EXISTS (SELECT FROM dalgo.transformation_runs r WHERE r.organization_id = org
									 AND r.status = 'running' AND r.details->>'runner_pid' = p));
		lim := dalgo_internal.organization_quota(org, 'concurrent_runs');
		IF lim IS NOT NULL THEN
			n := (SELECT count(*) FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.status = 'running'
				  AND r.details->>'runner_pid' IS DISTINCT FROM me)
			   + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.organization_id = org AND r.status = 'running'
				  AND r.details->>'runner_pid' IS DISTINCT FROM me)
			   + unseen;
			IF n >= lim THEN
				RAISE EXCEPTION 'quota concurrent_runs exceeded: % runs of the organization are in progress, the limit is %', n, lim
					USING ERRCODE = 'configuration_limit_exceeded',
						  HINT = 'Wait for a run to finish; a superuser can raise the quota.';
			END IF;
		END IF;
		lim := dalgo_internal.organization_quota(org, 'runs_per_hour');
		IF lim IS NOT NULL THEN
			n := (SELECT count(*) FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.started_at > now() - interval '1 hour'
				  AND NOT r.details ? 'skipped' AND NOT (r.status = 'running' AND r.details->>'runner_pid' = me))
			   + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.organization_id = org
				  AND r.started_at > now() - interval '1 hour' AND NOT r.details ? 'skipped'
				  AND NOT (r.status = 'running' AND r.details->>'runner_pid' = me))
			   + unseen;
			IF n >= lim THEN
				RAISE EXCEPTION 'quota runs_per_hour exceeded: the organization started % runs in the last hour, the limit is %', n, lim
					USING ERRCODE = 'configuration_limit_exceeded',
						  HINT = 'Try again later; a superuser can raise the quota.';
			END IF;
		END IF;
		PERFORM dalgo_internal.check_warehouse_quota(org, NULL);
		PERFORM pg_advisory_xact_lock_shared(slot);
	EXCEPTION WHEN OTHERS OR query_canceled THEN
		PERFORM pg_advisory_unlock(gate);
		RAISE;
	END;
	PERFORM pg_advisory_unlock(gate);
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.check_warehouse_quota(organization_id uuid, replacing text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	org uuid := check_warehouse_quota.organization_id;
	lim bigint := dalgo_internal.organization_quota(org, 'warehouse_bytes');
	ns oid;
	n bigint;
BEGIN
	IF lim IS NULL THEN
		RETURN;
	END IF;
	ns := to_regnamespace('org_' || replace(org::text, '-', ''));
	n := coalesce((SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
				   WHERE c.relnamespace = ns AND c.relkind IN ('r', 'm', 'p')
					 AND c.relname IS DISTINCT FROM replacing), 0);
	IF n > lim OR (replacing IS NULL AND n >= lim) THEN
		RAISE EXCEPTION 'quota warehouse_bytes exceeded: the warehouse % % bytes, the limit is %',
			CASE WHEN replacing IS NULL THEN 'holds' ELSE 'would hold' END, n, lim
			USING ERRCODE = 'configuration_limit_exceeded',
				  HINT = 'Drop tables or outputs the organization no longer needs; a superuser can raise the quota.';
	END IF;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.check_warehouse_table_name(organization_id uuid, table_name text, source_id uuid, transformation_id uuid, output_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	claimant text := dalgo_internal.warehouse_table_claimant(organization_id, table_name, source_id, transformation_id, output_id);
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
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.drop_output_views(organization_id uuid, table_names text[])
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	schema_name text := 'org_' || replace(organization_id::text, '-', '');
	v record;
	dropped jsonb := '[]';
BEGIN
	FOR v IN SELECT DISTINCT coalesce(x.destination_config->>'name', y.output_table_name) AS view_name,
					y.output_table_name AS table_name
			 FROM dalgo.outputs x JOIN dalgo.transformations y ON y.id = x.transformation_id
			 WHERE x.organization_id = drop_output_views.organization_id
			   AND y.organization_id = drop_output_views.organization_id
			   AND x.deleted_at IS NULL AND x.destination_config->>'type' = 'view'
			   AND y.output_table_name = ANY (table_names)
	LOOP
		IF v.view_name <> v.table_name AND dalgo_internal.output_view_reads(organization_id, v.view_name, v.table_name) THEN
			PERFORM dalgo_internal.warehouse_execute(organization_id, format('DROP VIEW %I.%I', schema_name, v.view_name));
			dropped := dropped || jsonb_build_object('view_name', v.view_name, 'table_name', v.table_name);
		END IF;
	END LOOP;
	RETURN dropped;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.execute_claimed(claimed_runs uuid[], kinds text[])
 RETURNS integer
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	msg text;
	n integer := 0;
BEGIN
	FOR i IN 1..coalesce(array_length(claimed_runs, 1), 0) LOOP
		CONTINUE WHEN kinds[i] NOT IN ('s', 'o');
		PERFORM dalgo_internal.start_scheduled_run(kinds[i], claimed_runs[i]);
		BEGIN
			PERFORM dalgo_internal.execute_scheduled_run(kinds[i], claimed_runs[i]);
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
			PERFORM dalgo_internal.fail_scheduled_run(kinds[i], claimed_runs[i], msg);
		END;
		n := n + 1;
	END LOOP;
	RETURN n;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.execute_scheduled_run(run_kind text, run_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	msg text;
BEGIN
	-- A run refused by a quota did not start: it fails with the quota's
	-- message and, like a skipped slot, does not count against runs_per_hour
	-- (else an organization whose schedules ask for more than its quota
	-- would be refused for good, each refusal filling the next hour).
	BEGIN
		PERFORM dalgo_internal.check_run_quota(CASE WHEN run_kind = 's'
			THEN (SELECT r.organization_id FROM dalgo.sync_runs r WHERE r.id = run_id)
			ELSE (SELECT r.organization_id FROM dalgo.transformation_runs r WHERE r.id = run_id) END);
	EXCEPTION WHEN configuration_limit_exceeded THEN
		GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
		IF run_kind = 's' THEN
			UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(), error_message = msg,
				details = r.details || '{"skipped": true, "quota_refused": true}'
			WHERE r.id = run_id;
		ELSE
			UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(), error_message = msg,
				details = r.details || '{"skipped": true, "quota_refused": true}'
			WHERE r.id = run_id;
		END IF;
		RETURN;
	END;
	IF run_kind = 's' THEN
		PERFORM dalgo_internal.sync_source(run_id);
	ELSIF run_kind = 'o' THEN
		PERFORM dalgo_internal.refresh_output(run_id);
	END IF;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.guard_membership()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	me uuid := dalgo.current_user_id();
	org uuid;
	my_role dalgo.member_role;
	old_role dalgo.member_role;
	new_role dalgo.member_role;
	was_live boolean := false;
	is_live boolean := false;
	grants boolean;
	first_owner boolean := false;
BEGIN
	IF TG_OP = 'UPDATE' AND (NEW.organization_id <> OLD.organization_id OR NEW.user_id <> OLD.user_id) THEN
		RAISE EXCEPTION 'a membership cannot be moved to another organization or user'
			USING ERRCODE = 'insufficient_privilege', HINT = 'Remove it and add a new membership.';
	END IF;

	-- The row before and after: a role held while live.
	IF TG_OP = 'DELETE' THEN
		org := OLD.organization_id;
	ELSE
		org := NEW.organization_id;
		new_role := NEW.role;
		is_live := NEW.deleted_at IS NULL;
	END IF;
	IF TG_OP <> 'INSERT' THEN
		old_role := OLD.role;
		was_live := OLD.deleted_at IS NULL;
	END IF;
	-- Does the change hand out a role the row did not give before?  An
	-- insert, a restore (deleted_at back to NULL) and a raise all do.
	grants := is_live AND (NOT was_live OR new_role > old_role);

	-- What the acting user may do (service work without an identity is not limited here).
	IF me IS NOT NULL THEN
		my_role := dalgo.org_role(org);
		-- The first owner of a new organization, which has no live members yet.
		IF TG_OP = 'INSERT' AND new_role = 'owner' AND NEW.user_id = me THEN
			first_owner := NOT EXISTS (SELECT FROM dalgo.organization_members m
									   WHERE m.organization_id = org AND m.deleted_at IS NULL);
		END IF;
		IF NOT first_owner THEN
			-- Nobody raises their own role, also not by restoring an old membership.
			IF grants AND NEW.user_id = me AND (my_role IS NULL OR new_role > my_role) THEN
				RAISE EXCEPTION 'you cannot raise your own role'
					USING ERRCODE = 'insufficient_privilege';
			END IF;
			-- Owner rows are an owner's: adding, granting, revoking, restoring, removing.
			IF my_role IS DISTINCT FROM 'owner' THEN
				IF TG_OP = 'INSERT' AND new_role = 'owner' THEN
					RAISE EXCEPTION 'only an owner can add an owner'
						USING ERRCODE = 'insufficient_privilege';
				ELSIF TG_OP = 'UPDATE' AND (new_role = 'owner' OR old_role = 'owner') AND new_role <> old_role THEN
					RAISE EXCEPTION 'only an owner can grant or revoke the owner role'
						USING ERRCODE = 'insufficient_privilege';
				ELSIF TG_OP = 'UPDATE' AND old_role = 'owner' AND was_live AND NOT is_live THEN
					RAISE EXCEPTION 'only an owner can remove an owner'
						USING ERRCODE = 'insufficient_privilege';
				ELSIF TG_OP = 'UPDATE' AND new_role = 'owner' AND is_live AND NOT was_live THEN
					RAISE EXCEPTION 'only an owner can restore an owner''s membership'
						USING ERRCODE = 'insufficient_privilege',
							  HINT = 'Restoring an owner row grants the owner role.';
				ELSIF TG_OP = 'DELETE' AND old_role = 'owner' THEN
					RAISE EXCEPTION 'only an owner can remove an owner'
						USING ERRCODE = 'insufficient_privilege';
				END IF;
			END IF;
			-- Nobody hands out a role above their own.
			IF grants AND (my_role IS NULL OR new_role > my_role) THEN
				RAISE EXCEPTION 'you cannot grant a role above your own'
					USING ERRCODE = 'insufficient_privilege',
						  DETAIL = pg_catalog.format('Your role is %s; the membership would give %s.',
													 coalesce(my_role::text, 'none'), new_role);
			END IF;
		END IF;
	END IF;

	-- An organization never loses its last owner (whoever acts).
	IF was_live AND old_role = 'owner' AND NOT (is_live AND new_role = 'owner') THEN
		-- Every owner removal locks the organization row, so they run one
		-- at a time; the count then reads the latest committed state, not
		-- this transaction's snapshot, so a removal committed while we
		-- waited is seen under REPEATABLE READ and SERIALIZABLE too.
		-- A deleted organization (its members cascading away) has no row left.
		PERFORM FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL FOR NO KEY UPDATE;
		IF FOUND AND dalgo_internal.live_owner_count(org, OLD.id) = 0 THEN
			RAISE EXCEPTION 'cannot remove the last owner of organization %', org
				USING ERRCODE = 'check_violation',
					  HINT = 'Make another member an owner first, or delete the organization.';
		END IF;
	END IF;

	IF TG_OP = 'DELETE' THEN
		RETURN OLD;
	END IF;
	RETURN NEW;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.guard_user_liveness()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	me uuid := dalgo.current_user_id();
	was_live boolean := OLD.is_active AND OLD.deleted_at IS NULL;
	is_live boolean := NEW.is_active AND NEW.deleted_at IS NULL;
	m record;
BEGIN
	IF was_live = is_live THEN
		RETURN NEW;
	END IF;
	IF me IS NOT NULL AND NOT coalesce((SELECT u.is_superadmin AND u.is_active AND u.deleted_at IS NULL
										 FROM dalgo.users u WHERE u.id = me), false)
	   AND (is_live OR me <> NEW.id) THEN
		RAISE EXCEPTION 'only the user or a superadmin deactivates or deletes an account, and only a superadmin restores one'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF was_live THEN
		FOR m IN SELECT x.id, x.organization_id FROM dalgo.organization_members x
				 WHERE x.user_id = NEW.id AND x.role = 'owner' AND x.deleted_at IS NULL
				 ORDER BY x.organization_id
		LOOP
			-- A personal organization belongs to its one user: it goes with them.
			PERFORM FROM dalgo.organizations o WHERE o.id = m.organization_id AND o.deleted_at IS NULL
				AND o.org_type <> 'personal' FOR NO KEY UPDATE;
			IF FOUND AND dalgo_internal.live_owner_count(m.organization_id, m.id) = 0 THEN
				RAISE EXCEPTION 'cannot deactivate or delete the last owner of organization %', m.organization_id
					USING ERRCODE = 'check_violation',
						  HINT = 'Make another member an owner first, or delete the organization.';
			END IF;
		END LOOP;
	END IF;
	RETURN NEW;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.issue_session(for_user uuid, in_family uuid)
 RETURNS TABLE(user_id uuid, access_token text, refresh_token text, expires_at timestamp with time zone)
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_variable
DECLARE
	uid uuid := issue_session.for_user;
	raw text := dalgo_internal.new_token(32);
	access_expires timestamptz := to_timestamp(floor(extract(epoch FROM now() + dalgo_internal.setting_interval('dalgo.access_token_ttl'))));
BEGIN
	INSERT INTO dalgo.refresh_tokens AS t (user_id, token_hash, expires_at, family_id)
		VALUES (uid, dalgo_internal.token_digest(raw), now() + dalgo_internal.setting_interval('dalgo.refresh_token_ttl'),
				coalesce(issue_session.in_family, gen_random_uuid()));
	RETURN QUERY SELECT uid, dalgo_internal.sign_access_token(uid, access_expires), raw, access_expires;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.note_failed_sign_in(email_hash bytea, user_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
	INSERT INTO dalgo.sign_in_attempts (email_hash, user_id, succeeded)
		VALUES (note_failed_sign_in.email_hash, note_failed_sign_in.user_id, false);
	PERFORM dalgo_internal.account_audit('sign_in_failed', NULL, NULL, 'user', note_failed_sign_in.user_id);
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.note_token_reuse(unused bytea, family_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
 SET lock_timeout TO '10s'
AS $function$
DECLARE
	owner uuid;
	n bigint;
BEGIN
	-- Wait for a refresh of this family in flight, then revoke what it left.
	PERFORM pg_advisory_xact_lock(1684826471, hashtext(note_token_reuse.family_id::text));
	WITH r AS (
		UPDATE dalgo.refresh_tokens t SET revoked_at = now()
		WHERE t.family_id = note_token_reuse.family_id AND t.revoked_at IS NULL
		RETURNING t.user_id)
	SELECT max(r.user_id::text)::uuid, count(*) INTO owner, n FROM r;
	IF owner IS NULL THEN
		SELECT t.user_id INTO owner FROM dalgo.refresh_tokens t WHERE t.family_id = note_token_reuse.family_id LIMIT 1;
	END IF;
	PERFORM dalgo_internal.account_audit('refresh_token_reused', NULL, NULL, 'user', owner,
								jsonb_build_object('family_id', note_token_reuse.family_id, 'revoked', n));
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.organization_usage(organization_id uuid, OUT quota text, OUT used bigint, OUT quota_limit bigint)
 RETURNS SETOF record
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	org uuid := organization_usage.organization_id;
BEGIN
	quota := 'warehouse_bytes';
	used := coalesce((SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
					  WHERE c.relnamespace = to_regnamespace('org_' || replace(org::text, '-', ''))
						AND c.relkind IN ('r', 'm', 'p')), 0);
	quota_limit := dalgo_internal.organization_quota(org, quota);
	RETURN NEXT;
	quota := 'concurrent_runs';
	used := (SELECT count(*) FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.status = 'running')
		  + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.organization_id = org AND r.status = 'running');
	quota_limit := dalgo_internal.organization_quota(org, quota);
	RETURN NEXT;
	quota := 'runs_per_hour';
	used := (SELECT count(*) FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.started_at > now() - interval '1 hour'
			 AND NOT r.details ? 'skipped')
		  + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.organization_id = org
			 AND r.started_at > now() - interval '1 hour' AND NOT r.details ? 'skipped');
	quota_limit := dalgo_internal.organization_quota(org, quota);
	RETURN NEXT;
	quota := 'run_seconds';
	used := NULL;
	quota_limit := dalgo_internal.organization_quota(org, quota);
	RETURN NEXT;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.output_check_table_name()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
	IF NEW.deleted_at IS NULL AND NEW.destination_config ? 'name'
	   AND (TG_OP = 'INSERT' OR NEW.organization_id = OLD.organization_id) THEN
		IF jsonb_typeof(NEW.destination_config->'name') <> 'string' OR NEW.destination_config->>'name' = '' THEN
			RAISE EXCEPTION 'destination_config.name must be a non-empty string' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		-- Publishing the transformation's own table claims nothing of its own.
		IF NEW.destination_config->>'name' IS DISTINCT FROM
		   (SELECT t.output_table_name FROM dalgo.transformations t
			WHERE t.id = NEW.transformation_id AND t.organization_id = NEW.organization_id) THEN
			PERFORM dalgo_internal.check_warehouse_table_name(NEW.organization_id, NEW.destination_config->>'name', NULL,
													 NEW.transformation_id, NEW.id);
		END IF;
	END IF;
	RETURN NEW;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.refresh_output(run_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	r dalgo.transformation_runs;
	o dalgo.outputs;
	t dalgo.transformations;
	v record;
	dropped jsonb;
	schema_name text;
	dest text;
	kind text;
BEGIN
	PERFORM dalgo_internal.verify_scheduled_run('o', run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;
	SELECT * INTO o FROM dalgo.outputs x
	WHERE x.id = (SELECT s.output_id FROM dalgo.schedules s WHERE s.id = (r.details->>'schedule_id')::uuid);
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = o.transformation_id;
	schema_name := 'org_' || replace(o.organization_id::text, '-', '');
	kind := coalesce(o.destination_config->>'type', 'table');
	dest := coalesce(o.destination_config->>'name', t.output_table_name);
	IF kind NOT IN ('table', 'view') THEN
		RAISE EXCEPTION 'unknown destination type "%" (use table or view)', kind USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF kind = 'view' AND dest = t.output_table_name THEN
		RAISE EXCEPTION 'a view destination needs a name other than the transformation''s table "%"', dest
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Set destination_config.name.';
	END IF;
	-- destination_config.name is a member's text: it may name only what this
	-- output makes.  Longer names would be truncated to another table's name.
	IF dest = '' OR octet_length(dest) >= 64 OR dest LIKE '\_dalgo\_%' THEN
		RAISE EXCEPTION 'output destination name "%" is not allowed', dest
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use a name of 1 to 63 bytes that does not start with _dalgo_.';
	END IF;
	IF dest <> t.output_table_name AND to_regclass(format('%I.%I', schema_name, dest)) IS NOT NULL
	   AND NOT (CASE WHEN kind = 'view' THEN dalgo_internal.output_view_reads(o.organization_id, dest, t.output_table_name)
				ELSE EXISTS (SELECT FROM dalgo.warehouse_tables w
							 WHERE w.organization_id = o.organization_id AND w.table_name = dest
							   AND w.deleted_at IS NULL AND w.output_id = o.id) END) THEN
		RAISE EXCEPTION 'output destination "%" exists and was not made by this output', dest
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'An output replaces only a table or view that its own refreshes made.',
				  HINT = 'Set destination_config.name to a new name.';
	END IF;

	-- The tables this refresh swaps: the transformation's and its upstream's.
	dropped := dalgo_internal.drop_output_views(o.organization_id, ARRAY(
		SELECT y.output_table_name FROM dalgo.transformations y
		WHERE y.organization_id = o.organization_id AND y.output_table_name IS NOT NULL
		  AND (y.id = t.id OR y.id IN (SELECT u.id FROM dalgo.transformation_upstream(t.id) u))));

	FOR v IN SELECT u.id FROM dalgo.transformation_upstream(t.id) u LOOP
		PERFORM dalgo.run_transformation(v.id, false);
	END LOOP;
	PERFORM dalgo_internal.build_transformation(t.id, run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;

	-- The views dropped above, again over the (new, or on failure the old) tables.
	PERFORM dalgo_internal.restore_output_views(o.organization_id, dropped);
	IF r.status <> 'success' THEN
		RETURN;
	END IF;
	IF kind = 'view' THEN
		PERFORM dalgo_internal.warehouse_execute(o.organization_id, format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I',
			schema_name, dest, schema_name, t.output_table_name));
	ELSIF dest <> t.output_table_name THEN
		PERFORM dalgo_internal.warehouse_execute(o.organization_id, format('CREATE TABLE %I.%I AS SELECT * FROM %I.%I',
			schema_name, '_dalgo_out_' || replace(run_id::text, '-', ''), schema_name, t.output_table_name));
		PERFORM dalgo_internal.check_warehouse_quota(o.organization_id, dest);
		-- The swap records this output as the table's producer.
		PERFORM dalgo_internal.swap_warehouse_table(o.organization_id, '_dalgo_out_' || replace(run_id::text, '-', ''), dest);
	END IF;
	UPDATE dalgo.outputs x SET last_refreshed_at = now() WHERE x.id = o.id;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.refuse_api_key_organization()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
	-- The check of dalgo_internal.refuse_api_key, inline: this trigger runs
	-- as the writing role, which has no USAGE on dalgo_internal.
	IF dalgo.current_api_key_id() IS NOT NULL THEN
		RAISE EXCEPTION 'creating an organization needs a signed-in user, not an API key'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN NEW;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.restore_output_views(organization_id uuid, dropped jsonb)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	schema_name text := 'org_' || replace(organization_id::text, '-', '');
	v record;
BEGIN
	FOR v IN SELECT * FROM jsonb_to_recordset(dropped) AS d(view_name text, table_name text) LOOP
		IF to_regclass(format('%I.%I', schema_name, v.table_name)) IS NOT NULL THEN
			PERFORM dalgo_internal.warehouse_execute(organization_id, format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I',
				schema_name, v.view_name, schema_name, v.table_name));
		END IF;
	END LOOP;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.source_check_table_name()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
	IF NEW.deleted_at IS NULL AND NEW.warehouse_table_name IS NOT NULL
	   AND (TG_OP = 'INSERT' OR NEW.organization_id = OLD.organization_id) THEN
		PERFORM dalgo_internal.check_warehouse_table_name(NEW.organization_id, NEW.warehouse_table_name, NEW.id, NULL, NULL);
	END IF;
	RETURN NEW;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.swap_warehouse_table(organization_id uuid, build_name text, table_name text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	schema_name text := 'org_' || replace(organization_id::text, '-', '');
	by_source uuid;
	by_transformation uuid;
	by_output uuid;
	context uuid;
	claimant text;
	reg dalgo.warehouse_tables;
	dropped jsonb;
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
	claimant := dalgo_internal.warehouse_table_claimant(organization_id, table_name, by_source, context, by_output);
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
	-- Output views over the table depend on it: drop them around the swap
	-- (in this transaction, so readers never miss them).
	dropped := dalgo_internal.drop_output_views(organization_id, ARRAY[table_name]);
	PERFORM dalgo_internal.warehouse_execute(organization_id, format('DROP TABLE IF EXISTS %I.%I', schema_name, table_name));
	PERFORM dalgo_internal.warehouse_execute(organization_id, format('ALTER TABLE %I.%I RENAME TO %I', schema_name, build_name, table_name));
	PERFORM dalgo_internal.restore_output_views(organization_id, dropped);
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
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.sync_source(run_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	r dalgo.sync_runs;
	src dalgo.sources;
	schema_name text;
	build_name text := '_dalgo_sync_' || replace(run_id::text, '-', '');
	target text;
	n bigint;
	relation text;
	path text;
	header text;
	cols text;
BEGIN
	PERFORM dalgo_internal.verify_scheduled_run('s', run_id);
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.id = run_id;
	SELECT * INTO src FROM dalgo.sources x WHERE x.id = r.source_id AND x.deleted_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'the source of run % no longer exists', run_id;
	END IF;
	schema_name := dalgo.warehouse_schema(src.organization_id);
	target := coalesce(src.warehouse_table_name, 'source_' || left(replace(src.id::text, '-', ''), 12));
	IF src.source_type = 'postgres' THEN
		-- Read as the warehouse role: it sees only what it was granted.
		relation := dalgo_internal.source_relation(src.config);
		n := dalgo_internal.warehouse_execute(src.organization_id,
			format('CREATE TABLE %I.%I AS SELECT * FROM %s', schema_name, build_name, relation));
	ELSIF src.source_type = 'csv' THEN
		path := dalgo_internal.csv_path(src.organization_id, src.config->>'path');
		header := split_part(pg_read_file(path, 0, 65536), E'\n', 1);
		SELECT string_agg(format('%I text', trim(both '"' FROM trim(c))), ', ') INTO cols
		FROM unnest(string_to_array(rtrim(header, E'\r'), ',')) c;
		IF cols IS NULL THEN
			RAISE EXCEPTION 'csv file % has no header line', src.config->>'path' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		PERFORM dalgo_internal.warehouse_execute(src.organization_id, format('CREATE TABLE %I.%I (%s)', schema_name, build_name, cols));
		EXECUTE format('COPY %I.%I FROM %L WITH (FORMAT csv, HEADER true)', schema_name, build_name, path);
		GET DIAGNOSTICS n = ROW_COUNT;
	ELSE
		RAISE EXCEPTION '% sources are synced by a connector', src.source_type;
	END IF;
	PERFORM dalgo_internal.check_warehouse_quota(src.organization_id, target);
	PERFORM dalgo_internal.swap_warehouse_table(src.organization_id, build_name, target);
	PERFORM dalgo_internal.register_warehouse_table(src.organization_id, target, src.id, NULL, n);

	-- source_schemas: columns, types, order and nullability of what was synced.
	DELETE FROM dalgo.source_schemas x WHERE x.source_id = src.id;
	INSERT INTO dalgo.source_schemas (organization_id, source_id, column_name, column_type, column_order, is_nullable)
	SELECT src.organization_id, src.id, a.attname, format_type(a.atttypid, a.atttypmod), a.attnum, NOT a.attnotnull
	FROM pg_attribute a
	WHERE a.attrelid = to_regclass(format('%I.%I', schema_name, target)) AND a.attnum > 0 AND NOT a.attisdropped;
	IF relation IS NOT NULL THEN
		UPDATE dalgo.source_schemas x SET is_nullable = NOT a.attnotnull
		FROM pg_attribute a
		WHERE x.source_id = src.id AND a.attrelid = relation::regclass
		  AND a.attname = x.column_name;
	END IF;

	UPDATE dalgo.sources x SET last_synced_at = now(), warehouse_table_name = target WHERE x.id = src.id;
	UPDATE dalgo.sync_runs x SET status = 'success', completed_at = clock_timestamp(), rows_synced = least(n, 2147483647)
	WHERE x.id = run_id;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.take_pending_run(OUT run_kind text, OUT run_id uuid)
 RETURNS record
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	org uuid;
BEGIN
	FOR org IN
		WITH queued AS (
			SELECT r.organization_id, r.status, r.created_at
			FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
			WHERE r.status IN ('pending', 'running') AND NOT dalgo.is_connector_source(s.source_type)
			  AND r.details ? 'schedule_id'
			UNION ALL
			SELECT r.organization_id, r.status, r.created_at FROM dalgo.transformation_runs r
			WHERE r.status IN ('pending', 'running') AND r.details ? 'schedule_id')
		SELECT q.organization_id FROM queued q
		GROUP BY q.organization_id
		HAVING bool_or(q.status = 'pending')
		ORDER BY count(*) FILTER (WHERE q.status = 'running'), min(q.created_at) FILTER (WHERE q.status = 'pending'),
				 q.organization_id
	LOOP
		SELECT 's', r.id INTO run_kind, run_id FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
		WHERE r.status = 'pending' AND r.organization_id = org AND NOT dalgo.is_connector_source(s.source_type)
		  AND r.details ? 'schedule_id'
		ORDER BY r.created_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED;
		IF NOT FOUND THEN
			SELECT 'o', r.id INTO run_kind, run_id FROM dalgo.transformation_runs r
			WHERE r.status = 'pending' AND r.organization_id = org AND r.details ? 'schedule_id'
			ORDER BY r.created_at LIMIT 1 FOR UPDATE SKIP LOCKED;
		END IF;
		EXIT WHEN run_id IS NOT NULL;
	END LOOP;
	IF run_id IS NOT NULL THEN
		PERFORM dalgo_internal.start_scheduled_run(run_kind, run_id);
	END IF;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.transformation_before_save()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	deps uuid[];
BEGIN
	IF TG_OP = 'INSERT' AND dalgo.restoring() THEN RETURN NEW; END IF;	-- restored as dumped
	-- The output table name is checked on every insert and update, whatever changed
	-- (a move to another organization is refused by the tenant_fixed trigger).
	IF NEW.deleted_at IS NULL AND NEW.output_table_name IS NOT NULL
	   AND (TG_OP = 'INSERT' OR NEW.organization_id = OLD.organization_id) THEN
		PERFORM dalgo_internal.check_warehouse_table_name(NEW.organization_id, NEW.output_table_name, NULL, NEW.id, NULL);
	END IF;
	IF TG_OP = 'UPDATE' AND NEW.recipe IS NOT DISTINCT FROM OLD.recipe THEN
		NEW.current_version := OLD.current_version;
		RETURN NEW;
	END IF;
	PERFORM dalgo_internal.check_recipe_sql(NEW.organization_id, dalgo.compile_recipe(NEW.organization_id, NEW.recipe));
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
$function$
;
COMMENT ON FUNCTION dalgo_internal.run_autonomously(action text, key bytea, id uuid) IS 'Run a recorder (failed_sign_in: dalgo_internal.note_failed_sign_in; token_reuse: dalgo_internal.note_token_reuse) in a background worker''s own, committed transaction, so the record survives the caller''s error (private)';


-- r1: naming pass (issue 10 item 2).  Organization parameters are named
-- organization_id everywhere: is_org_member, is_org_admin and org_role
-- called theirs org.  CREATE OR REPLACE cannot rename a parameter and
-- nothing may drop these functions (the API); they are C functions, whose
-- parameter names only label calls, so the names are set in the catalog.
UPDATE pg_catalog.pg_proc SET proargnames = '{organization_id,min_role}'
	WHERE oid = 'dalgo.is_org_member(uuid, dalgo.member_role)'::pg_catalog.regprocedure;
UPDATE pg_catalog.pg_proc SET proargnames = '{organization_id}'
	WHERE oid IN ('dalgo.is_org_admin(uuid)'::pg_catalog.regprocedure, 'dalgo.org_role(uuid)'::pg_catalog.regprocedure);
-- One verb per concept (claim_pending_run, like claim_due_schedules),
-- ensure_warehouse for what creates a warehouse's role, schema and row, and
-- one scheme for trigger functions: what they do, verb first.
ALTER FUNCTION dalgo.warehouse_schema(organization_id uuid) RENAME TO ensure_warehouse;
ALTER FUNCTION dalgo_internal.take_pending_run(OUT run_kind text, OUT run_id uuid) RENAME TO claim_pending_run;
ALTER FUNCTION dalgo_internal.audit_trigger() RENAME TO audit_change;
ALTER FUNCTION dalgo_internal.audit_log_guard() RENAME TO guard_audit_logs;
ALTER FUNCTION dalgo_internal.membership_changed() RENAME TO invalidate_membership_caches;
ALTER FUNCTION dalgo_internal.transformation_before_save() RENAME TO check_transformation;
ALTER FUNCTION dalgo_internal.transformation_record_version() RENAME TO record_transformation_version;
ALTER FUNCTION dalgo_internal.source_check_table_name() RENAME TO check_source_table_name;
ALTER FUNCTION dalgo_internal.output_check_table_name() RENAME TO check_output_table_name;
ALTER FUNCTION dalgo_internal.schedule_before_save() RENAME TO set_schedule_next_run;
-- The bodies that name a renamed function.
CREATE OR REPLACE FUNCTION dalgo.enable_audit(tbl regclass, exclude text[] DEFAULT '{}'::text[], organization_column text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	kind "char";
	orgcol text := organization_column;
	c text;
	args text;
BEGIN
	SELECT relkind INTO kind FROM pg_class WHERE oid = tbl;
	IF kind IS NULL OR kind NOT IN ('r', 'p', 'f') THEN
		RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = 'wrong_object_type';
	END IF;
	IF tbl = 'dalgo.audit_logs'::regclass THEN
		RAISE EXCEPTION 'dalgo.audit_logs cannot audit itself' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOREACH c IN ARRAY coalesce(exclude, '{}') LOOP
		IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = c AND attnum > 0 AND NOT attisdropped) THEN
			RAISE EXCEPTION 'column "%" of % does not exist', c, tbl USING ERRCODE = 'undefined_column';
		END IF;
	END LOOP;
	IF orgcol IS NULL THEN
		orgcol := CASE WHEN EXISTS (SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = 'organization_id'
									AND atttypid = 'uuid'::regtype AND NOT attisdropped)
					   THEN 'organization_id' ELSE '' END;
	ELSIF orgcol <> '' AND NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = orgcol
									   AND atttypid = 'uuid'::regtype AND NOT attisdropped) THEN
		RAISE EXCEPTION 'organization column "%" of % does not exist or is not a uuid', orgcol, tbl
			USING ERRCODE = 'undefined_column';
	END IF;

	PERFORM dalgo.disable_audit(tbl);
	SELECT string_agg(quote_literal(a), ', ') INTO args FROM unnest(ARRAY[orgcol] || coalesce(exclude, '{}')) a;
	IF kind = 'f' THEN
		-- Foreign tables cannot have transition tables: audit them row by row.
		EXECUTE format('CREATE TRIGGER dalgo_audit AFTER INSERT OR UPDATE OR DELETE ON %s '
					   'FOR EACH ROW EXECUTE FUNCTION dalgo_internal.audit_change(%s)', tbl, args);
	ELSE
		EXECUTE format('CREATE TRIGGER dalgo_audit_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
					   'FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.audit_change(%s)', tbl, args);
		EXECUTE format('CREATE TRIGGER dalgo_audit_update AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows '
					   'NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.audit_change(%s)', tbl, args);
		EXECUTE format('CREATE TRIGGER dalgo_audit_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
					   'FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.audit_change(%s)', tbl, args);
		EXECUTE format('CREATE TRIGGER dalgo_audit_truncate AFTER TRUNCATE ON %s '
					   'FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.audit_change(%s)', tbl, args);
	END IF;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.ensure_warehouse(organization_id uuid)
 RETURNS text
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
	   OR NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = ensure_warehouse.organization_id AND o.deleted_at IS NULL) THEN
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
		SELECT ensure_warehouse.organization_id, current_database(), true, now()
		WHERE NOT EXISTS (SELECT FROM dalgo.warehouse_connections w
						  WHERE w.organization_id = ensure_warehouse.organization_id AND w.deleted_at IS NULL);
	RETURN schema_name;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo.preview_recipe(organization_id uuid, recipe jsonb, row_limit integer DEFAULT 50)
 RETURNS SETOF jsonb
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
	IF NOT dalgo.caller_may(organization_id, 'viewer') THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF row_limit IS NULL OR row_limit < 1 OR row_limit > 10000 THEN
		RAISE EXCEPTION 'row_limit must be between 1 and 10000' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM dalgo.ensure_warehouse(organization_id);
	RETURN QUERY SELECT * FROM dalgo_internal.warehouse_query(organization_id, dalgo.compile_recipe(organization_id, recipe), row_limit);
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.build_transformation(transformation_id uuid, run_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	t dalgo.transformations;
	sql text;
	schema_name text;
	build_name text := '_dalgo_build_' || replace(run_id::text, '-', '');
	n bigint;
	err text;
BEGIN
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = build_transformation.transformation_id;
	UPDATE dalgo.transformation_runs r SET version_number = t.current_version WHERE r.id = run_id;
	BEGIN
		IF t.output_table_name IS NULL THEN
			RAISE EXCEPTION 'transformation % has no output_table_name', t.id USING ERRCODE = 'invalid_parameter_value';
		END IF;
		schema_name := dalgo.ensure_warehouse(t.organization_id);
		sql := dalgo.compile_recipe(t.organization_id, t.recipe);
		-- Build under a private name, then swap: readers never see a half-built table,
		-- and a failure leaves the previous output as it was.
		n := dalgo_internal.warehouse_execute(t.organization_id, format('CREATE TABLE %I.%I AS %s', schema_name, build_name, sql));
		PERFORM dalgo_internal.check_warehouse_quota(t.organization_id, t.output_table_name);
		PERFORM dalgo_internal.swap_warehouse_table(t.organization_id, build_name, t.output_table_name);
		PERFORM dalgo_internal.register_warehouse_table(t.organization_id, t.output_table_name, NULL, t.id, n);
		UPDATE dalgo.transformations x SET last_run_at = now() WHERE x.id = t.id;
		UPDATE dalgo.transformation_runs r SET status = 'success', completed_at = clock_timestamp(),
			rows_affected = least(n, 2147483647), executed_sql = sql
		WHERE r.id = run_id;
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS err = MESSAGE_TEXT;
		UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(),
			error_message = err, executed_sql = sql
		WHERE r.id = run_id;
		RAISE WARNING 'transformation run % failed: %', run_id, err;
	END;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.check_recipe_sql(organization_id uuid, sql text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	msg text;
BEGIN
	IF NOT dalgo.caller_may(organization_id, 'member') THEN
		RAISE EXCEPTION 'saving a transformation needs the member role' USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM dalgo.ensure_warehouse(organization_id);
	BEGIN
		PERFORM * FROM dalgo_internal.warehouse_query(organization_id, sql, 0);
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
		RAISE EXCEPTION 'recipe does not type-check: %', msg USING ERRCODE = 'invalid_parameter_value';
	END;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.create_warehouse_for_connection()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
	IF dalgo.restoring() THEN RETURN NULL; END IF;	-- restored: the schema is in the dump
	PERFORM dalgo.ensure_warehouse(NEW.organization_id);
	RETURN NULL;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.sync_source(run_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	r dalgo.sync_runs;
	src dalgo.sources;
	schema_name text;
	build_name text := '_dalgo_sync_' || replace(run_id::text, '-', '');
	target text;
	n bigint;
	relation text;
	path text;
	header text;
	cols text;
BEGIN
	PERFORM dalgo_internal.verify_scheduled_run('s', run_id);
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.id = run_id;
	SELECT * INTO src FROM dalgo.sources x WHERE x.id = r.source_id AND x.deleted_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'the source of run % no longer exists', run_id;
	END IF;
	schema_name := dalgo.ensure_warehouse(src.organization_id);
	target := coalesce(src.warehouse_table_name, 'source_' || left(replace(src.id::text, '-', ''), 12));
	IF src.source_type = 'postgres' THEN
		-- Read as the warehouse role: it sees only what it was granted.
		relation := dalgo_internal.source_relation(src.config);
		n := dalgo_internal.warehouse_execute(src.organization_id,
			format('CREATE TABLE %I.%I AS SELECT * FROM %s', schema_name, build_name, relation));
	ELSIF src.source_type = 'csv' THEN
		path := dalgo_internal.csv_path(src.organization_id, src.config->>'path');
		header := split_part(pg_read_file(path, 0, 65536), E'\n', 1);
		SELECT string_agg(format('%I text', trim(both '"' FROM trim(c))), ', ') INTO cols
		FROM unnest(string_to_array(rtrim(header, E'\r'), ',')) c;
		IF cols IS NULL THEN
			RAISE EXCEPTION 'csv file % has no header line', src.config->>'path' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		PERFORM dalgo_internal.warehouse_execute(src.organization_id, format('CREATE TABLE %I.%I (%s)', schema_name, build_name, cols));
		EXECUTE format('COPY %I.%I FROM %L WITH (FORMAT csv, HEADER true)', schema_name, build_name, path);
		GET DIAGNOSTICS n = ROW_COUNT;
	ELSE
		RAISE EXCEPTION '% sources are synced by a connector', src.source_type;
	END IF;
	PERFORM dalgo_internal.check_warehouse_quota(src.organization_id, target);
	PERFORM dalgo_internal.swap_warehouse_table(src.organization_id, build_name, target);
	PERFORM dalgo_internal.register_warehouse_table(src.organization_id, target, src.id, NULL, n);

	-- source_schemas: columns, types, order and nullability of what was synced.
	DELETE FROM dalgo.source_schemas x WHERE x.source_id = src.id;
	INSERT INTO dalgo.source_schemas (organization_id, source_id, column_name, column_type, column_order, is_nullable)
	SELECT src.organization_id, src.id, a.attname, format_type(a.atttypid, a.atttypmod), a.attnum, NOT a.attnotnull
	FROM pg_attribute a
	WHERE a.attrelid = to_regclass(format('%I.%I', schema_name, target)) AND a.attnum > 0 AND NOT a.attisdropped;
	IF relation IS NOT NULL THEN
		UPDATE dalgo.source_schemas x SET is_nullable = NOT a.attnotnull
		FROM pg_attribute a
		WHERE x.source_id = src.id AND a.attrelid = relation::regclass
		  AND a.attname = x.column_name;
	END IF;

	UPDATE dalgo.sources x SET last_synced_at = now(), warehouse_table_name = target WHERE x.id = src.id;
	UPDATE dalgo.sync_runs x SET status = 'success', completed_at = clock_timestamp(), rows_synced = least(n, 2147483647)
	WHERE x.id = run_id;
END
$function$
;


-- r1: one home for each rule (issue 10 item 4, SQL side).  The warehouse
-- schema and role names come from one IMMUTABLE function each; a view over
-- the two run tables and one status writer replace the paired IFs on
-- run_kind; the fill_organization_id triggers are made from a list in
-- sql/schema.sql (same triggers, nothing to change here).
-- The one rule that names an organization's warehouse: schema org_<hex>,
-- owned by role dalgo_wh_<hex>, <hex> the organization id without dashes.
CREATE FUNCTION dalgo_internal.warehouse_schema_name(organization_id uuid) RETURNS text
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN 'org_' || replace(organization_id::text, '-', '');
COMMENT ON FUNCTION dalgo_internal.warehouse_schema_name(uuid) IS
	'Internal: the name of an organization''s warehouse schema, org_<id without dashes>';
CREATE FUNCTION dalgo_internal.warehouse_role_name(organization_id uuid) RETURNS text
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN 'dalgo_wh_' || replace(organization_id::text, '-', '');
COMMENT ON FUNCTION dalgo_internal.warehouse_role_name(uuid) IS
	'Internal: the name of the role that owns an organization''s warehouse schema, dalgo_wh_<id without dashes>';
REVOKE ALL ON FUNCTION dalgo_internal.warehouse_schema_name(uuid), dalgo_internal.warehouse_role_name(uuid) FROM PUBLIC;

-- The two run tables seen as one, for the scheduler's steps: run_kind 's'
-- is a sync run (sync_runs), 'o' an output refresh (transformation_runs).
CREATE VIEW dalgo_internal.scheduled_runs AS
	SELECT 's'::text AS run_kind, r.id, r.organization_id, r.source_id, NULL::uuid AS transformation_id, r.details
	FROM dalgo.sync_runs r
	UNION ALL
	SELECT 'o'::text, r.id, r.organization_id, NULL::uuid, r.transformation_id, r.details
	FROM dalgo.transformation_runs r;
COMMENT ON VIEW dalgo_internal.scheduled_runs IS
	'Internal: sync runs (run_kind s) and transformation runs (run_kind o) as one relation, for the scheduler''s steps';

-- The one place that writes a run's state by kind: running (started_at
-- and extra details) or finished (completed_at, error_message, details).
CREATE FUNCTION dalgo_internal.set_scheduled_run_status(run_kind text, run_id uuid, status dalgo.run_status,
														 message text, extra jsonb) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	starting boolean := status = 'running';
BEGIN
	IF run_kind = 's' THEN
		UPDATE dalgo.sync_runs r SET status = set_scheduled_run_status.status,
			started_at = CASE WHEN starting THEN clock_timestamp() ELSE r.started_at END,
			completed_at = CASE WHEN starting THEN r.completed_at ELSE clock_timestamp() END,
			error_message = CASE WHEN starting THEN r.error_message ELSE message END,
			details = r.details || coalesce(extra, '{}')
		WHERE r.id = run_id;
	ELSE
		UPDATE dalgo.transformation_runs r SET status = set_scheduled_run_status.status,
			started_at = CASE WHEN starting THEN clock_timestamp() ELSE r.started_at END,
			completed_at = CASE WHEN starting THEN r.completed_at ELSE clock_timestamp() END,
			error_message = CASE WHEN starting THEN r.error_message ELSE message END,
			details = r.details || coalesce(extra, '{}')
		WHERE r.id = run_id;
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.set_scheduled_run_status(text, uuid, dalgo.run_status, text, jsonb) IS
	'Internal: set a scheduled run''s status in its table (sync_runs for s, transformation_runs for o): running stamps started_at, any other status completed_at and error_message; extra is merged into details';
REVOKE ALL ON FUNCTION dalgo_internal.set_scheduled_run_status(text, uuid, dalgo.run_status, text, jsonb) FROM PUBLIC;

-- The bodies that now use them.
CREATE OR REPLACE FUNCTION dalgo.ensure_warehouse(organization_id uuid)
 RETURNS text
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	role_name text := dalgo_internal.warehouse_role_name(organization_id);
	r pg_roles;
	problem text;
BEGIN
	IF organization_id IS NULL THEN
		RAISE EXCEPTION 'organization_id is required' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT dalgo.caller_may(organization_id, 'viewer')
	   OR NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = ensure_warehouse.organization_id AND o.deleted_at IS NULL) THEN
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
		SELECT ensure_warehouse.organization_id, current_database(), true, now()
		WHERE NOT EXISTS (SELECT FROM dalgo.warehouse_connections w
						  WHERE w.organization_id = ensure_warehouse.organization_id AND w.deleted_at IS NULL);
	RETURN schema_name;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.check_warehouse_quota(organization_id uuid, replacing text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	org uuid := check_warehouse_quota.organization_id;
	lim bigint := dalgo_internal.organization_quota(org, 'warehouse_bytes');
	ns oid;
	n bigint;
BEGIN
	IF lim IS NULL THEN
		RETURN;
	END IF;
	ns := to_regnamespace(dalgo_internal.warehouse_schema_name(org));
	n := coalesce((SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
				   WHERE c.relnamespace = ns AND c.relkind IN ('r', 'm', 'p')
					 AND c.relname IS DISTINCT FROM replacing), 0);
	IF n > lim OR (replacing IS NULL AND n >= lim) THEN
		RAISE EXCEPTION 'quota warehouse_bytes exceeded: the warehouse % % bytes, the limit is %',
			CASE WHEN replacing IS NULL THEN 'holds' ELSE 'would hold' END, n, lim
			USING ERRCODE = 'configuration_limit_exceeded',
				  HINT = 'Drop tables or outputs the organization no longer needs; a superuser can raise the quota.';
	END IF;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.drop_output_views(organization_id uuid, table_names text[])
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	v record;
	dropped jsonb := '[]';
BEGIN
	FOR v IN SELECT DISTINCT coalesce(x.destination_config->>'name', y.output_table_name) AS view_name,
					y.output_table_name AS table_name
			 FROM dalgo.outputs x JOIN dalgo.transformations y ON y.id = x.transformation_id
			 WHERE x.organization_id = drop_output_views.organization_id
			   AND y.organization_id = drop_output_views.organization_id
			   AND x.deleted_at IS NULL AND x.destination_config->>'type' = 'view'
			   AND y.output_table_name = ANY (table_names)
	LOOP
		IF v.view_name <> v.table_name AND dalgo_internal.output_view_reads(organization_id, v.view_name, v.table_name) THEN
			PERFORM dalgo_internal.warehouse_execute(organization_id, format('DROP VIEW %I.%I', schema_name, v.view_name));
			dropped := dropped || jsonb_build_object('view_name', v.view_name, 'table_name', v.table_name);
		END IF;
	END LOOP;
	RETURN dropped;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.execute_scheduled_run(run_kind text, run_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	msg text;
BEGIN
	-- A run refused by a quota did not start: it fails with the quota's
	-- message and, like a skipped slot, does not count against runs_per_hour
	-- (else an organization whose schedules ask for more than its quota
	-- would be refused for good, each refusal filling the next hour).
	BEGIN
		PERFORM dalgo_internal.check_run_quota((SELECT r.organization_id FROM dalgo_internal.scheduled_runs r
												WHERE r.run_kind = execute_scheduled_run.run_kind AND r.id = run_id));
	EXCEPTION WHEN configuration_limit_exceeded THEN
		GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
		PERFORM dalgo_internal.set_scheduled_run_status(run_kind, run_id, 'failed', msg,
														 '{"skipped": true, "quota_refused": true}');
		RETURN;
	END;
	IF run_kind = 's' THEN
		PERFORM dalgo_internal.sync_source(run_id);
	ELSIF run_kind = 'o' THEN
		PERFORM dalgo_internal.refresh_output(run_id);
	END IF;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.fail_scheduled_run(run_kind text, run_id uuid, message text)
 RETURNS void
 LANGUAGE sql
 SET search_path TO 'pg_catalog', 'pg_temp'
BEGIN ATOMIC
 SELECT dalgo_internal.set_scheduled_run_status(run_kind, run_id, 'failed'::dalgo.run_status, message, NULL::jsonb) AS set_scheduled_run_status;
END
;

CREATE OR REPLACE FUNCTION dalgo_internal.organization_usage(organization_id uuid, OUT quota text, OUT used bigint, OUT quota_limit bigint)
 RETURNS SETOF record
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	org uuid := organization_usage.organization_id;
BEGIN
	quota := 'warehouse_bytes';
	used := coalesce((SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
					  WHERE c.relnamespace = to_regnamespace(dalgo_internal.warehouse_schema_name(org))
						AND c.relkind IN ('r', 'm', 'p')), 0);
	quota_limit := dalgo_internal.organization_quota(org, quota);
	RETURN NEXT;
	quota := 'concurrent_runs';
	used := (SELECT count(*) FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.status = 'running')
		  + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.organization_id = org AND r.status = 'running');
	quota_limit := dalgo_internal.organization_quota(org, quota);
	RETURN NEXT;
	quota := 'runs_per_hour';
	used := (SELECT count(*) FROM dalgo.sync_runs r WHERE r.organization_id = org AND r.started_at > now() - interval '1 hour'
			 AND NOT r.details ? 'skipped')
		  + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.organization_id = org
			 AND r.started_at > now() - interval '1 hour' AND NOT r.details ? 'skipped');
	quota_limit := dalgo_internal.organization_quota(org, quota);
	RETURN NEXT;
	quota := 'run_seconds';
	used := NULL;
	quota_limit := dalgo_internal.organization_quota(org, quota);
	RETURN NEXT;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.output_view_reads(organization_id uuid, view_name text, table_name text)
 RETURNS boolean
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
	SELECT coalesce((
		SELECT c.relkind = 'v' AND tbl IS NOT NULL
			AND bool_and(d.refobjid = tbl) AND bool_or(d.refobjid = tbl)
		FROM pg_class c
		JOIN pg_rewrite rw ON rw.ev_class = c.oid
		LEFT JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
			AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> c.oid,
		LATERAL (SELECT to_regclass(format('%I.%I', dalgo_internal.warehouse_schema_name(output_view_reads.organization_id),
										   output_view_reads.table_name))::oid AS tbl) x
		WHERE c.oid = to_regclass(format('%I.%I', dalgo_internal.warehouse_schema_name(output_view_reads.organization_id),
										 output_view_reads.view_name))
		GROUP BY c.relkind, tbl), false)
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.refresh_output(run_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	r dalgo.transformation_runs;
	o dalgo.outputs;
	t dalgo.transformations;
	v record;
	dropped jsonb;
	schema_name text;
	dest text;
	kind text;
BEGIN
	PERFORM dalgo_internal.verify_scheduled_run('o', run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;
	SELECT * INTO o FROM dalgo.outputs x
	WHERE x.id = (SELECT s.output_id FROM dalgo.schedules s WHERE s.id = (r.details->>'schedule_id')::uuid);
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = o.transformation_id;
	schema_name := dalgo_internal.warehouse_schema_name(o.organization_id);
	kind := coalesce(o.destination_config->>'type', 'table');
	dest := coalesce(o.destination_config->>'name', t.output_table_name);
	IF kind NOT IN ('table', 'view') THEN
		RAISE EXCEPTION 'unknown destination type "%" (use table or view)', kind USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF kind = 'view' AND dest = t.output_table_name THEN
		RAISE EXCEPTION 'a view destination needs a name other than the transformation''s table "%"', dest
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Set destination_config.name.';
	END IF;
	-- destination_config.name is a member's text: it may name only what this
	-- output makes.  Longer names would be truncated to another table's name.
	IF dest = '' OR octet_length(dest) >= 64 OR dest LIKE '\_dalgo\_%' THEN
		RAISE EXCEPTION 'output destination name "%" is not allowed', dest
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use a name of 1 to 63 bytes that does not start with _dalgo_.';
	END IF;
	IF dest <> t.output_table_name AND to_regclass(format('%I.%I', schema_name, dest)) IS NOT NULL
	   AND NOT (CASE WHEN kind = 'view' THEN dalgo_internal.output_view_reads(o.organization_id, dest, t.output_table_name)
				ELSE EXISTS (SELECT FROM dalgo.warehouse_tables w
							 WHERE w.organization_id = o.organization_id AND w.table_name = dest
							   AND w.deleted_at IS NULL AND w.output_id = o.id) END) THEN
		RAISE EXCEPTION 'output destination "%" exists and was not made by this output', dest
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'An output replaces only a table or view that its own refreshes made.',
				  HINT = 'Set destination_config.name to a new name.';
	END IF;

	-- The tables this refresh swaps: the transformation's and its upstream's.
	dropped := dalgo_internal.drop_output_views(o.organization_id, ARRAY(
		SELECT y.output_table_name FROM dalgo.transformations y
		WHERE y.organization_id = o.organization_id AND y.output_table_name IS NOT NULL
		  AND (y.id = t.id OR y.id IN (SELECT u.id FROM dalgo.transformation_upstream(t.id) u))));

	FOR v IN SELECT u.id FROM dalgo.transformation_upstream(t.id) u LOOP
		PERFORM dalgo.run_transformation(v.id, false);
	END LOOP;
	PERFORM dalgo_internal.build_transformation(t.id, run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;

	-- The views dropped above, again over the (new, or on failure the old) tables.
	PERFORM dalgo_internal.restore_output_views(o.organization_id, dropped);
	IF r.status <> 'success' THEN
		RETURN;
	END IF;
	IF kind = 'view' THEN
		PERFORM dalgo_internal.warehouse_execute(o.organization_id, format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I',
			schema_name, dest, schema_name, t.output_table_name));
	ELSIF dest <> t.output_table_name THEN
		PERFORM dalgo_internal.warehouse_execute(o.organization_id, format('CREATE TABLE %I.%I AS SELECT * FROM %I.%I',
			schema_name, '_dalgo_out_' || replace(run_id::text, '-', ''), schema_name, t.output_table_name));
		PERFORM dalgo_internal.check_warehouse_quota(o.organization_id, dest);
		-- The swap records this output as the table's producer.
		PERFORM dalgo_internal.swap_warehouse_table(o.organization_id, '_dalgo_out_' || replace(run_id::text, '-', ''), dest);
	END IF;
	UPDATE dalgo.outputs x SET last_refreshed_at = now() WHERE x.id = o.id;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.register_warehouse_table(organization_id uuid, table_name text, source_id uuid, transformation_id uuid, row_count bigint)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	rel regclass := to_regclass(format('%I.%I', schema_name, table_name));
	conn uuid;
	info jsonb;
BEGIN
	SELECT id INTO conn FROM dalgo.warehouse_connections w
	WHERE w.organization_id = register_warehouse_table.organization_id AND w.deleted_at IS NULL;
	SELECT coalesce(jsonb_agg(jsonb_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
												 'nullable', NOT a.attnotnull) ORDER BY a.attnum), '[]')
	INTO info FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped;
	UPDATE dalgo.warehouse_tables w SET row_count = register_warehouse_table.row_count,
		size_bytes = pg_total_relation_size(rel), schema_info = info, last_updated_at = now(),
		source_id = register_warehouse_table.source_id, transformation_id = register_warehouse_table.transformation_id
	WHERE w.warehouse_connection_id = conn AND w.table_name = register_warehouse_table.table_name AND w.deleted_at IS NULL;
	IF NOT FOUND THEN
		INSERT INTO dalgo.warehouse_tables (organization_id, warehouse_connection_id, table_name, source_id,
											transformation_id, row_count, size_bytes, schema_info, last_updated_at)
		VALUES (register_warehouse_table.organization_id, conn, register_warehouse_table.table_name,
				register_warehouse_table.source_id, register_warehouse_table.transformation_id,
				register_warehouse_table.row_count, pg_total_relation_size(rel), info, now());
	END IF;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.restore_output_views(organization_id uuid, dropped jsonb)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	v record;
BEGIN
	FOR v IN SELECT * FROM jsonb_to_recordset(dropped) AS d(view_name text, table_name text) LOOP
		IF to_regclass(format('%I.%I', schema_name, v.table_name)) IS NOT NULL THEN
			PERFORM dalgo_internal.warehouse_execute(organization_id, format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I',
				schema_name, v.view_name, schema_name, v.table_name));
		END IF;
	END LOOP;
END
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.start_scheduled_run(run_kind text, run_id uuid)
 RETURNS void
 LANGUAGE sql
 SET search_path TO 'pg_catalog', 'pg_temp'
BEGIN ATOMIC
 SELECT dalgo_internal.set_scheduled_run_status(run_kind, run_id, 'running'::dalgo.run_status, NULL::text, jsonb_build_object('runner_pid', pg_backend_pid())) AS set_scheduled_run_status;
END
;

CREATE OR REPLACE FUNCTION dalgo_internal.swap_warehouse_table(organization_id uuid, build_name text, table_name text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	by_source uuid;
	by_transformation uuid;
	by_output uuid;
	context uuid;
	claimant text;
	reg dalgo.warehouse_tables;
	dropped jsonb;
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
	claimant := dalgo_internal.warehouse_table_claimant(organization_id, table_name, by_source, context, by_output);
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
	-- Output views over the table depend on it: drop them around the swap
	-- (in this transaction, so readers never miss them).
	dropped := dalgo_internal.drop_output_views(organization_id, ARRAY[table_name]);
	PERFORM dalgo_internal.warehouse_execute(organization_id, format('DROP TABLE IF EXISTS %I.%I', schema_name, table_name));
	PERFORM dalgo_internal.warehouse_execute(organization_id, format('ALTER TABLE %I.%I RENAME TO %I', schema_name, build_name, table_name));
	PERFORM dalgo_internal.restore_output_views(organization_id, dropped);
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
$function$
;

CREATE OR REPLACE FUNCTION dalgo_internal.verify_scheduled_run(run_kind text, run_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
	det jsonb;
	run_org uuid;
	run_source uuid;
	run_transformation uuid;
	sid uuid;
	s dalgo.schedules;
	agree boolean := false;
BEGIN
	SELECT r.details, r.organization_id, r.source_id, r.transformation_id
	INTO det, run_org, run_source, run_transformation
	FROM dalgo_internal.scheduled_runs r WHERE r.run_kind = verify_scheduled_run.run_kind AND r.id = run_id;
	BEGIN
		sid := (det->>'schedule_id')::uuid;
	EXCEPTION WHEN invalid_text_representation THEN
		sid := NULL;
	END;
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = sid;
	IF FOUND AND s.organization_id = run_org THEN
		IF run_kind = 's' THEN
			agree := s.source_id = run_source
				AND EXISTS (SELECT FROM dalgo.sources x WHERE x.id = run_source AND x.organization_id = run_org);
		ELSE
			agree := EXISTS (SELECT FROM dalgo.outputs o JOIN dalgo.transformations t ON t.id = o.transformation_id
							 WHERE o.id = s.output_id AND o.organization_id = run_org AND t.organization_id = run_org
							   AND t.id = run_transformation);
		END IF;
	END IF;
	IF NOT coalesce(agree, false) THEN
		RAISE EXCEPTION 'run % was refused: it does not match its schedule', run_id
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'A scheduled run must name the schedule that created it, and schedule, source or output, transformation and run must belong to one organization.';
	END IF;
END
$function$
;


-- lead: the toolkit's helpers and trigger functions move to dalgo_internal (issue 10 item 1)
ALTER FUNCTION dalgo.redact_trigger() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_condition(regclass, text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_policy_problems(pg_node_tree) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.is_secret_name(text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_target(regclass) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_column(regclass, name, regtype[]) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_ensure_index(regclass, name) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_drop_policies(regclass, text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_prepare(regclass, text[], boolean) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_policy(regclass, name, text, text, text, text, text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_org_test(name, dalgo.member_role) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_own_test(name) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_share_guard() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo_internal.toolkit_share_guard() RENAME TO guard_shares;
ALTER FUNCTION dalgo.restore_retention_policy() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo_internal.restore_retention_policy() RENAME TO record_restored_retention_policy;
ALTER FUNCTION dalgo.toolkit_pgcrypto() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_secret_key() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_encrypt(text, text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_decrypt(text, text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_stored_text(jsonb, boolean) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.encrypt_trigger() SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo_internal.encrypt_trigger() RENAME TO set_encrypted_column;
ALTER FUNCTION dalgo.toolkit_rewrite_unaudited(regclass, text, text, text) SET SCHEMA dalgo_internal;
ALTER FUNCTION dalgo.toolkit_read_secret(regclass, name, text, boolean) SET SCHEMA dalgo_internal;

CREATE OR REPLACE FUNCTION dalgo.apply_retention(batch_size integer DEFAULT 10000, max_batches integer DEFAULT NULL)
	RETURNS TABLE (table_name text, action text, rows_affected bigint, batches integer)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p record;
	target text;
	cutoff timestamptz;
	stmt text;
	n bigint;
BEGIN
	IF batch_size IS NULL OR batch_size < 1 THEN
		RAISE EXCEPTION 'batch_size must be positive' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR p IN SELECT r.*, c.relnamespace, c.relname
			 FROM dalgo.retention_policies r JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.table_name
			 WHERE r.enabled ORDER BY r.table_name::oid
	LOOP
		cutoff := pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(days => p.retention_days);
		table_name := p.table_name::text;
		action := p.action;
		rows_affected := 0;
		batches := 0;
		IF p.table_name OPERATOR(pg_catalog.=) 'dalgo.audit_logs'::regclass THEN
			rows_affected := dalgo.purge_audit_logs(pg_catalog.make_interval(days => p.retention_days));
			batches := 1;
		ELSE
			target := pg_catalog.format('%I.%I', p.relnamespace::regnamespace::text, p.relname);
			IF p.action = 'delete' THEN
				stmt := pg_catalog.format('DELETE FROM ONLY %s WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY('
					'SELECT ctid FROM ONLY %s WHERE %I OPERATOR(pg_catalog.<) $1 LIMIT $2 FOR UPDATE SKIP LOCKED))',
					target, target, p.time_column);
			ELSE
				stmt := pg_catalog.format('UPDATE ONLY %s SET %s WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY('
					'SELECT ctid FROM ONLY %s WHERE %I OPERATOR(pg_catalog.<) $1 AND (%s) LIMIT $2 FOR UPDATE SKIP LOCKED))',
					target,
					(SELECT pg_catalog.string_agg(pg_catalog.format('%I = NULL', c), ', ') FROM pg_catalog.unnest(p.columns) c),
					target, p.time_column,
					(SELECT pg_catalog.string_agg(pg_catalog.format('%I IS NOT NULL', c), ' OR ') FROM pg_catalog.unnest(p.columns) c));
			END IF;
			LOOP
				EXECUTE stmt USING cutoff, batch_size;
				GET DIAGNOSTICS n = ROW_COUNT;
				rows_affected := rows_affected OPERATOR(pg_catalog.+) n;
				batches := batches OPERATOR(pg_catalog.+) 1;
				EXIT WHEN n OPERATOR(pg_catalog.<) batch_size
					OR (max_batches IS NOT NULL AND batches OPERATOR(pg_catalog.>=) max_batches);
			END LOOP;
		END IF;
		UPDATE dalgo.retention_policies r SET last_run_at = pg_catalog.now(), last_rows = rows_affected
			WHERE r.table_name OPERATOR(pg_catalog.=) p.table_name;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo.apply_retention(integer, integer) IS
	'Apply every enabled retention policy, batch_size rows per statement (at most max_batches per table; NULL: until done); returns what it did per table. Superusers and dalgo_service. Run daily with CALL dalgo.run_retention(), which commits between batches';

CREATE OR REPLACE FUNCTION dalgo.disable_child_rows(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_child_');
END
$$;
COMMENT ON FUNCTION dalgo.disable_child_rows(regclass) IS
	'Removes the policies of dalgo.enable_child_rows(); row-level security stays on';

CREATE OR REPLACE FUNCTION dalgo.disable_encryption(tbl regclass, "column" name) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	is_json boolean;
	coltype text;
	k text := dalgo_internal.toolkit_secret_key();
BEGIN
	EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s', 'dalgo_encrypt_' || "column", target);
	SELECT a.atttypid IN ('json'::regtype, 'jsonb'::regtype), pg_catalog.format_type(a.atttypid, a.atttypmod)
	INTO is_json, coltype FROM pg_catalog.pg_attribute a
	WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) "column";
	RETURN dalgo_internal.toolkit_rewrite_unaudited(tbl,
		pg_catalog.format('UPDATE %s SET %I = dalgo_internal.toolkit_decrypt(dalgo_internal.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1::boolean), $2)::%s '
						  'WHERE pg_catalog.starts_with(dalgo_internal.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1::boolean), ''dalgo:pgp1:'')',
						  target, "column", "column", coltype, "column"), is_json::text, k);
END
$$;
COMMENT ON FUNCTION dalgo.disable_encryption(regclass, name) IS
	'Store a column in plaintext again: drops the trigger of dalgo.enable_encryption() and decrypts the stored values; returns the rows decrypted';

CREATE OR REPLACE FUNCTION dalgo.disable_org_rows(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_org_');
END
$$;
COMMENT ON FUNCTION dalgo.disable_org_rows(regclass) IS
	'Removes the policies of dalgo.enable_org_rows(); row-level security stays on (no end user sees the rows until another pattern or policy allows it)';

CREATE OR REPLACE FUNCTION dalgo.disable_own_rows(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_own_');
END
$$;
COMMENT ON FUNCTION dalgo.disable_own_rows(regclass) IS
	'Removes the policies of dalgo.enable_own_rows(); row-level security stays on';

CREATE OR REPLACE FUNCTION dalgo.disable_public_read(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_public_');
	EXECUTE pg_catalog.format('REVOKE SELECT ON %s FROM dalgo_anon', dalgo_internal.toolkit_target(tbl));
END
$$;
COMMENT ON FUNCTION dalgo.disable_public_read(regclass) IS
	'Removes the policy of dalgo.enable_public_read() and dalgo_anon''s SELECT; row-level security stays on';

CREATE OR REPLACE FUNCTION dalgo.disable_redaction(tbl regclass, "column" name) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS %I ON %s', 'dalgo_redact_' || "column", dalgo_internal.toolkit_target(tbl));
END
$$;
COMMENT ON FUNCTION dalgo.disable_redaction(regclass, name) IS 'Removes the trigger of dalgo.enable_redaction()';

CREATE OR REPLACE FUNCTION dalgo.disable_retention(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM dalgo.retention_policies WHERE table_name OPERATOR(pg_catalog.=) tbl;
END
$$;
COMMENT ON FUNCTION dalgo.disable_retention(regclass) IS 'Removes a table''s retention policy';

CREATE OR REPLACE FUNCTION dalgo.disable_shared_rows(tbl regclass, shares regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_shared_');
	PERFORM dalgo_internal.toolkit_drop_policies(shares, 'dalgo_shares_');
	EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS dalgo_shares_guard ON %s', dalgo_internal.toolkit_target(shares));
END
$$;
COMMENT ON FUNCTION dalgo.disable_shared_rows(regclass, regclass) IS
	'Removes the policies of dalgo.enable_shared_rows() from both tables; row-level security stays on';

CREATE OR REPLACE FUNCTION dalgo.disable_updated_at(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS dalgo_updated_at ON %s', dalgo_internal.toolkit_target(tbl));
END
$$;
COMMENT ON FUNCTION dalgo.disable_updated_at(regclass) IS 'Removes the trigger of dalgo.enable_updated_at()';

CREATE OR REPLACE FUNCTION dalgo.enable_child_rows(tbl regclass, parent regclass, parent_column name DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	parent_target text := dalgo_internal.toolkit_target(parent);
	key_col name;
	ref_col name;
	readable text;
	writable text;
BEGIN
	SELECT ka.attname, ra.attname INTO key_col, ref_col
	FROM pg_catalog.pg_constraint c
	JOIN pg_catalog.pg_attribute ka ON ka.attrelid OPERATOR(pg_catalog.=) c.conrelid AND ka.attnum OPERATOR(pg_catalog.=) c.conkey[1]
	JOIN pg_catalog.pg_attribute ra ON ra.attrelid OPERATOR(pg_catalog.=) c.confrelid AND ra.attnum OPERATOR(pg_catalog.=) c.confkey[1]
	WHERE c.contype = 'f' AND c.conrelid OPERATOR(pg_catalog.=) tbl AND c.confrelid OPERATOR(pg_catalog.=) parent
	  AND pg_catalog.cardinality(c.conkey) OPERATOR(pg_catalog.=) 1
	  AND (parent_column IS NULL OR ka.attname OPERATOR(pg_catalog.=) parent_column)
	ORDER BY c.conname LIMIT 1;
	IF key_col IS NULL THEN
		RAISE EXCEPTION '% has no one-column foreign key to %', tbl, parent USING ERRCODE = 'invalid_foreign_key';
	END IF;
	-- The parent rows the caller reads (its SELECT policies), and those it
	-- may update (a locking clause applies its UPDATE policies too; KEY
	-- SHARE, the lock a foreign key takes, blocks no ordinary update): one
	-- uncorrelated subquery each, an initPlan.
	readable := pg_catalog.format('%I OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT p.%I FROM %s p))', key_col, ref_col, parent_target);
	writable := pg_catalog.format('%I OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT p.%I FROM %s p FOR KEY SHARE))', key_col, ref_col, parent_target);
	PERFORM dalgo_internal.toolkit_prepare(tbl, ARRAY['dalgo_authenticated']);
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_child_');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_child_select', 'SELECT', 'dalgo_authenticated', readable, NULL,
		pg_catalog.format('Rows whose %s row the caller reads', parent_target));
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_child_insert', 'INSERT', 'dalgo_authenticated', NULL, writable,
		pg_catalog.format('Rows are added under a %s row the caller may change', parent_target));
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_child_update', 'UPDATE', 'dalgo_authenticated', writable, writable,
		pg_catalog.format('Rows under a %s row the caller may change are changed, and stay under one', parent_target));
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_child_delete', 'DELETE', 'dalgo_authenticated', writable, NULL,
		pg_catalog.format('Rows under a %s row the caller may change are deleted', parent_target));
	EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO dalgo_authenticated', target);
	PERFORM dalgo_internal.toolkit_ensure_index(tbl, key_col);
END
$$;
COMMENT ON FUNCTION dalgo.enable_child_rows(regclass, regclass, name) IS
	'Secure a table whose rows belong to a row of parent (through a one-column foreign key, or parent_column): a row is read by whoever reads its parent and written by whoever may update its parent, by the parent''s own policies. Idempotent; undo with dalgo.disable_child_rows()';

CREATE OR REPLACE FUNCTION dalgo.enable_encryption(tbl regclass, "column" name, org_column name DEFAULT 'organization_id',
										read_role dalgo.member_role DEFAULT 'admin')
	RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
BEGIN
	PERFORM dalgo_internal.toolkit_pgcrypto();
	PERFORM dalgo_internal.toolkit_secret_key();
	PERFORM dalgo_internal.toolkit_column(tbl, "column", ARRAY['text'::regtype, 'varchar'::regtype, 'json'::regtype, 'jsonb'::regtype]);
	PERFORM dalgo_internal.toolkit_column(tbl, org_column, ARRAY['uuid'::regtype]);
	IF read_role IS NULL THEN
		RAISE EXCEPTION 'read_role is required' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF (SELECT pg_catalog.count(*) FROM pg_catalog.pg_constraint WHERE conrelid OPERATOR(pg_catalog.=) tbl AND contype = 'p'
		AND pg_catalog.cardinality(conkey) OPERATOR(pg_catalog.=) 1) OPERATOR(pg_catalog.<>) 1 THEN
		RAISE EXCEPTION '% needs a one-column primary key', tbl USING ERRCODE = 'invalid_table_definition';
	END IF;
	EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER %I BEFORE INSERT OR UPDATE ON %s '
							  'FOR EACH ROW EXECUTE FUNCTION dalgo_internal.set_encrypted_column(%L, %L, %L)',
							  'dalgo_encrypt_' || "column", target, "column", org_column, read_role);
	EXECUTE pg_catalog.format('COMMENT ON TRIGGER %I ON %s IS %L', 'dalgo_encrypt_' || "column", target,
							  pg_catalog.format('%s is stored encrypted (dalgo toolkit)', "column"));
	-- Encrypt what is there (the trigger does the work).
	RETURN dalgo_internal.toolkit_rewrite_unaudited(tbl,
		pg_catalog.format('UPDATE %s SET %I = %I WHERE %I IS NOT NULL', target, "column", "column", "column"));
END
$$;
COMMENT ON FUNCTION dalgo.enable_encryption(regclass, name, name, dalgo.member_role) IS
	'Store a text, json or jsonb column encrypted at rest (pgcrypto, AES-256, key in the data directory): existing values are encrypted now, new ones on write. Members at read_role of the row''s organization read it with dalgo.read_secret(), dalgo_service with dalgo.read_secret_service(). Superusers; returns the rows encrypted';

CREATE OR REPLACE FUNCTION dalgo.enable_org_rows(tbl regclass, org_column name DEFAULT 'organization_id',
									  read_role dalgo.member_role DEFAULT 'viewer',
									  write_role dalgo.member_role DEFAULT 'member',
									  owner_column name DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	r_read text := dalgo_internal.toolkit_org_test(org_column, read_role);
	r_write text := dalgo_internal.toolkit_org_test(org_column, write_role);
	w_check text;
BEGIN
	IF read_role IS NULL OR write_role IS NULL THEN
		RAISE EXCEPTION 'read_role and write_role are required' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF write_role OPERATOR(pg_catalog.<) read_role THEN
		RAISE EXCEPTION 'write_role (%) must be at least read_role (%)', write_role, read_role
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM dalgo_internal.toolkit_column(tbl, org_column, ARRAY['uuid'::regtype]);
	w_check := r_write;
	IF owner_column IS NOT NULL THEN
		PERFORM dalgo_internal.toolkit_column(tbl, owner_column, ARRAY['uuid'::regtype]);
		r_read := r_read || ' OR ' || dalgo_internal.toolkit_own_test(owner_column);
		-- An owner's row may stay outside any organization; it never enters
		-- one where the owner lacks write_role.
		w_check := r_write || pg_catalog.format(' OR (%I IS NULL AND ', org_column) || dalgo_internal.toolkit_own_test(owner_column) || ')';
		r_write := r_write || ' OR ' || dalgo_internal.toolkit_own_test(owner_column);
	END IF;
	PERFORM dalgo_internal.toolkit_prepare(tbl, ARRAY['dalgo_authenticated']);
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_org_');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_org_select', 'SELECT', 'dalgo_authenticated', r_read, NULL,
		pg_catalog.format('Rows of organizations where the caller is at least %s', read_role)
		|| CASE WHEN owner_column IS NOT NULL THEN ', and the caller''s own rows' ELSE '' END);
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_org_insert', 'INSERT', 'dalgo_authenticated', NULL, w_check,
		pg_catalog.format('Only %s and above add rows, and only to their organizations', write_role));
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_org_update', 'UPDATE', 'dalgo_authenticated', r_write, w_check,
		pg_catalog.format('Only %s and above change rows, and never move them to an organization where they are less', write_role));
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_org_delete', 'DELETE', 'dalgo_authenticated', r_write, NULL,
		pg_catalog.format('Only %s and above delete rows', write_role));
	EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO dalgo_authenticated', target);
	PERFORM dalgo_internal.toolkit_ensure_index(tbl, org_column);
	IF owner_column IS NOT NULL THEN
		PERFORM dalgo_internal.toolkit_ensure_index(tbl, owner_column);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.enable_org_rows(regclass, name, dalgo.member_role, dalgo.member_role, name) IS
	'Secure a table by organization: members at read_role or above read, at write_role or above write; with owner_column the owner also reads and writes their rows. No row enters an organization where the writer lacks write_role. Idempotent; undo with dalgo.disable_org_rows()';

CREATE OR REPLACE FUNCTION dalgo.enable_own_rows(tbl regclass, owner_column name DEFAULT 'user_id', immutable boolean DEFAULT false)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	mine text := dalgo_internal.toolkit_own_test(owner_column);
BEGIN
	PERFORM dalgo_internal.toolkit_column(tbl, owner_column, ARRAY['uuid'::regtype]);
	PERFORM dalgo_internal.toolkit_prepare(tbl, ARRAY['dalgo_authenticated'], NOT coalesce(immutable, false));
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_own_');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_own_select', 'SELECT', 'dalgo_authenticated', mine, NULL,
		'Users read only their own rows');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_own_insert', 'INSERT', 'dalgo_authenticated', NULL, mine,
		'Users add rows only as themselves');
	IF coalesce(immutable, false) THEN
		EXECUTE pg_catalog.format('GRANT SELECT, INSERT ON %s TO dalgo_authenticated', target);
		EXECUTE pg_catalog.format('REVOKE UPDATE, DELETE, TRUNCATE ON %s FROM dalgo_authenticated, dalgo_anon', target);
	ELSE
		PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_own_update', 'UPDATE', 'dalgo_authenticated', mine, mine,
			'Users change only their own rows, and cannot give them away');
		PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_own_delete', 'DELETE', 'dalgo_authenticated', mine, NULL,
			'Users delete only their own rows');
		EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO dalgo_authenticated', target);
	END IF;
	PERFORM dalgo_internal.toolkit_ensure_index(tbl, owner_column);
END
$$;
COMMENT ON FUNCTION dalgo.enable_own_rows(regclass, name, boolean) IS
	'Secure a table by owner: only the owner reads and writes a row. With immutable (zero trust), rows are only inserted and read: no update or delete by anyone, dalgo_service included. Idempotent; undo with dalgo.disable_own_rows()';

CREATE OR REPLACE FUNCTION dalgo.enable_public_read(tbl regclass, condition text DEFAULT NULL) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	cond text := 'true';
BEGIN
	IF condition IS NOT NULL THEN
		cond := dalgo_internal.toolkit_condition(tbl, condition);
	END IF;
	PERFORM dalgo_internal.toolkit_prepare(tbl, ARRAY['dalgo_authenticated', 'dalgo_anon']);
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_public_');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_public_select', 'SELECT', 'dalgo_anon, dalgo_authenticated', cond, NULL,
		CASE WHEN condition IS NULL THEN 'Everyone reads every row' ELSE 'Everyone reads the rows where ' || cond END);
	EXECUTE pg_catalog.format('GRANT SELECT ON %s TO dalgo_anon, dalgo_authenticated', target);
END
$$;
COMMENT ON FUNCTION dalgo.enable_public_read(regclass, text) IS
	'Everyone, dalgo_anon included, reads the rows where condition holds (a boolean expression over the table''s own columns: no subquery, only immutable functions; NULL: every row); only dalgo_service writes. Idempotent; undo with dalgo.disable_public_read()';

CREATE OR REPLACE FUNCTION dalgo.enable_redaction(tbl regclass, "column" name, keys text[] DEFAULT NULL, pii boolean DEFAULT false)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	args text;
BEGIN
	PERFORM dalgo_internal.toolkit_column(tbl, "column", ARRAY['jsonb'::regtype, 'text'::regtype, 'varchar'::regtype]);
	SELECT pg_catalog.string_agg(pg_catalog.quote_literal(a), ', ' ORDER BY o) INTO args
	FROM pg_catalog.unnest(ARRAY["column", CASE WHEN pii THEN 't' ELSE 'f' END]
						   || coalesce(keys, '{}'::text[])) WITH ORDINALITY AS u(a, o)
	WHERE a IS NOT NULL;
	EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER %I BEFORE INSERT OR UPDATE ON %s '
							  'FOR EACH ROW EXECUTE FUNCTION dalgo_internal.redact_trigger(%s)',
							  'dalgo_redact_' || "column", target, args);
	EXECUTE pg_catalog.format('COMMENT ON TRIGGER %I ON %s IS %L', 'dalgo_redact_' || "column", target,
							  pg_catalog.format('%s is redacted before it is stored (dalgo toolkit)', "column"));
END
$$;
COMMENT ON FUNCTION dalgo.enable_redaction(regclass, name, text[], boolean) IS
	'Redact a jsonb or text column before every insert and update, as dalgo.redact_jsonb(value, keys, pii) does (keys NULL: the secret names). Idempotent; undo with dalgo.disable_redaction()';

CREATE OR REPLACE FUNCTION dalgo.enable_service_only(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
BEGIN
	PERFORM dalgo_internal.toolkit_prepare(tbl, '{}'::text[]);
	EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM dalgo_authenticated, dalgo_anon', target);
END
$$;
COMMENT ON FUNCTION dalgo.enable_service_only(regclass) IS
	'Secure a table for dalgo_service alone (the service-role pattern): row-level security on and forced, no end-user privilege. Undo by enabling another pattern';

CREATE OR REPLACE FUNCTION dalgo.enable_shared_rows(tbl regclass, shares regclass,
										 owner_column name DEFAULT 'user_id',
										 shared_with_column name DEFAULT 'user_id',
										 permission_column name DEFAULT 'permission',
										 shared_by_column name DEFAULT 'shared_by',
										 public_column name DEFAULT 'is_public')
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	shares_target text := dalgo_internal.toolkit_target(shares);
	key_col name;
	ref_col name;
	has_public boolean;
	mine text := dalgo_internal.toolkit_own_test(owner_column);
	shared text;
	editable text;
	read_expr text;
	cols text;
BEGIN
	-- The shares table points at tbl with a one-column foreign key.
	SELECT ka.attname, ra.attname INTO key_col, ref_col
	FROM pg_catalog.pg_constraint c
	JOIN pg_catalog.pg_attribute ka ON ka.attrelid OPERATOR(pg_catalog.=) c.conrelid AND ka.attnum OPERATOR(pg_catalog.=) c.conkey[1]
	JOIN pg_catalog.pg_attribute ra ON ra.attrelid OPERATOR(pg_catalog.=) c.confrelid AND ra.attnum OPERATOR(pg_catalog.=) c.confkey[1]
	WHERE c.contype = 'f' AND c.conrelid OPERATOR(pg_catalog.=) shares AND c.confrelid OPERATOR(pg_catalog.=) tbl
	  AND pg_catalog.cardinality(c.conkey) OPERATOR(pg_catalog.=) 1
	ORDER BY c.conname LIMIT 1;
	IF key_col IS NULL THEN
		RAISE EXCEPTION '% has no one-column foreign key to %', shares, tbl USING ERRCODE = 'invalid_foreign_key';
	END IF;
	PERFORM dalgo_internal.toolkit_column(tbl, owner_column, ARRAY['uuid'::regtype]);
	PERFORM dalgo_internal.toolkit_column(shares, shared_with_column, ARRAY['uuid'::regtype]);
	PERFORM dalgo_internal.toolkit_column(shares, permission_column, NULL);
	PERFORM dalgo_internal.toolkit_column(shares, shared_by_column, ARRAY['uuid'::regtype]);
	has_public := public_column IS NOT NULL AND EXISTS (SELECT FROM pg_catalog.pg_attribute
		WHERE attrelid OPERATOR(pg_catalog.=) tbl AND attname OPERATOR(pg_catalog.=) public_column AND NOT attisdropped);
	IF has_public THEN
		PERFORM dalgo_internal.toolkit_column(tbl, public_column, ARRAY['boolean'::regtype]);
	END IF;

	-- Row ids shared with the caller: one uncorrelated subquery (an initPlan).
	shared := pg_catalog.format('%I OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT s.%I FROM %s s WHERE s.%I OPERATOR(pg_catalog.=) '
		'(SELECT dalgo.current_user_id()) AND s.%I::text OPERATOR(pg_catalog.=) ANY (%%L::text[])))',
		ref_col, key_col, shares_target, shared_with_column, permission_column);
	editable := pg_catalog.format(shared, '{edit}');
	shared := pg_catalog.format(shared, '{view,edit}');
	read_expr := mine || ' OR ' || shared;
	IF has_public THEN
		read_expr := read_expr || pg_catalog.format(' OR %I', public_column);
	END IF;

	PERFORM dalgo_internal.toolkit_prepare(tbl, ARRAY['dalgo_authenticated']);
	PERFORM dalgo_internal.toolkit_prepare(shares, ARRAY['dalgo_authenticated']);
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_shared_');
	PERFORM dalgo_internal.toolkit_drop_policies(shares, 'dalgo_shares_');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_shared_select', 'SELECT', 'dalgo_authenticated', read_expr, NULL,
		'Owners, users with a view or edit share' || CASE WHEN has_public THEN ', and everyone signed in for public rows' ELSE '' END);
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_shared_insert', 'INSERT', 'dalgo_authenticated', NULL, mine,
		'Users create rows only as their owner');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_shared_update', 'UPDATE', 'dalgo_authenticated', mine || ' OR ' || editable,
		mine || ' OR ' || editable, 'Owners and users with an edit share change rows (never the owner or the id)');
	PERFORM dalgo_internal.toolkit_policy(tbl, 'dalgo_shared_delete', 'DELETE', 'dalgo_authenticated', mine, NULL,
		'Only owners delete rows');
	-- Editors change every column but the owner and the shared id.
	SELECT pg_catalog.string_agg(pg_catalog.quote_ident(attname), ', ' ORDER BY attnum) INTO cols
	FROM pg_catalog.pg_attribute
	WHERE attrelid OPERATOR(pg_catalog.=) tbl AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped
	  AND attname NOT IN (owner_column, ref_col);
	EXECUTE pg_catalog.format('REVOKE UPDATE ON %s FROM dalgo_authenticated', target);
	EXECUTE pg_catalog.format('GRANT SELECT, INSERT, DELETE ON %s TO dalgo_authenticated', target);
	IF cols IS NOT NULL THEN
		EXECUTE pg_catalog.format('GRANT UPDATE (%s) ON %s TO dalgo_authenticated', cols, target);
	END IF;

	-- The shares: seen by the user shared with and by who shared; made by
	-- the row's owner (checked by a trigger, see dalgo_internal.guard_shares).
	PERFORM dalgo_internal.toolkit_policy(shares, 'dalgo_shares_select', 'SELECT', 'dalgo_authenticated',
		dalgo_internal.toolkit_own_test(shared_with_column) || ' OR ' || dalgo_internal.toolkit_own_test(shared_by_column), NULL,
		'A share is seen by the user it is for and by who shared');
	PERFORM dalgo_internal.toolkit_policy(shares, 'dalgo_shares_insert', 'INSERT', 'dalgo_authenticated', NULL,
		dalgo_internal.toolkit_own_test(shared_by_column), 'Shares are made in the name of who shares, the row''s owner');
	PERFORM dalgo_internal.toolkit_policy(shares, 'dalgo_shares_update', 'UPDATE', 'dalgo_authenticated',
		dalgo_internal.toolkit_own_test(shared_by_column), dalgo_internal.toolkit_own_test(shared_by_column),
		'Who shared changes the share');
	PERFORM dalgo_internal.toolkit_policy(shares, 'dalgo_shares_delete', 'DELETE', 'dalgo_authenticated',
		dalgo_internal.toolkit_own_test(shared_by_column) || ' OR ' || dalgo_internal.toolkit_own_test(shared_with_column), NULL,
		'Who shared revokes a share; the user it is for leaves it');
	EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER dalgo_shares_guard BEFORE INSERT OR UPDATE ON %s '
							  'FOR EACH ROW EXECUTE FUNCTION dalgo_internal.guard_shares(%L, %L, %L, %L)',
							  shares_target, target, ref_col, key_col, owner_column);
	EXECUTE pg_catalog.format('COMMENT ON TRIGGER dalgo_shares_guard ON %s IS %L', shares_target,
							  pg_catalog.format('Only the owner of a %s row shares it (dalgo toolkit)', target));
	EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO dalgo_authenticated', shares_target);

	PERFORM dalgo_internal.toolkit_ensure_index(tbl, owner_column);
	PERFORM dalgo_internal.toolkit_ensure_index(shares, shared_with_column);
	PERFORM dalgo_internal.toolkit_ensure_index(shares, key_col);
	PERFORM dalgo_internal.toolkit_ensure_index(shares, shared_by_column);
END
$$;
COMMENT ON FUNCTION dalgo.enable_shared_rows(regclass, regclass, name, name, name, name, name) IS
	'Secure an owner-plus-shares table: owners read and write their rows; users with a view or edit share (a row of shares, found by its foreign key to tbl) read them, edit shares change them (never the owner column); rows whose public_column is true are read by everyone signed in. Also secures shares: only a row''s owner shares it, in their name (shared_by_column). Idempotent; undo with dalgo.disable_shared_rows()';

CREATE OR REPLACE FUNCTION dalgo.enable_updated_at(tbl regclass, "column" name DEFAULT 'updated_at') RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
BEGIN
	PERFORM dalgo_internal.toolkit_column(tbl, "column", ARRAY['timestamptz'::regtype, 'timestamp'::regtype]);
	EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER dalgo_updated_at BEFORE UPDATE ON %s '
							  'FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at(%L)', target, "column");
	EXECUTE pg_catalog.format('COMMENT ON TRIGGER dalgo_updated_at ON %s IS %L', target,
							  pg_catalog.format('%s is set on every update (dalgo toolkit)', "column"));
END
$$;
COMMENT ON FUNCTION dalgo.enable_updated_at(regclass, name) IS
	'Attach dalgo.set_updated_at() to a table: the column (timestamptz or timestamp) is set on every update. Idempotent; undo with dalgo.disable_updated_at()';

CREATE OR REPLACE FUNCTION dalgo_internal.guard_shares() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	owned boolean;
BEGIN
	-- Arguments: shared table (qualified), its key column, the shares' key column, its owner column.
	IF TG_NARGS <> 4 THEN
		RAISE EXCEPTION 'dalgo_internal.guard_shares() takes 4 arguments' USING ERRCODE = 'E0001',
			HINT = 'Attach it with dalgo.enable_shared_rows().';
	END IF;
	IF pg_catalog.pg_has_role(current_user, 'dalgo_authenticated', 'MEMBER')
	   AND NOT pg_catalog.pg_has_role(current_user, 'dalgo_service', 'MEMBER') THEN
		EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s p WHERE p.%I OPERATOR(pg_catalog.=) ($1).%I '
								  'AND p.%I OPERATOR(pg_catalog.=) dalgo.current_user_id())',
								  TG_ARGV[0], TG_ARGV[1], TG_ARGV[2], TG_ARGV[3])
			INTO owned USING NEW;
		IF NOT owned THEN
			RAISE EXCEPTION 'only the owner of a row shares it' USING ERRCODE = 'insufficient_privilege';
		END IF;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo_internal.guard_shares() IS
	'BEFORE INSERT OR UPDATE trigger of a shares table (dalgo.enable_shared_rows()): end users share only rows they own';

CREATE OR REPLACE FUNCTION dalgo_internal.is_secret_name(name text) RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_is_secret_name'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_internal.is_secret_name(text) IS
	'True if a key or column name names a secret by the audit trail''s rules (password, token, api_key, *_secret, ...)';

CREATE OR REPLACE FUNCTION dalgo.read_secret(tbl regclass, "column" name, id text) RETURNS text
	LANGUAGE sql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	RETURN dalgo_internal.toolkit_read_secret(tbl, "column", id, true);
COMMENT ON FUNCTION dalgo.read_secret(regclass, name, text) IS
	'The plaintext of an encrypted column (dalgo.enable_encryption()) of the row whose primary key is id, for members at the column''s read_role of the row''s organization; NULL for anyone else or no such row';

CREATE OR REPLACE FUNCTION dalgo.read_secret_service(tbl regclass, "column" name, id text) RETURNS text
	LANGUAGE sql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	RETURN dalgo_internal.toolkit_read_secret(tbl, "column", id, false);
COMMENT ON FUNCTION dalgo.read_secret_service(regclass, name, text) IS
	'The plaintext of an encrypted column of the row whose primary key is id, for dalgo_service (workers that use the credentials)';

CREATE OR REPLACE FUNCTION dalgo_internal.record_restored_retention_policy() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT dalgo.restoring() THEN
		RETURN NEW;
	END IF;
	UPDATE dalgo.retention_policies p
	SET id = NEW.id, time_column = NEW.time_column, retention_days = NEW.retention_days, action = NEW.action,
		columns = NEW.columns, enabled = NEW.enabled, last_run_at = NEW.last_run_at, last_rows = NEW.last_rows,
		created_at = NEW.created_at, updated_at = NEW.updated_at
	WHERE p.table_name = NEW.table_name;
	IF FOUND THEN
		RETURN NULL;
	END IF;
	RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION dalgo.redact_jsonb(value jsonb, keys text[] DEFAULT NULL, pii boolean DEFAULT false)
	RETURNS jsonb
	AS 'MODULE_PATHNAME', 'dalgo_redact_jsonb_keys'
	LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.redact_jsonb(jsonb, text[], boolean) IS
	'The document with the values of keys (at any depth; NULL: the secret names the audit trail redacts) made "[redacted]", credentials inside strings stripped, and with pii e-mail addresses and phone numbers masked (***); the audit trail''s rules (src/redact.c)';

CREATE OR REPLACE FUNCTION dalgo_internal.redact_trigger() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_redact_trigger'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo_internal.redact_trigger() IS
	'BEFORE INSERT OR UPDATE row trigger redacting one jsonb or text column (arguments: column, pii flag, keys); attach it with dalgo.enable_redaction()';

CREATE OR REPLACE FUNCTION dalgo.rotate_secret_key(new_key text DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	old_key text := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
	k text := new_key;
	t record;
	n bigint;
	total bigint := 0;
BEGIN
	IF k IS NULL THEN
		EXECUTE pg_catalog.format('SELECT pg_catalog.encode(%s.gen_random_bytes(32), ''hex'')', dalgo_internal.toolkit_pgcrypto()) INTO k;
	ELSIF pg_catalog.length(k) OPERATOR(pg_catalog.<) 16 OR k !~ '^[A-Za-z0-9+/=_-]+$' THEN
		RAISE EXCEPTION 'a secret key has at least 16 characters among A-Z, a-z, 0-9, +, /, =, _ and -'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF old_key IS NOT NULL AND old_key <> '' THEN
		old_key := dalgo_internal.toolkit_secret_key();
		FOR t IN SELECT tr.tgrelid::regclass AS tbl, a.attname, a.atttypid IN ('json'::regtype, 'jsonb'::regtype) AS is_json,
					  pg_catalog.format_type(a.atttypid, a.atttypmod) AS coltype
				 FROM pg_catalog.pg_trigger tr
				 JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) tr.tgrelid
					AND a.attname OPERATOR(pg_catalog.=) pg_catalog.split_part(pg_catalog.encode(tr.tgargs, 'escape'), E'\\000', 1)
				 WHERE tr.tgfoid OPERATOR(pg_catalog.=) 'dalgo_internal.set_encrypted_column()'::regprocedure
		LOOP
			EXECUTE pg_catalog.format('UPDATE %s SET %I = %s(dalgo_internal.toolkit_encrypt(dalgo_internal.toolkit_decrypt('
				'dalgo_internal.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1), $2), $3))::%s '
				'WHERE pg_catalog.starts_with(dalgo_internal.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1), ''dalgo:pgp1:'')',
				t.tbl, t.attname, CASE WHEN t.is_json THEN 'pg_catalog.to_jsonb' ELSE '' END, t.attname, t.coltype, t.attname)
				USING t.is_json, old_key, k;
			GET DIAGNOSTICS n = ROW_COUNT;
			total := total OPERATOR(pg_catalog.+) n;
		END LOOP;
	END IF;
	-- The file keeps the previous key after the new one: if this transaction
	-- rolls back after the file is written, the values it re-encrypted are
	-- still readable.  The key never appears in a statement's text (logs,
	-- error contexts).
	PERFORM pg_catalog.set_config('dalgo_toolkit.pending_key',
		k || coalesce(E'\n' || NULLIF(pg_catalog.split_part(old_key, E'\n', 1), ''), ''), true);
	EXECUTE pg_catalog.format('COPY (SELECT pg_catalog.unnest(pg_catalog.string_to_array('
							  'pg_catalog.current_setting(''dalgo_toolkit.pending_key''), E''\n''))) TO %L',
							  pg_catalog.current_setting('data_directory') || '/dalgo_secret.key');
	PERFORM pg_catalog.set_config('dalgo_toolkit.pending_key', '', true);
	RETURN total;
END
$$;
COMMENT ON FUNCTION dalgo.rotate_secret_key(text) IS
	'Set the encryption key (new_key, or 32 random bytes) and re-encrypt every value stored by dalgo.enable_encryption() under it; returns the values re-encrypted. Superusers. The key is the file dalgo_secret.key in the data directory: back it up apart from the database';

CREATE OR REPLACE PROCEDURE dalgo.run_retention(batch_size integer DEFAULT 10000)
	LANGUAGE plpgsql
AS $$
DECLARE
	n bigint;
BEGIN
	LOOP
		SELECT pg_catalog.sum(r.rows_affected) INTO n FROM dalgo.apply_retention(batch_size, 1) r;
		COMMIT;
		EXIT WHEN n IS NULL OR n OPERATOR(pg_catalog.=) 0;
	END LOOP;
END
$$;
COMMENT ON PROCEDURE dalgo.run_retention(integer) IS
	'Apply every retention policy one batch at a time, committing after each batch, so that no lock is held longer than one batch; run it daily (docs/toolkit.md#retention)';

CREATE OR REPLACE FUNCTION dalgo.security_report(schema name DEFAULT NULL)
	RETURNS TABLE (table_name text, severity text, problem text, fix text)
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	WITH nsp AS (
		SELECT n.oid, n.nspname FROM pg_catalog.pg_namespace n
		WHERE (security_report.schema IS NULL AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
			   AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%')
		   OR n.nspname OPERATOR(pg_catalog.=) security_report.schema
	), rel AS (
		SELECT c.oid, c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity, c.relacl, c.relispartition,
			   pg_catalog.format('%I.%I', nsp.nspname, c.relname) AS qname
		FROM pg_catalog.pg_class c JOIN nsp ON nsp.oid OPERATOR(pg_catalog.=) c.relnamespace
	), findings AS (
		SELECT r.qname, 'high' AS severity, 'row-level security is not enabled' AS problem,
			   pg_catalog.format('SELECT dalgo.enable_org_rows(%L) (or enable_own_rows, enable_public_read, enable_shared_rows)', r.qname) AS fix
		FROM rel r WHERE r.relkind IN ('r', 'p') AND NOT r.relispartition AND NOT r.relrowsecurity
		UNION ALL
		SELECT r.qname, 'medium', 'row-level security is not forced: the table owner bypasses it',
			   pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', r.qname)
		FROM rel r WHERE r.relkind IN ('r', 'p') AND NOT r.relispartition AND r.relrowsecurity AND NOT r.relforcerowsecurity
		UNION ALL
		SELECT r.qname, 'medium', pg_catalog.format('policy %I %s', pol.polname, prob),
			   'Wrap per-row calls in a scalar subquery, (SELECT f()), so they run once per statement; never call volatile functions in a policy'
		FROM rel r JOIN pg_catalog.pg_policy pol ON pol.polrelid OPERATOR(pg_catalog.=) r.oid
		CROSS JOIN LATERAL pg_catalog.unnest(
			coalesce(dalgo_internal.toolkit_policy_problems(pol.polqual), '{}'::text[])
			OPERATOR(pg_catalog.||) coalesce(dalgo_internal.toolkit_policy_problems(pol.polwithcheck), '{}'::text[])) AS prob
		UNION ALL
		SELECT DISTINCT r.qname, 'medium',
			   pg_catalog.format('column %I is tested by a policy but has no index', a.attname),
			   pg_catalog.format('CREATE INDEX ON %s (%I)', r.qname, a.attname)
		FROM rel r
		JOIN pg_catalog.pg_depend d ON d.refobjid OPERATOR(pg_catalog.=) r.oid
			AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_policy'::pg_catalog.regclass
			AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
			AND d.refobjsubid OPERATOR(pg_catalog.>) 0
		JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) r.oid
			AND a.attnum OPERATOR(pg_catalog.=) d.refobjsubid
		WHERE a.atttypid IN ('uuid'::pg_catalog.regtype, 'int4'::pg_catalog.regtype, 'int8'::pg_catalog.regtype)
		  AND NOT EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid OPERATOR(pg_catalog.=) r.oid
						  AND i.indkey[0] OPERATOR(pg_catalog.=) a.attnum AND i.indpred IS NULL)
		UNION ALL
		SELECT r.qname, 'high',
			   pg_catalog.format('column %I looks like a credential and is stored in plaintext', a.attname),
			   pg_catalog.format('SELECT dalgo.enable_encryption(%L, %L), store only a hash, or SELECT dalgo.enable_redaction(%L, %L)', r.qname, a.attname, r.qname, a.attname)
		FROM rel r JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) r.oid
		WHERE r.relkind IN ('r', 'p', 'f', 'v', 'm') AND NOT r.relispartition AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
		  AND dalgo_internal.is_secret_name(a.attname::text)
		  AND a.attname::text !~* '(hash|digest|encrypted|_enc)$'
		  AND coalesce(pg_catalog.col_description(r.oid, a.attnum) !~ '\[not a secret\]', true)
		  AND a.atttypid NOT IN ('bytea'::pg_catalog.regtype, 'bool'::pg_catalog.regtype)
		  AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid OPERATOR(pg_catalog.=) r.oid
						  AND t.tgname IN (('dalgo_redact_' OPERATOR(pg_catalog.||) a.attname::text)::name,
										   ('dalgo_encrypt_' OPERATOR(pg_catalog.||) a.attname::text)::name))
		UNION ALL
		SELECT r.qname, CASE WHEN acl.privilege_type = 'SELECT' THEN 'medium' ELSE 'high' END,
			   pg_catalog.format('PUBLIC has %s', acl.privilege_type),
			   pg_catalog.format('REVOKE %s ON %s FROM PUBLIC', acl.privilege_type, r.qname)
		FROM rel r CROSS JOIN LATERAL pg_catalog.aclexplode(r.relacl) acl
		WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND acl.grantee OPERATOR(pg_catalog.=) 0
		UNION ALL
		SELECT p.oid::pg_catalog.regprocedure::text, 'high',
			   CASE WHEN NOT coalesce(pg_catalog.array_to_string(p.proconfig, ',') ~ 'search_path=', false)
					THEN 'SECURITY DEFINER function without a fixed search_path'
					ELSE 'SECURITY DEFINER function whose search_path does not list pg_temp (it is searched first)' END,
			   pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', p.oid::pg_catalog.regprocedure)
		FROM pg_catalog.pg_proc p JOIN nsp ON nsp.oid OPERATOR(pg_catalog.=) p.pronamespace
		WHERE p.prosecdef AND NOT EXISTS (SELECT FROM pg_catalog.unnest(p.proconfig) s
										  WHERE s ~ '^search_path=' AND s ~ 'pg_temp')
		UNION ALL
		SELECT p.oid::pg_catalog.regprocedure::text, 'high',
			   'PUBLIC may execute this SECURITY DEFINER function',
			   pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', p.oid::pg_catalog.regprocedure)
		FROM pg_catalog.pg_proc p JOIN nsp ON nsp.oid OPERATOR(pg_catalog.=) p.pronamespace
		CROSS JOIN LATERAL pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) acl
		WHERE p.prosecdef AND acl.grantee OPERATOR(pg_catalog.=) 0
		UNION ALL
		SELECT nsp.nspname::text, 'high', 'PUBLIC may create objects in the schema',
			   pg_catalog.format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', nsp.nspname)
		FROM nsp JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) nsp.oid
		CROSS JOIN LATERAL pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) acl
		WHERE acl.grantee OPERATOR(pg_catalog.=) 0 AND acl.privilege_type = 'CREATE'
	)
	SELECT f.qname, f.severity, f.problem, f.fix FROM findings f
	ORDER BY CASE f.severity WHEN 'high' THEN 0 ELSE 1 END, 1, 3;
END;
COMMENT ON FUNCTION dalgo.security_report(name) IS
	'What is unprotected in a schema (NULL: every schema): tables without row-level security or not forcing it, policies calling volatile or per-row functions, policy columns without an index, SECURITY DEFINER functions without a fixed search_path or executable by PUBLIC, grants to PUBLIC, credentials-looking columns in plaintext (a column whose comment says [not a secret] is not one)';

CREATE OR REPLACE FUNCTION dalgo_internal.set_encrypted_column() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	col text := TG_ARGV[0];
	is_json boolean;
	plain text;
BEGIN
	SELECT a.atttypid IN ('json'::regtype, 'jsonb'::regtype) INTO is_json FROM pg_catalog.pg_attribute a
	WHERE a.attrelid OPERATOR(pg_catalog.=) TG_RELID AND a.attname OPERATOR(pg_catalog.=) col;
	plain := dalgo_internal.toolkit_stored_text(pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.->) col, is_json);
	IF plain IS NULL OR pg_catalog.starts_with(plain, 'dalgo:pgp1:') THEN
		RETURN NEW;
	END IF;
	RETURN pg_catalog.jsonb_populate_record(NEW, pg_catalog.jsonb_build_object(col,
		dalgo_internal.toolkit_encrypt(plain, dalgo_internal.toolkit_secret_key())));
END
$$;
COMMENT ON FUNCTION dalgo_internal.set_encrypted_column() IS
	'BEFORE INSERT OR UPDATE trigger storing a column encrypted (arguments: column, organization column, read role); attach it with dalgo.enable_encryption()';

CREATE OR REPLACE FUNCTION dalgo.set_retention(tbl regclass, time_column name, retention_days integer,
								   action text DEFAULT 'delete', columns text[] DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c text;
BEGIN
	IF tbl OPERATOR(pg_catalog.<>) 'dalgo.audit_logs'::regclass THEN
		PERFORM dalgo_internal.toolkit_target(tbl);
		IF (SELECT relkind FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) tbl) = 'p' THEN
			RAISE EXCEPTION '% is partitioned', tbl USING ERRCODE = 'wrong_object_type',
				HINT = 'Expire the rows of a partitioned table by detaching and dropping its old partitions.';
		END IF;
	ELSIF time_column <> 'created_at' OR action <> 'delete' THEN
		RAISE EXCEPTION 'the audit trail only expires by created_at, with delete' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM dalgo_internal.toolkit_column(tbl, time_column, ARRAY['timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype]);
	IF action IS NULL OR action NOT IN ('delete', 'anonymize') THEN
		RAISE EXCEPTION 'action must be delete or anonymize' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF action = 'anonymize' THEN
		IF columns IS NULL OR pg_catalog.cardinality(columns) = 0 THEN
			RAISE EXCEPTION 'anonymize needs the columns to set to NULL' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		FOREACH c IN ARRAY columns LOOP
			PERFORM dalgo_internal.toolkit_column(tbl, c, NULL);
			IF EXISTS (SELECT FROM pg_catalog.pg_attribute WHERE attrelid OPERATOR(pg_catalog.=) tbl
					   AND attname OPERATOR(pg_catalog.=) c AND attnotnull) THEN
				RAISE EXCEPTION 'column "%" of % is NOT NULL and cannot be anonymized', c, tbl
					USING ERRCODE = 'invalid_parameter_value';
			END IF;
		END LOOP;
	ELSIF columns IS NOT NULL THEN
		RAISE EXCEPTION 'columns are only for anonymize' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	INSERT INTO dalgo.retention_policies AS p (table_name, time_column, retention_days, action, columns)
		VALUES (tbl, time_column, retention_days, action, columns)
		ON CONFLICT (table_name) DO UPDATE
		SET time_column = excluded.time_column, retention_days = excluded.retention_days,
			action = excluded.action, columns = excluded.columns, enabled = true;
	IF tbl OPERATOR(pg_catalog.<>) 'dalgo.audit_logs'::regclass THEN
		PERFORM dalgo_internal.toolkit_ensure_index(tbl, time_column);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.set_retention(regclass, name, integer, text, text[]) IS
	'Add or replace a table''s retention policy: rows whose time_column is older than retention_days are deleted, or (action anonymize) have columns set to NULL, by dalgo.apply_retention(). Superusers (the policies table is theirs)';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_column(tbl regclass, col name, types regtype[]) RETURNS regtype
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t regtype;
BEGIN
	SELECT a.atttypid::regtype INTO t FROM pg_catalog.pg_attribute a
	WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) col
	  AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped;
	IF t IS NULL THEN
		RAISE EXCEPTION 'column "%" of % does not exist', col, tbl USING ERRCODE = 'undefined_column';
	END IF;
	IF types IS NOT NULL AND NOT t OPERATOR(pg_catalog.=) ANY (types) THEN
		RAISE EXCEPTION 'column "%" of % is of type %, not %', col, tbl, t, pg_catalog.array_to_string(types, ' or ')
			USING ERRCODE = 'datatype_mismatch';
	END IF;
	RETURN t;
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_column(regclass, name, regtype[]) IS
	'Internal: the type of a column, which must exist and be of one of the given types';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_condition(tbl regclass, condition text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_toolkit_condition'
	LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION dalgo_internal.toolkit_condition(regclass, text) IS
	'Internal: parses and analyzes a public-read condition (one boolean expression over the table''s own columns, no subquery, only immutable functions) and returns it deparsed';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_decrypt(stored text, key text) RETURNS text
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p text;
	k text;
	q text;
BEGIN
	IF stored IS NULL OR NOT pg_catalog.starts_with(stored, 'dalgo:pgp1:') THEN
		RETURN stored;
	END IF;
	q := pg_catalog.format('SELECT %s.pgp_sym_decrypt($1, $2)', dalgo_internal.toolkit_pgcrypto());
	-- The current key first, then the previous one (see rotate_secret_key).
	FOREACH k IN ARRAY pg_catalog.string_to_array(key, E'\n') LOOP
		BEGIN
			EXECUTE q INTO p USING pg_catalog.decode(pg_catalog.substr(stored, 12), 'base64'), k;
			RETURN p;
		EXCEPTION WHEN external_routine_invocation_exception OR data_exception THEN
			NULL;
		END;
	END LOOP;
	RAISE EXCEPTION 'a stored secret cannot be decrypted with the current or the previous key'
		USING ERRCODE = 'data_corrupted';
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_decrypt(text, text) IS
	'Internal: decrypt a value stored by dalgo_internal.toolkit_encrypt(), with the current key or else the previous one';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_drop_policies(tbl regclass, prefix text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p name;
	target text := dalgo_internal.toolkit_target(tbl);
BEGIN
	FOR p IN SELECT polname FROM pg_catalog.pg_policy
			 WHERE polrelid OPERATOR(pg_catalog.=) tbl AND pg_catalog.starts_with(polname, prefix)
	LOOP
		EXECUTE pg_catalog.format('DROP POLICY %I ON %s', p, target);
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_drop_policies(regclass, text) IS 'Internal: drops the policies a pattern created';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_encrypt(plain text, key text) RETURNS text
	LANGUAGE plpgsql VOLATILE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c bytea;
BEGIN
	IF plain IS NULL OR pg_catalog.starts_with(plain, 'dalgo:pgp1:') THEN
		RETURN plain;
	END IF;
	EXECUTE pg_catalog.format('SELECT %s.pgp_sym_encrypt($1, $2, %L)', dalgo_internal.toolkit_pgcrypto(), 'cipher-algo=aes256')
		INTO c USING plain, pg_catalog.split_part(key, E'\n', 1);
	RETURN 'dalgo:pgp1:' || pg_catalog.translate(pg_catalog.encode(c, 'base64'), E'\n', '');
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_encrypt(text, text) IS 'Internal: pgp_sym_encrypt (AES-256) a value into dalgo''s stored form';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_ensure_index(tbl regclass, col name) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	attnum int2;
BEGIN
	SELECT a.attnum INTO attnum FROM pg_catalog.pg_attribute a
	WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) col AND NOT a.attisdropped;
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_index i
				   WHERE i.indrelid OPERATOR(pg_catalog.=) tbl AND i.indkey[0] OPERATOR(pg_catalog.=) attnum
					 AND i.indpred IS NULL AND i.indisvalid) THEN
		EXECUTE pg_catalog.format('CREATE INDEX ON %s (%I)', dalgo_internal.toolkit_target(tbl), col);
		RAISE NOTICE 'dalgo: created an index on %(%)', tbl, col;
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_ensure_index(regclass, name) IS
	'Internal: creates the btree index a policy pattern needs on a column (with a NOTICE) unless an index leads with it';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_org_test(col name, role dalgo.member_role) RETURNS text
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
	RETURN pg_catalog.format('%I OPERATOR(pg_catalog.=) ANY ((SELECT dalgo.current_org_ids(%L::dalgo.member_role))::uuid[])',
							 col, role);
COMMENT ON FUNCTION dalgo_internal.toolkit_org_test(name, dalgo.member_role) IS
	'Internal: the policy expression testing membership at a role, an initPlan over dalgo.current_org_ids()';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_own_test(col name) RETURNS text
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
	RETURN pg_catalog.format('%I OPERATOR(pg_catalog.=) (SELECT dalgo.current_user_id())', col);
COMMENT ON FUNCTION dalgo_internal.toolkit_own_test(name) IS
	'Internal: the policy expression testing ownership, an initPlan over dalgo.current_user_id()';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_pgcrypto() RETURNS text
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	nsp text;
BEGIN
	SELECT pg_catalog.quote_ident(n.nspname) INTO nsp
	FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
	WHERE e.extname = 'pgcrypto';
	IF nsp IS NULL THEN
		RAISE EXCEPTION 'encryption at rest needs the pgcrypto extension' USING ERRCODE = 'undefined_object',
			HINT = 'CREATE EXTENSION pgcrypto;';
	END IF;
	RETURN nsp;
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_pgcrypto() IS 'Internal: the quoted schema of pgcrypto; raises if it is not installed';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_policy(tbl regclass, policy name, command text, roles text, using_expr text,
									 check_expr text, description text)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
BEGIN
	EXECUTE pg_catalog.format('CREATE POLICY %I ON %s FOR %s TO %s', policy, target, command, roles)
		|| CASE WHEN using_expr IS NOT NULL THEN ' USING (' || using_expr || ')' ELSE '' END
		|| CASE WHEN check_expr IS NOT NULL THEN ' WITH CHECK (' || check_expr || ')' ELSE '' END;
	EXECUTE pg_catalog.format('COMMENT ON POLICY %I ON %s IS %L', policy, target, description || ' (dalgo toolkit)');
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_policy(regclass, name, text, text, text, text, text) IS
	'Internal: creates one policy of a pattern, with its comment';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_policy_problems(qual pg_node_tree) RETURNS text[]
	AS 'MODULE_PATHNAME', 'dalgo_toolkit_policy_problems'
	LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION dalgo_internal.toolkit_policy_problems(pg_node_tree) IS
	'Internal: the volatile and per-row function calls of a policy expression, for dalgo.security_report()';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_prepare(tbl regclass, roles text[], service_writes boolean DEFAULT true)
	RETURNS text
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	nsp oid := (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) tbl);
	r text;
	s text;
BEGIN
	EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', target);
	EXECUTE pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', target);
	FOREACH r IN ARRAY roles || ARRAY['dalgo_service'] LOOP
		IF NOT pg_catalog.has_schema_privilege(r, nsp, 'USAGE') THEN
			EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %I TO %I', nsp::regnamespace::text, r);
		END IF;
		-- Sequences behind identity and serial columns, for INSERT.
		FOR s IN SELECT pg_catalog.format('%I.%I', sn.nspname, sc.relname)
				 FROM pg_catalog.pg_depend d
				 JOIN pg_catalog.pg_class sc ON sc.oid OPERATOR(pg_catalog.=) d.objid AND sc.relkind = 'S'
				 JOIN pg_catalog.pg_namespace sn ON sn.oid OPERATOR(pg_catalog.=) sc.relnamespace
				 WHERE d.refobjid OPERATOR(pg_catalog.=) tbl AND d.classid = 'pg_catalog.pg_class'::regclass
				   AND d.deptype IN ('a', 'i')
		LOOP
			IF r <> 'dalgo_anon' THEN
				EXECUTE pg_catalog.format('GRANT USAGE ON SEQUENCE %s TO %I', s, r);
			END IF;
		END LOOP;
	END LOOP;
	PERFORM dalgo_internal.toolkit_drop_policies(tbl, 'dalgo_service');
	IF service_writes THEN
		EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO dalgo_service', target);
		EXECUTE pg_catalog.format('CREATE POLICY dalgo_service ON %s TO dalgo_service USING (true) WITH CHECK (true)', target);
		EXECUTE pg_catalog.format('COMMENT ON POLICY dalgo_service ON %s IS %L', target, 'dalgo_service passes (dalgo toolkit)');
	ELSE
		EXECUTE pg_catalog.format('GRANT SELECT, INSERT ON %s TO dalgo_service', target);
		EXECUTE pg_catalog.format('REVOKE UPDATE, DELETE, TRUNCATE ON %s FROM dalgo_service', target);
		EXECUTE pg_catalog.format('CREATE POLICY dalgo_service_select ON %s FOR SELECT TO dalgo_service USING (true)', target);
		EXECUTE pg_catalog.format('CREATE POLICY dalgo_service_insert ON %s FOR INSERT TO dalgo_service WITH CHECK (true)', target);
		EXECUTE pg_catalog.format('COMMENT ON POLICY dalgo_service_select ON %s IS %L', target, 'dalgo_service reads (dalgo toolkit, immutable rows)');
		EXECUTE pg_catalog.format('COMMENT ON POLICY dalgo_service_insert ON %s IS %L', target, 'dalgo_service inserts (dalgo toolkit, immutable rows)');
	END IF;
	RETURN target;
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_prepare(regclass, text[], boolean) IS
	'Internal: enables and forces row-level security, grants the schema and sequences to the app roles and lets dalgo_service through';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_read_secret(tbl regclass, "column" name, id text, check_membership boolean) RETURNS text
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	args text[];
	pk name;
	pktype text;
	is_json boolean;
	org uuid;
	stored jsonb;
BEGIN
	-- Only columns a superuser handed to enable_encryption().
	SELECT pg_catalog.string_to_array(pg_catalog.rtrim(pg_catalog.encode(t.tgargs, 'escape'), E'\\000'), E'\\000') INTO args
	FROM pg_catalog.pg_trigger t
	WHERE t.tgrelid OPERATOR(pg_catalog.=) tbl AND t.tgname OPERATOR(pg_catalog.=) ('dalgo_encrypt_' || "column")::name
	  AND t.tgfoid OPERATOR(pg_catalog.=) 'dalgo_internal.set_encrypted_column()'::regprocedure;
	IF args IS NULL OR args[1] OPERATOR(pg_catalog.<>) "column" THEN
		RAISE EXCEPTION 'column "%" of % is not encrypted by dalgo', "column", tbl USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) INTO pk, pktype
	FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_attribute a
		ON a.attrelid OPERATOR(pg_catalog.=) c.conrelid AND a.attnum OPERATOR(pg_catalog.=) c.conkey[1]
	WHERE c.conrelid OPERATOR(pg_catalog.=) tbl AND c.contype = 'p';
	SELECT a.atttypid IN ('json'::regtype, 'jsonb'::regtype) INTO is_json FROM pg_catalog.pg_attribute a
	WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) "column";
	EXECUTE pg_catalog.format('SELECT %I, pg_catalog.to_jsonb(%I) FROM %s WHERE %I OPERATOR(pg_catalog.=) $1::%s',
							  args[2], "column", tbl, pk, pktype)
		INTO org, stored USING id;
	IF check_membership AND NOT coalesce(org OPERATOR(pg_catalog.=) ANY (dalgo.current_org_ids(args[3]::dalgo.member_role)), false) THEN
		RETURN NULL;
	END IF;
	RETURN dalgo_internal.toolkit_decrypt(dalgo_internal.toolkit_stored_text(stored, is_json), dalgo_internal.toolkit_secret_key());
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_read_secret(regclass, name, text, boolean) IS
	'Internal: the plaintext of one encrypted value, by the row''s primary key, with or without the membership check';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_rewrite_unaudited(tbl regclass, stmt text, arg1 text DEFAULT NULL, arg2 text DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
	quiet name[];
	t name;
	n bigint;
BEGIN
	SELECT pg_catalog.array_agg(tgname) INTO quiet FROM pg_catalog.pg_trigger
	WHERE tgrelid OPERATOR(pg_catalog.=) tbl AND tgname IN ('dalgo_audit', 'dalgo_audit_update') AND tgenabled <> 'D';
	FOREACH t IN ARRAY coalesce(quiet, '{}') LOOP
		EXECUTE pg_catalog.format('ALTER TABLE %s DISABLE TRIGGER %I', target, t);
	END LOOP;
	EXECUTE stmt USING arg1, arg2;
	GET DIAGNOSTICS n = ROW_COUNT;
	FOREACH t IN ARRAY coalesce(quiet, '{}') LOOP
		EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE TRIGGER %I', target, t);
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_rewrite_unaudited(regclass, text, text, text) IS
	'Internal: runs an UPDATE that encrypts or decrypts a column in place with the table''s audit triggers off';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_secret_key() RETURNS text
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
BEGIN
	IF k IS NULL OR k = '' THEN
		RAISE EXCEPTION 'no secret key is set' USING ERRCODE = 'object_not_in_prerequisite_state',
			HINT = 'A superuser sets one with SELECT dalgo.rotate_secret_key();';
	END IF;
	RETURN k;
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_secret_key() IS
	'Internal: the encryption key, read from dalgo_secret.key in the data directory';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_stored_text(value jsonb, is_json boolean) RETURNS text
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
	RETURN CASE WHEN value IS NULL OR value OPERATOR(pg_catalog.=) 'null'::jsonb THEN NULL
				WHEN NOT is_json OR pg_catalog.jsonb_typeof(value) = 'string' THEN value OPERATOR(pg_catalog.#>>) '{}'::text[]
				ELSE value::text END;
COMMENT ON FUNCTION dalgo_internal.toolkit_stored_text(jsonb, boolean) IS 'Internal: the text that encryption reads from a column value';

CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_target(tbl regclass) RETURNS text
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c record;
BEGIN
	SELECT n.nspname, r.relname, r.relkind, r.relowner, r.relpersistence INTO c
	FROM pg_catalog.pg_class r JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) r.relnamespace
	WHERE r.oid OPERATOR(pg_catalog.=) tbl;
	IF NOT FOUND OR c.relkind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = 'wrong_object_type';
	END IF;
	IF c.nspname = 'dalgo' THEN
		RAISE EXCEPTION 'dalgo''s own tables have their own policies' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'The toolkit secures the tables of other schemas.';
	END IF;
	IF c.relpersistence = 't' THEN
		RAISE EXCEPTION '% is a temporary table', tbl USING ERRCODE = 'wrong_object_type';
	END IF;
	IF NOT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') THEN
		RAISE EXCEPTION 'must be owner of table %', c.relname USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN pg_catalog.format('%I.%I', c.nspname, c.relname);
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_target(regclass) IS
	'Internal: the qualified name of a table the caller owns, outside schema dalgo; raises otherwise';


-- lead: one run relation and one warehouse-size helper for the quotas;
-- swap_warehouse_table alone keeps the output views around a refresh's swaps.
CREATE OR REPLACE VIEW dalgo_internal.scheduled_runs AS
	SELECT 's'::text AS run_kind, r.id, r.organization_id, r.source_id, NULL::uuid AS transformation_id, r.details,
		   r.status, r.started_at
	FROM dalgo.sync_runs r
	UNION ALL
	SELECT 'o'::text, r.id, r.organization_id, NULL::uuid, r.transformation_id, r.details, r.status, r.started_at
	FROM dalgo.transformation_runs r;
COMMENT ON VIEW dalgo_internal.scheduled_runs IS
	'Internal: sync runs (run_kind s) and transformation runs (run_kind o) as one relation, for the scheduler''s steps and the run quotas';

CREATE FUNCTION dalgo_internal.warehouse_bytes(organization_id uuid, excluding text DEFAULT NULL) RETURNS bigint
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(sum(pg_total_relation_size(c.oid))::bigint, 0) FROM pg_class c
	WHERE c.relnamespace = to_regnamespace(dalgo_internal.warehouse_schema_name(warehouse_bytes.organization_id))
	  AND c.relkind IN ('r', 'm', 'p') AND c.relname IS DISTINCT FROM warehouse_bytes.excluding
$$;
COMMENT ON FUNCTION dalgo_internal.warehouse_bytes(uuid, text) IS
	'Internal: bytes of the organization''s warehouse tables (pg_total_relation_size), without the table named by excluding';
REVOKE ALL ON FUNCTION dalgo_internal.warehouse_bytes(uuid, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION dalgo_internal.organization_usage(organization_id uuid, OUT quota text, OUT used bigint, OUT quota_limit bigint)
	RETURNS SETOF record
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := organization_usage.organization_id;
BEGIN
	quota := 'warehouse_bytes';
	used := dalgo_internal.warehouse_bytes(org);
	quota_limit := dalgo_internal.organization_quota(org, quota);
	RETURN NEXT;
	quota := 'concurrent_runs';
	used := (SELECT count(*) FROM dalgo_internal.scheduled_runs r WHERE r.organization_id = org AND r.status = 'running');
	quota_limit := dalgo_internal.organization_quota(org, quota);
	RETURN NEXT;
	quota := 'runs_per_hour';
	used := (SELECT count(*) FROM dalgo_internal.scheduled_runs r WHERE r.organization_id = org
			 AND r.started_at > now() - interval '1 hour' AND NOT r.details ? 'skipped');
	quota_limit := dalgo_internal.organization_quota(org, quota);
	RETURN NEXT;
	quota := 'run_seconds';
	used := NULL;
	quota_limit := dalgo_internal.organization_quota(org, quota);
	RETURN NEXT;
END
$$;
COMMENT ON FUNCTION dalgo_internal.organization_usage(uuid) IS
	'Internal: an organization''s usage and limit for each quota (see dalgo.quota_usage)';

CREATE OR REPLACE FUNCTION dalgo_internal.check_run_quota(organization_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := check_run_quota.organization_id;
	me text := pg_backend_pid()::text;
	slot bigint := hashtextextended('dalgo run slot ' || org::text, 0);
	gate bigint := hashtextextended('dalgo run gate ' || org::text, 0);
	old_timeout text := current_setting('lock_timeout');
	others text[];
	unseen bigint;
	lim bigint;
	n bigint;
BEGIN
	-- Advisory lock keys are one namespace for every role: a session that
	-- holds this one must not stall the organization's runs for ever.
	BEGIN
		PERFORM set_config('lock_timeout', '10s', true);
		PERFORM pg_advisory_lock(gate);
		PERFORM set_config('lock_timeout', old_timeout, true);
	EXCEPTION WHEN lock_not_available THEN
		RAISE EXCEPTION 'the quota check of organization % is busy', org
			USING ERRCODE = 'lock_not_available',
				  DETAIL = 'Another session held the organization''s run gate for 10 seconds.',
				  HINT = 'Try again.';
	END;
	BEGIN
		-- Other backends executing a run of the organization now.
		others := ARRAY(SELECT DISTINCT l.pid::text FROM pg_locks l
						WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid()
						  AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
						  AND l.classid = ((slot >> 32) & 4294967295)::text::oid
						  AND l.objid = (slot & 4294967295)::text::oid AND l.objsubid = 1);
		-- ... of which this snapshot sees no running row yet.
		unseen := (SELECT count(*) FROM unnest(others) p
				   WHERE NOT EXISTS (SELECT FROM dalgo_internal.scheduled_runs r WHERE r.organization_id = org
									 AND r.status = 'running' AND r.details->>'runner_pid' = p));
		lim := dalgo_internal.organization_quota(org, 'concurrent_runs');
		IF lim IS NOT NULL THEN
			n := (SELECT count(*) FROM dalgo_internal.scheduled_runs r WHERE r.organization_id = org AND r.status = 'running'
				  AND r.details->>'runner_pid' IS DISTINCT FROM me)
			   + unseen;
			IF n >= lim THEN
				RAISE EXCEPTION 'quota concurrent_runs exceeded: % runs of the organization are in progress, the limit is %', n, lim
					USING ERRCODE = 'configuration_limit_exceeded',
						  HINT = 'Wait for a run to finish; a superuser can raise the quota.';
			END IF;
		END IF;
		lim := dalgo_internal.organization_quota(org, 'runs_per_hour');
		IF lim IS NOT NULL THEN
			n := (SELECT count(*) FROM dalgo_internal.scheduled_runs r WHERE r.organization_id = org
				  AND r.started_at > now() - interval '1 hour' AND NOT r.details ? 'skipped'
				  AND NOT (r.status = 'running' AND r.details->>'runner_pid' = me))
			   + unseen;
			IF n >= lim THEN
				RAISE EXCEPTION 'quota runs_per_hour exceeded: the organization started % runs in the last hour, the limit is %', n, lim
					USING ERRCODE = 'configuration_limit_exceeded',
						  HINT = 'Try again later; a superuser can raise the quota.';
			END IF;
		END IF;
		PERFORM dalgo_internal.check_warehouse_quota(org, NULL);
		PERFORM pg_advisory_xact_lock_shared(slot);
	EXCEPTION WHEN OTHERS OR query_canceled THEN
		PERFORM pg_advisory_unlock(gate);
		RAISE;
	END;
	PERFORM pg_advisory_unlock(gate);
END
$$;
COMMENT ON FUNCTION dalgo_internal.check_run_quota(uuid) IS
	'Internal: refuse a run that would exceed the organization''s concurrent_runs, runs_per_hour or warehouse_bytes quota';

CREATE OR REPLACE FUNCTION dalgo_internal.check_warehouse_quota(organization_id uuid, replacing text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := check_warehouse_quota.organization_id;
	lim bigint := dalgo_internal.organization_quota(org, 'warehouse_bytes');
	n bigint;
BEGIN
	IF lim IS NULL THEN
		RETURN;
	END IF;
	n := dalgo_internal.warehouse_bytes(org, replacing);
	IF n > lim OR (replacing IS NULL AND n >= lim) THEN
		RAISE EXCEPTION 'quota warehouse_bytes exceeded: the warehouse % % bytes, the limit is %',
			CASE WHEN replacing IS NULL THEN 'holds' ELSE 'would hold' END, n, lim
			USING ERRCODE = 'configuration_limit_exceeded',
				  HINT = 'Drop tables or outputs the organization no longer needs; a superuser can raise the quota.';
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.check_warehouse_quota(uuid, text) IS
	'Internal: refuse when the organization''s warehouse is over its warehouse_bytes quota (not counting the table a swap replaces)';

CREATE OR REPLACE FUNCTION dalgo_internal.refresh_output(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.transformation_runs;
	o dalgo.outputs;
	t dalgo.transformations;
	v record;
	schema_name text;
	dest text;
	kind text;
BEGIN
	PERFORM dalgo_internal.verify_scheduled_run('o', run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;
	SELECT * INTO o FROM dalgo.outputs x
	WHERE x.id = (SELECT s.output_id FROM dalgo.schedules s WHERE s.id = (r.details->>'schedule_id')::uuid);
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = o.transformation_id;
	schema_name := dalgo_internal.warehouse_schema_name(o.organization_id);
	kind := coalesce(o.destination_config->>'type', 'table');
	dest := coalesce(o.destination_config->>'name', t.output_table_name);
	IF kind NOT IN ('table', 'view') THEN
		RAISE EXCEPTION 'unknown destination type "%" (use table or view)', kind USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF kind = 'view' AND dest = t.output_table_name THEN
		RAISE EXCEPTION 'a view destination needs a name other than the transformation''s table "%"', dest
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Set destination_config.name.';
	END IF;
	-- destination_config.name is a member's text: it may name only what this
	-- output makes.  Longer names would be truncated to another table's name.
	IF dest = '' OR octet_length(dest) >= 64 OR dest LIKE '\_dalgo\_%' THEN
		RAISE EXCEPTION 'output destination name "%" is not allowed', dest
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use a name of 1 to 63 bytes that does not start with _dalgo_.';
	END IF;
	IF dest <> t.output_table_name AND to_regclass(format('%I.%I', schema_name, dest)) IS NOT NULL
	   AND NOT (CASE WHEN kind = 'view' THEN dalgo_internal.output_view_reads(o.organization_id, dest, t.output_table_name)
				ELSE EXISTS (SELECT FROM dalgo.warehouse_tables w
							 WHERE w.organization_id = o.organization_id AND w.table_name = dest
							   AND w.deleted_at IS NULL AND w.output_id = o.id) END) THEN
		RAISE EXCEPTION 'output destination "%" exists and was not made by this output', dest
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'An output replaces only a table or view that its own refreshes made.',
				  HINT = 'Set destination_config.name to a new name.';
	END IF;

	-- Each swap below keeps the output views over its table
	-- (swap_warehouse_table drops and restores them).
	FOR v IN SELECT u.id FROM dalgo.transformation_upstream(t.id) u LOOP
		PERFORM dalgo.run_transformation(v.id, false);
	END LOOP;
	PERFORM dalgo_internal.build_transformation(t.id, run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;

	IF r.status <> 'success' THEN
		RETURN;
	END IF;
	IF kind = 'view' THEN
		PERFORM dalgo_internal.warehouse_execute(o.organization_id, format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I',
			schema_name, dest, schema_name, t.output_table_name));
	ELSIF dest <> t.output_table_name THEN
		PERFORM dalgo_internal.warehouse_execute(o.organization_id, format('CREATE TABLE %I.%I AS SELECT * FROM %I.%I',
			schema_name, '_dalgo_out_' || replace(run_id::text, '-', ''), schema_name, t.output_table_name));
		PERFORM dalgo_internal.check_warehouse_quota(o.organization_id, dest);
		-- The swap records this output as the table's producer.
		PERFORM dalgo_internal.swap_warehouse_table(o.organization_id, '_dalgo_out_' || replace(run_id::text, '-', ''), dest);
	END IF;
	UPDATE dalgo.outputs x SET last_refreshed_at = now() WHERE x.id = o.id;
END
$$;
COMMENT ON FUNCTION dalgo_internal.refresh_output(uuid) IS
	'Internal: run an output''s transformation with its upstream, then refresh destination_config ({"type": "table"|"view", "name": ...}); output views over rebuilt tables are dropped and created again around the swap';


-- lead: run kinds are the enum dalgo.run_kind (sync, output); claim_due_schedules reports
-- the outcome (queued, connector, skipped) apart from the kind.  The functions that take a
-- kind change signature, so they are dropped and created again (all internal).
DROP VIEW dalgo_internal.scheduled_runs;
DROP FUNCTION dalgo_internal.start_scheduled_run(text, uuid);
DROP FUNCTION dalgo_internal.fail_scheduled_run(text, uuid, text);
DROP FUNCTION dalgo_internal.set_scheduled_run_status(text, uuid, dalgo.run_status, text, jsonb);
DROP FUNCTION dalgo_internal.verify_scheduled_run(text, uuid);
DROP FUNCTION dalgo_internal.execute_scheduled_run(text, uuid);
DROP FUNCTION dalgo_internal.execute_claimed(uuid[], text[]);
DROP FUNCTION dalgo_internal.claim_due_schedules(timestamptz, integer, uuid);
DROP FUNCTION dalgo_internal.claim_pending_run();

-- What a scheduled run does: sync a source (a sync_runs row) or refresh an
-- output (a transformation_runs row).  The one name for the two kinds, in
-- SQL and in the run workers.
CREATE TYPE dalgo.run_kind AS ENUM ('sync', 'output');
COMMENT ON TYPE dalgo.run_kind IS
	'What a scheduled run does: sync (a source, recorded in sync_runs) or output (an output refresh, recorded in transformation_runs)';

-- The two run tables seen as one, for the scheduler's steps: run_kind sync
-- is a sync run (sync_runs), output an output refresh (transformation_runs).
CREATE VIEW dalgo_internal.scheduled_runs AS
	SELECT 'sync'::dalgo.run_kind AS run_kind, r.id, r.organization_id, r.source_id, NULL::uuid AS transformation_id, r.details,
		   r.status, r.started_at
	FROM dalgo.sync_runs r
	UNION ALL
	SELECT 'output'::dalgo.run_kind, r.id, r.organization_id, NULL::uuid, r.transformation_id, r.details, r.status, r.started_at
	FROM dalgo.transformation_runs r;
COMMENT ON VIEW dalgo_internal.scheduled_runs IS
	'Internal: sync runs (run_kind sync) and transformation runs (run_kind output) as one relation, for the scheduler''s steps and the run quotas';

-- Claim due schedules: lock with SKIP LOCKED, advance next_run_at past "at"
-- (missed slots run once), skip a schedule whose previous run is still going,
-- and create the run row.  outcome: 'queued' (a pending run for the run
-- workers), 'connector' (a pending sync for an outside connector, NOTIFY
-- dalgo_sync with an empty payload) or 'skipped' (a failed run row).
CREATE FUNCTION dalgo_internal.claim_due_schedules(at timestamptz, max_runs integer, only_schedule uuid DEFAULT NULL)
	RETURNS TABLE (schedule_id uuid, run_kind dalgo.run_kind, run_id uuid, outcome text)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s dalgo.schedules;
	src dalgo.sources;
	out dalgo.outputs;
	busy boolean;
	det jsonb;
	rid uuid;
BEGIN
	IF max_runs <= 0 THEN
		RETURN;
	END IF;
	-- Fair between organizations: each organization's oldest due schedule
	-- first, then each one's second, and so on, so that one organization's
	-- backlog never holds another's due schedule back to a later tick.  The
	-- due test is repeated on x: a row another claimer committed in between is
	-- re-checked after its lock.
	-- The limit applies after SKIP LOCKED: a schedule row another
	-- transaction holds (run_schedule_now's run, an open UPDATE) is passed
	-- over and does not use up a place, so locked rows cannot crowd every
	-- other organization's due schedule out of the claim.
	FOR s IN SELECT x.* FROM dalgo.schedules x
			 JOIN (SELECT y.id,
						  row_number() OVER (PARTITION BY y.organization_id ORDER BY y.next_run_at, y.id) AS turn
				   FROM dalgo.schedules y
				   WHERE y.is_active AND y.deleted_at IS NULL AND y.next_run_at <= at
					 AND (only_schedule IS NULL OR y.id = only_schedule)) d ON d.id = x.id
			 WHERE x.is_active AND x.deleted_at IS NULL AND x.next_run_at <= at
			   AND (only_schedule IS NULL OR x.id = only_schedule)
			 ORDER BY d.turn, x.next_run_at, x.id
			 LIMIT max_runs
			 FOR UPDATE OF x SKIP LOCKED
	LOOP
		det := jsonb_build_object('schedule_id', s.id, 'attempt', 1,
								  'lag_ms', round(extract(epoch FROM clock_timestamp() - s.next_run_at) * 1000));
		UPDATE dalgo.schedules x SET last_run_at = at,
			next_run_at = dalgo.next_run(s.frequency, s.run_at_time, s.run_at_day, s.timezone, greatest(at, s.next_run_at))
		WHERE x.id = s.id;
		schedule_id := s.id;
		IF s.source_id IS NOT NULL THEN
			run_kind := 'sync';
			SELECT * INTO src FROM dalgo.sources x WHERE x.id = s.source_id;
			busy := EXISTS (SELECT FROM dalgo.sync_runs r WHERE r.source_id = s.source_id
							AND r.status IN ('pending', 'running') AND r.deleted_at IS NULL);
			IF busy THEN
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, started_at, completed_at, error_message, details)
				VALUES (s.organization_id, s.source_id, 'failed', clock_timestamp(), clock_timestamp(),
						'skipped: the previous run of this schedule is still going', det || '{"skipped": true}')
				RETURNING id INTO rid;
				outcome := 'skipped';
			ELSE
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, details)
				VALUES (s.organization_id, s.source_id, 'pending', det) RETURNING id INTO rid;
				IF dalgo.is_connector_source(src.source_type) THEN
					-- Anyone can LISTEN: the payload is empty, connectors learn
					-- the work from claim_sync_run().
					PERFORM pg_notify('dalgo_sync', '');
					outcome := 'connector';
				ELSE
					outcome := 'queued';
				END IF;
			END IF;
		ELSE
			run_kind := 'output';
			SELECT * INTO out FROM dalgo.outputs x WHERE x.id = s.output_id;
			busy := EXISTS (SELECT FROM dalgo.transformation_runs r WHERE r.transformation_id = out.transformation_id
							AND r.status IN ('pending', 'running') AND r.details->>'schedule_id' = s.id::text);
			INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, started_at, completed_at,
												   error_message, details)
			VALUES (s.organization_id, out.transformation_id, CASE WHEN busy THEN 'failed' ELSE 'pending' END::dalgo.run_status,
					CASE WHEN busy THEN clock_timestamp() END, CASE WHEN busy THEN clock_timestamp() END,
					CASE WHEN busy THEN 'skipped: the previous run of this schedule is still going' END,
					det || CASE WHEN busy THEN '{"skipped": true}'::jsonb ELSE '{}'::jsonb END)
			RETURNING id INTO rid;
			outcome := CASE WHEN busy THEN 'skipped' ELSE 'queued' END;
		END IF;
		run_id := rid;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo_internal.claim_due_schedules(timestamptz, integer, uuid) IS
	'Internal: claim up to max_runs due schedules (FOR UPDATE SKIP LOCKED), advance them and create their run rows; outcome is queued (for the run workers), connector or skipped';

-- Take a pending in-database run (SKIP LOCKED) and mark it running; run
-- workers loop on this until nothing is left.  The queue is fair between
-- organizations: the organization with the fewest runs already running goes
-- first, and within that order the one waiting longest; inside an
-- organization, syncs before output refreshes, oldest first.  One
-- organization's backlog therefore never starves another's due run.
CREATE FUNCTION dalgo_internal.claim_pending_run(OUT run_kind dalgo.run_kind, OUT run_id uuid)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
BEGIN
	FOR org IN
		WITH queued AS (
			SELECT r.organization_id, r.status, r.created_at
			FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
			WHERE r.status IN ('pending', 'running') AND NOT dalgo.is_connector_source(s.source_type)
			  AND r.details ? 'schedule_id'
			UNION ALL
			SELECT r.organization_id, r.status, r.created_at FROM dalgo.transformation_runs r
			WHERE r.status IN ('pending', 'running') AND r.details ? 'schedule_id')
		SELECT q.organization_id FROM queued q
		GROUP BY q.organization_id
		HAVING bool_or(q.status = 'pending')
		ORDER BY count(*) FILTER (WHERE q.status = 'running'), min(q.created_at) FILTER (WHERE q.status = 'pending'),
				 q.organization_id
	LOOP
		SELECT 'sync', r.id INTO run_kind, run_id FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
		WHERE r.status = 'pending' AND r.organization_id = org AND NOT dalgo.is_connector_source(s.source_type)
		  AND r.details ? 'schedule_id'
		ORDER BY r.created_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED;
		IF NOT FOUND THEN
			SELECT 'output', r.id INTO run_kind, run_id FROM dalgo.transformation_runs r
			WHERE r.status = 'pending' AND r.organization_id = org AND r.details ? 'schedule_id'
			ORDER BY r.created_at LIMIT 1 FOR UPDATE SKIP LOCKED;
		END IF;
		EXIT WHEN run_id IS NOT NULL;
	END LOOP;
	IF run_id IS NOT NULL THEN
		PERFORM dalgo_internal.start_scheduled_run(run_kind, run_id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.claim_pending_run() IS
	'Internal: a run worker takes a pending in-database run and marks it running: the organization with the fewest running runs first, then the one waiting longest';

-- The one place that writes a run's state by kind: running (started_at
-- and extra details) or finished (completed_at, error_message, details).
CREATE FUNCTION dalgo_internal.set_scheduled_run_status(run_kind dalgo.run_kind, run_id uuid, status dalgo.run_status,
														 message text, extra jsonb) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	starting boolean := status = 'running';
BEGIN
	IF run_kind = 'sync' THEN
		UPDATE dalgo.sync_runs r SET status = set_scheduled_run_status.status,
			started_at = CASE WHEN starting THEN clock_timestamp() ELSE r.started_at END,
			completed_at = CASE WHEN starting THEN r.completed_at ELSE clock_timestamp() END,
			error_message = CASE WHEN starting THEN r.error_message ELSE message END,
			details = r.details || coalesce(extra, '{}')
		WHERE r.id = run_id;
	ELSE
		UPDATE dalgo.transformation_runs r SET status = set_scheduled_run_status.status,
			started_at = CASE WHEN starting THEN clock_timestamp() ELSE r.started_at END,
			completed_at = CASE WHEN starting THEN r.completed_at ELSE clock_timestamp() END,
			error_message = CASE WHEN starting THEN r.error_message ELSE message END,
			details = r.details || coalesce(extra, '{}')
		WHERE r.id = run_id;
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.set_scheduled_run_status(dalgo.run_kind, uuid, dalgo.run_status, text, jsonb) IS
	'Internal: set a scheduled run''s status in its table (sync_runs for sync, transformation_runs for output): running stamps started_at, any other status completed_at and error_message; extra is merged into details';
REVOKE ALL ON FUNCTION dalgo_internal.set_scheduled_run_status(dalgo.run_kind, uuid, dalgo.run_status, text, jsonb) FROM PUBLIC;

CREATE FUNCTION dalgo_internal.start_scheduled_run(run_kind dalgo.run_kind, run_id uuid) RETURNS void
	LANGUAGE sql
	SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT dalgo_internal.set_scheduled_run_status(run_kind, run_id, 'running', NULL,
		jsonb_build_object('runner_pid', pg_backend_pid()));
END;
COMMENT ON FUNCTION dalgo_internal.start_scheduled_run(dalgo.run_kind, uuid) IS 'Internal: mark a claimed run running (committed before it executes)';

CREATE FUNCTION dalgo_internal.fail_scheduled_run(run_kind dalgo.run_kind, run_id uuid, message text) RETURNS void
	LANGUAGE sql
	SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT dalgo_internal.set_scheduled_run_status(run_kind, run_id, 'failed', message, NULL);
END;
COMMENT ON FUNCTION dalgo_internal.fail_scheduled_run(dalgo.run_kind, uuid, text) IS 'Internal: record a run''s failure';

-- A run row is acted on only if it is what dalgo's own claim made: its
-- schedule (details.schedule_id) exists and names the run's source, or the
-- output whose transformation is the run's, and schedule, source or output,
-- transformation and run all belong to one organization.  Anything else is
-- refused (the worker then records the run as failed).
CREATE FUNCTION dalgo_internal.verify_scheduled_run(run_kind dalgo.run_kind, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	det jsonb;
	run_org uuid;
	run_source uuid;
	run_transformation uuid;
	sid uuid;
	s dalgo.schedules;
	agree boolean := false;
BEGIN
	SELECT r.details, r.organization_id, r.source_id, r.transformation_id
	INTO det, run_org, run_source, run_transformation
	FROM dalgo_internal.scheduled_runs r WHERE r.run_kind = verify_scheduled_run.run_kind AND r.id = run_id;
	BEGIN
		sid := (det->>'schedule_id')::uuid;
	EXCEPTION WHEN invalid_text_representation THEN
		sid := NULL;
	END;
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = sid;
	IF FOUND AND s.organization_id = run_org THEN
		IF run_kind = 'sync' THEN
			agree := s.source_id = run_source
				AND EXISTS (SELECT FROM dalgo.sources x WHERE x.id = run_source AND x.organization_id = run_org);
		ELSE
			agree := EXISTS (SELECT FROM dalgo.outputs o JOIN dalgo.transformations t ON t.id = o.transformation_id
							 WHERE o.id = s.output_id AND o.organization_id = run_org AND t.organization_id = run_org
							   AND t.id = run_transformation);
		END IF;
	END IF;
	IF NOT coalesce(agree, false) THEN
		RAISE EXCEPTION 'run % was refused: it does not match its schedule', run_id
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'A scheduled run must name the schedule that created it, and schedule, source or output, transformation and run must belong to one organization.';
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.verify_scheduled_run(dalgo.run_kind, uuid) IS
	'Internal: refuse a run row whose schedule, source or output, transformation and organization do not agree (a forged row); sync_source and refresh_output call it first';

CREATE FUNCTION dalgo_internal.execute_scheduled_run(run_kind dalgo.run_kind, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	msg text;
BEGIN
	-- A run refused by a quota did not start: it fails with the quota's
	-- message and, like a skipped slot, does not count against runs_per_hour
	-- (else an organization whose schedules ask for more than its quota
	-- would be refused for good, each refusal filling the next hour).
	BEGIN
		PERFORM dalgo_internal.check_run_quota((SELECT r.organization_id FROM dalgo_internal.scheduled_runs r
												WHERE r.run_kind = execute_scheduled_run.run_kind AND r.id = run_id));
	EXCEPTION WHEN configuration_limit_exceeded THEN
		GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
		PERFORM dalgo_internal.set_scheduled_run_status(run_kind, run_id, 'failed', msg,
														 '{"skipped": true, "quota_refused": true}');
		RETURN;
	END;
	IF run_kind = 'sync' THEN
		PERFORM dalgo_internal.sync_source(run_id);
	ELSE
		PERFORM dalgo_internal.refresh_output(run_id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.execute_scheduled_run(dalgo.run_kind, uuid) IS 'Internal: execute a claimed run (what a run worker does); a run over a quota fails without counting as started';

-- Execute claimed runs here and now, each in a subtransaction (the worker's
-- code path without the worker).
CREATE FUNCTION dalgo_internal.execute_claimed(claimed_runs uuid[], kinds dalgo.run_kind[]) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	msg text;
	n integer := 0;
BEGIN
	FOR i IN 1..coalesce(array_length(claimed_runs, 1), 0) LOOP
		CONTINUE WHEN claimed_runs[i] IS NULL;
		PERFORM dalgo_internal.start_scheduled_run(kinds[i], claimed_runs[i]);
		BEGIN
			PERFORM dalgo_internal.execute_scheduled_run(kinds[i], claimed_runs[i]);
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
			PERFORM dalgo_internal.fail_scheduled_run(kinds[i], claimed_runs[i], msg);
		END;
		n := n + 1;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.execute_claimed(uuid[], dalgo.run_kind[]) IS 'Internal: execute claimed runs in this session';

-- An output refresh: the transformation (and what it reads), then the
-- destination.  Output, transformation and organization come from the run's
-- schedule, after verify_scheduled_run checked that the run row agrees.
-- A view destination depends on the table it reads, and a swap drops that
-- table: the organization's output views over the tables this refresh
-- rebuilds are dropped first and created again afterwards.
CREATE OR REPLACE FUNCTION dalgo_internal.refresh_output(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.transformation_runs;
	o dalgo.outputs;
	t dalgo.transformations;
	v record;
	schema_name text;
	dest text;
	kind text;
BEGIN
	PERFORM dalgo_internal.verify_scheduled_run('output', run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;
	SELECT * INTO o FROM dalgo.outputs x
	WHERE x.id = (SELECT s.output_id FROM dalgo.schedules s WHERE s.id = (r.details->>'schedule_id')::uuid);
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = o.transformation_id;
	schema_name := dalgo_internal.warehouse_schema_name(o.organization_id);
	kind := coalesce(o.destination_config->>'type', 'table');
	dest := coalesce(o.destination_config->>'name', t.output_table_name);
	IF kind NOT IN ('table', 'view') THEN
		RAISE EXCEPTION 'unknown destination type "%" (use table or view)', kind USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF kind = 'view' AND dest = t.output_table_name THEN
		RAISE EXCEPTION 'a view destination needs a name other than the transformation''s table "%"', dest
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Set destination_config.name.';
	END IF;
	-- destination_config.name is a member's text: it may name only what this
	-- output makes.  Longer names would be truncated to another table's name.
	IF dest = '' OR octet_length(dest) >= 64 OR dest LIKE '\_dalgo\_%' THEN
		RAISE EXCEPTION 'output destination name "%" is not allowed', dest
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use a name of 1 to 63 bytes that does not start with _dalgo_.';
	END IF;
	IF dest <> t.output_table_name AND to_regclass(format('%I.%I', schema_name, dest)) IS NOT NULL
	   AND NOT (CASE WHEN kind = 'view' THEN dalgo_internal.output_view_reads(o.organization_id, dest, t.output_table_name)
				ELSE EXISTS (SELECT FROM dalgo.warehouse_tables w
							 WHERE w.organization_id = o.organization_id AND w.table_name = dest
							   AND w.deleted_at IS NULL AND w.output_id = o.id) END) THEN
		RAISE EXCEPTION 'output destination "%" exists and was not made by this output', dest
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'An output replaces only a table or view that its own refreshes made.',
				  HINT = 'Set destination_config.name to a new name.';
	END IF;

	-- Each swap below keeps the output views over its table
	-- (swap_warehouse_table drops and restores them).
	FOR v IN SELECT u.id FROM dalgo.transformation_upstream(t.id) u LOOP
		PERFORM dalgo.run_transformation(v.id, false);
	END LOOP;
	PERFORM dalgo_internal.build_transformation(t.id, run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;

	IF r.status <> 'success' THEN
		RETURN;
	END IF;
	IF kind = 'view' THEN
		PERFORM dalgo_internal.warehouse_execute(o.organization_id, format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I',
			schema_name, dest, schema_name, t.output_table_name));
	ELSIF dest <> t.output_table_name THEN
		PERFORM dalgo_internal.warehouse_execute(o.organization_id, format('CREATE TABLE %I.%I AS SELECT * FROM %I.%I',
			schema_name, '_dalgo_out_' || replace(run_id::text, '-', ''), schema_name, t.output_table_name));
		PERFORM dalgo_internal.check_warehouse_quota(o.organization_id, dest);
		-- The swap records this output as the table's producer.
		PERFORM dalgo_internal.swap_warehouse_table(o.organization_id, '_dalgo_out_' || replace(run_id::text, '-', ''), dest);
	END IF;
	UPDATE dalgo.outputs x SET last_refreshed_at = now() WHERE x.id = o.id;
END
$$;
COMMENT ON FUNCTION dalgo_internal.refresh_output(uuid) IS
	'Internal: run an output''s transformation with its upstream, then refresh destination_config ({"type": "table"|"view", "name": ...}); output views over rebuilt tables are dropped and created again around the swap';

CREATE OR REPLACE FUNCTION dalgo.run_due_schedules(at timestamptz DEFAULT now()) RETURNS integer
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ids uuid[];
	kinds dalgo.run_kind[];
	started integer;
BEGIN
	IF dalgo.current_user_id() IS NOT NULL OR NOT pg_has_role(session_user, 'dalgo_service', 'MEMBER') THEN
		RAISE EXCEPTION 'run_due_schedules is for dalgo_service and superusers' USING ERRCODE = 'insufficient_privilege';
	END IF;
	SELECT array_agg(c.run_id) FILTER (WHERE c.outcome = 'queued'), array_agg(c.run_kind) FILTER (WHERE c.outcome = 'queued'),
		   count(*) FILTER (WHERE c.outcome <> 'skipped')
	INTO ids, kinds, started FROM dalgo_internal.claim_due_schedules(at, 1000) c;
	PERFORM dalgo_internal.execute_claimed(ids, kinds);
	RETURN started;
END
$$;
COMMENT ON FUNCTION dalgo.run_due_schedules(timestamptz) IS
	'Claim every schedule due at "at" and run it synchronously, through the scheduler''s own claim and run code; returns the runs started (skips not counted). dalgo_service and superusers';

CREATE OR REPLACE FUNCTION dalgo.run_schedule_now(schedule_id uuid) RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s dalgo.schedules;
	c record;
BEGIN
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = run_schedule_now.schedule_id AND x.deleted_at IS NULL;
	IF NOT FOUND OR NOT dalgo.caller_may(s.organization_id, 'admin') THEN
		RAISE EXCEPTION 'schedule % does not exist or you are not an admin of its organization', schedule_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- Make it due now and claim it like the scheduler would (a concurrent claim wins the lock).
	PERFORM FROM dalgo.schedules x WHERE x.id = s.id FOR UPDATE;
	UPDATE dalgo.schedules x SET next_run_at = clock_timestamp(), is_active = true WHERE x.id = s.id;
	SELECT * INTO c FROM dalgo_internal.claim_due_schedules(clock_timestamp(), 1, s.id);
	IF c.outcome = 'queued' THEN
		PERFORM dalgo_internal.execute_claimed(ARRAY[c.run_id], ARRAY[c.run_kind]);
	END IF;
	UPDATE dalgo.schedules x SET is_active = s.is_active,
		next_run_at = CASE WHEN s.is_active THEN dalgo.next_run(s.frequency, s.run_at_time, s.run_at_day, s.timezone, now()) END
	WHERE x.id = s.id;
	RETURN c.run_id;
END
$$;
COMMENT ON FUNCTION dalgo.run_schedule_now(uuid) IS 'Run a schedule now, synchronously (admins of its organization); returns the run id';

-- An in-database sync: postgres sources copy a table, view or foreign table the
-- organization's warehouse role may read; csv sources load a file from the
-- organization's own directory dalgo.csv_dir/org_<hex id>/.
CREATE OR REPLACE FUNCTION dalgo_internal.sync_source(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	src dalgo.sources;
	schema_name text;
	build_name text := '_dalgo_sync_' || replace(run_id::text, '-', '');
	target text;
	n bigint;
	relation text;
	path text;
	header text;
	cols text;
BEGIN
	PERFORM dalgo_internal.verify_scheduled_run('sync', run_id);
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.id = run_id;
	SELECT * INTO src FROM dalgo.sources x WHERE x.id = r.source_id AND x.deleted_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'the source of run % no longer exists', run_id;
	END IF;
	schema_name := dalgo.ensure_warehouse(src.organization_id);
	target := coalesce(src.warehouse_table_name, 'source_' || left(replace(src.id::text, '-', ''), 12));
	IF src.source_type = 'postgres' THEN
		-- Read as the warehouse role: it sees only what it was granted.
		relation := dalgo_internal.source_relation(src.config);
		n := dalgo_internal.warehouse_execute(src.organization_id,
			format('CREATE TABLE %I.%I AS SELECT * FROM %s', schema_name, build_name, relation));
	ELSIF src.source_type = 'csv' THEN
		path := dalgo_internal.csv_path(src.organization_id, src.config->>'path');
		header := split_part(pg_read_file(path, 0, 65536), E'\n', 1);
		SELECT string_agg(format('%I text', trim(both '"' FROM trim(c))), ', ') INTO cols
		FROM unnest(string_to_array(rtrim(header, E'\r'), ',')) c;
		IF cols IS NULL THEN
			RAISE EXCEPTION 'csv file % has no header line', src.config->>'path' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		PERFORM dalgo_internal.warehouse_execute(src.organization_id, format('CREATE TABLE %I.%I (%s)', schema_name, build_name, cols));
		EXECUTE format('COPY %I.%I FROM %L WITH (FORMAT csv, HEADER true)', schema_name, build_name, path);
		GET DIAGNOSTICS n = ROW_COUNT;
	ELSE
		RAISE EXCEPTION '% sources are synced by a connector', src.source_type;
	END IF;
	PERFORM dalgo_internal.check_warehouse_quota(src.organization_id, target);
	PERFORM dalgo_internal.swap_warehouse_table(src.organization_id, build_name, target);
	PERFORM dalgo_internal.register_warehouse_table(src.organization_id, target, src.id, NULL, n);

	-- source_schemas: columns, types, order and nullability of what was synced.
	DELETE FROM dalgo.source_schemas x WHERE x.source_id = src.id;
	INSERT INTO dalgo.source_schemas (organization_id, source_id, column_name, column_type, column_order, is_nullable)
	SELECT src.organization_id, src.id, a.attname, format_type(a.atttypid, a.atttypmod), a.attnum, NOT a.attnotnull
	FROM pg_attribute a
	WHERE a.attrelid = to_regclass(format('%I.%I', schema_name, target)) AND a.attnum > 0 AND NOT a.attisdropped;
	IF relation IS NOT NULL THEN
		UPDATE dalgo.source_schemas x SET is_nullable = NOT a.attnotnull
		FROM pg_attribute a
		WHERE x.source_id = src.id AND a.attrelid = relation::regclass
		  AND a.attname = x.column_name;
	END IF;

	UPDATE dalgo.sources x SET last_synced_at = now(), warehouse_table_name = target WHERE x.id = src.id;
	UPDATE dalgo.sync_runs x SET status = 'success', completed_at = clock_timestamp(), rows_synced = least(n, 2147483647)
	WHERE x.id = run_id;
END
$$;
COMMENT ON FUNCTION dalgo_internal.sync_source(uuid) IS 'Internal: an in-database sync of a postgres or csv source into its warehouse table';

REVOKE ALL ON FUNCTION dalgo_internal.claim_due_schedules(timestamptz, integer, uuid),
	dalgo_internal.start_scheduled_run(dalgo.run_kind, uuid), dalgo_internal.claim_pending_run(),
	dalgo_internal.fail_scheduled_run(dalgo.run_kind, uuid, text), dalgo_internal.execute_scheduled_run(dalgo.run_kind, uuid),
	dalgo_internal.execute_claimed(uuid[], dalgo.run_kind[]), dalgo_internal.verify_scheduled_run(dalgo.run_kind, uuid)
	FROM PUBLIC;

-- jrun: journeys (issue 14 items 4-8): changed functions, then the whole of sql/journeys.sql

-- Keyset paging for read_warehouse_table (key_column, after): the function
-- takes two more arguments, so it is replaced.
DROP FUNCTION dalgo.read_warehouse_table(uuid, text, integer);
CREATE FUNCTION dalgo.read_warehouse_table(organization_id uuid, table_name text, row_limit integer DEFAULT 100,
										   key_column text DEFAULT NULL, after jsonb DEFAULT NULL)
	RETURNS SETOF jsonb
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	steps jsonb := '[]';
BEGIN
	-- Keyset paging: rows in key_column order, after the key of the previous
	-- page's last row; the compiler checks the column and quotes the value.
	IF after IS NOT NULL AND key_column IS NULL THEN
		RAISE EXCEPTION 'after needs key_column, the column the pages are ordered by'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF after IS NOT NULL AND jsonb_typeof(after) NOT IN ('string', 'number', 'boolean') THEN
		RAISE EXCEPTION 'after must be the key of the last row read: a string, a number or a boolean'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF key_column IS NOT NULL THEN
		IF after IS NOT NULL THEN
			steps := steps || jsonb_build_array(jsonb_build_object('type', 'filter', 'conditions',
				jsonb_build_array(jsonb_build_object('column', key_column, 'op', 'gt', 'value', jsonb_build_object('val', after)))));
		END IF;
		steps := steps || jsonb_build_array(jsonb_build_object('type', 'sort', 'by',
			jsonb_build_array(jsonb_build_object('column', key_column))));
	END IF;
	RETURN QUERY SELECT * FROM dalgo.preview_recipe(organization_id,
		jsonb_build_object('version', 1, 'source', jsonb_build_object('table', table_name), 'steps', steps), row_limit);
END
$$;
COMMENT ON FUNCTION dalgo.read_warehouse_table(uuid, text, integer, text, jsonb) IS
	'The rows of one of the organization''s warehouse tables, for its members, at most row_limit (1 to 10,000). Keyset paging: with key_column the rows come in its order, and after (the key of the previous page''s last row) starts the page after it; the key should be unique and not null';

REVOKE ALL ON FUNCTION dalgo.read_warehouse_table(uuid, text, integer, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.read_warehouse_table(uuid, text, integer, text, jsonb) TO dalgo_authenticated, dalgo_service;


-- runs on demand: the run queue, the recovery and the worker's checks take runs that
-- sync_now and refresh_output_now queued (details.on_demand); a due schedule counts
-- them as going.

CREATE OR REPLACE FUNCTION dalgo_internal.claim_due_schedules(at timestamptz, max_runs integer, only_schedule uuid DEFAULT NULL)
	RETURNS TABLE (schedule_id uuid, run_kind dalgo.run_kind, run_id uuid, outcome text)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s dalgo.schedules;
	src dalgo.sources;
	out dalgo.outputs;
	busy boolean;
	det jsonb;
	rid uuid;
BEGIN
	IF max_runs <= 0 THEN
		RETURN;
	END IF;
	-- Fair between organizations: each organization's oldest due schedule
	-- first, then each one's second, and so on, so that one organization's
	-- backlog never holds another's due schedule back to a later tick.  The
	-- due test is repeated on x: a row another claimer committed in between is
	-- re-checked after its lock.
	-- The limit applies after SKIP LOCKED: a schedule row another
	-- transaction holds (run_schedule_now's run, an open UPDATE) is passed
	-- over and does not use up a place, so locked rows cannot crowd every
	-- other organization's due schedule out of the claim.
	FOR s IN SELECT x.* FROM dalgo.schedules x
			 JOIN (SELECT y.id,
						  row_number() OVER (PARTITION BY y.organization_id ORDER BY y.next_run_at, y.id) AS turn
				   FROM dalgo.schedules y
				   WHERE y.is_active AND y.deleted_at IS NULL AND y.next_run_at <= at
					 AND (only_schedule IS NULL OR y.id = only_schedule)) d ON d.id = x.id
			 WHERE x.is_active AND x.deleted_at IS NULL AND x.next_run_at <= at
			   AND (only_schedule IS NULL OR x.id = only_schedule)
			 ORDER BY d.turn, x.next_run_at, x.id
			 LIMIT max_runs
			 FOR UPDATE OF x SKIP LOCKED
	LOOP
		det := jsonb_build_object('schedule_id', s.id, 'attempt', 1,
								  'lag_ms', round(extract(epoch FROM clock_timestamp() - s.next_run_at) * 1000));
		UPDATE dalgo.schedules x SET last_run_at = at,
			next_run_at = dalgo.next_run(s.frequency, s.run_at_time, s.run_at_day, s.timezone, greatest(at, s.next_run_at))
		WHERE x.id = s.id;
		schedule_id := s.id;
		IF s.source_id IS NOT NULL THEN
			run_kind := 'sync';
			SELECT * INTO src FROM dalgo.sources x WHERE x.id = s.source_id;
			-- sync_now holds the source row FOR UPDATE while it queues or runs
			-- a sync: that run is going, even if not yet committed.
			PERFORM FROM dalgo.sources x WHERE x.id = s.source_id FOR KEY SHARE SKIP LOCKED;
			busy := NOT FOUND OR EXISTS (SELECT FROM dalgo.sync_runs r WHERE r.source_id = s.source_id
										 AND r.status IN ('pending', 'running') AND r.deleted_at IS NULL);
			IF busy THEN
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, started_at, completed_at, error_message, details)
				VALUES (s.organization_id, s.source_id, 'failed', clock_timestamp(), clock_timestamp(),
						'skipped: the previous run of this schedule is still going', det || '{"skipped": true}')
				RETURNING id INTO rid;
				outcome := 'skipped';
			ELSE
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, details)
				VALUES (s.organization_id, s.source_id, 'pending', det) RETURNING id INTO rid;
				IF dalgo.is_connector_source(src.source_type) THEN
					-- Anyone can LISTEN: the payload is empty, connectors learn
					-- the work from claim_sync_run().
					PERFORM pg_notify('dalgo_sync', '');
					outcome := 'connector';
				ELSE
					outcome := 'queued';
				END IF;
			END IF;
		ELSE
			run_kind := 'output';
			SELECT * INTO out FROM dalgo.outputs x WHERE x.id = s.output_id;
			-- Likewise refresh_output_now and the output row; its on-demand
			-- runs (details.output_id) count as this schedule's.
			PERFORM FROM dalgo.outputs x WHERE x.id = s.output_id FOR KEY SHARE SKIP LOCKED;
			busy := NOT FOUND OR EXISTS (SELECT FROM dalgo.transformation_runs r WHERE r.transformation_id = out.transformation_id
										 AND r.status IN ('pending', 'running')
										 AND (r.details->>'schedule_id' = s.id::text OR r.details->>'output_id' = s.output_id::text));
			INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, started_at, completed_at,
												   error_message, details)
			VALUES (s.organization_id, out.transformation_id, CASE WHEN busy THEN 'failed' ELSE 'pending' END::dalgo.run_status,
					CASE WHEN busy THEN clock_timestamp() END, CASE WHEN busy THEN clock_timestamp() END,
					CASE WHEN busy THEN 'skipped: the previous run of this schedule is still going' END,
					det || CASE WHEN busy THEN '{"skipped": true}'::jsonb ELSE '{}'::jsonb END)
			RETURNING id INTO rid;
			outcome := CASE WHEN busy THEN 'skipped' ELSE 'queued' END;
		END IF;
		run_id := rid;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo_internal.claim_due_schedules(timestamptz, integer, uuid) IS
	'Internal: claim up to max_runs due schedules (FOR UPDATE SKIP LOCKED), advance them and create their run rows; outcome is queued (for the run workers), connector or skipped';


CREATE OR REPLACE FUNCTION dalgo_internal.claim_pending_run(OUT run_kind dalgo.run_kind, OUT run_id uuid)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
BEGIN
	FOR org IN
		WITH queued AS (
			SELECT r.organization_id, r.status, r.created_at
			FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
			WHERE r.status IN ('pending', 'running') AND NOT dalgo.is_connector_source(s.source_type)
			  AND r.details ?| ARRAY['schedule_id', 'on_demand']
			UNION ALL
			SELECT r.organization_id, r.status, r.created_at FROM dalgo.transformation_runs r
			WHERE r.status IN ('pending', 'running') AND r.details ?| ARRAY['schedule_id', 'on_demand'])
		SELECT q.organization_id FROM queued q
		GROUP BY q.organization_id
		HAVING bool_or(q.status = 'pending')
		ORDER BY count(*) FILTER (WHERE q.status = 'running'), min(q.created_at) FILTER (WHERE q.status = 'pending'),
				 q.organization_id
	LOOP
		SELECT 'sync', r.id INTO run_kind, run_id FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
		WHERE r.status = 'pending' AND r.organization_id = org AND NOT dalgo.is_connector_source(s.source_type)
		  AND r.details ?| ARRAY['schedule_id', 'on_demand']
		ORDER BY r.created_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED;
		IF NOT FOUND THEN
			SELECT 'output', r.id INTO run_kind, run_id FROM dalgo.transformation_runs r
			WHERE r.status = 'pending' AND r.organization_id = org AND r.details ?| ARRAY['schedule_id', 'on_demand']
			ORDER BY r.created_at LIMIT 1 FOR UPDATE SKIP LOCKED;
		END IF;
		EXIT WHEN run_id IS NOT NULL;
	END LOOP;
	IF run_id IS NOT NULL THEN
		PERFORM dalgo_internal.start_scheduled_run(run_kind, run_id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.claim_pending_run() IS
	'Internal: a run worker takes a pending in-database run and marks it running: the organization with the fewest running runs first, then the one waiting longest';


CREATE OR REPLACE FUNCTION dalgo_internal.pending_runs() RETURNS integer
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
	AS $$ SELECT (SELECT count(*) FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
				  WHERE r.status = 'pending' AND NOT dalgo.is_connector_source(s.source_type) AND r.details ?| ARRAY['schedule_id', 'on_demand'])::integer
			   + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.status = 'pending' AND r.details ?| ARRAY['schedule_id', 'on_demand'])::integer $$;
COMMENT ON FUNCTION dalgo_internal.pending_runs() IS 'Internal: in-database runs waiting for a run worker';


CREATE OR REPLACE FUNCTION dalgo_internal.verify_scheduled_run(run_kind dalgo.run_kind, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	det jsonb;
	run_org uuid;
	run_source uuid;
	run_transformation uuid;
	sid uuid;
	s dalgo.schedules;
	agree boolean := false;
BEGIN
	SELECT r.details, r.organization_id, r.source_id, r.transformation_id
	INTO det, run_org, run_source, run_transformation
	FROM dalgo_internal.scheduled_runs r WHERE r.run_kind = verify_scheduled_run.run_kind AND r.id = run_id;
	BEGIN
		sid := (det->>'schedule_id')::uuid;
	EXCEPTION WHEN invalid_text_representation THEN
		sid := NULL;
	END;
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = sid;
	IF det ? 'on_demand' AND NOT det ? 'schedule_id' THEN
		-- A run sync_now or refresh_output_now queued: its source, or the
		-- output (details.output_id) whose transformation is the run's, in
		-- the run's organization.
		IF run_kind = 'sync' THEN
			agree := NOT det ? 'output_id'
				AND EXISTS (SELECT FROM dalgo.sources x WHERE x.id = run_source AND x.organization_id = run_org);
		ELSIF det->>'output_id' ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
			agree := EXISTS (SELECT FROM dalgo.outputs o JOIN dalgo.transformations t ON t.id = o.transformation_id
							 WHERE o.id = (det->>'output_id')::uuid AND o.organization_id = run_org
							   AND t.organization_id = run_org AND t.id = run_transformation);
		END IF;
	ELSIF FOUND AND s.organization_id = run_org AND NOT det ? 'output_id' THEN
		IF run_kind = 'sync' THEN
			agree := s.source_id = run_source
				AND EXISTS (SELECT FROM dalgo.sources x WHERE x.id = run_source AND x.organization_id = run_org);
		ELSE
			agree := EXISTS (SELECT FROM dalgo.outputs o JOIN dalgo.transformations t ON t.id = o.transformation_id
							 WHERE o.id = s.output_id AND o.organization_id = run_org AND t.organization_id = run_org
							   AND t.id = run_transformation);
		END IF;
	END IF;
	IF NOT coalesce(agree, false) THEN
		RAISE EXCEPTION 'run % was refused: it does not match its schedule', run_id
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'A scheduled run must name the schedule that created it, and schedule, source or output, transformation and run must belong to one organization.';
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.verify_scheduled_run(dalgo.run_kind, uuid) IS
	'Internal: refuse a run row whose schedule (or, for a run queued on demand, details.output_id), source or output, transformation and organization do not agree (a forged row); sync_source and refresh_output call it first';


CREATE OR REPLACE FUNCTION dalgo_internal.refresh_output(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.transformation_runs;
	o dalgo.outputs;
	t dalgo.transformations;
	v record;
	schema_name text;
	dest text;
	kind text;
BEGIN
	PERFORM dalgo_internal.verify_scheduled_run('output', run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;
	SELECT * INTO o FROM dalgo.outputs x
	WHERE x.id = coalesce((SELECT s.output_id FROM dalgo.schedules s WHERE s.id = (r.details->>'schedule_id')::uuid),
						  (r.details->>'output_id')::uuid);
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = o.transformation_id;
	schema_name := dalgo_internal.warehouse_schema_name(o.organization_id);
	kind := coalesce(o.destination_config->>'type', 'table');
	dest := coalesce(o.destination_config->>'name', t.output_table_name);
	IF kind NOT IN ('table', 'view') THEN
		RAISE EXCEPTION 'unknown destination type "%" (use table or view)', kind USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF kind = 'view' AND dest = t.output_table_name THEN
		RAISE EXCEPTION 'a view destination needs a name other than the transformation''s table "%"', dest
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Set destination_config.name.';
	END IF;
	-- destination_config.name is a member's text: it may name only what this
	-- output makes.  Longer names would be truncated to another table's name.
	IF dest = '' OR octet_length(dest) >= 64 OR dest LIKE '\_dalgo\_%' THEN
		RAISE EXCEPTION 'output destination name "%" is not allowed', dest
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use a name of 1 to 63 bytes that does not start with _dalgo_.';
	END IF;
	IF dest <> t.output_table_name AND to_regclass(format('%I.%I', schema_name, dest)) IS NOT NULL
	   AND NOT (CASE WHEN kind = 'view' THEN dalgo_internal.output_view_reads(o.organization_id, dest, t.output_table_name)
				ELSE EXISTS (SELECT FROM dalgo.warehouse_tables w
							 WHERE w.organization_id = o.organization_id AND w.table_name = dest
							   AND w.deleted_at IS NULL AND w.output_id = o.id) END) THEN
		RAISE EXCEPTION 'output destination "%" exists and was not made by this output', dest
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'An output replaces only a table or view that its own refreshes made.',
				  HINT = 'Set destination_config.name to a new name.';
	END IF;

	-- Each swap below keeps the output views over its table
	-- (swap_warehouse_table drops and restores them).
	FOR v IN SELECT u.id FROM dalgo.transformation_upstream(t.id) u LOOP
		PERFORM dalgo.run_transformation(v.id, false);
	END LOOP;
	PERFORM dalgo_internal.build_transformation(t.id, run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;

	IF r.status <> 'success' THEN
		RETURN;
	END IF;
	IF kind = 'view' THEN
		PERFORM dalgo_internal.warehouse_execute(o.organization_id, format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I',
			schema_name, dest, schema_name, t.output_table_name));
	ELSIF dest <> t.output_table_name THEN
		PERFORM dalgo_internal.warehouse_execute(o.organization_id, format('CREATE TABLE %I.%I AS SELECT * FROM %I.%I',
			schema_name, '_dalgo_out_' || replace(run_id::text, '-', ''), schema_name, t.output_table_name));
		PERFORM dalgo_internal.check_warehouse_quota(o.organization_id, dest);
		-- The swap records this output as the table's producer.
		PERFORM dalgo_internal.swap_warehouse_table(o.organization_id, '_dalgo_out_' || replace(run_id::text, '-', ''), dest);
	END IF;
	UPDATE dalgo.outputs x SET last_refreshed_at = now() WHERE x.id = o.id;
END
$$;
COMMENT ON FUNCTION dalgo_internal.refresh_output(uuid) IS
	'Internal: run an output''s transformation with its upstream, then refresh destination_config ({"type": "table"|"view", "name": ...}); output views over rebuilt tables are dropped and created again around the swap';


CREATE OR REPLACE FUNCTION dalgo_internal.recover_interrupted_runs() RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	m integer;
	seen timestamptz;
	live_pids integer[];
	live_starts timestamptz[];
BEGIN
	-- A run is alive while the backend that marked it running is: the same
	-- pid, started no later than the run (a reused pid starts later).  Only
	-- runs marked before the list of backends was read are judged by it.
	PERFORM pg_stat_clear_snapshot();
	seen := clock_timestamp();
	SELECT array_agg(a.pid), array_agg(a.backend_start) INTO live_pids, live_starts
	FROM pg_stat_activity a WHERE a.backend_start IS NOT NULL;
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = 'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)'
	FROM dalgo.sources s
	WHERE s.id = r.source_id AND NOT dalgo.is_connector_source(s.source_type) AND r.status = 'running'
	  AND r.details ?| ARRAY['schedule_id', 'on_demand'] AND coalesce(r.started_at, '-infinity') < seen
	  AND NOT EXISTS (SELECT FROM unnest(live_pids, live_starts) a(pid, started)
					  WHERE a.pid::text = r.details->>'runner_pid' AND a.started <= r.started_at);
	GET DIAGNOSTICS n = ROW_COUNT;
	UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = 'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)'
	WHERE r.status = 'running' AND r.details ?| ARRAY['schedule_id', 'on_demand'] AND coalesce(r.started_at, '-infinity') < seen
	  AND NOT EXISTS (SELECT FROM unnest(live_pids, live_starts) a(pid, started)
					  WHERE a.pid::text = r.details->>'runner_pid' AND a.started <= r.started_at);
	GET DIAGNOSTICS m = ROW_COUNT;
	RETURN n + m;
END
$$;
COMMENT ON FUNCTION dalgo_internal.recover_interrupted_runs() IS
	'Mark scheduled runs whose worker is gone (same pid and a backend start no later than the run''s) as failed; the scheduler calls it on every tick (pending runs simply wait for a worker)';


CREATE OR REPLACE FUNCTION dalgo_internal.swap_warehouse_table(organization_id uuid, build_name text, table_name text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	by_source uuid;
	by_transformation uuid;
	by_output uuid;
	context uuid;
	claimant text;
	reg dalgo.warehouse_tables;
	dropped jsonb;
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
		-- The output is the run's schedule's, or, for a run queued by
		-- refresh_output_now, the one its details name.
		SELECT o.id, o.transformation_id INTO by_output, context
		FROM dalgo.transformation_runs r
		LEFT JOIN dalgo.schedules s ON s.id::text = r.details->>'schedule_id' AND s.organization_id = r.organization_id
		JOIN dalgo.outputs o ON o.id::text = coalesce(s.output_id::text, r.details->>'output_id')
			AND o.organization_id = r.organization_id
		WHERE r.id = substr(build_name, 12)::uuid AND r.organization_id = swap_warehouse_table.organization_id
		  AND o.transformation_id = r.transformation_id;
	END IF;
	IF num_nonnulls(by_source, by_transformation, by_output) <> 1 THEN
		RAISE EXCEPTION 'warehouse table build "%" belongs to no run of this organization', build_name
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- Checked again at the moment of the swap, under the organization's name lock.
	claimant := dalgo_internal.warehouse_table_claimant(organization_id, table_name, by_source, context, by_output);
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
	-- Output views over the table depend on it: drop them around the swap
	-- (in this transaction, so readers never miss them).
	dropped := dalgo_internal.drop_output_views(organization_id, ARRAY[table_name]);
	PERFORM dalgo_internal.warehouse_execute(organization_id, format('DROP TABLE IF EXISTS %I.%I', schema_name, table_name));
	PERFORM dalgo_internal.warehouse_execute(organization_id, format('ALTER TABLE %I.%I RENAME TO %I', schema_name, build_name, table_name));
	PERFORM dalgo_internal.restore_output_views(organization_id, dropped);
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
COMMENT ON FUNCTION dalgo_internal.swap_warehouse_table(uuid, text, text) IS
	'Internal: replace a warehouse table by a freshly built one, atomically; only the producer (source, transformation or output) that the build''s run names, whose name no other producer claims, and that produced the existing table, if any; records it in warehouse_tables';


-- failure alerts: the mail queue carries run_failed and run_recovered messages.
ALTER TABLE dalgo.mail_messages DROP CONSTRAINT mail_messages_kind_check;
ALTER TABLE dalgo.mail_messages ADD CONSTRAINT mail_messages_kind_check
	CHECK (kind IN ('password_reset', 'invitation', 'run_failed', 'run_recovered'));
COMMENT ON COLUMN dalgo.mail_messages.kind IS 'password_reset, invitation, or a schedule''s failure alert: run_failed, run_recovered';

-- journeys.sql: what completes the journeys of a data team (issue 14):
-- versions that can be used (revert, diff), lineage and impact, export, syncs
-- and refreshes on demand, and failure alerts.  docs/journeys.md walks
-- through them.

-- ---------------------------------------------------------------------------
-- Versions
-- ---------------------------------------------------------------------------

-- Version rows are written only by the record_version trigger
-- (transformation_versions grants no INSERT to any app role): a revert is a
-- save of the old recipe, which numbers and records the new version itself.
CREATE FUNCTION dalgo.revert_transformation(transformation_id uuid, version integer) RETURNS integer
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t dalgo.transformations;
	old_recipe jsonb;
	previous text := current_setting('dalgo.change_description');
	new_version integer;
BEGIN
	SELECT * INTO t FROM dalgo.transformations x
	WHERE x.id = revert_transformation.transformation_id AND x.deleted_at IS NULL;
	IF NOT FOUND OR NOT dalgo.caller_may(t.organization_id, 'viewer') THEN
		RAISE EXCEPTION 'transformation % does not exist', transformation_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT dalgo.caller_may(t.organization_id, 'member') THEN
		RAISE EXCEPTION 'reverting a transformation needs the member role' USING ERRCODE = 'insufficient_privilege';
	END IF;
	SELECT v.recipe INTO old_recipe FROM dalgo.transformation_versions v
	WHERE v.transformation_id = t.id AND v.organization_id = t.organization_id
	  AND v.version_number = revert_transformation.version AND v.deleted_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'transformation % has no version %', transformation_id, version
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = format('Its versions are 1 to %s.', t.current_version);
	END IF;
	IF old_recipe = t.recipe THEN
		RAISE NOTICE 'version % is the current recipe of transformation %; nothing saved', version, t.id;
		RETURN t.current_version;
	END IF;
	-- The save's own triggers check the recipe, number the version and record
	-- it, with the caller as its author.
	PERFORM set_config('dalgo.change_description',
					   coalesce(nullif(previous, ''), format('revert to version %s', version)), true);
	UPDATE dalgo.transformations x SET recipe = old_recipe WHERE x.id = t.id
	RETURNING x.current_version INTO new_version;
	PERFORM set_config('dalgo.change_description', previous, true);
	RETURN new_version;
END
$$;
COMMENT ON FUNCTION dalgo.revert_transformation(uuid, integer) IS
	'Save an earlier version''s recipe as the transformation''s new version (checked, numbered and recorded like any save; change_description "revert to version N" unless dalgo.change_description is set); returns the new version number. Members and above';

-- A step-by-step diff: the two step lists are aligned on their longest
-- common subsequence (equal steps); in each gap between aligned steps a
-- removed and an added step of the same type are one changed step.
CREATE FUNCTION dalgo.diff_versions(transformation_id uuid, a integer, b integer) RETURNS jsonb
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
	ra jsonb;
	rb jsonb;
	sa jsonb;
	sb jsonb;
	n integer;
	m integer;
	l integer[];
	i integer;
	j integer;
	ops jsonb := '[]';
	removed integer[] := '{}';
	added integer[] := '{}';
	out jsonb := '[]';
	k integer;
	q integer;
	used boolean[];
	changed_keys jsonb;
	other jsonb;
	ta text[];
	tb text[];
BEGIN
	SELECT x.organization_id INTO org FROM dalgo.transformations x
	WHERE x.id = diff_versions.transformation_id AND x.deleted_at IS NULL;
	IF NOT FOUND OR NOT dalgo.caller_may(org, 'viewer') THEN
		RAISE EXCEPTION 'transformation % does not exist', transformation_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT v.recipe INTO ra FROM dalgo.transformation_versions v
	WHERE v.transformation_id = diff_versions.transformation_id AND v.organization_id = org AND v.version_number = a;
	SELECT v.recipe INTO rb FROM dalgo.transformation_versions v
	WHERE v.transformation_id = diff_versions.transformation_id AND v.organization_id = org AND v.version_number = b;
	IF ra IS NULL OR rb IS NULL THEN
		RAISE EXCEPTION 'transformation % has no version %', transformation_id, CASE WHEN ra IS NULL THEN a ELSE b END
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	sa := CASE WHEN jsonb_typeof(ra->'steps') = 'array' THEN ra->'steps' ELSE '[]' END;
	sb := CASE WHEN jsonb_typeof(rb->'steps') = 'array' THEN rb->'steps' ELSE '[]' END;
	n := jsonb_array_length(sa);
	m := jsonb_array_length(sb);
	-- Steps compared as their canonical jsonb text (equal jsonb, equal text).
	ta := ARRAY(SELECT e::text FROM jsonb_array_elements(sa) WITH ORDINALITY x(e, ord) ORDER BY x.ord);
	tb := ARRAY(SELECT e::text FROM jsonb_array_elements(sb) WITH ORDINALITY x(e, ord) ORDER BY x.ord);
	-- l[(i)*(m+1)+j+1]: length of the longest common subsequence of sa[i:] and sb[j:].
	l := array_fill(0, ARRAY[(n + 1) * (m + 1)]);
	FOR i IN REVERSE n - 1..0 LOOP
		FOR j IN REVERSE m - 1..0 LOOP
			IF ta[i + 1] = tb[j + 1] THEN
				l[i * (m + 1) + j + 1] := l[(i + 1) * (m + 1) + j + 2] + 1;
			ELSE
				l[i * (m + 1) + j + 1] := greatest(l[(i + 1) * (m + 1) + j + 1], l[i * (m + 1) + j + 2]);
			END IF;
		END LOOP;
	END LOOP;
	-- Walk the alignment; flush each gap's removed and added steps at an equal step and at the end.
	i := 0;
	j := 0;
	LOOP
		IF i < n AND j < m AND ta[i + 1] = tb[j + 1] THEN
			ops := ops || jsonb_build_object('r', to_jsonb(removed), 'a', to_jsonb(added));
			removed := '{}';
			added := '{}';
			i := i + 1;
			j := j + 1;
		ELSIF j < m AND (i >= n OR l[i * (m + 1) + j + 2] >= l[(i + 1) * (m + 1) + j + 1]) THEN
			added := added || j;
			j := j + 1;
		ELSIF i < n THEN
			removed := removed || i;
			i := i + 1;
		ELSE
			EXIT;
		END IF;
	END LOOP;
	ops := ops || jsonb_build_object('r', to_jsonb(removed), 'a', to_jsonb(added));
	-- Each gap: pair a removed step with the first unpaired added step of the same type.
	FOR k IN 0..jsonb_array_length(ops) - 1 LOOP
		removed := ARRAY(SELECT jsonb_array_elements_text(ops->k->'r')::integer);
		added := ARRAY(SELECT jsonb_array_elements_text(ops->k->'a')::integer);
		used := array_fill(false, ARRAY[greatest(cardinality(added), 1)]);
		FOR i IN 1..cardinality(removed) LOOP
			q := NULL;
			FOR j IN 1..cardinality(added) LOOP
				IF NOT used[j] AND sa->removed[i]->'type' = sb->added[j]->'type' THEN
					q := j;
					EXIT;
				END IF;
			END LOOP;
			IF q IS NULL THEN
				out := out || jsonb_build_object('change', 'removed', 'position_a', removed[i] + 1, 'type', sa->removed[i]->'type',
												 'step', sa->removed[i]);
			ELSE
				used[q] := true;
				SELECT coalesce(jsonb_agg(key ORDER BY key), '[]') INTO changed_keys
				FROM (SELECT key FROM jsonb_object_keys(CASE WHEN jsonb_typeof(sa->removed[i]) = 'object' THEN sa->removed[i] ELSE '{}' END) key
					  UNION SELECT key FROM jsonb_object_keys(CASE WHEN jsonb_typeof(sb->added[q]) = 'object' THEN sb->added[q] ELSE '{}' END) key) ks
				WHERE sa->removed[i]->key IS DISTINCT FROM sb->added[q]->key;
				out := out || jsonb_build_object('change', 'changed', 'position_a', removed[i] + 1, 'position_b', added[q] + 1,
												 'type', sa->removed[i]->'type', 'keys', changed_keys,
												 'from', sa->removed[i], 'to', sb->added[q]);
			END IF;
		END LOOP;
		FOR j IN 1..cardinality(added) LOOP
			IF NOT used[j] THEN
				out := out || jsonb_build_object('change', 'added', 'position_b', added[j] + 1, 'type', sb->added[j]->'type',
												 'step', sb->added[j]);
			END IF;
		END LOOP;
	END LOOP;
	-- What changed outside the steps (the source, the version field...).
	SELECT coalesce(jsonb_object_agg(key, jsonb_build_object('from', ra->key, 'to', rb->key)), '{}') INTO other
	FROM (SELECT jsonb_object_keys(ra) AS key UNION SELECT jsonb_object_keys(rb)) ks
	WHERE key <> 'steps' AND ra->key IS DISTINCT FROM rb->key;
	RETURN jsonb_build_object(
		'transformation_id', transformation_id, 'a', a, 'b', b,
		'recipe', other,
		'steps', out,
		'summary', jsonb_build_object(
			'added', (SELECT count(*) FROM jsonb_array_elements(out) e WHERE e->>'change' = 'added'),
			'removed', (SELECT count(*) FROM jsonb_array_elements(out) e WHERE e->>'change' = 'removed'),
			'changed', (SELECT count(*) FROM jsonb_array_elements(out) e WHERE e->>'change' = 'changed'),
			'unchanged', l[1]));
END
$$;
COMMENT ON FUNCTION dalgo.diff_versions(uuid, integer, integer) IS
	'What changed from version a to version b of a transformation, step by step, as jsonb: steps added, removed and changed (with the keys that changed; steps aligned on the longest run of equal steps), other recipe keys that changed (the source), and a summary. Members of its organization';

-- ---------------------------------------------------------------------------
-- Lineage
-- ---------------------------------------------------------------------------

-- Every relation a recipe reads, from where the recipe contract allows one:
-- the source, a join's "with" and each of a union's "with" sources; each as
-- (kind, value) with kind source_id, transformation_id or table.
CREATE FUNCTION dalgo_internal.recipe_references(recipe jsonb) RETURNS TABLE (ref_kind text, ref text)
	LANGUAGE sql IMMUTABLE PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
AS $$
	WITH src(obj) AS (
		SELECT recipe->'source' WHERE jsonb_typeof(recipe) = 'object'
		UNION ALL
		SELECT s->'with' FROM jsonb_array_elements(CASE WHEN jsonb_typeof(recipe->'steps') = 'array' THEN recipe->'steps' ELSE '[]' END) s
		WHERE jsonb_typeof(s) = 'object' AND s->>'type' = 'join'
		UNION ALL
		SELECT w FROM jsonb_array_elements(CASE WHEN jsonb_typeof(recipe->'steps') = 'array' THEN recipe->'steps' ELSE '[]' END) s,
			jsonb_array_elements(CASE WHEN jsonb_typeof(s->'with') = 'array' THEN s->'with' ELSE '[]' END) w
		WHERE jsonb_typeof(s) = 'object' AND s->>'type' = 'union')
	SELECT DISTINCT k, obj->>k FROM src, unnest(ARRAY['source_id', 'transformation_id', 'table']) k
	WHERE jsonb_typeof(obj) = 'object' AND jsonb_typeof(obj->k) = 'string'
$$;
COMMENT ON FUNCTION dalgo_internal.recipe_references(jsonb) IS
	'Internal: every relation a recipe reads (source, join.with, union.with[]), as (source_id | transformation_id | table, value)';

-- The whole graph of one organization.  A warehouse table's node id is its
-- dalgo.warehouse_tables id, or, for a table not registered there (not yet
-- built, or made outside dalgo), a uuid derived from the organization and
-- the name.
CREATE FUNCTION dalgo_internal.lineage_graph(organization_id uuid)
	RETURNS TABLE (node_type text, id uuid, name text, depends_on uuid[])
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	WITH
	src AS (SELECT s.id, s.name,
				   coalesce(s.warehouse_table_name, 'source_' || left(replace(s.id::text, '-', ''), 12)) AS table_name
			FROM dalgo.sources s WHERE s.organization_id = lineage_graph.organization_id AND s.deleted_at IS NULL),
	tr AS (SELECT t.id, t.name, t.recipe, t.output_table_name
		   FROM dalgo.transformations t WHERE t.organization_id = lineage_graph.organization_id AND t.deleted_at IS NULL),
	outp AS (SELECT o.id, o.name, o.transformation_id, o.destination_config->>'name' AS dest
			 FROM dalgo.outputs o JOIN tr ON tr.id = o.transformation_id
			 WHERE o.organization_id = lineage_graph.organization_id AND o.deleted_at IS NULL),
	refs AS (SELECT tr.id AS tid, r.ref_kind, r.ref FROM tr, dalgo_internal.recipe_references(tr.recipe) r),
	-- Every table name any node produces or reads.
	names AS (SELECT table_name AS n FROM src
			  UNION SELECT output_table_name FROM tr WHERE output_table_name IS NOT NULL
			  UNION SELECT dest FROM outp WHERE dest IS NOT NULL
			  UNION SELECT ref FROM refs WHERE ref_kind = 'table'),
	tbl AS (SELECT names.n, coalesce(
				(SELECT w.id FROM dalgo.warehouse_tables w
				 WHERE w.organization_id = lineage_graph.organization_id AND w.table_name = names.n AND w.deleted_at IS NULL
				 ORDER BY w.created_at LIMIT 1),
				md5('dalgo warehouse table ' || lineage_graph.organization_id::text || '/' || names.n)::uuid) AS tid
			FROM names),
	edges AS (
		SELECT 'source'::text AS node_type, src.id, src.name, NULL::uuid AS dep FROM src
		UNION ALL
		SELECT 'warehouse_table', tbl.tid, src.table_name, src.id FROM src JOIN tbl ON tbl.n = src.table_name
		UNION ALL
		SELECT 'transformation', tr.id, tr.name, NULL FROM tr
		UNION ALL
		-- A transformation reads tables: a source's, another transformation's
		-- output table (or the transformation, if it has none), or a table by name.
		SELECT 'transformation', refs.tid, tr.name,
			CASE refs.ref_kind
				WHEN 'table' THEN (SELECT tbl.tid FROM tbl WHERE tbl.n = refs.ref)
				WHEN 'source_id' THEN (SELECT tbl.tid FROM src JOIN tbl ON tbl.n = src.table_name WHERE src.id::text = refs.ref)
				ELSE (SELECT coalesce((SELECT tbl.tid FROM tbl WHERE tbl.n = up.output_table_name), up.id)
					  FROM tr up WHERE up.id::text = refs.ref) END
		FROM refs JOIN tr ON tr.id = refs.tid
		UNION ALL
		SELECT 'warehouse_table', tbl.tid, tr.output_table_name, tr.id FROM tr JOIN tbl ON tbl.n = tr.output_table_name
		UNION ALL
		SELECT 'output', outp.id, outp.name, outp.transformation_id FROM outp
		UNION ALL
		SELECT 'warehouse_table', tbl.tid, outp.dest, outp.id
		FROM outp JOIN tr ON tr.id = outp.transformation_id JOIN tbl ON tbl.n = outp.dest
		WHERE outp.dest IS DISTINCT FROM tr.output_table_name
		UNION ALL
		SELECT 'warehouse_table', tbl.tid, tbl.n, NULL FROM tbl
		UNION ALL
		SELECT 'schedule', s.id, format('%s at %s (%s)', s.frequency, to_char(s.run_at_time, 'HH24:MI'), s.timezone),
			coalesce(s.source_id, s.output_id)
		FROM dalgo.schedules s
		WHERE s.organization_id = lineage_graph.organization_id AND s.deleted_at IS NULL
		  AND (s.source_id IN (SELECT src.id FROM src) OR s.output_id IN (SELECT outp.id FROM outp)))
	SELECT min(e.node_type), e.id, min(e.name),
		coalesce(array_agg(DISTINCT e.dep ORDER BY e.dep) FILTER (WHERE e.dep IS NOT NULL), '{}')
	FROM edges e GROUP BY e.id
$$;
COMMENT ON FUNCTION dalgo_internal.lineage_graph(uuid) IS
	'Internal: the lineage graph of an organization''s live objects: (node_type, id, name, depends_on)';

-- The organization of a lineage node, for impact(): the object's own row.
CREATE FUNCTION dalgo_internal.lineage_node_organization(node_id uuid) RETURNS uuid
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(
		(SELECT organization_id FROM dalgo.sources WHERE id = node_id AND deleted_at IS NULL),
		(SELECT organization_id FROM dalgo.transformations WHERE id = node_id AND deleted_at IS NULL),
		(SELECT organization_id FROM dalgo.outputs WHERE id = node_id AND deleted_at IS NULL),
		(SELECT organization_id FROM dalgo.schedules WHERE id = node_id AND deleted_at IS NULL),
		(SELECT organization_id FROM dalgo.warehouse_tables WHERE id = node_id AND deleted_at IS NULL))
$$;
COMMENT ON FUNCTION dalgo_internal.lineage_node_organization(uuid) IS
	'Internal: the organization of a source, transformation, output, schedule or registered warehouse table';

CREATE FUNCTION dalgo.lineage(organization_id uuid, node_id uuid DEFAULT NULL, direction text DEFAULT 'both')
	RETURNS TABLE (node_type text, id uuid, name text, depends_on uuid[])
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF organization_id IS NULL OR NOT dalgo.caller_may(organization_id, 'viewer') THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF direction IS NULL OR direction NOT IN ('both', 'upstream', 'downstream') THEN
		RAISE EXCEPTION 'direction must be both, upstream or downstream' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF node_id IS NULL THEN
		RETURN QUERY SELECT g.* FROM dalgo_internal.lineage_graph(organization_id) g ORDER BY g.node_type, g.name, g.id;
		RETURN;
	END IF;
	IF NOT EXISTS (SELECT FROM dalgo_internal.lineage_graph(organization_id) g WHERE g.id = node_id) THEN
		RAISE EXCEPTION 'node % is not in the lineage of organization %', node_id, organization_id
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN QUERY
		WITH RECURSIVE g AS MATERIALIZED (SELECT * FROM dalgo_internal.lineage_graph(organization_id)),
		up(id) AS (SELECT lineage.node_id WHERE direction IN ('both', 'upstream')
				   UNION SELECT d FROM up JOIN g ON g.id = up.id, unnest(g.depends_on) d),
		down(id) AS (SELECT lineage.node_id WHERE direction IN ('both', 'downstream')
					 UNION SELECT g.id FROM down JOIN g ON down.id = ANY (g.depends_on))
		SELECT g.* FROM g WHERE g.id IN (SELECT up.id FROM up UNION SELECT down.id FROM down)
		ORDER BY g.node_type, g.name, g.id;
END
$$;
COMMENT ON FUNCTION dalgo.lineage(uuid, uuid, text) IS
	'The lineage graph of an organization: sources, warehouse tables, transformations (every source, join, union and transformation reference of their recipes), outputs and schedules, as (node_type, id, name, depends_on); with node_id, only what it depends on (upstream), what depends on it (downstream), or both. Members of the organization';

CREATE FUNCTION dalgo.impact(node_id uuid)
	RETURNS TABLE (run_order integer, node_type text, id uuid, name text)
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := dalgo_internal.lineage_node_organization(node_id);
	g jsonb;
	down uuid[];
	levels jsonb;
	step jsonb;
BEGIN
	IF org IS NULL OR NOT dalgo.caller_may(org, 'viewer') THEN
		RAISE EXCEPTION 'node % does not exist or you are not a member of its organization', node_id
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT jsonb_object_agg(l.id, jsonb_build_object('t', l.node_type, 'n', l.name, 'd', to_jsonb(l.depends_on)))
	INTO g FROM dalgo_internal.lineage_graph(org) l;
	-- Everything downstream (a set: no path is walked twice).
	WITH RECURSIVE d(id) AS (
		SELECT impact.node_id
		UNION
		SELECT k::uuid FROM d, jsonb_each(g) e(k, v)
		WHERE v->'d' ? d.id::text)
	SELECT array_agg(d.id) INTO down FROM d;
	-- run_order: the longest path from node_id, level by level (each node
	-- after everything it reads); what a cycle leaves comes last.
	levels := jsonb_build_object(node_id::text, 0);
	LOOP
		SELECT jsonb_object_agg(x.id, x.lvl) INTO step
		FROM (SELECT u.id, max((levels->>dep)::integer) + 1 AS lvl
			  FROM unnest(down) u(id), jsonb_array_elements_text(g->u.id::text->'d') dep
			  WHERE NOT levels ? u.id::text AND dep::uuid = ANY (down)
			  GROUP BY u.id
			  HAVING bool_and(levels ? dep)) x;
		EXIT WHEN step IS NULL;
		levels := levels || step;
	END LOOP;
	RETURN QUERY
		SELECT coalesce((levels->>u.id::text)::integer,
						(SELECT max(v::text::integer) + 1 FROM jsonb_each(levels) e(k, v))),
			   g->u.id::text->>'t', u.id, g->u.id::text->>'n'
		FROM unnest(down) u(id)
		WHERE u.id <> impact.node_id
		ORDER BY 1, 2, 4, 3;
END
$$;
COMMENT ON FUNCTION dalgo.impact(uuid) IS
	'Everything downstream of a source, warehouse table, transformation or output that a change would touch, in run order (run_order 1 first); members of its organization';

CREATE FUNCTION dalgo.lineage_dot(organization_id uuid) RETURNS text
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	dot text;
BEGIN
	IF organization_id IS NULL OR NOT dalgo.caller_may(organization_id, 'viewer') THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- Names are users' text: in a DOT string only backslash, double quote and
	-- line breaks need escaping.
	WITH g AS MATERIALIZED (SELECT * FROM dalgo_internal.lineage_graph(organization_id))
	SELECT concat_ws(E'\n',
		'digraph lineage {',
		'  rankdir=LR;',
		'  node [fontname="Helvetica", fontsize=11];',
		(SELECT string_agg(format('  "%s" [label="%s\n%s", shape=%s, style=filled, fillcolor="%s"];', g.id,
								  replace(g.node_type, '_', ' '),
								  replace(replace(replace(replace(g.name, '\', '\\'), '"', '\"'), E'\r', ''), E'\n', '\n'),
								  CASE g.node_type WHEN 'source' THEN 'cylinder' WHEN 'warehouse_table' THEN 'box'
									   WHEN 'transformation' THEN 'ellipse' WHEN 'output' THEN 'note' ELSE 'octagon' END,
								  CASE g.node_type WHEN 'source' THEN '#cfe2f3' WHEN 'warehouse_table' THEN '#eeeeee'
									   WHEN 'transformation' THEN '#d9ead3' WHEN 'output' THEN '#fff2cc' ELSE '#f4cccc' END),
						  E'\n' ORDER BY g.node_type, g.name, g.id) FROM g),
		(SELECT string_agg(format('  "%s" -> "%s";', d, g.id), E'\n' ORDER BY g.id, d) FROM g, unnest(g.depends_on) d),
		'}') INTO dot;
	RETURN dot;
END
$$;
COMMENT ON FUNCTION dalgo.lineage_dot(uuid) IS
	'The lineage graph of an organization as Graphviz DOT (dot -Tsvg renders it); members of the organization';

REVOKE ALL ON FUNCTION dalgo.revert_transformation(uuid, integer), dalgo.diff_versions(uuid, integer, integer),
	dalgo_internal.recipe_references(jsonb), dalgo_internal.lineage_graph(uuid), dalgo_internal.lineage_node_organization(uuid),
	dalgo.lineage(uuid, uuid, text), dalgo.impact(uuid), dalgo.lineage_dot(uuid)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.revert_transformation(uuid, integer), dalgo.diff_versions(uuid, integer, integer),
	dalgo.lineage(uuid, uuid, text), dalgo.impact(uuid), dalgo.lineage_dot(uuid)
	TO dalgo_authenticated, dalgo_service;

-- ---------------------------------------------------------------------------
-- Export
-- ---------------------------------------------------------------------------

-- What export_warehouse_table reads: the checks and the compiled read of
-- read_warehouse_table (membership, the warehouse, a plain table name of the
-- organization's own schema).
CREATE FUNCTION dalgo_internal.export_query(organization_id uuid, table_name text) RETURNS text
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT dalgo.caller_may(organization_id, 'viewer') THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM dalgo.ensure_warehouse(organization_id);
	RETURN dalgo.compile_recipe(organization_id,
		jsonb_build_object('version', 1, 'source', jsonb_build_object('table', table_name), 'steps', '[]'::jsonb));
END
$$;
COMMENT ON FUNCTION dalgo_internal.export_query(uuid, text) IS
	'Internal: check that the caller may read the organization''s warehouse and return the compiled read of one of its tables';

-- A C set-returning function in value-per-call mode: one line per call,
-- read through a cursor in batches of about 1 MB, so that a table of any
-- size streams in flat memory.
CREATE FUNCTION dalgo.export_warehouse_table(organization_id uuid, table_name text, format text DEFAULT 'csv')
	RETURNS SETOF text
	AS 'MODULE_PATHNAME', 'dalgo_export_warehouse_table'
	LANGUAGE C VOLATILE SECURITY DEFINER PARALLEL UNSAFE
	SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION dalgo.export_warehouse_table(uuid, text, text) IS
	'Every row of one of the organization''s warehouse tables, one line per row, without a row cap: csv (a header line, then the rows as COPY (FORMAT csv) writes them), text (COPY''s text format) or json (one object per row). Streams in flat memory (call it in the select list); read as the warehouse role, read-only, for members of the organization, like read_warehouse_table';

-- Everything of an organization but its data and its secrets.
CREATE FUNCTION dalgo.export_organization(organization_id uuid) RETURNS jsonb
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org dalgo.organizations;
BEGIN
	SELECT * INTO org FROM dalgo.organizations o WHERE o.id = export_organization.organization_id AND o.deleted_at IS NULL;
	IF NOT FOUND OR NOT dalgo.caller_may(org.id, 'viewer') THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF NOT dalgo.caller_may(org.id, 'owner') THEN
		RAISE EXCEPTION 'exporting an organization needs the owner role' USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN jsonb_build_object(
		'format', 'dalgo organization export',
		'version', 1,
		'exported_at', now(),
		'organization', jsonb_build_object('id', org.id, 'name', org.name, 'slug', org.slug, 'description', org.description,
										   'org_type', org.org_type, 'settings', org.settings, 'created_at', org.created_at),
		'members', (SELECT coalesce(jsonb_agg(jsonb_build_object('user_id', u.id, 'email', u.email, 'full_name', u.full_name,
																  'role', m.role, 'since', m.created_at) ORDER BY m.role DESC, u.email), '[]')
					FROM dalgo.organization_members m JOIN dalgo.users u ON u.id = m.user_id
					WHERE m.organization_id = org.id AND m.deleted_at IS NULL AND u.deleted_at IS NULL),
		-- Credentials stay behind: the config as dalgo.redact shows it.
		'sources', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', s.id, 'name', s.name, 'description', s.description,
																  'source_type', s.source_type, 'config', dalgo.redact(s.config),
																  'warehouse_table_name', s.warehouse_table_name,
																  'last_synced_at', s.last_synced_at, 'created_at', s.created_at)
											 ORDER BY s.name, s.id), '[]')
					FROM dalgo.sources s WHERE s.organization_id = org.id AND s.deleted_at IS NULL),
		'transformations', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', t.id, 'name', t.name, 'description', t.description,
																  'recipe', t.recipe, 'output_table_name', t.output_table_name,
																  'current_version', t.current_version,
																  'versions', (SELECT coalesce(jsonb_agg(jsonb_build_object(
																		'version_number', v.version_number, 'recipe', v.recipe,
																		'created_by_id', v.created_by_id, 'change_description', v.change_description,
																		'created_at', v.created_at) ORDER BY v.version_number), '[]')
																	FROM dalgo.transformation_versions v
																	WHERE v.transformation_id = t.id AND v.organization_id = org.id
																	  AND v.deleted_at IS NULL))
											 ORDER BY t.name, t.id), '[]')
					FROM dalgo.transformations t WHERE t.organization_id = org.id AND t.deleted_at IS NULL),
		'outputs', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', o.id, 'name', o.name, 'description', o.description,
																  'transformation_id', o.transformation_id,
																  'destination_config', o.destination_config) ORDER BY o.name, o.id), '[]')
					FROM dalgo.outputs o WHERE o.organization_id = org.id AND o.deleted_at IS NULL),
		'schedules', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', s.id, 'source_id', s.source_id, 'output_id', s.output_id,
																	'frequency', s.frequency, 'run_at_time', s.run_at_time,
																	'run_at_day', s.run_at_day, 'timezone', s.timezone,
																	'is_active', s.is_active) ORDER BY s.created_at, s.id), '[]')
					  FROM dalgo.schedules s WHERE s.organization_id = org.id AND s.deleted_at IS NULL),
		'warehouse_tables', (SELECT coalesce(jsonb_agg(jsonb_build_object('table_name', w.table_name, 'row_count', w.row_count,
																	'size_bytes', w.size_bytes, 'columns', w.schema_info,
																	'last_updated_at', w.last_updated_at) ORDER BY w.table_name), '[]')
							 FROM dalgo.warehouse_tables w WHERE w.organization_id = org.id AND w.deleted_at IS NULL));
END
$$;
COMMENT ON FUNCTION dalgo.export_organization(uuid) IS
	'An organization''s metadata as one jsonb document: the organization, members, sources (config redacted: no credentials), transformations with every version, outputs, schedules and warehouse tables (names, sizes, columns; the rows come from export_warehouse_table). Owners only';

REVOKE ALL ON FUNCTION dalgo_internal.export_query(uuid, text), dalgo.export_warehouse_table(uuid, text, text),
	dalgo.export_organization(uuid)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.export_warehouse_table(uuid, text, text), dalgo.export_organization(uuid)
	TO dalgo_authenticated, dalgo_service;

-- ---------------------------------------------------------------------------
-- Syncs and refreshes on demand
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo_internal.wake_scheduler_at_commit() RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_wake_scheduler'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo_internal.wake_scheduler_at_commit() IS
	'Internal: wake this database''s scheduler when the transaction commits, so that it starts run workers for a run queued now';

-- Wait until a committed run finishes (each poll reads the latest committed
-- row); the caller's statement_timeout bounds the wait.
CREATE FUNCTION dalgo_internal.wait_for_run(run_kind dalgo.run_kind, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	WHILE EXISTS (SELECT FROM dalgo_internal.scheduled_runs r
				  WHERE r.run_kind = wait_for_run.run_kind AND r.id = run_id AND r.status IN ('pending', 'running')) LOOP
		PERFORM pg_sleep(0.05);
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo_internal.wait_for_run(dalgo.run_kind, uuid) IS
	'Internal: wait until a run another transaction committed is no longer pending or running';

-- The run of a source or an output that is pending or running, if any: the
-- one-run-at-a-time rule of claim_due_schedules, for both kinds of run.
CREATE FUNCTION dalgo_internal.active_run(run_kind dalgo.run_kind, target_id uuid) RETURNS uuid
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT r.id FROM dalgo.sync_runs r
	WHERE run_kind = 'sync' AND r.source_id = target_id AND r.status IN ('pending', 'running') AND r.deleted_at IS NULL
	UNION ALL
	SELECT r.id FROM dalgo.outputs o
	JOIN dalgo.transformation_runs r ON r.transformation_id = o.transformation_id AND r.organization_id = o.organization_id
	LEFT JOIN dalgo.schedules s ON s.output_id = o.id AND s.organization_id = o.organization_id
	WHERE run_kind = 'output' AND o.id = target_id AND r.status IN ('pending', 'running')
	  AND (r.details->>'output_id' = o.id::text OR r.details->>'schedule_id' = s.id::text)
	LIMIT 1
$$;
COMMENT ON FUNCTION dalgo_internal.active_run(dalgo.run_kind, uuid) IS
	'Internal: the pending or running run of a source (sync) or an output (output), if any';

-- The scheduler's rules, without a schedule: the same run rows, queue, run
-- workers, quotas and one-run-at-a-time rule.  The target's row is held FOR
-- UPDATE from the check until the caller's transaction ends, so that the
-- scheduler's claim (FOR KEY SHARE SKIP LOCKED) counts this run as going and
-- two calls queue one run.  A run already pending or running is the answer
-- (and the lock is given back: its worker updates the target's row).  wait:
-- a run queued by this call cannot reach a worker before the caller commits,
-- so it runs here, through the worker's own code (start, execute, fail); a
-- run already committed is waited for while a worker runs it.
CREATE FUNCTION dalgo_internal.run_now(run_kind dalgo.run_kind, target_id uuid, wait boolean) RETURNS uuid
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
	src dalgo.sources;
	o dalgo.outputs;
	tid uuid;
	rid uuid;
	connector boolean := false;
	noun text := CASE WHEN run_kind = 'sync' THEN 'source' ELSE 'output' END;
BEGIN
	IF run_kind = 'sync' THEN
		SELECT * INTO src FROM dalgo.sources x WHERE x.id = target_id AND x.deleted_at IS NULL;
		org := src.organization_id;
		connector := dalgo.is_connector_source(src.source_type);
	ELSE
		SELECT * INTO o FROM dalgo.outputs x WHERE x.id = target_id AND x.deleted_at IS NULL;
		org := o.organization_id;
		SELECT x.id INTO tid FROM dalgo.transformations x
		WHERE x.id = o.transformation_id AND x.organization_id = org AND x.deleted_at IS NULL;
	END IF;
	IF org IS NULL OR NOT dalgo.caller_may(org, 'viewer') OR (run_kind = 'output' AND tid IS NULL) THEN
		RAISE EXCEPTION '% % does not exist', noun, target_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT dalgo.caller_may(org, 'member') THEN
		RAISE EXCEPTION 'running a % now needs the member role', CASE WHEN run_kind = 'sync' THEN 'sync' ELSE 'refresh' END
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF wait AND connector THEN
		RAISE EXCEPTION 'a % source is synced by a connector, which sees the run only once this transaction commits', src.source_type
			USING ERRCODE = 'feature_not_supported',
				  HINT = 'Call sync_now with wait => false, commit, and read the run in dalgo.sync_runs.';
	END IF;
	IF wait AND current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'wait => true needs READ COMMITTED: the call must see the run finish'
			USING ERRCODE = 'feature_not_supported';
	END IF;
	rid := dalgo_internal.active_run(run_kind, target_id);
	IF rid IS NULL THEN
		BEGIN
			IF run_kind = 'sync' THEN
				PERFORM FROM dalgo.sources x WHERE x.id = target_id FOR UPDATE;
			ELSE
				PERFORM FROM dalgo.outputs x WHERE x.id = target_id FOR UPDATE;
			END IF;
			-- Checked again under the lock: a run committed while we waited for it.
			rid := dalgo_internal.active_run(run_kind, target_id);
			IF rid IS NOT NULL THEN
				RAISE EXCEPTION USING ERRCODE = 'DL001';	-- gives the lock back
			END IF;
		EXCEPTION WHEN SQLSTATE 'DL001' THEN
			NULL;
		END;
	END IF;
	IF rid IS NOT NULL THEN
		RAISE NOTICE 'a run of % % is already pending or running: %', noun, target_id, rid;
		IF wait THEN
			PERFORM dalgo_internal.wait_for_run(run_kind, rid);
		END IF;
		RETURN rid;
	END IF;
	-- Quotas refuse the call itself (the worker checks them again).
	PERFORM dalgo_internal.check_run_quota(org);
	IF run_kind = 'sync' THEN
		INSERT INTO dalgo.sync_runs (organization_id, source_id, status, triggered_by_id, details)
		VALUES (org, target_id, 'pending', dalgo.current_user_id(), '{"on_demand": true}')
		RETURNING id INTO rid;
	ELSE
		INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, triggered_by_id, details)
		VALUES (org, tid, 'pending', dalgo.current_user_id(), jsonb_build_object('on_demand', true, 'output_id', target_id))
		RETURNING id INTO rid;
	END IF;
	IF wait THEN
		PERFORM dalgo_internal.execute_claimed(ARRAY[rid], ARRAY[run_kind]);
	ELSIF connector THEN
		PERFORM pg_notify('dalgo_sync', '');
	ELSE
		PERFORM dalgo_internal.wake_scheduler_at_commit();
	END IF;
	RETURN rid;
END
$$;
COMMENT ON FUNCTION dalgo_internal.run_now(dalgo.run_kind, uuid, boolean) IS
	'Internal: queue (or, with wait, run here) a sync of a source or a refresh of an output without a schedule, under the scheduler''s rules; returns the run, or the run already pending or running';

CREATE FUNCTION dalgo.sync_now(source_id uuid, wait boolean DEFAULT false) RETURNS uuid
	LANGUAGE sql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	RETURN dalgo_internal.run_now('sync', source_id, coalesce(wait, false));
COMMENT ON FUNCTION dalgo.sync_now(uuid, boolean) IS
	'Sync a source now, without a schedule, for members and above: queues a run for the run workers (a connector''s, for google_sheets and api sources) and returns its id in dalgo.sync_runs, or the id of the run already pending or running (one run at a time, as for schedules). wait => true returns when the run has finished (in-database sources)';

CREATE FUNCTION dalgo.refresh_output_now(output_id uuid, wait boolean DEFAULT false) RETURNS uuid
	LANGUAGE sql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	RETURN dalgo_internal.run_now('output', output_id, coalesce(wait, false));
COMMENT ON FUNCTION dalgo.refresh_output_now(uuid, boolean) IS
	'Refresh an output now (its transformation with what it reads, then its destination), without a schedule, for members and above: queues a run for the run workers and returns its id in dalgo.transformation_runs, or the id of the run already pending or running. wait => true returns when the run has finished';

REVOKE ALL ON FUNCTION dalgo_internal.wake_scheduler_at_commit(), dalgo_internal.wait_for_run(dalgo.run_kind, uuid),
	dalgo_internal.active_run(dalgo.run_kind, uuid), dalgo_internal.run_now(dalgo.run_kind, uuid, boolean), dalgo.sync_now(uuid, boolean), dalgo.refresh_output_now(uuid, boolean)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.sync_now(uuid, boolean), dalgo.refresh_output_now(uuid, boolean)
	TO dalgo_authenticated, dalgo_service;

-- ---------------------------------------------------------------------------
-- Failure alerts
-- ---------------------------------------------------------------------------

-- When a scheduled run finishes: the schedule's failure streak is the run of
-- failed runs (skipped slots aside) up to this one.  The admins and owners
-- of the organization get one message when the streak reaches
-- dalgo.alert_after_failures, and one when a run succeeds after such a
-- streak, through the accounts' mail queue (NOTIFY dalgo_mail).  The error
-- is redacted (dalgo.redact) before it is queued.
CREATE FUNCTION dalgo_internal.record_run_alert() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer := greatest(coalesce(nullif(current_setting('dalgo.alert_after_failures', true), '')::integer, 1), 1);
	sid uuid;
	s dalgo.schedules;
	org dalgo.organizations;
	previous text[];
	before integer;
	target_type text;
	target_name text;
	kind text;
	payload jsonb;
	recipient text;
BEGIN
	IF dalgo.restoring() OR NEW.details ? 'skipped' THEN
		RETURN NULL;
	END IF;
	BEGIN
		sid := (NEW.details->>'schedule_id')::uuid;
	EXCEPTION WHEN invalid_text_representation THEN
		RETURN NULL;
	END;
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = sid AND x.organization_id = NEW.organization_id;
	SELECT * INTO org FROM dalgo.organizations o WHERE o.id = NEW.organization_id AND o.deleted_at IS NULL;
	IF s.id IS NULL OR org.id IS NULL THEN
		RETURN NULL;
	END IF;
	-- The outcomes of the schedule's previous runs, newest first: n of them
	-- tell whether the streak before this run was n - 1 long, or reached n.
	IF TG_TABLE_NAME = 'sync_runs' THEN
		previous := ARRAY(SELECT r.status::text FROM dalgo.sync_runs r
						  WHERE r.source_id = NEW.source_id AND r.organization_id = NEW.organization_id AND r.id <> NEW.id
							AND r.details->>'schedule_id' = sid::text AND NOT r.details ? 'skipped'
							AND r.status IN ('success', 'failed')
						  ORDER BY r.completed_at DESC NULLS LAST, r.created_at DESC LIMIT n);
		target_type := 'source';
		SELECT x.name INTO target_name FROM dalgo.sources x WHERE x.id = s.source_id;
	ELSE
		previous := ARRAY(SELECT r.status::text FROM dalgo.transformation_runs r
						  WHERE r.transformation_id = NEW.transformation_id AND r.organization_id = NEW.organization_id
							AND r.id <> NEW.id AND r.details->>'schedule_id' = sid::text AND NOT r.details ? 'skipped'
							AND r.status IN ('success', 'failed')
						  ORDER BY r.completed_at DESC NULLS LAST, r.created_at DESC LIMIT n);
		target_type := 'output';
		SELECT x.name INTO target_name FROM dalgo.outputs x WHERE x.id = s.output_id;
	END IF;
	before := coalesce(array_position(previous, 'success') - 1, cardinality(previous));
	IF NEW.status = 'failed' AND before = n - 1 THEN
		kind := 'run_failed';
	ELSIF NEW.status = 'success' AND before >= n THEN
		kind := 'run_recovered';
	ELSE
		RETURN NULL;
	END IF;
	payload := jsonb_build_object(
		'organization_id', org.id, 'organization_name', org.name,
		'schedule_id', s.id, 'target_type', target_type, 'target_id', coalesce(s.source_id, s.output_id),
		'target_name', target_name, 'run_id', NEW.id, 'at', NEW.completed_at,
		'failures', CASE WHEN kind = 'run_failed' THEN n END,
		'error', CASE WHEN kind = 'run_failed' THEN dalgo.redact(NEW.error_message) END,
		'subject', CASE WHEN kind = 'run_failed'
						THEN format('[%s] %s "%s" failed%s', org.name, CASE WHEN target_type = 'source' THEN 'sync of' ELSE 'refresh of' END,
									target_name, CASE WHEN n > 1 THEN format(' %s times in a row', n) ELSE '' END)
						ELSE format('[%s] %s "%s" is back to normal', org.name,
									CASE WHEN target_type = 'source' THEN 'sync of' ELSE 'refresh of' END, target_name) END);
	FOR recipient IN
		SELECT DISTINCT u.email FROM dalgo.organization_members m JOIN dalgo.users u ON u.id = m.user_id
		WHERE m.organization_id = org.id AND m.deleted_at IS NULL AND m.role >= 'admin'
		  AND u.deleted_at IS NULL AND u.is_active
		ORDER BY u.email
	LOOP
		PERFORM dalgo_internal.queue_mail(kind, recipient, payload);
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo_internal.record_run_alert() IS
	'AFTER UPDATE trigger on sync_runs and transformation_runs: when a scheduled run fails for the dalgo.alert_after_failures-th time in a row, or succeeds after such a streak, queue one run_failed or run_recovered message (error redacted) to each admin and owner of the organization';
CREATE TRIGGER alert_on_outcome AFTER UPDATE OF status ON dalgo.sync_runs
	FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('success', 'failed')
					   AND NEW.details ? 'schedule_id')
	EXECUTE FUNCTION dalgo_internal.record_run_alert();
COMMENT ON TRIGGER alert_on_outcome ON dalgo.sync_runs IS 'Failure alerts: one message per failure streak of a schedule, one on recovery';
CREATE TRIGGER alert_on_outcome AFTER UPDATE OF status ON dalgo.transformation_runs
	FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('success', 'failed')
					   AND NEW.details ? 'schedule_id')
	EXECUTE FUNCTION dalgo_internal.record_run_alert();
COMMENT ON TRIGGER alert_on_outcome ON dalgo.transformation_runs IS 'Failure alerts: one message per failure streak of a schedule, one on recovery';
REVOKE ALL ON FUNCTION dalgo_internal.record_run_alert() FROM PUBLIC;

-- Run errors are read by every member of the organization (and mailed to
-- its admins): whatever wrote one (a worker, a connector, a failed build),
-- it is stored redacted, so that a secret of a source's write-only config
-- quoted by an error does not reach them.
CREATE FUNCTION dalgo_internal.redact_run_error() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP = 'INSERT' AND dalgo.restoring() THEN RETURN NEW; END IF;	-- restored as dumped
	NEW.error_message := dalgo.redact(NEW.error_message);
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo_internal.redact_run_error() IS
	'BEFORE INSERT OR UPDATE trigger on sync_runs and transformation_runs: stores error_message redacted (dalgo.redact)';
CREATE TRIGGER redact_error BEFORE INSERT OR UPDATE OF error_message ON dalgo.sync_runs
	FOR EACH ROW WHEN (NEW.error_message IS NOT NULL) EXECUTE FUNCTION dalgo_internal.redact_run_error();
COMMENT ON TRIGGER redact_error ON dalgo.sync_runs IS 'Run errors are stored redacted';
CREATE TRIGGER redact_error BEFORE INSERT OR UPDATE OF error_message ON dalgo.transformation_runs
	FOR EACH ROW WHEN (NEW.error_message IS NOT NULL) EXECUTE FUNCTION dalgo_internal.redact_run_error();
COMMENT ON TRIGGER redact_error ON dalgo.transformation_runs IS 'Run errors are stored redacted';
REVOKE ALL ON FUNCTION dalgo_internal.redact_run_error() FROM PUBLIC;


-- s13: dalgo's own secrets at rest (issue 13 item 5).  The credentials
-- object of sources.config and warehouse_connections.access_token_encrypted
-- are stored encrypted, bound to their row, by BEFORE triggers; only
-- dalgo_internal.source_credentials() / warehouse_access_token() decrypt;
-- source_config() masks credentials; rotate_secret_key() re-encrypts them.
-- The toolkit's encryption calls pgcrypto's library directly (no CREATE
-- EXTENSION pgcrypto), with s2k-mode=1, and the key file is created on
-- first need.  Plaintext credentials of 0.1.0 databases are encrypted here.
-- pgp_sym_encrypt and pgp_sym_decrypt in pgcrypto's library, as
-- sql/accounts.sql does for crypt(): no CREATE EXTENSION pgcrypto needed.
CREATE FUNCTION dalgo_internal.pgcrypto_pgp_sym_encrypt(data text, key text, options text) RETURNS bytea
	AS '$libdir/pgcrypto', 'pgp_sym_encrypt_text'
	LANGUAGE C STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_internal.pgcrypto_pgp_sym_encrypt(text, text, text) IS 'pgcrypto''s pgp_sym_encrypt(data, key, options), called in pgcrypto''s library (private)';

CREATE FUNCTION dalgo_internal.pgcrypto_pgp_sym_decrypt(data bytea, key text) RETURNS text
	AS '$libdir/pgcrypto', 'pgp_sym_decrypt_text'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_internal.pgcrypto_pgp_sym_decrypt(bytea, text) IS 'pgcrypto''s pgp_sym_decrypt(data, key), called in pgcrypto''s library (private)';

-- Write the key file: keys is the current key, then the previous one on
-- the next line.  The keys never appear in a statement's text (logs, error
-- contexts): COPY reads them from a transaction-local setting.
CREATE FUNCTION dalgo_internal.write_secret_key(keys text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM pg_catalog.set_config('dalgo_toolkit.pending_key', keys, true);
	EXECUTE pg_catalog.format('COPY (SELECT pg_catalog.unnest(pg_catalog.string_to_array('
							  'pg_catalog.current_setting(''dalgo_toolkit.pending_key''), E''\n''))) TO %L',
							  pg_catalog.current_setting('data_directory') || '/dalgo_secret.key');
	PERFORM pg_catalog.set_config('dalgo_toolkit.pending_key', '', true);
END
$$;
COMMENT ON FUNCTION dalgo_internal.write_secret_key(text) IS
	'Internal: writes dalgo_secret.key in the data directory (the current key, then the previous one)';

-- The key to encrypt with: created (32 random bytes) when there is none yet.
CREATE FUNCTION dalgo_internal.secret_key_for_writing() RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
BEGIN
	IF k IS NULL OR k = '' THEN
		-- One creator at a time; the file outlives a rollback, so a
		-- second creator finds it after the first one's lock is gone.
		PERFORM pg_catalog.pg_advisory_xact_lock(7316028433216171853);
		k := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
		IF k IS NULL OR k = '' THEN
			k := pg_catalog.encode(dalgo_internal.pgcrypto_random_bytes(32), 'hex');
			PERFORM dalgo_internal.write_secret_key(k);
			RAISE LOG 'dalgo: created the secret key dalgo_secret.key in the data directory; back it up apart from the database';
		END IF;
	END IF;
	RETURN k;
END
$$;
COMMENT ON FUNCTION dalgo_internal.secret_key_for_writing() IS
	'Internal: the encryption key, created (32 random bytes in dalgo_secret.key of the data directory) on first need';

-- Encrypt one value (already encrypted values are returned as they are).
CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_encrypt(plain text, key text) RETURNS text
	LANGUAGE plpgsql VOLATILE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c bytea;
BEGIN
	IF plain IS NULL OR pg_catalog.starts_with(plain, 'dalgo:pgp1:') THEN
		RETURN plain;
	END IF;
	-- s2k-mode=1 (salted, not iterated): the key is random, not a password,
	-- and iterating would cost a quarter millisecond per value.
	c := dalgo_internal.pgcrypto_pgp_sym_encrypt(plain, pg_catalog.split_part(key, E'\n', 1), 'cipher-algo=aes256, s2k-mode=1');
	RETURN 'dalgo:pgp1:' || pg_catalog.translate(pg_catalog.encode(c, 'base64'), E'\n', '');
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_encrypt(text, text) IS 'Internal: pgp_sym_encrypt (AES-256) a value into dalgo''s stored form';

-- Decrypt one stored value.
CREATE OR REPLACE FUNCTION dalgo_internal.toolkit_decrypt(stored text, key text) RETURNS text
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text;
BEGIN
	IF stored IS NULL OR NOT pg_catalog.starts_with(stored, 'dalgo:pgp1:') THEN
		RETURN stored;
	END IF;
	-- The current key first, then the previous one (see rotate_secret_key).
	FOREACH k IN ARRAY pg_catalog.string_to_array(key, E'\n') LOOP
		BEGIN
			RETURN dalgo_internal.pgcrypto_pgp_sym_decrypt(pg_catalog.decode(pg_catalog.substr(stored, 12), 'base64'), k);
		EXCEPTION WHEN external_routine_invocation_exception OR data_exception THEN
			NULL;
		END;
	END LOOP;
	RAISE EXCEPTION 'a stored secret cannot be decrypted with the current or the previous key'
		USING ERRCODE = 'data_corrupted';
END
$$;
COMMENT ON FUNCTION dalgo_internal.toolkit_decrypt(text, text) IS
	'Internal: decrypt a value stored by dalgo_internal.toolkit_encrypt(), with the current key or else the previous one';

CREATE OR REPLACE FUNCTION dalgo.enable_encryption(tbl regclass, "column" name, org_column name DEFAULT 'organization_id',
										read_role dalgo.member_role DEFAULT 'admin')
	RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target text := dalgo_internal.toolkit_target(tbl);
BEGIN
	PERFORM dalgo_internal.secret_key_for_writing();
	PERFORM dalgo_internal.toolkit_column(tbl, "column", ARRAY['text'::regtype, 'varchar'::regtype, 'json'::regtype, 'jsonb'::regtype]);
	PERFORM dalgo_internal.toolkit_column(tbl, org_column, ARRAY['uuid'::regtype]);
	IF read_role IS NULL THEN
		RAISE EXCEPTION 'read_role is required' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF (SELECT pg_catalog.count(*) FROM pg_catalog.pg_constraint WHERE conrelid OPERATOR(pg_catalog.=) tbl AND contype = 'p'
		AND pg_catalog.cardinality(conkey) OPERATOR(pg_catalog.=) 1) OPERATOR(pg_catalog.<>) 1 THEN
		RAISE EXCEPTION '% needs a one-column primary key', tbl USING ERRCODE = 'invalid_table_definition';
	END IF;
	EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER %I BEFORE INSERT OR UPDATE ON %s '
							  'FOR EACH ROW EXECUTE FUNCTION dalgo_internal.set_encrypted_column(%L, %L, %L)',
							  'dalgo_encrypt_' || "column", target, "column", org_column, read_role);
	EXECUTE pg_catalog.format('COMMENT ON TRIGGER %I ON %s IS %L', 'dalgo_encrypt_' || "column", target,
							  pg_catalog.format('%s is stored encrypted (dalgo toolkit)', "column"));
	-- Encrypt what is there (the trigger does the work).
	RETURN dalgo_internal.toolkit_rewrite_unaudited(tbl,
		pg_catalog.format('UPDATE %s SET %I = %I WHERE %I IS NOT NULL', target, "column", "column", "column"));
END
$$;
COMMENT ON FUNCTION dalgo.enable_encryption(regclass, name, name, dalgo.member_role) IS
	'Store a text, json or jsonb column encrypted at rest (pgcrypto, AES-256, key in the data directory): existing values are encrypted now, new ones on write. Members at read_role of the row''s organization read it with dalgo.read_secret(), dalgo_service with dalgo.read_secret_service(). Superusers; returns the rows encrypted';

CREATE OR REPLACE FUNCTION dalgo.rotate_secret_key(new_key text DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	old_key text;
	k text := new_key;
	t record;
	n bigint;
	total bigint := 0;
BEGIN
	-- One writer of the key file at a time (dalgo_internal.secret_key_for_writing).
	PERFORM pg_catalog.pg_advisory_xact_lock(7316028433216171853);
	old_key := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
	IF k IS NULL THEN
		k := pg_catalog.encode(dalgo_internal.pgcrypto_random_bytes(32), 'hex');
	ELSIF pg_catalog.length(k) OPERATOR(pg_catalog.<) 16 OR k !~ '^[A-Za-z0-9+/=_-]+$' THEN
		RAISE EXCEPTION 'a secret key has at least 16 characters among A-Z, a-z, 0-9, +, /, =, _ and -'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF old_key IS NOT NULL AND old_key <> '' THEN
		old_key := dalgo_internal.toolkit_secret_key();
		FOR t IN SELECT tr.tgrelid::regclass AS tbl, a.attname, a.atttypid IN ('json'::regtype, 'jsonb'::regtype) AS is_json,
					  pg_catalog.format_type(a.atttypid, a.atttypmod) AS coltype
				 FROM pg_catalog.pg_trigger tr
				 JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) tr.tgrelid
					AND a.attname OPERATOR(pg_catalog.=) pg_catalog.split_part(pg_catalog.encode(tr.tgargs, 'escape'), E'\\000', 1)
				 WHERE tr.tgfoid OPERATOR(pg_catalog.=) 'dalgo_internal.set_encrypted_column()'::regprocedure
		LOOP
			EXECUTE pg_catalog.format('UPDATE %s SET %I = %s(dalgo_internal.toolkit_encrypt(dalgo_internal.toolkit_decrypt('
				'dalgo_internal.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1), $2), $3))::%s '
				'WHERE pg_catalog.starts_with(dalgo_internal.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1), ''dalgo:pgp1:'')',
				t.tbl, t.attname, CASE WHEN t.is_json THEN 'pg_catalog.to_jsonb' ELSE '' END, t.attname, t.coltype, t.attname)
				USING t.is_json, old_key, k;
			GET DIAGNOSTICS n = ROW_COUNT;
			total := total OPERATOR(pg_catalog.+) n;
		END LOOP;
		-- dalgo's own secrets: sources.config.credentials, warehouse access tokens.
		total := total OPERATOR(pg_catalog.+) dalgo_internal.reseal_own_secrets(old_key, k);
	END IF;
	-- The file keeps the previous key after the new one: if this transaction
	-- rolls back after the file is written, the values it re-encrypted are
	-- still readable.
	PERFORM dalgo_internal.write_secret_key(k || coalesce(E'\n' || NULLIF(pg_catalog.split_part(old_key, E'\n', 1), ''), ''));
	RETURN total;
END
$$;
COMMENT ON FUNCTION dalgo.rotate_secret_key(text) IS
	'Set the encryption key (new_key, or 32 random bytes) and re-encrypt under it every value stored by dalgo.enable_encryption(), the credentials in dalgo.sources.config and the warehouse access tokens; returns the values re-encrypted. Superusers. The key is the file dalgo_secret.key in the data directory: back it up apart from the database';

DROP FUNCTION dalgo_internal.toolkit_pgcrypto();
REVOKE ALL ON FUNCTION
	dalgo_internal.pgcrypto_pgp_sym_encrypt(text, text, text), dalgo_internal.pgcrypto_pgp_sym_decrypt(bytea, text),
	dalgo_internal.write_secret_key(text), dalgo_internal.secret_key_for_writing()
	FROM PUBLIC;

CREATE OR REPLACE FUNCTION dalgo.source_config(source_id uuid) RETURNS jsonb
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
	doc jsonb;
BEGIN
	SELECT s.organization_id, s.config INTO org, doc FROM dalgo.sources s WHERE s.id = source_config.source_id;
	-- The same test as the read policy on sources: no row, no answer.
	IF NOT FOUND OR NOT coalesce(org OPERATOR(pg_catalog.=) ANY (dalgo.current_org_ids('viewer')), false) THEN
		RETURN NULL;
	END IF;
	-- Credentials, even encrypted, never leave: only whether they are set.
	IF doc ? 'credentials' THEN
		doc := pg_catalog.jsonb_set(doc, '{credentials}', '"[redacted]"');
	END IF;
	RETURN dalgo.redact(doc);
END
$$;
COMMENT ON FUNCTION dalgo.source_config(uuid) IS
	'A source''s config with its secrets redacted (dalgo.redact) and credentials shown as "[redacted]" when set, for members of the source''s organization; NULL for a source the caller cannot see. Stored secrets are write-only: replace them with UPDATE';
COMMENT ON COLUMN dalgo.sources.config IS
	'Source settings; credentials go under the key credentials (a JSON object), stored encrypted and decrypted only for the sync workers (credentials: null removes them). Write-only for end users: read it with dalgo.source_config(), redacted; redacted in the audit trail';

-- ---------------------------------------------------------------------------
-- Secrets at rest in dalgo's own tables
-- ---------------------------------------------------------------------------
-- The credentials object of dalgo.sources.config and
-- dalgo.warehouse_connections.access_token_encrypted are stored encrypted
-- with the toolkit's encryption (dalgo_internal.toolkit_encrypt: pgcrypto's
-- pgp_sym_encrypt, AES-256, the key file dalgo_secret.key of the data
-- directory, created on first need).  What is encrypted is the value bound
-- to its row, {"id": <row id>, "value": <secret>}, so that a stored value
-- copied into another row never decrypts there.  A BEFORE trigger encrypts
-- what is written; only the internal readers decrypt:
-- dalgo_internal.source_credentials() and
-- dalgo_internal.warehouse_access_token(), which no app role may execute.

-- Encrypt a secret bound to the id of its row.
CREATE FUNCTION dalgo_internal.seal_secret(id uuid, value jsonb, key text) RETURNS text
	LANGUAGE plpgsql VOLATILE
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN dalgo_internal.toolkit_encrypt(pg_catalog.jsonb_build_object('id', id, 'value', value)::text, key);
END
$$;
COMMENT ON FUNCTION dalgo_internal.seal_secret(uuid, jsonb, text) IS
	'Internal: the stored form (dalgo:pgp1:...) of a secret of dalgo''s own tables, bound to the id of its row';

-- Decrypt a secret of the row id; if it belongs to another row or cannot
-- be decrypted, raises (or with missing_ok returns SQL NULL).
CREATE FUNCTION dalgo_internal.open_secret(id uuid, stored text, key text, missing_ok boolean DEFAULT false) RETURNS jsonb
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	doc jsonb;
BEGIN
	IF stored IS NULL THEN
		RETURN NULL;
	END IF;
	BEGIN
		doc := dalgo_internal.toolkit_decrypt(stored, key)::jsonb;
	EXCEPTION WHEN data_corrupted OR invalid_text_representation THEN
		doc := NULL;
	END;
	IF doc IS NULL OR pg_catalog.jsonb_typeof(doc) <> 'object' OR (doc OPERATOR(pg_catalog.->>) 'id') IS DISTINCT FROM id::text THEN
		IF missing_ok THEN
			RETURN NULL;
		END IF;
		RAISE EXCEPTION 'the stored secret of % cannot be decrypted', id USING ERRCODE = 'data_corrupted',
			HINT = 'Set it again. dalgo decrypts with the key file dalgo_secret.key of the data directory (the current key, then the previous one).';
	END IF;
	RETURN doc OPERATOR(pg_catalog.->) 'value';
END
$$;
COMMENT ON FUNCTION dalgo_internal.open_secret(uuid, text, text, boolean) IS
	'Internal: the plaintext of a secret stored by dalgo_internal.seal_secret() for the row id; raises (without the value), or with missing_ok returns NULL, if it belongs to another row or the key does not open it';

-- True for the stored form of a secret.
CREATE FUNCTION dalgo_internal.is_sealed(value jsonb) RETURNS boolean
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
	RETURN pg_catalog.jsonb_typeof(value) = 'string' AND pg_catalog.starts_with(value OPERATOR(pg_catalog.#>>) '{}'::text[], 'dalgo:pgp1:');
COMMENT ON FUNCTION dalgo_internal.is_sealed(jsonb) IS 'Internal: whether a json value is an encrypted secret (dalgo:pgp1:...)';

-- sources: config.credentials is stored encrypted.
CREATE FUNCTION dalgo_internal.encrypt_source_credentials() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c jsonb := NEW.config OPERATOR(pg_catalog.->) 'credentials';
BEGIN
	IF c IS NULL THEN
		RETURN NEW;
	ELSIF pg_catalog.jsonb_typeof(c) = 'null' THEN
		NEW.config := NEW.config OPERATOR(pg_catalog.-) 'credentials';
	ELSIF dalgo_internal.is_sealed(c) THEN
		IF TG_OP = 'UPDATE' AND c OPERATOR(pg_catalog.=) (OLD.config OPERATOR(pg_catalog.->) 'credentials') THEN
			-- Kept as stored (an update of other keys); a new id re-binds it.
			IF NEW.id OPERATOR(pg_catalog.<>) OLD.id THEN
				NEW.config := pg_catalog.jsonb_set(NEW.config, '{credentials}', pg_catalog.to_jsonb(dalgo_internal.seal_secret(NEW.id,
					dalgo_internal.open_secret(OLD.id, c OPERATOR(pg_catalog.#>>) '{}'::text[], dalgo_internal.toolkit_secret_key()),
					dalgo_internal.secret_key_for_writing())));
			END IF;
		ELSIF NOT dalgo.restoring() AND dalgo_internal.open_secret(NEW.id, c OPERATOR(pg_catalog.#>>) '{}'::text[],
																  dalgo_internal.toolkit_secret_key(), true) IS NULL THEN
			-- A stored value is only ever this source's own (a restore may
			-- bring values before their key): a copied or made-up one is refused.
			RAISE EXCEPTION 'config.credentials holds an encrypted value that is not this source''s'
				USING ERRCODE = 'invalid_parameter_value', HINT = 'Write the credentials as a JSON object; dalgo encrypts them.';
		END IF;
	ELSE
		-- Plaintext, restored rows of 0.1.0 dumps included.
		NEW.config := pg_catalog.jsonb_set(NEW.config, '{credentials}',
			pg_catalog.to_jsonb(dalgo_internal.seal_secret(NEW.id, c, dalgo_internal.secret_key_for_writing())));
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo_internal.encrypt_source_credentials() IS
	'BEFORE trigger on sources: config.credentials is stored encrypted, bound to the source (credentials: null removes them; a stored value is kept)';
CREATE TRIGGER encrypt_credentials BEFORE INSERT OR UPDATE ON dalgo.sources
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.encrypt_source_credentials();
COMMENT ON TRIGGER encrypt_credentials ON dalgo.sources IS 'config.credentials is stored encrypted';

-- warehouse_connections: access_token_encrypted is stored encrypted.
CREATE FUNCTION dalgo_internal.encrypt_access_token() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.access_token_encrypted IS NULL THEN
		RETURN NEW;
	ELSIF pg_catalog.starts_with(NEW.access_token_encrypted, 'dalgo:pgp1:') THEN
		IF TG_OP = 'UPDATE' AND NEW.access_token_encrypted OPERATOR(pg_catalog.=) OLD.access_token_encrypted THEN
			IF NEW.id OPERATOR(pg_catalog.<>) OLD.id THEN
				NEW.access_token_encrypted := dalgo_internal.seal_secret(NEW.id,
					dalgo_internal.open_secret(OLD.id, NEW.access_token_encrypted, dalgo_internal.toolkit_secret_key()),
					dalgo_internal.secret_key_for_writing());
			END IF;
		ELSIF NOT dalgo.restoring() AND dalgo_internal.open_secret(NEW.id, NEW.access_token_encrypted,
																  dalgo_internal.toolkit_secret_key(), true) IS NULL THEN
			RAISE EXCEPTION 'access_token_encrypted holds an encrypted value that is not this connection''s'
				USING ERRCODE = 'invalid_parameter_value', HINT = 'Write the token in plaintext; dalgo encrypts it.';
		END IF;
	ELSE
		NEW.access_token_encrypted := dalgo_internal.seal_secret(NEW.id, pg_catalog.to_jsonb(NEW.access_token_encrypted),
			dalgo_internal.secret_key_for_writing());
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo_internal.encrypt_access_token() IS
	'BEFORE trigger on warehouse_connections: access_token_encrypted is stored encrypted, bound to the connection';
CREATE TRIGGER encrypt_access_token BEFORE INSERT OR UPDATE ON dalgo.warehouse_connections
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.encrypt_access_token();
COMMENT ON TRIGGER encrypt_access_token ON dalgo.warehouse_connections IS 'access_token_encrypted is stored encrypted';

-- The one reader of a source's credentials: the sync workers.
CREATE FUNCTION dalgo_internal.source_credentials(source_id uuid) RETURNS jsonb
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c jsonb;
BEGIN
	SELECT s.config OPERATOR(pg_catalog.->) 'credentials' INTO c FROM dalgo.sources s
	WHERE s.id OPERATOR(pg_catalog.=) source_credentials.source_id;
	IF c IS NULL OR pg_catalog.jsonb_typeof(c) = 'null' THEN
		RETURN NULL;
	ELSIF dalgo_internal.is_sealed(c) THEN
		RETURN dalgo_internal.open_secret(source_id, c OPERATOR(pg_catalog.#>>) '{}'::text[], dalgo_internal.toolkit_secret_key());
	END IF;
	RETURN c;
END
$$;
COMMENT ON FUNCTION dalgo_internal.source_credentials(uuid) IS
	'Internal, for the sync workers only: the plaintext credentials object of a source (config.credentials), or NULL; raises (without the value) if they cannot be decrypted. No app role may execute it';

-- The reader of a warehouse connection's access token.
CREATE FUNCTION dalgo_internal.warehouse_access_token(warehouse_connection_id uuid) RETURNS text
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t text;
BEGIN
	SELECT w.access_token_encrypted INTO t FROM dalgo.warehouse_connections w
	WHERE w.id OPERATOR(pg_catalog.=) warehouse_access_token.warehouse_connection_id;
	IF t IS NULL OR NOT pg_catalog.starts_with(t, 'dalgo:pgp1:') THEN
		RETURN t;
	END IF;
	RETURN dalgo_internal.open_secret(warehouse_connection_id, t, dalgo_internal.toolkit_secret_key()) OPERATOR(pg_catalog.#>>) '{}'::text[];
END
$$;
COMMENT ON FUNCTION dalgo_internal.warehouse_access_token(uuid) IS
	'Internal, for dalgo''s workers only: the plaintext access token of a warehouse connection, or NULL. No app role may execute it';

-- Encrypt the plaintext secrets of dalgo's tables (an update from 0.1.0)
-- and, given the previous key, re-encrypt the encrypted ones under new_key
-- (dalgo.rotate_secret_key).  Neither the audit trail nor updated_at sees
-- it: the values do not change.  Superusers.
CREATE FUNCTION dalgo_internal.reseal_own_secrets(old_key text, new_key text) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
	total bigint := 0;
	role text := pg_catalog.current_setting('session_replication_role');
BEGIN
	PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
	-- A stored value that no key opens is left as it is (it is lost already).
	UPDATE dalgo.sources s SET config = pg_catalog.jsonb_set(s.config, '{credentials}', pg_catalog.to_jsonb(dalgo_internal.seal_secret(s.id, v.plain, new_key)))
	FROM (SELECT x.id, CASE WHEN dalgo_internal.is_sealed(x.config OPERATOR(pg_catalog.->) 'credentials')
							THEN dalgo_internal.open_secret(x.id, x.config OPERATOR(pg_catalog.->>) 'credentials', old_key, true)
							ELSE x.config OPERATOR(pg_catalog.->) 'credentials' END AS plain
		  FROM dalgo.sources x
		  WHERE pg_catalog.jsonb_typeof(x.config OPERATOR(pg_catalog.->) 'credentials') <> 'null'
			AND (old_key IS NOT NULL OR NOT dalgo_internal.is_sealed(x.config OPERATOR(pg_catalog.->) 'credentials'))) v
	WHERE s.id OPERATOR(pg_catalog.=) v.id AND v.plain IS NOT NULL;
	GET DIAGNOSTICS n = ROW_COUNT;
	total := n;
	UPDATE dalgo.warehouse_connections w SET access_token_encrypted = dalgo_internal.seal_secret(w.id, v.plain, new_key)
	FROM (SELECT x.id, CASE WHEN pg_catalog.starts_with(x.access_token_encrypted, 'dalgo:pgp1:')
							THEN dalgo_internal.open_secret(x.id, x.access_token_encrypted, old_key, true)
							ELSE pg_catalog.to_jsonb(x.access_token_encrypted) END AS plain
		  FROM dalgo.warehouse_connections x
		  WHERE x.access_token_encrypted IS NOT NULL
			AND (old_key IS NOT NULL OR NOT pg_catalog.starts_with(x.access_token_encrypted, 'dalgo:pgp1:'))) v
	WHERE w.id OPERATOR(pg_catalog.=) v.id AND v.plain IS NOT NULL;
	GET DIAGNOSTICS n = ROW_COUNT;
	PERFORM pg_catalog.set_config('session_replication_role', role, true);
	RETURN total OPERATOR(pg_catalog.+) n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.reseal_own_secrets(text, text) IS
	'Internal: encrypts the plaintext credentials of sources and warehouse access tokens under new_key, and with old_key given re-encrypts the encrypted ones; without audit rows or updated_at changes';

REVOKE ALL ON FUNCTION dalgo_internal.seal_secret(uuid, jsonb, text), dalgo_internal.open_secret(uuid, text, text, boolean),
	dalgo_internal.is_sealed(jsonb), dalgo_internal.encrypt_source_credentials(), dalgo_internal.encrypt_access_token(),
	dalgo_internal.source_credentials(uuid), dalgo_internal.warehouse_access_token(uuid),
	dalgo_internal.reseal_own_secrets(text, text)
	FROM PUBLIC;
COMMENT ON COLUMN dalgo.warehouse_connections.access_token_encrypted IS
	'Warehouse credential, stored encrypted (written in plaintext, encrypted by a trigger); never readable by end-user roles, never audited';

-- Credentials that 0.1.0 stored in plaintext are encrypted now (the key
-- file is created if there is none), without audit rows or updated_at changes.
DO $$
BEGIN
	IF EXISTS (SELECT FROM dalgo.sources s WHERE pg_catalog.jsonb_typeof(s.config -> 'credentials') <> 'null'
			   AND NOT dalgo_internal.is_sealed(s.config -> 'credentials'))
	   OR EXISTS (SELECT FROM dalgo.warehouse_connections w WHERE w.access_token_encrypted IS NOT NULL
				  AND NOT starts_with(w.access_token_encrypted, 'dalgo:pgp1:')) THEN
		PERFORM dalgo_internal.reseal_own_secrets(NULL, dalgo_internal.secret_key_for_writing());
	END IF;
END
$$;


-- s13: per-user retention (issue 13 item 3): a policy may take each user's
-- number of days from a column of another table (the seed's
-- privacy_prefs.dataRetentionDays); set_retention gains user_column,
-- user_days and user_key.
ALTER TABLE dalgo.retention_policies
	ADD COLUMN user_column name,
	ADD COLUMN user_days_table regclass,
	ADD COLUMN user_days_column name,
	ADD COLUMN user_key_column name,
	ADD CONSTRAINT retention_policies_user_days CHECK (num_nulls(user_column, user_days_table, user_days_column, user_key_column) IN (0, 4));
COMMENT ON COLUMN dalgo.retention_policies.user_column IS 'Per-user override: the column of the table naming the row''s user';
COMMENT ON COLUMN dalgo.retention_policies.user_days_table IS 'Per-user override: the table holding each user''s number of days';
COMMENT ON COLUMN dalgo.retention_policies.user_days_column IS 'Per-user override: its column of days (NULL or below 1: retention_days)';
COMMENT ON COLUMN dalgo.retention_policies.user_key_column IS 'Per-user override: its column matched to user_column (unique)';
COMMENT ON CONSTRAINT retention_policies_user_days ON dalgo.retention_policies IS 'A per-user override names all four, or none';

CREATE OR REPLACE FUNCTION dalgo_internal.record_restored_retention_policy() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT dalgo.restoring() THEN
		RETURN NEW;
	END IF;
	UPDATE dalgo.retention_policies p
	SET id = NEW.id, time_column = NEW.time_column, retention_days = NEW.retention_days, action = NEW.action,
		columns = NEW.columns, enabled = NEW.enabled, last_run_at = NEW.last_run_at, last_rows = NEW.last_rows,
		created_at = NEW.created_at, updated_at = NEW.updated_at, user_column = NEW.user_column,
		user_days_table = NEW.user_days_table, user_days_column = NEW.user_days_column, user_key_column = NEW.user_key_column
	WHERE p.table_name = NEW.table_name;
	IF FOUND THEN
		RETURN NULL;
	END IF;
	RETURN NEW;
END
$$;

DROP FUNCTION dalgo.set_retention(regclass, name, integer, text, text[]);
CREATE FUNCTION dalgo.set_retention(tbl regclass, time_column name, retention_days integer,
								   action text DEFAULT 'delete', columns text[] DEFAULT NULL,
								   user_column name DEFAULT NULL, user_days text DEFAULT NULL, user_key name DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c text;
	parts text[];
	days_tbl regclass;
	days_col name;
	key_col name;
BEGIN
	IF tbl OPERATOR(pg_catalog.<>) 'dalgo.audit_logs'::regclass THEN
		PERFORM dalgo_internal.toolkit_target(tbl);
		IF (SELECT relkind FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) tbl) = 'p' THEN
			RAISE EXCEPTION '% is partitioned', tbl USING ERRCODE = 'wrong_object_type',
				HINT = 'Expire the rows of a partitioned table by detaching and dropping its old partitions.';
		END IF;
	ELSIF time_column <> 'created_at' OR action <> 'delete' OR user_column IS NOT NULL THEN
		RAISE EXCEPTION 'the audit trail only expires by created_at, with delete' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM dalgo_internal.toolkit_column(tbl, time_column, ARRAY['timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype]);
	IF action IS NULL OR action NOT IN ('delete', 'anonymize') THEN
		RAISE EXCEPTION 'action must be delete or anonymize' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF action = 'anonymize' THEN
		IF columns IS NULL OR pg_catalog.cardinality(columns) = 0 THEN
			RAISE EXCEPTION 'anonymize needs the columns to set to NULL' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		FOREACH c IN ARRAY columns LOOP
			PERFORM dalgo_internal.toolkit_column(tbl, c, NULL);
			IF EXISTS (SELECT FROM pg_catalog.pg_attribute WHERE attrelid OPERATOR(pg_catalog.=) tbl
					   AND attname OPERATOR(pg_catalog.=) c AND attnotnull) THEN
				RAISE EXCEPTION 'column "%" of % is NOT NULL and cannot be anonymized', c, tbl
					USING ERRCODE = 'invalid_parameter_value';
			END IF;
		END LOOP;
	ELSIF columns IS NOT NULL THEN
		RAISE EXCEPTION 'columns are only for anonymize' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- Per-user override: user_days names a column "schema.table.column" of
	-- days, found by the row's user_column in its unique column user_key.
	IF (user_column IS NULL) <> (user_days IS NULL) OR (user_key IS NOT NULL AND user_column IS NULL) THEN
		RAISE EXCEPTION 'a per-user retention needs both user_column and user_days' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF user_column IS NOT NULL THEN
		parts := pg_catalog.parse_ident(user_days);
		IF pg_catalog.cardinality(parts) OPERATOR(pg_catalog.<>) 3 THEN
			RAISE EXCEPTION 'user_days must name a column as schema.table.column' USING ERRCODE = 'invalid_parameter_value',
				HINT = 'Quote names with capitals: ''app.prefs."retentionDays"''.';
		END IF;
		days_tbl := pg_catalog.to_regclass(pg_catalog.format('%I.%I', parts[1], parts[2]));
		IF days_tbl IS NULL THEN
			RAISE EXCEPTION 'table %.% does not exist', parts[1], parts[2] USING ERRCODE = 'undefined_table';
		END IF;
		days_col := parts[3];
		key_col := coalesce(user_key, user_column);
		PERFORM dalgo_internal.toolkit_column(days_tbl, days_col, ARRAY['int2'::regtype, 'int4'::regtype, 'int8'::regtype]);
		IF dalgo_internal.toolkit_column(tbl, user_column, NULL) OPERATOR(pg_catalog.<>) dalgo_internal.toolkit_column(days_tbl, key_col, NULL) THEN
			RAISE EXCEPTION 'column "%" of % and column "%" of % are of different types', user_column, tbl, key_col, days_tbl
				USING ERRCODE = 'datatype_mismatch';
		END IF;
		-- The caller reads what decides the deletions.
		IF NOT pg_catalog.has_column_privilege(days_tbl, days_col, 'SELECT')
		   OR NOT pg_catalog.has_column_privilege(days_tbl, key_col, 'SELECT') THEN
			RAISE EXCEPTION 'permission denied for table %', days_tbl USING ERRCODE = 'insufficient_privilege';
		END IF;
		-- One row per user, found through an index.
		IF NOT EXISTS (SELECT FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
						   ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]
					   WHERE i.indrelid OPERATOR(pg_catalog.=) days_tbl AND i.indisunique AND i.indnkeyatts OPERATOR(pg_catalog.=) 1
						 AND i.indpred IS NULL AND i.indisvalid AND a.attname OPERATOR(pg_catalog.=) key_col) THEN
			RAISE EXCEPTION 'column "%" of % needs a unique index: one number of days per user', key_col, days_tbl
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
	END IF;
	INSERT INTO dalgo.retention_policies AS p (table_name, time_column, retention_days, action, columns,
											   user_column, user_days_table, user_days_column, user_key_column)
		VALUES (tbl, time_column, retention_days, action, columns, user_column, days_tbl, days_col, key_col)
		ON CONFLICT (table_name) DO UPDATE
		SET time_column = excluded.time_column, retention_days = excluded.retention_days,
			action = excluded.action, columns = excluded.columns, enabled = true, user_column = excluded.user_column,
			user_days_table = excluded.user_days_table, user_days_column = excluded.user_days_column,
			user_key_column = excluded.user_key_column;
	IF tbl OPERATOR(pg_catalog.<>) 'dalgo.audit_logs'::regclass THEN
		PERFORM dalgo_internal.toolkit_ensure_index(tbl, time_column);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.set_retention(regclass, name, integer, text, text[], name, text, name) IS
	'Add or replace a table''s retention policy: rows whose time_column is older than retention_days are deleted, or (action anonymize) have columns set to NULL, by dalgo.apply_retention(). With user_column and user_days (''schema.table.column'' of days, matched on its unique column user_key, default user_column''s name), each user''s own number of days overrides retention_days. Superusers (the policies table is theirs)';
REVOKE ALL ON FUNCTION dalgo.set_retention(regclass, name, integer, text, text[], name, text, name) FROM PUBLIC;

CREATE OR REPLACE FUNCTION dalgo.apply_retention(batch_size integer DEFAULT 10000, max_batches integer DEFAULT NULL)
	RETURNS TABLE (table_name text, action text, rows_affected bigint, batches integer)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p record;
	target text;
	cutoff timestamptz;
	stmt text;
	expired text;
	shortest bigint;
	n bigint;
BEGIN
	IF batch_size IS NULL OR batch_size < 1 THEN
		RAISE EXCEPTION 'batch_size must be positive' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR p IN SELECT r.*, c.relnamespace, c.relname
			 FROM dalgo.retention_policies r JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.table_name
			 WHERE r.enabled ORDER BY r.table_name::oid
	LOOP
		cutoff := pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(days => p.retention_days);
		table_name := p.table_name::text;
		action := p.action;
		rows_affected := 0;
		batches := 0;
		IF p.table_name OPERATOR(pg_catalog.=) 'dalgo.audit_logs'::regclass THEN
			rows_affected := dalgo.purge_audit_logs(pg_catalog.make_interval(days => p.retention_days));
			batches := 1;
		ELSE
			target := pg_catalog.format('%I.%I', p.relnamespace::regnamespace::text, p.relname);
			expired := pg_catalog.format('t.%I OPERATOR(pg_catalog.<) $1', p.time_column);
			IF p.user_column IS NOT NULL THEN
				-- A row is expired after its user's days (or retention_days).
				-- The time index finds the candidates older than the shortest
				-- retention anyone has; the unique index of the days table
				-- finds each candidate's user.
				EXECUTE pg_catalog.format('SELECT pg_catalog.min(d.%I) FROM %s d WHERE d.%I OPERATOR(pg_catalog.>=) 1',
										  p.user_days_column, p.user_days_table, p.user_days_column) INTO shortest;
				cutoff := pg_catalog.now() OPERATOR(pg_catalog.-)
						  pg_catalog.make_interval(days => LEAST(p.retention_days, shortest::integer));
				expired := expired || pg_catalog.format(' AND t.%I OPERATOR(pg_catalog.<) ($3 OPERATOR(pg_catalog.-) '
					'pg_catalog.make_interval(days => coalesce((SELECT d.%I::integer FROM %s d WHERE d.%I OPERATOR(pg_catalog.=) t.%I '
					'AND d.%I OPERATOR(pg_catalog.>=) 1), $4)))',
					p.time_column, p.user_days_column, p.user_days_table, p.user_key_column, p.user_column, p.user_days_column);
			END IF;
			IF p.action = 'delete' THEN
				stmt := pg_catalog.format('DELETE FROM ONLY %s WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY('
					'SELECT t.ctid FROM ONLY %s t WHERE %s LIMIT $2 FOR UPDATE OF t SKIP LOCKED))',
					target, target, expired);
			ELSE
				stmt := pg_catalog.format('UPDATE ONLY %s SET %s WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY('
					'SELECT t.ctid FROM ONLY %s t WHERE %s AND (%s) LIMIT $2 FOR UPDATE OF t SKIP LOCKED))',
					target,
					(SELECT pg_catalog.string_agg(pg_catalog.format('%I = NULL', c), ', ') FROM pg_catalog.unnest(p.columns) c),
					target, expired,
					(SELECT pg_catalog.string_agg(pg_catalog.format('t.%I IS NOT NULL', c), ' OR ') FROM pg_catalog.unnest(p.columns) c));
			END IF;
			LOOP
				EXECUTE stmt USING cutoff, batch_size, pg_catalog.now(), p.retention_days;
				GET DIAGNOSTICS n = ROW_COUNT;
				rows_affected := rows_affected OPERATOR(pg_catalog.+) n;
				batches := batches OPERATOR(pg_catalog.+) 1;
				EXIT WHEN n OPERATOR(pg_catalog.<) batch_size
					OR (max_batches IS NOT NULL AND batches OPERATOR(pg_catalog.>=) max_batches);
			END LOOP;
		END IF;
		UPDATE dalgo.retention_policies r SET last_run_at = pg_catalog.now(), last_rows = rows_affected
			WHERE r.table_name OPERATOR(pg_catalog.=) p.table_name;
		RETURN NEXT;
	END LOOP;
END
$$;


-- s13: the scheduler runs the daily maintenance (issue 13, retention daily in
-- every database): dalgo_internal.maintenance (its state),
-- daily_maintenance() (the steps), maintenance_step() (what the scheduler
-- calls on every tick); scheduler_status() shows maintenance_at.
DROP FUNCTION dalgo.scheduler_status();
CREATE FUNCTION dalgo.scheduler_status()
	RETURNS TABLE (database_oid oid, dalgo_installed boolean, worker_pid integer, last_tick timestamptz,
				   due integer, running integer, runs_started bigint, last_error text, maintenance_at timestamptz)
	AS 'MODULE_PATHNAME', 'dalgo_scheduler_status'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION dalgo.scheduler_status() IS
	'Per database the launcher knows: whether dalgo is installed, the scheduler''s pid, its last tick, due and running counts, runs started, the last error, and when the daily maintenance last finished';
REVOKE ALL ON FUNCTION dalgo.scheduler_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.scheduler_status() TO dalgo_service;

-- ---------------------------------------------------------------------------
-- Daily maintenance
-- ---------------------------------------------------------------------------
-- Each database's scheduler calls dalgo_internal.maintenance_step() on every
-- tick; once a period (dalgo.maintenance_interval, a day, starting at
-- dalgo.maintenance_hour UTC) it runs dalgo_internal.daily_maintenance()
-- again and again, one short transaction per call, until it is done.  The
-- one row of dalgo_internal.maintenance remembers when it last started and
-- finished, so a restart does not run it again within the period, an
-- interrupted run goes on, and a missed period catches up once.

CREATE TABLE dalgo_internal.maintenance (
	id boolean PRIMARY KEY DEFAULT true CHECK (id),
	last_started_at timestamptz NOT NULL DEFAULT now(),
	last_finished_at timestamptz DEFAULT now(),
	calls integer NOT NULL DEFAULT 0,
	summary jsonb NOT NULL DEFAULT '{}',
	last_summary jsonb
);
COMMENT ON TABLE dalgo_internal.maintenance IS
	'Internal: one row, the state of the daily maintenance (dalgo_internal.maintenance_step); superusers only';
COMMENT ON COLUMN dalgo_internal.maintenance.id IS 'Always true: the table has one row';
COMMENT ON COLUMN dalgo_internal.maintenance.last_started_at IS 'When the last maintenance started (install time before the first)';
COMMENT ON COLUMN dalgo_internal.maintenance.last_finished_at IS 'When it finished; NULL or earlier than last_started_at while it runs';
COMMENT ON COLUMN dalgo_internal.maintenance.calls IS 'Calls of daily_maintenance() in the current or last run';
COMMENT ON COLUMN dalgo_internal.maintenance.summary IS 'What the current or last run did so far (numbers summed over its calls)';
COMMENT ON COLUMN dalgo_internal.maintenance.last_summary IS 'What the last finished run did';
ALTER TABLE dalgo_internal.maintenance ENABLE ROW LEVEL SECURITY;
ALTER TABLE dalgo_internal.maintenance FORCE ROW LEVEL SECURITY;
REVOKE ALL ON dalgo_internal.maintenance FROM PUBLIC;
-- The first maintenance is at the first period start after the install.
INSERT INTO dalgo_internal.maintenance DEFAULT VALUES;

-- The daily maintenance: a list of steps, each doing a bounded amount of
-- work per call and saying whether more is left.  Returns what this call
-- did, with "done": false while a step has more to do; the scheduler calls
-- it again in a new transaction.  A failing step is reported, not raised.
CREATE FUNCTION dalgo_internal.daily_maintenance(batch_size integer DEFAULT 10000) RETURNS jsonb
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	summary jsonb := '{}';
	more boolean := false;
	n bigint;
	m boolean;
BEGIN
	-- Retention: one batch of every enabled policy (dalgo.retention_policies).
	BEGIN
		SELECT coalesce(sum(r.rows_affected), 0), coalesce(bool_or(r.rows_affected >= batch_size), false) INTO n, m
		FROM dalgo.apply_retention(batch_size, 1) r;
		summary := summary || jsonb_build_object('retention_rows', n);
		more := more OR m;
	EXCEPTION WHEN OTHERS THEN
		summary := summary || jsonb_build_object('retention_error', SQLERRM);
	END;
	RETURN summary || jsonb_build_object('done', NOT more);
END
$$;
COMMENT ON FUNCTION dalgo_internal.daily_maintenance(integer) IS
	'Internal: one pass of the daily maintenance steps (retention, one batch per policy); returns what it did, "done": false while work is left. The scheduler calls it in short transactions until done';

-- The scheduler's call on every tick: runs one pass of daily_maintenance()
-- when a period has begun since the last run started, or a run is unfinished.
CREATE FUNCTION dalgo_internal.maintenance_step(interval_secs integer, start_hour integer,
												OUT more boolean, OUT finished_at timestamptz, OUT summary jsonb)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m dalgo_internal.maintenance;
	epoch double precision := extract(epoch FROM now());
	period_start timestamptz;
	step jsonb;
	k text;
	v jsonb;
BEGIN
	more := false;
	SELECT * INTO m FROM dalgo_internal.maintenance;
	IF NOT FOUND THEN
		INSERT INTO dalgo_internal.maintenance DEFAULT VALUES ON CONFLICT DO NOTHING;
		RETURN;
	END IF;
	finished_at := m.last_finished_at;
	IF interval_secs IS NULL OR interval_secs < 1 THEN
		RETURN;
	END IF;
	-- Periods start at start_hour (UTC) and every interval_secs from there.
	period_start := to_timestamp(floor((epoch - start_hour * 3600) / interval_secs) * interval_secs + start_hour * 3600);
	IF m.last_finished_at >= m.last_started_at AND m.last_started_at >= period_start THEN
		RETURN;						-- done for this period
	END IF;
	SELECT * INTO m FROM dalgo_internal.maintenance FOR UPDATE SKIP LOCKED;
	IF NOT FOUND THEN
		RETURN;						-- someone else is at it
	END IF;
	IF m.last_finished_at >= m.last_started_at THEN
		IF m.last_started_at >= period_start THEN
			RETURN;
		END IF;
		m.last_started_at := now();	-- a new run
		m.calls := 0;
		m.summary := '{}';
	END IF;
	step := dalgo_internal.daily_maintenance();
	-- Sum the numbers over the run's calls; keep the rest as last said.
	FOR k, v IN SELECT * FROM jsonb_each(step - 'done') LOOP
		m.summary := m.summary || jsonb_build_object(k, CASE WHEN jsonb_typeof(v) = 'number' AND jsonb_typeof(m.summary -> k) = 'number'
															 THEN to_jsonb((m.summary ->> k)::numeric + (v #>> '{}')::numeric) ELSE v END);
	END LOOP;
	m.calls := m.calls + 1;
	more := NOT coalesce((step ->> 'done')::boolean, true);
	IF NOT more THEN
		m.last_finished_at := clock_timestamp();
		m.last_summary := m.summary || jsonb_build_object('started_at', m.last_started_at, 'finished_at', m.last_finished_at,
														  'calls', m.calls);
	ELSE
		m.last_finished_at := NULL;
	END IF;
	UPDATE dalgo_internal.maintenance x SET last_started_at = m.last_started_at, last_finished_at = m.last_finished_at,
		calls = m.calls, summary = m.summary, last_summary = m.last_summary;
	finished_at := m.last_finished_at;
	summary := step;
END
$$;
COMMENT ON FUNCTION dalgo_internal.maintenance_step(integer, integer) IS
	'Internal: called by the scheduler on every tick; once per period (interval_secs, starting at start_hour UTC) runs daily_maintenance() pass by pass, recording when it started and finished; more is true while work is left';
REVOKE ALL ON FUNCTION dalgo_internal.daily_maintenance(integer), dalgo_internal.maintenance_step(integer, integer) FROM PUBLIC;

-- citus: dalgo.distribute() and the cluster form of the users policy (sql/citus.sql)

-- Policy expressions with the membership test as a plain function call.
-- Citus refuses subqueries in the policies of its tables, and dalgo's
-- single-node form wraps dalgo.current_org_ids() and
-- dalgo.current_user_id() in a scalar subquery (an initPlan, computed once
-- per statement).  Unwrapped, the call is STABLE: as an index condition it
-- is still computed once per scan.
CREATE FUNCTION dalgo_internal.citus_policy_expr(expr text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pg_catalog.regexp_replace(pg_catalog.regexp_replace(expr,
		'\(\s*SELECT (dalgo\.current_org_ids\([^()]*\)) AS current_org_ids\)', '\1', 'g'),
		'\(\s*SELECT dalgo\.current_user_id\(\) AS current_user_id\)', 'dalgo.current_user_id()', 'g')
$$;
REVOKE ALL ON FUNCTION dalgo_internal.citus_policy_expr(text) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.citus_policy_expr(text) IS
	'Internal: a policy expression with its scalar subqueries over current_org_ids()/current_user_id() unwrapped, the form Citus accepts';

-- The coordinator's local copy of a table's rows, once Citus copied them
-- into the shards.  The rows moved, nothing was deleted: no trigger fires
-- (no TRUNCATE in the audit trail, no refusal by audit_logs' guard).
CREATE FUNCTION dalgo_internal.citus_drop_local_copy(rel regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET session_replication_role = replica
AS $$
BEGIN
	PERFORM truncate_local_data_after_distributing_table(rel);
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.citus_drop_local_copy(regclass) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.citus_drop_local_copy(regclass) IS
	'Internal: empty the coordinator''s local copy of a distributed table''s rows, without firing triggers';

-- dalgo.shares_organization(user_id): the caller and user_id are members
-- of a common organization; the subquery-free test of users' user_select
-- policy on a cluster.
CREATE FUNCTION dalgo.shares_organization(user_id uuid) RETURNS boolean
LANGUAGE c STABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'dalgo_shares_organization';
COMMENT ON FUNCTION dalgo.shares_organization(uuid) IS
	'True when the caller and user_id are live members of a common organization (the cluster form of the users policy)';
REVOKE ALL ON FUNCTION dalgo.shares_organization(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.shares_organization(uuid) TO dalgo_authenticated, dalgo_service;

-- dalgo.distribute(): distribute dalgo's tables, and the tables secured with
-- the toolkit, over the Citus cluster this database is the coordinator of.
CREATE FUNCTION dalgo.distribute()
RETURNS TABLE (table_name regclass, distribution text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	-- Shared tables, every node holds all rows: membership is checked on
	-- every node for every statement, so organization_members is one of them.
	reference_tables text[] := ARRAY['users', 'organizations', 'organization_members', 'api_keys',
									 'retention_policies',
	-- Accounts: per user, not per organization.  Citus local tables (kept on
	-- the coordinator) would fit better, but Citus cannot add a table that
	-- an extension owns to its metadata that way.
									 'refresh_tokens', 'password_reset_tokens', 'sign_in_attempts',
									 'mail_messages'];
	-- Tenant tables, by organization_id, co-located with sources; parents first.
	tenant_tables text[] := ARRAY['sources', 'transformations', 'warehouse_connections', 'outputs',
								  'schedules', 'source_schemas', 'sync_runs', 'warehouse_tables',
								  'transformation_versions', 'transformation_runs', 'invitations',
								  'audit_logs'];
	t text;
	r record;
	p record;
	rel regclass;
	expr text;
	check_expr text;
	distributed regclass[] := '{}';
	fkeys text[] := '{}';
BEGIN
	IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
		RAISE EXCEPTION 'dalgo.distribute() needs the citus extension'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'The citus extension is not installed in this database.',
				  HINT = 'Preload citus before dalgo (shared_preload_libraries = ''citus,dalgo''), run CREATE EXTENSION citus on every node and add the workers; see docs/scaling.md.';
	END IF;
	IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
		RAISE EXCEPTION 'only a superuser may distribute dalgo''s tables' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF NOT EXISTS (SELECT FROM pg_dist_node WHERE groupid = 0) THEN
		RAISE EXCEPTION 'the coordinator is not in the cluster''s metadata'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'dalgo reads its shared tables locally, so every node, the coordinator included, holds a copy.',
				  HINT = 'Run SELECT citus_set_coordinator_host(''<host>'', <port>) on the coordinator first.';
	END IF;
	IF (SELECT groupid FROM pg_dist_local_group) <> 0 THEN
		RAISE EXCEPTION 'dalgo.distribute() runs on the coordinator' USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	IF NOT EXISTS (SELECT FROM pg_dist_node WHERE groupid <> 0 AND isactive) THEN
		RAISE EXCEPTION 'the cluster has no worker'
			USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Add workers with citus_add_node() first.';
	END IF;
	-- dalgo's triggers are written to be correct on shards (docs/scaling.md).
	PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
	-- Foreign keys to reference tables need one connection per node.
	PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);

	-- A dalgo table this list does not know yet (a later release's): by
	-- organization_id when it has the column, else a reference table.
	FOR r IN
		SELECT c.relname::text AS t,
			   EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'organization_id'
					   AND NOT a.attisdropped) AS tenant
		FROM pg_class c
		WHERE c.relnamespace = 'dalgo'::regnamespace AND c.relkind = 'r'
		  AND c.relname <> ALL (reference_tables || tenant_tables)
		  AND NOT EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = c.oid)
		ORDER BY 1
	LOOP
		IF r.tenant THEN
			tenant_tables := tenant_tables || r.t;
		ELSE
			reference_tables := reference_tables || r.t;
		END IF;
	END LOOP;

	-- Toolkit-secured tables with an organization_id column join the tenant tables.
	FOR r IN
		SELECT DISTINCT c.oid::regclass AS rel
		FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'organization_id' AND NOT a.attisdropped
		WHERE pol.polname LIKE 'dalgo\_%' AND c.relnamespace <> 'dalgo'::regnamespace AND c.relkind = 'r'
		ORDER BY 1
	LOOP
		tenant_tables := tenant_tables || r.rel::text;
	END LOOP;

	-- 1. Policies: the form without subqueries (generated here, so rls.sql
	-- keeps the single-node form).  users' policy reads organization_members.
	FOR r IN
		SELECT c.oid::regclass AS rel FROM pg_class c
		WHERE c.relkind = 'r' AND (c.relnamespace = 'dalgo'::regnamespace
			OR c.oid::regclass::text = ANY (tenant_tables))
	LOOP
		FOR p IN SELECT pol.polname, pg_get_expr(pol.polqual, pol.polrelid) AS qual,
						pg_get_expr(pol.polwithcheck, pol.polrelid) AS wcheck
				 FROM pg_policy pol WHERE pol.polrelid = r.rel
		LOOP
			expr := dalgo_internal.citus_policy_expr(p.qual);
			check_expr := dalgo_internal.citus_policy_expr(p.wcheck);
			IF r.rel = 'dalgo.users'::regclass AND p.polname = 'user_select' THEN
				expr := 'id = dalgo.current_user_id() OR dalgo.shares_organization(id)';
			END IF;
			IF expr ~* '\mSELECT\M' OR check_expr ~* '\mSELECT\M' THEN
				RAISE EXCEPTION 'policy % on % has a subquery that Citus refuses', p.polname, r.rel
					USING ERRCODE = 'feature_not_supported',
						  DETAIL = format('USING (%s) WITH CHECK (%s)', expr, check_expr),
						  HINT = 'Rewrite it with functions instead of subqueries (docs/scaling.md).';
			END IF;
			IF expr IS DISTINCT FROM p.qual THEN
				EXECUTE format('ALTER POLICY %I ON %s USING (%s)', p.polname, r.rel, expr);
			END IF;
			IF check_expr IS DISTINCT FROM p.wcheck THEN
				EXECUTE format('ALTER POLICY %I ON %s WITH CHECK (%s)', p.polname, r.rel, check_expr);
			END IF;
		END LOOP;
	END LOOP;

	-- 2. Foreign keys are dropped and put back once every table is in
	-- place: Citus would otherwise convert the tables that reference a new
	-- reference table on its own, in an order of its choosing.
	FOR p IN
		SELECT con.conrelid::regclass AS rel, con.conname, pg_get_constraintdef(con.oid) AS def
		FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
		WHERE con.contype = 'f' AND NOT EXISTS (SELECT FROM pg_dist_partition d WHERE d.logicalrelid = con.conrelid)
		  AND (c.relnamespace = 'dalgo'::regnamespace OR con.confrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'dalgo'::regnamespace)
			   OR con.conrelid::regclass::text = ANY (tenant_tables))
		ORDER BY 1, 2
	LOOP
		fkeys := fkeys || format('ALTER TABLE %s ADD CONSTRAINT %I %s', p.rel, p.conname, p.def);
		EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', p.rel, p.conname);
		-- The workers' copies of dalgo's tables (from their CREATE EXTENSION)
		-- too: putting the key back reaches every node.
		PERFORM run_command_on_workers(format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', p.rel, p.conname));
	END LOOP;

	-- 3. Shared tables first: foreign keys point at them.
	FOREACH t IN ARRAY reference_tables LOOP
		rel := ('dalgo.' || quote_ident(t))::regclass;
		IF NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = rel) THEN
			PERFORM create_reference_table(rel);
			PERFORM dalgo_internal.citus_drop_local_copy(rel);
		END IF;
		table_name := rel; distribution := 'reference'; RETURN NEXT;
	END LOOP;

	-- 4. Tenant tables by organization_id.  Citus wants the distribution
	-- column in every primary key and unique constraint: (id) becomes
	-- (organization_id, id).
	FOREACH t IN ARRAY tenant_tables LOOP
		rel := CASE WHEN t LIKE '%.%' THEN t::regclass ELSE ('dalgo.' || quote_ident(t))::regclass END;
		IF NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = rel) THEN
			-- audit_logs: Citus refuses NULL in a distribution column, so changes
			-- outside any organization are recorded under the nil uuid (the
			-- audit writer does the same on a cluster).
			IF rel = 'dalgo.audit_logs'::regclass THEN
				ALTER TABLE dalgo.audit_logs DISABLE TRIGGER append_only;
				UPDATE dalgo.audit_logs SET organization_id = '00000000-0000-0000-0000-000000000000'
					WHERE organization_id IS NULL;
				ALTER TABLE dalgo.audit_logs ENABLE TRIGGER append_only;
			END IF;
			FOR p IN SELECT con.conname, con.contype,
							array_agg(a.attname ORDER BY k.ord) AS cols
					 FROM pg_constraint con
					 CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
					 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
					 WHERE con.conrelid = rel AND con.contype IN ('p', 'u')
					 GROUP BY con.conname, con.contype
			LOOP
				CONTINUE WHEN 'organization_id' = ANY (p.cols);
				EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', rel, p.conname);
				EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s (organization_id, %s)', rel, p.conname,
							   CASE p.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END,
							   (SELECT string_agg(quote_ident(c), ', ') FROM unnest(p.cols) c));
			END LOOP;
			-- Unique indexes that back no constraint (partial ones): the same.
			FOR p IN
				SELECT i.indexrelid::regclass AS idx, pg_get_indexdef(i.indexrelid) AS def
				FROM pg_index i
				WHERE i.indrelid = rel AND i.indisunique
				  AND NOT EXISTS (SELECT FROM pg_constraint con WHERE con.conindid = i.indexrelid)
				  AND NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = 'organization_id'
								  AND a.attnum = ANY (i.indkey))
			LOOP
				EXECUTE format('DROP INDEX %s', p.idx);
				EXECUTE regexp_replace(p.def, ' USING (\w+) \(', ' USING \1 (organization_id, ');
			END LOOP;
			IF distributed = '{}' THEN
				PERFORM create_distributed_table(rel, 'organization_id', colocate_with => 'none');
			ELSE
				PERFORM create_distributed_table(rel, 'organization_id', colocate_with => distributed[1]::text);
			END IF;
			PERFORM dalgo_internal.citus_drop_local_copy(rel);
		END IF;
		distributed := distributed || rel;
		table_name := rel; distribution := 'hash(organization_id)'; RETURN NEXT;
	END LOOP;

	-- 5. The foreign keys, now between Citus tables.
	FOREACH t IN ARRAY fkeys LOOP
		EXECUTE t;
	END LOOP;
END
$fn$;
COMMENT ON FUNCTION dalgo.distribute() IS
	'Citus: distribute dalgo''s tables (users, organizations, organization_members, api_keys as reference tables, tenant tables and toolkit tables with organization_id by organization_id, co-located) with policies Citus accepts; run once on the coordinator';
REVOKE ALL ON FUNCTION dalgo.distribute() FROM PUBLIC;

-- jdel: soft delete means it, a deleted organization takes its warehouse, leaving for good (issue 14 items 1-3).
-- The whole of sql/lifecycle.sql; soft-deleted sources, transformations and
-- outputs drop out of the read policies; the run claims skip runs of
-- deleted things; an organization's owners restore it by their membership
-- rows; memberships cascading away with their organization pass the role guard.
CREATE OR REPLACE FUNCTION dalgo_internal.guard_membership() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	org uuid;
	my_role dalgo.member_role;
	old_role dalgo.member_role;
	new_role dalgo.member_role;
	was_live boolean := false;
	is_live boolean := false;
	grants boolean;
	first_owner boolean := false;
BEGIN
	IF TG_OP = 'UPDATE' AND (NEW.organization_id <> OLD.organization_id OR NEW.user_id <> OLD.user_id) THEN
		RAISE EXCEPTION 'a membership cannot be moved to another organization or user'
			USING ERRCODE = 'insufficient_privilege', HINT = 'Remove it and add a new membership.';
	END IF;

	-- The row before and after: a role held while live.
	IF TG_OP = 'DELETE' THEN
		org := OLD.organization_id;
		-- A membership cascading away with its deleted organization: the
		-- organization's deletion was the decision (its owner's, or service work).
		IF NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = org) THEN
			RETURN OLD;
		END IF;
	ELSE
		org := NEW.organization_id;
		new_role := NEW.role;
		is_live := NEW.deleted_at IS NULL;
	END IF;
	IF TG_OP <> 'INSERT' THEN
		old_role := OLD.role;
		was_live := OLD.deleted_at IS NULL;
	END IF;
	-- Does the change hand out a role the row did not give before?  An
	-- insert, a restore (deleted_at back to NULL) and a raise all do.
	grants := is_live AND (NOT was_live OR new_role > old_role);

	-- What the acting user may do (service work without an identity is not limited here).
	IF me IS NOT NULL THEN
		-- In a soft-deleted organization (no members as far as org_role
		-- goes) the membership rows tell: its owners can still leave it.
		my_role := coalesce(dalgo.org_role(org), dalgo_internal.dormant_role(org));
		-- The first owner of a new organization, which has no live members yet.
		IF TG_OP = 'INSERT' AND new_role = 'owner' AND NEW.user_id = me THEN
			first_owner := NOT EXISTS (SELECT FROM dalgo.organization_members m
									   WHERE m.organization_id = org AND m.deleted_at IS NULL);
		END IF;
		IF NOT first_owner THEN
			-- Nobody raises their own role, also not by restoring an old membership.
			IF grants AND NEW.user_id = me AND (my_role IS NULL OR new_role > my_role) THEN
				RAISE EXCEPTION 'you cannot raise your own role'
					USING ERRCODE = 'insufficient_privilege';
			END IF;
			-- Owner rows are an owner's: adding, granting, revoking, restoring, removing.
			IF my_role IS DISTINCT FROM 'owner' THEN
				IF TG_OP = 'INSERT' AND new_role = 'owner' THEN
					RAISE EXCEPTION 'only an owner can add an owner'
						USING ERRCODE = 'insufficient_privilege';
				ELSIF TG_OP = 'UPDATE' AND (new_role = 'owner' OR old_role = 'owner') AND new_role <> old_role THEN
					RAISE EXCEPTION 'only an owner can grant or revoke the owner role'
						USING ERRCODE = 'insufficient_privilege';
				ELSIF TG_OP = 'UPDATE' AND old_role = 'owner' AND was_live AND NOT is_live THEN
					RAISE EXCEPTION 'only an owner can remove an owner'
						USING ERRCODE = 'insufficient_privilege';
				ELSIF TG_OP = 'UPDATE' AND new_role = 'owner' AND is_live AND NOT was_live THEN
					RAISE EXCEPTION 'only an owner can restore an owner''s membership'
						USING ERRCODE = 'insufficient_privilege',
							  HINT = 'Restoring an owner row grants the owner role.';
				ELSIF TG_OP = 'DELETE' AND old_role = 'owner' THEN
					RAISE EXCEPTION 'only an owner can remove an owner'
						USING ERRCODE = 'insufficient_privilege';
				END IF;
			END IF;
			-- Nobody hands out a role above their own.
			IF grants AND (my_role IS NULL OR new_role > my_role) THEN
				RAISE EXCEPTION 'you cannot grant a role above your own'
					USING ERRCODE = 'insufficient_privilege',
						  DETAIL = pg_catalog.format('Your role is %s; the membership would give %s.',
													 coalesce(my_role::text, 'none'), new_role);
			END IF;
		END IF;
	END IF;

	-- An organization never loses its last owner (whoever acts).
	IF was_live AND old_role = 'owner' AND NOT (is_live AND new_role = 'owner') THEN
		-- Every owner removal locks the organization row, so they run one
		-- at a time; the count then reads the latest committed state, not
		-- this transaction's snapshot, so a removal committed while we
		-- waited is seen under REPEATABLE READ and SERIALIZABLE too.
		-- A deleted organization (its members cascading away) has no row left.
		PERFORM FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL FOR NO KEY UPDATE;
		IF FOUND AND dalgo_internal.live_owner_count(org, OLD.id) = 0 THEN
			RAISE EXCEPTION 'cannot remove the last owner of organization %', org
				USING ERRCODE = 'check_violation',
					  HINT = 'Make another member an owner first, or delete the organization.';
		END IF;
	END IF;

	IF TG_OP = 'DELETE' THEN
		RETURN OLD;
	END IF;
	RETURN NEW;
END
$$;
CREATE OR REPLACE FUNCTION dalgo_internal.guard_organization() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	my_role dalgo.member_role;
BEGIN
	IF NEW.deleted_at IS NOT DISTINCT FROM OLD.deleted_at OR dalgo.current_user_id() IS NULL THEN
		RETURN NEW;
	END IF;
	-- A deleted organization has no members as far as the membership
	-- functions go: its owners are found by their membership rows.
	IF OLD.deleted_at IS NULL THEN
		my_role := dalgo.org_role(OLD.id);
	ELSE
		my_role := dalgo_internal.dormant_role(OLD.id);
	END IF;
	IF my_role IS DISTINCT FROM 'owner' THEN
		RAISE EXCEPTION 'only an owner can delete or restore an organization'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.guard_organization() FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.guard_organization() IS 'BEFORE UPDATE row trigger on organizations: only an owner soft-deletes or restores it (the owner of a deleted organization by their live membership row)';

CREATE OR REPLACE FUNCTION dalgo_internal.claim_pending_run(OUT run_kind dalgo.run_kind, OUT run_id uuid)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
BEGIN
	FOR org IN
		WITH queued AS (
			SELECT r.organization_id, r.status, r.created_at
			FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
			WHERE r.status IN ('pending', 'running') AND NOT dalgo.is_connector_source(s.source_type)
			  AND r.details ? 'schedule_id'
			  AND (r.status = 'running' OR dalgo_internal.target_is_live(r.organization_id, r.source_id, NULL))
			UNION ALL
			SELECT r.organization_id, r.status, r.created_at FROM dalgo.transformation_runs r
			WHERE r.status IN ('pending', 'running') AND r.details ? 'schedule_id'
			  AND (r.status = 'running' OR dalgo_internal.target_is_live(r.organization_id, NULL, r.transformation_id)))
		SELECT q.organization_id FROM queued q
		GROUP BY q.organization_id
		HAVING bool_or(q.status = 'pending')
		ORDER BY count(*) FILTER (WHERE q.status = 'running'), min(q.created_at) FILTER (WHERE q.status = 'pending'),
				 q.organization_id
	LOOP
		SELECT 'sync', r.id INTO run_kind, run_id FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
		WHERE r.status = 'pending' AND r.organization_id = org AND NOT dalgo.is_connector_source(s.source_type)
		  AND r.details ? 'schedule_id' AND dalgo_internal.target_is_live(r.organization_id, r.source_id, NULL)
		ORDER BY r.created_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED;
		IF NOT FOUND THEN
			SELECT 'output', r.id INTO run_kind, run_id FROM dalgo.transformation_runs r
			WHERE r.status = 'pending' AND r.organization_id = org AND r.details ? 'schedule_id'
			  AND dalgo_internal.target_is_live(r.organization_id, NULL, r.transformation_id)
			ORDER BY r.created_at LIMIT 1 FOR UPDATE SKIP LOCKED;
		END IF;
		EXIT WHEN run_id IS NOT NULL;
	END LOOP;
	IF run_id IS NOT NULL THEN
		PERFORM dalgo_internal.start_scheduled_run(run_kind, run_id);
	END IF;
END
$$;
CREATE OR REPLACE FUNCTION dalgo.claim_sync_run() RETURNS dalgo.sync_runs
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	org uuid;
	msg text;
BEGIN
	FOR org IN
		SELECT x.organization_id FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status IN ('pending', 'running') AND dalgo.is_connector_source(s.source_type) AND x.deleted_at IS NULL
		GROUP BY x.organization_id
		HAVING bool_or(x.status = 'pending')
		ORDER BY count(*) FILTER (WHERE x.status = 'running'), min(x.created_at) FILTER (WHERE x.status = 'pending'),
				 x.organization_id
	LOOP
		SELECT x.* INTO r FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status = 'pending' AND x.organization_id = org AND dalgo.is_connector_source(s.source_type)
		  AND x.deleted_at IS NULL AND dalgo_internal.target_is_live(x.organization_id, x.source_id, NULL)
		ORDER BY x.created_at LIMIT 1 FOR UPDATE OF x SKIP LOCKED;
		IF FOUND THEN
			-- A connector run is a run: the organization's quotas apply, as
			-- to in-database runs (a refused run fails with the quota's message).
			BEGIN
				PERFORM dalgo_internal.check_run_quota(org);
			EXCEPTION WHEN configuration_limit_exceeded THEN
				GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
				UPDATE dalgo.sync_runs x SET status = 'failed', completed_at = clock_timestamp(), error_message = msg
				WHERE x.id = r.id;
				CONTINUE;
			END;
			UPDATE dalgo.sync_runs x SET status = 'running', started_at = clock_timestamp() WHERE x.id = r.id RETURNING * INTO r;
			RETURN r;
		END IF;
	END LOOP;
	RETURN NULL;
END
$$;
DROP POLICY tenant_select ON dalgo.sources;
CREATE POLICY tenant_select ON dalgo.sources FOR SELECT TO dalgo_authenticated
	USING (deleted_at IS NULL AND organization_id OPERATOR(pg_catalog.=) ANY ((SELECT dalgo.current_org_ids('viewer'))::uuid[]));
COMMENT ON POLICY tenant_select ON dalgo.sources IS 'Live (not soft-deleted) rows of organizations where the caller is at least viewer';
DROP POLICY tenant_select ON dalgo.transformations;
CREATE POLICY tenant_select ON dalgo.transformations FOR SELECT TO dalgo_authenticated
	USING (deleted_at IS NULL AND organization_id OPERATOR(pg_catalog.=) ANY ((SELECT dalgo.current_org_ids('viewer'))::uuid[]));
COMMENT ON POLICY tenant_select ON dalgo.transformations IS 'Live (not soft-deleted) rows of organizations where the caller is at least viewer';
DROP POLICY tenant_select ON dalgo.outputs;
CREATE POLICY tenant_select ON dalgo.outputs FOR SELECT TO dalgo_authenticated
	USING (deleted_at IS NULL AND organization_id OPERATOR(pg_catalog.=) ANY ((SELECT dalgo.current_org_ids('viewer'))::uuid[]));
COMMENT ON POLICY tenant_select ON dalgo.outputs IS 'Live (not soft-deleted) rows of organizations where the caller is at least viewer';

-- lifecycle.sql: the ends of things.  Soft delete that stops schedules and
-- runs at once, the restore window (dalgo.restore_days) and the purge after
-- it; a deleted organization takes its warehouse schema and role with it;
-- a user leaves for good (dalgo.delete_my_account, dalgo.erase_user).

-- ---------------------------------------------------------------------------
-- Soft delete
-- ---------------------------------------------------------------------------

-- Is what a run acts on still there?  A run of a soft-deleted organization,
-- source or transformation is never claimed.
CREATE FUNCTION dalgo_internal.target_is_live(organization_id uuid, source_id uuid, transformation_id uuid)
	RETURNS boolean
	LANGUAGE sql STABLE PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT EXISTS (SELECT FROM dalgo.organizations o
				   WHERE o.id = target_is_live.organization_id AND o.deleted_at IS NULL)
		AND (target_is_live.source_id IS NULL
			 OR EXISTS (SELECT FROM dalgo.sources s WHERE s.id = target_is_live.source_id AND s.deleted_at IS NULL))
		AND (target_is_live.transformation_id IS NULL
			 OR EXISTS (SELECT FROM dalgo.transformations t
						WHERE t.id = target_is_live.transformation_id AND t.deleted_at IS NULL));
END;
REVOKE ALL ON FUNCTION dalgo_internal.target_is_live(uuid, uuid, uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.target_is_live(uuid, uuid, uuid) IS
	'Internal: true while the organization, and the source or transformation when given, are not soft-deleted; the run claims skip runs whose target is gone';

-- A soft delete stamps what it stops with its own deleted_at, so that a
-- restore brings back exactly what the delete took: the schedules of a
-- source, an output or an organization, and the outputs of a
-- transformation.  Pending runs fail at once with a message that says why.
CREATE FUNCTION dalgo_internal.cascade_soft_delete() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	deleting boolean := OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL;
	noun text := CASE TG_TABLE_NAME WHEN 'organizations' THEN 'organization' WHEN 'sources' THEN 'source'
							 WHEN 'transformations' THEN 'transformation' ELSE 'output' END;
	msg text;
BEGIN
	IF dalgo.restoring() THEN RETURN NULL; END IF;
	IF deleting THEN
		msg := pg_catalog.format('cancelled: the %s was deleted', noun);
		-- Schedules first: a claim holding a schedule's row finishes before
		-- this goes on, so the run it made is cancelled below.
		IF TG_TABLE_NAME = 'transformations' THEN
			UPDATE dalgo.outputs x SET deleted_at = NEW.deleted_at
				WHERE x.organization_id = NEW.organization_id AND x.transformation_id = NEW.id AND x.deleted_at IS NULL;
		ELSE
			UPDATE dalgo.schedules x SET deleted_at = NEW.deleted_at
				WHERE x.deleted_at IS NULL
				  AND CASE TG_TABLE_NAME WHEN 'organizations' THEN x.organization_id = NEW.id
										 WHEN 'sources' THEN x.source_id = NEW.id
										 ELSE x.output_id = NEW.id END;
		END IF;
		IF TG_TABLE_NAME IN ('organizations', 'sources') THEN
			UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(), error_message = msg
				WHERE r.status = 'pending'
				  AND CASE WHEN TG_TABLE_NAME = 'organizations' THEN r.organization_id = NEW.id ELSE r.source_id = NEW.id END;
		END IF;
		IF TG_TABLE_NAME = 'outputs' THEN
			UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(), error_message = msg
				WHERE r.status = 'pending' AND r.transformation_id = NEW.transformation_id
				  AND (r.details->>'output_id' = NEW.id::text
					   OR r.details->>'schedule_id' IN (SELECT x.id::text FROM dalgo.schedules x WHERE x.output_id = NEW.id));
		ELSIF TG_TABLE_NAME IN ('organizations', 'transformations') THEN
			UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(), error_message = msg
				WHERE r.status = 'pending'
				  AND CASE WHEN TG_TABLE_NAME = 'organizations' THEN r.organization_id = NEW.id
						   ELSE r.transformation_id = NEW.id END;
		END IF;
	ELSIF OLD.deleted_at IS NOT NULL AND NEW.deleted_at IS NULL THEN
		-- Restored: what the delete stamped comes back (schedules start again
		-- from their next slot after now: set_schedule_next_run).
		IF TG_TABLE_NAME = 'transformations' THEN
			UPDATE dalgo.outputs x SET deleted_at = NULL
				WHERE x.organization_id = NEW.organization_id AND x.transformation_id = NEW.id
				  AND x.deleted_at = OLD.deleted_at;
		ELSE
			UPDATE dalgo.schedules x SET deleted_at = NULL, next_run_at = NULL
				WHERE x.deleted_at = OLD.deleted_at
				  AND CASE TG_TABLE_NAME WHEN 'organizations' THEN x.organization_id = NEW.id
										 WHEN 'sources' THEN x.source_id = NEW.id
										 ELSE x.output_id = NEW.id END
				  AND dalgo_internal.target_is_live(x.organization_id, x.source_id, NULL)
				  AND (x.output_id IS NULL OR EXISTS (SELECT FROM dalgo.outputs o WHERE o.id = x.output_id AND o.deleted_at IS NULL));
		END IF;
	END IF;
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.cascade_soft_delete() FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.cascade_soft_delete() IS
	'AFTER UPDATE OF deleted_at row trigger on organizations, sources, transformations and outputs: a soft delete stamps their schedules (a transformation: its outputs) with the same deleted_at and fails their pending runs; a restore brings back what carries that stamp';
CREATE TRIGGER soft_delete_cascade AFTER UPDATE OF deleted_at ON dalgo.organizations
	FOR EACH ROW WHEN (OLD.deleted_at IS DISTINCT FROM NEW.deleted_at) EXECUTE FUNCTION dalgo_internal.cascade_soft_delete();
CREATE TRIGGER soft_delete_cascade AFTER UPDATE OF deleted_at ON dalgo.sources
	FOR EACH ROW WHEN (OLD.deleted_at IS DISTINCT FROM NEW.deleted_at) EXECUTE FUNCTION dalgo_internal.cascade_soft_delete();
CREATE TRIGGER soft_delete_cascade AFTER UPDATE OF deleted_at ON dalgo.transformations
	FOR EACH ROW WHEN (OLD.deleted_at IS DISTINCT FROM NEW.deleted_at) EXECUTE FUNCTION dalgo_internal.cascade_soft_delete();
CREATE TRIGGER soft_delete_cascade AFTER UPDATE OF deleted_at ON dalgo.outputs
	FOR EACH ROW WHEN (OLD.deleted_at IS DISTINCT FROM NEW.deleted_at) EXECUTE FUNCTION dalgo_internal.cascade_soft_delete();
COMMENT ON TRIGGER soft_delete_cascade ON dalgo.organizations IS 'A soft delete stops the schedules and pending runs; a restore brings the schedules back';
COMMENT ON TRIGGER soft_delete_cascade ON dalgo.sources IS 'A soft delete stops the schedules and pending runs; a restore brings the schedules back';
COMMENT ON TRIGGER soft_delete_cascade ON dalgo.transformations IS 'A soft delete takes the outputs and stops pending runs; a restore brings the outputs back';
COMMENT ON TRIGGER soft_delete_cascade ON dalgo.outputs IS 'A soft delete stops the schedules and pending runs; a restore brings the schedules back';

-- The tables whose rows an app soft-deletes and restores, with the role it
-- takes to delete one (that of the table's delete policy).
CREATE FUNCTION dalgo_internal.soft_delete_role(tbl regclass) RETURNS dalgo.member_role
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT CASE tbl
		WHEN 'dalgo.organizations'::regclass THEN 'owner'::dalgo.member_role
		WHEN 'dalgo.sources'::regclass THEN 'admin'::dalgo.member_role
		WHEN 'dalgo.transformations'::regclass THEN 'member'::dalgo.member_role
		WHEN 'dalgo.outputs'::regclass THEN 'member'::dalgo.member_role
	END;
END;
REVOKE ALL ON FUNCTION dalgo_internal.soft_delete_role(regclass) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.soft_delete_role(regclass) IS
	'Internal: the role that soft-deletes a row of organizations (owner), sources (admin), transformations or outputs (member); NULL for any other table';

-- The caller's role in an organization, whether or not it is soft-deleted
-- (the membership functions see none in a deleted organization): a live
-- membership of an active, live user, a superadmin being owner.  An API
-- key has none here: it acts only in a live organization.
CREATE FUNCTION dalgo_internal.dormant_role(organization_id uuid) RETURNS dalgo.member_role
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT CASE WHEN dalgo.current_api_key_id() IS NOT NULL THEN NULL
				WHEN u.is_superadmin THEN 'owner'::dalgo.member_role
				ELSE (SELECT m.role FROM dalgo.organization_members m
					  WHERE m.organization_id = dormant_role.organization_id AND m.user_id = u.id AND m.deleted_at IS NULL)
		   END
	FROM dalgo.users u
	WHERE u.id = dalgo.current_user_id() AND u.is_active AND u.deleted_at IS NULL
	  AND EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = dormant_role.organization_id);
END;
REVOKE ALL ON FUNCTION dalgo_internal.dormant_role(uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.dormant_role(uuid) IS
	'Internal: the caller''s role in an organization even while it is soft-deleted (live membership, active live user; superadmin: owner; API key: none)';

CREATE FUNCTION dalgo.soft_delete(tbl regclass, id uuid) RETURNS timestamptz
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	need dalgo.member_role := dalgo_internal.soft_delete_role(tbl);
	org uuid;
	was timestamptz;
	stamp timestamptz := now();
BEGIN
	IF need IS NULL THEN
		RAISE EXCEPTION '% is not a table whose rows are soft-deleted', tbl
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'dalgo.soft_delete takes dalgo.organizations, dalgo.sources, dalgo.transformations or dalgo.outputs.';
	END IF;
	EXECUTE pg_catalog.format('SELECT %s, deleted_at FROM %s WHERE id OPERATOR(pg_catalog.=) $1 FOR NO KEY UPDATE',
							  CASE WHEN tbl = 'dalgo.organizations'::regclass THEN 'id' ELSE 'organization_id' END, tbl)
		INTO org, was USING soft_delete.id;
	IF org IS NULL OR was IS NOT NULL OR NOT dalgo.caller_may(org, need) THEN
		RAISE EXCEPTION 'no live row % in % that you may delete', soft_delete.id, tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = pg_catalog.format('Deleting a row of %s takes the %s role in its organization.', tbl, need);
	END IF;
	EXECUTE pg_catalog.format('UPDATE %s SET deleted_at = $2 WHERE id OPERATOR(pg_catalog.=) $1', tbl)
		USING soft_delete.id, stamp;
	RETURN stamp;
END
$$;
REVOKE ALL ON FUNCTION dalgo.soft_delete(regclass, uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo.soft_delete(regclass, uuid) IS
	'Soft-delete a row of dalgo.organizations (owners), dalgo.sources (admins), dalgo.transformations or dalgo.outputs (members): it drops out of what apps read, its schedules stop and its pending runs fail at once; dalgo.restore brings it back within dalgo.restore_days. Returns its deleted_at';

CREATE FUNCTION dalgo.deleted_items(organization_id uuid)
	RETURNS TABLE (tbl regclass, id uuid, name text, deleted_at timestamptz, restorable_until timestamptz)
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := deleted_items.organization_id;
	days integer := pg_catalog.current_setting('dalgo.restore_days')::integer;
	org_deleted timestamptz;
	allowed boolean;
BEGIN
	SELECT o.deleted_at INTO org_deleted FROM dalgo.organizations o WHERE o.id = org;
	-- Admins of a live organization; owners of a deleted one.
	allowed := FOUND;
	IF allowed AND org_deleted IS NULL THEN
		allowed := dalgo.caller_may(org, 'admin');
	ELSIF allowed THEN
		allowed := coalesce(dalgo_internal.dormant_role(org) = 'owner', false)
				   OR (dalgo.current_user_id() IS NULL AND dalgo.caller_may(org, 'viewer'));
	END IF;
	IF NOT allowed THEN
		RAISE EXCEPTION 'organization % does not exist or you are not one of its admins', org
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN QUERY
		SELECT x.tbl, x.id, x.name, x.deleted_at, x.deleted_at + pg_catalog.make_interval(days => days)
		FROM (SELECT 'dalgo.organizations'::regclass AS tbl, o.id, o.name, o.deleted_at
			  FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NOT NULL
			  UNION ALL
			  SELECT 'dalgo.sources'::regclass, s.id, s.name, s.deleted_at
			  FROM dalgo.sources s WHERE s.organization_id = org AND s.deleted_at IS NOT NULL
			  UNION ALL
			  SELECT 'dalgo.transformations'::regclass, t.id, t.name, t.deleted_at
			  FROM dalgo.transformations t WHERE t.organization_id = org AND t.deleted_at IS NOT NULL
			  UNION ALL
			  SELECT 'dalgo.outputs'::regclass, p.id, p.name, p.deleted_at
			  FROM dalgo.outputs p WHERE p.organization_id = org AND p.deleted_at IS NOT NULL) x
		ORDER BY x.deleted_at DESC, x.tbl::text, x.id;
END
$$;
REVOKE ALL ON FUNCTION dalgo.deleted_items(uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo.deleted_items(uuid) IS
	'The soft-deleted organization, sources, transformations and outputs of an organization, newest first, with the time until which dalgo.restore brings each back (deleted_at + dalgo.restore_days); for its admins, or its owners once the organization itself is deleted';

CREATE FUNCTION dalgo.restore(tbl regclass, id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
	was timestamptz;
	days integer := pg_catalog.current_setting('dalgo.restore_days')::integer;
	allowed boolean;
	parent_gone text;
BEGIN
	IF dalgo_internal.soft_delete_role(tbl) IS NULL THEN
		RAISE EXCEPTION '% is not a table whose rows are restored', tbl
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'dalgo.restore takes dalgo.organizations, dalgo.sources, dalgo.transformations or dalgo.outputs.';
	END IF;
	EXECUTE pg_catalog.format('SELECT %s, deleted_at FROM %s WHERE id OPERATOR(pg_catalog.=) $1 FOR NO KEY UPDATE',
							  CASE WHEN tbl = 'dalgo.organizations'::regclass THEN 'id' ELSE 'organization_id' END, tbl)
		INTO org, was USING restore.id;
	-- An organization is brought back by its owners; a row in one by its admins.
	IF tbl = 'dalgo.organizations'::regclass THEN
		allowed := dalgo_internal.dormant_role(org) = 'owner'
				   OR (dalgo.current_user_id() IS NULL AND dalgo.caller_may(org, 'viewer'));
	ELSE
		allowed := dalgo.caller_may(org, 'admin');
	END IF;
	IF org IS NULL OR was IS NULL OR NOT coalesce(allowed, false) THEN
		RAISE EXCEPTION 'no deleted row % in % that you may restore', restore.id, tbl
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'dalgo.deleted_items(organization_id) lists what an admin may restore.';
	END IF;
	IF was < now() - pg_catalog.make_interval(days => days) THEN
		RAISE EXCEPTION 'the restore window has passed: % was deleted at %, more than dalgo.restore_days (%) ago', restore.id, was, days
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'It is purged by dalgo.purge_deleted() and cannot come back.';
	END IF;
	IF tbl = 'dalgo.outputs'::regclass THEN
		SELECT t.name INTO parent_gone FROM dalgo.outputs p JOIN dalgo.transformations t ON t.id = p.transformation_id
			WHERE p.id = restore.id AND t.deleted_at IS NOT NULL;
		IF parent_gone IS NOT NULL THEN
			RAISE EXCEPTION 'the transformation "%" of this output is deleted', parent_gone
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  HINT = 'Restore the transformation first: that brings back the outputs it took with it.';
		END IF;
	END IF;
	EXECUTE pg_catalog.format('UPDATE %s SET deleted_at = NULL WHERE id OPERATOR(pg_catalog.=) $1', tbl) USING restore.id;
END
$$;
REVOKE ALL ON FUNCTION dalgo.restore(regclass, uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo.restore(regclass, uuid) IS
	'Bring back a soft-deleted row of dalgo.organizations (its owners), dalgo.sources, dalgo.transformations or dalgo.outputs (admins of its organization) within dalgo.restore_days of its deletion, with the schedules (a transformation: the outputs) its deletion stopped. Not to be confused with dalgo.restoring(), the pg_restore mode';

-- ---------------------------------------------------------------------------
-- An organization's warehouse goes with it
-- ---------------------------------------------------------------------------

-- Drop the warehouse schema org_<hex> with everything in it, everything
-- else the role dalgo_wh_<hex> owns or was granted in this database, and the
-- role.  A role still used in another database of the cluster (a copy of
-- this one) is left to that database, with a warning.
CREATE FUNCTION dalgo_internal.drop_warehouse(organization_id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	SET client_min_messages = warning	-- not a NOTICE per dropped table
AS $$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	role_name text := dalgo_internal.warehouse_role_name(organization_id);
	owner_name text;
BEGIN
	SELECT r.rolname INTO owner_name FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE n.nspname = schema_name;
	-- dalgo drops only a schema it made: one its warehouse role owns.
	IF owner_name = role_name THEN
		EXECUTE pg_catalog.format('DROP SCHEMA %I CASCADE', schema_name);
	ELSIF owner_name IS NOT NULL THEN
		RAISE WARNING 'schema "%" is not owned by the warehouse role "%": left in place', schema_name, role_name;
	END IF;
	IF EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
		EXECUTE pg_catalog.format('DROP OWNED BY %I CASCADE', role_name);
		BEGIN
			EXECUTE pg_catalog.format('DROP ROLE %I', role_name);
		EXCEPTION WHEN dependent_objects_still_exist THEN
			RAISE WARNING 'role "%" is still used in another database: left in place', role_name
				USING DETAIL = SQLERRM;
		END;
	END IF;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.drop_warehouse(uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.drop_warehouse(uuid) IS
	'Internal: drop an organization''s warehouse schema (if its warehouse role owns it) with everything in it, whatever else that role owns or was granted in this database, and the role (left with a warning while another database still uses it)';

CREATE FUNCTION dalgo_internal.drop_organization_warehouse() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF dalgo.restoring() THEN RETURN NULL; END IF;
	PERFORM dalgo_internal.drop_warehouse(OLD.id);
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.drop_organization_warehouse() FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.drop_organization_warehouse() IS
	'AFTER DELETE row trigger on organizations: the organization''s warehouse schema and role are dropped in the same transaction';
CREATE TRIGGER drop_warehouse AFTER DELETE ON dalgo.organizations
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.drop_organization_warehouse();
COMMENT ON TRIGGER drop_warehouse ON dalgo.organizations IS 'A deleted organization takes its warehouse schema and role with it';

-- ---------------------------------------------------------------------------
-- Purge after the restore window
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.purge_deleted(max_rows integer DEFAULT 1000) RETURNS bigint
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cutoff timestamptz := now() - pg_catalog.make_interval(days => pg_catalog.current_setting('dalgo.restore_days')::integer);
	left_over integer := max_rows;
	n bigint;
	total bigint := 0;
	t text;
BEGIN
	IF NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user)
	   AND NOT pg_has_role(session_user, 'dalgo_service', 'USAGE') THEN
		RAISE EXCEPTION 'only dalgo_service or a superuser may purge deleted rows'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF max_rows IS NULL OR max_rows < 1 THEN
		RAISE EXCEPTION 'max_rows must be at least 1' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- Organizations first (each drops a warehouse, so they count 100 rows
	-- against the batch's locks), then what else outlived its window.
	FOREACH t IN ARRAY ARRAY['organizations', 'transformations', 'outputs', 'sources'] LOOP
		EXIT WHEN left_over <= 0;
		EXECUTE pg_catalog.format(
			'WITH d AS (DELETE FROM dalgo.%1$I x WHERE x.id IN (SELECT y.id FROM dalgo.%1$I y '
			'WHERE y.deleted_at < $1 ORDER BY y.deleted_at LIMIT $2) RETURNING 1) SELECT count(*) FROM d', t)
			INTO n USING cutoff, CASE WHEN t = 'organizations' THEN greatest(left_over / 100, 1) ELSE left_over END;
		total := total + n;
		left_over := left_over - CASE WHEN t = 'organizations' THEN n * 100 ELSE n END;
	END LOOP;
	-- Stragglers: a run queued for something deleted meanwhile never runs.
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = 'cancelled: its source or organization was deleted'
		WHERE r.status = 'pending' AND NOT dalgo_internal.target_is_live(r.organization_id, r.source_id, NULL);
	UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = 'cancelled: its transformation or organization was deleted'
		WHERE r.status = 'pending' AND NOT dalgo_internal.target_is_live(r.organization_id, NULL, r.transformation_id);
	RETURN total;
END
$$;
REVOKE ALL ON FUNCTION dalgo.purge_deleted(integer) FROM PUBLIC;
COMMENT ON FUNCTION dalgo.purge_deleted(integer) IS
	'Hard-delete (cascading) the organizations, transformations, outputs and sources soft-deleted more than dalgo.restore_days ago, at most max_rows per call (an organization, whose warehouse is dropped, counts 100); returns how many rows went. Call it until it returns 0. Only dalgo_service and superusers';

-- ---------------------------------------------------------------------------
-- Leaving for good
-- ---------------------------------------------------------------------------

-- Replace every string value that contains one of the needles
-- (case-insensitively), and every value under the keys given, by "[erased]".
CREATE FUNCTION dalgo_internal.erase_in_jsonb(j jsonb, needles text[], keys text[]) RETURNS jsonb
	LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	CASE jsonb_typeof(j)
	WHEN 'object' THEN
		RETURN coalesce((SELECT jsonb_object_agg(e.key, CASE WHEN e.key = ANY (keys) AND jsonb_typeof(e.value) <> 'null'
															 THEN '"[erased]"'::jsonb
															 ELSE dalgo_internal.erase_in_jsonb(e.value, needles, keys) END)
						 FROM jsonb_each(j) e), '{}'::jsonb);
	WHEN 'array' THEN
		RETURN coalesce((SELECT jsonb_agg(dalgo_internal.erase_in_jsonb(a.value, needles, keys) ORDER BY a.n)
						 FROM jsonb_array_elements(j) WITH ORDINALITY a(value, n)), '[]'::jsonb);
	WHEN 'string' THEN
		IF EXISTS (SELECT FROM unnest(needles) x WHERE length(x) >= 3 AND strpos(lower(j #>> '{}'), lower(x)) > 0) THEN
			RETURN '"[erased]"'::jsonb;
		END IF;
		RETURN j;
	ELSE
		RETURN j;
	END CASE;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.erase_in_jsonb(jsonb, text[], text[]) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.erase_in_jsonb(jsonb, text[], text[]) IS
	'Internal: a jsonb value with every string containing one of the needles (case-insensitively, needles of 3 characters or more) and every value under one of the keys replaced by "[erased]"';

CREATE FUNCTION dalgo_internal.anonymize_audit_logs(user_id uuid, needles text[]) RETURNS bigint
	AS 'MODULE_PATHNAME', 'dalgo_anonymize_audit_logs'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION dalgo_internal.anonymize_audit_logs(uuid, text[]) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.anonymize_audit_logs(uuid, text[]) IS
	'Internal: the one path past the audit trail''s append-only guard: in the rows by or about the user, or naming one of the needles, personal data in details is erased and the client address and user agent of the user''s own rows dropped; ids, actions and times stay';

-- The work of both ways to leave: memberships end, the personal
-- organization goes (with its warehouse), tokens and keys die, the user row
-- and the audit trail keep the id and lose the person.
CREATE FUNCTION dalgo_internal.erase_account(user_id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	uid uuid := erase_account.user_id;
	u record;
	blocking record;
	needles text[];
	anon text := 'erased-' || replace(erase_account.user_id::text, '-', '') || '@erased.invalid';
BEGIN
	SELECT x.id, x.email, x.full_name, x.deleted_at INTO u FROM dalgo.users x WHERE x.id = uid FOR UPDATE;
	IF u.id IS NULL THEN
		RAISE EXCEPTION 'user % does not exist', uid USING ERRCODE = 'no_data_found';
	END IF;
	-- Team organizations must keep an owner: under each organization's row
	-- lock, against the latest committed state (as guard_membership counts).
	FOR blocking IN
		SELECT o.id, o.name FROM dalgo.organization_members m JOIN dalgo.organizations o ON o.id = m.organization_id
		WHERE m.user_id = uid AND m.role = 'owner' AND m.deleted_at IS NULL
		  AND o.org_type = 'team' AND o.deleted_at IS NULL
		ORDER BY o.id
	LOOP
		PERFORM FROM dalgo.organizations o WHERE o.id = blocking.id FOR NO KEY UPDATE;
		IF dalgo_internal.live_owner_count(blocking.id,
				(SELECT m.id FROM dalgo.organization_members m
				 WHERE m.organization_id = blocking.id AND m.user_id = uid AND m.deleted_at IS NULL)) = 0 THEN
			RAISE EXCEPTION 'you are the last owner of the organization "%" (%)', blocking.name, blocking.id
				USING ERRCODE = 'check_violation',
					  HINT = 'Make another member an owner, or delete the organization, first.';
		END IF;
	END LOOP;

	-- Personal organizations of the user go at once, warehouse and all.
	DELETE FROM dalgo.organizations o
		WHERE o.org_type = 'personal'
		  AND EXISTS (SELECT FROM dalgo.organization_members m
					  WHERE m.organization_id = o.id AND m.user_id = uid AND m.role = 'owner' AND m.deleted_at IS NULL);
	-- Memberships end (the rows keep their ids for the audit trail).
	UPDATE dalgo.organization_members m SET deleted_at = now() WHERE m.user_id = uid AND m.deleted_at IS NULL;

	-- Sessions, reset tokens, API keys and pending mail.
	UPDATE dalgo.refresh_tokens t SET revoked_at = now() WHERE t.user_id = uid AND t.revoked_at IS NULL;
	UPDATE dalgo.password_reset_tokens t SET used_at = now() WHERE t.user_id = uid AND t.used_at IS NULL;
	UPDATE dalgo.api_keys k SET revoked_at = now() WHERE k.created_by_id = uid AND k.revoked_at IS NULL;
	UPDATE dalgo.mail_messages m SET state = 'cancelled', payload = NULL, completed_at = now()
		WHERE lower(m.recipient) = lower(u.email) AND m.state IN ('pending', 'sending');
	UPDATE dalgo.mail_messages m SET recipient = anon WHERE lower(m.recipient) = lower(u.email);
	UPDATE dalgo.invitations i SET email = anon WHERE lower(i.email) = lower(u.email);
	DELETE FROM dalgo.sign_in_attempts a
		WHERE a.user_id = uid OR a.email_hash = dalgo_internal.email_key(u.email);

	-- The user row: the id stays, the person goes.
	UPDATE dalgo.users x SET email = anon, full_name = NULL, password_hash = NULL, is_active = false,
		deleted_at = coalesce(x.deleted_at, now())
		WHERE x.id = uid;

	-- The audit trail: what the user did and what was done to them stays, by id.
	needles := ARRAY[u.email, u.full_name]
		|| ARRAY(SELECT DISTINCT v.value FROM dalgo.audit_logs a,
					 LATERAL jsonb_path_query(a.details, 'strict $.**.email.**') q,
					 LATERAL (SELECT q #>> '{}' AS value) v
				 WHERE a.resource_type = 'users' AND a.resource_id = uid AND jsonb_typeof(q) = 'string'
				   AND v.value <> anon)
		|| ARRAY(SELECT DISTINCT v.value FROM dalgo.audit_logs a,
					 LATERAL jsonb_path_query(a.details, 'strict $.**.full_name.**') q,
					 LATERAL (SELECT q #>> '{}' AS value) v
				 WHERE a.resource_type = 'users' AND a.resource_id = uid AND jsonb_typeof(q) = 'string');
	PERFORM dalgo_internal.anonymize_audit_logs(uid, array_remove(needles, NULL));
	PERFORM dalgo_internal.account_audit('account_erased', NULL, NULL, 'user', uid);
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.erase_account(uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.erase_account(uuid) IS
	'Internal: delete_my_account and erase_user: refuse while the user is the last owner of a live team organization; delete their personal organizations (warehouse included); end memberships; revoke refresh tokens, reset tokens and API keys; cancel their mail; anonymize the user row and the audit trail';

CREATE FUNCTION dalgo.delete_my_account() RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
BEGIN
	PERFORM dalgo_internal.refuse_api_key('deleting an account');
	IF me IS NULL OR NOT EXISTS (SELECT FROM dalgo.users u WHERE u.id = me AND u.is_active AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'deleting an account needs a signed-in user' USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM dalgo_internal.erase_account(me);
END
$$;
REVOKE ALL ON FUNCTION dalgo.delete_my_account() FROM PUBLIC;
COMMENT ON FUNCTION dalgo.delete_my_account() IS
	'Leave for good, as the signed-in user: refused (23514, with a hint) while the last owner of a team organization; otherwise the personal organization is deleted with its warehouse, memberships end, sessions, reset tokens and API keys are revoked, the account is anonymized (email replaced, name and password removed) and the audit trail keeps its ids but no personal data';

CREATE FUNCTION dalgo.erase_user(user_id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF dalgo.current_user_id() IS NOT NULL THEN
		RAISE EXCEPTION 'erase_user is service work; it runs without a user identity'
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'A user leaves with dalgo.delete_my_account().';
	END IF;
	IF NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user)
	   AND NOT pg_has_role(session_user, 'dalgo_service', 'USAGE') THEN
		RAISE EXCEPTION 'only dalgo_service or a superuser may erase a user' USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM dalgo_internal.erase_account(erase_user.user_id);
END
$$;
REVOKE ALL ON FUNCTION dalgo.erase_user(uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo.erase_user(uuid) IS
	'Service side of a data-subject erasure request: what dalgo.delete_my_account() does, for any user (the same last-owner refusal); dalgo_service and superusers, without a user identity';

GRANT EXECUTE ON FUNCTION dalgo.soft_delete(regclass, uuid), dalgo.deleted_items(uuid), dalgo.restore(regclass, uuid),
	dalgo.delete_my_account()
	TO dalgo_authenticated, dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.purge_deleted(integer), dalgo.erase_user(uuid) TO dalgo_service;


-- lead: claim_pending_run as merged from jrun (on-demand runs) and jdel (only live targets)
CREATE OR REPLACE FUNCTION dalgo_internal.claim_pending_run(OUT run_kind dalgo.run_kind, OUT run_id uuid)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
BEGIN
	FOR org IN
		WITH queued AS (
			SELECT r.organization_id, r.status, r.created_at
			FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
			WHERE r.status IN ('pending', 'running') AND NOT dalgo.is_connector_source(s.source_type)
			  AND r.details ?| ARRAY['schedule_id', 'on_demand']
			  AND (r.status = 'running' OR dalgo_internal.target_is_live(r.organization_id, r.source_id, NULL))
			UNION ALL
			SELECT r.organization_id, r.status, r.created_at FROM dalgo.transformation_runs r
			WHERE r.status IN ('pending', 'running') AND r.details ?| ARRAY['schedule_id', 'on_demand']
			  AND (r.status = 'running' OR dalgo_internal.target_is_live(r.organization_id, NULL, r.transformation_id)))
		SELECT q.organization_id FROM queued q
		GROUP BY q.organization_id
		HAVING bool_or(q.status = 'pending')
		ORDER BY count(*) FILTER (WHERE q.status = 'running'), min(q.created_at) FILTER (WHERE q.status = 'pending'),
				 q.organization_id
	LOOP
		SELECT 'sync', r.id INTO run_kind, run_id FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
		WHERE r.status = 'pending' AND r.organization_id = org AND NOT dalgo.is_connector_source(s.source_type)
		  AND r.details ?| ARRAY['schedule_id', 'on_demand'] AND dalgo_internal.target_is_live(r.organization_id, r.source_id, NULL)
		ORDER BY r.created_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED;
		IF NOT FOUND THEN
			SELECT 'output', r.id INTO run_kind, run_id FROM dalgo.transformation_runs r
			WHERE r.status = 'pending' AND r.organization_id = org AND r.details ?| ARRAY['schedule_id', 'on_demand']
			  AND dalgo_internal.target_is_live(r.organization_id, NULL, r.transformation_id)
			ORDER BY r.created_at LIMIT 1 FOR UPDATE SKIP LOCKED;
		END IF;
		EXIT WHEN run_id IS NOT NULL;
	END LOOP;
	IF run_id IS NOT NULL THEN
		PERFORM dalgo_internal.start_scheduled_run(run_kind, run_id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.claim_pending_run() IS
	'Internal: a run worker takes a pending in-database run and marks it running: the organization with the fewest running runs first, then the one waiting longest';

-- lead: the daily maintenance purges soft-deleted rows past dalgo.restore_days
CREATE OR REPLACE FUNCTION dalgo_internal.daily_maintenance(batch_size integer DEFAULT 10000) RETURNS jsonb
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	summary jsonb := '{}';
	more boolean := false;
	n bigint;
	m boolean;
BEGIN
	-- Retention: one batch of every enabled policy (dalgo.retention_policies).
	BEGIN
		SELECT coalesce(sum(r.rows_affected), 0), coalesce(bool_or(r.rows_affected >= batch_size), false) INTO n, m
		FROM dalgo.apply_retention(batch_size, 1) r;
		summary := summary || jsonb_build_object('retention_rows', n);
		more := more OR m;
	EXCEPTION WHEN OTHERS THEN
		summary := summary || jsonb_build_object('retention_error', SQLERRM);
	END;
	-- Soft-deleted rows past dalgo.restore_days: one batch (dalgo.purge_deleted).
	BEGIN
		n := dalgo.purge_deleted(1000);
		summary := summary || jsonb_build_object('purged_rows', n);
		more := more OR n > 0;
	EXCEPTION WHEN OTHERS THEN
		summary := summary || jsonb_build_object('purge_error', SQLERRM);
	END;
	RETURN summary || jsonb_build_object('done', NOT more);
END
$$;
COMMENT ON FUNCTION dalgo_internal.daily_maintenance(integer) IS
	'Internal: one pass of the daily maintenance steps (retention, one batch per policy; the purge of soft-deleted rows past dalgo.restore_days, one batch); returns what it did, "done": false while work is left. The scheduler calls it in short transactions until done';

-- lead: runs cancelled by a deletion are marked {"cancelled": true} and alert no one;
-- connectors cannot set dalgo's own run keys on_demand, output_id and cancelled
CREATE OR REPLACE FUNCTION dalgo_internal.cascade_soft_delete() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	deleting boolean := OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL;
	noun text := CASE TG_TABLE_NAME WHEN 'organizations' THEN 'organization' WHEN 'sources' THEN 'source'
							 WHEN 'transformations' THEN 'transformation' ELSE 'output' END;
	msg text;
BEGIN
	IF dalgo.restoring() THEN RETURN NULL; END IF;
	IF deleting THEN
		msg := pg_catalog.format('cancelled: the %s was deleted', noun);
		-- Schedules first: a claim holding a schedule's row finishes before
		-- this goes on, so the run it made is cancelled below.
		IF TG_TABLE_NAME = 'transformations' THEN
			UPDATE dalgo.outputs x SET deleted_at = NEW.deleted_at
				WHERE x.organization_id = NEW.organization_id AND x.transformation_id = NEW.id AND x.deleted_at IS NULL;
		ELSE
			UPDATE dalgo.schedules x SET deleted_at = NEW.deleted_at
				WHERE x.deleted_at IS NULL
				  AND CASE TG_TABLE_NAME WHEN 'organizations' THEN x.organization_id = NEW.id
										 WHEN 'sources' THEN x.source_id = NEW.id
										 ELSE x.output_id = NEW.id END;
		END IF;
		IF TG_TABLE_NAME IN ('organizations', 'sources') THEN
			UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(), error_message = msg,
				details = r.details || '{"cancelled": true}'
				WHERE r.status = 'pending'
				  AND CASE WHEN TG_TABLE_NAME = 'organizations' THEN r.organization_id = NEW.id ELSE r.source_id = NEW.id END;
		END IF;
		IF TG_TABLE_NAME = 'outputs' THEN
			UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(), error_message = msg,
				details = r.details || '{"cancelled": true}'
				WHERE r.status = 'pending' AND r.transformation_id = NEW.transformation_id
				  AND (r.details->>'output_id' = NEW.id::text
					   OR r.details->>'schedule_id' IN (SELECT x.id::text FROM dalgo.schedules x WHERE x.output_id = NEW.id));
		ELSIF TG_TABLE_NAME IN ('organizations', 'transformations') THEN
			UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(), error_message = msg,
				details = r.details || '{"cancelled": true}'
				WHERE r.status = 'pending'
				  AND CASE WHEN TG_TABLE_NAME = 'organizations' THEN r.organization_id = NEW.id
						   ELSE r.transformation_id = NEW.id END;
		END IF;
	ELSIF OLD.deleted_at IS NOT NULL AND NEW.deleted_at IS NULL THEN
		-- Restored: what the delete stamped comes back (schedules start again
		-- from their next slot after now: set_schedule_next_run).
		IF TG_TABLE_NAME = 'transformations' THEN
			UPDATE dalgo.outputs x SET deleted_at = NULL
				WHERE x.organization_id = NEW.organization_id AND x.transformation_id = NEW.id
				  AND x.deleted_at = OLD.deleted_at;
		ELSE
			UPDATE dalgo.schedules x SET deleted_at = NULL, next_run_at = NULL
				WHERE x.deleted_at = OLD.deleted_at
				  AND CASE TG_TABLE_NAME WHEN 'organizations' THEN x.organization_id = NEW.id
										 WHEN 'sources' THEN x.source_id = NEW.id
										 ELSE x.output_id = NEW.id END
				  AND dalgo_internal.target_is_live(x.organization_id, x.source_id, NULL)
				  AND (x.output_id IS NULL OR EXISTS (SELECT FROM dalgo.outputs o WHERE o.id = x.output_id AND o.deleted_at IS NULL));
		END IF;
	END IF;
	RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION dalgo.purge_deleted(max_rows integer DEFAULT 1000) RETURNS bigint
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cutoff timestamptz := now() - pg_catalog.make_interval(days => pg_catalog.current_setting('dalgo.restore_days')::integer);
	left_over integer := max_rows;
	n bigint;
	total bigint := 0;
	t text;
BEGIN
	IF NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user)
	   AND NOT pg_has_role(session_user, 'dalgo_service', 'USAGE') THEN
		RAISE EXCEPTION 'only dalgo_service or a superuser may purge deleted rows'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF max_rows IS NULL OR max_rows < 1 THEN
		RAISE EXCEPTION 'max_rows must be at least 1' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- Organizations first (each drops a warehouse, so they count 100 rows
	-- against the batch's locks), then what else outlived its window.
	FOREACH t IN ARRAY ARRAY['organizations', 'transformations', 'outputs', 'sources'] LOOP
		EXIT WHEN left_over <= 0;
		EXECUTE pg_catalog.format(
			'WITH d AS (DELETE FROM dalgo.%1$I x WHERE x.id IN (SELECT y.id FROM dalgo.%1$I y '
			'WHERE y.deleted_at < $1 ORDER BY y.deleted_at LIMIT $2) RETURNING 1) SELECT count(*) FROM d', t)
			INTO n USING cutoff, CASE WHEN t = 'organizations' THEN greatest(left_over / 100, 1) ELSE left_over END;
		total := total + n;
		left_over := left_over - CASE WHEN t = 'organizations' THEN n * 100 ELSE n END;
	END LOOP;
	-- Stragglers: a run queued for something deleted meanwhile never runs.
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = 'cancelled: its source or organization was deleted', details = r.details || '{"cancelled": true}'
		WHERE r.status = 'pending' AND NOT dalgo_internal.target_is_live(r.organization_id, r.source_id, NULL);
	UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = 'cancelled: its transformation or organization was deleted', details = r.details || '{"cancelled": true}'
		WHERE r.status = 'pending' AND NOT dalgo_internal.target_is_live(r.organization_id, NULL, r.transformation_id);
	RETURN total;
END
$$;

CREATE OR REPLACE FUNCTION dalgo_internal.record_run_alert() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer := greatest(coalesce(nullif(current_setting('dalgo.alert_after_failures', true), '')::integer, 1), 1);
	sid uuid;
	s dalgo.schedules;
	org dalgo.organizations;
	previous text[];
	before integer;
	target_type text;
	target_name text;
	kind text;
	payload jsonb;
	recipient text;
BEGIN
	IF dalgo.restoring() OR NEW.details ?| ARRAY['skipped', 'cancelled'] THEN
		RETURN NULL;
	END IF;
	BEGIN
		sid := (NEW.details->>'schedule_id')::uuid;
	EXCEPTION WHEN invalid_text_representation THEN
		RETURN NULL;
	END;
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = sid AND x.organization_id = NEW.organization_id;
	SELECT * INTO org FROM dalgo.organizations o WHERE o.id = NEW.organization_id AND o.deleted_at IS NULL;
	IF s.id IS NULL OR org.id IS NULL THEN
		RETURN NULL;
	END IF;
	-- The outcomes of the schedule's previous runs, newest first: n of them
	-- tell whether the streak before this run was n - 1 long, or reached n.
	IF TG_TABLE_NAME = 'sync_runs' THEN
		previous := ARRAY(SELECT r.status::text FROM dalgo.sync_runs r
						  WHERE r.source_id = NEW.source_id AND r.organization_id = NEW.organization_id AND r.id <> NEW.id
							AND r.details->>'schedule_id' = sid::text AND NOT r.details ?| ARRAY['skipped', 'cancelled']
							AND r.status IN ('success', 'failed')
						  ORDER BY r.completed_at DESC NULLS LAST, r.created_at DESC LIMIT n);
		target_type := 'source';
		SELECT x.name INTO target_name FROM dalgo.sources x WHERE x.id = s.source_id;
	ELSE
		previous := ARRAY(SELECT r.status::text FROM dalgo.transformation_runs r
						  WHERE r.transformation_id = NEW.transformation_id AND r.organization_id = NEW.organization_id
							AND r.id <> NEW.id AND r.details->>'schedule_id' = sid::text AND NOT r.details ?| ARRAY['skipped', 'cancelled']
							AND r.status IN ('success', 'failed')
						  ORDER BY r.completed_at DESC NULLS LAST, r.created_at DESC LIMIT n);
		target_type := 'output';
		SELECT x.name INTO target_name FROM dalgo.outputs x WHERE x.id = s.output_id;
	END IF;
	before := coalesce(array_position(previous, 'success') - 1, cardinality(previous));
	IF NEW.status = 'failed' AND before = n - 1 THEN
		kind := 'run_failed';
	ELSIF NEW.status = 'success' AND before >= n THEN
		kind := 'run_recovered';
	ELSE
		RETURN NULL;
	END IF;
	payload := jsonb_build_object(
		'organization_id', org.id, 'organization_name', org.name,
		'schedule_id', s.id, 'target_type', target_type, 'target_id', coalesce(s.source_id, s.output_id),
		'target_name', target_name, 'run_id', NEW.id, 'at', NEW.completed_at,
		'failures', CASE WHEN kind = 'run_failed' THEN n END,
		'error', CASE WHEN kind = 'run_failed' THEN dalgo.redact(NEW.error_message) END,
		'subject', CASE WHEN kind = 'run_failed'
						THEN format('[%s] %s "%s" failed%s', org.name, CASE WHEN target_type = 'source' THEN 'sync of' ELSE 'refresh of' END,
									target_name, CASE WHEN n > 1 THEN format(' %s times in a row', n) ELSE '' END)
						ELSE format('[%s] %s "%s" is back to normal', org.name,
									CASE WHEN target_type = 'source' THEN 'sync of' ELSE 'refresh of' END, target_name) END);
	FOR recipient IN
		SELECT DISTINCT u.email FROM dalgo.organization_members m JOIN dalgo.users u ON u.id = m.user_id
		WHERE m.organization_id = org.id AND m.deleted_at IS NULL AND m.role >= 'admin'
		  AND u.deleted_at IS NULL AND u.is_active
		ORDER BY u.email
	LOOP
		PERFORM dalgo_internal.queue_mail(kind, recipient, payload);
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo_internal.record_run_alert() IS
	'AFTER UPDATE trigger on sync_runs and transformation_runs: when a scheduled run fails for the dalgo.alert_after_failures-th time in a row, or succeeds after such a streak, queue one run_failed or run_recovered message (error redacted) to each admin and owner of the organization';

CREATE OR REPLACE FUNCTION dalgo.complete_sync_run(run_id uuid, rows_synced integer, error_message text DEFAULT NULL,
										details jsonb DEFAULT '{}')
	RETURNS dalgo.sync_runs
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
BEGIN
	IF jsonb_typeof(coalesce(complete_sync_run.details, '{}')) <> 'object' THEN
		RAISE EXCEPTION 'details must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- The keys dalgo's own code reads (the schedule, skips that quotas do not
	-- count, the runner) are dalgo's: a connector does not set them.
	UPDATE dalgo.sync_runs x SET status = CASE WHEN complete_sync_run.error_message IS NULL THEN 'success' ELSE 'failed' END::dalgo.run_status,
		completed_at = clock_timestamp(), rows_synced = complete_sync_run.rows_synced,
		error_message = complete_sync_run.error_message,
		details = x.details || (coalesce(complete_sync_run.details, '{}')
								- ARRAY['schedule_id', 'skipped', 'runner_pid', 'attempt', 'lag_ms', 'on_demand', 'output_id', 'cancelled'])
	WHERE x.id = run_id AND x.status = 'running'
	RETURNING * INTO r;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'sync run % is not running (claim it first)', run_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF r.status = 'success' THEN
		UPDATE dalgo.sources s SET last_synced_at = now() WHERE s.id = r.source_id;
	END IF;
	RETURN r;
END
$$;
COMMENT ON FUNCTION dalgo.complete_sync_run(uuid, integer, text, jsonb) IS
	'Connector protocol: finish a claimed run with its row count, or with an error message (then it fails); details (an object) is merged in, except dalgo''s own keys schedule_id, skipped, runner_pid, attempt, lag_ms, on_demand, output_id and cancelled';

-- stage: typed tables and atomic swaps for every sync (finish_sync), staging tables for
-- outside loaders (stage_sync_run), uploads, and tables from anywhere (an event trigger).
-- ---------------------------------------------------------------------------
-- Typed tables and atomic swaps
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo_internal.value_kinds(value text) RETURNS integer
	AS 'MODULE_PATHNAME', 'dalgo_value_kinds'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_internal.value_kinds(text) IS
	'Internal: the types a text value converts to for certain, as a bit mask (1 boolean, 2 bigint, 4 numeric, 8 date, 16 timestamptz, 32 jsonb); NULL for the empty string';

-- The one name of a run's staging table (in its organization's warehouse schema).
CREATE FUNCTION dalgo_internal.staging_table_name(run_id uuid) RETURNS text
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN '_dalgo_stage_' || replace(run_id::text, '-', '');
COMMENT ON FUNCTION dalgo_internal.staging_table_name(uuid) IS
	'Internal: the name of a sync run''s staging table, _dalgo_stage_<run id without dashes>, in the organization''s warehouse schema';

-- Outside writers of staging tables (dalgo_service for a connector,
-- dalgo_authenticated for an upload) need USAGE on the warehouse schema
-- while one of their staging tables exists, and not otherwise.  Serialized
-- per organization, so that two sessions never undo each other's grant.
CREATE FUNCTION dalgo_internal.staging_schema_access(organization_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	nsp oid := to_regnamespace(schema_name);
	writer text;
BEGIN
	IF nsp IS NULL THEN
		RETURN;
	END IF;
	PERFORM pg_advisory_xact_lock(hashtextextended('dalgo staging ' || organization_id::text, 0));
	FOREACH writer IN ARRAY ARRAY['dalgo_service', 'dalgo_authenticated'] LOOP
		IF EXISTS (SELECT FROM pg_class c WHERE c.relnamespace = nsp AND c.relkind = 'r'
				   AND c.relname ~ '^_dalgo_stage_[0-9a-f]{32}$' AND has_table_privilege(writer, c.oid, 'INSERT')) THEN
			EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', schema_name, writer);
		ELSIF has_schema_privilege(writer, nsp, 'USAGE') THEN
			EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM %I', schema_name, writer);
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo_internal.staging_schema_access(uuid) IS
	'Internal: grant USAGE on the warehouse schema to dalgo_service and dalgo_authenticated exactly while one of their staging tables exists there';

-- Drop a run's staging table, if any, and what it granted.
CREATE FUNCTION dalgo_internal.drop_staging_table(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := (SELECT r.organization_id FROM dalgo.sync_runs r WHERE r.id = run_id);
	schema_name text := dalgo_internal.warehouse_schema_name(org);
BEGIN
	IF org IS NULL OR to_regclass(format('%I.%I', schema_name, dalgo_internal.staging_table_name(run_id))) IS NULL THEN
		RETURN;
	END IF;
	PERFORM dalgo_internal.warehouse_execute(org,
		format('DROP TABLE %I.%I', schema_name, dalgo_internal.staging_table_name(run_id)));
	PERFORM dalgo_internal.staging_schema_access(org);
END
$$;
COMMENT ON FUNCTION dalgo_internal.drop_staging_table(uuid) IS
	'Internal: drop a sync run''s staging table, if it exists, and the schema access it needed';

-- Staging tables whose run is no longer running (a connector that went
-- away, an expired or abandoned run): dropped when the organization next
-- stages a load.
CREATE FUNCTION dalgo_internal.drop_stale_staging_tables(organization_id uuid) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	run uuid;
	n integer := 0;
BEGIN
	FOR run IN SELECT substr(c.relname, 14)::uuid FROM pg_class c
			   WHERE c.relnamespace = to_regnamespace(dalgo_internal.warehouse_schema_name(drop_stale_staging_tables.organization_id))
				 AND c.relkind = 'r' AND c.relname ~ '^_dalgo_stage_[0-9a-f]{32}$'
	LOOP
		CONTINUE WHEN EXISTS (SELECT FROM dalgo.sync_runs r WHERE r.id = run AND r.status = 'running');
		PERFORM dalgo_internal.warehouse_execute(drop_stale_staging_tables.organization_id,
			format('DROP TABLE %I.%I', dalgo_internal.warehouse_schema_name(drop_stale_staging_tables.organization_id),
				   dalgo_internal.staging_table_name(run)));
		n := n + 1;
	END LOOP;
	IF n > 0 THEN
		PERFORM dalgo_internal.staging_schema_access(organization_id);
	END IF;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.drop_stale_staging_tables(uuid) IS
	'Internal: drop the organization''s staging tables whose run is no longer running (stage_sync_run and begin_upload call it)';

-- A sync's last step, whoever filled the staging table: type its text
-- columns, build the typed table under the private name _dalgo_sync_<run>,
-- swap it in (swap_warehouse_table: only this source's table is replaced,
-- output views over it are kept), record types in source_schemas, register
-- it in warehouse_tables, and complete the run.  Any error (a quota, a
-- timeout) leaves the previous table and its rows as they were: nothing is
-- replaced before the end, in one transaction.
CREATE FUNCTION dalgo_internal.finish_sync(run_id uuid, staging_table text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	src dalgo.sources;
	schema_name text;
	stage_name text := dalgo_internal.staging_table_name(run_id);
	build_name text := '_dalgo_sync_' || replace(run_id::text, '-', '');
	parts text[];
	rel oid;
	c pg_class;
	infer boolean;
	cols record;
	names text[];
	types text[];
	kinds integer[];
	sel text;
	changed boolean := false;
	wh_owned boolean;
	trig name;
	target text;
	n bigint;
BEGIN
	-- Under a transaction snapshot, rows that a loader committed while this
	-- waited for the staging table's lock would be silently missing.
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'a sync is finished in a READ COMMITTED transaction'
			USING ERRCODE = 'invalid_transaction_state',
				  DETAIL = format('This transaction is %s: rows committed into the staging table after its snapshot would be lost.',
								  upper(current_setting('transaction_isolation')));
	END IF;
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.id = finish_sync.run_id FOR UPDATE;
	IF NOT FOUND OR r.status <> 'running' THEN
		RAISE EXCEPTION 'sync run % is not running', run_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT * INTO src FROM dalgo.sources x
	WHERE x.id = r.source_id AND x.organization_id = r.organization_id AND x.deleted_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'the source of run % no longer exists', run_id USING ERRCODE = 'undefined_object';
	END IF;
	schema_name := dalgo_internal.warehouse_schema_name(src.organization_id);

	-- The staging table is this run's, in this organization's warehouse,
	-- whatever name the caller passed: a plain table owned by the warehouse role.
	BEGIN
		parts := parse_ident(staging_table);
	EXCEPTION WHEN invalid_parameter_value THEN
		parts := NULL;
	END;
	IF parts IS NULL OR NOT (parts = ARRAY[stage_name] OR parts = ARRAY[schema_name, stage_name]) THEN
		RAISE EXCEPTION '"%" is not the staging table of sync run %', staging_table, run_id
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('A run''s staging table is %I.%I.', schema_name, stage_name);
	END IF;
	rel := to_regclass(format('%I.%I', schema_name, stage_name));
	IF rel IS NULL THEN
		RAISE EXCEPTION 'sync run % has no staging table', run_id USING ERRCODE = 'undefined_table';
	END IF;
	EXECUTE format('LOCK TABLE %I.%I IN ACCESS EXCLUSIVE MODE', schema_name, stage_name);
	SELECT * INTO c FROM pg_class x WHERE x.oid = rel;
	-- Made by dalgo: owned by the warehouse role, or by a superuser (a run
	-- worker that created it directly); never by another role.
	wh_owned := c.relowner = (SELECT o.oid FROM pg_roles o WHERE o.rolname = dalgo_internal.warehouse_role_name(src.organization_id));
	IF c.relkind <> 'r' OR c.relhassubclass OR c.relispartition
	   OR NOT (wh_owned OR EXISTS (SELECT FROM pg_roles o WHERE o.oid = c.relowner AND o.rolsuper)) THEN
		RAISE EXCEPTION 'the staging table of sync run % is not a plain table of the warehouse role', run_id
			USING ERRCODE = 'wrong_object_type';
	END IF;
	IF NOT wh_owned THEN
		-- A superuser's staging table is copied (never renamed into place),
		-- read by the warehouse role.
		changed := true;
		EXECUTE format('GRANT SELECT ON %I.%I TO %I', schema_name, stage_name, dalgo_internal.warehouse_role_name(src.organization_id));
	END IF;

	-- Types: each text column becomes the first of boolean, bigint, numeric,
	-- date, timestamptz, jsonb that every non-empty value converts to for
	-- certain, else stays text.  postgres sources keep their declared types
	-- unless config.infer_types is true; the others infer unless it is false.
	infer := CASE jsonb_typeof(src.config->'infer_types') WHEN 'boolean' THEN (src.config->>'infer_types')::boolean
				  ELSE src.source_type <> 'postgres' END;
	SELECT array_agg(a.attname::text ORDER BY a.attnum), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
	INTO names, types
	FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped;
	IF names IS NULL THEN
		RAISE EXCEPTION 'the staging table of sync run % has no columns', run_id USING ERRCODE = 'invalid_table_definition';
	END IF;
	IF infer AND 'text' = ANY (types) THEN
		EXECUTE format('SELECT ARRAY[%s] FROM %I.%I',
			(SELECT string_agg(CASE WHEN t = 'text' THEN format('bit_and(dalgo_internal.value_kinds(%I))', nm) ELSE 'NULL::integer' END,
							   ', ' ORDER BY i)
			 FROM unnest(names, types) WITH ORDINALITY u(nm, t, i)),
			schema_name, stage_name) INTO kinds;
		FOR i IN 1..array_length(names, 1) LOOP
			CONTINUE WHEN types[i] <> 'text' OR kinds[i] IS NULL OR kinds[i] = 0;
			types[i] := CASE WHEN kinds[i] & 1 <> 0 THEN 'boolean' WHEN kinds[i] & 2 <> 0 THEN 'bigint'
							 WHEN kinds[i] & 4 <> 0 THEN 'numeric' WHEN kinds[i] & 8 <> 0 THEN 'date'
							 WHEN kinds[i] & 16 <> 0 THEN 'timestamptz' ELSE 'jsonb' END;
			changed := true;
		END LOOP;
	END IF;

	IF to_regclass(format('%I.%I', schema_name, build_name)) IS NOT NULL THEN
		PERFORM dalgo_internal.warehouse_execute(src.organization_id, format('DROP TABLE %I.%I', schema_name, build_name));
	END IF;
	IF changed THEN
		sel := (SELECT string_agg(CASE WHEN t = format_type(a.atttypid, a.atttypmod) THEN format('%I', nm)
									   ELSE format('NULLIF(%I, %L)::%s AS %I', nm, '', t, nm) END, ', ' ORDER BY a.attnum)
				FROM unnest(names, types) u(nm, t) JOIN pg_attribute a ON a.attrelid = rel AND a.attname = u.nm);
		BEGIN
			n := dalgo_internal.warehouse_execute(src.organization_id,
				format('CREATE TABLE %I.%I AS SELECT %s FROM %I.%I', schema_name, build_name, sel, schema_name, stage_name));
		EXCEPTION WHEN data_exception THEN
			-- A value the checks let through after all: that column stays text.
			FOR i IN 1..array_length(names, 1) LOOP
				CONTINUE WHEN types[i] IN ('text', (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
													 WHERE a.attrelid = rel AND a.attname = names[i]));
				BEGIN
					EXECUTE format('SELECT count(NULLIF(%I, %L)::%s) FROM %I.%I', names[i], '', types[i], schema_name, stage_name);
				EXCEPTION WHEN data_exception THEN
					types[i] := 'text';
				END;
			END LOOP;
			sel := (SELECT string_agg(CASE WHEN t = format_type(a.atttypid, a.atttypmod) THEN format('%I', nm)
										   ELSE format('NULLIF(%I, %L)::%s AS %I', nm, '', t, nm) END, ', ' ORDER BY a.attnum)
					FROM unnest(names, types) u(nm, t) JOIN pg_attribute a ON a.attrelid = rel AND a.attname = u.nm);
			n := dalgo_internal.warehouse_execute(src.organization_id,
				format('CREATE TABLE %I.%I AS SELECT %s FROM %I.%I', schema_name, build_name, sel, schema_name, stage_name));
		END;
		IF wh_owned THEN
			PERFORM dalgo_internal.warehouse_execute(src.organization_id, format('DROP TABLE %I.%I', schema_name, stage_name));
		ELSE
			EXECUTE format('DROP TABLE %I.%I', schema_name, stage_name);
		END IF;
	ELSE
		-- Nothing to convert: the staging table itself becomes the build,
		-- without what it granted to its writers.
		EXECUTE format('SELECT count(*) FROM %I.%I', schema_name, stage_name) INTO n;
		FOR trig IN SELECT t.tgname FROM pg_trigger t WHERE t.tgrelid = rel AND NOT t.tgisinternal LOOP
			EXECUTE format('DROP TRIGGER %I ON %I.%I', trig, schema_name, stage_name);
		END LOOP;
		EXECUTE format('REVOKE ALL ON %I.%I FROM PUBLIC, dalgo_service, dalgo_authenticated', schema_name, stage_name);
		PERFORM dalgo_internal.warehouse_execute(src.organization_id,
			format('ALTER TABLE %I.%I RENAME TO %I', schema_name, stage_name, build_name));
	END IF;
	PERFORM dalgo_internal.staging_schema_access(src.organization_id);

	target := coalesce(src.warehouse_table_name, 'source_' || left(replace(src.id::text, '-', ''), 12));
	PERFORM dalgo_internal.adopt_warehouse_tables(src.organization_id);
	PERFORM dalgo_internal.check_warehouse_quota(src.organization_id, target);
	PERFORM dalgo_internal.swap_warehouse_table(src.organization_id, build_name, target);
	PERFORM dalgo_internal.register_warehouse_table(src.organization_id, target, src.id, NULL, n);

	-- source_schemas: columns, types, order and nullability of what was synced.
	DELETE FROM dalgo.source_schemas x WHERE x.source_id = src.id;
	INSERT INTO dalgo.source_schemas (organization_id, source_id, column_name, column_type, column_order, is_nullable)
	SELECT src.organization_id, src.id, a.attname, format_type(a.atttypid, a.atttypmod), a.attnum, NOT a.attnotnull
	FROM pg_attribute a
	WHERE a.attrelid = to_regclass(format('%I.%I', schema_name, target)) AND a.attnum > 0 AND NOT a.attisdropped;

	UPDATE dalgo.sources x SET last_synced_at = now(), warehouse_table_name = target WHERE x.id = src.id;
	UPDATE dalgo.sync_runs x SET status = 'success', completed_at = clock_timestamp(), rows_synced = least(n, 2147483647),
		error_message = NULL
	WHERE x.id = finish_sync.run_id;
END
$$;
COMMENT ON FUNCTION dalgo_internal.finish_sync(uuid, text) IS
	'Internal: finish a sync run from its filled staging table (_dalgo_stage_<run>): infer column types (unless config.infer_types is false), build the typed table under a private name, swap it in atomically, record source_schemas and warehouse_tables, and mark the run successful';

-- ---------------------------------------------------------------------------
-- Staging tables for outside loaders and uploads
-- ---------------------------------------------------------------------------

-- A staging table's guard: only the run's own writer may put rows in it.
-- dalgo_authenticated (every organization's users) holds INSERT on an
-- upload's staging table, so the uploader is checked here, per statement
-- (COPY included); a connector's is written only without an identity, by
-- dalgo_service or a superuser.
CREATE FUNCTION dalgo_internal.guard_staging_table() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	run uuid;
BEGIN
	IF TG_TABLE_NAME ~ '^_dalgo_stage_[0-9a-f]{32}$' THEN
		run := substr(TG_TABLE_NAME, 14)::uuid;
	END IF;
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.id = run AND x.status = 'running'
	  AND dalgo_internal.warehouse_schema_name(x.organization_id) = TG_TABLE_SCHEMA;
	IF NOT FOUND
	   OR NOT dalgo.caller_may(r.organization_id, 'member')
	   OR (CASE WHEN r.details ? 'upload' THEN dalgo.current_user_id() IS DISTINCT FROM (r.details->>'user_id')::uuid
			   ELSE dalgo.current_user_id() IS NOT NULL END) THEN
		RAISE EXCEPTION 'permission denied for staging table %', TG_TABLE_NAME
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'Only the run''s own loader (the uploader, or the connector that claimed it) writes its staging table, while the run is running.';
	END IF;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo_internal.guard_staging_table() IS
	'BEFORE statement trigger on staging tables: only the run''s own writer (the uploading user, or dalgo_service without an identity for a claimed connector run) may insert, while the run is running';

-- A staging table counts in the warehouse's size: a load that takes the
-- warehouse over its warehouse_bytes quota is refused as it arrives, after
-- each statement (COPY included), not only when the sync finishes.
CREATE FUNCTION dalgo_internal.check_staging_size() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
BEGIN
	IF TG_TABLE_SCHEMA ~ '^org_[0-9a-f]{32}$' THEN
		org := substr(TG_TABLE_SCHEMA, 5)::uuid;
		PERFORM dalgo_internal.check_warehouse_quota(org, NULL);
	END IF;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo_internal.check_staging_size() IS
	'AFTER statement trigger on staging tables: refuse a load that takes the warehouse over its warehouse_bytes quota';

-- Create (or create again, empty) a run's staging table: columns of type
-- text (or jsonb), owned by the warehouse role, INSERT for the writer only.
CREATE FUNCTION dalgo_internal.create_staging_table(run_id uuid, columns text[], column_types text[], writer text) RETURNS text
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := (SELECT r.organization_id FROM dalgo.sync_runs r WHERE r.id = run_id);
	schema_name text;
	stage_name text := dalgo_internal.staging_table_name(run_id);
	cols text;
BEGIN
	IF writer NOT IN ('dalgo_service', 'dalgo_authenticated') THEN
		RAISE EXCEPTION 'unknown staging table writer %', writer;
	END IF;
	IF columns IS NULL OR cardinality(columns) = 0 OR cardinality(columns) > 1600 OR array_ndims(columns) <> 1 THEN
		RAISE EXCEPTION 'a staging table needs 1 to 1600 columns' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF column_types IS NOT NULL AND (cardinality(column_types) <> cardinality(columns)
									 OR EXISTS (SELECT FROM unnest(column_types) t WHERE t IS NULL OR t NOT IN ('text', 'jsonb'))) THEN
		RAISE EXCEPTION 'column_types must give text or jsonb for each column' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF EXISTS (SELECT FROM unnest(columns) c WHERE c IS NULL OR c = '' OR octet_length(c) >= 64)
	   OR (SELECT count(DISTINCT c) FROM unnest(columns) c) <> cardinality(columns) THEN
		RAISE EXCEPTION 'column names must be distinct and 1 to 63 bytes long' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	schema_name := dalgo.ensure_warehouse(org);
	SELECT string_agg(format('%I %s', c, coalesce(column_types[i], 'text')), ', ' ORDER BY i) INTO cols
	FROM unnest(columns) WITH ORDINALITY u(c, i);
	IF to_regclass(format('%I.%I', schema_name, stage_name)) IS NOT NULL THEN
		PERFORM dalgo_internal.warehouse_execute(org, format('DROP TABLE %I.%I', schema_name, stage_name));
	END IF;
	PERFORM dalgo_internal.warehouse_execute(org, format('CREATE TABLE %I.%I (%s)', schema_name, stage_name, cols));
	EXECUTE format('CREATE TRIGGER guard_staging BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I.%I '
				   'FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.guard_staging_table()', schema_name, stage_name);
	EXECUTE format('CREATE TRIGGER check_staging_size AFTER INSERT ON %I.%I '
				   'FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.check_staging_size()', schema_name, stage_name);
	EXECUTE format('GRANT INSERT ON %I.%I TO %I', schema_name, stage_name, writer);
	PERFORM dalgo_internal.staging_schema_access(org);
	RETURN format('%I.%I', schema_name, stage_name);
END
$$;
COMMENT ON FUNCTION dalgo_internal.create_staging_table(uuid, text[], text[], text) IS
	'Internal: create a sync run''s staging table (text or jsonb columns, owned by the warehouse role, guarded) and grant INSERT on it to its writer only';

-- The connector protocol's load path: a claimed run's staging table.
CREATE FUNCTION dalgo.stage_sync_run(run_id uuid, columns text[], column_types text[] DEFAULT NULL) RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
BEGIN
	SELECT x.* INTO r FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id AND s.organization_id = x.organization_id
	WHERE x.id = stage_sync_run.run_id AND x.status = 'running' AND NOT x.details ? 'upload'
	  AND dalgo.is_connector_source(s.source_type) AND s.deleted_at IS NULL
	FOR UPDATE OF x;
	IF NOT FOUND OR dalgo.current_user_id() IS NOT NULL OR NOT dalgo.caller_may(r.organization_id, 'admin') THEN
		RAISE EXCEPTION 'sync run % is not a running connector run (claim it first)', run_id
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM dalgo_internal.drop_stale_staging_tables(r.organization_id);
	RETURN dalgo_internal.create_staging_table(r.id, columns, column_types, 'dalgo_service');
END
$$;
COMMENT ON FUNCTION dalgo.stage_sync_run(uuid, text[], text[]) IS
	'Connector protocol: create the staging table of a claimed run with the given columns (text, or column_types text/jsonb), empty; the connector may COPY or INSERT into it, and complete_sync_run types and swaps it in. Returns its qualified name (as details.staging_table of the claimed run)';

-- Uploads: a member with write rights loads a file from a client.
CREATE FUNCTION dalgo.begin_upload(source_id uuid, columns text[]) RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	src dalgo.sources;
	me uuid := dalgo.current_user_id();
	old uuid;
	run uuid;
	schema_name text;
BEGIN
	SELECT * INTO src FROM dalgo.sources s WHERE s.id = begin_upload.source_id AND s.deleted_at IS NULL;
	IF NOT FOUND OR me IS NULL OR NOT dalgo.caller_may(src.organization_id, 'member') THEN
		RAISE EXCEPTION 'source % does not exist or you may not load it', source_id
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'An upload needs a signed-in member (or admin, owner) of the source''s organization.';
	END IF;
	-- One open upload per source: a new one abandons the previous.
	FOR old IN SELECT r.id FROM dalgo.sync_runs r WHERE r.source_id = src.id AND r.status = 'running' AND r.details ? 'upload'
			   FOR UPDATE LOOP
		PERFORM dalgo_internal.drop_staging_table(old);
		UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(),
			error_message = 'the upload was replaced by a newer one'
		WHERE r.id = old;
	END LOOP;
	PERFORM dalgo_internal.drop_stale_staging_tables(src.organization_id);
	-- An upload is a run: the organization's quotas apply.
	PERFORM dalgo_internal.check_run_quota(src.organization_id);
	schema_name := dalgo.ensure_warehouse(src.organization_id);
	run := gen_random_uuid();
	INSERT INTO dalgo.sync_runs (id, organization_id, source_id, status, started_at, details)
	VALUES (run, src.organization_id, src.id, 'running', clock_timestamp(),
			jsonb_build_object('upload', true, 'user_id', me,
							   'staging_table', format('%I.%I', schema_name, dalgo_internal.staging_table_name(run))));
	RETURN dalgo_internal.create_staging_table(run, columns, NULL, 'dalgo_authenticated');
END
$$;
COMMENT ON FUNCTION dalgo.begin_upload(uuid, text[]) IS
	'Upload: start loading a file into a source from a client (signed-in members with write rights); creates an empty staging table with the given text columns and returns its qualified name, for COPY ... FROM STDIN (FORMAT csv, HEADER) by the same user, in this or a later transaction; dalgo.finish_upload() completes it';

CREATE FUNCTION dalgo.finish_upload(source_id uuid) RETURNS dalgo.sync_runs
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	msg text;
BEGIN
	SELECT x.* INTO r FROM dalgo.sync_runs x
	WHERE x.source_id = finish_upload.source_id AND x.status = 'running' AND x.details ? 'upload'
	  AND (x.details->>'user_id')::uuid = dalgo.current_user_id()
	  AND dalgo.caller_may(x.organization_id, 'member')
	FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'you have no upload in progress for source %', source_id
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Start one with dalgo.begin_upload().';
	END IF;
	BEGIN
		PERFORM dalgo_internal.finish_sync(r.id, dalgo_internal.staging_table_name(r.id));
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
		IF msg LIKE 'a sync is finished in a READ COMMITTED transaction' THEN
			RAISE;
		END IF;
		PERFORM dalgo_internal.drop_staging_table(r.id);
		UPDATE dalgo.sync_runs x SET status = 'failed', completed_at = clock_timestamp(), error_message = msg
		WHERE x.id = r.id;
	END;
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.id = r.id;
	RETURN r;
END
$$;
COMMENT ON FUNCTION dalgo.finish_upload(uuid) IS
	'Upload: type, swap in and register the caller''s upload into the source like any sync (its sync_runs row records the outcome); on failure the previous table stays and the staging table is dropped';

-- ---------------------------------------------------------------------------
-- Tables from anywhere
-- ---------------------------------------------------------------------------

-- A table, foreign table or materialized view that arrives in an
-- organization's warehouse schema by any path (a superuser's CREATE TABLE,
-- another role's CREATE TABLE AS, pg_restore, CREATE FOREIGN TABLE, IMPORT
-- FOREIGN SCHEMA, ALTER ... SET SCHEMA) becomes readable by that
-- organization's warehouse role (SELECT: reading runs none of the table's
-- triggers or defaults; ownership stays) and is registered in
-- warehouse_tables without a producer, so no sync or transformation
-- replaces it.  Nothing is granted to any other role, and nothing for a
-- relation that another organization's warehouse role owns.
CREATE FUNCTION dalgo_internal.adopt_warehouse_relation(relation oid) RETURNS boolean
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c record;
	org uuid;
	wh oid;
BEGIN
	SELECT x.oid, x.relname, x.relkind, x.relowner, n.nspname, n.nspowner INTO c
	FROM pg_class x JOIN pg_namespace n ON n.oid = x.relnamespace
	WHERE x.oid = relation AND n.nspname ~ '^org_[0-9a-f]{32}$' AND x.relkind IN ('r', 'p', 'f', 'm')
	  AND x.relname !~ '^_dalgo_' AND NOT x.relispartition;
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	org := substr(c.nspname, 5)::uuid;
	wh := (SELECT o.oid FROM pg_roles o WHERE o.rolname = dalgo_internal.warehouse_role_name(org));
	-- Only a warehouse that dalgo made, of a live organization.
	IF wh IS NULL OR c.nspowner <> wh
	   OR NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL)
	   OR NOT EXISTS (SELECT FROM dalgo.warehouse_connections w WHERE w.organization_id = org AND w.deleted_at IS NULL) THEN
		RETURN false;
	END IF;
	IF c.relowner <> wh THEN
		IF EXISTS (SELECT FROM pg_roles o WHERE o.oid = c.relowner AND o.rolname ~ '^dalgo_wh_') THEN
			RAISE WARNING 'table %.% belongs to another organization''s warehouse role; it is not registered', c.nspname, c.relname;
			RETURN false;
		END IF;
		IF NOT has_table_privilege(wh, c.oid, 'SELECT') THEN
			EXECUTE format('GRANT SELECT ON %I.%I TO %I', c.nspname, c.relname, dalgo_internal.warehouse_role_name(org));
		END IF;
	END IF;
	IF NOT EXISTS (SELECT FROM dalgo.warehouse_tables w WHERE w.organization_id = org AND w.table_name = c.relname
				   AND w.deleted_at IS NULL) THEN
		PERFORM dalgo_internal.register_warehouse_table(org, c.relname, NULL, NULL, NULL);
	END IF;
	RETURN true;
END
$$;
COMMENT ON FUNCTION dalgo_internal.adopt_warehouse_relation(oid) IS
	'Internal: make a relation of an organization''s warehouse schema readable by its warehouse role (SELECT only, unless that role owns it) and register it in warehouse_tables; never for a relation another organization''s warehouse role owns';

CREATE FUNCTION dalgo_internal.adopt_warehouse_relations() RETURNS event_trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cmd record;
	msg text;
BEGIN
	IF dalgo.restoring() THEN
		RETURN;		-- restored with its grants and its warehouse_tables row
	END IF;
	FOR cmd IN SELECT DISTINCT e.objid, e.command_tag FROM pg_event_trigger_ddl_commands() e
			   WHERE e.classid = 'pg_class'::regclass AND e.objsubid = 0 LOOP
		-- dalgo's own renames run as the warehouse role, on its own tables.
		CONTINUE WHEN cmd.command_tag LIKE 'ALTER %' AND EXISTS (
			SELECT FROM pg_class x JOIN pg_namespace n ON n.oid = x.relnamespace
			WHERE x.oid = cmd.objid AND x.relowner = n.nspowner);
		BEGIN
			PERFORM dalgo_internal.adopt_warehouse_relation(cmd.objid);
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
			RAISE WARNING 'table % could not be made available to its organization: %', cmd.objid::regclass, msg;
		END;
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo_internal.adopt_warehouse_relations() IS
	'Event trigger function: a table, foreign table or materialized view created in (or moved into) an organization''s warehouse schema by any role becomes readable by that organization''s warehouse role (SELECT) and is registered in warehouse_tables';
CREATE EVENT TRIGGER dalgo_adopt_warehouse_relations ON ddl_command_end
	WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'CREATE FOREIGN TABLE', 'CREATE MATERIALIZED VIEW',
				 'IMPORT FOREIGN SCHEMA', 'ALTER TABLE', 'ALTER FOREIGN TABLE')
	EXECUTE FUNCTION dalgo_internal.adopt_warehouse_relations();
COMMENT ON EVENT TRIGGER dalgo_adopt_warehouse_relations IS
	'dalgo: tables that arrive in a warehouse schema by any path are readable by the organization''s warehouse role and registered';

-- What the event trigger did not see (a pg_restore session in restore
-- mode, session_replication_role = replica, tables from before 0.2.0): the
-- organization's syncs and transformation builds adopt it first.
CREATE FUNCTION dalgo_internal.adopt_warehouse_tables(organization_id uuid) RETURNS integer
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	wh oid := (SELECT o.oid FROM pg_roles o WHERE o.rolname = dalgo_internal.warehouse_role_name(organization_id));
	rel oid;
	n integer := 0;
BEGIN
	FOR rel IN SELECT c.oid FROM pg_class c
			   WHERE c.relnamespace = to_regnamespace(schema_name) AND c.relkind IN ('r', 'p', 'f', 'm')
				 AND c.relname !~ '^_dalgo_' AND NOT c.relispartition
				 AND NOT EXISTS (SELECT FROM pg_roles o WHERE o.oid = c.relowner AND o.rolname ~ '^dalgo_wh_' AND o.oid <> wh)
				 AND (NOT EXISTS (SELECT FROM dalgo.warehouse_tables w WHERE w.organization_id = adopt_warehouse_tables.organization_id
								  AND w.table_name = c.relname AND w.deleted_at IS NULL)
					  OR NOT has_table_privilege(wh, c.oid, 'SELECT'))
			   ORDER BY c.relname
	LOOP
		IF dalgo_internal.adopt_warehouse_relation(rel) THEN
			n := n + 1;
		END IF;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.adopt_warehouse_tables(uuid) IS
	'Internal: adopt (see adopt_warehouse_relation) every relation of the organization''s warehouse schema that is not registered or not readable by its warehouse role (but those of another organization''s warehouse role); finish_sync and transformation builds call it';

-- A registered table without a producer that is dropped (by whoever made
-- it) is no longer listed.  dalgo's swaps drop only tables that a producer
-- made, and register them again themselves.
CREATE FUNCTION dalgo_internal.forget_warehouse_relations() RETURNS event_trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF dalgo.restoring() THEN
		RETURN;
	END IF;
	UPDATE dalgo.warehouse_tables w SET deleted_at = now()
	FROM pg_event_trigger_dropped_objects() d
	WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND d.original
	  AND d.object_type IN ('table', 'foreign table', 'materialized view')
	  AND d.schema_name ~ '^org_[0-9a-f]{32}$'
	  AND w.organization_id = substr(d.schema_name, 5)::uuid AND w.table_name = d.object_name AND w.deleted_at IS NULL
	  AND num_nonnulls(w.source_id, w.transformation_id, w.output_id) = 0
	  AND to_regclass(format('%I.%I', d.schema_name, d.object_name)) IS NULL;
END
$$;
COMMENT ON FUNCTION dalgo_internal.forget_warehouse_relations() IS
	'Event trigger function: a warehouse table registered without a producer (see adopt_warehouse_relations) that is dropped is marked deleted in warehouse_tables';
CREATE EVENT TRIGGER dalgo_forget_warehouse_relations ON sql_drop
	WHEN TAG IN ('DROP TABLE', 'DROP FOREIGN TABLE', 'DROP MATERIALIZED VIEW', 'DROP SCHEMA', 'DROP OWNED')
	EXECUTE FUNCTION dalgo_internal.forget_warehouse_relations();
COMMENT ON EVENT TRIGGER dalgo_forget_warehouse_relations IS
	'dalgo: a dropped warehouse table that nobody in dalgo produced leaves warehouse_tables';

REVOKE ALL ON FUNCTION dalgo_internal.value_kinds(text), dalgo_internal.staging_table_name(uuid),
	dalgo_internal.staging_schema_access(uuid), dalgo_internal.drop_staging_table(uuid), dalgo_internal.drop_stale_staging_tables(uuid),
	dalgo_internal.finish_sync(uuid, text), dalgo_internal.guard_staging_table(), dalgo_internal.check_staging_size(),
	dalgo_internal.create_staging_table(uuid, text[], text[], text), dalgo.stage_sync_run(uuid, text[], text[]),
	dalgo.begin_upload(uuid, text[]), dalgo.finish_upload(uuid), dalgo_internal.adopt_warehouse_relations(),
	dalgo_internal.adopt_warehouse_relation(oid), dalgo_internal.adopt_warehouse_tables(uuid),
	dalgo_internal.forget_warehouse_relations()
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.stage_sync_run(uuid, text[], text[]) TO dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.begin_upload(uuid, text[]), dalgo.finish_upload(uuid) TO dalgo_authenticated;

CREATE OR REPLACE FUNCTION dalgo_internal.sync_source(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	src dalgo.sources;
	schema_name text;
	stage_name text := dalgo_internal.staging_table_name(run_id);
	relation text;
	path text;
	header text;
	cols text;
BEGIN
	PERFORM dalgo_internal.verify_scheduled_run('sync', run_id);
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.id = run_id;
	SELECT * INTO src FROM dalgo.sources x WHERE x.id = r.source_id AND x.deleted_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'the source of run % no longer exists', run_id;
	END IF;
	schema_name := dalgo.ensure_warehouse(src.organization_id);
	-- Fill the run's staging table; finish_sync types it and swaps it in.
	IF src.source_type = 'postgres' THEN
		-- Read as the warehouse role: it sees only what it was granted.
		relation := dalgo_internal.source_relation(src.config);
		PERFORM dalgo_internal.warehouse_execute(src.organization_id,
			format('CREATE TABLE %I.%I AS SELECT * FROM %s', schema_name, stage_name, relation));
	ELSIF src.source_type = 'csv' THEN
		path := dalgo_internal.csv_path(src.organization_id, src.config->>'path');
		header := split_part(pg_read_file(path, 0, 65536), E'\n', 1);
		SELECT string_agg(format('%I text', trim(both '"' FROM trim(c))), ', ') INTO cols
		FROM unnest(string_to_array(rtrim(header, E'\r'), ',')) c;
		IF cols IS NULL THEN
			RAISE EXCEPTION 'csv file % has no header line', src.config->>'path' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		PERFORM dalgo_internal.warehouse_execute(src.organization_id, format('CREATE TABLE %I.%I (%s)', schema_name, stage_name, cols));
		EXECUTE format('COPY %I.%I FROM %L WITH (FORMAT csv, HEADER true)', schema_name, stage_name, path);
	ELSE
		RAISE EXCEPTION '% sources are synced by a connector', src.source_type;
	END IF;
	PERFORM dalgo_internal.finish_sync(run_id, stage_name);

	-- A postgres source's nullability is the source relation's.
	IF relation IS NOT NULL THEN
		UPDATE dalgo.source_schemas x SET is_nullable = NOT a.attnotnull
		FROM pg_attribute a
		WHERE x.source_id = src.id AND a.attrelid = relation::regclass
		  AND a.attname = x.column_name;
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.sync_source(uuid) IS 'Internal: an in-database sync of a postgres or csv source: fills the run''s staging table, then finish_sync types it and swaps it in';

CREATE OR REPLACE FUNCTION dalgo.claim_sync_run() RETURNS dalgo.sync_runs
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	org uuid;
	msg text;
BEGIN
	FOR org IN
		SELECT x.organization_id FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status IN ('pending', 'running') AND dalgo.is_connector_source(s.source_type) AND x.deleted_at IS NULL
		GROUP BY x.organization_id
		HAVING bool_or(x.status = 'pending')
		ORDER BY count(*) FILTER (WHERE x.status = 'running'), min(x.created_at) FILTER (WHERE x.status = 'pending'),
				 x.organization_id
	LOOP
		SELECT x.* INTO r FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status = 'pending' AND x.organization_id = org AND dalgo.is_connector_source(s.source_type)
		  AND x.deleted_at IS NULL AND dalgo_internal.target_is_live(x.organization_id, x.source_id, NULL)
		ORDER BY x.created_at LIMIT 1 FOR UPDATE OF x SKIP LOCKED;
		IF FOUND THEN
			-- A connector run is a run: the organization's quotas apply, as
			-- to in-database runs (a refused run fails with the quota's message).
			BEGIN
				PERFORM dalgo_internal.check_run_quota(org);
			EXCEPTION WHEN configuration_limit_exceeded THEN
				GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
				UPDATE dalgo.sync_runs x SET status = 'failed', completed_at = clock_timestamp(), error_message = msg
				WHERE x.id = r.id;
				CONTINUE;
			END;
			UPDATE dalgo.sync_runs x SET status = 'running', started_at = clock_timestamp() WHERE x.id = r.id RETURNING * INTO r;
			-- The load path: the staging table that dalgo.stage_sync_run() creates.
			r.details := r.details || jsonb_build_object('staging_table',
				format('%I.%I', dalgo_internal.warehouse_schema_name(r.organization_id), dalgo_internal.staging_table_name(r.id)));
			RETURN r;
		END IF;
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo.claim_sync_run() IS
	'Connector protocol: claim a pending connector sync run (SKIP LOCKED; the organization with the fewest running, then the oldest) and mark it running; the returned row''s details.staging_table names its staging table (see stage_sync_run); a run over its organization''s quota fails instead; NULL when there is none';

CREATE OR REPLACE FUNCTION dalgo.complete_sync_run(run_id uuid, rows_synced integer, error_message text DEFAULT NULL,
										details jsonb DEFAULT '{}')
	RETURNS dalgo.sync_runs
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	staged boolean;
	msg text := complete_sync_run.error_message;
BEGIN
	IF jsonb_typeof(coalesce(complete_sync_run.details, '{}')) <> 'object' THEN
		RAISE EXCEPTION 'details must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.id = complete_sync_run.run_id AND x.status = 'running'
	  AND NOT x.details ? 'upload'
	FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'sync run % is not running (claim it first)', run_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- A run loaded through its staging table: type it and swap it in; any
	-- failure leaves the previous table, fails the run and drops the staging table.
	staged := to_regclass(format('%I.%I', dalgo_internal.warehouse_schema_name(r.organization_id),
								 dalgo_internal.staging_table_name(r.id))) IS NOT NULL;
	IF staged AND msg IS NULL THEN
		BEGIN
			PERFORM dalgo_internal.finish_sync(r.id, dalgo_internal.staging_table_name(r.id));
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
			IF msg = 'a sync is finished in a READ COMMITTED transaction' THEN
				RAISE;
			END IF;
		END;
	END IF;
	IF staged AND msg IS NOT NULL THEN
		PERFORM dalgo_internal.drop_staging_table(r.id);
	END IF;
	-- The keys dalgo's own code reads (the schedule, skips that quotas do not
	-- count, the runner, the load path) are dalgo's: a connector does not set them.
	UPDATE dalgo.sync_runs x SET status = CASE WHEN msg IS NULL THEN 'success' ELSE 'failed' END::dalgo.run_status,
		completed_at = clock_timestamp(),
		rows_synced = CASE WHEN staged AND msg IS NULL THEN x.rows_synced ELSE complete_sync_run.rows_synced END,
		error_message = msg,
		details = x.details || (coalesce(complete_sync_run.details, '{}')
								- ARRAY['schedule_id', 'skipped', 'runner_pid', 'attempt', 'lag_ms', 'on_demand', 'output_id', 'cancelled',
										  'staging_table', 'upload', 'user_id'])
	WHERE x.id = r.id
	RETURNING * INTO r;
	IF r.status = 'success' THEN
		UPDATE dalgo.sources s SET last_synced_at = now() WHERE s.id = r.source_id;
	END IF;
	RETURN r;
END
$$;
COMMENT ON FUNCTION dalgo.complete_sync_run(uuid, integer, text, jsonb) IS
	'Connector protocol: finish a claimed run with its row count, or with an error message (then it fails); a run loaded into its staging table (stage_sync_run) is typed and swapped in (finish_sync), or on failure its staging table is dropped and the previous table stays; details (an object) is merged in, except dalgo''s own keys schedule_id, skipped, runner_pid, attempt, lag_ms, on_demand, output_id, cancelled, staging_table, upload and user_id';

CREATE OR REPLACE FUNCTION dalgo_internal.build_transformation(transformation_id uuid, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t dalgo.transformations;
	sql text;
	schema_name text;
	build_name text := '_dalgo_build_' || replace(run_id::text, '-', '');
	n bigint;
	err text;
BEGIN
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = build_transformation.transformation_id;
	UPDATE dalgo.transformation_runs r SET version_number = t.current_version WHERE r.id = run_id;
	BEGIN
		IF t.output_table_name IS NULL THEN
			RAISE EXCEPTION 'transformation % has no output_table_name', t.id USING ERRCODE = 'invalid_parameter_value';
		END IF;
		schema_name := dalgo.ensure_warehouse(t.organization_id);
		-- Tables that reached the warehouse where the event trigger did not see them.
		PERFORM dalgo_internal.adopt_warehouse_tables(t.organization_id);
		sql := dalgo.compile_recipe(t.organization_id, t.recipe);
		-- Build under a private name, then swap: readers never see a half-built table,
		-- and a failure leaves the previous output as it was.
		n := dalgo_internal.warehouse_execute(t.organization_id, format('CREATE TABLE %I.%I AS %s', schema_name, build_name, sql));
		PERFORM dalgo_internal.check_warehouse_quota(t.organization_id, t.output_table_name);
		PERFORM dalgo_internal.swap_warehouse_table(t.organization_id, build_name, t.output_table_name);
		PERFORM dalgo_internal.register_warehouse_table(t.organization_id, t.output_table_name, NULL, t.id, n);
		UPDATE dalgo.transformations x SET last_run_at = now() WHERE x.id = t.id;
		UPDATE dalgo.transformation_runs r SET status = 'success', completed_at = clock_timestamp(),
			rows_affected = least(n, 2147483647), executed_sql = sql
		WHERE r.id = run_id;
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS err = MESSAGE_TEXT;
		UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(),
			error_message = err, executed_sql = sql
		WHERE r.id = run_id;
		RAISE WARNING 'transformation run % failed: %', run_id, err;
	END;
END
$$;
COMMENT ON FUNCTION dalgo_internal.build_transformation(uuid, uuid) IS
	'Internal: build a transformation''s output for an existing run row (atomic swap) and record the outcome on it';


-- citus2: the scheduler, syncs and output refreshes on a Citus coordinator
-- (row locks by single-shard queries, timestamps computed before UPDATEs,
-- joins on organization_id, shard-aware triggers); the single-node
-- statements are unchanged.
CREATE OR REPLACE FUNCTION dalgo_internal.citus_distributed(rel regclass) RETURNS boolean
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r boolean;
BEGIN
	IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
		RETURN false;
	END IF;
	EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1)' INTO r USING rel;
	RETURN r;
END
$$;
COMMENT ON FUNCTION dalgo_internal.citus_distributed(regclass) IS
	'Internal: true when the table is distributed by Citus (dalgo.distribute()); false without Citus';

REVOKE ALL ON FUNCTION dalgo_internal.citus_distributed(regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION dalgo_internal.claim_due_schedules(at timestamptz, max_runs integer, only_schedule uuid DEFAULT NULL)
	RETURNS TABLE (schedule_id uuid, run_kind dalgo.run_kind, run_id uuid, outcome text)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s dalgo.schedules;
	src dalgo.sources;
	out dalgo.outputs;
	busy boolean;
	det jsonb;
	rid uuid;
	cur refcursor;
	citus boolean := dalgo_internal.citus_distributed('dalgo.schedules');
	cand_org uuid;
	cand_id uuid;
	claimed integer := 0;
BEGIN
	IF max_runs <= 0 THEN
		RETURN;
	END IF;
	-- Fair between organizations: each organization's oldest due schedule
	-- first, then each one's second, and so on, so that one organization's
	-- backlog never holds another's due schedule back to a later tick.  The
	-- due test is repeated on x: a row another claimer committed in between is
	-- re-checked after its lock.
	-- The limit applies after SKIP LOCKED: a schedule row another
	-- transaction holds (run_schedule_now's run, an open UPDATE) is passed
	-- over and does not use up a place, so locked rows cannot crowd every
	-- other organization's due schedule out of the claim.
	-- On a Citus cluster (schedules distributed) a row lock may only be
	-- taken by a single-shard query: the candidates are read in the same
	-- order without locks, and each is then locked on its own shard, with
	-- SKIP LOCKED, re-checked, and counted against the limit once locked.
	IF citus THEN
		OPEN cur FOR SELECT d.organization_id, d.id FROM
			(SELECT y.organization_id, y.id, y.next_run_at,
					row_number() OVER (PARTITION BY y.organization_id ORDER BY y.next_run_at, y.id) AS turn
			 FROM dalgo.schedules y
			 WHERE y.is_active AND y.deleted_at IS NULL AND y.next_run_at <= at
			   AND (only_schedule IS NULL OR y.id = only_schedule)) d
			ORDER BY d.turn, d.next_run_at, d.id;
	ELSE
		OPEN cur FOR SELECT x.* FROM dalgo.schedules x
			 JOIN (SELECT y.id,
						  row_number() OVER (PARTITION BY y.organization_id ORDER BY y.next_run_at, y.id) AS turn
				   FROM dalgo.schedules y
				   WHERE y.is_active AND y.deleted_at IS NULL AND y.next_run_at <= at
					 AND (only_schedule IS NULL OR y.id = only_schedule)) d ON d.id = x.id
			 WHERE x.is_active AND x.deleted_at IS NULL AND x.next_run_at <= at
			   AND (only_schedule IS NULL OR x.id = only_schedule)
			 ORDER BY d.turn, x.next_run_at, x.id
			 LIMIT max_runs
			 FOR UPDATE OF x SKIP LOCKED;
	END IF;
	LOOP
		IF citus THEN
			EXIT WHEN claimed >= max_runs;
			FETCH cur INTO cand_org, cand_id;
			EXIT WHEN NOT FOUND;
			SELECT x.* INTO s FROM dalgo.schedules x
			WHERE x.organization_id = cand_org AND x.id = cand_id
			  AND x.is_active AND x.deleted_at IS NULL AND x.next_run_at <= at
			FOR UPDATE SKIP LOCKED;
			CONTINUE WHEN NOT FOUND;
			claimed := claimed + 1;
		ELSE
			FETCH cur INTO s;
			EXIT WHEN NOT FOUND;
		END IF;
		det := jsonb_build_object('schedule_id', s.id, 'attempt', 1,
								  'lag_ms', round(extract(epoch FROM clock_timestamp() - s.next_run_at) * 1000));
		UPDATE dalgo.schedules x SET last_run_at = at,
			next_run_at = dalgo.next_run(s.frequency, s.run_at_time, s.run_at_day, s.timezone, greatest(at, s.next_run_at))
		WHERE x.organization_id = s.organization_id AND x.id = s.id;
		schedule_id := s.id;
		IF s.source_id IS NOT NULL THEN
			run_kind := 'sync';
			SELECT * INTO src FROM dalgo.sources x WHERE x.organization_id = s.organization_id AND x.id = s.source_id;
			-- sync_now holds the source row FOR UPDATE while it queues or runs
			-- a sync: that run is going, even if not yet committed.
			PERFORM FROM dalgo.sources x WHERE x.organization_id = s.organization_id AND x.id = s.source_id
				FOR KEY SHARE SKIP LOCKED;
			busy := NOT FOUND OR EXISTS (SELECT FROM dalgo.sync_runs r WHERE r.organization_id = s.organization_id
										 AND r.source_id = s.source_id
										 AND r.status IN ('pending', 'running') AND r.deleted_at IS NULL);
			IF busy THEN
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, started_at, completed_at, error_message, details)
				VALUES (s.organization_id, s.source_id, 'failed', clock_timestamp(), clock_timestamp(),
						'skipped: the previous run of this schedule is still going', det || '{"skipped": true}')
				RETURNING id INTO rid;
				outcome := 'skipped';
			ELSE
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, details)
				VALUES (s.organization_id, s.source_id, 'pending', det) RETURNING id INTO rid;
				IF dalgo.is_connector_source(src.source_type) THEN
					-- Anyone can LISTEN: the payload is empty, connectors learn
					-- the work from claim_sync_run().
					PERFORM pg_notify('dalgo_sync', '');
					outcome := 'connector';
				ELSE
					outcome := 'queued';
				END IF;
			END IF;
		ELSE
			run_kind := 'output';
			SELECT * INTO out FROM dalgo.outputs x WHERE x.organization_id = s.organization_id AND x.id = s.output_id;
			-- Likewise refresh_output_now and the output row; its on-demand
			-- runs (details.output_id) count as this schedule's.
			PERFORM FROM dalgo.outputs x WHERE x.organization_id = s.organization_id AND x.id = s.output_id
				FOR KEY SHARE SKIP LOCKED;
			busy := NOT FOUND OR EXISTS (SELECT FROM dalgo.transformation_runs r WHERE r.organization_id = s.organization_id
										 AND r.transformation_id = out.transformation_id
										 AND r.status IN ('pending', 'running')
										 AND (r.details->>'schedule_id' = s.id::text OR r.details->>'output_id' = s.output_id::text));
			INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, started_at, completed_at,
												   error_message, details)
			VALUES (s.organization_id, out.transformation_id, CASE WHEN busy THEN 'failed' ELSE 'pending' END::dalgo.run_status,
					CASE WHEN busy THEN clock_timestamp() END, CASE WHEN busy THEN clock_timestamp() END,
					CASE WHEN busy THEN 'skipped: the previous run of this schedule is still going' END,
					det || CASE WHEN busy THEN '{"skipped": true}'::jsonb ELSE '{}'::jsonb END)
			RETURNING id INTO rid;
			outcome := CASE WHEN busy THEN 'skipped' ELSE 'queued' END;
		END IF;
		run_id := rid;
		RETURN NEXT;
	END LOOP;
	CLOSE cur;
END
$$;
COMMENT ON FUNCTION dalgo_internal.claim_due_schedules(timestamptz, integer, uuid) IS
	'Internal: claim up to max_runs due schedules (FOR UPDATE SKIP LOCKED), advance them and create their run rows; outcome is queued (for the run workers), connector or skipped';

CREATE OR REPLACE FUNCTION dalgo_internal.claim_pending_run(OUT run_kind dalgo.run_kind, OUT run_id uuid)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
BEGIN
	-- A run whose target is gone is passed over (what target_is_live()
	-- tells, written as joins on (organization_id, id): on a Citus cluster
	-- these queries run on the shards, where a function that reads other
	-- tables cannot).
	FOR org IN
		WITH queued AS (
			SELECT r.organization_id, r.status, r.created_at
			FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.organization_id = r.organization_id AND s.id = r.source_id
			JOIN dalgo.organizations o ON o.id = r.organization_id
			WHERE r.status IN ('pending', 'running') AND NOT dalgo.is_connector_source(s.source_type)
			  AND r.details ?| ARRAY['schedule_id', 'on_demand']
			  AND (r.status = 'running' OR (o.deleted_at IS NULL AND s.deleted_at IS NULL))
			UNION ALL
			SELECT r.organization_id, r.status, r.created_at FROM dalgo.transformation_runs r
			JOIN dalgo.organizations o ON o.id = r.organization_id
			JOIN dalgo.transformations t ON t.organization_id = r.organization_id AND t.id = r.transformation_id
			WHERE r.status IN ('pending', 'running') AND r.details ?| ARRAY['schedule_id', 'on_demand']
			  AND (r.status = 'running' OR (o.deleted_at IS NULL AND t.deleted_at IS NULL)))
		SELECT q.organization_id FROM queued q
		GROUP BY q.organization_id
		HAVING bool_or(q.status = 'pending')
		ORDER BY count(*) FILTER (WHERE q.status = 'running'), min(q.created_at) FILTER (WHERE q.status = 'pending'),
				 q.organization_id
	LOOP
		CONTINUE WHEN NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL);
		SELECT 'sync', r.id INTO run_kind, run_id FROM dalgo.sync_runs r
			JOIN dalgo.sources s ON s.organization_id = r.organization_id AND s.id = r.source_id
		WHERE r.status = 'pending' AND r.organization_id = org AND NOT dalgo.is_connector_source(s.source_type)
		  AND r.details ?| ARRAY['schedule_id', 'on_demand'] AND s.deleted_at IS NULL
		ORDER BY r.created_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED;
		IF NOT FOUND THEN
			SELECT 'output', r.id INTO run_kind, run_id FROM dalgo.transformation_runs r
				JOIN dalgo.transformations t ON t.organization_id = r.organization_id AND t.id = r.transformation_id
			WHERE r.status = 'pending' AND r.organization_id = org AND r.details ?| ARRAY['schedule_id', 'on_demand']
			  AND t.deleted_at IS NULL
			ORDER BY r.created_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED;
		END IF;
		EXIT WHEN run_id IS NOT NULL;
	END LOOP;
	IF run_id IS NOT NULL THEN
		PERFORM dalgo_internal.start_scheduled_run(run_kind, run_id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.claim_pending_run() IS
	'Internal: a run worker takes a pending in-database run and marks it running: the organization with the fewest running runs first, then the one waiting longest';

CREATE OR REPLACE FUNCTION dalgo_internal.pending_runs() RETURNS integer
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
	AS $$ SELECT (SELECT count(*) FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.organization_id = r.organization_id AND s.id = r.source_id
				  WHERE r.status = 'pending' AND NOT dalgo.is_connector_source(s.source_type) AND r.details ?| ARRAY['schedule_id', 'on_demand'])::integer
			   + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.status = 'pending' AND r.details ?| ARRAY['schedule_id', 'on_demand'])::integer $$;
COMMENT ON FUNCTION dalgo_internal.pending_runs() IS 'Internal: in-database runs waiting for a run worker';

CREATE OR REPLACE FUNCTION dalgo_internal.set_scheduled_run_status(run_kind dalgo.run_kind, run_id uuid, status dalgo.run_status,
														 message text, extra jsonb) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	starting boolean := status = 'running';
	-- Computed once: Citus refuses a volatile function in an UPDATE of a
	-- distributed table.
	stamp timestamptz := clock_timestamp();
BEGIN
	IF run_kind = 'sync' THEN
		UPDATE dalgo.sync_runs r SET status = set_scheduled_run_status.status,
			started_at = CASE WHEN starting THEN stamp ELSE r.started_at END,
			completed_at = CASE WHEN starting THEN r.completed_at ELSE stamp END,
			error_message = CASE WHEN starting THEN r.error_message ELSE message END,
			details = r.details || coalesce(extra, '{}')
		WHERE r.id = run_id;
	ELSE
		UPDATE dalgo.transformation_runs r SET status = set_scheduled_run_status.status,
			started_at = CASE WHEN starting THEN stamp ELSE r.started_at END,
			completed_at = CASE WHEN starting THEN r.completed_at ELSE stamp END,
			error_message = CASE WHEN starting THEN r.error_message ELSE message END,
			details = r.details || coalesce(extra, '{}')
		WHERE r.id = run_id;
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.set_scheduled_run_status(dalgo.run_kind, uuid, dalgo.run_status, text, jsonb) IS
	'Internal: set a scheduled run''s status in its table (sync_runs for sync, transformation_runs for output): running stamps started_at, any other status completed_at and error_message; extra is merged into details';

CREATE OR REPLACE FUNCTION dalgo_internal.recover_interrupted_runs() RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	m integer;
	seen timestamptz;
	live_pids integer[];
	live_starts timestamptz[];
	stamp timestamptz;
BEGIN
	-- A run is alive while the backend that marked it running is: the same
	-- pid, started no later than the run (a reused pid starts later).  Only
	-- runs marked before the list of backends was read are judged by it.
	PERFORM pg_stat_clear_snapshot();
	seen := clock_timestamp();
	SELECT array_agg(a.pid), array_agg(a.backend_start) INTO live_pids, live_starts
	FROM pg_stat_activity a WHERE a.backend_start IS NOT NULL;
	-- A timestamp computed once, and a join on organization_id: what Citus
	-- accepts in an UPDATE of a distributed table.
	stamp := clock_timestamp();
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stamp,
		error_message = 'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)'
	FROM dalgo.sources s
	WHERE s.organization_id = r.organization_id AND s.id = r.source_id AND NOT dalgo.is_connector_source(s.source_type)
	  AND r.status = 'running'
	  AND r.details ?| ARRAY['schedule_id', 'on_demand'] AND coalesce(r.started_at, '-infinity') < seen
	  AND NOT EXISTS (SELECT FROM unnest(live_pids, live_starts) a(pid, started)
					  WHERE a.pid::text = r.details->>'runner_pid' AND a.started <= r.started_at);
	GET DIAGNOSTICS n = ROW_COUNT;
	UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = stamp,
		error_message = 'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)'
	WHERE r.status = 'running' AND r.details ?| ARRAY['schedule_id', 'on_demand'] AND coalesce(r.started_at, '-infinity') < seen
	  AND NOT EXISTS (SELECT FROM unnest(live_pids, live_starts) a(pid, started)
					  WHERE a.pid::text = r.details->>'runner_pid' AND a.started <= r.started_at);
	GET DIAGNOSTICS m = ROW_COUNT;
	RETURN n + m;
END
$$;
COMMENT ON FUNCTION dalgo_internal.recover_interrupted_runs() IS
	'Mark scheduled runs whose worker is gone (same pid and a backend start no later than the run''s) as failed; the scheduler calls it on every tick (pending runs simply wait for a worker)';

CREATE OR REPLACE FUNCTION dalgo_internal.expire_connector_runs(timeout_seconds integer) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	stamp timestamptz;
BEGIN
	stamp := clock_timestamp();	-- once (Citus: no volatile function in an UPDATE)
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stamp,
		error_message = format('no connector claimed the run within %s seconds', timeout_seconds)
	WHERE r.status = 'pending' AND r.created_at < now() - make_interval(secs => timeout_seconds)
	  AND EXISTS (SELECT FROM dalgo.sources s WHERE s.organization_id = r.organization_id AND s.id = r.source_id
				  AND dalgo.is_connector_source(s.source_type));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.expire_connector_runs(integer) IS 'Mark connector runs nobody claimed in time as failed';

CREATE OR REPLACE FUNCTION dalgo_internal.expire_stalled_connector_runs(timeout_seconds integer) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	stamp timestamptz;
BEGIN
	IF timeout_seconds IS NULL OR timeout_seconds <= 0 THEN
		RETURN 0;
	END IF;
	stamp := clock_timestamp();	-- once (Citus: no volatile function in an UPDATE)
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stamp,
		error_message = format('the connector did not complete the run within %s seconds of claiming it', timeout_seconds)
	WHERE r.status = 'running' AND coalesce(r.started_at, r.created_at) < now() - make_interval(secs => timeout_seconds)
	  AND EXISTS (SELECT FROM dalgo.sources s WHERE s.organization_id = r.organization_id AND s.id = r.source_id
				  AND dalgo.is_connector_source(s.source_type));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.expire_stalled_connector_runs(integer) IS
	'Mark connector runs claimed but not completed within timeout_seconds (dalgo.run_timeout) as failed; 0 disables it';

CREATE OR REPLACE FUNCTION dalgo_internal.record_run_alert() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer := greatest(coalesce(nullif(current_setting('dalgo.alert_after_failures', true), '')::integer, 1), 1);
	sid uuid;
	s dalgo.schedules;
	org dalgo.organizations;
	previous text[];
	before integer;
	target_type text;
	target_name text;
	kind text;
	payload jsonb;
	recipient text;
BEGIN
	IF dalgo.restoring() OR NEW.details ?| ARRAY['skipped', 'cancelled'] THEN
		RETURN NULL;
	END IF;
	-- On a Citus cluster the trigger fires on the run's shard (sync_runs_102040),
	-- on a worker, which may not write the mail queue (a reference table):
	-- no alert there yet (docs/scaling.md).
	IF TG_TABLE_NAME ~ '_[0-9]+$' THEN
		RETURN NULL;
	END IF;
	BEGIN
		sid := (NEW.details->>'schedule_id')::uuid;
	EXCEPTION WHEN invalid_text_representation THEN
		RETURN NULL;
	END;
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = sid AND x.organization_id = NEW.organization_id;
	SELECT * INTO org FROM dalgo.organizations o WHERE o.id = NEW.organization_id AND o.deleted_at IS NULL;
	IF s.id IS NULL OR org.id IS NULL THEN
		RETURN NULL;
	END IF;
	-- The outcomes of the schedule's previous runs, newest first: n of them
	-- tell whether the streak before this run was n - 1 long, or reached n.
	IF TG_TABLE_NAME = 'sync_runs' THEN
		previous := ARRAY(SELECT r.status::text FROM dalgo.sync_runs r
						  WHERE r.source_id = NEW.source_id AND r.organization_id = NEW.organization_id AND r.id <> NEW.id
							AND r.details->>'schedule_id' = sid::text AND NOT r.details ?| ARRAY['skipped', 'cancelled']
							AND r.status IN ('success', 'failed')
						  ORDER BY r.completed_at DESC NULLS LAST, r.created_at DESC LIMIT n);
		target_type := 'source';
		SELECT x.name INTO target_name FROM dalgo.sources x WHERE x.organization_id = s.organization_id AND x.id = s.source_id;
	ELSE
		previous := ARRAY(SELECT r.status::text FROM dalgo.transformation_runs r
						  WHERE r.transformation_id = NEW.transformation_id AND r.organization_id = NEW.organization_id
							AND r.id <> NEW.id AND r.details->>'schedule_id' = sid::text AND NOT r.details ?| ARRAY['skipped', 'cancelled']
							AND r.status IN ('success', 'failed')
						  ORDER BY r.completed_at DESC NULLS LAST, r.created_at DESC LIMIT n);
		target_type := 'output';
		SELECT x.name INTO target_name FROM dalgo.outputs x WHERE x.organization_id = s.organization_id AND x.id = s.output_id;
	END IF;
	before := coalesce(array_position(previous, 'success') - 1, cardinality(previous));
	IF NEW.status = 'failed' AND before = n - 1 THEN
		kind := 'run_failed';
	ELSIF NEW.status = 'success' AND before >= n THEN
		kind := 'run_recovered';
	ELSE
		RETURN NULL;
	END IF;
	payload := jsonb_build_object(
		'organization_id', org.id, 'organization_name', org.name,
		'schedule_id', s.id, 'target_type', target_type, 'target_id', coalesce(s.source_id, s.output_id),
		'target_name', target_name, 'run_id', NEW.id, 'at', NEW.completed_at,
		'failures', CASE WHEN kind = 'run_failed' THEN n END,
		'error', CASE WHEN kind = 'run_failed' THEN dalgo.redact(NEW.error_message) END,
		'subject', CASE WHEN kind = 'run_failed'
						THEN format('[%s] %s "%s" failed%s', org.name, CASE WHEN target_type = 'source' THEN 'sync of' ELSE 'refresh of' END,
									target_name, CASE WHEN n > 1 THEN format(' %s times in a row', n) ELSE '' END)
						ELSE format('[%s] %s "%s" is back to normal', org.name,
									CASE WHEN target_type = 'source' THEN 'sync of' ELSE 'refresh of' END, target_name) END);
	FOR recipient IN
		SELECT DISTINCT u.email FROM dalgo.organization_members m JOIN dalgo.users u ON u.id = m.user_id
		WHERE m.organization_id = org.id AND m.deleted_at IS NULL AND m.role >= 'admin'
		  AND u.deleted_at IS NULL AND u.is_active
		ORDER BY u.email
	LOOP
		PERFORM dalgo_internal.queue_mail(kind, recipient, payload);
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo_internal.record_run_alert() IS
	'AFTER UPDATE trigger on sync_runs and transformation_runs: when a scheduled run fails for the dalgo.alert_after_failures-th time in a row, or succeeds after such a streak, queue one run_failed or run_recovered message (error redacted) to each admin and owner of the organization';

CREATE OR REPLACE FUNCTION dalgo_internal.finish_sync(run_id uuid, staging_table text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	src dalgo.sources;
	schema_name text;
	stage_name text := dalgo_internal.staging_table_name(run_id);
	build_name text := '_dalgo_sync_' || replace(run_id::text, '-', '');
	parts text[];
	rel oid;
	c pg_class;
	infer boolean;
	cols record;
	names text[];
	types text[];
	kinds integer[];
	sel text;
	changed boolean := false;
	wh_owned boolean;
	trig name;
	target text;
	n bigint;
	stamp timestamptz;
	org uuid;
BEGIN
	-- Under a transaction snapshot, rows that a loader committed while this
	-- waited for the staging table's lock would be silently missing.
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'a sync is finished in a READ COMMITTED transaction'
			USING ERRCODE = 'invalid_transaction_state',
				  DETAIL = format('This transaction is %s: rows committed into the staging table after its snapshot would be lost.',
								  upper(current_setting('transaction_isolation')));
	END IF;
	-- The row is locked through its organization: on a Citus cluster a row
	-- lock is taken by a single-shard query only.
	SELECT x.organization_id INTO org FROM dalgo.sync_runs x WHERE x.id = finish_sync.run_id;
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.organization_id = org AND x.id = finish_sync.run_id FOR UPDATE;
	IF NOT FOUND OR r.status <> 'running' THEN
		RAISE EXCEPTION 'sync run % is not running', run_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT * INTO src FROM dalgo.sources x
	WHERE x.id = r.source_id AND x.organization_id = r.organization_id AND x.deleted_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'the source of run % no longer exists', run_id USING ERRCODE = 'undefined_object';
	END IF;
	schema_name := dalgo_internal.warehouse_schema_name(src.organization_id);

	-- The staging table is this run's, in this organization's warehouse,
	-- whatever name the caller passed: a plain table owned by the warehouse role.
	BEGIN
		parts := parse_ident(staging_table);
	EXCEPTION WHEN invalid_parameter_value THEN
		parts := NULL;
	END;
	IF parts IS NULL OR NOT (parts = ARRAY[stage_name] OR parts = ARRAY[schema_name, stage_name]) THEN
		RAISE EXCEPTION '"%" is not the staging table of sync run %', staging_table, run_id
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('A run''s staging table is %I.%I.', schema_name, stage_name);
	END IF;
	rel := to_regclass(format('%I.%I', schema_name, stage_name));
	IF rel IS NULL THEN
		RAISE EXCEPTION 'sync run % has no staging table', run_id USING ERRCODE = 'undefined_table';
	END IF;
	EXECUTE format('LOCK TABLE %I.%I IN ACCESS EXCLUSIVE MODE', schema_name, stage_name);
	SELECT * INTO c FROM pg_class x WHERE x.oid = rel;
	-- Made by dalgo: owned by the warehouse role, or by a superuser (a run
	-- worker that created it directly); never by another role.
	wh_owned := c.relowner = (SELECT o.oid FROM pg_roles o WHERE o.rolname = dalgo_internal.warehouse_role_name(src.organization_id));
	IF c.relkind <> 'r' OR c.relhassubclass OR c.relispartition
	   OR NOT (wh_owned OR EXISTS (SELECT FROM pg_roles o WHERE o.oid = c.relowner AND o.rolsuper)) THEN
		RAISE EXCEPTION 'the staging table of sync run % is not a plain table of the warehouse role', run_id
			USING ERRCODE = 'wrong_object_type';
	END IF;
	IF NOT wh_owned THEN
		-- A superuser's staging table is copied (never renamed into place),
		-- read by the warehouse role.
		changed := true;
		EXECUTE format('GRANT SELECT ON %I.%I TO %I', schema_name, stage_name, dalgo_internal.warehouse_role_name(src.organization_id));
	END IF;

	-- Types: each text column becomes the first of boolean, bigint, numeric,
	-- date, timestamptz, jsonb that every non-empty value converts to for
	-- certain, else stays text.  postgres sources keep their declared types
	-- unless config.infer_types is true; the others infer unless it is false.
	infer := CASE jsonb_typeof(src.config->'infer_types') WHEN 'boolean' THEN (src.config->>'infer_types')::boolean
				  ELSE src.source_type <> 'postgres' END;
	SELECT array_agg(a.attname::text ORDER BY a.attnum), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
	INTO names, types
	FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped;
	IF names IS NULL THEN
		RAISE EXCEPTION 'the staging table of sync run % has no columns', run_id USING ERRCODE = 'invalid_table_definition';
	END IF;
	IF infer AND 'text' = ANY (types) THEN
		EXECUTE format('SELECT ARRAY[%s] FROM %I.%I',
			(SELECT string_agg(CASE WHEN t = 'text' THEN format('bit_and(dalgo_internal.value_kinds(%I))', nm) ELSE 'NULL::integer' END,
							   ', ' ORDER BY i)
			 FROM unnest(names, types) WITH ORDINALITY u(nm, t, i)),
			schema_name, stage_name) INTO kinds;
		FOR i IN 1..array_length(names, 1) LOOP
			CONTINUE WHEN types[i] <> 'text' OR kinds[i] IS NULL OR kinds[i] = 0;
			types[i] := CASE WHEN kinds[i] & 1 <> 0 THEN 'boolean' WHEN kinds[i] & 2 <> 0 THEN 'bigint'
							 WHEN kinds[i] & 4 <> 0 THEN 'numeric' WHEN kinds[i] & 8 <> 0 THEN 'date'
							 WHEN kinds[i] & 16 <> 0 THEN 'timestamptz' ELSE 'jsonb' END;
			changed := true;
		END LOOP;
	END IF;

	IF to_regclass(format('%I.%I', schema_name, build_name)) IS NOT NULL THEN
		PERFORM dalgo_internal.warehouse_execute(src.organization_id, format('DROP TABLE %I.%I', schema_name, build_name));
	END IF;
	IF changed THEN
		sel := (SELECT string_agg(CASE WHEN t = format_type(a.atttypid, a.atttypmod) THEN format('%I', nm)
									   ELSE format('NULLIF(%I, %L)::%s AS %I', nm, '', t, nm) END, ', ' ORDER BY a.attnum)
				FROM unnest(names, types) u(nm, t) JOIN pg_attribute a ON a.attrelid = rel AND a.attname = u.nm);
		BEGIN
			n := dalgo_internal.warehouse_execute(src.organization_id,
				format('CREATE TABLE %I.%I AS SELECT %s FROM %I.%I', schema_name, build_name, sel, schema_name, stage_name));
		EXCEPTION WHEN data_exception THEN
			-- A value the checks let through after all: that column stays text.
			FOR i IN 1..array_length(names, 1) LOOP
				CONTINUE WHEN types[i] IN ('text', (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
													 WHERE a.attrelid = rel AND a.attname = names[i]));
				BEGIN
					EXECUTE format('SELECT count(NULLIF(%I, %L)::%s) FROM %I.%I', names[i], '', types[i], schema_name, stage_name);
				EXCEPTION WHEN data_exception THEN
					types[i] := 'text';
				END;
			END LOOP;
			sel := (SELECT string_agg(CASE WHEN t = format_type(a.atttypid, a.atttypmod) THEN format('%I', nm)
										   ELSE format('NULLIF(%I, %L)::%s AS %I', nm, '', t, nm) END, ', ' ORDER BY a.attnum)
					FROM unnest(names, types) u(nm, t) JOIN pg_attribute a ON a.attrelid = rel AND a.attname = u.nm);
			n := dalgo_internal.warehouse_execute(src.organization_id,
				format('CREATE TABLE %I.%I AS SELECT %s FROM %I.%I', schema_name, build_name, sel, schema_name, stage_name));
		END;
		IF wh_owned THEN
			PERFORM dalgo_internal.warehouse_execute(src.organization_id, format('DROP TABLE %I.%I', schema_name, stage_name));
		ELSE
			EXECUTE format('DROP TABLE %I.%I', schema_name, stage_name);
		END IF;
	ELSE
		-- Nothing to convert: the staging table itself becomes the build,
		-- without what it granted to its writers.
		EXECUTE format('SELECT count(*) FROM %I.%I', schema_name, stage_name) INTO n;
		FOR trig IN SELECT t.tgname FROM pg_trigger t WHERE t.tgrelid = rel AND NOT t.tgisinternal LOOP
			EXECUTE format('DROP TRIGGER %I ON %I.%I', trig, schema_name, stage_name);
		END LOOP;
		EXECUTE format('REVOKE ALL ON %I.%I FROM PUBLIC, dalgo_service, dalgo_authenticated', schema_name, stage_name);
		PERFORM dalgo_internal.warehouse_execute(src.organization_id,
			format('ALTER TABLE %I.%I RENAME TO %I', schema_name, stage_name, build_name));
	END IF;
	PERFORM dalgo_internal.staging_schema_access(src.organization_id);

	target := coalesce(src.warehouse_table_name, 'source_' || left(replace(src.id::text, '-', ''), 12));
	PERFORM dalgo_internal.adopt_warehouse_tables(src.organization_id);
	PERFORM dalgo_internal.check_warehouse_quota(src.organization_id, target);
	PERFORM dalgo_internal.swap_warehouse_table(src.organization_id, build_name, target);
	PERFORM dalgo_internal.register_warehouse_table(src.organization_id, target, src.id, NULL, n);

	-- source_schemas: columns, types, order and nullability of what was synced.
	DELETE FROM dalgo.source_schemas x WHERE x.source_id = src.id;
	INSERT INTO dalgo.source_schemas (organization_id, source_id, column_name, column_type, column_order, is_nullable)
	SELECT src.organization_id, src.id, a.attname, format_type(a.atttypid, a.atttypmod), a.attnum, NOT a.attnotnull
	FROM pg_attribute a
	WHERE a.attrelid = to_regclass(format('%I.%I', schema_name, target)) AND a.attnum > 0 AND NOT a.attisdropped;

	UPDATE dalgo.sources x SET last_synced_at = now(), warehouse_table_name = target
	WHERE x.organization_id = src.organization_id AND x.id = src.id;
	-- completed_at computed once: Citus refuses a volatile function in an UPDATE.
	stamp := clock_timestamp();
	UPDATE dalgo.sync_runs x SET status = 'success', completed_at = stamp, rows_synced = least(n, 2147483647),
		error_message = NULL
	WHERE x.organization_id = src.organization_id AND x.id = finish_sync.run_id;
END
$$;
COMMENT ON FUNCTION dalgo_internal.finish_sync(uuid, text) IS
	'Internal: finish a sync run from its filled staging table (_dalgo_stage_<run>): infer column types (unless config.infer_types is false), build the typed table under a private name, swap it in atomically, record source_schemas and warehouse_tables, and mark the run successful';

CREATE OR REPLACE FUNCTION dalgo_internal.adopt_warehouse_tables(organization_id uuid) RETURNS integer
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	wh oid := (SELECT o.oid FROM pg_roles o WHERE o.rolname = dalgo_internal.warehouse_role_name(organization_id));
	rel oid;
	n integer := 0;
	-- Read first, not joined with pg_class: on a Citus cluster
	-- warehouse_tables is distributed and pg_class local.
	registered name[] := ARRAY(SELECT w.table_name FROM dalgo.warehouse_tables w
							   WHERE w.organization_id = adopt_warehouse_tables.organization_id AND w.deleted_at IS NULL);
BEGIN
	FOR rel IN SELECT c.oid FROM pg_class c
			   WHERE c.relnamespace = to_regnamespace(schema_name) AND c.relkind IN ('r', 'p', 'f', 'm')
				 AND c.relname !~ '^_dalgo_' AND NOT c.relispartition
				 AND NOT EXISTS (SELECT FROM pg_roles o WHERE o.oid = c.relowner AND o.rolname ~ '^dalgo_wh_' AND o.oid <> wh)
				 AND (NOT c.relname = ANY (registered) OR NOT has_table_privilege(wh, c.oid, 'SELECT'))
			   ORDER BY c.relname
	LOOP
		IF dalgo_internal.adopt_warehouse_relation(rel) THEN
			n := n + 1;
		END IF;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.adopt_warehouse_tables(uuid) IS
	'Internal: adopt (see adopt_warehouse_relation) every relation of the organization''s warehouse schema that is not registered or not readable by its warehouse role (but those of another organization''s warehouse role); finish_sync and transformation builds call it';

CREATE OR REPLACE FUNCTION dalgo_internal.forget_warehouse_relations() RETURNS event_trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
	tname text;
BEGIN
	IF dalgo.restoring() THEN
		RETURN;
	END IF;
	-- One UPDATE per dropped relation, with its organization as a value: on
	-- a Citus cluster warehouse_tables is distributed, and an UPDATE of it
	-- may not join a local function's rows.
	FOR org, tname IN
		SELECT substr(d.schema_name, 5)::uuid, d.object_name FROM pg_event_trigger_dropped_objects() d
		WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND d.original
		  AND d.object_type IN ('table', 'foreign table', 'materialized view')
		  AND d.schema_name ~ '^org_[0-9a-f]{32}$'
		  AND to_regclass(format('%I.%I', d.schema_name, d.object_name)) IS NULL
	LOOP
		UPDATE dalgo.warehouse_tables w SET deleted_at = now()
		WHERE w.organization_id = org AND w.table_name = tname AND w.deleted_at IS NULL
		  AND num_nonnulls(w.source_id, w.transformation_id, w.output_id) = 0;
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo_internal.forget_warehouse_relations() IS
	'Event trigger function: a warehouse table registered without a producer (see adopt_warehouse_relations) that is dropped is marked deleted in warehouse_tables';

CREATE OR REPLACE FUNCTION dalgo_internal.register_warehouse_table(organization_id uuid, table_name text, source_id uuid,
											   transformation_id uuid, row_count bigint)
	RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	rel regclass := to_regclass(format('%I.%I', schema_name, table_name));
	conn uuid;
	info jsonb;
	-- Computed here, on this node: on a Citus cluster the UPDATE below runs
	-- on the organization's worker, which neither has the table nor allows a
	-- volatile function in it.
	size bigint := pg_total_relation_size(rel);
BEGIN
	SELECT id INTO conn FROM dalgo.warehouse_connections w
	WHERE w.organization_id = register_warehouse_table.organization_id AND w.deleted_at IS NULL;
	SELECT coalesce(jsonb_agg(jsonb_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
												 'nullable', NOT a.attnotnull) ORDER BY a.attnum), '[]')
	INTO info FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped;
	UPDATE dalgo.warehouse_tables w SET row_count = register_warehouse_table.row_count,
		size_bytes = size, schema_info = info, last_updated_at = now(),
		source_id = register_warehouse_table.source_id, transformation_id = register_warehouse_table.transformation_id
	WHERE w.organization_id = register_warehouse_table.organization_id AND w.warehouse_connection_id = conn
	  AND w.table_name = register_warehouse_table.table_name AND w.deleted_at IS NULL;
	IF NOT FOUND THEN
		INSERT INTO dalgo.warehouse_tables (organization_id, warehouse_connection_id, table_name, source_id,
											transformation_id, row_count, size_bytes, schema_info, last_updated_at)
		VALUES (register_warehouse_table.organization_id, conn, register_warehouse_table.table_name,
				register_warehouse_table.source_id, register_warehouse_table.transformation_id,
				register_warehouse_table.row_count, size, info, now());
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.register_warehouse_table(uuid, text, uuid, uuid, bigint) IS
	'Internal: record a warehouse table''s row count, size and columns in warehouse_tables';

CREATE OR REPLACE FUNCTION dalgo_internal.check_transformation() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	deps uuid[];
BEGIN
	IF TG_OP = 'INSERT' AND dalgo.restoring() THEN RETURN NEW; END IF;	-- restored as dumped
	-- The output table name is checked on every insert and update, whatever changed
	-- (a move to another organization is refused by the tenant_fixed trigger).
	IF NEW.deleted_at IS NULL AND NEW.output_table_name IS NOT NULL
	   AND (TG_OP = 'INSERT' OR NEW.organization_id = OLD.organization_id) THEN
		PERFORM dalgo_internal.check_warehouse_table_name(NEW.organization_id, NEW.output_table_name, NULL, NEW.id, NULL);
	END IF;
	IF TG_OP = 'UPDATE' AND NEW.recipe IS NOT DISTINCT FROM OLD.recipe THEN
		NEW.current_version := OLD.current_version;
		RETURN NEW;
	END IF;
	-- On a Citus cluster this trigger fires on the organization's shard, on a
	-- worker, while the warehouse lives on the coordinator: the recipe is
	-- then checked when it runs (build_transformation compiles it there),
	-- not here (docs/scaling.md).
	IF TG_TABLE_NAME !~ '_[0-9]+$' THEN
		PERFORM dalgo_internal.check_recipe_sql(NEW.organization_id, dalgo.compile_recipe(NEW.organization_id, NEW.recipe));
	END IF;
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
COMMENT ON FUNCTION dalgo_internal.check_transformation() IS
	'BEFORE trigger on transformations: the output table must belong to no other producer (every insert and update); a new or changed recipe must compile and type-check, must not create a cycle, and bumps current_version';

CREATE OR REPLACE FUNCTION dalgo_internal.record_transformation_version() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	generated text;
BEGIN
	IF TG_OP = 'INSERT' AND dalgo.restoring() THEN RETURN NULL; END IF;	-- its versions are restored too
	-- No generated SQL on a Citus shard: a worker has no warehouse.
	IF TG_TABLE_NAME !~ '_[0-9]+$' THEN
		generated := dalgo.compile_recipe(NEW.organization_id, NEW.recipe);
	END IF;
	INSERT INTO dalgo.transformation_versions (organization_id, transformation_id, version_number, recipe,
											   generated_sql, created_by_id, change_description)
	VALUES (NEW.organization_id, NEW.id, NEW.current_version, NEW.recipe, generated, dalgo.current_user_id(),
			nullif(current_setting('dalgo.change_description'), ''));
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo_internal.record_transformation_version() IS
	'AFTER trigger on transformations: records a transformation_versions row for each new recipe (change_description from the setting dalgo.change_description)';

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
	-- with or without an identity (run workers have none).  Every query names
	-- the organization: on a Citus cluster each is then a single-shard query,
	-- recursion included.
	SELECT d INTO bad
	FROM dalgo.transformations t, unnest(dalgo.recipe_dependencies(t.recipe)) d
	WHERE t.organization_id = org AND t.id = transformation_upstream.transformation_id
	  AND NOT EXISTS (SELECT FROM dalgo.transformations x WHERE x.id = d AND x.organization_id = org AND x.deleted_at IS NULL)
	LIMIT 1;
	IF bad IS NULL THEN
		WITH RECURSIVE up(id, depth) AS (
			SELECT d, 1 FROM dalgo.transformations t, unnest(dalgo.recipe_dependencies(t.recipe)) d
			WHERE t.organization_id = org AND t.id = transformation_upstream.transformation_id
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
			WHERE t.organization_id = org AND t.id = transformation_upstream.transformation_id
			UNION ALL
			SELECT d, up.depth + 1 FROM up JOIN dalgo.transformations t ON t.id = up.id AND t.organization_id = org,
				unnest(dalgo.recipe_dependencies(t.recipe)) d
			WHERE up.depth < 100)
		SELECT u.id, max(u.depth) FROM up u GROUP BY u.id ORDER BY max(u.depth) DESC, u.id;
END
$$;
COMMENT ON FUNCTION dalgo.transformation_upstream(uuid) IS
	'The transformations a transformation reads, directly or not, deepest first (the order to run them in); all of its own organization, or an error';

CREATE OR REPLACE FUNCTION dalgo_internal.build_transformation(transformation_id uuid, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t dalgo.transformations;
	sql text;
	schema_name text;
	build_name text := '_dalgo_build_' || replace(run_id::text, '-', '');
	n bigint;
	err text;
	stamp timestamptz;
BEGIN
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = build_transformation.transformation_id;
	UPDATE dalgo.transformation_runs r SET version_number = t.current_version
	WHERE r.organization_id = t.organization_id AND r.id = run_id;
	BEGIN
		IF t.output_table_name IS NULL THEN
			RAISE EXCEPTION 'transformation % has no output_table_name', t.id USING ERRCODE = 'invalid_parameter_value';
		END IF;
		schema_name := dalgo.ensure_warehouse(t.organization_id);
		-- Tables that reached the warehouse where the event trigger did not see them.
		PERFORM dalgo_internal.adopt_warehouse_tables(t.organization_id);
		sql := dalgo.compile_recipe(t.organization_id, t.recipe);
		-- Build under a private name, then swap: readers never see a half-built table,
		-- and a failure leaves the previous output as it was.
		n := dalgo_internal.warehouse_execute(t.organization_id, format('CREATE TABLE %I.%I AS %s', schema_name, build_name, sql));
		PERFORM dalgo_internal.check_warehouse_quota(t.organization_id, t.output_table_name);
		PERFORM dalgo_internal.swap_warehouse_table(t.organization_id, build_name, t.output_table_name);
		PERFORM dalgo_internal.register_warehouse_table(t.organization_id, t.output_table_name, NULL, t.id, n);
		UPDATE dalgo.transformations x SET last_run_at = now() WHERE x.organization_id = t.organization_id AND x.id = t.id;
		-- completed_at computed once: Citus refuses a volatile function in an UPDATE.
		stamp := clock_timestamp();
		UPDATE dalgo.transformation_runs r SET status = 'success', completed_at = stamp,
			rows_affected = least(n, 2147483647), executed_sql = sql
		WHERE r.organization_id = t.organization_id AND r.id = run_id;
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS err = MESSAGE_TEXT;
		stamp := clock_timestamp();
		UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = stamp,
			error_message = err, executed_sql = sql
		WHERE r.id = run_id;
		RAISE WARNING 'transformation run % failed: %', run_id, err;
	END;
END
$$;
COMMENT ON FUNCTION dalgo_internal.build_transformation(uuid, uuid) IS
	'Internal: build a transformation''s output for an existing run row (atomic swap) and record the outcome on it';


-- citus2: account functions on a Citus cluster (sign_in's audit row under the nil
-- uuid, invite_member reads invitations before it cancels their mail)
CREATE OR REPLACE FUNCTION dalgo_internal.account_audit(action text, user_id uuid, organization_id uuid,
									resource_type text, resource_id uuid, details jsonb DEFAULT '{}')
	RETURNS void
	LANGUAGE sql
	SET search_path = pg_catalog, pg_temp
	-- (a string body: no parse-time dependency on audit_logs' columns, which may change shape)
	-- On a Citus cluster audit_logs is distributed by organization_id, which
	-- may not be NULL: a row outside any organization carries the nil uuid,
	-- as the audit trigger's rows do there.
AS $$
	INSERT INTO dalgo.audit_logs (id, organization_id, user_id, action, resource_type, resource_id, details)
		VALUES (dalgo.uuid_v7(),
				coalesce(account_audit.organization_id,
						 CASE WHEN dalgo_internal.citus_distributed('dalgo.audit_logs')
							  THEN '00000000-0000-0000-0000-000000000000'::uuid END),
				account_audit.user_id, account_audit.action,
				account_audit.resource_type, account_audit.resource_id, account_audit.details);
$$;
COMMENT ON FUNCTION dalgo_internal.account_audit(text, uuid, uuid, text, uuid, jsonb) IS
	'Write one audit row for an account flow (never with a password, token or hash in it) (private)';

CREATE OR REPLACE FUNCTION dalgo.invite_member(organization_id uuid, email text, role dalgo.member_role) RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	org uuid := invite_member.organization_id;
	e text := dalgo_internal.check_email(invite_member.email);
	raw text := dalgo_internal.new_token(32);
	org_name text;
	iid uuid;
	earlier uuid[];
BEGIN
	IF me IS NULL OR org IS NULL OR invite_member.role IS NULL OR NOT dalgo.is_org_member(org, 'admin') THEN
		RAISE EXCEPTION 'only admins and owners of the organization can invite'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF invite_member.role = 'owner' AND NOT dalgo.is_org_member(org, 'owner') THEN
		RAISE EXCEPTION 'only an owner can invite an owner' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF EXISTS (SELECT FROM dalgo.organization_members m JOIN dalgo.users u ON u.id = m.user_id
			   WHERE m.organization_id = org AND m.deleted_at IS NULL
				 AND lower(u.email) = lower(e) AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION '% is already a member of this organization', e USING ERRCODE = 'unique_violation';
	END IF;
	SELECT o.name INTO org_name FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL;

	-- Re-inviting a pending email replaces the earlier invitation.  The
	-- invitations are read first, then their mail cancelled: on a Citus
	-- cluster one statement may not read a distributed table (invitations)
	-- and modify a reference table (mail_messages).
	earlier := ARRAY(SELECT i.id FROM dalgo.invitations i
					 WHERE i.organization_id = org AND lower(i.email) = lower(e)
					   AND i.accepted_at IS NULL AND i.revoked_at IS NULL);
	UPDATE dalgo.mail_messages m SET state = 'cancelled', payload = NULL
		WHERE m.kind = 'invitation' AND m.state = 'pending'
		  AND (m.payload->>'invitation_id')::uuid = ANY (earlier);
	UPDATE dalgo.invitations i SET revoked_at = now()
		WHERE i.organization_id = org AND lower(i.email) = lower(e) AND i.accepted_at IS NULL AND i.revoked_at IS NULL;

	INSERT INTO dalgo.invitations AS i (email, organization_id, role, token, expires_at, invited_by_id)
		VALUES (e, org, invite_member.role, dalgo_internal.token_digest(raw),
				now() + dalgo_internal.setting_interval('dalgo.invitation_ttl'), me)
		RETURNING i.id INTO iid;
	PERFORM dalgo_internal.queue_mail('invitation', e,
		jsonb_build_object('token', raw, 'invitation_id', iid, 'organization_id', org,
						   'organization_name', org_name, 'role', invite_member.role,
						   'expires_at', now() + dalgo_internal.setting_interval('dalgo.invitation_ttl')));
	PERFORM dalgo_internal.account_audit('invitation_sent', me, org, 'invitation', iid,
								jsonb_build_object('role', invite_member.role));
	RETURN iid;
END
$$;
COMMENT ON FUNCTION dalgo.invite_member(uuid, text, dalgo.member_role) IS
	'Invite an email to an organization at a role (admins and owners; only owners invite owners); replaces a pending invitation to the same email; the token (dalgo.invitation_ttl) goes to the mail queue and only its hash is stored. Returns the invitation id';


-- http: google_sheets and api sources fetched over HTTP in the run workers
-- (every source type syncs in the database; config.connector marks sources
-- left to an outside loader; run progress; the address check)
CREATE OR REPLACE FUNCTION dalgo.is_connector_source(source_type dalgo.source_type) RETURNS boolean
	LANGUAGE sql IMMUTABLE PARALLEL SAFE
	AS $$ SELECT false $$;
COMMENT ON FUNCTION dalgo.is_connector_source(dalgo.source_type) IS
	'False for every source type since 0.2.0: all four sync in the database; a source whose config has "connector": true is loaded by an outside connector instead';

CREATE OR REPLACE FUNCTION dalgo_internal.synced_by_connector(config jsonb) RETURNS boolean
	LANGUAGE sql IMMUTABLE PARALLEL SAFE
	AS $$ SELECT coalesce(config OPERATOR(pg_catalog.->) 'connector' OPERATOR(pg_catalog.=) 'true'::jsonb, false) $$;
COMMENT ON FUNCTION dalgo_internal.synced_by_connector(jsonb) IS
	'Internal: true for a source whose config has "connector": true: an outside connector loads it through claim_sync_run/complete_sync_run, the run workers leave it alone';

CREATE OR REPLACE FUNCTION dalgo_internal.fetch_http_source(run_id uuid, staging_table text) RETURNS bigint
	LANGUAGE c STRICT
	AS 'MODULE_PATHNAME', 'dalgo_fetch_http_source';
COMMENT ON FUNCTION dalgo_internal.fetch_http_source(uuid, text) IS
	'Internal: fetch the run''s google_sheets or api source over HTTP into the staging table staging_table of its organization''s warehouse; returns the rows written; refused outside a dalgo run worker';

CREATE OR REPLACE FUNCTION dalgo_internal.sync_source(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	src dalgo.sources;
	schema_name text;
	stage_name text := dalgo_internal.staging_table_name(run_id);
	relation text;
	path text;
	header text;
	cols text;
BEGIN
	PERFORM dalgo_internal.verify_scheduled_run('sync', run_id);
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.id = run_id;
	SELECT * INTO src FROM dalgo.sources x WHERE x.id = r.source_id AND x.deleted_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'the source of run % no longer exists', run_id;
	END IF;
	schema_name := dalgo.ensure_warehouse(src.organization_id);
	-- Fill the run's staging table; finish_sync types it and swaps it in.
	IF src.source_type = 'postgres' THEN
		-- Read as the warehouse role: it sees only what it was granted.
		relation := dalgo_internal.source_relation(src.config);
		PERFORM dalgo_internal.warehouse_execute(src.organization_id,
			format('CREATE TABLE %I.%I AS SELECT * FROM %s', schema_name, stage_name, relation));
	ELSIF src.source_type = 'csv' THEN
		path := dalgo_internal.csv_path(src.organization_id, src.config->>'path');
		header := split_part(pg_read_file(path, 0, 65536), E'\n', 1);
		SELECT string_agg(format('%I text', trim(both '"' FROM trim(c))), ', ') INTO cols
		FROM unnest(string_to_array(rtrim(header, E'\r'), ',')) c;
		IF cols IS NULL THEN
			RAISE EXCEPTION 'csv file % has no header line', src.config->>'path' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		PERFORM dalgo_internal.warehouse_execute(src.organization_id, format('CREATE TABLE %I.%I (%s)', schema_name, stage_name, cols));
		EXECUTE format('COPY %I.%I FROM %L WITH (FORMAT csv, HEADER true)', schema_name, stage_name, path);
	ELSIF src.source_type IN ('google_sheets', 'api') THEN
		-- Fetched over HTTP by C code that runs only in a run worker.
		PERFORM dalgo_internal.fetch_http_source(run_id, stage_name);
	ELSE
		RAISE EXCEPTION '% sources are synced by a connector', src.source_type;
	END IF;
	PERFORM dalgo_internal.finish_sync(run_id, stage_name);

	-- A postgres source's nullability is the source relation's.
	IF relation IS NOT NULL THEN
		UPDATE dalgo.source_schemas x SET is_nullable = NOT a.attnotnull
		FROM pg_attribute a
		WHERE x.source_id = src.id AND a.attrelid = relation::regclass
		  AND a.attname = x.column_name;
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.sync_source(uuid) IS 'Internal: an in-database sync of a source: fills the run''s staging table (postgres and csv here, google_sheets and api through fetch_http_source), then finish_sync types it and swaps it in';

CREATE OR REPLACE FUNCTION dalgo.claim_sync_run() RETURNS dalgo.sync_runs
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	org uuid;
	msg text;
BEGIN
	FOR org IN
		SELECT x.organization_id FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status IN ('pending', 'running') AND dalgo_internal.synced_by_connector(s.config) AND x.deleted_at IS NULL
		GROUP BY x.organization_id
		HAVING bool_or(x.status = 'pending')
		ORDER BY count(*) FILTER (WHERE x.status = 'running'), min(x.created_at) FILTER (WHERE x.status = 'pending'),
				 x.organization_id
	LOOP
		SELECT x.* INTO r FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id
		WHERE x.status = 'pending' AND x.organization_id = org AND dalgo_internal.synced_by_connector(s.config)
		  AND x.deleted_at IS NULL AND dalgo_internal.target_is_live(x.organization_id, x.source_id, NULL)
		ORDER BY x.created_at LIMIT 1 FOR UPDATE OF x SKIP LOCKED;
		IF FOUND THEN
			-- A connector run is a run: the organization's quotas apply, as
			-- to in-database runs (a refused run fails with the quota's message).
			BEGIN
				PERFORM dalgo_internal.check_run_quota(org);
			EXCEPTION WHEN configuration_limit_exceeded THEN
				GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
				UPDATE dalgo.sync_runs x SET status = 'failed', completed_at = clock_timestamp(), error_message = msg
				WHERE x.id = r.id;
				CONTINUE;
			END;
			UPDATE dalgo.sync_runs x SET status = 'running', started_at = clock_timestamp() WHERE x.id = r.id RETURNING * INTO r;
			-- The load path: the staging table that dalgo.stage_sync_run() creates.
			r.details := r.details || jsonb_build_object('staging_table',
				format('%I.%I', dalgo_internal.warehouse_schema_name(r.organization_id), dalgo_internal.staging_table_name(r.id)));
			RETURN r;
		END IF;
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo.claim_sync_run() IS
	'Connector protocol: claim a pending connector sync run (SKIP LOCKED; the organization with the fewest running, then the oldest) and mark it running; the returned row''s details.staging_table names its staging table (see stage_sync_run); a run over its organization''s quota fails instead; NULL when there is none';

CREATE OR REPLACE FUNCTION dalgo_internal.claim_due_schedules(at timestamptz, max_runs integer, only_schedule uuid DEFAULT NULL)
	RETURNS TABLE (schedule_id uuid, run_kind dalgo.run_kind, run_id uuid, outcome text)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s dalgo.schedules;
	src dalgo.sources;
	out dalgo.outputs;
	busy boolean;
	det jsonb;
	rid uuid;
BEGIN
	IF max_runs <= 0 THEN
		RETURN;
	END IF;
	-- Fair between organizations: each organization's oldest due schedule
	-- first, then each one's second, and so on, so that one organization's
	-- backlog never holds another's due schedule back to a later tick.  The
	-- due test is repeated on x: a row another claimer committed in between is
	-- re-checked after its lock.
	-- The limit applies after SKIP LOCKED: a schedule row another
	-- transaction holds (run_schedule_now's run, an open UPDATE) is passed
	-- over and does not use up a place, so locked rows cannot crowd every
	-- other organization's due schedule out of the claim.
	FOR s IN SELECT x.* FROM dalgo.schedules x
			 JOIN (SELECT y.id,
						  row_number() OVER (PARTITION BY y.organization_id ORDER BY y.next_run_at, y.id) AS turn
				   FROM dalgo.schedules y
				   WHERE y.is_active AND y.deleted_at IS NULL AND y.next_run_at <= at
					 AND (only_schedule IS NULL OR y.id = only_schedule)) d ON d.id = x.id
			 WHERE x.is_active AND x.deleted_at IS NULL AND x.next_run_at <= at
			   AND (only_schedule IS NULL OR x.id = only_schedule)
			 ORDER BY d.turn, x.next_run_at, x.id
			 LIMIT max_runs
			 FOR UPDATE OF x SKIP LOCKED
	LOOP
		det := jsonb_build_object('schedule_id', s.id, 'attempt', 1,
								  'lag_ms', round(extract(epoch FROM clock_timestamp() - s.next_run_at) * 1000));
		UPDATE dalgo.schedules x SET last_run_at = at,
			next_run_at = dalgo.next_run(s.frequency, s.run_at_time, s.run_at_day, s.timezone, greatest(at, s.next_run_at))
		WHERE x.id = s.id;
		schedule_id := s.id;
		IF s.source_id IS NOT NULL THEN
			run_kind := 'sync';
			SELECT * INTO src FROM dalgo.sources x WHERE x.id = s.source_id;
			-- sync_now holds the source row FOR UPDATE while it queues or runs
			-- a sync: that run is going, even if not yet committed.
			PERFORM FROM dalgo.sources x WHERE x.id = s.source_id FOR KEY SHARE SKIP LOCKED;
			busy := NOT FOUND OR EXISTS (SELECT FROM dalgo.sync_runs r WHERE r.source_id = s.source_id
										 AND r.status IN ('pending', 'running') AND r.deleted_at IS NULL);
			IF busy THEN
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, started_at, completed_at, error_message, details)
				VALUES (s.organization_id, s.source_id, 'failed', clock_timestamp(), clock_timestamp(),
						'skipped: the previous run of this schedule is still going', det || '{"skipped": true}')
				RETURNING id INTO rid;
				outcome := 'skipped';
			ELSE
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, details)
				VALUES (s.organization_id, s.source_id, 'pending', det) RETURNING id INTO rid;
				IF dalgo_internal.synced_by_connector(src.config) THEN
					-- Anyone can LISTEN: the payload is empty, connectors learn
					-- the work from claim_sync_run().
					PERFORM pg_notify('dalgo_sync', '');
					outcome := 'connector';
				ELSE
					outcome := 'queued';
				END IF;
			END IF;
		ELSE
			run_kind := 'output';
			SELECT * INTO out FROM dalgo.outputs x WHERE x.id = s.output_id;
			-- Likewise refresh_output_now and the output row; its on-demand
			-- runs (details.output_id) count as this schedule's.
			PERFORM FROM dalgo.outputs x WHERE x.id = s.output_id FOR KEY SHARE SKIP LOCKED;
			busy := NOT FOUND OR EXISTS (SELECT FROM dalgo.transformation_runs r WHERE r.transformation_id = out.transformation_id
										 AND r.status IN ('pending', 'running')
										 AND (r.details->>'schedule_id' = s.id::text OR r.details->>'output_id' = s.output_id::text));
			INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, started_at, completed_at,
												   error_message, details)
			VALUES (s.organization_id, out.transformation_id, CASE WHEN busy THEN 'failed' ELSE 'pending' END::dalgo.run_status,
					CASE WHEN busy THEN clock_timestamp() END, CASE WHEN busy THEN clock_timestamp() END,
					CASE WHEN busy THEN 'skipped: the previous run of this schedule is still going' END,
					det || CASE WHEN busy THEN '{"skipped": true}'::jsonb ELSE '{}'::jsonb END)
			RETURNING id INTO rid;
			outcome := CASE WHEN busy THEN 'skipped' ELSE 'queued' END;
		END IF;
		run_id := rid;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo_internal.claim_due_schedules(timestamptz, integer, uuid) IS
	'Internal: claim up to max_runs due schedules (FOR UPDATE SKIP LOCKED), advance them and create their run rows; outcome is queued (for the run workers), connector or skipped';

CREATE OR REPLACE FUNCTION dalgo_internal.claim_pending_run(OUT run_kind dalgo.run_kind, OUT run_id uuid)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
BEGIN
	FOR org IN
		WITH queued AS (
			SELECT r.organization_id, r.status, r.created_at
			FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
			WHERE r.status IN ('pending', 'running') AND NOT dalgo_internal.synced_by_connector(s.config)
			  AND r.details ?| ARRAY['schedule_id', 'on_demand']
			  AND (r.status = 'running' OR dalgo_internal.target_is_live(r.organization_id, r.source_id, NULL))
			UNION ALL
			SELECT r.organization_id, r.status, r.created_at FROM dalgo.transformation_runs r
			WHERE r.status IN ('pending', 'running') AND r.details ?| ARRAY['schedule_id', 'on_demand']
			  AND (r.status = 'running' OR dalgo_internal.target_is_live(r.organization_id, NULL, r.transformation_id)))
		SELECT q.organization_id FROM queued q
		GROUP BY q.organization_id
		HAVING bool_or(q.status = 'pending')
		ORDER BY count(*) FILTER (WHERE q.status = 'running'), min(q.created_at) FILTER (WHERE q.status = 'pending'),
				 q.organization_id
	LOOP
		SELECT 'sync', r.id INTO run_kind, run_id FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
		WHERE r.status = 'pending' AND r.organization_id = org AND NOT dalgo_internal.synced_by_connector(s.config)
		  AND r.details ?| ARRAY['schedule_id', 'on_demand'] AND dalgo_internal.target_is_live(r.organization_id, r.source_id, NULL)
		ORDER BY r.created_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED;
		IF NOT FOUND THEN
			SELECT 'output', r.id INTO run_kind, run_id FROM dalgo.transformation_runs r
			WHERE r.status = 'pending' AND r.organization_id = org AND r.details ?| ARRAY['schedule_id', 'on_demand']
			  AND dalgo_internal.target_is_live(r.organization_id, NULL, r.transformation_id)
			ORDER BY r.created_at LIMIT 1 FOR UPDATE SKIP LOCKED;
		END IF;
		EXIT WHEN run_id IS NOT NULL;
	END LOOP;
	IF run_id IS NOT NULL THEN
		PERFORM dalgo_internal.start_scheduled_run(run_kind, run_id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.claim_pending_run() IS
	'Internal: a run worker takes a pending in-database run and marks it running: the organization with the fewest running runs first, then the one waiting longest';

CREATE OR REPLACE FUNCTION dalgo_internal.pending_runs() RETURNS integer
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
	AS $$ SELECT (SELECT count(*) FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
				  WHERE r.status = 'pending' AND NOT dalgo_internal.synced_by_connector(s.config) AND r.details ?| ARRAY['schedule_id', 'on_demand'])::integer
			   + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.status = 'pending' AND r.details ?| ARRAY['schedule_id', 'on_demand'])::integer $$;
COMMENT ON FUNCTION dalgo_internal.pending_runs() IS 'Internal: in-database runs waiting for a run worker';

CREATE OR REPLACE FUNCTION dalgo_internal.recover_interrupted_runs() RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	m integer;
	seen timestamptz;
	live_pids integer[];
	live_starts timestamptz[];
BEGIN
	-- A run is alive while the backend that marked it running is: the same
	-- pid, started no later than the run (a reused pid starts later).  Only
	-- runs marked before the list of backends was read are judged by it.
	PERFORM pg_stat_clear_snapshot();
	seen := clock_timestamp();
	SELECT array_agg(a.pid), array_agg(a.backend_start) INTO live_pids, live_starts
	FROM pg_stat_activity a WHERE a.backend_start IS NOT NULL;
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = 'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)'
	FROM dalgo.sources s
	WHERE s.id = r.source_id AND NOT dalgo_internal.synced_by_connector(s.config) AND r.status = 'running'
	  AND r.details ?| ARRAY['schedule_id', 'on_demand'] AND coalesce(r.started_at, '-infinity') < seen
	  AND NOT EXISTS (SELECT FROM unnest(live_pids, live_starts) a(pid, started)
					  WHERE a.pid::text = r.details->>'runner_pid' AND a.started <= r.started_at);
	GET DIAGNOSTICS n = ROW_COUNT;
	UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = 'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)'
	WHERE r.status = 'running' AND r.details ?| ARRAY['schedule_id', 'on_demand'] AND coalesce(r.started_at, '-infinity') < seen
	  AND NOT EXISTS (SELECT FROM unnest(live_pids, live_starts) a(pid, started)
					  WHERE a.pid::text = r.details->>'runner_pid' AND a.started <= r.started_at);
	GET DIAGNOSTICS m = ROW_COUNT;
	RETURN n + m;
END
$$;
COMMENT ON FUNCTION dalgo_internal.recover_interrupted_runs() IS
	'Mark scheduled runs whose worker is gone (same pid and a backend start no later than the run''s) as failed; the scheduler calls it on every tick (pending runs simply wait for a worker)';

CREATE OR REPLACE FUNCTION dalgo_internal.expire_connector_runs(timeout_seconds integer) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
BEGIN
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = format('no connector claimed the run within %s seconds', timeout_seconds)
	WHERE r.status = 'pending' AND r.created_at < now() - make_interval(secs => timeout_seconds)
	  AND EXISTS (SELECT FROM dalgo.sources s WHERE s.id = r.source_id AND dalgo_internal.synced_by_connector(s.config));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.expire_connector_runs(integer) IS 'Mark connector runs nobody claimed in time as failed';

CREATE OR REPLACE FUNCTION dalgo_internal.expire_stalled_connector_runs(timeout_seconds integer) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
BEGIN
	IF timeout_seconds IS NULL OR timeout_seconds <= 0 THEN
		RETURN 0;
	END IF;
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = format('the connector did not complete the run within %s seconds of claiming it', timeout_seconds)
	WHERE r.status = 'running' AND coalesce(r.started_at, r.created_at) < now() - make_interval(secs => timeout_seconds)
	  AND EXISTS (SELECT FROM dalgo.sources s WHERE s.id = r.source_id AND dalgo_internal.synced_by_connector(s.config));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.expire_stalled_connector_runs(integer) IS
	'Mark connector runs claimed but not completed within timeout_seconds (dalgo.run_timeout) as failed; 0 disables it';

CREATE OR REPLACE FUNCTION dalgo_internal.execute_claimed(claimed_runs uuid[], kinds dalgo.run_kind[]) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	msg text;
	n integer := 0;
BEGIN
	FOR i IN 1..coalesce(array_length(claimed_runs, 1), 0) LOOP
		CONTINUE WHEN claimed_runs[i] IS NULL;
		-- HTTP sources are fetched only in the run workers: left pending for them.
		CONTINUE WHEN kinds[i] = 'sync' AND EXISTS (
			SELECT FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id
			WHERE r.id = claimed_runs[i] AND s.source_type IN ('google_sheets', 'api'));
		PERFORM dalgo_internal.start_scheduled_run(kinds[i], claimed_runs[i]);
		BEGIN
			PERFORM dalgo_internal.execute_scheduled_run(kinds[i], claimed_runs[i]);
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
			PERFORM dalgo_internal.fail_scheduled_run(kinds[i], claimed_runs[i], msg);
		END;
		n := n + 1;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.execute_claimed(uuid[], dalgo.run_kind[]) IS 'Internal: execute claimed runs in this session; syncs of google_sheets and api sources stay pending for the run workers';

CREATE OR REPLACE FUNCTION dalgo_internal.run_now(run_kind dalgo.run_kind, target_id uuid, wait boolean) RETURNS uuid
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
	src dalgo.sources;
	o dalgo.outputs;
	tid uuid;
	rid uuid;
	connector boolean := false;
	noun text := CASE WHEN run_kind = 'sync' THEN 'source' ELSE 'output' END;
BEGIN
	IF run_kind = 'sync' THEN
		SELECT * INTO src FROM dalgo.sources x WHERE x.id = target_id AND x.deleted_at IS NULL;
		org := src.organization_id;
		connector := dalgo_internal.synced_by_connector(src.config);
	ELSE
		SELECT * INTO o FROM dalgo.outputs x WHERE x.id = target_id AND x.deleted_at IS NULL;
		org := o.organization_id;
		SELECT x.id INTO tid FROM dalgo.transformations x
		WHERE x.id = o.transformation_id AND x.organization_id = org AND x.deleted_at IS NULL;
	END IF;
	IF org IS NULL OR NOT dalgo.caller_may(org, 'viewer') OR (run_kind = 'output' AND tid IS NULL) THEN
		RAISE EXCEPTION '% % does not exist', noun, target_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT dalgo.caller_may(org, 'member') THEN
		RAISE EXCEPTION 'running a % now needs the member role', CASE WHEN run_kind = 'sync' THEN 'sync' ELSE 'refresh' END
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF wait AND connector THEN
		RAISE EXCEPTION 'a % source is synced by a connector, which sees the run only once this transaction commits', src.source_type
			USING ERRCODE = 'feature_not_supported',
				  HINT = 'Call sync_now with wait => false, commit, and read the run in dalgo.sync_runs.';
	END IF;
	IF wait AND src.source_type IN ('google_sheets', 'api') THEN
		RAISE EXCEPTION 'a % source is fetched by a run worker, which sees the run only once this transaction commits', src.source_type
			USING ERRCODE = 'feature_not_supported',
				  HINT = 'Call sync_now with wait => false, commit, and read the run in dalgo.sync_runs or dalgo.run_progress().';
	END IF;
	IF wait AND current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'wait => true needs READ COMMITTED: the call must see the run finish'
			USING ERRCODE = 'feature_not_supported';
	END IF;
	rid := dalgo_internal.active_run(run_kind, target_id);
	IF rid IS NULL THEN
		BEGIN
			IF run_kind = 'sync' THEN
				PERFORM FROM dalgo.sources x WHERE x.id = target_id FOR UPDATE;
			ELSE
				PERFORM FROM dalgo.outputs x WHERE x.id = target_id FOR UPDATE;
			END IF;
			-- Checked again under the lock: a run committed while we waited for it.
			rid := dalgo_internal.active_run(run_kind, target_id);
			IF rid IS NOT NULL THEN
				RAISE EXCEPTION USING ERRCODE = 'DL001';	-- gives the lock back
			END IF;
		EXCEPTION WHEN SQLSTATE 'DL001' THEN
			NULL;
		END;
	END IF;
	IF rid IS NOT NULL THEN
		RAISE NOTICE 'a run of % % is already pending or running: %', noun, target_id, rid;
		IF wait THEN
			PERFORM dalgo_internal.wait_for_run(run_kind, rid);
		END IF;
		RETURN rid;
	END IF;
	-- Quotas refuse the call itself (the worker checks them again).
	PERFORM dalgo_internal.check_run_quota(org);
	IF run_kind = 'sync' THEN
		INSERT INTO dalgo.sync_runs (organization_id, source_id, status, triggered_by_id, details)
		VALUES (org, target_id, 'pending', dalgo.current_user_id(), '{"on_demand": true}')
		RETURNING id INTO rid;
	ELSE
		INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, triggered_by_id, details)
		VALUES (org, tid, 'pending', dalgo.current_user_id(), jsonb_build_object('on_demand', true, 'output_id', target_id))
		RETURNING id INTO rid;
	END IF;
	IF wait THEN
		PERFORM dalgo_internal.execute_claimed(ARRAY[rid], ARRAY[run_kind]);
	ELSIF connector THEN
		PERFORM pg_notify('dalgo_sync', '');
	ELSE
		PERFORM dalgo_internal.wake_scheduler_at_commit();
	END IF;
	RETURN rid;
END
$$;
COMMENT ON FUNCTION dalgo_internal.run_now(dalgo.run_kind, uuid, boolean) IS
	'Internal: queue (or, with wait, run here) a sync of a source or a refresh of an output without a schedule, under the scheduler''s rules; returns the run, or the run already pending or running';

CREATE OR REPLACE FUNCTION dalgo.stage_sync_run(run_id uuid, columns text[], column_types text[] DEFAULT NULL) RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
BEGIN
	SELECT x.* INTO r FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id AND s.organization_id = x.organization_id
	WHERE x.id = stage_sync_run.run_id AND x.status = 'running' AND NOT x.details ? 'upload'
	  AND dalgo_internal.synced_by_connector(s.config) AND s.deleted_at IS NULL
	FOR UPDATE OF x;
	IF NOT FOUND OR dalgo.current_user_id() IS NOT NULL OR NOT dalgo.caller_may(r.organization_id, 'admin') THEN
		RAISE EXCEPTION 'sync run % is not a running connector run (claim it first)', run_id
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM dalgo_internal.drop_stale_staging_tables(r.organization_id);
	RETURN dalgo_internal.create_staging_table(r.id, columns, column_types, 'dalgo_service');
END
$$;
COMMENT ON FUNCTION dalgo.stage_sync_run(uuid, text[], text[]) IS
	'Connector protocol: create the staging table of a claimed run with the given columns (text, or column_types text/jsonb), empty; the connector may COPY or INSERT into it, and complete_sync_run types and swaps it in. Returns its qualified name (as details.staging_table of the claimed run)';

CREATE OR REPLACE FUNCTION dalgo.http_address_allowed(address inet) RETURNS boolean
	LANGUAGE c STRICT STABLE
	AS 'MODULE_PATHNAME', 'dalgo_http_address_allowed';
COMMENT ON FUNCTION dalgo.http_address_allowed(inet) IS
	'Would a google_sheets or api sync be allowed to connect to this address under the current settings (dalgo.http_allow_private, dalgo.http_allow_hosts)? A pure check that connects nowhere; superusers';

CREATE OR REPLACE FUNCTION dalgo.run_progress(OUT run_id uuid, OUT organization_id uuid, OUT source_id uuid,
								   OUT rows_so_far bigint, OUT bytes_so_far bigint, OUT page integer,
								   OUT updated_at timestamptz)
	RETURNS SETOF record
	LANGUAGE c STRICT VOLATILE
	AS 'MODULE_PATHNAME', 'dalgo_run_progress_sql';
COMMENT ON FUNCTION dalgo.run_progress() IS
	'Progress of the syncs running now in this database (rows and bytes so far, the current page), published by the run workers at least every second; each run is shown only to members of its organization (and to superusers and dalgo_service)';

REVOKE ALL ON FUNCTION dalgo_internal.synced_by_connector(jsonb),
	dalgo_internal.fetch_http_source(uuid, text),
	dalgo.http_address_allowed(inet), dalgo.run_progress()
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.run_progress() TO dalgo_authenticated, dalgo_service;
COMMENT ON FUNCTION dalgo.sync_now(uuid, boolean) IS
	'Sync a source now, without a schedule, for members and above: queues a run for the run workers (an outside connector''s, for a source whose config has "connector": true) and returns its id in dalgo.sync_runs, or the id of the run already pending or running (one run at a time, as for schedules). wait => true returns when the run has finished (postgres and csv sources)';

-- lead: the run-queue functions as merged from citus2 (Citus-compatible claims) and http
-- (connector sources are the ones with config.connector)
CREATE OR REPLACE FUNCTION dalgo_internal.claim_due_schedules(at timestamptz, max_runs integer, only_schedule uuid DEFAULT NULL)
	RETURNS TABLE (schedule_id uuid, run_kind dalgo.run_kind, run_id uuid, outcome text)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s dalgo.schedules;
	src dalgo.sources;
	out dalgo.outputs;
	busy boolean;
	det jsonb;
	rid uuid;
	cur refcursor;
	citus boolean := dalgo_internal.citus_distributed('dalgo.schedules');
	cand_org uuid;
	cand_id uuid;
	claimed integer := 0;
BEGIN
	IF max_runs <= 0 THEN
		RETURN;
	END IF;
	-- Fair between organizations: each organization's oldest due schedule
	-- first, then each one's second, and so on, so that one organization's
	-- backlog never holds another's due schedule back to a later tick.  The
	-- due test is repeated on x: a row another claimer committed in between is
	-- re-checked after its lock.
	-- The limit applies after SKIP LOCKED: a schedule row another
	-- transaction holds (run_schedule_now's run, an open UPDATE) is passed
	-- over and does not use up a place, so locked rows cannot crowd every
	-- other organization's due schedule out of the claim.
	-- On a Citus cluster (schedules distributed) a row lock may only be
	-- taken by a single-shard query: the candidates are read in the same
	-- order without locks, and each is then locked on its own shard, with
	-- SKIP LOCKED, re-checked, and counted against the limit once locked.
	IF citus THEN
		OPEN cur FOR SELECT d.organization_id, d.id FROM
			(SELECT y.organization_id, y.id, y.next_run_at,
					row_number() OVER (PARTITION BY y.organization_id ORDER BY y.next_run_at, y.id) AS turn
			 FROM dalgo.schedules y
			 WHERE y.is_active AND y.deleted_at IS NULL AND y.next_run_at <= at
			   AND (only_schedule IS NULL OR y.id = only_schedule)) d
			ORDER BY d.turn, d.next_run_at, d.id;
	ELSE
		OPEN cur FOR SELECT x.* FROM dalgo.schedules x
			 JOIN (SELECT y.id,
						  row_number() OVER (PARTITION BY y.organization_id ORDER BY y.next_run_at, y.id) AS turn
				   FROM dalgo.schedules y
				   WHERE y.is_active AND y.deleted_at IS NULL AND y.next_run_at <= at
					 AND (only_schedule IS NULL OR y.id = only_schedule)) d ON d.id = x.id
			 WHERE x.is_active AND x.deleted_at IS NULL AND x.next_run_at <= at
			   AND (only_schedule IS NULL OR x.id = only_schedule)
			 ORDER BY d.turn, x.next_run_at, x.id
			 LIMIT max_runs
			 FOR UPDATE OF x SKIP LOCKED;
	END IF;
	LOOP
		IF citus THEN
			EXIT WHEN claimed >= max_runs;
			FETCH cur INTO cand_org, cand_id;
			EXIT WHEN NOT FOUND;
			SELECT x.* INTO s FROM dalgo.schedules x
			WHERE x.organization_id = cand_org AND x.id = cand_id
			  AND x.is_active AND x.deleted_at IS NULL AND x.next_run_at <= at
			FOR UPDATE SKIP LOCKED;
			CONTINUE WHEN NOT FOUND;
			claimed := claimed + 1;
		ELSE
			FETCH cur INTO s;
			EXIT WHEN NOT FOUND;
		END IF;
		det := jsonb_build_object('schedule_id', s.id, 'attempt', 1,
								  'lag_ms', round(extract(epoch FROM clock_timestamp() - s.next_run_at) * 1000));
		UPDATE dalgo.schedules x SET last_run_at = at,
			next_run_at = dalgo.next_run(s.frequency, s.run_at_time, s.run_at_day, s.timezone, greatest(at, s.next_run_at))
		WHERE x.organization_id = s.organization_id AND x.id = s.id;
		schedule_id := s.id;
		IF s.source_id IS NOT NULL THEN
			run_kind := 'sync';
			SELECT * INTO src FROM dalgo.sources x WHERE x.organization_id = s.organization_id AND x.id = s.source_id;
			-- sync_now holds the source row FOR UPDATE while it queues or runs
			-- a sync: that run is going, even if not yet committed.
			PERFORM FROM dalgo.sources x WHERE x.organization_id = s.organization_id AND x.id = s.source_id
				FOR KEY SHARE SKIP LOCKED;
			busy := NOT FOUND OR EXISTS (SELECT FROM dalgo.sync_runs r WHERE r.organization_id = s.organization_id
										 AND r.source_id = s.source_id
										 AND r.status IN ('pending', 'running') AND r.deleted_at IS NULL);
			IF busy THEN
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, started_at, completed_at, error_message, details)
				VALUES (s.organization_id, s.source_id, 'failed', clock_timestamp(), clock_timestamp(),
						'skipped: the previous run of this schedule is still going', det || '{"skipped": true}')
				RETURNING id INTO rid;
				outcome := 'skipped';
			ELSE
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, details)
				VALUES (s.organization_id, s.source_id, 'pending', det) RETURNING id INTO rid;
				IF dalgo_internal.synced_by_connector(src.config) THEN
					-- Anyone can LISTEN: the payload is empty, connectors learn
					-- the work from claim_sync_run().
					PERFORM pg_notify('dalgo_sync', '');
					outcome := 'connector';
				ELSE
					outcome := 'queued';
				END IF;
			END IF;
		ELSE
			run_kind := 'output';
			SELECT * INTO out FROM dalgo.outputs x WHERE x.organization_id = s.organization_id AND x.id = s.output_id;
			-- Likewise refresh_output_now and the output row; its on-demand
			-- runs (details.output_id) count as this schedule's.
			PERFORM FROM dalgo.outputs x WHERE x.organization_id = s.organization_id AND x.id = s.output_id
				FOR KEY SHARE SKIP LOCKED;
			busy := NOT FOUND OR EXISTS (SELECT FROM dalgo.transformation_runs r WHERE r.organization_id = s.organization_id
										 AND r.transformation_id = out.transformation_id
										 AND r.status IN ('pending', 'running')
										 AND (r.details->>'schedule_id' = s.id::text OR r.details->>'output_id' = s.output_id::text));
			INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, started_at, completed_at,
												   error_message, details)
			VALUES (s.organization_id, out.transformation_id, CASE WHEN busy THEN 'failed' ELSE 'pending' END::dalgo.run_status,
					CASE WHEN busy THEN clock_timestamp() END, CASE WHEN busy THEN clock_timestamp() END,
					CASE WHEN busy THEN 'skipped: the previous run of this schedule is still going' END,
					det || CASE WHEN busy THEN '{"skipped": true}'::jsonb ELSE '{}'::jsonb END)
			RETURNING id INTO rid;
			outcome := CASE WHEN busy THEN 'skipped' ELSE 'queued' END;
		END IF;
		run_id := rid;
		RETURN NEXT;
	END LOOP;
	CLOSE cur;
END
$$;
COMMENT ON FUNCTION dalgo_internal.claim_due_schedules(timestamptz, integer, uuid) IS
	'Internal: claim up to max_runs due schedules (FOR UPDATE SKIP LOCKED), advance them and create their run rows; outcome is queued (for the run workers), connector or skipped';

CREATE OR REPLACE FUNCTION dalgo_internal.claim_pending_run(OUT run_kind dalgo.run_kind, OUT run_id uuid)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
BEGIN
	-- A run whose target is gone is passed over (what target_is_live()
	-- tells, written as joins on (organization_id, id): on a Citus cluster
	-- these queries run on the shards, where a function that reads other
	-- tables cannot).
	FOR org IN
		WITH queued AS (
			SELECT r.organization_id, r.status, r.created_at
			FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.organization_id = r.organization_id AND s.id = r.source_id
			JOIN dalgo.organizations o ON o.id = r.organization_id
			WHERE r.status IN ('pending', 'running') AND NOT dalgo_internal.synced_by_connector(s.config)
			  AND r.details ?| ARRAY['schedule_id', 'on_demand']
			  AND (r.status = 'running' OR (o.deleted_at IS NULL AND s.deleted_at IS NULL))
			UNION ALL
			SELECT r.organization_id, r.status, r.created_at FROM dalgo.transformation_runs r
			JOIN dalgo.organizations o ON o.id = r.organization_id
			JOIN dalgo.transformations t ON t.organization_id = r.organization_id AND t.id = r.transformation_id
			WHERE r.status IN ('pending', 'running') AND r.details ?| ARRAY['schedule_id', 'on_demand']
			  AND (r.status = 'running' OR (o.deleted_at IS NULL AND t.deleted_at IS NULL)))
		SELECT q.organization_id FROM queued q
		GROUP BY q.organization_id
		HAVING bool_or(q.status = 'pending')
		ORDER BY count(*) FILTER (WHERE q.status = 'running'), min(q.created_at) FILTER (WHERE q.status = 'pending'),
				 q.organization_id
	LOOP
		CONTINUE WHEN NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL);
		SELECT 'sync', r.id INTO run_kind, run_id FROM dalgo.sync_runs r
			JOIN dalgo.sources s ON s.organization_id = r.organization_id AND s.id = r.source_id
		WHERE r.status = 'pending' AND r.organization_id = org AND NOT dalgo_internal.synced_by_connector(s.config)
		  AND r.details ?| ARRAY['schedule_id', 'on_demand'] AND s.deleted_at IS NULL
		ORDER BY r.created_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED;
		IF NOT FOUND THEN
			SELECT 'output', r.id INTO run_kind, run_id FROM dalgo.transformation_runs r
				JOIN dalgo.transformations t ON t.organization_id = r.organization_id AND t.id = r.transformation_id
			WHERE r.status = 'pending' AND r.organization_id = org AND r.details ?| ARRAY['schedule_id', 'on_demand']
			  AND t.deleted_at IS NULL
			ORDER BY r.created_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED;
		END IF;
		EXIT WHEN run_id IS NOT NULL;
	END LOOP;
	IF run_id IS NOT NULL THEN
		PERFORM dalgo_internal.start_scheduled_run(run_kind, run_id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.claim_pending_run() IS
	'Internal: a run worker takes a pending in-database run and marks it running: the organization with the fewest running runs first, then the one waiting longest';

CREATE OR REPLACE FUNCTION dalgo_internal.expire_connector_runs(timeout_seconds integer) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	stamp timestamptz;
BEGIN
	stamp := clock_timestamp();	-- once (Citus: no volatile function in an UPDATE)
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stamp,
		error_message = format('no connector claimed the run within %s seconds', timeout_seconds)
	WHERE r.status = 'pending' AND r.created_at < now() - make_interval(secs => timeout_seconds)
	  AND EXISTS (SELECT FROM dalgo.sources s WHERE s.organization_id = r.organization_id AND s.id = r.source_id
				  AND dalgo_internal.synced_by_connector(s.config));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.expire_connector_runs(integer) IS 'Mark connector runs nobody claimed in time as failed';

CREATE OR REPLACE FUNCTION dalgo_internal.expire_stalled_connector_runs(timeout_seconds integer) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	stamp timestamptz;
BEGIN
	IF timeout_seconds IS NULL OR timeout_seconds <= 0 THEN
		RETURN 0;
	END IF;
	stamp := clock_timestamp();	-- once (Citus: no volatile function in an UPDATE)
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stamp,
		error_message = format('the connector did not complete the run within %s seconds of claiming it', timeout_seconds)
	WHERE r.status = 'running' AND coalesce(r.started_at, r.created_at) < now() - make_interval(secs => timeout_seconds)
	  AND EXISTS (SELECT FROM dalgo.sources s WHERE s.organization_id = r.organization_id AND s.id = r.source_id
				  AND dalgo_internal.synced_by_connector(s.config));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.expire_stalled_connector_runs(integer) IS
	'Mark connector runs claimed but not completed within timeout_seconds (dalgo.run_timeout) as failed; 0 disables it';

CREATE OR REPLACE FUNCTION dalgo_internal.pending_runs() RETURNS integer
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
	AS $$ SELECT (SELECT count(*) FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.organization_id = r.organization_id AND s.id = r.source_id
				  WHERE r.status = 'pending' AND NOT dalgo_internal.synced_by_connector(s.config) AND r.details ?| ARRAY['schedule_id', 'on_demand'])::integer
			   + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.status = 'pending' AND r.details ?| ARRAY['schedule_id', 'on_demand'])::integer $$;
COMMENT ON FUNCTION dalgo_internal.pending_runs() IS 'Internal: in-database runs waiting for a run worker';

CREATE OR REPLACE FUNCTION dalgo_internal.recover_interrupted_runs() RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	m integer;
	seen timestamptz;
	live_pids integer[];
	live_starts timestamptz[];
	stamp timestamptz;
BEGIN
	-- A run is alive while the backend that marked it running is: the same
	-- pid, started no later than the run (a reused pid starts later).  Only
	-- runs marked before the list of backends was read are judged by it.
	PERFORM pg_stat_clear_snapshot();
	seen := clock_timestamp();
	SELECT array_agg(a.pid), array_agg(a.backend_start) INTO live_pids, live_starts
	FROM pg_stat_activity a WHERE a.backend_start IS NOT NULL;
	-- A timestamp computed once, and a join on organization_id: what Citus
	-- accepts in an UPDATE of a distributed table.
	stamp := clock_timestamp();
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stamp,
		error_message = 'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)'
	FROM dalgo.sources s
	WHERE s.organization_id = r.organization_id AND s.id = r.source_id AND NOT dalgo_internal.synced_by_connector(s.config)
	  AND r.status = 'running'
	  AND r.details ?| ARRAY['schedule_id', 'on_demand'] AND coalesce(r.started_at, '-infinity') < seen
	  AND NOT EXISTS (SELECT FROM unnest(live_pids, live_starts) a(pid, started)
					  WHERE a.pid::text = r.details->>'runner_pid' AND a.started <= r.started_at);
	GET DIAGNOSTICS n = ROW_COUNT;
	UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = stamp,
		error_message = 'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)'
	WHERE r.status = 'running' AND r.details ?| ARRAY['schedule_id', 'on_demand'] AND coalesce(r.started_at, '-infinity') < seen
	  AND NOT EXISTS (SELECT FROM unnest(live_pids, live_starts) a(pid, started)
					  WHERE a.pid::text = r.details->>'runner_pid' AND a.started <= r.started_at);
	GET DIAGNOSTICS m = ROW_COUNT;
	RETURN n + m;
END
$$;
COMMENT ON FUNCTION dalgo_internal.recover_interrupted_runs() IS
	'Mark scheduled runs whose worker is gone (same pid and a backend start no later than the run''s) as failed; the scheduler calls it on every tick (pending runs simply wait for a worker)';

-- lead: the secret key's creation is logged without the statement that wrote the first secret
CREATE FUNCTION dalgo_internal.log_without_statement(message text) RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_log_without_statement'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION dalgo_internal.log_without_statement(text) IS
	'Internal: write a message to the server log at LOG level without the statement that led to it';
REVOKE ALL ON FUNCTION dalgo_internal.log_without_statement(text) FROM PUBLIC;
CREATE OR REPLACE FUNCTION dalgo_internal.secret_key_for_writing() RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
BEGIN
	IF k IS NULL OR k = '' THEN
		-- One creator at a time; the file outlives a rollback, so a
		-- second creator finds it after the first one's lock is gone.
		PERFORM pg_catalog.pg_advisory_xact_lock(7316028433216171853);
		k := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
		IF k IS NULL OR k = '' THEN
			k := pg_catalog.encode(dalgo_internal.pgcrypto_random_bytes(32), 'hex');
			PERFORM dalgo_internal.write_secret_key(k);
			PERFORM dalgo_internal.log_without_statement(
				'dalgo: created the secret key dalgo_secret.key in the data directory; back it up apart from the database');
		END IF;
	END IF;
	RETURN k;
END
$$;
COMMENT ON FUNCTION dalgo_internal.secret_key_for_writing() IS
	'Internal: the encryption key, created (32 random bytes in dalgo_secret.key of the data directory) on first need';

-- lead: two first uses of a warehouse at once both succeed
CREATE OR REPLACE FUNCTION dalgo.ensure_warehouse(organization_id uuid) RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	role_name text := dalgo_internal.warehouse_role_name(organization_id);
	r pg_roles;
	problem text;
BEGIN
	IF organization_id IS NULL THEN
		RAISE EXCEPTION 'organization_id is required' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT dalgo.caller_may(organization_id, 'viewer')
	   OR NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = ensure_warehouse.organization_id AND o.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- Two first uses at once (two syncs of a new organization): the second
	-- waits for the first and then finds its role and schema, instead of
	-- failing on pg_authid's unique name.
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name)
	   OR NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = schema_name) THEN
		PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('dalgo warehouse ' || organization_id::text, 0));
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
		SELECT ensure_warehouse.organization_id, current_database(), true, now()
		WHERE NOT EXISTS (SELECT FROM dalgo.warehouse_connections w
						  WHERE w.organization_id = ensure_warehouse.organization_id AND w.deleted_at IS NULL);
	RETURN schema_name;
END
$$;
COMMENT ON FUNCTION dalgo.ensure_warehouse(uuid) IS
	'The organization''s warehouse schema (org_<id>, owned by role dalgo_wh_<id>), created with its warehouse_connections row on first use; a role or schema of that name that dalgo would not have made (login, superuser, role memberships, another owner...) is refused, never adopted';

-- lead: a user's erasure touches only their own audit rows and their organizations' (a name
-- like "-4000-" erased ids across every tenant), never ids; control characters in names never
-- reach an alert's subject
DROP FUNCTION dalgo_internal.anonymize_audit_logs(uuid, text[]);
DROP FUNCTION dalgo_internal.erase_in_jsonb(jsonb, text[], text[]);
-- Replace every string value that holds one of the needles
-- (case-insensitively), and every value under the keys given, by
-- "[erased]".  Ids (keys "id" and "*_id") are never touched.  A user picks
-- their own name, so a needle matches inside a longer string only when it
-- has 5 characters or more, a letter among them; a shorter or letterless
-- one ("-4000-", "202") must equal the whole value.
CREATE FUNCTION dalgo_internal.erase_in_jsonb(j jsonb, needles text[], keys text[], whole_values_only boolean DEFAULT false)
	RETURNS jsonb
	LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	CASE jsonb_typeof(j)
	WHEN 'object' THEN
		RETURN coalesce((SELECT jsonb_object_agg(e.key, CASE WHEN e.key = 'id' OR e.key LIKE '%\_id' THEN e.value
															 WHEN e.key = ANY (keys) AND jsonb_typeof(e.value) <> 'null'
															 THEN '"[erased]"'::jsonb
															 ELSE dalgo_internal.erase_in_jsonb(e.value, needles, keys, whole_values_only) END)
						 FROM jsonb_each(j) e), '{}'::jsonb);
	WHEN 'array' THEN
		RETURN coalesce((SELECT jsonb_agg(dalgo_internal.erase_in_jsonb(a.value, needles, keys, whole_values_only) ORDER BY a.n)
						 FROM jsonb_array_elements(j) WITH ORDINALITY a(value, n)), '[]'::jsonb);
	WHEN 'string' THEN
		IF EXISTS (SELECT FROM unnest(needles) x
				   WHERE length(btrim(x)) >= 3
					 AND (lower(btrim(j #>> '{}')) = lower(btrim(x))
						  OR (NOT coalesce(whole_values_only, false) AND length(btrim(x)) >= 5 AND btrim(x) ~ '[[:alpha:]]'
							  AND strpos(lower(j #>> '{}'), lower(btrim(x))) > 0))) THEN
			RETURN '"[erased]"'::jsonb;
		END IF;
		RETURN j;
	ELSE
		RETURN j;
	END CASE;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.erase_in_jsonb(jsonb, text[], text[], boolean) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.erase_in_jsonb(jsonb, text[], text[], boolean) IS
	'Internal: a jsonb value with every string holding one of the needles (case-insensitively; inside a longer string only for needles of 5 characters or more with a letter and not whole_values_only, else the whole value, and never under 3 characters) and every value under one of the keys replaced by "[erased]"; ids (keys id and *_id) are never touched';

CREATE FUNCTION dalgo_internal.anonymize_audit_logs(user_id uuid, needles text[], organization_ids uuid[]) RETURNS bigint
	AS 'MODULE_PATHNAME', 'dalgo_anonymize_audit_logs'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION dalgo_internal.anonymize_audit_logs(uuid, text[], uuid[]) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.anonymize_audit_logs(uuid, text[], uuid[]) IS
	'Internal: the one path past the audit trail''s append-only guard: in the rows by or about the user, and the rows of organizations the user was a member of that name one of the needles, personal data in details is erased and the client address and user agent of the user''s own rows dropped; ids, actions and times stay. Rows of other organizations are never touched';

CREATE OR REPLACE FUNCTION dalgo_internal.erase_account(user_id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	uid uuid := erase_account.user_id;
	u record;
	blocking record;
	needles text[];
	orgs uuid[];
	anon text := 'erased-' || replace(erase_account.user_id::text, '-', '') || '@erased.invalid';
BEGIN
	SELECT x.id, x.email, x.full_name, x.deleted_at INTO u FROM dalgo.users x WHERE x.id = uid FOR UPDATE;
	IF u.id IS NULL THEN
		RAISE EXCEPTION 'user % does not exist', uid USING ERRCODE = 'no_data_found';
	END IF;
	-- Team organizations must keep an owner: under each organization's row
	-- lock, against the latest committed state (as guard_membership counts).
	FOR blocking IN
		SELECT o.id, o.name FROM dalgo.organization_members m JOIN dalgo.organizations o ON o.id = m.organization_id
		WHERE m.user_id = uid AND m.role = 'owner' AND m.deleted_at IS NULL
		  AND o.org_type = 'team' AND o.deleted_at IS NULL
		ORDER BY o.id
	LOOP
		PERFORM FROM dalgo.organizations o WHERE o.id = blocking.id FOR NO KEY UPDATE;
		IF dalgo_internal.live_owner_count(blocking.id,
				(SELECT m.id FROM dalgo.organization_members m
				 WHERE m.organization_id = blocking.id AND m.user_id = uid AND m.deleted_at IS NULL)) = 0 THEN
			RAISE EXCEPTION 'you are the last owner of the organization "%" (%)', blocking.name, blocking.id
				USING ERRCODE = 'check_violation',
					  HINT = 'Make another member an owner, or delete the organization, first.';
		END IF;
	END LOOP;

	-- The organizations whose audit rows may name the user: theirs, before
	-- the personal one goes.  No other organization's trail is touched.
	orgs := ARRAY(SELECT DISTINCT m.organization_id FROM dalgo.organization_members m WHERE m.user_id = uid);

	-- Personal organizations of the user go at once, warehouse and all.
	DELETE FROM dalgo.organizations o
		WHERE o.org_type = 'personal'
		  AND EXISTS (SELECT FROM dalgo.organization_members m
					  WHERE m.organization_id = o.id AND m.user_id = uid AND m.role = 'owner' AND m.deleted_at IS NULL);
	-- Memberships end (the rows keep their ids for the audit trail).
	UPDATE dalgo.organization_members m SET deleted_at = now() WHERE m.user_id = uid AND m.deleted_at IS NULL;

	-- Sessions, reset tokens, API keys and pending mail.
	UPDATE dalgo.refresh_tokens t SET revoked_at = now() WHERE t.user_id = uid AND t.revoked_at IS NULL;
	UPDATE dalgo.password_reset_tokens t SET used_at = now() WHERE t.user_id = uid AND t.used_at IS NULL;
	UPDATE dalgo.api_keys k SET revoked_at = now() WHERE k.created_by_id = uid AND k.revoked_at IS NULL;
	UPDATE dalgo.mail_messages m SET state = 'cancelled', payload = NULL, completed_at = now()
		WHERE lower(m.recipient) = lower(u.email) AND m.state IN ('pending', 'sending');
	UPDATE dalgo.mail_messages m SET recipient = anon WHERE lower(m.recipient) = lower(u.email);
	UPDATE dalgo.invitations i SET email = anon WHERE lower(i.email) = lower(u.email);
	DELETE FROM dalgo.sign_in_attempts a
		WHERE a.user_id = uid OR a.email_hash = dalgo_internal.email_key(u.email);

	-- The user row: the id stays, the person goes.
	UPDATE dalgo.users x SET email = anon, full_name = NULL, password_hash = NULL, is_active = false,
		deleted_at = coalesce(x.deleted_at, now())
		WHERE x.id = uid;

	-- The audit trail: what the user did and what was done to them stays, by id.
	needles := ARRAY[u.email, u.full_name]
		|| ARRAY(SELECT DISTINCT v.value FROM dalgo.audit_logs a,
					 LATERAL jsonb_path_query(a.details, 'strict $.**.email.**') q,
					 LATERAL (SELECT q #>> '{}' AS value) v
				 WHERE a.resource_type = 'users' AND a.resource_id = uid AND jsonb_typeof(q) = 'string'
				   AND v.value <> anon)
		|| ARRAY(SELECT DISTINCT v.value FROM dalgo.audit_logs a,
					 LATERAL jsonb_path_query(a.details, 'strict $.**.full_name.**') q,
					 LATERAL (SELECT q #>> '{}' AS value) v
				 WHERE a.resource_type = 'users' AND a.resource_id = uid AND jsonb_typeof(q) = 'string');
	PERFORM dalgo_internal.anonymize_audit_logs(uid, array_remove(needles, NULL), orgs);
	PERFORM dalgo_internal.account_audit('account_erased', NULL, NULL, 'user', uid);
END
$$;

CREATE OR REPLACE FUNCTION dalgo_internal.record_run_alert() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer := greatest(coalesce(nullif(current_setting('dalgo.alert_after_failures', true), '')::integer, 1), 1);
	sid uuid;
	s dalgo.schedules;
	org dalgo.organizations;
	previous text[];
	before integer;
	target_type text;
	target_name text;
	kind text;
	payload jsonb;
	recipient text;
BEGIN
	IF dalgo.restoring() OR NEW.details ?| ARRAY['skipped', 'cancelled'] THEN
		RETURN NULL;
	END IF;
	-- On a Citus cluster the trigger fires on the run's shard (sync_runs_102040),
	-- on a worker, which may not write the mail queue (a reference table):
	-- no alert there yet (docs/scaling.md).
	IF TG_TABLE_NAME ~ '_[0-9]+$' THEN
		RETURN NULL;
	END IF;
	BEGIN
		sid := (NEW.details->>'schedule_id')::uuid;
	EXCEPTION WHEN invalid_text_representation THEN
		RETURN NULL;
	END;
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = sid AND x.organization_id = NEW.organization_id;
	SELECT * INTO org FROM dalgo.organizations o WHERE o.id = NEW.organization_id AND o.deleted_at IS NULL;
	IF s.id IS NULL OR org.id IS NULL THEN
		RETURN NULL;
	END IF;
	-- The outcomes of the schedule's previous runs, newest first: n of them
	-- tell whether the streak before this run was n - 1 long, or reached n.
	IF TG_TABLE_NAME = 'sync_runs' THEN
		previous := ARRAY(SELECT r.status::text FROM dalgo.sync_runs r
						  WHERE r.source_id = NEW.source_id AND r.organization_id = NEW.organization_id AND r.id <> NEW.id
							AND r.details->>'schedule_id' = sid::text AND NOT r.details ?| ARRAY['skipped', 'cancelled']
							AND r.status IN ('success', 'failed')
						  ORDER BY r.completed_at DESC NULLS LAST, r.created_at DESC LIMIT n);
		target_type := 'source';
		SELECT x.name INTO target_name FROM dalgo.sources x WHERE x.organization_id = s.organization_id AND x.id = s.source_id;
	ELSE
		previous := ARRAY(SELECT r.status::text FROM dalgo.transformation_runs r
						  WHERE r.transformation_id = NEW.transformation_id AND r.organization_id = NEW.organization_id
							AND r.id <> NEW.id AND r.details->>'schedule_id' = sid::text AND NOT r.details ?| ARRAY['skipped', 'cancelled']
							AND r.status IN ('success', 'failed')
						  ORDER BY r.completed_at DESC NULLS LAST, r.created_at DESC LIMIT n);
		target_type := 'output';
		SELECT x.name INTO target_name FROM dalgo.outputs x WHERE x.organization_id = s.organization_id AND x.id = s.output_id;
	END IF;
	before := coalesce(array_position(previous, 'success') - 1, cardinality(previous));
	IF NEW.status = 'failed' AND before = n - 1 THEN
		kind := 'run_failed';
	ELSIF NEW.status = 'success' AND before >= n THEN
		kind := 'run_recovered';
	ELSE
		RETURN NULL;
	END IF;
	-- Names are members' text: no control character (a line break would
	-- become a header in a mailer that writes the subject into one).
	org.name := regexp_replace(org.name, '[[:cntrl:]]', ' ', 'g');
	target_name := regexp_replace(target_name, '[[:cntrl:]]', ' ', 'g');
	payload := jsonb_build_object(
		'organization_id', org.id, 'organization_name', org.name,
		'schedule_id', s.id, 'target_type', target_type, 'target_id', coalesce(s.source_id, s.output_id),
		'target_name', target_name, 'run_id', NEW.id, 'at', NEW.completed_at,
		'failures', CASE WHEN kind = 'run_failed' THEN n END,
		'error', CASE WHEN kind = 'run_failed' THEN dalgo.redact(NEW.error_message) END,
		'subject', CASE WHEN kind = 'run_failed'
						THEN format('[%s] %s "%s" failed%s', org.name, CASE WHEN target_type = 'source' THEN 'sync of' ELSE 'refresh of' END,
									target_name, CASE WHEN n > 1 THEN format(' %s times in a row', n) ELSE '' END)
						ELSE format('[%s] %s "%s" is back to normal', org.name,
									CASE WHEN target_type = 'source' THEN 'sync of' ELSE 'refresh of' END, target_name) END);
	FOR recipient IN
		SELECT DISTINCT u.email FROM dalgo.organization_members m JOIN dalgo.users u ON u.id = m.user_id
		WHERE m.organization_id = org.id AND m.deleted_at IS NULL AND m.role >= 'admin'
		  AND u.deleted_at IS NULL AND u.is_active
		ORDER BY u.email
	LOOP
		PERFORM dalgo_internal.queue_mail(kind, recipient, payload);
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo_internal.record_run_alert() IS
	'AFTER UPDATE trigger on sync_runs and transformation_runs: when a scheduled run fails for the dalgo.alert_after_failures-th time in a row, or succeeds after such a streak, queue one run_failed or run_recovered message (error redacted) to each admin and owner of the organization';

-- citus identity: on a Citus cluster an API key's last use is recorded by
-- the autonomous recorder (a write as authenticate_api_key's owner would bar
-- the request's role from the nodes it touched for the rest of the transaction).
CREATE FUNCTION dalgo_internal.note_api_key_use(unused bytea, key_id uuid) RETURNS void
	LANGUAGE sql
	SET search_path = pg_catalog, pg_temp
	SET lock_timeout = '10s'
BEGIN ATOMIC
	UPDATE dalgo.api_keys a SET last_used_at = now()
	WHERE a.id = note_api_key_use.key_id
	  AND (a.last_used_at IS NULL OR a.last_used_at < now() - interval '1 minute');
END;
COMMENT ON FUNCTION dalgo_internal.note_api_key_use(bytea, uuid) IS
	'Set an API key''s last_used_at (at most once a minute); run by the autonomous recorder for dalgo.authenticate_api_key on a Citus cluster (private)';
REVOKE ALL ON FUNCTION dalgo_internal.note_api_key_use(bytea, uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.run_autonomously(text, bytea, uuid) IS
	'Run a recorder (failed_sign_in: dalgo_internal.note_failed_sign_in; token_reuse: dalgo_internal.note_token_reuse; api_key_used: dalgo_internal.note_api_key_use) in a background worker''s own, committed transaction, so the record survives the caller''s error (private)';
CREATE OR REPLACE FUNCTION dalgo.authenticate_api_key(key text) RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k record;
BEGIN
	SELECT a.id, a.organization_id, a.role, a.created_by_id, a.expires_at, a.revoked_at, a.last_used_at INTO k
		FROM dalgo.api_keys a WHERE a.key_hash = dalgo_internal.token_digest(authenticate_api_key.key);
	IF k.id IS NULL OR k.revoked_at IS NOT NULL OR k.expires_at <= now() OR k.created_by_id IS NULL
	   OR NOT dalgo_internal.api_key_is_live(k.id)
	   OR NOT EXISTS (SELECT FROM dalgo.users u WHERE u.id = k.created_by_id AND u.is_active AND u.deleted_at IS NULL)
	   OR NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = k.organization_id AND o.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'invalid API key' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	IF (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute')
	   AND NOT current_setting('transaction_read_only')::boolean THEN
		IF dalgo_internal.citus_distributed('dalgo.api_keys') THEN
			-- On a Citus cluster a write here, as this function's owner, would
			-- bar the request's own role from those nodes for the rest of the
			-- transaction ("modified in this transaction by a different user").
			PERFORM dalgo_internal.run_autonomously('api_key_used', NULL, k.id);
		ELSE
			UPDATE dalgo.api_keys a SET last_used_at = now() WHERE a.id = k.id;
		END IF;
	END IF;
	PERFORM dalgo_internal.set_api_key_identity(k.id, k.created_by_id, k.organization_id, k.role::text);
	RETURN k.organization_id;
END
$$;
COMMENT ON FUNCTION dalgo.authenticate_api_key(text) IS
	'Verify an API key and make its creator the caller for this transaction, seen by every membership function and policy in the key''s organization only, at the lesser of the key''s role and the creator''s current role; returns the organization id. Unknown, revoked or expired: 28000 "invalid API key"';

-- citus alerts: on a Citus cluster record_run_alert (on the run's shard, on
-- a worker) writes into the co-located dalgo_internal.alert_outbox, and the
-- coordinator's scheduler queues the mail (deliver_run_alerts).
CREATE TABLE dalgo_internal.alert_outbox (
	organization_id	uuid NOT NULL,
	id				uuid NOT NULL DEFAULT gen_random_uuid(),
	kind			text NOT NULL,
	recipient		text NOT NULL,
	payload			jsonb NOT NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (organization_id, id)
);
COMMENT ON TABLE dalgo_internal.alert_outbox IS
	'Internal, Citus only: failure alerts written on a worker by record_run_alert, until the coordinator''s scheduler queues them as mail (deliver_run_alerts)';
COMMENT ON COLUMN dalgo_internal.alert_outbox.organization_id IS 'The run''s organization (the distribution column on a cluster)';
COMMENT ON COLUMN dalgo_internal.alert_outbox.kind IS 'run_failed or run_recovered, the mail kind';
COMMENT ON COLUMN dalgo_internal.alert_outbox.recipient IS 'An admin''s or owner''s email address';
COMMENT ON COLUMN dalgo_internal.alert_outbox.payload IS 'The message, as queue_mail takes it (error redacted)';
REVOKE ALL ON dalgo_internal.alert_outbox FROM PUBLIC;

CREATE OR REPLACE FUNCTION dalgo_internal.record_run_alert() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer := greatest(coalesce(nullif(current_setting('dalgo.alert_after_failures', true), '')::integer, 1), 1);
	sid uuid;
	s dalgo.schedules;
	org dalgo.organizations;
	previous text[];
	before integer;
	target_type text;
	target_name text;
	kind text;
	payload jsonb;
	recipient text;
	on_shard boolean;
BEGIN
	IF dalgo.restoring() OR NEW.details ?| ARRAY['skipped', 'cancelled'] THEN
		RETURN NULL;
	END IF;
	-- On a Citus cluster the trigger fires on the run's shard (sync_runs_102040).
	on_shard := TG_TABLE_NAME ~ '_[0-9]+$' AND dalgo_internal.citus_distributed('dalgo_internal.alert_outbox');
	BEGIN
		sid := (NEW.details->>'schedule_id')::uuid;
	EXCEPTION WHEN invalid_text_representation THEN
		RETURN NULL;
	END;
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = sid AND x.organization_id = NEW.organization_id;
	SELECT * INTO org FROM dalgo.organizations o WHERE o.id = NEW.organization_id AND o.deleted_at IS NULL;
	IF s.id IS NULL OR org.id IS NULL THEN
		RETURN NULL;
	END IF;
	-- The outcomes of the schedule's previous runs, newest first: n of them
	-- tell whether the streak before this run was n - 1 long, or reached n.
	IF TG_TABLE_NAME ~ '^sync_runs(_[0-9]+)?$' THEN
		previous := ARRAY(SELECT r.status::text FROM dalgo.sync_runs r
						  WHERE r.source_id = NEW.source_id AND r.organization_id = NEW.organization_id AND r.id <> NEW.id
							AND r.details->>'schedule_id' = sid::text AND NOT r.details ?| ARRAY['skipped', 'cancelled']
							AND r.status IN ('success', 'failed')
						  ORDER BY r.completed_at DESC NULLS LAST, r.created_at DESC LIMIT n);
		target_type := 'source';
		SELECT x.name INTO target_name FROM dalgo.sources x WHERE x.organization_id = s.organization_id AND x.id = s.source_id;
	ELSE
		previous := ARRAY(SELECT r.status::text FROM dalgo.transformation_runs r
						  WHERE r.transformation_id = NEW.transformation_id AND r.organization_id = NEW.organization_id
							AND r.id <> NEW.id AND r.details->>'schedule_id' = sid::text AND NOT r.details ?| ARRAY['skipped', 'cancelled']
							AND r.status IN ('success', 'failed')
						  ORDER BY r.completed_at DESC NULLS LAST, r.created_at DESC LIMIT n);
		target_type := 'output';
		SELECT x.name INTO target_name FROM dalgo.outputs x WHERE x.organization_id = s.organization_id AND x.id = s.output_id;
	END IF;
	before := coalesce(array_position(previous, 'success') - 1, cardinality(previous));
	IF NEW.status = 'failed' AND before = n - 1 THEN
		kind := 'run_failed';
	ELSIF NEW.status = 'success' AND before >= n THEN
		kind := 'run_recovered';
	ELSE
		RETURN NULL;
	END IF;
	-- Names are members' text: no control character (a line break would
	-- become a header in a mailer that writes the subject into one).
	org.name := regexp_replace(org.name, '[[:cntrl:]]', ' ', 'g');
	target_name := regexp_replace(target_name, '[[:cntrl:]]', ' ', 'g');
	payload := jsonb_build_object(
		'organization_id', org.id, 'organization_name', org.name,
		'schedule_id', s.id, 'target_type', target_type, 'target_id', coalesce(s.source_id, s.output_id),
		'target_name', target_name, 'run_id', NEW.id, 'at', NEW.completed_at,
		'failures', CASE WHEN kind = 'run_failed' THEN n END,
		'error', CASE WHEN kind = 'run_failed' THEN dalgo.redact(NEW.error_message) END,
		'subject', CASE WHEN kind = 'run_failed'
						THEN format('[%s] %s "%s" failed%s', org.name, CASE WHEN target_type = 'source' THEN 'sync of' ELSE 'refresh of' END,
									target_name, CASE WHEN n > 1 THEN format(' %s times in a row', n) ELSE '' END)
						ELSE format('[%s] %s "%s" is back to normal', org.name,
									CASE WHEN target_type = 'source' THEN 'sync of' ELSE 'refresh of' END, target_name) END);
	FOR recipient IN
		SELECT DISTINCT u.email FROM dalgo.organization_members m JOIN dalgo.users u ON u.id = m.user_id
		WHERE m.organization_id = org.id AND m.deleted_at IS NULL AND m.role >= 'admin'
		  AND u.deleted_at IS NULL AND u.is_active
		ORDER BY u.email
	LOOP
		IF on_shard THEN
			INSERT INTO dalgo_internal.alert_outbox (organization_id, kind, recipient, payload)
				VALUES (NEW.organization_id, kind, recipient, payload);
		ELSE
			PERFORM dalgo_internal.queue_mail(kind, recipient, payload);
		END IF;
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo_internal.record_run_alert() IS
	'AFTER UPDATE trigger on sync_runs and transformation_runs: when a scheduled run fails for the dalgo.alert_after_failures-th time in a row, or succeeds after such a streak, queue one run_failed or run_recovered message (error redacted) to each admin and owner of the organization (on a Citus shard: into alert_outbox)';

CREATE FUNCTION dalgo_internal.deliver_run_alerts(max integer DEFAULT 1000) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a record;
	n integer := 0;
BEGIN
	IF NOT dalgo_internal.citus_distributed('dalgo_internal.alert_outbox') THEN
		RETURN 0;
	END IF;
	-- The mail queue is a reference table: Citus lets a transaction write it
	-- after reading a distributed table only over one connection per node.
	PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
	FOR a IN SELECT o.organization_id, o.id, o.kind, o.recipient, o.payload FROM dalgo_internal.alert_outbox o
			 ORDER BY o.created_at, o.id LIMIT max
	LOOP
		PERFORM dalgo_internal.queue_mail(a.kind, a.recipient, a.payload);
		DELETE FROM dalgo_internal.alert_outbox o WHERE o.organization_id = a.organization_id AND o.id = a.id;
		n := n + 1;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.deliver_run_alerts(integer) IS
	'Internal, Citus: move up to max failure alerts from alert_outbox (written on the workers) into the mail queue, oldest first; 0 without Citus';
REVOKE ALL ON FUNCTION dalgo_internal.deliver_run_alerts(integer) FROM PUBLIC;

CREATE OR REPLACE FUNCTION dalgo.distribute()
RETURNS TABLE (table_name regclass, distribution text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	-- Shared tables, every node holds all rows: membership is checked on
	-- every node for every statement, so organization_members is one of them.
	reference_tables text[] := ARRAY['users', 'organizations', 'organization_members', 'api_keys',
									 'retention_policies',
	-- Accounts: per user, not per organization.  Citus local tables (kept on
	-- the coordinator) would fit better, but Citus cannot add a table that
	-- an extension owns to its metadata that way.
									 'refresh_tokens', 'password_reset_tokens', 'sign_in_attempts',
									 'mail_messages'];
	-- Tenant tables, by organization_id, co-located with sources; parents first.
	tenant_tables text[] := ARRAY['sources', 'transformations', 'warehouse_connections', 'outputs',
								  'schedules', 'source_schemas', 'sync_runs', 'warehouse_tables',
								  'transformation_versions', 'transformation_runs', 'invitations',
								  'audit_logs',
	-- Failure alerts that the shards of the run tables write (journeys.sql).
								  'dalgo_internal.alert_outbox'];
	t text;
	r record;
	p record;
	rel regclass;
	expr text;
	check_expr text;
	distributed regclass[] := '{}';
	fkeys text[] := '{}';
BEGIN
	IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
		RAISE EXCEPTION 'dalgo.distribute() needs the citus extension'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'The citus extension is not installed in this database.',
				  HINT = 'Preload citus before dalgo (shared_preload_libraries = ''citus,dalgo''), run CREATE EXTENSION citus on every node and add the workers; see docs/scaling.md.';
	END IF;
	IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
		RAISE EXCEPTION 'only a superuser may distribute dalgo''s tables' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF NOT EXISTS (SELECT FROM pg_dist_node WHERE groupid = 0) THEN
		RAISE EXCEPTION 'the coordinator is not in the cluster''s metadata'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'dalgo reads its shared tables locally, so every node, the coordinator included, holds a copy.',
				  HINT = 'Run SELECT citus_set_coordinator_host(''<host>'', <port>) on the coordinator first.';
	END IF;
	IF (SELECT groupid FROM pg_dist_local_group) <> 0 THEN
		RAISE EXCEPTION 'dalgo.distribute() runs on the coordinator' USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	IF NOT EXISTS (SELECT FROM pg_dist_node WHERE groupid <> 0 AND isactive) THEN
		RAISE EXCEPTION 'the cluster has no worker'
			USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Add workers with citus_add_node() first.';
	END IF;
	-- dalgo's triggers are written to be correct on shards (docs/scaling.md).
	PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
	-- Foreign keys to reference tables need one connection per node.
	PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);

	-- A dalgo table this list does not know yet (a later release's): by
	-- organization_id when it has the column, else a reference table.
	FOR r IN
		SELECT c.relname::text AS t,
			   EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'organization_id'
					   AND NOT a.attisdropped) AS tenant
		FROM pg_class c
		WHERE c.relnamespace = 'dalgo'::regnamespace AND c.relkind = 'r'
		  AND c.relname <> ALL (reference_tables || tenant_tables)
		  AND NOT EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = c.oid)
		ORDER BY 1
	LOOP
		IF r.tenant THEN
			tenant_tables := tenant_tables || r.t;
		ELSE
			reference_tables := reference_tables || r.t;
		END IF;
	END LOOP;

	-- Toolkit-secured tables with an organization_id column join the tenant tables.
	FOR r IN
		SELECT DISTINCT c.oid::regclass AS rel
		FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'organization_id' AND NOT a.attisdropped
		WHERE pol.polname LIKE 'dalgo\_%' AND c.relnamespace <> 'dalgo'::regnamespace AND c.relkind = 'r'
		ORDER BY 1
	LOOP
		tenant_tables := tenant_tables || r.rel::text;
	END LOOP;

	-- 1. Policies: the form without subqueries (generated here, so rls.sql
	-- keeps the single-node form).  users' policy reads organization_members.
	FOR r IN
		SELECT c.oid::regclass AS rel FROM pg_class c
		WHERE c.relkind = 'r' AND (c.relnamespace = 'dalgo'::regnamespace
			OR c.oid::regclass::text = ANY (tenant_tables))
	LOOP
		FOR p IN SELECT pol.polname, pg_get_expr(pol.polqual, pol.polrelid) AS qual,
						pg_get_expr(pol.polwithcheck, pol.polrelid) AS wcheck
				 FROM pg_policy pol WHERE pol.polrelid = r.rel
		LOOP
			expr := dalgo_internal.citus_policy_expr(p.qual);
			check_expr := dalgo_internal.citus_policy_expr(p.wcheck);
			IF r.rel = 'dalgo.users'::regclass AND p.polname = 'user_select' THEN
				expr := 'id = dalgo.current_user_id() OR dalgo.shares_organization(id)';
			END IF;
			IF expr ~* '\mSELECT\M' OR check_expr ~* '\mSELECT\M' THEN
				RAISE EXCEPTION 'policy % on % has a subquery that Citus refuses', p.polname, r.rel
					USING ERRCODE = 'feature_not_supported',
						  DETAIL = format('USING (%s) WITH CHECK (%s)', expr, check_expr),
						  HINT = 'Rewrite it with functions instead of subqueries (docs/scaling.md).';
			END IF;
			IF expr IS DISTINCT FROM p.qual THEN
				EXECUTE format('ALTER POLICY %I ON %s USING (%s)', p.polname, r.rel, expr);
			END IF;
			IF check_expr IS DISTINCT FROM p.wcheck THEN
				EXECUTE format('ALTER POLICY %I ON %s WITH CHECK (%s)', p.polname, r.rel, check_expr);
			END IF;
		END LOOP;
	END LOOP;

	-- 2. Foreign keys are dropped and put back once every table is in
	-- place: Citus would otherwise convert the tables that reference a new
	-- reference table on its own, in an order of its choosing.
	FOR p IN
		SELECT con.conrelid::regclass AS rel, con.conname, pg_get_constraintdef(con.oid) AS def
		FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
		WHERE con.contype = 'f' AND NOT EXISTS (SELECT FROM pg_dist_partition d WHERE d.logicalrelid = con.conrelid)
		  AND (c.relnamespace = 'dalgo'::regnamespace OR con.confrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'dalgo'::regnamespace)
			   OR con.conrelid::regclass::text = ANY (tenant_tables))
		ORDER BY 1, 2
	LOOP
		fkeys := fkeys || format('ALTER TABLE %s ADD CONSTRAINT %I %s', p.rel, p.conname, p.def);
		EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', p.rel, p.conname);
		-- The workers' copies of dalgo's tables (from their CREATE EXTENSION)
		-- too: putting the key back reaches every node.
		PERFORM run_command_on_workers(format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', p.rel, p.conname));
	END LOOP;

	-- 3. Shared tables first: foreign keys point at them.
	FOREACH t IN ARRAY reference_tables LOOP
		rel := ('dalgo.' || quote_ident(t))::regclass;
		IF NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = rel) THEN
			PERFORM create_reference_table(rel);
			PERFORM dalgo_internal.citus_drop_local_copy(rel);
		END IF;
		table_name := rel; distribution := 'reference'; RETURN NEXT;
	END LOOP;

	-- 4. Tenant tables by organization_id.  Citus wants the distribution
	-- column in every primary key and unique constraint: (id) becomes
	-- (organization_id, id).
	FOREACH t IN ARRAY tenant_tables LOOP
		rel := CASE WHEN t LIKE '%.%' THEN t::regclass ELSE ('dalgo.' || quote_ident(t))::regclass END;
		IF NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = rel) THEN
			-- audit_logs: Citus refuses NULL in a distribution column, so changes
			-- outside any organization are recorded under the nil uuid (the
			-- audit writer does the same on a cluster).
			IF rel = 'dalgo.audit_logs'::regclass THEN
				ALTER TABLE dalgo.audit_logs DISABLE TRIGGER append_only;
				UPDATE dalgo.audit_logs SET organization_id = '00000000-0000-0000-0000-000000000000'
					WHERE organization_id IS NULL;
				ALTER TABLE dalgo.audit_logs ENABLE TRIGGER append_only;
			END IF;
			FOR p IN SELECT con.conname, con.contype,
							array_agg(a.attname ORDER BY k.ord) AS cols
					 FROM pg_constraint con
					 CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
					 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
					 WHERE con.conrelid = rel AND con.contype IN ('p', 'u')
					 GROUP BY con.conname, con.contype
			LOOP
				CONTINUE WHEN 'organization_id' = ANY (p.cols);
				EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', rel, p.conname);
				EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s (organization_id, %s)', rel, p.conname,
							   CASE p.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END,
							   (SELECT string_agg(quote_ident(c), ', ') FROM unnest(p.cols) c));
			END LOOP;
			-- Unique indexes that back no constraint (partial ones): the same.
			FOR p IN
				SELECT i.indexrelid::regclass AS idx, pg_get_indexdef(i.indexrelid) AS def
				FROM pg_index i
				WHERE i.indrelid = rel AND i.indisunique
				  AND NOT EXISTS (SELECT FROM pg_constraint con WHERE con.conindid = i.indexrelid)
				  AND NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = 'organization_id'
								  AND a.attnum = ANY (i.indkey))
			LOOP
				EXECUTE format('DROP INDEX %s', p.idx);
				EXECUTE regexp_replace(p.def, ' USING (\w+) \(', ' USING \1 (organization_id, ');
			END LOOP;
			IF distributed = '{}' THEN
				PERFORM create_distributed_table(rel, 'organization_id', colocate_with => 'none');
			ELSE
				PERFORM create_distributed_table(rel, 'organization_id', colocate_with => distributed[1]::text);
			END IF;
			PERFORM dalgo_internal.citus_drop_local_copy(rel);
		END IF;
		distributed := distributed || rel;
		table_name := rel; distribution := 'hash(organization_id)'; RETURN NEXT;
	END LOOP;

	-- 5. The foreign keys, now between Citus tables.
	FOREACH t IN ARRAY fkeys LOOP
		EXECUTE t;
	END LOOP;
END
$fn$;
COMMENT ON FUNCTION dalgo.distribute() IS
	'Citus: distribute dalgo''s tables (users, organizations, organization_members, api_keys as reference tables, tenant tables and toolkit tables with organization_id by organization_id, co-located) with policies Citus accepts; run once on the coordinator';

-- citus runs now: active_run() takes the organization (single-shard
-- queries on a cluster) and is PL/pgSQL (Citus cannot plan an SQL
-- function's parameters over distributed tables); run_now() locks the
-- target by (organization_id, id); wait_for_run() reads one run table.
DROP FUNCTION dalgo_internal.active_run(dalgo.run_kind, uuid);
CREATE FUNCTION dalgo_internal.active_run(run_kind dalgo.run_kind, organization_id uuid, target_id uuid) RETURNS uuid
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	rid uuid;
BEGIN
	IF run_kind = 'sync' THEN
		SELECT r.id INTO rid FROM dalgo.sync_runs r
		WHERE r.organization_id = active_run.organization_id AND r.source_id = target_id
		  AND r.status IN ('pending', 'running') AND r.deleted_at IS NULL
		LIMIT 1;
	ELSE
		SELECT r.id INTO rid FROM dalgo.outputs o
		JOIN dalgo.transformation_runs r ON r.transformation_id = o.transformation_id AND r.organization_id = o.organization_id
		LEFT JOIN dalgo.schedules s ON s.output_id = o.id AND s.organization_id = o.organization_id
		WHERE o.organization_id = active_run.organization_id AND o.id = target_id AND r.status IN ('pending', 'running')
		  AND (r.details->>'output_id' = o.id::text OR r.details->>'schedule_id' = s.id::text)
		LIMIT 1;
	END IF;
	RETURN rid;
END
$$;
COMMENT ON FUNCTION dalgo_internal.active_run(dalgo.run_kind, uuid, uuid) IS
	'Internal: the pending or running run of a source (sync) or an output (output) of an organization, if any';
REVOKE ALL ON FUNCTION dalgo_internal.active_run(dalgo.run_kind, uuid, uuid) FROM PUBLIC;
CREATE OR REPLACE FUNCTION dalgo_internal.run_now(run_kind dalgo.run_kind, target_id uuid, wait boolean) RETURNS uuid
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
	src dalgo.sources;
	o dalgo.outputs;
	tid uuid;
	rid uuid;
	connector boolean := false;
	noun text := CASE WHEN run_kind = 'sync' THEN 'source' ELSE 'output' END;
BEGIN
	IF run_kind = 'sync' THEN
		SELECT * INTO src FROM dalgo.sources x WHERE x.id = target_id AND x.deleted_at IS NULL;
		org := src.organization_id;
		connector := dalgo_internal.synced_by_connector(src.config);
	ELSE
		SELECT * INTO o FROM dalgo.outputs x WHERE x.id = target_id AND x.deleted_at IS NULL;
		org := o.organization_id;
		SELECT x.id INTO tid FROM dalgo.transformations x
		WHERE x.id = o.transformation_id AND x.organization_id = org AND x.deleted_at IS NULL;
	END IF;
	IF org IS NULL OR NOT dalgo.caller_may(org, 'viewer') OR (run_kind = 'output' AND tid IS NULL) THEN
		RAISE EXCEPTION '% % does not exist', noun, target_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT dalgo.caller_may(org, 'member') THEN
		RAISE EXCEPTION 'running a % now needs the member role', CASE WHEN run_kind = 'sync' THEN 'sync' ELSE 'refresh' END
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF wait AND connector THEN
		RAISE EXCEPTION 'a % source is synced by a connector, which sees the run only once this transaction commits', src.source_type
			USING ERRCODE = 'feature_not_supported',
				  HINT = 'Call sync_now with wait => false, commit, and read the run in dalgo.sync_runs.';
	END IF;
	IF wait AND src.source_type IN ('google_sheets', 'api') THEN
		RAISE EXCEPTION 'a % source is fetched by a run worker, which sees the run only once this transaction commits', src.source_type
			USING ERRCODE = 'feature_not_supported',
				  HINT = 'Call sync_now with wait => false, commit, and read the run in dalgo.sync_runs or dalgo.run_progress().';
	END IF;
	IF wait AND current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'wait => true needs READ COMMITTED: the call must see the run finish'
			USING ERRCODE = 'feature_not_supported';
	END IF;
	rid := dalgo_internal.active_run(run_kind, org, target_id);
	IF rid IS NULL THEN
		BEGIN
			IF run_kind = 'sync' THEN
				PERFORM FROM dalgo.sources x WHERE x.organization_id = org AND x.id = target_id FOR UPDATE;
			ELSE
				PERFORM FROM dalgo.outputs x WHERE x.organization_id = org AND x.id = target_id FOR UPDATE;
			END IF;
			-- Checked again under the lock: a run committed while we waited for it.
			rid := dalgo_internal.active_run(run_kind, org, target_id);
			IF rid IS NOT NULL THEN
				RAISE EXCEPTION USING ERRCODE = 'DL001';	-- gives the lock back
			END IF;
		EXCEPTION WHEN SQLSTATE 'DL001' THEN
			NULL;
		END;
	END IF;
	IF rid IS NOT NULL THEN
		RAISE NOTICE 'a run of % % is already pending or running: %', noun, target_id, rid;
		IF wait THEN
			PERFORM dalgo_internal.wait_for_run(run_kind, rid);
		END IF;
		RETURN rid;
	END IF;
	-- Quotas refuse the call itself (the worker checks them again).
	PERFORM dalgo_internal.check_run_quota(org);
	IF run_kind = 'sync' THEN
		INSERT INTO dalgo.sync_runs (organization_id, source_id, status, triggered_by_id, details)
		VALUES (org, target_id, 'pending', dalgo.current_user_id(), '{"on_demand": true}')
		RETURNING id INTO rid;
	ELSE
		INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, triggered_by_id, details)
		VALUES (org, tid, 'pending', dalgo.current_user_id(), jsonb_build_object('on_demand', true, 'output_id', target_id))
		RETURNING id INTO rid;
	END IF;
	IF wait THEN
		PERFORM dalgo_internal.execute_claimed(ARRAY[rid], ARRAY[run_kind]);
	ELSIF connector THEN
		PERFORM pg_notify('dalgo_sync', '');
	ELSE
		PERFORM dalgo_internal.wake_scheduler_at_commit();
	END IF;
	RETURN rid;
END
$$;
COMMENT ON FUNCTION dalgo_internal.run_now(dalgo.run_kind, uuid, boolean) IS
	'Internal: queue (or, with wait, run here) a sync of a source or a refresh of an output without a schedule, under the scheduler''s rules; returns the run, or the run already pending or running';

CREATE OR REPLACE FUNCTION dalgo_internal.wait_for_run(run_kind dalgo.run_kind, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	LOOP
		IF run_kind = 'sync' THEN
			EXIT WHEN NOT EXISTS (SELECT FROM dalgo.sync_runs r WHERE r.id = run_id AND r.status IN ('pending', 'running'));
		ELSE
			EXIT WHEN NOT EXISTS (SELECT FROM dalgo.transformation_runs r WHERE r.id = run_id AND r.status IN ('pending', 'running'));
		END IF;
		PERFORM pg_sleep(0.05);
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo_internal.wait_for_run(dalgo.run_kind, uuid) IS
	'Internal: wait until a run another transaction committed is no longer pending or running';

-- citus csv: on a Citus shard check_csv_source checks the path's form only
-- (the files are on the coordinator, where the run reads them).
CREATE OR REPLACE FUNCTION dalgo_internal.check_csv_source() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.source_type <> 'csv' OR NEW.deleted_at IS NOT NULL OR NOT coalesce(NEW.config ? 'path', false) THEN
		RETURN NEW;
	END IF;
	IF TG_OP = 'UPDATE' AND OLD.source_type = 'csv' AND OLD.deleted_at IS NULL
	   AND (NEW.organization_id, NEW.config->'path') IS NOT DISTINCT FROM (OLD.organization_id, OLD.config->'path') THEN
		RETURN NEW;
	END IF;
	IF jsonb_typeof(NEW.config->'path') <> 'string' THEN
		RAISE EXCEPTION 'a csv source''s config.path must be a string' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- With csv sources disabled only the form of the path can be checked;
	-- so too on a Citus shard (sources_102008, on a worker): the files are
	-- on the coordinator, where runs read them and check them again.
	IF current_setting('dalgo.csv_dir') = '' OR TG_TABLE_NAME ~ '_[0-9]+$' THEN
		IF NEW.config->>'path' = '' OR NEW.config->>'path' LIKE '/%' OR '..' = ANY (string_to_array(NEW.config->>'path', '/')) THEN
			RAISE EXCEPTION 'csv path "%" must be relative to the organization''s csv directory and must not contain ".."',
				NEW.config->>'path' USING ERRCODE = 'insufficient_privilege';
		END IF;
	ELSE
		PERFORM dalgo_internal.csv_path(NEW.organization_id, NEW.config->>'path');
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo_internal.check_csv_source() IS
	'BEFORE trigger on sources: a csv source''s config.path must be a readable file in its organization''s csv directory (dalgo.csv_dir/org_<hex id>/); on a Citus shard only its form is checked';

-- citus runs here: execute_claimed joins a run to its source on
-- (organization_id, id), and run_schedule_now locks and updates its schedule
-- by (organization_id, id) with the time computed once (single-shard
-- statements on a Citus cluster, which may lock rows and take it).
CREATE OR REPLACE FUNCTION dalgo_internal.execute_claimed(claimed_runs uuid[], kinds dalgo.run_kind[]) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	msg text;
	n integer := 0;
BEGIN
	FOR i IN 1..coalesce(array_length(claimed_runs, 1), 0) LOOP
		CONTINUE WHEN claimed_runs[i] IS NULL;
		-- HTTP sources are fetched only in the run workers: left pending for them.
		-- (A statement of its own: Citus cannot plan a distributed subquery
		-- in an expression without FROM.)
		IF kinds[i] = 'sync' THEN
			PERFORM FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.organization_id = r.organization_id AND s.id = r.source_id
			WHERE r.id = claimed_runs[i] AND s.source_type IN ('google_sheets', 'api');
			CONTINUE WHEN FOUND;
		END IF;
		PERFORM dalgo_internal.start_scheduled_run(kinds[i], claimed_runs[i]);
		BEGIN
			PERFORM dalgo_internal.execute_scheduled_run(kinds[i], claimed_runs[i]);
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
			PERFORM dalgo_internal.fail_scheduled_run(kinds[i], claimed_runs[i], msg);
		END;
		n := n + 1;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.execute_claimed(uuid[], dalgo.run_kind[]) IS 'Internal: execute claimed runs in this session; syncs of google_sheets and api sources stay pending for the run workers';

CREATE OR REPLACE FUNCTION dalgo.run_schedule_now(schedule_id uuid) RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s dalgo.schedules;
	c record;
	stamp timestamptz;
BEGIN
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = run_schedule_now.schedule_id AND x.deleted_at IS NULL;
	IF NOT FOUND OR NOT dalgo.caller_may(s.organization_id, 'admin') THEN
		RAISE EXCEPTION 'schedule % does not exist or you are not an admin of its organization', schedule_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- Make it due now and claim it like the scheduler would (a concurrent claim wins the lock).
	-- (By (organization_id, id), and the time computed once: on a Citus
	-- cluster a single-shard statement, which may lock rows.)
	PERFORM FROM dalgo.schedules x WHERE x.organization_id = s.organization_id AND x.id = s.id FOR UPDATE;
	stamp := clock_timestamp();
	UPDATE dalgo.schedules x SET next_run_at = stamp, is_active = true
	WHERE x.organization_id = s.organization_id AND x.id = s.id;
	SELECT * INTO c FROM dalgo_internal.claim_due_schedules(stamp, 1, s.id);
	IF c.outcome = 'queued' THEN
		PERFORM dalgo_internal.execute_claimed(ARRAY[c.run_id], ARRAY[c.run_kind]);
	END IF;
	stamp := CASE WHEN s.is_active THEN dalgo.next_run(s.frequency, s.run_at_time, s.run_at_day, s.timezone, now()) END;
	UPDATE dalgo.schedules x SET is_active = s.is_active, next_run_at = stamp
	WHERE x.organization_id = s.organization_id AND x.id = s.id;
	RETURN c.run_id;
END
$$;
COMMENT ON FUNCTION dalgo.run_schedule_now(uuid) IS 'Run a schedule now, synchronously (admins of its organization); returns the run id';

-- citus warehouse: on a Citus cluster the warehouse's role and schema are
-- the coordinator's alone (not propagated: Citus also refused the role once
-- the transaction had read a distributed table in parallel), and a shard of
-- warehouse_connections on a worker makes no warehouse there.
CREATE OR REPLACE FUNCTION dalgo.ensure_warehouse(organization_id uuid) RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	role_name text := dalgo_internal.warehouse_role_name(organization_id);
	r pg_roles;
	problem text;
	-- On a Citus coordinator the warehouse is the coordinator's alone
	-- (docs/scaling.md): its role and schema are not sent to the workers,
	-- which would also fail once the transaction read a distributed table
	-- in parallel ("cannot create or modify role because there was a
	-- parallel operation").  NULL without Citus.
	ddl_propagation text := current_setting('citus.enable_ddl_propagation', true);
BEGIN
	IF organization_id IS NULL THEN
		RAISE EXCEPTION 'organization_id is required' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF ddl_propagation IS NOT NULL THEN
		PERFORM set_config('citus.enable_ddl_propagation', 'off', true);
	END IF;
	IF NOT dalgo.caller_may(organization_id, 'viewer')
	   OR NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = ensure_warehouse.organization_id AND o.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'organization % does not exist or you are not a member', organization_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- Two first uses at once (two syncs of a new organization): the second
	-- waits for the first and then finds its role and schema, instead of
	-- failing on pg_authid's unique name.
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name)
	   OR NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = schema_name) THEN
		PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('dalgo warehouse ' || organization_id::text, 0));
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
	IF ddl_propagation IS NOT NULL THEN
		PERFORM set_config('citus.enable_ddl_propagation', ddl_propagation, true);
	END IF;
	INSERT INTO dalgo.warehouse_connections (organization_id, database_name, is_connected, last_connected_at)
		SELECT ensure_warehouse.organization_id, current_database(), true, now()
		WHERE NOT EXISTS (SELECT FROM dalgo.warehouse_connections w
						  WHERE w.organization_id = ensure_warehouse.organization_id AND w.deleted_at IS NULL);
	RETURN schema_name;
END
$$;
COMMENT ON FUNCTION dalgo.ensure_warehouse(uuid) IS
	'The organization''s warehouse schema (org_<id>, owned by role dalgo_wh_<id>), created with its warehouse_connections row on first use; a role or schema of that name that dalgo would not have made (login, superuser, role memberships, another owner...) is refused, never adopted';

CREATE OR REPLACE FUNCTION dalgo_internal.drop_warehouse(organization_id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	SET client_min_messages = warning	-- not a NOTICE per dropped table
AS $$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	role_name text := dalgo_internal.warehouse_role_name(organization_id);
	owner_name text;
	-- On a Citus node the warehouse is that node's own (ensure_warehouse):
	-- nothing is sent to other nodes.  NULL without Citus.
	ddl_propagation text := current_setting('citus.enable_ddl_propagation', true);
BEGIN
	IF ddl_propagation IS NOT NULL THEN
		PERFORM set_config('citus.enable_ddl_propagation', 'off', true);
	END IF;
	SELECT r.rolname INTO owner_name FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE n.nspname = schema_name;
	-- dalgo drops only a schema it made: one its warehouse role owns.
	IF owner_name = role_name THEN
		EXECUTE pg_catalog.format('DROP SCHEMA %I CASCADE', schema_name);
	ELSIF owner_name IS NOT NULL THEN
		RAISE WARNING 'schema "%" is not owned by the warehouse role "%": left in place', schema_name, role_name;
	END IF;
	IF EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
		EXECUTE pg_catalog.format('DROP OWNED BY %I CASCADE', role_name);
		BEGIN
			EXECUTE pg_catalog.format('DROP ROLE %I', role_name);
		EXCEPTION WHEN dependent_objects_still_exist THEN
			RAISE WARNING 'role "%" is still used in another database: left in place', role_name
				USING DETAIL = SQLERRM;
		END;
	END IF;
	IF ddl_propagation IS NOT NULL THEN
		PERFORM set_config('citus.enable_ddl_propagation', ddl_propagation, true);
	END IF;
END
$$;

CREATE OR REPLACE FUNCTION dalgo_internal.create_warehouse_for_connection() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF dalgo.restoring() THEN RETURN NULL; END IF;	-- restored: the schema is in the dump
	-- On a Citus shard (warehouse_connections_102041, on a worker): the
	-- warehouse lives on the coordinator, where ensure_warehouse() made it.
	IF TG_TABLE_NAME ~ '_[0-9]+$' THEN RETURN NULL; END IF;
	PERFORM dalgo.ensure_warehouse(NEW.organization_id);
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION dalgo_internal.create_warehouse_for_connection() IS 'AFTER INSERT trigger on warehouse_connections: creates the warehouse schema (not on a Citus shard: the warehouse is the coordinator''s)';

-- cy: connector runs and uploads on a Citus cluster.  Row locks on
-- sync_runs taken by queries on one organization's rows (looked up first,
-- then locked and checked again), joins on (organization_id, id), timestamps
-- computed once instead of clock_timestamp() in UPDATEs, no subquery over a
-- distributed table as a PL/pgSQL expression, the staging-table guard on its
-- organization's rows without a dalgo function on the shards, and
-- claim_sync_run's liveness test as conditions instead of target_is_live().
-- The single-node statements are equivalent.
CREATE OR REPLACE FUNCTION dalgo.claim_sync_run() RETURNS dalgo.sync_runs
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	org uuid;
	msg text;
	stamp timestamptz;
BEGIN
	-- Joins on (organization_id, id), the run locked by a query on one
	-- organization's rows, the organization's and source's liveness (what
	-- target_is_live() tells) as conditions, timestamps computed once: on a
	-- Citus cluster these queries run on the organization's shard.
	FOR org IN
		SELECT x.organization_id FROM dalgo.sync_runs x
		JOIN dalgo.sources s ON s.organization_id = x.organization_id AND s.id = x.source_id
		WHERE x.status IN ('pending', 'running') AND dalgo_internal.synced_by_connector(s.config) AND x.deleted_at IS NULL
		GROUP BY x.organization_id
		HAVING bool_or(x.status = 'pending')
		ORDER BY count(*) FILTER (WHERE x.status = 'running'), min(x.created_at) FILTER (WHERE x.status = 'pending'),
				 x.organization_id
	LOOP
		PERFORM FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL;
		CONTINUE WHEN NOT FOUND;
		SELECT x.* INTO r FROM dalgo.sync_runs x
		JOIN dalgo.sources s ON s.organization_id = x.organization_id AND s.id = x.source_id
		WHERE x.status = 'pending' AND x.organization_id = org AND dalgo_internal.synced_by_connector(s.config)
		  AND x.deleted_at IS NULL AND s.deleted_at IS NULL
		ORDER BY x.created_at LIMIT 1 FOR UPDATE OF x SKIP LOCKED;
		IF FOUND THEN
			-- A connector run is a run: the organization's quotas apply, as
			-- to in-database runs (a refused run fails with the quota's message).
			BEGIN
				PERFORM dalgo_internal.check_run_quota(org);
			EXCEPTION WHEN configuration_limit_exceeded THEN
				GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
				stamp := clock_timestamp();
				UPDATE dalgo.sync_runs x SET status = 'failed', completed_at = stamp, error_message = msg
				WHERE x.organization_id = org AND x.id = r.id;
				CONTINUE;
			END;
			stamp := clock_timestamp();
			UPDATE dalgo.sync_runs x SET status = 'running', started_at = stamp
			WHERE x.organization_id = org AND x.id = r.id RETURNING * INTO r;
			-- The load path: the staging table that dalgo.stage_sync_run() creates.
			r.details := r.details || jsonb_build_object('staging_table',
				format('%I.%I', dalgo_internal.warehouse_schema_name(r.organization_id), dalgo_internal.staging_table_name(r.id)));
			RETURN r;
		END IF;
	END LOOP;
	RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION dalgo.complete_sync_run(run_id uuid, rows_synced integer, error_message text DEFAULT NULL,
										details jsonb DEFAULT '{}')
	RETURNS dalgo.sync_runs
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	staged boolean;
	msg text := complete_sync_run.error_message;
	org uuid;
	stamp timestamptz;
BEGIN
	IF jsonb_typeof(coalesce(complete_sync_run.details, '{}')) <> 'object' THEN
		RAISE EXCEPTION 'details must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- Looked up, then locked through its organization (on a Citus cluster a
	-- row lock is taken by a single-shard query only) and checked again.
	SELECT x.organization_id INTO org FROM dalgo.sync_runs x WHERE x.id = complete_sync_run.run_id;
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.organization_id = org AND x.id = complete_sync_run.run_id
	  AND x.status = 'running' AND NOT x.details ? 'upload'
	FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'sync run % is not running (claim it first)', run_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- A run loaded through its staging table: type it and swap it in; any
	-- failure leaves the previous table, fails the run and drops the staging table.
	staged := to_regclass(format('%I.%I', dalgo_internal.warehouse_schema_name(r.organization_id),
								 dalgo_internal.staging_table_name(r.id))) IS NOT NULL;
	IF staged AND msg IS NULL THEN
		BEGIN
			PERFORM dalgo_internal.finish_sync(r.id, dalgo_internal.staging_table_name(r.id));
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
			IF msg = 'a sync is finished in a READ COMMITTED transaction' THEN
				RAISE;
			END IF;
		END;
	END IF;
	IF staged AND msg IS NOT NULL THEN
		PERFORM dalgo_internal.drop_staging_table(r.id);
	END IF;
	-- The keys dalgo's own code reads (the schedule, skips that quotas do not
	-- count, the runner, the load path) are dalgo's: a connector does not set them.
	stamp := clock_timestamp();	-- once (Citus: no volatile function in an UPDATE)
	UPDATE dalgo.sync_runs x SET status = CASE WHEN msg IS NULL THEN 'success' ELSE 'failed' END::dalgo.run_status,
		completed_at = stamp,
		rows_synced = CASE WHEN staged AND msg IS NULL THEN x.rows_synced ELSE complete_sync_run.rows_synced END,
		error_message = msg,
		details = x.details || (coalesce(complete_sync_run.details, '{}')
								- ARRAY['schedule_id', 'skipped', 'runner_pid', 'attempt', 'lag_ms', 'on_demand', 'output_id', 'cancelled',
										  'staging_table', 'upload', 'user_id'])
	WHERE x.organization_id = r.organization_id AND x.id = r.id
	RETURNING * INTO r;
	IF r.status = 'success' THEN
		UPDATE dalgo.sources s SET last_synced_at = now() WHERE s.organization_id = r.organization_id AND s.id = r.source_id;
	END IF;
	RETURN r;
END
$$;

CREATE OR REPLACE FUNCTION dalgo_internal.drop_staging_table(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
	schema_name text;
BEGIN
	-- A statement of its own (on a Citus cluster, a subquery over a
	-- distributed table cannot be a PL/pgSQL expression).
	SELECT r.organization_id INTO org FROM dalgo.sync_runs r WHERE r.id = run_id;
	schema_name := dalgo_internal.warehouse_schema_name(org);
	IF org IS NULL OR to_regclass(format('%I.%I', schema_name, dalgo_internal.staging_table_name(run_id))) IS NULL THEN
		RETURN;
	END IF;
	PERFORM dalgo_internal.warehouse_execute(org,
		format('DROP TABLE %I.%I', schema_name, dalgo_internal.staging_table_name(run_id)));
	PERFORM dalgo_internal.staging_schema_access(org);
END
$$;

CREATE OR REPLACE FUNCTION dalgo_internal.drop_stale_staging_tables(organization_id uuid) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	run uuid;
	n integer := 0;
BEGIN
	FOR run IN SELECT substr(c.relname, 14)::uuid FROM pg_class c
			   WHERE c.relnamespace = to_regnamespace(dalgo_internal.warehouse_schema_name(drop_stale_staging_tables.organization_id))
				 AND c.relkind = 'r' AND c.relname ~ '^_dalgo_stage_[0-9a-f]{32}$'
	LOOP
		-- A statement of its own, on the organization's rows (Citus).
		PERFORM FROM dalgo.sync_runs r
		WHERE r.organization_id = drop_stale_staging_tables.organization_id AND r.id = run AND r.status = 'running';
		CONTINUE WHEN FOUND;
		PERFORM dalgo_internal.warehouse_execute(drop_stale_staging_tables.organization_id,
			format('DROP TABLE %I.%I', dalgo_internal.warehouse_schema_name(drop_stale_staging_tables.organization_id),
				   dalgo_internal.staging_table_name(run)));
		n := n + 1;
	END LOOP;
	IF n > 0 THEN
		PERFORM dalgo_internal.staging_schema_access(organization_id);
	END IF;
	RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION dalgo_internal.finish_sync(run_id uuid, staging_table text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	src dalgo.sources;
	schema_name text;
	stage_name text := dalgo_internal.staging_table_name(run_id);
	build_name text := '_dalgo_sync_' || replace(run_id::text, '-', '');
	parts text[];
	rel oid;
	c pg_class;
	infer boolean;
	cols record;
	names text[];
	types text[];
	kinds integer[];
	sel text;
	changed boolean := false;
	wh_owned boolean;
	trig name;
	target text;
	n bigint;
	stamp timestamptz;
	org uuid;
BEGIN
	-- Under a transaction snapshot, rows that a loader committed while this
	-- waited for the staging table's lock would be silently missing.
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'a sync is finished in a READ COMMITTED transaction'
			USING ERRCODE = 'invalid_transaction_state',
				  DETAIL = format('This transaction is %s: rows committed into the staging table after its snapshot would be lost.',
								  upper(current_setting('transaction_isolation')));
	END IF;
	-- The row is locked through its organization: on a Citus cluster a row
	-- lock is taken by a single-shard query only.
	SELECT x.organization_id INTO org FROM dalgo.sync_runs x WHERE x.id = finish_sync.run_id;
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.organization_id = org AND x.id = finish_sync.run_id FOR UPDATE;
	IF NOT FOUND OR r.status <> 'running' THEN
		RAISE EXCEPTION 'sync run % is not running', run_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT * INTO src FROM dalgo.sources x
	WHERE x.id = r.source_id AND x.organization_id = r.organization_id AND x.deleted_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'the source of run % no longer exists', run_id USING ERRCODE = 'undefined_object';
	END IF;
	schema_name := dalgo_internal.warehouse_schema_name(src.organization_id);

	-- The staging table is this run's, in this organization's warehouse,
	-- whatever name the caller passed: a plain table owned by the warehouse role.
	BEGIN
		parts := parse_ident(staging_table);
	EXCEPTION WHEN invalid_parameter_value THEN
		parts := NULL;
	END;
	IF parts IS NULL OR NOT (parts = ARRAY[stage_name] OR parts = ARRAY[schema_name, stage_name]) THEN
		RAISE EXCEPTION '"%" is not the staging table of sync run %', staging_table, run_id
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('A run''s staging table is %I.%I.', schema_name, stage_name);
	END IF;
	rel := to_regclass(format('%I.%I', schema_name, stage_name));
	IF rel IS NULL THEN
		RAISE EXCEPTION 'sync run % has no staging table', run_id USING ERRCODE = 'undefined_table';
	END IF;
	EXECUTE format('LOCK TABLE %I.%I IN ACCESS EXCLUSIVE MODE', schema_name, stage_name);
	SELECT * INTO c FROM pg_class x WHERE x.oid = rel;
	-- Made by dalgo: owned by the warehouse role, or by a superuser (a run
	-- worker that created it directly); never by another role.
	wh_owned := c.relowner = (SELECT o.oid FROM pg_roles o WHERE o.rolname = dalgo_internal.warehouse_role_name(src.organization_id));
	IF c.relkind <> 'r' OR c.relhassubclass OR c.relispartition
	   OR NOT (wh_owned OR EXISTS (SELECT FROM pg_roles o WHERE o.oid = c.relowner AND o.rolsuper)) THEN
		RAISE EXCEPTION 'the staging table of sync run % is not a plain table of the warehouse role', run_id
			USING ERRCODE = 'wrong_object_type';
	END IF;
	IF NOT wh_owned THEN
		-- A superuser's staging table is copied (never renamed into place),
		-- read by the warehouse role.
		changed := true;
		EXECUTE format('GRANT SELECT ON %I.%I TO %I', schema_name, stage_name, dalgo_internal.warehouse_role_name(src.organization_id));
	END IF;

	-- Types: each text column becomes the first of boolean, bigint, numeric,
	-- date, timestamptz, jsonb that every non-empty value converts to for
	-- certain, else stays text.  postgres sources keep their declared types
	-- unless config.infer_types is true; the others infer unless it is false.
	infer := CASE jsonb_typeof(src.config->'infer_types') WHEN 'boolean' THEN (src.config->>'infer_types')::boolean
				  ELSE src.source_type <> 'postgres' END;
	SELECT array_agg(a.attname::text ORDER BY a.attnum), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
	INTO names, types
	FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped;
	IF names IS NULL THEN
		RAISE EXCEPTION 'the staging table of sync run % has no columns', run_id USING ERRCODE = 'invalid_table_definition';
	END IF;
	IF infer AND 'text' = ANY (types) THEN
		EXECUTE format('SELECT ARRAY[%s] FROM %I.%I',
			(SELECT string_agg(CASE WHEN t = 'text' THEN format('bit_and(dalgo_internal.value_kinds(%I))', nm) ELSE 'NULL::integer' END,
							   ', ' ORDER BY i)
			 FROM unnest(names, types) WITH ORDINALITY u(nm, t, i)),
			schema_name, stage_name) INTO kinds;
		FOR i IN 1..array_length(names, 1) LOOP
			CONTINUE WHEN types[i] <> 'text' OR kinds[i] IS NULL OR kinds[i] = 0;
			types[i] := CASE WHEN kinds[i] & 1 <> 0 THEN 'boolean' WHEN kinds[i] & 2 <> 0 THEN 'bigint'
							 WHEN kinds[i] & 4 <> 0 THEN 'numeric' WHEN kinds[i] & 8 <> 0 THEN 'date'
							 WHEN kinds[i] & 16 <> 0 THEN 'timestamptz' ELSE 'jsonb' END;
			changed := true;
		END LOOP;
	END IF;

	IF to_regclass(format('%I.%I', schema_name, build_name)) IS NOT NULL THEN
		PERFORM dalgo_internal.warehouse_execute(src.organization_id, format('DROP TABLE %I.%I', schema_name, build_name));
	END IF;
	IF changed THEN
		sel := (SELECT string_agg(CASE WHEN t = format_type(a.atttypid, a.atttypmod) THEN format('%I', nm)
									   ELSE format('NULLIF(%I, %L)::%s AS %I', nm, '', t, nm) END, ', ' ORDER BY a.attnum)
				FROM unnest(names, types) u(nm, t) JOIN pg_attribute a ON a.attrelid = rel AND a.attname = u.nm);
		BEGIN
			n := dalgo_internal.warehouse_execute(src.organization_id,
				format('CREATE TABLE %I.%I AS SELECT %s FROM %I.%I', schema_name, build_name, sel, schema_name, stage_name));
		EXCEPTION WHEN data_exception THEN
			-- A value the checks let through after all: that column stays text.
			FOR i IN 1..array_length(names, 1) LOOP
				CONTINUE WHEN types[i] IN ('text', (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
													 WHERE a.attrelid = rel AND a.attname = names[i]));
				BEGIN
					EXECUTE format('SELECT count(NULLIF(%I, %L)::%s) FROM %I.%I', names[i], '', types[i], schema_name, stage_name);
				EXCEPTION WHEN data_exception THEN
					types[i] := 'text';
				END;
			END LOOP;
			sel := (SELECT string_agg(CASE WHEN t = format_type(a.atttypid, a.atttypmod) THEN format('%I', nm)
										   ELSE format('NULLIF(%I, %L)::%s AS %I', nm, '', t, nm) END, ', ' ORDER BY a.attnum)
					FROM unnest(names, types) u(nm, t) JOIN pg_attribute a ON a.attrelid = rel AND a.attname = u.nm);
			n := dalgo_internal.warehouse_execute(src.organization_id,
				format('CREATE TABLE %I.%I AS SELECT %s FROM %I.%I', schema_name, build_name, sel, schema_name, stage_name));
		END;
		IF wh_owned THEN
			PERFORM dalgo_internal.warehouse_execute(src.organization_id, format('DROP TABLE %I.%I', schema_name, stage_name));
		ELSE
			EXECUTE format('DROP TABLE %I.%I', schema_name, stage_name);
		END IF;
	ELSE
		-- Nothing to convert: the staging table itself becomes the build,
		-- without what it granted to its writers.
		EXECUTE format('SELECT count(*) FROM %I.%I', schema_name, stage_name) INTO n;
		FOR trig IN SELECT t.tgname FROM pg_trigger t WHERE t.tgrelid = rel AND NOT t.tgisinternal LOOP
			EXECUTE format('DROP TRIGGER %I ON %I.%I', trig, schema_name, stage_name);
		END LOOP;
		EXECUTE format('REVOKE ALL ON %I.%I FROM PUBLIC, dalgo_service, dalgo_authenticated', schema_name, stage_name);
		PERFORM dalgo_internal.warehouse_execute(src.organization_id,
			format('ALTER TABLE %I.%I RENAME TO %I', schema_name, stage_name, build_name));
	END IF;
	PERFORM dalgo_internal.staging_schema_access(src.organization_id);

	target := coalesce(src.warehouse_table_name, 'source_' || left(replace(src.id::text, '-', ''), 12));
	PERFORM dalgo_internal.adopt_warehouse_tables(src.organization_id);
	PERFORM dalgo_internal.check_warehouse_quota(src.organization_id, target);
	PERFORM dalgo_internal.swap_warehouse_table(src.organization_id, build_name, target);
	PERFORM dalgo_internal.register_warehouse_table(src.organization_id, target, src.id, NULL, n);

	-- source_schemas: columns, types, order and nullability of what was synced.
	DELETE FROM dalgo.source_schemas x WHERE x.organization_id = src.organization_id AND x.source_id = src.id;
	INSERT INTO dalgo.source_schemas (organization_id, source_id, column_name, column_type, column_order, is_nullable)
	SELECT src.organization_id, src.id, a.attname, format_type(a.atttypid, a.atttypmod), a.attnum, NOT a.attnotnull
	FROM pg_attribute a
	WHERE a.attrelid = to_regclass(format('%I.%I', schema_name, target)) AND a.attnum > 0 AND NOT a.attisdropped;

	UPDATE dalgo.sources x SET last_synced_at = now(), warehouse_table_name = target
	WHERE x.organization_id = src.organization_id AND x.id = src.id;
	-- completed_at computed once: Citus refuses a volatile function in an UPDATE.
	stamp := clock_timestamp();
	UPDATE dalgo.sync_runs x SET status = 'success', completed_at = stamp, rows_synced = least(n, 2147483647),
		error_message = NULL
	WHERE x.organization_id = src.organization_id AND x.id = finish_sync.run_id;
END
$$;

CREATE OR REPLACE FUNCTION dalgo_internal.guard_staging_table() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	run uuid;
	org uuid;
BEGIN
	IF TG_TABLE_NAME ~ '^_dalgo_stage_[0-9a-f]{32}$' AND TG_TABLE_SCHEMA ~ '^org_[0-9a-f]{32}$' THEN
		run := substr(TG_TABLE_NAME, 14)::uuid;
		org := substr(TG_TABLE_SCHEMA, 5)::uuid;
	END IF;
	-- The run of this name, of the schema's organization (its warehouse
	-- schema is org_<id>): on a Citus cluster a query on one organization's
	-- shard, which calls no dalgo function there.
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.organization_id = org AND x.id = run AND x.status = 'running';
	IF NOT FOUND
	   OR NOT dalgo.caller_may(r.organization_id, 'member')
	   OR (CASE WHEN r.details ? 'upload' THEN dalgo.current_user_id() IS DISTINCT FROM (r.details->>'user_id')::uuid
			   ELSE dalgo.current_user_id() IS NOT NULL END) THEN
		RAISE EXCEPTION 'permission denied for staging table %', TG_TABLE_NAME
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'Only the run''s own loader (the uploader, or the connector that claimed it) writes its staging table, while the run is running.';
	END IF;
	RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION dalgo_internal.create_staging_table(run_id uuid, columns text[], column_types text[], writer text) RETURNS text
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
	schema_name text;
	stage_name text := dalgo_internal.staging_table_name(run_id);
	cols text;
BEGIN
	SELECT r.organization_id INTO org FROM dalgo.sync_runs r WHERE r.id = run_id;	-- a statement of its own (Citus)
	IF writer NOT IN ('dalgo_service', 'dalgo_authenticated') THEN
		RAISE EXCEPTION 'unknown staging table writer %', writer;
	END IF;
	IF columns IS NULL OR cardinality(columns) = 0 OR cardinality(columns) > 1600 OR array_ndims(columns) <> 1 THEN
		RAISE EXCEPTION 'a staging table needs 1 to 1600 columns' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF column_types IS NOT NULL AND (cardinality(column_types) <> cardinality(columns)
									 OR EXISTS (SELECT FROM unnest(column_types) t WHERE t IS NULL OR t NOT IN ('text', 'jsonb'))) THEN
		RAISE EXCEPTION 'column_types must give text or jsonb for each column' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF EXISTS (SELECT FROM unnest(columns) c WHERE c IS NULL OR c = '' OR octet_length(c) >= 64)
	   OR (SELECT count(DISTINCT c) FROM unnest(columns) c) <> cardinality(columns) THEN
		RAISE EXCEPTION 'column names must be distinct and 1 to 63 bytes long' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	schema_name := dalgo.ensure_warehouse(org);
	SELECT string_agg(format('%I %s', c, coalesce(column_types[i], 'text')), ', ' ORDER BY i) INTO cols
	FROM unnest(columns) WITH ORDINALITY u(c, i);
	IF to_regclass(format('%I.%I', schema_name, stage_name)) IS NOT NULL THEN
		PERFORM dalgo_internal.warehouse_execute(org, format('DROP TABLE %I.%I', schema_name, stage_name));
	END IF;
	PERFORM dalgo_internal.warehouse_execute(org, format('CREATE TABLE %I.%I (%s)', schema_name, stage_name, cols));
	EXECUTE format('CREATE TRIGGER guard_staging BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I.%I '
				   'FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.guard_staging_table()', schema_name, stage_name);
	EXECUTE format('CREATE TRIGGER check_staging_size AFTER INSERT ON %I.%I '
				   'FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.check_staging_size()', schema_name, stage_name);
	EXECUTE format('GRANT INSERT ON %I.%I TO %I', schema_name, stage_name, writer);
	PERFORM dalgo_internal.staging_schema_access(org);
	RETURN format('%I.%I', schema_name, stage_name);
END
$$;

CREATE OR REPLACE FUNCTION dalgo.stage_sync_run(run_id uuid, columns text[], column_types text[] DEFAULT NULL) RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	org uuid;
BEGIN
	-- Looked up, then locked through its organization: on a Citus cluster a
	-- row lock is taken by a single-shard query only.
	SELECT x.organization_id INTO org FROM dalgo.sync_runs x WHERE x.id = stage_sync_run.run_id;
	SELECT x.* INTO r FROM dalgo.sync_runs x JOIN dalgo.sources s ON s.id = x.source_id AND s.organization_id = x.organization_id
	WHERE x.organization_id = org AND x.id = stage_sync_run.run_id AND x.status = 'running' AND NOT x.details ? 'upload'
	  AND dalgo_internal.synced_by_connector(s.config) AND s.deleted_at IS NULL
	FOR UPDATE OF x;
	IF NOT FOUND OR dalgo.current_user_id() IS NOT NULL OR NOT dalgo.caller_may(r.organization_id, 'admin') THEN
		RAISE EXCEPTION 'sync run % is not a running connector run (claim it first)', run_id
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM dalgo_internal.drop_stale_staging_tables(r.organization_id);
	RETURN dalgo_internal.create_staging_table(r.id, columns, column_types, 'dalgo_service');
END
$$;

CREATE OR REPLACE FUNCTION dalgo.begin_upload(source_id uuid, columns text[]) RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	src dalgo.sources;
	me uuid := dalgo.current_user_id();
	old uuid;
	run uuid;
	schema_name text;
	stamp timestamptz;
BEGIN
	SELECT * INTO src FROM dalgo.sources s WHERE s.id = begin_upload.source_id AND s.deleted_at IS NULL;
	IF NOT FOUND OR me IS NULL OR NOT dalgo.caller_may(src.organization_id, 'member') THEN
		RAISE EXCEPTION 'source % does not exist or you may not load it', source_id
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'An upload needs a signed-in member (or admin, owner) of the source''s organization.';
	END IF;
	-- One open upload per source: a new one abandons the previous.  On the
	-- organization's rows, the timestamp computed once: on a Citus cluster,
	-- single-shard statements (row locks, no volatile function in an UPDATE).
	FOR old IN SELECT r.id FROM dalgo.sync_runs r
			   WHERE r.organization_id = src.organization_id AND r.source_id = src.id AND r.status = 'running'
				 AND r.details ? 'upload'
			   FOR UPDATE LOOP
		PERFORM dalgo_internal.drop_staging_table(old);
		stamp := clock_timestamp();
		UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stamp,
			error_message = 'the upload was replaced by a newer one'
		WHERE r.organization_id = src.organization_id AND r.id = old;
	END LOOP;
	PERFORM dalgo_internal.drop_stale_staging_tables(src.organization_id);
	-- An upload is a run: the organization's quotas apply.
	PERFORM dalgo_internal.check_run_quota(src.organization_id);
	schema_name := dalgo.ensure_warehouse(src.organization_id);
	run := gen_random_uuid();
	INSERT INTO dalgo.sync_runs (id, organization_id, source_id, status, started_at, details)
	VALUES (run, src.organization_id, src.id, 'running', clock_timestamp(),
			jsonb_build_object('upload', true, 'user_id', me,
							   'staging_table', format('%I.%I', schema_name, dalgo_internal.staging_table_name(run))));
	RETURN dalgo_internal.create_staging_table(run, columns, NULL, 'dalgo_authenticated');
END
$$;

CREATE OR REPLACE FUNCTION dalgo.finish_upload(source_id uuid) RETURNS dalgo.sync_runs
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.sync_runs;
	msg text;
	org uuid;
	me uuid := dalgo.current_user_id();
	stamp timestamptz;
BEGIN
	-- The source's organization first, then the run locked on its rows: on
	-- a Citus cluster a row lock is taken by a single-shard query only (a
	-- run's organization is its source's).
	SELECT s.organization_id INTO org FROM dalgo.sources s WHERE s.id = finish_upload.source_id;
	IF org IS NOT NULL AND dalgo.caller_may(org, 'member') THEN
		SELECT x.* INTO r FROM dalgo.sync_runs x
		WHERE x.organization_id = org AND x.source_id = finish_upload.source_id AND x.status = 'running' AND x.details ? 'upload'
		  AND (x.details->>'user_id')::uuid = me
		FOR UPDATE;
	END IF;
	IF r.id IS NULL THEN
		RAISE EXCEPTION 'you have no upload in progress for source %', source_id
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Start one with dalgo.begin_upload().';
	END IF;
	BEGIN
		PERFORM dalgo_internal.finish_sync(r.id, dalgo_internal.staging_table_name(r.id));
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
		IF msg LIKE 'a sync is finished in a READ COMMITTED transaction' THEN
			RAISE;
		END IF;
		PERFORM dalgo_internal.drop_staging_table(r.id);
		stamp := clock_timestamp();
		UPDATE dalgo.sync_runs x SET status = 'failed', completed_at = stamp, error_message = msg
		WHERE x.organization_id = org AND x.id = r.id;
	END;
	SELECT * INTO r FROM dalgo.sync_runs x WHERE x.organization_id = org AND x.id = r.id;
	RETURN r;
END
$$;

-- cx: account, lifecycle and key functions on a Citus cluster.  A row of a
-- distributed table found by its token or id is then locked naming its
-- organization (one shard); writes name the organization; the
-- organization's soft-delete cascade moves to cascade_organization(),
-- which soft_delete() and restore() call on a cluster (the trigger of a
-- reference table cannot reach the shards); purge_deleted() deletes row by
-- row and cancels stragglers without volatile calls per row; lineage's SQL
-- functions become PL/pgSQL; a node of a cluster never makes its own secret
-- key, and rotate_secret_key() refuses there.

CREATE OR REPLACE FUNCTION dalgo.accept_invitation(token text) RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	inv record;
	my_email text;
BEGIN
	PERFORM dalgo_internal.refuse_api_key('accepting an invitation');
	IF me IS NULL THEN
		RAISE EXCEPTION 'accepting an invitation needs a signed-in user' USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- Found by its token first, then locked in its organization's shard: on a
	-- Citus cluster a row lock must name the distribution column, and the
	-- membership written below (a reference table) needs the read before it
	-- made over one connection per node.
	IF dalgo_internal.citus_distributed('dalgo.invitations') THEN
		PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
	END IF;
	SELECT i.organization_id, i.id INTO inv FROM dalgo.invitations i
		WHERE i.token = dalgo_internal.token_digest(accept_invitation.token);
	IF inv.id IS NOT NULL THEN
		SELECT i.* INTO inv FROM dalgo.invitations i
			WHERE i.organization_id = inv.organization_id AND i.id = inv.id
			  AND i.token = dalgo_internal.token_digest(accept_invitation.token) FOR UPDATE;
	END IF;
	IF inv.id IS NULL THEN
		RAISE EXCEPTION 'invalid invitation token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	SELECT u.email INTO my_email FROM dalgo.users u WHERE u.id = me AND u.is_active AND u.deleted_at IS NULL;
	IF my_email IS NULL OR lower(my_email) <> lower(inv.email) THEN
		RAISE EXCEPTION 'this invitation was sent to another email address' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF inv.accepted_at IS NOT NULL THEN
		RAISE EXCEPTION 'this invitation has already been accepted' USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	IF inv.revoked_at IS NOT NULL THEN
		RAISE EXCEPTION 'this invitation has been revoked' USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	IF inv.expires_at <= now() THEN
		RAISE EXCEPTION 'this invitation has expired' USING ERRCODE = 'object_not_in_prerequisite_state',
			HINT = 'Ask for a new invitation.';
	END IF;
	IF EXISTS (SELECT FROM dalgo.organization_members m
			   WHERE m.organization_id = inv.organization_id AND m.user_id = me AND m.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'you are already a member of this organization' USING ERRCODE = 'unique_violation';
	END IF;

	-- The member is added by the inviter, under the inviter's current role:
	-- an invitation never grants more than its sender may grant now.
	IF inv.invited_by_id IS NULL THEN
		RAISE EXCEPTION 'the inviter can no longer invite to this organization' USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM dalgo_internal.act_as(inv.invited_by_id);
	IF NOT dalgo.is_org_member(inv.organization_id, CASE WHEN inv.role = 'owner' THEN 'owner' ELSE 'admin' END::dalgo.member_role) THEN
		PERFORM dalgo_internal.act_as(me);
		RAISE EXCEPTION 'the inviter can no longer invite to this organization' USING ERRCODE = 'insufficient_privilege';
	END IF;
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES (inv.organization_id, me, inv.role);
	PERFORM dalgo_internal.act_as(me);

	UPDATE dalgo.invitations i SET accepted_at = now() WHERE i.organization_id = inv.organization_id AND i.id = inv.id;
	PERFORM dalgo_internal.account_audit('invitation_accepted', me, inv.organization_id, 'invitation', inv.id,
								jsonb_build_object('role', inv.role));
	RETURN inv.organization_id;
END
$$;

CREATE OR REPLACE FUNCTION dalgo.revoke_invitation(invitation_id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	inv record;
BEGIN
	-- Found first, then locked in its organization's shard (Citus: see
	-- accept_invitation).
	IF dalgo_internal.citus_distributed('dalgo.invitations') THEN
		PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
	END IF;
	SELECT i.organization_id, i.id INTO inv FROM dalgo.invitations i WHERE i.id = revoke_invitation.invitation_id;
	IF inv.id IS NOT NULL THEN
		SELECT i.id, i.organization_id INTO inv FROM dalgo.invitations i
			WHERE i.organization_id = inv.organization_id AND i.id = inv.id FOR UPDATE;
	END IF;
	IF inv.id IS NULL OR NOT dalgo.is_org_member(inv.organization_id, 'admin') THEN
		RAISE EXCEPTION 'invitation not found' USING ERRCODE = 'no_data_found';
	END IF;
	UPDATE dalgo.invitations i SET revoked_at = now()
		WHERE i.organization_id = inv.organization_id AND i.id = inv.id AND i.accepted_at IS NULL AND i.revoked_at IS NULL;
	IF FOUND THEN
		UPDATE dalgo.mail_messages m SET state = 'cancelled', payload = NULL
			WHERE m.kind = 'invitation' AND m.state = 'pending' AND m.payload->>'invitation_id' = inv.id::text;
		PERFORM dalgo_internal.account_audit('invitation_revoked', dalgo.current_user_id(), inv.organization_id,
									'invitation', inv.id);
	END IF;
END
$$;

CREATE FUNCTION dalgo_internal.cascade_organization(organization_id uuid, old_deleted_at timestamptz,
													new_deleted_at timestamptz)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid := cascade_organization.organization_id;
	stopped_at timestamptz := clock_timestamp();
BEGIN
	IF old_deleted_at IS NULL AND new_deleted_at IS NOT NULL THEN
		-- Schedules first: a claim holding a schedule's row finishes before
		-- this goes on, so the run it made is cancelled below.
		UPDATE dalgo.schedules x SET deleted_at = new_deleted_at
			WHERE x.organization_id = org AND x.deleted_at IS NULL;
		UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stopped_at,
			error_message = 'cancelled: the organization was deleted', details = r.details || '{"cancelled": true}'
			WHERE r.organization_id = org AND r.status = 'pending';
		UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = stopped_at,
			error_message = 'cancelled: the organization was deleted', details = r.details || '{"cancelled": true}'
			WHERE r.organization_id = org AND r.status = 'pending';
	ELSIF old_deleted_at IS NOT NULL AND new_deleted_at IS NULL THEN
		-- Restored: what the delete stamped comes back, unless its own target
		-- is still deleted (schedules start again from their next slot after
		-- now: set_schedule_next_run).
		UPDATE dalgo.schedules x SET deleted_at = NULL, next_run_at = NULL
			WHERE x.organization_id = org AND x.deleted_at = old_deleted_at
			  AND (x.source_id IS NULL
				   OR x.source_id IN (SELECT s.id FROM dalgo.sources s WHERE s.organization_id = org AND s.deleted_at IS NULL))
			  AND (x.output_id IS NULL
				   OR x.output_id IN (SELECT o.id FROM dalgo.outputs o WHERE o.organization_id = org AND o.deleted_at IS NULL));
	END IF;
END
$$;

REVOKE ALL ON FUNCTION dalgo_internal.cascade_organization(uuid, timestamptz, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.cascade_organization(uuid, timestamptz, timestamptz) IS
	'Internal: the soft-delete cascade of an organization (old and new deleted_at): its schedules stamped and its pending runs failed, or on restore the schedules with that stamp back; run by the soft_delete_cascade trigger, on a Citus cluster by dalgo.soft_delete() and dalgo.restore()';

CREATE OR REPLACE FUNCTION dalgo_internal.cascade_soft_delete() RETURNS trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	-- On a Citus shard the table is sources_102040: the table it belongs to.
	on_shard boolean := TG_TABLE_NAME ~ '_[0-9]+$';
	tbl text := regexp_replace(TG_TABLE_NAME, '_[0-9]+$', '');
	deleting boolean := OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL;
	noun text := CASE tbl WHEN 'organizations' THEN 'organization' WHEN 'sources' THEN 'source'
						  WHEN 'transformations' THEN 'transformation' ELSE 'output' END;
	msg text;
	stopped_at timestamptz := clock_timestamp();
	org uuid;
	schedule_ids text[];
BEGIN
	IF dalgo.restoring() THEN RETURN NULL; END IF;
	IF tbl = 'organizations' THEN
		-- organizations is a reference table on a cluster: its trigger fires
		-- on every node's copy, where the organization's shards are out of
		-- reach; dalgo.soft_delete() and dalgo.restore() cascade there.
		IF NOT on_shard THEN
			PERFORM dalgo_internal.cascade_organization(NEW.id, OLD.deleted_at, NEW.deleted_at);
		END IF;
		RETURN NULL;
	END IF;
	org := NEW.organization_id;
	IF deleting THEN
		msg := pg_catalog.format('cancelled: the %s was deleted', noun);
		-- Schedules first: a claim holding a schedule's row finishes before
		-- this goes on, so the run it made is cancelled below.
		IF tbl = 'transformations' THEN
			UPDATE dalgo.outputs x SET deleted_at = NEW.deleted_at
				WHERE x.organization_id = org AND x.transformation_id = NEW.id AND x.deleted_at IS NULL;
		ELSE
			UPDATE dalgo.schedules x SET deleted_at = NEW.deleted_at
				WHERE x.organization_id = org AND x.deleted_at IS NULL
				  AND ((tbl = 'sources' AND x.source_id = NEW.id) OR (tbl = 'outputs' AND x.output_id = NEW.id));
		END IF;
		IF tbl = 'sources' THEN
			UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stopped_at, error_message = msg,
				details = r.details || '{"cancelled": true}'
				WHERE r.organization_id = org AND r.status = 'pending' AND r.source_id = NEW.id;
		ELSIF tbl = 'outputs' THEN
			schedule_ids := ARRAY(SELECT x.id::text FROM dalgo.schedules x WHERE x.organization_id = org AND x.output_id = NEW.id);
			UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = stopped_at, error_message = msg,
				details = r.details || '{"cancelled": true}'
				WHERE r.organization_id = org AND r.status = 'pending' AND r.transformation_id = NEW.transformation_id
				  AND (r.details->>'output_id' = NEW.id::text OR r.details->>'schedule_id' = ANY (schedule_ids));
		ELSE
			UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = stopped_at, error_message = msg,
				details = r.details || '{"cancelled": true}'
				WHERE r.organization_id = org AND r.status = 'pending' AND r.transformation_id = NEW.id;
		END IF;
	ELSIF OLD.deleted_at IS NOT NULL AND NEW.deleted_at IS NULL THEN
		-- Restored: what the delete stamped comes back (schedules start again
		-- from their next slot after now: set_schedule_next_run), while the
		-- organization is live.
		IF tbl = 'transformations' THEN
			UPDATE dalgo.outputs x SET deleted_at = NULL
				WHERE x.organization_id = org AND x.transformation_id = NEW.id
				  AND x.deleted_at = OLD.deleted_at;
		ELSIF EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL) THEN
			UPDATE dalgo.schedules x SET deleted_at = NULL, next_run_at = NULL
				WHERE x.organization_id = org AND x.deleted_at = OLD.deleted_at
				  AND ((tbl = 'sources' AND x.source_id = NEW.id) OR (tbl = 'outputs' AND x.output_id = NEW.id));
		END IF;
	END IF;
	RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION dalgo.soft_delete(tbl regclass, id uuid) RETURNS timestamptz
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	need dalgo.member_role := dalgo_internal.soft_delete_role(tbl);
	org_column text := CASE WHEN tbl = 'dalgo.organizations'::regclass THEN 'id' ELSE 'organization_id' END;
	citus boolean := dalgo_internal.citus_distributed('dalgo.sources');
	org uuid;
	was timestamptz;
	stamp timestamptz := now();
BEGIN
	IF need IS NULL THEN
		RAISE EXCEPTION '% is not a table whose rows are soft-deleted', tbl
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'dalgo.soft_delete takes dalgo.organizations, dalgo.sources, dalgo.transformations or dalgo.outputs.';
	END IF;
	IF citus THEN
		-- Reads before writes to tables that reference organizations: one
		-- connection per node.
		PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
	END IF;
	-- Found first, then locked naming its organization: on a Citus cluster a
	-- row lock must be in one shard.
	EXECUTE pg_catalog.format('SELECT %s FROM %s WHERE id OPERATOR(pg_catalog.=) $1', org_column, tbl)
		INTO org USING soft_delete.id;
	IF org IS NOT NULL THEN
		EXECUTE pg_catalog.format('SELECT %1$s, deleted_at FROM %2$s WHERE %1$s OPERATOR(pg_catalog.=) $2 '
								  'AND id OPERATOR(pg_catalog.=) $1 FOR NO KEY UPDATE', org_column, tbl)
			INTO org, was USING soft_delete.id, org;
	END IF;
	IF org IS NULL OR was IS NOT NULL OR NOT dalgo.caller_may(org, need) THEN
		RAISE EXCEPTION 'no live row % in % that you may delete', soft_delete.id, tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = pg_catalog.format('Deleting a row of %s takes the %s role in its organization.', tbl, need);
	END IF;
	EXECUTE pg_catalog.format('UPDATE %1$s SET deleted_at = $2 WHERE %2$s OPERATOR(pg_catalog.=) $3 AND id OPERATOR(pg_catalog.=) $1',
							  tbl, org_column)
		USING soft_delete.id, stamp, org;
	IF citus AND tbl = 'dalgo.organizations'::regclass THEN
		-- The trigger of a reference table cannot reach the shards (cascade_soft_delete).
		PERFORM dalgo_internal.cascade_organization(org, NULL, stamp);
	END IF;
	RETURN stamp;
END
$$;

CREATE OR REPLACE FUNCTION dalgo.restore(tbl regclass, id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org_column text := CASE WHEN tbl = 'dalgo.organizations'::regclass THEN 'id' ELSE 'organization_id' END;
	citus boolean := dalgo_internal.citus_distributed('dalgo.sources');
	org uuid;
	was timestamptz;
	days integer := pg_catalog.current_setting('dalgo.restore_days')::integer;
	allowed boolean;
	parent_gone text;
BEGIN
	IF dalgo_internal.soft_delete_role(tbl) IS NULL THEN
		RAISE EXCEPTION '% is not a table whose rows are restored', tbl
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'dalgo.restore takes dalgo.organizations, dalgo.sources, dalgo.transformations or dalgo.outputs.';
	END IF;
	IF citus THEN
		PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
	END IF;
	-- Found first, then locked naming its organization (see soft_delete).
	EXECUTE pg_catalog.format('SELECT %s FROM %s WHERE id OPERATOR(pg_catalog.=) $1', org_column, tbl)
		INTO org USING restore.id;
	IF org IS NOT NULL THEN
		EXECUTE pg_catalog.format('SELECT %1$s, deleted_at FROM %2$s WHERE %1$s OPERATOR(pg_catalog.=) $2 '
								  'AND id OPERATOR(pg_catalog.=) $1 FOR NO KEY UPDATE', org_column, tbl)
			INTO org, was USING restore.id, org;
	END IF;
	-- An organization is brought back by its owners; a row in one by its admins.
	IF tbl = 'dalgo.organizations'::regclass THEN
		allowed := dalgo_internal.dormant_role(org) = 'owner'
				   OR (dalgo.current_user_id() IS NULL AND dalgo.caller_may(org, 'viewer'));
	ELSE
		allowed := dalgo.caller_may(org, 'admin');
	END IF;
	IF org IS NULL OR was IS NULL OR NOT coalesce(allowed, false) THEN
		RAISE EXCEPTION 'no deleted row % in % that you may restore', restore.id, tbl
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'dalgo.deleted_items(organization_id) lists what an admin may restore.';
	END IF;
	IF was < now() - pg_catalog.make_interval(days => days) THEN
		RAISE EXCEPTION 'the restore window has passed: % was deleted at %, more than dalgo.restore_days (%) ago', restore.id, was, days
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'It is purged by dalgo.purge_deleted() and cannot come back.';
	END IF;
	IF tbl = 'dalgo.outputs'::regclass THEN
		SELECT t.name INTO parent_gone FROM dalgo.outputs p
			JOIN dalgo.transformations t ON t.organization_id = p.organization_id AND t.id = p.transformation_id
			WHERE p.organization_id = org AND p.id = restore.id AND t.deleted_at IS NOT NULL;
		IF parent_gone IS NOT NULL THEN
			RAISE EXCEPTION 'the transformation "%" of this output is deleted', parent_gone
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  HINT = 'Restore the transformation first: that brings back the outputs it took with it.';
		END IF;
	END IF;
	EXECUTE pg_catalog.format('UPDATE %1$s SET deleted_at = NULL WHERE %2$s OPERATOR(pg_catalog.=) $2 AND id OPERATOR(pg_catalog.=) $1',
							  tbl, org_column)
		USING restore.id, org;
	IF citus AND tbl = 'dalgo.organizations'::regclass THEN
		PERFORM dalgo_internal.cascade_organization(org, was, NULL);
	END IF;
END
$$;

CREATE OR REPLACE FUNCTION dalgo.purge_deleted(max_rows integer DEFAULT 1000) RETURNS bigint
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cutoff timestamptz := now() - pg_catalog.make_interval(days => pg_catalog.current_setting('dalgo.restore_days')::integer);
	left_over integer := max_rows;
	n bigint;
	gone bigint;
	total bigint := 0;
	t text;
	victim record;
	stopped_at timestamptz := clock_timestamp();
BEGIN
	IF NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user)
	   AND NOT pg_has_role(session_user, 'dalgo_service', 'USAGE') THEN
		RAISE EXCEPTION 'only dalgo_service or a superuser may purge deleted rows'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF max_rows IS NULL OR max_rows < 1 THEN
		RAISE EXCEPTION 'max_rows must be at least 1' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF dalgo_internal.citus_distributed('dalgo.sources') THEN
		-- Reads and writes of distributed tables and of the reference tables
		-- they reference, in one transaction: one connection per node.
		PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
	END IF;
	-- Organizations first (each drops a warehouse, so they count 100 rows
	-- against the batch's locks), then what else outlived its window: found
	-- first, then each deleted by its organization and id (one shard each on
	-- a Citus cluster).
	FOREACH t IN ARRAY ARRAY['organizations', 'transformations', 'outputs', 'sources'] LOOP
		EXIT WHEN left_over <= 0;
		n := 0;
		FOR victim IN EXECUTE pg_catalog.format(
			'SELECT y.%2$I AS organization_id, y.id FROM dalgo.%1$I y WHERE y.deleted_at < $1 ORDER BY y.deleted_at LIMIT $2',
			t, CASE WHEN t = 'organizations' THEN 'id' ELSE 'organization_id' END)
			USING cutoff, CASE WHEN t = 'organizations' THEN greatest(left_over / 100, 1) ELSE left_over END
		LOOP
			EXECUTE pg_catalog.format('DELETE FROM dalgo.%1$I x WHERE x.%2$I = $1 AND x.id = $2 AND x.deleted_at < $3',
									  t, CASE WHEN t = 'organizations' THEN 'id' ELSE 'organization_id' END)
				USING victim.organization_id, victim.id, cutoff;
			GET DIAGNOSTICS gone = ROW_COUNT;
			n := n + gone;
		END LOOP;
		total := total + n;
		left_over := left_over - CASE WHEN t = 'organizations' THEN n * 100 ELSE n END;
	END LOOP;
	-- Stragglers: a run queued for something deleted meanwhile never runs
	-- (what target_is_live() tells, as joins in the run's organization).
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stopped_at,
		error_message = 'cancelled: its source or organization was deleted', details = r.details || '{"cancelled": true}'
		WHERE r.status = 'pending'
		  AND (NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = r.organization_id AND o.deleted_at IS NULL)
			   OR (r.source_id IS NOT NULL
				   AND NOT EXISTS (SELECT FROM dalgo.sources s WHERE s.organization_id = r.organization_id
								   AND s.id = r.source_id AND s.deleted_at IS NULL)));
	UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = stopped_at,
		error_message = 'cancelled: its transformation or organization was deleted', details = r.details || '{"cancelled": true}'
		WHERE r.status = 'pending'
		  AND (NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = r.organization_id AND o.deleted_at IS NULL)
			   OR (r.transformation_id IS NOT NULL
				   AND NOT EXISTS (SELECT FROM dalgo.transformations x WHERE x.organization_id = r.organization_id
								   AND x.id = r.transformation_id AND x.deleted_at IS NULL)));
	RETURN total;
END
$$;

CREATE OR REPLACE FUNCTION dalgo_internal.erase_account(user_id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	uid uuid := erase_account.user_id;
	u record;
	blocking record;
	needles text[];
	orgs uuid[];
	anon text := 'erased-' || replace(erase_account.user_id::text, '-', '') || '@erased.invalid';
	-- A value, not now() inside coalesce (Citus refuses non-IMMUTABLE calls there).
	erased_at timestamptz := now();
BEGIN
	IF dalgo_internal.citus_distributed('dalgo.invitations') THEN
		-- Writes to reference tables (users, memberships, tokens) and to the
		-- distributed invitations and audit trail that reference them, in
		-- one transaction: one connection per node.
		PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
	END IF;
	SELECT x.id, x.email, x.full_name, x.deleted_at INTO u FROM dalgo.users x WHERE x.id = uid FOR UPDATE;
	IF u.id IS NULL THEN
		RAISE EXCEPTION 'user % does not exist', uid USING ERRCODE = 'no_data_found';
	END IF;
	-- Team organizations must keep an owner: under each organization's row
	-- lock, against the latest committed state (as guard_membership counts).
	FOR blocking IN
		SELECT o.id, o.name FROM dalgo.organization_members m JOIN dalgo.organizations o ON o.id = m.organization_id
		WHERE m.user_id = uid AND m.role = 'owner' AND m.deleted_at IS NULL
		  AND o.org_type = 'team' AND o.deleted_at IS NULL
		ORDER BY o.id
	LOOP
		PERFORM FROM dalgo.organizations o WHERE o.id = blocking.id FOR NO KEY UPDATE;
		IF dalgo_internal.live_owner_count(blocking.id,
				(SELECT m.id FROM dalgo.organization_members m
				 WHERE m.organization_id = blocking.id AND m.user_id = uid AND m.deleted_at IS NULL)) = 0 THEN
			RAISE EXCEPTION 'you are the last owner of the organization "%" (%)', blocking.name, blocking.id
				USING ERRCODE = 'check_violation',
					  HINT = 'Make another member an owner, or delete the organization, first.';
		END IF;
	END LOOP;

	-- The organizations whose audit rows may name the user: theirs, before
	-- the personal one goes.  No other organization's trail is touched.
	orgs := ARRAY(SELECT DISTINCT m.organization_id FROM dalgo.organization_members m WHERE m.user_id = uid);

	-- Personal organizations of the user go at once, warehouse and all.
	DELETE FROM dalgo.organizations o
		WHERE o.org_type = 'personal'
		  AND EXISTS (SELECT FROM dalgo.organization_members m
					  WHERE m.organization_id = o.id AND m.user_id = uid AND m.role = 'owner' AND m.deleted_at IS NULL);
	-- Memberships end (the rows keep their ids for the audit trail).
	UPDATE dalgo.organization_members m SET deleted_at = now() WHERE m.user_id = uid AND m.deleted_at IS NULL;

	-- Sessions, reset tokens, API keys and pending mail.
	UPDATE dalgo.refresh_tokens t SET revoked_at = now() WHERE t.user_id = uid AND t.revoked_at IS NULL;
	UPDATE dalgo.password_reset_tokens t SET used_at = now() WHERE t.user_id = uid AND t.used_at IS NULL;
	UPDATE dalgo.api_keys k SET revoked_at = now() WHERE k.created_by_id = uid AND k.revoked_at IS NULL;
	UPDATE dalgo.mail_messages m SET state = 'cancelled', payload = NULL, completed_at = now()
		WHERE lower(m.recipient) = lower(u.email) AND m.state IN ('pending', 'sending');
	UPDATE dalgo.mail_messages m SET recipient = anon WHERE lower(m.recipient) = lower(u.email);
	UPDATE dalgo.invitations i SET email = anon WHERE lower(i.email) = lower(u.email);
	DELETE FROM dalgo.sign_in_attempts a
		WHERE a.user_id = uid OR a.email_hash = dalgo_internal.email_key(u.email);

	-- The user row: the id stays, the person goes.
	UPDATE dalgo.users x SET email = anon, full_name = NULL, password_hash = NULL, is_active = false,
		deleted_at = coalesce(x.deleted_at, erased_at)
		WHERE x.id = uid;

	-- The audit trail: what the user did and what was done to them stays, by id.
	needles := ARRAY[u.email, u.full_name]
		|| ARRAY(SELECT DISTINCT v.value FROM dalgo.audit_logs a,
					 LATERAL jsonb_path_query(a.details, 'strict $.**.email.**') q,
					 LATERAL (SELECT q #>> '{}' AS value) v
				 WHERE a.resource_type = 'users' AND a.resource_id = uid AND jsonb_typeof(q) = 'string'
				   AND v.value <> anon)
		|| ARRAY(SELECT DISTINCT v.value FROM dalgo.audit_logs a,
					 LATERAL jsonb_path_query(a.details, 'strict $.**.full_name.**') q,
					 LATERAL (SELECT q #>> '{}' AS value) v
				 WHERE a.resource_type = 'users' AND a.resource_id = uid AND jsonb_typeof(q) = 'string');
	PERFORM dalgo_internal.anonymize_audit_logs(uid, array_remove(needles, NULL), orgs);
	PERFORM dalgo_internal.account_audit('account_erased', NULL, NULL, 'user', uid);
END
$$;

CREATE OR REPLACE FUNCTION dalgo_internal.secret_key_for_writing() RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
BEGIN
	IF (k IS NULL OR k = '') AND dalgo_internal.citus_distributed('dalgo.sources') THEN
		-- On a Citus cluster shards are written on the workers and read on
		-- the coordinator: a key made by one node would open nothing on
		-- another.
		RAISE EXCEPTION 'no secret key is set on this node of the Citus cluster'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Put the same dalgo_secret.key in the data directory of every node (docs/scaling.md).';
	END IF;
	IF k IS NULL OR k = '' THEN
		-- One creator at a time; the file outlives a rollback, so a
		-- second creator finds it after the first one's lock is gone.
		PERFORM pg_catalog.pg_advisory_xact_lock(7316028433216171853);
		k := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
		IF k IS NULL OR k = '' THEN
			k := pg_catalog.encode(dalgo_internal.pgcrypto_random_bytes(32), 'hex');
			PERFORM dalgo_internal.write_secret_key(k);
			PERFORM dalgo_internal.log_without_statement(
				'dalgo: created the secret key dalgo_secret.key in the data directory; back it up apart from the database');
		END IF;
	END IF;
	RETURN k;
END
$$;

CREATE OR REPLACE FUNCTION dalgo.rotate_secret_key(new_key text DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	old_key text;
	k text := new_key;
	t record;
	n bigint;
	total bigint := 0;
BEGIN
	IF dalgo_internal.citus_distributed('dalgo.sources') THEN
		-- Each node reads its own key file, and a key must not travel in a
		-- statement's text: rotating it on every node at once is not done yet.
		RAISE EXCEPTION 'dalgo.rotate_secret_key() does not run on a Citus cluster yet'
			USING ERRCODE = 'feature_not_supported',
				  HINT = 'The key file dalgo_secret.key must stay the same on every node; see docs/scaling.md.';
	END IF;
	-- One writer of the key file at a time (dalgo_internal.secret_key_for_writing).
	PERFORM pg_catalog.pg_advisory_xact_lock(7316028433216171853);
	old_key := pg_catalog.btrim(pg_catalog.pg_read_file('dalgo_secret.key', 0, 1000, true), E' \n\r\t');
	IF k IS NULL THEN
		k := pg_catalog.encode(dalgo_internal.pgcrypto_random_bytes(32), 'hex');
	ELSIF pg_catalog.length(k) OPERATOR(pg_catalog.<) 16 OR k !~ '^[A-Za-z0-9+/=_-]+$' THEN
		RAISE EXCEPTION 'a secret key has at least 16 characters among A-Z, a-z, 0-9, +, /, =, _ and -'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF old_key IS NOT NULL AND old_key <> '' THEN
		old_key := dalgo_internal.toolkit_secret_key();
		FOR t IN SELECT tr.tgrelid::regclass AS tbl, a.attname, a.atttypid IN ('json'::regtype, 'jsonb'::regtype) AS is_json,
					  pg_catalog.format_type(a.atttypid, a.atttypmod) AS coltype
				 FROM pg_catalog.pg_trigger tr
				 JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) tr.tgrelid
					AND a.attname OPERATOR(pg_catalog.=) pg_catalog.split_part(pg_catalog.encode(tr.tgargs, 'escape'), E'\\000', 1)
				 WHERE tr.tgfoid OPERATOR(pg_catalog.=) 'dalgo_internal.set_encrypted_column()'::regprocedure
		LOOP
			EXECUTE pg_catalog.format('UPDATE %s SET %I = %s(dalgo_internal.toolkit_encrypt(dalgo_internal.toolkit_decrypt('
				'dalgo_internal.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1), $2), $3))::%s '
				'WHERE pg_catalog.starts_with(dalgo_internal.toolkit_stored_text(pg_catalog.to_jsonb(%I), $1), ''dalgo:pgp1:'')',
				t.tbl, t.attname, CASE WHEN t.is_json THEN 'pg_catalog.to_jsonb' ELSE '' END, t.attname, t.coltype, t.attname)
				USING t.is_json, old_key, k;
			GET DIAGNOSTICS n = ROW_COUNT;
			total := total OPERATOR(pg_catalog.+) n;
		END LOOP;
		-- dalgo's own secrets: sources.config.credentials, warehouse access tokens.
		total := total OPERATOR(pg_catalog.+) dalgo_internal.reseal_own_secrets(old_key, k);
	END IF;
	-- The file keeps the previous key after the new one: if this transaction
	-- rolls back after the file is written, the values it re-encrypted are
	-- still readable.
	PERFORM dalgo_internal.write_secret_key(k || coalesce(E'\n' || NULLIF(pg_catalog.split_part(old_key, E'\n', 1), ''), ''));
	RETURN total;
END
$$;

CREATE OR REPLACE FUNCTION dalgo.revert_transformation(transformation_id uuid, version integer) RETURNS integer
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t dalgo.transformations;
	old_recipe jsonb;
	previous text := current_setting('dalgo.change_description');
	new_version integer;
BEGIN
	SELECT * INTO t FROM dalgo.transformations x
	WHERE x.id = revert_transformation.transformation_id AND x.deleted_at IS NULL;
	IF NOT FOUND OR NOT dalgo.caller_may(t.organization_id, 'viewer') THEN
		RAISE EXCEPTION 'transformation % does not exist', transformation_id USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT dalgo.caller_may(t.organization_id, 'member') THEN
		RAISE EXCEPTION 'reverting a transformation needs the member role' USING ERRCODE = 'insufficient_privilege';
	END IF;
	SELECT v.recipe INTO old_recipe FROM dalgo.transformation_versions v
	WHERE v.transformation_id = t.id AND v.organization_id = t.organization_id
	  AND v.version_number = revert_transformation.version AND v.deleted_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'transformation % has no version %', transformation_id, version
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = format('Its versions are 1 to %s.', t.current_version);
	END IF;
	IF old_recipe = t.recipe THEN
		RAISE NOTICE 'version % is the current recipe of transformation %; nothing saved', version, t.id;
		RETURN t.current_version;
	END IF;
	-- The save's own triggers check the recipe, number the version and record
	-- it, with the caller as its author.
	PERFORM set_config('dalgo.change_description',
					   coalesce(nullif(previous, ''), format('revert to version %s', version)), true);
	UPDATE dalgo.transformations x SET recipe = old_recipe WHERE x.organization_id = t.organization_id AND x.id = t.id
	RETURNING x.current_version INTO new_version;
	PERFORM set_config('dalgo.change_description', previous, true);
	RETURN new_version;
END
$$;

CREATE OR REPLACE FUNCTION dalgo_internal.lineage_graph(organization_id uuid)
	RETURNS TABLE (node_type text, id uuid, name text, depends_on uuid[])
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	-- PL/pgSQL, not SQL: Citus plans a SQL function's body with its
	-- parameters unbound, and cannot route that to the organization's shard.
	RETURN QUERY
	WITH
	src AS (SELECT s.id, s.name,
				   coalesce(s.warehouse_table_name, 'source_' || left(replace(s.id::text, '-', ''), 12)) AS table_name
			FROM dalgo.sources s WHERE s.organization_id = lineage_graph.organization_id AND s.deleted_at IS NULL),
	tr AS (SELECT t.id, t.name, t.recipe, t.output_table_name
		   FROM dalgo.transformations t WHERE t.organization_id = lineage_graph.organization_id AND t.deleted_at IS NULL),
	outp AS (SELECT o.id, o.name, o.transformation_id, o.destination_config->>'name' AS dest
			 FROM dalgo.outputs o JOIN tr ON tr.id = o.transformation_id
			 WHERE o.organization_id = lineage_graph.organization_id AND o.deleted_at IS NULL),
	refs AS (SELECT tr.id AS tid, r.ref_kind, r.ref FROM tr, dalgo_internal.recipe_references(tr.recipe) r),
	-- Every table name any node produces or reads.
	names AS (SELECT table_name AS n FROM src
			  UNION SELECT output_table_name FROM tr WHERE output_table_name IS NOT NULL
			  UNION SELECT dest FROM outp WHERE dest IS NOT NULL
			  UNION SELECT ref FROM refs WHERE ref_kind = 'table'),
	tbl AS (SELECT names.n, coalesce(
				(SELECT w.id FROM dalgo.warehouse_tables w
				 WHERE w.organization_id = lineage_graph.organization_id AND w.table_name = names.n AND w.deleted_at IS NULL
				 ORDER BY w.created_at LIMIT 1),
				md5('dalgo warehouse table ' || lineage_graph.organization_id::text || '/' || names.n)::uuid) AS tid
			FROM names),
	edges AS (
		SELECT 'source'::text AS node_type, src.id, src.name, NULL::uuid AS dep FROM src
		UNION ALL
		SELECT 'warehouse_table', tbl.tid, src.table_name, src.id FROM src JOIN tbl ON tbl.n = src.table_name
		UNION ALL
		SELECT 'transformation', tr.id, tr.name, NULL FROM tr
		UNION ALL
		-- A transformation reads tables: a source's, another transformation's
		-- output table (or the transformation, if it has none), or a table by name.
		SELECT 'transformation', refs.tid, tr.name,
			CASE refs.ref_kind
				WHEN 'table' THEN (SELECT tbl.tid FROM tbl WHERE tbl.n = refs.ref)
				WHEN 'source_id' THEN (SELECT tbl.tid FROM src JOIN tbl ON tbl.n = src.table_name WHERE src.id::text = refs.ref)
				ELSE (SELECT coalesce((SELECT tbl.tid FROM tbl WHERE tbl.n = up.output_table_name), up.id)
					  FROM tr up WHERE up.id::text = refs.ref) END
		FROM refs JOIN tr ON tr.id = refs.tid
		UNION ALL
		SELECT 'warehouse_table', tbl.tid, tr.output_table_name, tr.id FROM tr JOIN tbl ON tbl.n = tr.output_table_name
		UNION ALL
		SELECT 'output', outp.id, outp.name, outp.transformation_id FROM outp
		UNION ALL
		SELECT 'warehouse_table', tbl.tid, outp.dest, outp.id
		FROM outp JOIN tr ON tr.id = outp.transformation_id JOIN tbl ON tbl.n = outp.dest
		WHERE outp.dest IS DISTINCT FROM tr.output_table_name
		UNION ALL
		SELECT 'warehouse_table', tbl.tid, tbl.n, NULL FROM tbl
		UNION ALL
		SELECT 'schedule', s.id, format('%s at %s (%s)', s.frequency, to_char(s.run_at_time, 'HH24:MI'), s.timezone),
			coalesce(s.source_id, s.output_id)
		FROM dalgo.schedules s
		WHERE s.organization_id = lineage_graph.organization_id AND s.deleted_at IS NULL
		  AND (s.source_id IN (SELECT src.id FROM src) OR s.output_id IN (SELECT outp.id FROM outp)))
	SELECT min(e.node_type), e.id, min(e.name),
		coalesce(array_agg(DISTINCT e.dep ORDER BY e.dep) FILTER (WHERE e.dep IS NOT NULL), '{}')
	FROM edges e GROUP BY e.id;
END
$$;

CREATE OR REPLACE FUNCTION dalgo_internal.lineage_node_organization(node_id uuid) RETURNS uuid
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
BEGIN
	-- One statement per table, in this order (Citus plans each on its own).
	SELECT x.organization_id INTO org FROM dalgo.sources x WHERE x.id = node_id AND x.deleted_at IS NULL;
	IF org IS NULL THEN
		SELECT x.organization_id INTO org FROM dalgo.transformations x WHERE x.id = node_id AND x.deleted_at IS NULL;
	END IF;
	IF org IS NULL THEN
		SELECT x.organization_id INTO org FROM dalgo.outputs x WHERE x.id = node_id AND x.deleted_at IS NULL;
	END IF;
	IF org IS NULL THEN
		SELECT x.organization_id INTO org FROM dalgo.schedules x WHERE x.id = node_id AND x.deleted_at IS NULL;
	END IF;
	IF org IS NULL THEN
		SELECT x.organization_id INTO org FROM dalgo.warehouse_tables x WHERE x.id = node_id AND x.deleted_at IS NULL;
	END IF;
	RETURN org;
END
$$;

-- lead: soft_delete() and restore() find and lock their row with one
-- helper, dalgo_internal.lock_lifecycle_row().
-- A row of a table whose rows are soft-deleted, locked for soft_delete()
-- or restore(): its organization and deleted_at, NULLs when there is none.
-- Found first, then locked naming its organization: on a Citus cluster a
-- row lock must be in one shard; there the reads also go over one
-- connection per node, since the caller goes on to write tables that
-- reference organizations (a reference table).
CREATE FUNCTION dalgo_internal.lock_lifecycle_row(tbl regclass, id uuid, OUT organization_id uuid, OUT deleted_at timestamptz)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org_column text := CASE WHEN tbl = 'dalgo.organizations'::regclass THEN 'id' ELSE 'organization_id' END;
BEGIN
	IF dalgo_internal.citus_distributed('dalgo.sources') THEN
		PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
	END IF;
	EXECUTE pg_catalog.format('SELECT %s FROM %s WHERE id OPERATOR(pg_catalog.=) $1', org_column, tbl)
		INTO organization_id USING lock_lifecycle_row.id;
	IF organization_id IS NOT NULL THEN
		EXECUTE pg_catalog.format('SELECT %1$s, deleted_at FROM %2$s WHERE %1$s OPERATOR(pg_catalog.=) $2 '
								  'AND id OPERATOR(pg_catalog.=) $1 FOR NO KEY UPDATE', org_column, tbl)
			INTO organization_id, deleted_at USING lock_lifecycle_row.id, organization_id;
	END IF;
END
$$;
REVOKE ALL ON FUNCTION dalgo_internal.lock_lifecycle_row(regclass, uuid) FROM PUBLIC;
COMMENT ON FUNCTION dalgo_internal.lock_lifecycle_row(regclass, uuid) IS
	'Internal: the organization and deleted_at of a row of organizations, sources, transformations or outputs, locked FOR NO KEY UPDATE through its organization (one shard on a Citus cluster); NULLs when there is none';

CREATE OR REPLACE FUNCTION dalgo.soft_delete(tbl regclass, id uuid) RETURNS timestamptz
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	need dalgo.member_role := dalgo_internal.soft_delete_role(tbl);
	org_column text := CASE WHEN tbl = 'dalgo.organizations'::regclass THEN 'id' ELSE 'organization_id' END;
	citus boolean := dalgo_internal.citus_distributed('dalgo.sources');
	org uuid;
	was timestamptz;
	stamp timestamptz := now();
BEGIN
	IF need IS NULL THEN
		RAISE EXCEPTION '% is not a table whose rows are soft-deleted', tbl
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'dalgo.soft_delete takes dalgo.organizations, dalgo.sources, dalgo.transformations or dalgo.outputs.';
	END IF;
	SELECT l.organization_id, l.deleted_at INTO org, was FROM dalgo_internal.lock_lifecycle_row(tbl, soft_delete.id) l;
	IF org IS NULL OR was IS NOT NULL OR NOT dalgo.caller_may(org, need) THEN
		RAISE EXCEPTION 'no live row % in % that you may delete', soft_delete.id, tbl
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = pg_catalog.format('Deleting a row of %s takes the %s role in its organization.', tbl, need);
	END IF;
	EXECUTE pg_catalog.format('UPDATE %1$s SET deleted_at = $2 WHERE %2$s OPERATOR(pg_catalog.=) $3 AND id OPERATOR(pg_catalog.=) $1',
							  tbl, org_column)
		USING soft_delete.id, stamp, org;
	IF citus AND tbl = 'dalgo.organizations'::regclass THEN
		-- The trigger of a reference table cannot reach the shards (cascade_soft_delete).
		PERFORM dalgo_internal.cascade_organization(org, NULL, stamp);
	END IF;
	RETURN stamp;
END
$$;

CREATE OR REPLACE FUNCTION dalgo.restore(tbl regclass, id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org_column text := CASE WHEN tbl = 'dalgo.organizations'::regclass THEN 'id' ELSE 'organization_id' END;
	citus boolean := dalgo_internal.citus_distributed('dalgo.sources');
	org uuid;
	was timestamptz;
	days integer := pg_catalog.current_setting('dalgo.restore_days')::integer;
	allowed boolean;
	parent_gone text;
BEGIN
	IF dalgo_internal.soft_delete_role(tbl) IS NULL THEN
		RAISE EXCEPTION '% is not a table whose rows are restored', tbl
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'dalgo.restore takes dalgo.organizations, dalgo.sources, dalgo.transformations or dalgo.outputs.';
	END IF;
	SELECT l.organization_id, l.deleted_at INTO org, was FROM dalgo_internal.lock_lifecycle_row(tbl, restore.id) l;
	-- An organization is brought back by its owners; a row in one by its admins.
	IF tbl = 'dalgo.organizations'::regclass THEN
		allowed := dalgo_internal.dormant_role(org) = 'owner'
				   OR (dalgo.current_user_id() IS NULL AND dalgo.caller_may(org, 'viewer'));
	ELSE
		allowed := dalgo.caller_may(org, 'admin');
	END IF;
	IF org IS NULL OR was IS NULL OR NOT coalesce(allowed, false) THEN
		RAISE EXCEPTION 'no deleted row % in % that you may restore', restore.id, tbl
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'dalgo.deleted_items(organization_id) lists what an admin may restore.';
	END IF;
	IF was < now() - pg_catalog.make_interval(days => days) THEN
		RAISE EXCEPTION 'the restore window has passed: % was deleted at %, more than dalgo.restore_days (%) ago', restore.id, was, days
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'It is purged by dalgo.purge_deleted() and cannot come back.';
	END IF;
	IF tbl = 'dalgo.outputs'::regclass THEN
		SELECT t.name INTO parent_gone FROM dalgo.outputs p
			JOIN dalgo.transformations t ON t.organization_id = p.organization_id AND t.id = p.transformation_id
			WHERE p.organization_id = org AND p.id = restore.id AND t.deleted_at IS NOT NULL;
		IF parent_gone IS NOT NULL THEN
			RAISE EXCEPTION 'the transformation "%" of this output is deleted', parent_gone
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  HINT = 'Restore the transformation first: that brings back the outputs it took with it.';
		END IF;
	END IF;
	EXECUTE pg_catalog.format('UPDATE %1$s SET deleted_at = NULL WHERE %2$s OPERATOR(pg_catalog.=) $2 AND id OPERATOR(pg_catalog.=) $1',
							  tbl, org_column)
		USING restore.id, org;
	IF citus AND tbl = 'dalgo.organizations'::regclass THEN
		PERFORM dalgo_internal.cascade_organization(org, was, NULL);
	END IF;
END
$$;

-- lead: pg_dump dumps the rows of every dalgo table, the ones that the
-- sections above added too (the same loop as sql/backup.sql; keep it last).
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
