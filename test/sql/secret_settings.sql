-- secret_settings: dalgo.jwt_secret never lands in a catalog that every
-- role can read.  ALTER DATABASE/ROLE ... SET and a function's SET clause
-- are refused; a value already stored in pg_db_role_setting (as 0.1.0
-- allowed) is ignored by new sessions.  Error messages never quote the
-- secret.
\set ECHO none
\i test/fixtures/tap_setup.sql
\pset tuples_only false
\pset format aligned
\set ON_ERROR_STOP false
\set secret '''0123456789abcdef0123456789abcdef-stored-secret'''
CREATE ROLE dalgo_test_secret_role NOLOGIN;
\echo '-- refused where it would be stored'
ALTER DATABASE :"DBNAME" SET dalgo.jwt_secret = :secret;
ALTER ROLE dalgo_test_secret_role SET dalgo.jwt_secret = :secret;
ALTER ROLE dalgo_test_secret_role IN DATABASE :"DBNAME" SET dalgo.jwt_secret = :secret;
ALTER ROLE ALL SET dalgo.jwt_secret = :secret;
ALTER USER dalgo_test_secret_role SET "DALGO.JWT_SECRET" = :secret;
SET dalgo.jwt_secret = :secret;
ALTER ROLE dalgo_test_secret_role SET dalgo.jwt_secret FROM CURRENT;
RESET dalgo.jwt_secret;
CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql SET dalgo.jwt_secret = :secret AS 'SELECT 1';
CREATE FUNCTION pg_temp.g() RETURNS int LANGUAGE sql AS 'SELECT 1';
ALTER FUNCTION pg_temp.g() SET dalgo.jwt_secret = :secret;
SELECT count(*) AS stored_settings FROM pg_db_role_setting s, unnest(s.setconfig) c WHERE c ILIKE 'dalgo.jwt_secret%';
SELECT count(*) AS stored_in_functions FROM pg_proc p, unnest(p.proconfig) c WHERE c ILIKE 'dalgo.jwt_secret%';
\echo '-- other settings and RESET still work'
ALTER ROLE dalgo_test_secret_role SET dalgo.jwt_audience = 'dalgo';
ALTER ROLE dalgo_test_secret_role RESET dalgo.jwt_secret;
ALTER ROLE dalgo_test_secret_role RESET ALL;
\echo '-- a too-short secret: the error does not quote it'
SET dalgo.jwt_secret = 'short-secret';
\echo '-- a value stored by 0.1.0 is ignored by new sessions (they warn, without quoting it)'
SET allow_system_table_mods = on;
INSERT INTO pg_db_role_setting (setdatabase, setrole, setconfig)
	SELECT oid, 0, ARRAY['dalgo.jwt_secret=' || :secret] FROM pg_database WHERE datname = current_database();
RESET allow_system_table_mods;
SELECT dblink_connect('legacy', format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
	split_part(current_setting('unix_socket_directories'), ',', 1))) AS connected;
SELECT x AS secret_in_new_session FROM dblink('legacy', $$SELECT quote_literal(current_setting('dalgo.jwt_secret'))$$) AS t(x text);
SELECT dblink_disconnect('legacy') AS disconnected;
ALTER DATABASE :"DBNAME" RESET dalgo.jwt_secret;
SELECT count(*) AS stored_settings FROM pg_db_role_setting s, unnest(s.setconfig) c WHERE c ILIKE 'dalgo.jwt_secret%';
DROP ROLE dalgo_test_secret_role;
