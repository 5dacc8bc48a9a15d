-- claims_encoding: in a database that is not UTF-8 (LATIN1 here), claims
-- and tokens whose JSON carries \u escapes of characters the encoding lacks
-- never raise: the claims reader is used by row-level security and promises
-- never to raise, and a token either authenticates or fails with 28000.
\set ECHO none
\i test/fixtures/tap_setup.sql
\i test/fixtures/jwt.sql
\pset tuples_only false
\pset format aligned
DROP DATABASE IF EXISTS dalgo_latin1;
CREATE DATABASE dalgo_latin1 ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C';
SELECT dblink_connect('latin1', format('dbname=dalgo_latin1 port=%s host=%s', current_setting('port'),
	split_part(current_setting('unix_socket_directories'), ',', 1))) AS connected;
SELECT dblink_exec('latin1', 'CREATE EXTENSION dalgo') AS installed;
SELECT dblink_exec('latin1', $$INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-0000000000d1', 'latin@example.org')$$) AS user_added;
SELECT dblink_exec('latin1', format('SET dalgo.claims_authenticators = %I', session_user)) AS authenticator_listed;
CREATE FUNCTION pg_temp.claims_identity(claims text) RETURNS text LANGUAGE sql AS $$
	SELECT x FROM dblink('latin1', format($q$SELECT coalesce(dalgo.current_user_id()::text, 'none')
		FROM (SELECT set_config('request.jwt.claims', %L, true)) s$q$, claims)) AS t(x text) $$;
\echo '-- JSON u-escapes of characters LATIN1 lacks (CJK, emoji as a surrogate pair), and ones it has'
SELECT c AS claims, pg_temp.claims_identity(c) AS identity FROM (VALUES
	('{"sub": "11111111-0000-4000-8000-0000000000d1", "name": "\u4e2d\u6587"}'),
	('{"sub": "11111111-0000-4000-8000-0000000000d1", "emoji": "\ud83d\ude00"}'),
	('{"sub": "11111111-0000-4000-8000-0000000000d1", "name": "Jos\u00e9"}'),
	('{"sub": "11111111-0000-4000-8000-0000000000d1", "path": "C:\\\u4e2d"}'),
	('{"s\u0075b": "11111111-0000-4000-8000-0000000000d1"}'),
	('{"sub": "11111111-0000-4000-8000-0000000000d1\u4e2d"}'),
	('{"sub\u4e2d": "11111111-0000-4000-8000-0000000000d1"}'),
	('{"sub": "11111111-0000-4000-8000-0000000000d1", "bad": "\ud83d"}'),
	('{"sub": "11111111-0000-4000-8000-0000000000d1", "zero": "\u0000"}')
) v(c);
\echo '-- a signed token with such escapes: authenticates, or fails with 28000 only'
SELECT dblink_exec('latin1', format('SET dalgo.jwt_secret = %L', :secret)) AS secret_set;
SELECT x AS authenticated FROM dblink('latin1', format('SELECT dalgo.authenticate(%L)::text',
	pg_temp.jwt(:hs256, pg_temp.claims('11111111-0000-4000-8000-0000000000d1', '1 hour', ', "name": "\u4e2d\u6587"'), :secret))) AS t(x text);
SELECT dblink_exec('latin1', 'SET dalgo.jwt_issuer = ''https://auth.example''') AS issuer_set;
SELECT x AS refused FROM dblink('latin1', format($q$DO $d$ BEGIN PERFORM dalgo.authenticate(%L);
	EXCEPTION WHEN invalid_authorization_specification THEN RAISE NOTICE 'refused'; END $d$; SELECT 'only 28000'$q$,
	pg_temp.jwt(:hs256, pg_temp.claims('11111111-0000-4000-8000-0000000000d1', '1 hour', ', "iss": "https://auth.example/\u4e2d"'), :secret))) AS t(x text);
SELECT dblink_disconnect('latin1') AS disconnected;
DROP DATABASE dalgo_latin1 WITH (FORCE);
