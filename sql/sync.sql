-- sync.sql: what a sync does.  Which source types sync in the database,
-- the in-database sync of postgres and csv sources, the connector protocol
-- for the source types an outside connector loads, and the csv directory
-- rules.  The run lifecycle that calls these is in scheduler.sql.

-- Since 0.2.0 every source type syncs in the database (google_sheets and
-- api over HTTP, in the run workers): no type needs a connector.  A source
-- whose config says {"connector": true} is left to an outside loader.
CREATE FUNCTION dalgo.is_connector_source(source_type dalgo.source_type) RETURNS boolean
	LANGUAGE sql IMMUTABLE PARALLEL SAFE
	AS $$ SELECT false $$;
COMMENT ON FUNCTION dalgo.is_connector_source(dalgo.source_type) IS
	'False for every source type since 0.2.0: all four sync in the database; a source whose config has "connector": true is loaded by an outside connector instead';

CREATE FUNCTION dalgo_internal.synced_by_connector(config jsonb) RETURNS boolean
	LANGUAGE sql IMMUTABLE PARALLEL SAFE
	AS $$ SELECT coalesce(config OPERATOR(pg_catalog.->) 'connector' OPERATOR(pg_catalog.=) 'true'::jsonb, false) $$;
COMMENT ON FUNCTION dalgo_internal.synced_by_connector(jsonb) IS
	'Internal: true for a source whose config has "connector": true: an outside connector loads it through claim_sync_run/complete_sync_run, the run workers leave it alone';

-- The relation a postgres source syncs from: config {"relation": "schema.table"}
-- or {"schema": ..., "table": ...}; never dalgo's own schema.
CREATE FUNCTION dalgo_internal.source_relation(config jsonb) RETURNS text
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	parts text[];
	rel text;
BEGIN
	IF config ? 'relation' THEN
		parts := parse_ident(config->>'relation');
	ELSIF config ? 'table' THEN
		parts := ARRAY[coalesce(config->>'schema', 'public'), config->>'table'];
	ELSE
		RAISE EXCEPTION 'a postgres source needs config.relation (or config.schema and config.table)'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF array_length(parts, 1) = 1 THEN
		parts := ARRAY['public'] || parts;
	END IF;
	IF array_length(parts, 1) <> 2 OR parts[1] IN ('dalgo', 'pg_catalog', 'information_schema') OR parts[1] LIKE 'pg\_%' THEN
		RAISE EXCEPTION 'source relation "%" is not allowed', array_to_string(parts, '.')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	rel := format('%I.%I', parts[1], parts[2]);
	IF to_regclass(rel) IS NULL THEN
		RAISE EXCEPTION 'source relation % does not exist', rel USING ERRCODE = 'undefined_table';
	END IF;
	RETURN rel;
END
$$;
COMMENT ON FUNCTION dalgo_internal.source_relation(jsonb) IS 'Internal: the relation a postgres source reads, from its config';

-- An in-database sync: postgres sources copy a table, view or foreign table the
-- organization's warehouse role may read; csv sources load a file from the
-- organization's own directory dalgo.csv_dir/org_<hex id>/.
CREATE FUNCTION dalgo_internal.sync_source(run_id uuid) RETURNS void
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

-- ---------------------------------------------------------------------------
-- The connector protocol
-- ---------------------------------------------------------------------------

-- Run rows are written only by dalgo's own functions (app roles read them):
-- the connector protocol runs with the extension owner's rights, for callers
-- granted EXECUTE (dalgo_service).  Fair like claim_pending_run: the
-- organization with the fewest connector runs running first, then the one
-- waiting longest.
CREATE FUNCTION dalgo.claim_sync_run() RETURNS dalgo.sync_runs
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
COMMENT ON FUNCTION dalgo.claim_sync_run() IS
	'Connector protocol: claim a pending connector sync run (SKIP LOCKED; the organization with the fewest running, then the oldest) and mark it running; the returned row''s details.staging_table names its staging table (see stage_sync_run); a run over its organization''s quota fails instead; NULL when there is none';

