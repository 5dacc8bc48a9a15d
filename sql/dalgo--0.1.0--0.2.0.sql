-- dalgo 0.1.0 -> 0.2.0
--
-- Every change to an installed object made while 0.2.0 is under work goes
-- both into its sql/ fragment (which builds the fresh install script) and
-- here, in the same commit.  test/t/upgrade_equals_fresh.pl checks that a
-- 0.1.0 database updated with this script equals a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION dalgo UPDATE TO '0.2.0'" to load this file. \quit

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
