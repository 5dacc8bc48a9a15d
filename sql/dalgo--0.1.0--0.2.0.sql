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
