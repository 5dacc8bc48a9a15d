-- secrets.sql: secrets stay write-only.  One redaction (src/redact.c)
-- serves the audit trail and SQL; the credentials stored in
-- dalgo.sources.config are encrypted at rest (below) and decrypted only
-- for the sync workers: end users get the column through
-- dalgo.source_config(), redacted, with credentials masked.

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
	-- Credentials, even encrypted, never leave: only whether they are set.
	IF doc ? 'credentials' THEN
		doc := pg_catalog.jsonb_set(doc, '{credentials}', '"[redacted]"');
	END IF;
	RETURN dalgo.redact(doc);
END
$$;
COMMENT ON FUNCTION dalgo.source_config(uuid) IS
	'A source''s config with its secrets redacted (dalgo.redact) and credentials shown as "[redacted]" when set, for members of the source''s organization; NULL for a source the caller cannot see. Stored secrets are write-only: replace them with UPDATE';

REVOKE ALL ON FUNCTION dalgo.redact(jsonb), dalgo.redact(text), dalgo.source_config(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.redact(jsonb), dalgo.redact(text) TO dalgo_authenticated, dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.source_config(uuid) TO dalgo_authenticated;
COMMENT ON COLUMN dalgo.sources.config IS
	'Source settings; credentials go under the key credentials (a JSON object), stored encrypted and decrypted only for the sync workers (credentials: null removes them). Write-only for end users: read it with dalgo.source_config(), redacted; redacted in the audit trail';

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
