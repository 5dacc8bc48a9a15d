-- loading.sql: how a synced table reaches the warehouse.  Every sync (postgres,
-- csv, the HTTP sources, an outside loader, an upload) fills a staging table
-- in the organization's warehouse schema; finish_sync() types its columns,
-- builds the typed table under a private name and swaps it in.  And tables
-- that arrive in a warehouse schema by any other path are made readable by
-- the organization's warehouse role and registered (an event trigger).

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
COMMENT ON FUNCTION dalgo_internal.create_staging_table(uuid, text[], text[], text) IS
	'Internal: create a sync run''s staging table (text or jsonb columns, owned by the warehouse role, guarded) and grant INSERT on it to its writer only';

-- The connector protocol's load path: a claimed run's staging table.
CREATE FUNCTION dalgo.stage_sync_run(run_id uuid, columns text[], column_types text[] DEFAULT NULL) RETURNS text
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
COMMENT ON FUNCTION dalgo.begin_upload(uuid, text[]) IS
	'Upload: start loading a file into a source from a client (signed-in members with write rights); creates an empty staging table with the given text columns and returns its qualified name, for COPY ... FROM STDIN (FORMAT csv, HEADER) by the same user, in this or a later transaction; dalgo.finish_upload() completes it';

CREATE FUNCTION dalgo.finish_upload(source_id uuid) RETURNS dalgo.sync_runs
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

-- A registered table without a producer that is dropped (by whoever made
-- it) is no longer listed.  dalgo's swaps drop only tables that a producer
-- made, and register them again themselves.
CREATE FUNCTION dalgo_internal.forget_warehouse_relations() RETURNS event_trigger
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