CREATE FUNCTION dalgo.complete_sync_run(run_id uuid, rows_synced integer, error_message text DEFAULT NULL,
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
COMMENT ON FUNCTION dalgo.complete_sync_run(uuid, integer, text, jsonb) IS
	'Connector protocol: finish a claimed run with its row count, or with an error message (then it fails); a run loaded into its staging table (stage_sync_run) is typed and swapped in (finish_sync), or on failure its staging table is dropped and the previous table stays; details (an object) is merged in, except dalgo''s own keys schedule_id, skipped, runner_pid, attempt, lag_ms, on_demand, output_id, cancelled, staging_table, upload and user_id';

-- ---------------------------------------------------------------------------
-- csv sources
-- ---------------------------------------------------------------------------

-- Layout: each organization reads only its own directory
--   <dalgo.csv_dir>/org_<organization id, 32 hex digits without dashes>/
-- (the name of its warehouse schema).  Paths are relative to it; "..",
-- absolute paths and symlinks that lead out of it are refused, and a file
-- that does not exist gives the same error as one that is not allowed.
CREATE FUNCTION dalgo_internal.csv_path(organization_id uuid, relative_path text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_csv_path_org'
	LANGUAGE C STABLE;
COMMENT ON FUNCTION dalgo_internal.csv_path(uuid, text) IS
	'Internal: the canonical path of a readable csv file under dalgo.csv_dir/org_<hex id>/; ".." and absolute paths are refused, and a missing file and a path that leaves the directory give one error';

-- A csv source's path is checked when the source is saved, and again at sync time.
CREATE FUNCTION dalgo_internal.check_csv_source() RETURNS trigger
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
CREATE TRIGGER check_csv_source BEFORE INSERT OR UPDATE ON dalgo.sources
	FOR EACH ROW WHEN (NEW.source_type = 'csv') EXECUTE FUNCTION dalgo_internal.check_csv_source();
COMMENT ON TRIGGER check_csv_source ON dalgo.sources IS 'A csv source reads only its organization''s csv directory';

REVOKE ALL ON FUNCTION dalgo.is_connector_source(dalgo.source_type), dalgo_internal.synced_by_connector(jsonb),
	dalgo_internal.source_relation(jsonb),
	dalgo_internal.sync_source(uuid), dalgo.claim_sync_run(), dalgo.complete_sync_run(uuid, integer, text, jsonb),
	dalgo_internal.csv_path(uuid, text), dalgo_internal.check_csv_source()
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.is_connector_source(dalgo.source_type) TO dalgo_authenticated, dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.claim_sync_run(), dalgo.complete_sync_run(uuid, integer, text, jsonb) TO dalgo_service;

-- ---------------------------------------------------------------------------
-- google_sheets and api sources: HTTP in the run workers (src/http.c)
-- ---------------------------------------------------------------------------

-- Fetch a google_sheets or api source into a new staging table of its
-- organization's warehouse (text columns, jsonb for nested values); only a
-- dalgo run worker may call it.
CREATE FUNCTION dalgo_internal.fetch_http_source(run_id uuid, staging_table text) RETURNS bigint
	LANGUAGE c STRICT
	AS 'MODULE_PATHNAME', 'dalgo_fetch_http_source';
COMMENT ON FUNCTION dalgo_internal.fetch_http_source(uuid, text) IS
	'Internal: fetch the run''s google_sheets or api source over HTTP into the staging table staging_table of its organization''s warehouse; returns the rows written; refused outside a dalgo run worker';

CREATE FUNCTION dalgo.http_address_allowed(address inet) RETURNS boolean
	LANGUAGE c STRICT STABLE
	AS 'MODULE_PATHNAME', 'dalgo_http_address_allowed';
COMMENT ON FUNCTION dalgo.http_address_allowed(inet) IS
	'Would a google_sheets or api sync be allowed to connect to this address under the current settings (dalgo.http_allow_private, dalgo.http_allow_hosts)? A pure check that connects nowhere; superusers';

CREATE FUNCTION dalgo.run_progress(OUT run_id uuid, OUT organization_id uuid, OUT source_id uuid,
								   OUT rows_so_far bigint, OUT bytes_so_far bigint, OUT page integer,
								   OUT updated_at timestamptz)
	RETURNS SETOF record
	LANGUAGE c STRICT VOLATILE
	AS 'MODULE_PATHNAME', 'dalgo_run_progress_sql';
COMMENT ON FUNCTION dalgo.run_progress() IS
	'Progress of the syncs running now in this database (rows and bytes so far, the current page), published by the run workers at least every second; each run is shown only to members of its organization (and to superusers and dalgo_service)';

REVOKE ALL ON FUNCTION dalgo_internal.fetch_http_source(uuid, text),
	dalgo.http_address_allowed(inet), dalgo.run_progress()
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.run_progress() TO dalgo_authenticated, dalgo_service;
