-- audit.sql: the audit trail.  dalgo_internal.audit_change() (C) records who
-- changed what in every dalgo table and in any table handed to
-- dalgo.enable_audit(); dalgo.audit_logs is append-only.

CREATE FUNCTION dalgo.uuid_v7() RETURNS uuid
	AS 'MODULE_PATHNAME', 'dalgo_uuid_v7_sql'
	LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.uuid_v7() IS 'A time-ordered (version 7) uuid; audit rows use these ids';

CREATE FUNCTION dalgo_internal.audit_change() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_audit_trigger'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo_internal.audit_change() IS
	'AFTER trigger writing dalgo.audit_logs: per statement with transition tables (per row on foreign tables); arguments: organization column ('''' for none), then excluded columns. Attach it with dalgo.enable_audit()';

CREATE FUNCTION dalgo_internal.guard_audit_logs() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_audit_log_guard'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo_internal.guard_audit_logs() IS 'Refuses UPDATE, DELETE and TRUNCATE of dalgo.audit_logs (except inside dalgo.purge_audit_logs)';

CREATE FUNCTION dalgo.purge_audit_logs(older_than interval) RETURNS bigint
	AS 'MODULE_PATHNAME', 'dalgo_purge_audit_logs'
	LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo.purge_audit_logs(interval) IS
	'Delete audit rows created more than older_than ago; returns the number deleted. Only dalgo_service and superusers';

-- purge_audit_logs() deletes by created_at: a BRIN index finds old rows
-- without scanning the table and costs next to nothing on the write path
-- (the trail is appended in time order).
CREATE INDEX audit_logs_created_at_idx ON dalgo.audit_logs USING brin (created_at) WITH (autosummarize = on);
COMMENT ON INDEX dalgo.audit_logs_created_at_idx IS 'Time index for dalgo.purge_audit_logs(): BRIN, the trail is appended in time order';

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON dalgo.audit_logs
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.guard_audit_logs();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON dalgo.audit_logs
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.guard_audit_logs();
COMMENT ON TRIGGER append_only ON dalgo.audit_logs IS 'The audit trail is append-only';
COMMENT ON TRIGGER append_only_truncate ON dalgo.audit_logs IS 'The audit trail is append-only';

CREATE FUNCTION dalgo.disable_audit(tbl regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t text;
BEGIN
	FOR t IN SELECT tgname FROM pg_trigger WHERE tgrelid = tbl AND NOT tgisinternal
			   AND tgname IN ('dalgo_audit', 'dalgo_audit_insert', 'dalgo_audit_update',
							  'dalgo_audit_delete', 'dalgo_audit_truncate')
	LOOP
		EXECUTE format('DROP TRIGGER %I ON %s', t, tbl);
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo.disable_audit(regclass) IS 'Stop auditing a table (drops the triggers dalgo.enable_audit created)';

CREATE FUNCTION dalgo.enable_audit(tbl regclass, exclude text[] DEFAULT '{}', organization_column text DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
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
$$;
COMMENT ON FUNCTION dalgo.enable_audit(regclass, text[], text) IS
	'Audit a table: exclude lists columns written as "[redacted]" (besides password_hash, token, token_hash, access_token_encrypted); organization_column names the uuid column of the organization (default: organization_id if present; '''' for none)';

REVOKE ALL ON FUNCTION dalgo.uuid_v7(), dalgo_internal.audit_change(), dalgo_internal.guard_audit_logs(),
	dalgo.purge_audit_logs(interval), dalgo.enable_audit(regclass, text[], text), dalgo.disable_audit(regclass)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.purge_audit_logs(interval) TO dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.uuid_v7() TO dalgo_authenticated, dalgo_service;

-- Audit every dalgo table but the log itself.
SELECT dalgo.enable_audit(c.oid::regclass, '{}',
	CASE c.relname WHEN 'organizations' THEN 'id' WHEN 'users' THEN '' END)
FROM pg_catalog.pg_class c
WHERE c.relnamespace = 'dalgo'::regnamespace AND c.relkind = 'r' AND c.relname <> 'audit_logs';
