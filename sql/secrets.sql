-- secrets.sql: one redaction (src/redact.c) serves the audit trail and SQL.

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
