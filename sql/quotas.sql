-- Quotas per organization: what one organization may take of a shared
-- server.  Superusers set the defaults (dalgo.quota_* settings) and may
-- override them for one organization in organizations.settings->'quotas';
-- nobody else can.  0 (or no setting) means no limit.
--
--   warehouse_bytes   size of the organization's warehouse schema
--   concurrent_runs   runs of the organization executing at the same time
--   runs_per_hour     runs the organization started in the last hour
--   run_seconds       run time of one run_transformation call with its upstream

-- The limit in force for one organization, or NULL when there is none.
CREATE FUNCTION dalgo_internal.organization_quota(organization_id uuid, quota text) RETURNS bigint
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
COMMENT ON FUNCTION dalgo_internal.organization_quota(uuid, text) IS
	'Internal: an organization''s limit for one quota (its settings->''quotas'' override, else the dalgo.quota_* default); NULL means no limit';

-- The size of an organization's warehouse, leaving out one table (the one
-- a swap is about to replace) when excluding names it.
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

-- What an organization uses now, quota by quota.
CREATE FUNCTION dalgo_internal.organization_usage(organization_id uuid, OUT quota text, OUT used bigint, OUT quota_limit bigint)
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
	RETURN QUERY SELECT * FROM dalgo_internal.organization_usage(quota_usage.organization_id);
END
$$;
COMMENT ON FUNCTION dalgo.quota_usage(uuid) IS
	'An organization''s quotas: for each, what it uses now and its limit (NULL: no limit); its members only. run_seconds has no "used" figure';

-- Refuse a run that would take the organization past a quota.  The runs
-- this backend is executing (a scheduled run's own row, an outer
-- run_transformation) are not counted: an upstream run is part of the run
-- that asked for it.
--
-- A run_transformation call's 'running' row is invisible to other sessions
-- until its transaction commits, when the run is over: rows alone let any
-- number of concurrent calls pass.  So every run also holds a shared
-- advisory lock of its organization (the run slot) until its transaction
-- ends, and the backends holding it count as running even before their rows
-- are visible.  The check and the taking of the slot are one step under a
-- second advisory lock (the gate), held only for the check.
CREATE FUNCTION dalgo_internal.check_run_quota(organization_id uuid) RETURNS void
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

-- Refuse when the warehouse is at or over its size quota.  replacing names
-- the table a swap is about to replace: it no longer counts.
CREATE FUNCTION dalgo_internal.check_warehouse_quota(organization_id uuid, replacing text) RETURNS void
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

-- Only superusers set or change an organization's quotas, and only to
-- known quotas with whole, non-negative figures.
CREATE FUNCTION dalgo_internal.guard_organization_quotas() RETURNS trigger
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
COMMENT ON FUNCTION dalgo_internal.guard_organization_quotas() IS
	'BEFORE INSERT OR UPDATE row trigger on organizations: only superusers set settings->''quotas'', to known quotas and valid figures';
CREATE TRIGGER guard_organization_quotas BEFORE INSERT OR UPDATE OF settings ON dalgo.organizations
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.guard_organization_quotas();
COMMENT ON TRIGGER guard_organization_quotas ON dalgo.organizations IS 'Quotas are set by superusers only';

-- run_seconds: a cap on the deadline of the statement that runs a
-- transformation with its upstream (src/deadline.c).
CREATE FUNCTION dalgo_internal.cap_statement_deadline(seconds bigint) RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_cap_statement_deadline'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION dalgo_internal.cap_statement_deadline(bigint) IS
	'Internal: cap the current statement''s recipe deadline (dalgo.statement_timeout) at this many seconds from now; the outermost cap wins';

CREATE FUNCTION dalgo_internal.run_time_quota_hit() RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_run_time_quota_hit'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION dalgo_internal.run_time_quota_hit() IS
	'Internal: true when the current statement has passed the cap that cap_statement_deadline set (the run_seconds quota)';

REVOKE ALL ON FUNCTION dalgo_internal.cap_statement_deadline(bigint), dalgo_internal.run_time_quota_hit(),
	dalgo_internal.organization_quota(uuid, text), dalgo_internal.organization_usage(uuid), dalgo.quota_usage(uuid),
	dalgo_internal.check_run_quota(uuid), dalgo_internal.check_warehouse_quota(uuid, text), dalgo_internal.guard_organization_quotas(),
	dalgo_internal.warehouse_bytes(uuid, text)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.quota_usage(uuid) TO dalgo_authenticated, dalgo_service;
