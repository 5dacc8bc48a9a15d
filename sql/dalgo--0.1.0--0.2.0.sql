-- dalgo 0.1.0 -> 0.2.0
--
-- Every change to an installed object made while 0.2.0 is under work goes
-- both into its sql/ fragment (which builds the fresh install script) and
-- here, in the same commit.  test/t/upgrade_equals_fresh.pl checks that a
-- 0.1.0 database updated with this script equals a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION dalgo UPDATE TO '0.2.0'" to load this file. \quit

-- ident: identity lasts one transaction, claims are trusted from named
-- authenticators only, tokens may be bound to an audience and issuer
COMMENT ON FUNCTION dalgo.current_user_id() IS
	'The caller''s user id: from dalgo.authenticate(), else the dalgo.user_id setting, else request.jwt.claims->>''sub'' when session_user is listed in dalgo.claims_authenticators; settings count only in the transaction that set them; NULL when there is none or it is malformed';
COMMENT ON FUNCTION dalgo.authenticate(text, boolean) IS
	'Verify an HS256 JWT signed with dalgo.jwt_secret (exp required, nbf honoured, no crit header, aud and iss checked when dalgo.jwt_audience and dalgo.jwt_issuer are set, sub = an active user) and make its subject the caller''s identity for this transaction; session => true is refused (0A000); any failure raises 28000 "authentication failed"';
COMMENT ON FUNCTION dalgo.sign_out() IS 'Forget the identity set by dalgo.authenticate() in this transaction (RESET ALL does the same); refused while a data-modifying statement runs';
-- ident: dalgo.jwt_secret is no longer accepted from ALTER DATABASE/ROLE ... SET
-- (every role can read pg_db_role_setting); say so if 0.1.0 left one there.
DO $$
DECLARE
	n bigint;
BEGIN
	SELECT count(*) INTO n FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c
	WHERE pg_catalog.lower(c) LIKE 'dalgo.jwt_secret=%';
	IF n > 0 THEN
		RAISE WARNING 'dalgo.jwt_secret is stored in pg_db_role_setting % time(s); every role can read it there, and dalgo 0.2.0 ignores it', n
			USING HINT = 'Remove it with ALTER DATABASE/ROLE ... RESET dalgo.jwt_secret, rotate the secret, and set the new one in postgresql.conf or with ALTER SYSTEM.';
	END IF;
END
$$;
