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
