-- accounts.sql: accounts in the database.  Sign-up, sign-in with lockout,
-- rotating refresh tokens with reuse detection, password reset and change,
-- invitations, the mail delivery queue and API keys.  Every secret is
-- stored as a hash (bcrypt for passwords, SHA-256 for random tokens); raw
-- tokens exist only in a function's result and, until delivered, in a
-- queued message that only dalgo_service reads.
--
-- pgcrypto: dalgo does not require the pgcrypto extension to be created.
-- It declares three private functions that call pgcrypto's library
-- ($libdir/pgcrypto, shipped with PostgreSQL's contrib) directly, so that
-- crypt(), gen_salt() and gen_random_bytes() are found whatever schema
-- pgcrypto lives in, or whether it is installed in the database at all.

-- ---------------------------------------------------------------------------
-- Private helpers
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo_internal.pgcrypto_crypt(password text, salt text) RETURNS text
	AS '$libdir/pgcrypto', 'pg_crypt'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_internal.pgcrypto_crypt(text, text) IS 'pgcrypto''s crypt(), called in pgcrypto''s library (private)';

CREATE FUNCTION dalgo_internal.pgcrypto_gen_salt(kind text, rounds integer) RETURNS text
	AS '$libdir/pgcrypto', 'pg_gen_salt_rounds'
	LANGUAGE C VOLATILE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_internal.pgcrypto_gen_salt(text, integer) IS 'pgcrypto''s gen_salt(kind, rounds), called in pgcrypto''s library (private)';

CREATE FUNCTION dalgo_internal.pgcrypto_random_bytes(n integer) RETURNS bytea
	AS '$libdir/pgcrypto', 'pg_random_bytes'
	LANGUAGE C VOLATILE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_internal.pgcrypto_random_bytes(integer) IS 'pgcrypto''s gen_random_bytes(), called in pgcrypto''s library (private)';

CREATE FUNCTION dalgo_internal.new_token(nbytes integer) RETURNS text
	LANGUAGE sql VOLATILE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN translate(rtrim(encode(dalgo_internal.pgcrypto_random_bytes(nbytes), 'base64'), '='), E'+/\n', '-_');
COMMENT ON FUNCTION dalgo_internal.new_token(integer) IS 'nbytes random bytes from gen_random_bytes, base64url without padding (private)';

CREATE FUNCTION dalgo_internal.token_digest(token text) RETURNS text
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN encode(sha256(convert_to(token, 'UTF8')), 'hex');
COMMENT ON FUNCTION dalgo_internal.token_digest(text) IS 'Hex SHA-256 of a token: what refresh_tokens, password_reset_tokens, invitations and api_keys store (private)';

CREATE FUNCTION dalgo_internal.email_key(email text) RETURNS bytea
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN sha256(convert_to(lower(btrim(email)), 'UTF8'));
COMMENT ON FUNCTION dalgo_internal.email_key(text) IS 'SHA-256 of a trimmed, lower-cased email: the key of sign-in attempts, so unknown emails are not stored in clear (private)';

CREATE FUNCTION dalgo_internal.setting_interval(name text) RETURNS interval
	LANGUAGE sql STABLE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, pg_temp
	RETURN current_setting(name)::interval;
COMMENT ON FUNCTION dalgo_internal.setting_interval(text) IS 'A duration setting (dalgo.access_token_ttl and the like) as an interval in seconds (private)';

CREATE FUNCTION dalgo_internal.sign_access_token(user_id uuid, expires_at timestamptz) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_sign_access_token'
	LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo_internal.sign_access_token(uuid, timestamptz) IS
	'An HS256 access token {sub, iat, exp} signed with dalgo.jwt_secret, as dalgo.authenticate() accepts it (private)';

CREATE FUNCTION dalgo_internal.run_autonomously(action text, key bytea, id uuid) RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_run_autonomously'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo_internal.run_autonomously(text, bytea, uuid) IS
	'Run a recorder (failed_sign_in: dalgo_internal.note_failed_sign_in; token_reuse: dalgo_internal.note_token_reuse; api_key_used: dalgo_internal.note_api_key_use) in a background worker''s own, committed transaction, so the record survives the caller''s error (private)';

CREATE FUNCTION dalgo_internal.set_api_key_identity(key_id uuid, user_id uuid, organization_id uuid, role text) RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_set_api_key_identity'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo_internal.set_api_key_identity(uuid, uuid, uuid, text) IS
	'Make user_id the caller for this transaction, seen by membership functions only in organization_id and at most at role (private; used by dalgo.authenticate_api_key)';

CREATE FUNCTION dalgo_internal.act_as(user_id uuid) RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_act_as'
	LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION dalgo_internal.act_as(uuid) IS
	'Make user_id the caller for the rest of this transaction (private; dalgo.accept_invitation adds the member under the inviter''s identity)';

CREATE FUNCTION dalgo_internal.api_key_is_live(id uuid) RETURNS boolean
	AS 'MODULE_PATHNAME', 'dalgo_api_key_is_live'
	LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo_internal.api_key_is_live(uuid) IS
	'True if the API key is neither revoked nor expired in the latest committed state, whatever the isolation level (private)';

CREATE FUNCTION dalgo_internal.require_read_committed(what text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION '% must run in a READ COMMITTED transaction', what
			USING ERRCODE = 'invalid_transaction_state',
				  DETAIL = 'An older snapshot would not see the attempts and rotations other sessions committed.';
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.require_read_committed(text) IS
	'Raise 25000 unless the transaction is READ COMMITTED: the lockout count and the reuse and single-use checks must see the latest commits (private)';

CREATE FUNCTION dalgo.current_api_key_id() RETURNS uuid
	AS 'MODULE_PATHNAME', 'dalgo_current_api_key_id'
	LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION dalgo.current_api_key_id() IS 'The API key this transaction authenticated with (dalgo.authenticate_api_key), or NULL';

CREATE FUNCTION dalgo_internal.account_audit(action text, user_id uuid, organization_id uuid,
									resource_type text, resource_id uuid, details jsonb DEFAULT '{}')
	RETURNS void
	LANGUAGE sql
	SET search_path = pg_catalog, pg_temp
	-- (a string body: no parse-time dependency on audit_logs' columns, which may change shape)
	-- On a Citus cluster audit_logs is distributed by organization_id, which
	-- may not be NULL: a row outside any organization carries the nil uuid,
	-- as the audit trigger's rows do there.
AS $$
	INSERT INTO dalgo.audit_logs (id, organization_id, user_id, action, resource_type, resource_id, details)
		VALUES (dalgo.uuid_v7(),
				coalesce(account_audit.organization_id,
						 CASE WHEN dalgo_internal.citus_distributed('dalgo.audit_logs')
							  THEN '00000000-0000-0000-0000-000000000000'::uuid END),
				account_audit.user_id, account_audit.action,
				account_audit.resource_type, account_audit.resource_id, account_audit.details);
$$;
COMMENT ON FUNCTION dalgo_internal.account_audit(text, uuid, uuid, text, uuid, jsonb) IS
	'Write one audit row for an account flow (never with a password, token or hash in it) (private)';

CREATE FUNCTION dalgo_internal.check_new_password(password text) RETURNS text
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF password IS NULL OR char_length(password) < current_setting('dalgo.min_password_length')::integer THEN
		RAISE EXCEPTION 'password must be at least % characters long', current_setting('dalgo.min_password_length')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF octet_length(password) > 72 THEN
		RAISE EXCEPTION 'password must be at most 72 bytes long'
			USING ERRCODE = 'invalid_parameter_value', DETAIL = 'bcrypt ignores what follows the 72nd byte.';
	END IF;
	RETURN dalgo_internal.pgcrypto_crypt(password, dalgo_internal.pgcrypto_gen_salt('bf', current_setting('dalgo.bcrypt_cost')::integer));
END
$$;
COMMENT ON FUNCTION dalgo_internal.check_new_password(text) IS
	'Check a new password against dalgo.min_password_length and bcrypt''s 72-byte limit (22023 otherwise) and return its bcrypt hash at dalgo.bcrypt_cost (private)';

CREATE FUNCTION dalgo_internal.check_email(email text) RETURNS text
	LANGUAGE plpgsql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	e text := btrim(email);
BEGIN
	IF e IS NULL OR octet_length(e) > 254 OR e !~ '^[^@[:space:]]+@[^@[:space:].]+(\.[^@[:space:].]+)+$' THEN
		RAISE EXCEPTION 'invalid email address'
			USING ERRCODE = 'invalid_parameter_value', HINT = 'An email address looks like name@example.org.';
	END IF;
	RETURN e;
END
$$;
COMMENT ON FUNCTION dalgo_internal.check_email(text) IS 'Trim an email and check its form (22023 if malformed); returns the trimmed email (private)';

CREATE FUNCTION dalgo_internal.refuse_api_key(what text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF dalgo.current_api_key_id() IS NOT NULL THEN
		RAISE EXCEPTION '% needs a signed-in user, not an API key', what
			USING ERRCODE = 'insufficient_privilege';
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.refuse_api_key(text) IS 'Raise 42501 when the transaction authenticated with an API key: account management needs a person (private)';

-- ---------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------

-- Refresh tokens rotate within a family: the first token of a sign-in
-- starts one, each refresh adds the next.  replaced_at marks a token that
-- was rotated: presenting it again is reuse.
ALTER TABLE dalgo.refresh_tokens
	ADD COLUMN family_id uuid NOT NULL DEFAULT gen_random_uuid(),
	ADD COLUMN replaced_at timestamptz;
COMMENT ON COLUMN dalgo.refresh_tokens.token_hash IS 'Hex SHA-256 of the refresh token (the token itself is never stored)';
COMMENT ON COLUMN dalgo.refresh_tokens.family_id IS 'Sign-in the token descends from: a reused token revokes its whole family';
COMMENT ON COLUMN dalgo.refresh_tokens.replaced_at IS 'When the token was rotated by dalgo.refresh_session(); presenting it again is reuse';
CREATE INDEX refresh_tokens_family_id_idx ON dalgo.refresh_tokens (family_id);
COMMENT ON INDEX dalgo.refresh_tokens_family_id_idx IS 'Revocation of a token family';

COMMENT ON COLUMN dalgo.password_reset_tokens.token_hash IS 'Hex SHA-256 of the reset token (the token itself is never stored)';
COMMENT ON COLUMN dalgo.password_reset_tokens.used_at IS 'When the token was used, or superseded by a newer request; a token works once';

ALTER TABLE dalgo.invitations ADD COLUMN revoked_at timestamptz;
COMMENT ON COLUMN dalgo.invitations.token IS 'Hex SHA-256 of the invitation token (the raw token is delivered through dalgo.mail_messages and never stored); never written to the audit trail';
COMMENT ON COLUMN dalgo.invitations.revoked_at IS 'When the invitation was revoked or replaced by a newer one to the same email';
CREATE INDEX invitations_pending_idx ON dalgo.invitations (organization_id, lower(email))
	WHERE accepted_at IS NULL AND revoked_at IS NULL;
COMMENT ON INDEX dalgo.invitations_pending_idx IS 'Pending invitations of an organization by email (re-invitation replaces)';

-- No foreign key: attempts are kept for unknown emails too, and outlive users.
CREATE TABLE dalgo.sign_in_attempts (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	email_hash		bytea NOT NULL CHECK (octet_length(email_hash) = 32),
	user_id			uuid,
	succeeded		boolean NOT NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE dalgo.sign_in_attempts IS 'Sign-in attempts by email, for the lockout; failures are written by an autonomous recorder so they survive the failed call';
COMMENT ON COLUMN dalgo.sign_in_attempts.email_hash IS 'SHA-256 of the lower-cased, trimmed email (unknown emails are not stored in clear)';
COMMENT ON COLUMN dalgo.sign_in_attempts.user_id IS 'The user the email belonged to at the time, if any; deliberately not a foreign key';
CREATE INDEX sign_in_attempts_email_hash_idx ON dalgo.sign_in_attempts (email_hash, created_at);
COMMENT ON INDEX dalgo.sign_in_attempts_email_hash_idx IS 'Lockout check: the recent attempts of one email';

CREATE TABLE dalgo.mail_messages (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	kind			text NOT NULL CHECK (kind IN ('password_reset', 'invitation', 'run_failed', 'run_recovered')),
	recipient		text NOT NULL CHECK (recipient <> ''),
	payload			jsonb,
	state			text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'cancelled')),
	attempts		integer NOT NULL DEFAULT 0,
	claimed_at		timestamptz,
	completed_at	timestamptz,
	error			text,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	CHECK (payload IS NULL OR state IN ('pending', 'sending'))
);
COMMENT ON TABLE dalgo.mail_messages IS 'Mail delivery queue (readable by dalgo_service only): dalgo.claim_messages() hands messages to a mailer, dalgo.complete_message() finishes them and drops the payload';
COMMENT ON COLUMN dalgo.mail_messages.kind IS 'password_reset, invitation, or a schedule''s failure alert: run_failed, run_recovered';
COMMENT ON COLUMN dalgo.mail_messages.payload IS 'What the mail needs, including the raw token; NULL once the message is finished, so no raw token stays at rest';
COMMENT ON COLUMN dalgo.mail_messages.state IS 'pending -> sending -> sent | failed; cancelled when the token it carries was revoked or replaced';
CREATE INDEX mail_messages_queue_idx ON dalgo.mail_messages (created_at) WHERE state IN ('pending', 'sending');
COMMENT ON INDEX dalgo.mail_messages_queue_idx IS 'The mailer''s scan of unfinished messages, oldest first';

CREATE TABLE dalgo.api_keys (
	id				uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	organization_id	uuid NOT NULL REFERENCES dalgo.organizations (id) ON DELETE CASCADE,
	name			text NOT NULL CHECK (name <> '' AND char_length(name) <= 200),
	key_prefix		text NOT NULL,
	key_hash		text NOT NULL,
	role			dalgo.member_role NOT NULL DEFAULT 'member',
	expires_at		timestamptz,
	last_used_at	timestamptz,
	revoked_at		timestamptz,
	created_by_id	uuid REFERENCES dalgo.users (id) ON DELETE SET NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE dalgo.api_keys IS 'API keys for automations and connectors: each acts for its creator in one organization, at most at its role';
COMMENT ON COLUMN dalgo.api_keys.key_prefix IS 'First characters of the key, to tell keys apart (not enough to use one)';
COMMENT ON COLUMN dalgo.api_keys.key_hash IS 'Hex SHA-256 of the key (the key is shown once, by dalgo.create_api_key, and never stored)';
COMMENT ON COLUMN dalgo.api_keys.role IS 'Highest role the key acts with; the creator''s current role caps it further';
COMMENT ON COLUMN dalgo.api_keys.created_by_id IS 'The user the key acts for; a key whose creator is gone, inactive or no longer a member does not authenticate';
CREATE UNIQUE INDEX api_keys_key_hash_key ON dalgo.api_keys (key_hash);
COMMENT ON INDEX dalgo.api_keys_key_hash_key IS 'Key validation by hash';
CREATE INDEX api_keys_organization_id_idx ON dalgo.api_keys (organization_id);
COMMENT ON INDEX dalgo.api_keys_organization_id_idx IS 'Foreign key and tenant index';
CREATE INDEX api_keys_created_by_id_idx ON dalgo.api_keys (created_by_id);
COMMENT ON INDEX dalgo.api_keys_created_by_id_idx IS 'Foreign key index';

CREATE TRIGGER set_updated_at BEFORE UPDATE ON dalgo.sign_in_attempts
	FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at();
COMMENT ON TRIGGER set_updated_at ON dalgo.sign_in_attempts IS 'Stamps updated_at with now() on every update';
CREATE TRIGGER set_updated_at BEFORE UPDATE ON dalgo.mail_messages
	FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at();
COMMENT ON TRIGGER set_updated_at ON dalgo.mail_messages IS 'Stamps updated_at with now() on every update';
CREATE TRIGGER set_updated_at BEFORE UPDATE ON dalgo.api_keys
	FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at();
COMMENT ON TRIGGER set_updated_at ON dalgo.api_keys IS 'Stamps updated_at with now() on every update';
CREATE TRIGGER tenant_fixed BEFORE UPDATE ON dalgo.api_keys
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.refuse_tenant_move();
COMMENT ON TRIGGER tenant_fixed ON dalgo.api_keys IS 'A row never moves to another organization';

-- Audit: the queue without its payload, keys without their hash.  Sign-in
-- attempts are not audited row by row: the flows write their own audit rows.
SELECT dalgo.enable_audit('dalgo.mail_messages', '{payload}', '');
SELECT dalgo.enable_audit('dalgo.api_keys', '{key_hash}');

-- Privileges and row-level security.  Only dalgo's functions write these
-- tables; app roles read no secret column.
REVOKE ALL ON dalgo.sign_in_attempts, dalgo.mail_messages, dalgo.api_keys FROM PUBLIC;
GRANT SELECT ON dalgo.sign_in_attempts, dalgo.mail_messages TO dalgo_service;
GRANT SELECT (id, organization_id, name, key_prefix, role, expires_at, last_used_at, revoked_at,
			  created_by_id, created_at, updated_at)
	ON dalgo.api_keys TO dalgo_authenticated, dalgo_service;
-- Invitations are written through invite_member/accept_invitation/revoke_invitation
-- only: a direct INSERT would skip the token hashing and the owner rule.
REVOKE INSERT, UPDATE ON dalgo.invitations FROM dalgo_authenticated;

ALTER TABLE dalgo.sign_in_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE dalgo.sign_in_attempts FORCE ROW LEVEL SECURITY;
ALTER TABLE dalgo.mail_messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE dalgo.mail_messages FORCE ROW LEVEL SECURITY;
ALTER TABLE dalgo.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE dalgo.api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY service_all ON dalgo.sign_in_attempts TO dalgo_service USING (true) WITH CHECK (true);
CREATE POLICY service_all ON dalgo.mail_messages TO dalgo_service USING (true) WITH CHECK (true);
CREATE POLICY service_all ON dalgo.api_keys TO dalgo_service USING (true) WITH CHECK (true);
COMMENT ON POLICY service_all ON dalgo.sign_in_attempts IS 'dalgo_service passes the tenant policies';
COMMENT ON POLICY service_all ON dalgo.mail_messages IS 'dalgo_service passes the tenant policies';
COMMENT ON POLICY service_all ON dalgo.api_keys IS 'dalgo_service passes the tenant policies';
CREATE POLICY tenant_select ON dalgo.api_keys FOR SELECT TO dalgo_authenticated
	USING (organization_id OPERATOR(pg_catalog.=) ANY ((SELECT dalgo.current_org_ids('admin'))::uuid[]));
COMMENT ON POLICY tenant_select ON dalgo.api_keys IS 'Admins and owners see their organizations'' keys (never the hash)';

-- ---------------------------------------------------------------------------
-- Sessions
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo_internal.issue_session(for_user uuid, in_family uuid)
	RETURNS TABLE (user_id uuid, access_token text, refresh_token text, expires_at timestamptz)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	uid uuid := issue_session.for_user;
	raw text := dalgo_internal.new_token(32);
	access_expires timestamptz := to_timestamp(floor(extract(epoch FROM now() + dalgo_internal.setting_interval('dalgo.access_token_ttl'))));
BEGIN
	INSERT INTO dalgo.refresh_tokens AS t (user_id, token_hash, expires_at, family_id)
		VALUES (uid, dalgo_internal.token_digest(raw), now() + dalgo_internal.setting_interval('dalgo.refresh_token_ttl'),
				coalesce(issue_session.in_family, gen_random_uuid()));
	RETURN QUERY SELECT uid, dalgo_internal.sign_access_token(uid, access_expires), raw, access_expires;
END
$$;
COMMENT ON FUNCTION dalgo_internal.issue_session(uuid, uuid) IS
	'Issue an access token and a new refresh token (in in_family, or a new family) for a user (private)';

CREATE FUNCTION dalgo_internal.note_failed_sign_in(email_hash bytea, user_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO dalgo.sign_in_attempts (email_hash, user_id, succeeded)
		VALUES (note_failed_sign_in.email_hash, note_failed_sign_in.user_id, false);
	PERFORM dalgo_internal.account_audit('sign_in_failed', NULL, NULL, 'user', note_failed_sign_in.user_id);
END
$$;
COMMENT ON FUNCTION dalgo_internal.note_failed_sign_in(bytea, uuid) IS
	'Record a failed sign-in and its audit row; run by the autonomous recorder, so it commits although the sign-in fails (private)';

CREATE FUNCTION dalgo_internal.note_token_reuse(unused bytea, family_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
	SET lock_timeout = '10s'
AS $$
DECLARE
	owner uuid;
	n bigint;
BEGIN
	-- Wait for a refresh of this family in flight, then revoke what it left.
	PERFORM pg_advisory_xact_lock(1684826471, hashtext(note_token_reuse.family_id::text));
	WITH r AS (
		UPDATE dalgo.refresh_tokens t SET revoked_at = now()
		WHERE t.family_id = note_token_reuse.family_id AND t.revoked_at IS NULL
		RETURNING t.user_id)
	SELECT max(r.user_id::text)::uuid, count(*) INTO owner, n FROM r;
	IF owner IS NULL THEN
		SELECT t.user_id INTO owner FROM dalgo.refresh_tokens t WHERE t.family_id = note_token_reuse.family_id LIMIT 1;
	END IF;
	PERFORM dalgo_internal.account_audit('refresh_token_reused', NULL, NULL, 'user', owner,
								jsonb_build_object('family_id', note_token_reuse.family_id, 'revoked', n));
END
$$;
COMMENT ON FUNCTION dalgo_internal.note_token_reuse(bytea, uuid) IS
	'Revoke every live token of a refresh-token family after a rotated token was presented again, with an audit row; run by the autonomous recorder (private)';

CREATE FUNCTION dalgo_internal.note_api_key_use(unused bytea, key_id uuid) RETURNS void
	LANGUAGE sql
	SET search_path = pg_catalog, pg_temp
	SET lock_timeout = '10s'
BEGIN ATOMIC
	UPDATE dalgo.api_keys a SET last_used_at = now()
	WHERE a.id = note_api_key_use.key_id
	  AND (a.last_used_at IS NULL OR a.last_used_at < now() - interval '1 minute');
END;
COMMENT ON FUNCTION dalgo_internal.note_api_key_use(bytea, uuid) IS
	'Set an API key''s last_used_at (at most once a minute); run by the autonomous recorder for dalgo.authenticate_api_key on a Citus cluster (private)';

CREATE FUNCTION dalgo.sign_up(email text, password text, full_name text DEFAULT NULL) RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	e text := dalgo_internal.check_email(sign_up.email);
	hash text := dalgo_internal.check_new_password(sign_up.password);
	uid uuid := gen_random_uuid();
	org uuid;
BEGIN
	IF EXISTS (SELECT FROM dalgo.users u WHERE lower(u.email) = lower(e) AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'an account with this email address already exists'
			USING ERRCODE = 'unique_violation', HINT = 'Sign in, or reset the password.';
	END IF;
	BEGIN
		INSERT INTO dalgo.users (id, email, password_hash, full_name)
			VALUES (uid, e, hash, nullif(btrim(sign_up.full_name), ''));
	EXCEPTION WHEN unique_violation THEN
		RAISE EXCEPTION 'an account with this email address already exists'
			USING ERRCODE = 'unique_violation', HINT = 'Sign in, or reset the password.';
	END;
	INSERT INTO dalgo.organizations (name, slug, org_type)
		VALUES (coalesce(nullif(btrim(sign_up.full_name), ''), e), 'personal-' || replace(uid::text, '-', ''), 'personal')
		RETURNING id INTO org;
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES (org, uid, 'owner');
	PERFORM dalgo_internal.account_audit('sign_up', uid, org, 'user', uid);
	RETURN uid;
END
$$;
COMMENT ON FUNCTION dalgo.sign_up(text, text, text) IS
	'Create an account (email unique case-insensitively among live users; password of dalgo.min_password_length characters to 72 bytes, hashed with bcrypt at dalgo.bcrypt_cost) and its personal organization, owned by it; returns the user id. Errors: 22023 malformed email or password, 23505 email taken';

CREATE FUNCTION dalgo.sign_in(email text, password text)
	RETURNS TABLE (user_id uuid, access_token text, refresh_token text, expires_at timestamptz)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	k bytea := dalgo_internal.email_key(sign_in.email);
	usr record;
	last_success timestamptz;
	failures bigint;
	ok boolean := false;
BEGIN
	PERFORM dalgo_internal.require_read_committed('dalgo.sign_in');
	IF k IS NULL OR sign_in.password IS NULL THEN
		RAISE EXCEPTION 'invalid email or password' USING ERRCODE = 'invalid_password';
	END IF;
	-- One attempt per email at a time, so the count below is exact.
	PERFORM pg_advisory_xact_lock(1684826469, hashtext(encode(k, 'hex')));
	SELECT max(a.created_at) INTO last_success FROM dalgo.sign_in_attempts a
		WHERE a.email_hash = k AND a.succeeded AND a.created_at > now() - dalgo_internal.setting_interval('dalgo.sign_in_lockout');
	SELECT count(*) INTO failures FROM dalgo.sign_in_attempts a
		WHERE a.email_hash = k AND NOT a.succeeded
		  AND a.created_at > greatest(clock_timestamp() - dalgo_internal.setting_interval('dalgo.sign_in_lockout'),
									  coalesce(last_success, '-infinity'));
	IF failures >= current_setting('dalgo.max_failed_sign_ins')::integer THEN
		RAISE EXCEPTION 'too many failed sign-ins for this email; try again later'
			USING ERRCODE = '28L01';
	END IF;

	SELECT u.id, u.password_hash, u.is_active INTO usr
		FROM dalgo.users u WHERE lower(u.email) = lower(btrim(sign_in.email)) AND u.deleted_at IS NULL;
	IF usr.id IS NOT NULL AND usr.password_hash IS NOT NULL THEN
		ok := dalgo_internal.pgcrypto_crypt(sign_in.password, usr.password_hash) = usr.password_hash AND usr.is_active;
	ELSE
		-- An unknown email spends the same bcrypt work as a wrong password.
		PERFORM dalgo_internal.pgcrypto_crypt(sign_in.password,
			dalgo_internal.pgcrypto_gen_salt('bf', current_setting('dalgo.bcrypt_cost')::integer));
	END IF;
	IF ok IS NOT TRUE THEN
		PERFORM dalgo_internal.run_autonomously('failed_sign_in', k, usr.id);
		RAISE EXCEPTION 'invalid email or password' USING ERRCODE = 'invalid_password';
	END IF;

	INSERT INTO dalgo.sign_in_attempts (email_hash, user_id, succeeded) VALUES (k, usr.id, true);
	PERFORM dalgo_internal.account_audit('sign_in', usr.id, NULL, 'user', usr.id);
	RETURN QUERY SELECT * FROM dalgo_internal.issue_session(usr.id, NULL);
END
$$;
COMMENT ON FUNCTION dalgo.sign_in(text, text) IS
	'Check an email and password; returns an access token (HS256, dalgo.access_token_ttl) and a refresh token (dalgo.refresh_token_ttl). Unknown email, wrong password, inactive or deleted user: 28P01 "invalid email or password", recorded although the call fails; after dalgo.max_failed_sign_ins failures within dalgo.sign_in_lockout: 28L01 at once';

CREATE FUNCTION dalgo.refresh_session(token text)
	RETURNS TABLE (user_id uuid, access_token text, refresh_token text, expires_at timestamptz)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	h text := dalgo_internal.token_digest(refresh_session.token);
	tok record;
BEGIN
	PERFORM dalgo_internal.require_read_committed('dalgo.refresh_session');
	SELECT t.id, t.user_id, t.family_id, t.expires_at, t.revoked_at, t.replaced_at INTO tok
		FROM dalgo.refresh_tokens t WHERE t.token_hash = h;
	IF tok.id IS NULL THEN
		RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	IF tok.replaced_at IS NOT NULL THEN
		-- A rotated token came back: stolen-token signal.  The family dies
		-- (in a transaction of its own, so it stays dead) and the call fails.
		PERFORM dalgo_internal.run_autonomously('token_reuse', NULL, tok.family_id);
		RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	-- A refresh of this family in flight: this one loses, without killing the family.
	IF NOT pg_try_advisory_xact_lock(1684826471, hashtext(tok.family_id::text)) THEN
		RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	SELECT t.id, t.user_id, t.family_id, t.expires_at, t.revoked_at, t.replaced_at INTO tok
		FROM dalgo.refresh_tokens t WHERE t.id = tok.id FOR UPDATE;
	IF tok.revoked_at IS NOT NULL OR tok.expires_at <= now()
	   OR NOT EXISTS (SELECT FROM dalgo.users u WHERE u.id = tok.user_id AND u.is_active AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'invalid refresh token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	UPDATE dalgo.refresh_tokens t SET revoked_at = now(), replaced_at = now() WHERE t.id = tok.id;
	RETURN QUERY SELECT * FROM dalgo_internal.issue_session(tok.user_id, tok.family_id);
END
$$;
COMMENT ON FUNCTION dalgo.refresh_session(text) IS
	'Rotate a refresh token (the argument is named token, as refresh_token is a result column): revoke it and issue a new access and refresh token in the same family. A token that was already rotated revokes its whole family and fails (reuse detection); of two concurrent refreshes exactly one succeeds. Any failure: 28000 "invalid refresh token"';

CREATE FUNCTION dalgo.end_session(refresh_token text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	tok record;
BEGIN
	SELECT t.user_id, t.family_id INTO tok FROM dalgo.refresh_tokens t
		WHERE t.token_hash = dalgo_internal.token_digest(end_session.refresh_token);
	IF tok.family_id IS NULL THEN
		RETURN;
	END IF;
	UPDATE dalgo.refresh_tokens t SET revoked_at = now()
		WHERE t.family_id = tok.family_id AND t.revoked_at IS NULL;
	PERFORM dalgo_internal.account_audit('session_ended', tok.user_id, NULL, 'user', tok.user_id,
								jsonb_build_object('family_id', tok.family_id));
END
$$;
COMMENT ON FUNCTION dalgo.end_session(text) IS 'Sign out one session: revoke every token of the refresh token''s family (an unknown token does nothing)';

CREATE FUNCTION dalgo.end_all_sessions() RETURNS bigint
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	n bigint;
BEGIN
	PERFORM dalgo_internal.refuse_api_key('ending sessions');
	IF me IS NULL THEN
		RAISE EXCEPTION 'ending sessions needs a signed-in user' USING ERRCODE = 'insufficient_privilege';
	END IF;
	WITH r AS (UPDATE dalgo.refresh_tokens t SET revoked_at = now()
			   WHERE t.user_id = me AND t.revoked_at IS NULL RETURNING 1)
	SELECT count(*) INTO n FROM r;
	PERFORM dalgo_internal.account_audit('all_sessions_ended', me, NULL, 'user', me, jsonb_build_object('revoked', n));
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo.end_all_sessions() IS 'Sign the current user out everywhere: revoke all of their refresh tokens; returns how many';

-- ---------------------------------------------------------------------------
-- Mail queue
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo_internal.queue_mail(kind text, recipient text, payload jsonb) RETURNS uuid
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id uuid;
BEGIN
	INSERT INTO dalgo.mail_messages AS m (kind, recipient, payload)
		VALUES (queue_mail.kind, queue_mail.recipient, queue_mail.payload) RETURNING m.id INTO id;
	-- The payload says nothing: anyone may LISTEN; the mailer claims the work.
	PERFORM pg_notify('dalgo_mail', '');
	RETURN id;
END
$$;
COMMENT ON FUNCTION dalgo_internal.queue_mail(text, text, jsonb) IS 'Queue a message and NOTIFY dalgo_mail with an empty payload (private)';

CREATE FUNCTION dalgo.claim_messages(max integer DEFAULT 10) RETURNS SETOF dalgo.mail_messages
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF max IS NULL OR max < 1 OR max > 1000 THEN
		RAISE EXCEPTION 'max must be between 1 and 1000' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN QUERY
	UPDATE dalgo.mail_messages m SET state = 'sending', claimed_at = now(), attempts = m.attempts + 1
	WHERE m.id IN (SELECT q.id FROM dalgo.mail_messages q
				   WHERE q.state = 'pending'
					  OR (q.state = 'sending' AND q.claimed_at < now() - dalgo_internal.setting_interval('dalgo.mail_claim_timeout'))
				   ORDER BY q.created_at, q.id LIMIT claim_messages.max
				   FOR UPDATE SKIP LOCKED)
	RETURNING m.*;
END
$$;
COMMENT ON FUNCTION dalgo.claim_messages(integer) IS
	'Mailer (dalgo_service): claim up to max unfinished messages, oldest first, skipping those another mailer holds (SKIP LOCKED); a claim older than dalgo.mail_claim_timeout can be claimed again';

CREATE FUNCTION dalgo.complete_message(id uuid, error text DEFAULT NULL) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE dalgo.mail_messages m
		SET state = CASE WHEN complete_message.error IS NULL THEN 'sent' ELSE 'failed' END,
			payload = NULL, error = complete_message.error, completed_at = now()
		WHERE m.id = complete_message.id AND m.state = 'sending';
	IF NOT FOUND THEN
		RAISE EXCEPTION 'message % is not being sent', complete_message.id
			USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Claim it with dalgo.claim_messages() first.';
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.complete_message(uuid, text) IS
	'Mailer (dalgo_service): finish a claimed message, sent (error NULL) or failed; either way its payload, and the raw token in it, is dropped';

-- ---------------------------------------------------------------------------
-- Passwords
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.request_password_reset(email text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	usr record;
	raw text;
	rid uuid;
BEGIN
	SELECT u.id, u.email INTO usr FROM dalgo.users u
		WHERE lower(u.email) = lower(btrim(request_password_reset.email)) AND u.deleted_at IS NULL AND u.is_active;
	IF usr.id IS NULL THEN
		RETURN;					-- says nothing about whether the email exists
	END IF;
	-- Only the newest token works.
	UPDATE dalgo.password_reset_tokens t SET used_at = now() WHERE t.user_id = usr.id AND t.used_at IS NULL;
	UPDATE dalgo.mail_messages m SET state = 'cancelled', payload = NULL
		WHERE m.kind = 'password_reset' AND m.state = 'pending' AND m.payload->>'user_id' = usr.id::text;
	raw := dalgo_internal.new_token(32);
	INSERT INTO dalgo.password_reset_tokens AS t (user_id, token_hash, expires_at)
		VALUES (usr.id, dalgo_internal.token_digest(raw), now() + dalgo_internal.setting_interval('dalgo.password_reset_ttl'))
		RETURNING t.id INTO rid;
	PERFORM dalgo_internal.queue_mail('password_reset', usr.email,
		jsonb_build_object('token', raw, 'user_id', usr.id,
						   'expires_at', now() + dalgo_internal.setting_interval('dalgo.password_reset_ttl')));
	PERFORM dalgo_internal.account_audit('password_reset_requested', NULL, NULL, 'user', usr.id);
END
$$;
COMMENT ON FUNCTION dalgo.request_password_reset(text) IS
	'Start a password reset: for a live, active user, a single-use token (dalgo.password_reset_ttl) goes to the mail queue; says nothing about whether the email exists';

CREATE FUNCTION dalgo.reset_password(token text, new_password text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	hash text := dalgo_internal.check_new_password(reset_password.new_password);
	tok record;
BEGIN
	PERFORM dalgo_internal.require_read_committed('dalgo.reset_password');
	SELECT t.id, t.user_id, t.used_at, t.expires_at INTO tok FROM dalgo.password_reset_tokens t
		WHERE t.token_hash = dalgo_internal.token_digest(reset_password.token) FOR UPDATE;
	IF tok.id IS NULL OR tok.used_at IS NOT NULL OR tok.expires_at <= now()
	   OR NOT EXISTS (SELECT FROM dalgo.users u WHERE u.id = tok.user_id AND u.is_active AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'invalid or expired password reset token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	UPDATE dalgo.password_reset_tokens t SET used_at = now() WHERE t.id = tok.id;
	UPDATE dalgo.users u SET password_hash = hash WHERE u.id = tok.user_id;
	UPDATE dalgo.refresh_tokens t SET revoked_at = now() WHERE t.user_id = tok.user_id AND t.revoked_at IS NULL;
	PERFORM dalgo_internal.account_audit('password_reset', tok.user_id, NULL, 'user', tok.user_id);
END
$$;
COMMENT ON FUNCTION dalgo.reset_password(text, text) IS
	'Set a new password with a reset token: works once, before it expires; revokes all of the user''s refresh tokens. Errors: 22023 weak password, 28000 invalid or expired token';

CREATE FUNCTION dalgo.change_password(current_password text, new_password text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	old_hash text;
	hash text;
BEGIN
	PERFORM dalgo_internal.refuse_api_key('changing a password');
	IF me IS NULL THEN
		RAISE EXCEPTION 'changing a password needs a signed-in user' USING ERRCODE = 'insufficient_privilege';
	END IF;
	SELECT u.password_hash INTO old_hash FROM dalgo.users u
		WHERE u.id = me AND u.is_active AND u.deleted_at IS NULL FOR UPDATE;
	IF old_hash IS NULL OR current_password IS NULL
	   OR dalgo_internal.pgcrypto_crypt(current_password, old_hash) IS DISTINCT FROM old_hash THEN
		RAISE EXCEPTION 'invalid password' USING ERRCODE = 'invalid_password';
	END IF;
	hash := dalgo_internal.check_new_password(new_password);
	UPDATE dalgo.users u SET password_hash = hash WHERE u.id = me;
	PERFORM dalgo_internal.account_audit('password_changed', me, NULL, 'user', me);
END
$$;
COMMENT ON FUNCTION dalgo.change_password(text, text) IS
	'Change the signed-in user''s password after checking the current one (28P01 if wrong); not with an API key';

-- ---------------------------------------------------------------------------
-- Invitations
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.invite_member(organization_id uuid, email text, role dalgo.member_role) RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	org uuid := invite_member.organization_id;
	e text := dalgo_internal.check_email(invite_member.email);
	raw text := dalgo_internal.new_token(32);
	org_name text;
	iid uuid;
	earlier uuid[];
BEGIN
	IF me IS NULL OR org IS NULL OR invite_member.role IS NULL OR NOT dalgo.is_org_member(org, 'admin') THEN
		RAISE EXCEPTION 'only admins and owners of the organization can invite'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF invite_member.role = 'owner' AND NOT dalgo.is_org_member(org, 'owner') THEN
		RAISE EXCEPTION 'only an owner can invite an owner' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF EXISTS (SELECT FROM dalgo.organization_members m JOIN dalgo.users u ON u.id = m.user_id
			   WHERE m.organization_id = org AND m.deleted_at IS NULL
				 AND lower(u.email) = lower(e) AND u.deleted_at IS NULL) THEN
		RAISE EXCEPTION '% is already a member of this organization', e USING ERRCODE = 'unique_violation';
	END IF;
	SELECT o.name INTO org_name FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL;

	-- Re-inviting a pending email replaces the earlier invitation.  The
	-- invitations are read first, then their mail cancelled: on a Citus
	-- cluster one statement may not read a distributed table (invitations)
	-- and modify a reference table (mail_messages).
	earlier := ARRAY(SELECT i.id FROM dalgo.invitations i
					 WHERE i.organization_id = org AND lower(i.email) = lower(e)
					   AND i.accepted_at IS NULL AND i.revoked_at IS NULL);
	UPDATE dalgo.mail_messages m SET state = 'cancelled', payload = NULL
		WHERE m.kind = 'invitation' AND m.state = 'pending'
		  AND (m.payload->>'invitation_id')::uuid = ANY (earlier);
	UPDATE dalgo.invitations i SET revoked_at = now()
		WHERE i.organization_id = org AND lower(i.email) = lower(e) AND i.accepted_at IS NULL AND i.revoked_at IS NULL;

	INSERT INTO dalgo.invitations AS i (email, organization_id, role, token, expires_at, invited_by_id)
		VALUES (e, org, invite_member.role, dalgo_internal.token_digest(raw),
				now() + dalgo_internal.setting_interval('dalgo.invitation_ttl'), me)
		RETURNING i.id INTO iid;
	PERFORM dalgo_internal.queue_mail('invitation', e,
		jsonb_build_object('token', raw, 'invitation_id', iid, 'organization_id', org,
						   'organization_name', org_name, 'role', invite_member.role,
						   'expires_at', now() + dalgo_internal.setting_interval('dalgo.invitation_ttl')));
	PERFORM dalgo_internal.account_audit('invitation_sent', me, org, 'invitation', iid,
								jsonb_build_object('role', invite_member.role));
	RETURN iid;
END
$$;
COMMENT ON FUNCTION dalgo.invite_member(uuid, text, dalgo.member_role) IS
	'Invite an email to an organization at a role (admins and owners; only owners invite owners); replaces a pending invitation to the same email; the token (dalgo.invitation_ttl) goes to the mail queue and only its hash is stored. Returns the invitation id';

CREATE FUNCTION dalgo.accept_invitation(token text) RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	inv record;
	my_email text;
BEGIN
	PERFORM dalgo_internal.refuse_api_key('accepting an invitation');
	IF me IS NULL THEN
		RAISE EXCEPTION 'accepting an invitation needs a signed-in user' USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- Found by its token first, then locked in its organization's shard: on a
	-- Citus cluster a row lock must name the distribution column, and the
	-- membership written below (a reference table) needs the read before it
	-- made over one connection per node.
	IF dalgo_internal.citus_distributed('dalgo.invitations') THEN
		PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
	END IF;
	SELECT i.organization_id, i.id INTO inv FROM dalgo.invitations i
		WHERE i.token = dalgo_internal.token_digest(accept_invitation.token);
	IF inv.id IS NOT NULL THEN
		SELECT i.* INTO inv FROM dalgo.invitations i
			WHERE i.organization_id = inv.organization_id AND i.id = inv.id
			  AND i.token = dalgo_internal.token_digest(accept_invitation.token) FOR UPDATE;
	END IF;
	IF inv.id IS NULL THEN
		RAISE EXCEPTION 'invalid invitation token' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	SELECT u.email INTO my_email FROM dalgo.users u WHERE u.id = me AND u.is_active AND u.deleted_at IS NULL;
	IF my_email IS NULL OR lower(my_email) <> lower(inv.email) THEN
		RAISE EXCEPTION 'this invitation was sent to another email address' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF inv.accepted_at IS NOT NULL THEN
		RAISE EXCEPTION 'this invitation has already been accepted' USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	IF inv.revoked_at IS NOT NULL THEN
		RAISE EXCEPTION 'this invitation has been revoked' USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	IF inv.expires_at <= now() THEN
		RAISE EXCEPTION 'this invitation has expired' USING ERRCODE = 'object_not_in_prerequisite_state',
			HINT = 'Ask for a new invitation.';
	END IF;
	IF EXISTS (SELECT FROM dalgo.organization_members m
			   WHERE m.organization_id = inv.organization_id AND m.user_id = me AND m.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'you are already a member of this organization' USING ERRCODE = 'unique_violation';
	END IF;

	-- The member is added by the inviter, under the inviter's current role:
	-- an invitation never grants more than its sender may grant now.
	IF inv.invited_by_id IS NULL THEN
		RAISE EXCEPTION 'the inviter can no longer invite to this organization' USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM dalgo_internal.act_as(inv.invited_by_id);
	IF NOT dalgo.is_org_member(inv.organization_id, CASE WHEN inv.role = 'owner' THEN 'owner' ELSE 'admin' END::dalgo.member_role) THEN
		PERFORM dalgo_internal.act_as(me);
		RAISE EXCEPTION 'the inviter can no longer invite to this organization' USING ERRCODE = 'insufficient_privilege';
	END IF;
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES (inv.organization_id, me, inv.role);
	PERFORM dalgo_internal.act_as(me);

	UPDATE dalgo.invitations i SET accepted_at = now() WHERE i.organization_id = inv.organization_id AND i.id = inv.id;
	PERFORM dalgo_internal.account_audit('invitation_accepted', me, inv.organization_id, 'invitation', inv.id,
								jsonb_build_object('role', inv.role));
	RETURN inv.organization_id;
END
$$;
COMMENT ON FUNCTION dalgo.accept_invitation(text) IS
	'Accept an invitation as the signed-in user whose email it was sent to (case-insensitively): adds the membership at the invited role, as long as the inviter may still grant it; returns the organization id. Errors: 28000 unknown token, 42501 wrong user, 55000 expired, revoked or used';

CREATE FUNCTION dalgo.revoke_invitation(invitation_id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	inv record;
BEGIN
	-- Found first, then locked in its organization's shard (Citus: see
	-- accept_invitation).
	IF dalgo_internal.citus_distributed('dalgo.invitations') THEN
		PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
	END IF;
	SELECT i.organization_id, i.id INTO inv FROM dalgo.invitations i WHERE i.id = revoke_invitation.invitation_id;
	IF inv.id IS NOT NULL THEN
		SELECT i.id, i.organization_id INTO inv FROM dalgo.invitations i
			WHERE i.organization_id = inv.organization_id AND i.id = inv.id FOR UPDATE;
	END IF;
	IF inv.id IS NULL OR NOT dalgo.is_org_member(inv.organization_id, 'admin') THEN
		RAISE EXCEPTION 'invitation not found' USING ERRCODE = 'no_data_found';
	END IF;
	UPDATE dalgo.invitations i SET revoked_at = now()
		WHERE i.organization_id = inv.organization_id AND i.id = inv.id AND i.accepted_at IS NULL AND i.revoked_at IS NULL;
	IF FOUND THEN
		UPDATE dalgo.mail_messages m SET state = 'cancelled', payload = NULL
			WHERE m.kind = 'invitation' AND m.state = 'pending' AND m.payload->>'invitation_id' = inv.id::text;
		PERFORM dalgo_internal.account_audit('invitation_revoked', dalgo.current_user_id(), inv.organization_id,
									'invitation', inv.id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.revoke_invitation(uuid) IS 'Revoke a pending invitation (admins and owners of its organization); its queued mail is cancelled';

-- ---------------------------------------------------------------------------
-- API keys
-- ---------------------------------------------------------------------------

CREATE FUNCTION dalgo.create_api_key(organization_id uuid, name text, role dalgo.member_role DEFAULT 'member',
									 expires_at timestamptz DEFAULT NULL)
	RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	me uuid := dalgo.current_user_id();
	org uuid := create_api_key.organization_id;
	raw text := 'dk_' || dalgo_internal.new_token(32);
	kid uuid;
BEGIN
	PERFORM dalgo_internal.refuse_api_key('creating an API key');
	IF me IS NULL OR org IS NULL OR NOT dalgo.is_org_member(org, 'admin') THEN
		RAISE EXCEPTION 'only admins and owners of the organization can create API keys'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF create_api_key.role IS NULL OR NOT dalgo.is_org_member(org, create_api_key.role) THEN
		RAISE EXCEPTION 'an API key''s role cannot exceed yours' USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF create_api_key.expires_at IS NOT NULL AND create_api_key.expires_at <= now() THEN
		RAISE EXCEPTION 'expires_at must be in the future' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	INSERT INTO dalgo.api_keys AS k (organization_id, name, key_prefix, key_hash, role, expires_at, created_by_id)
		VALUES (org, create_api_key.name, left(raw, 11), dalgo_internal.token_digest(raw), create_api_key.role,
				create_api_key.expires_at, me)
		RETURNING k.id INTO kid;
	PERFORM dalgo_internal.account_audit('api_key_created', me, org, 'api_key', kid,
								jsonb_build_object('name', create_api_key.name, 'role', create_api_key.role,
												   'key_prefix', left(raw, 11)));
	RETURN raw;
END
$$;
COMMENT ON FUNCTION dalgo.create_api_key(uuid, text, dalgo.member_role, timestamptz) IS
	'Create an API key for an organization (admins and owners; the key''s role at most the creator''s); returns the key, once: only its hash is stored';

CREATE FUNCTION dalgo.revoke_api_key(id uuid) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k record;
BEGIN
	SELECT a.id, a.organization_id INTO k FROM dalgo.api_keys a WHERE a.id = revoke_api_key.id FOR UPDATE;
	IF k.id IS NULL OR NOT dalgo.is_org_member(k.organization_id, 'admin') THEN
		RAISE EXCEPTION 'API key not found' USING ERRCODE = 'no_data_found';
	END IF;
	UPDATE dalgo.api_keys a SET revoked_at = now() WHERE a.id = k.id AND a.revoked_at IS NULL;
	IF FOUND THEN
		PERFORM dalgo_internal.account_audit('api_key_revoked', dalgo.current_user_id(), k.organization_id, 'api_key', k.id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo.revoke_api_key(uuid) IS 'Revoke an API key (admins and owners of its organization)';

CREATE FUNCTION dalgo.authenticate_api_key(key text) RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k record;
BEGIN
	SELECT a.id, a.organization_id, a.role, a.created_by_id, a.expires_at, a.revoked_at, a.last_used_at INTO k
		FROM dalgo.api_keys a WHERE a.key_hash = dalgo_internal.token_digest(authenticate_api_key.key);
	IF k.id IS NULL OR k.revoked_at IS NOT NULL OR k.expires_at <= now() OR k.created_by_id IS NULL
	   OR NOT dalgo_internal.api_key_is_live(k.id)
	   OR NOT EXISTS (SELECT FROM dalgo.users u WHERE u.id = k.created_by_id AND u.is_active AND u.deleted_at IS NULL)
	   OR NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = k.organization_id AND o.deleted_at IS NULL) THEN
		RAISE EXCEPTION 'invalid API key' USING ERRCODE = 'invalid_authorization_specification';
	END IF;
	IF (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute')
	   AND NOT current_setting('transaction_read_only')::boolean THEN
		IF dalgo_internal.citus_distributed('dalgo.api_keys') THEN
			-- On a Citus cluster a write here, as this function's owner, would
			-- bar the request's own role from those nodes for the rest of the
			-- transaction ("modified in this transaction by a different user").
			PERFORM dalgo_internal.run_autonomously('api_key_used', NULL, k.id);
		ELSE
			UPDATE dalgo.api_keys a SET last_used_at = now() WHERE a.id = k.id;
		END IF;
	END IF;
	PERFORM dalgo_internal.set_api_key_identity(k.id, k.created_by_id, k.organization_id, k.role::text);
	RETURN k.organization_id;
END
$$;
COMMENT ON FUNCTION dalgo.authenticate_api_key(text) IS
	'Verify an API key and make its creator the caller for this transaction, seen by every membership function and policy in the key''s organization only, at the lesser of the key''s role and the creator''s current role; returns the organization id. Unknown, revoked or expired: 28000 "invalid API key"';

CREATE FUNCTION dalgo_internal.refuse_api_key_organization() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- The check of dalgo_internal.refuse_api_key, inline: this trigger runs
	-- as the writing role, which has no USAGE on dalgo_internal.
	IF dalgo.current_api_key_id() IS NOT NULL THEN
		RAISE EXCEPTION 'creating an organization needs a signed-in user, not an API key'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo_internal.refuse_api_key_organization() IS
	'BEFORE INSERT trigger on organizations: an API key acts in its one organization and creates no other (dalgo.create_organization, dalgo.sign_up)';
CREATE TRIGGER api_key_scope BEFORE INSERT ON dalgo.organizations
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.refuse_api_key_organization();
COMMENT ON TRIGGER api_key_scope ON dalgo.organizations IS 'An API key creates no organization';

-- ---------------------------------------------------------------------------
-- Privileges
-- ---------------------------------------------------------------------------

REVOKE ALL ON FUNCTION
	dalgo_internal.pgcrypto_crypt(text, text), dalgo_internal.pgcrypto_gen_salt(text, integer), dalgo_internal.pgcrypto_random_bytes(integer),
	dalgo_internal.new_token(integer), dalgo_internal.token_digest(text), dalgo_internal.email_key(text), dalgo_internal.setting_interval(text),
	dalgo_internal.sign_access_token(uuid, timestamptz), dalgo_internal.run_autonomously(text, bytea, uuid),
	dalgo_internal.set_api_key_identity(uuid, uuid, uuid, text), dalgo_internal.act_as(uuid), dalgo.current_api_key_id(),
	dalgo_internal.api_key_is_live(uuid), dalgo_internal.require_read_committed(text), dalgo_internal.refuse_api_key_organization(),
	dalgo_internal.account_audit(text, uuid, uuid, text, uuid, jsonb), dalgo_internal.check_new_password(text),
	dalgo_internal.check_email(text), dalgo_internal.refuse_api_key(text), dalgo_internal.issue_session(uuid, uuid),
	dalgo_internal.note_failed_sign_in(bytea, uuid), dalgo_internal.note_token_reuse(bytea, uuid),
	dalgo_internal.note_api_key_use(bytea, uuid),
	dalgo.sign_up(text, text, text), dalgo.sign_in(text, text), dalgo.refresh_session(text),
	dalgo.end_session(text), dalgo.end_all_sessions(), dalgo_internal.queue_mail(text, text, jsonb),
	dalgo.claim_messages(integer), dalgo.complete_message(uuid, text),
	dalgo.request_password_reset(text), dalgo.reset_password(text, text), dalgo.change_password(text, text),
	dalgo.invite_member(uuid, text, dalgo.member_role), dalgo.accept_invitation(text), dalgo.revoke_invitation(uuid),
	dalgo.create_api_key(uuid, text, dalgo.member_role, timestamptz), dalgo.revoke_api_key(uuid),
	dalgo.authenticate_api_key(text)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
	dalgo.sign_up(text, text, text), dalgo.sign_in(text, text), dalgo.refresh_session(text),
	dalgo.end_session(text), dalgo.request_password_reset(text), dalgo.reset_password(text, text),
	dalgo.authenticate_api_key(text), dalgo.current_api_key_id()
	TO dalgo_anon, dalgo_authenticated;
GRANT EXECUTE ON FUNCTION
	dalgo.end_all_sessions(), dalgo.change_password(text, text),
	dalgo.invite_member(uuid, text, dalgo.member_role), dalgo.accept_invitation(text), dalgo.revoke_invitation(uuid),
	dalgo.create_api_key(uuid, text, dalgo.member_role, timestamptz), dalgo.revoke_api_key(uuid)
	TO dalgo_authenticated;
GRANT EXECUTE ON FUNCTION dalgo.claim_messages(integer), dalgo.complete_message(uuid, text), dalgo.current_api_key_id()
	TO dalgo_service;
