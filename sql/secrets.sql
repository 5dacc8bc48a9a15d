-- secrets.sql: secrets stay write-only.  One redaction (src/redact.c)
-- serves the audit trail and SQL; the credentials stored in
-- dalgo.sources.config are readable by dalgo_service (connectors) only:
-- end users get the column through dalgo.source_config(), redacted.

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

REVOKE ALL ON FUNCTION dalgo.redact(jsonb), dalgo.redact(text), dalgo.source_config(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.redact(jsonb), dalgo.redact(text) TO dalgo_authenticated, dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.source_config(uuid) TO dalgo_authenticated;
COMMENT ON COLUMN dalgo.sources.config IS
	'Source settings, credentials included: write-only for end users (read it redacted with dalgo.source_config()); dalgo_service reads it whole; redacted in the audit trail';

-- Run history is read by every member: what a connector or a failed sync
-- writes into a sync run passes through the same redaction.
CREATE FUNCTION dalgo_internal.redact_sync_run() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	NEW.error_message := dalgo.redact(NEW.error_message);
	NEW.details := dalgo.redact(NEW.details);
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo_internal.redact_sync_run() IS
	'BEFORE trigger on sync_runs: error_message and details pass through dalgo.redact(), so run history never shows credentials';
REVOKE ALL ON FUNCTION dalgo_internal.redact_sync_run() FROM PUBLIC;
CREATE TRIGGER redact_secrets BEFORE INSERT OR UPDATE OF error_message, details ON dalgo.sync_runs
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.redact_sync_run();
COMMENT ON TRIGGER redact_secrets ON dalgo.sync_runs IS 'Run history never shows credentials (dalgo.redact)';
