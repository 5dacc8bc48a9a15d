-- identity_pooling: one server connection serves two clients in turn, as
-- under a transaction pooler.  Client A's session-scoped authenticate() is
-- refused; its session-level SET dalgo.user_id and request.jwt.claims do
-- not carry into client B's transaction, which has no identity until it
-- sets its own; a transaction-local identity always wins.
\set ECHO none
\i test/fixtures/tap_setup.sql
\i test/fixtures/jwt.sql
\pset tuples_only false
\pset format aligned
\set ON_ERROR_STOP false
INSERT INTO dalgo.users (id, email) VALUES
	('11111111-0000-4000-8000-0000000000e1', 'client.a@example.org'),
	('11111111-0000-4000-8000-0000000000e2', 'client.b@example.org');
INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000e0', 'Pool org', 'pool-org');
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
	('22222222-0000-4000-8000-0000000000e0', '11111111-0000-4000-8000-0000000000e1', 'owner');
INSERT INTO dalgo.sources (organization_id, name, source_type) VALUES ('22222222-0000-4000-8000-0000000000e0', 'A''s source', 'csv');
SET dalgo.jwt_secret = :secret;
SELECT pg_temp.jwt(:hs256, pg_temp.claims('11111111-0000-4000-8000-0000000000e1'), :secret) AS token_a \gset
\echo '-- client A asks for a session identity: refused'
BEGIN;
SELECT dalgo.authenticate(:'token_a', true);
ROLLBACK;
\echo '-- client B, next: no identity'
BEGIN;
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.current_user_id() AS client_b, (SELECT count(*) FROM dalgo.sources) AS sources_b_reads;
COMMIT;
\echo '-- client A sets dalgo.user_id for the session (not LOCAL), which counts in its own transaction'
BEGIN;
SET dalgo.user_id = '11111111-0000-4000-8000-0000000000e1';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.current_user_id() AS client_a, (SELECT count(*) FROM dalgo.sources) AS sources_a_reads;
COMMIT;
\echo '-- client B, next transaction on the same connection: no identity, and a warning'
BEGIN;
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.current_user_id() AS client_b, (SELECT count(*) FROM dalgo.sources) AS sources_b_reads;
COMMIT;
\echo '-- nor in autocommit mode, nor after a savepoint that set and rolled back'
SELECT dalgo.current_user_id() AS client_b;
BEGIN;
SAVEPOINT s;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e2';
ROLLBACK TO SAVEPOINT s;
SELECT dalgo.current_user_id() AS client_b;
COMMIT;
\echo '-- client B''s own transaction-local identity wins'
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e2';
SELECT dalgo.current_user_id() AS client_b;
COMMIT;
BEGIN;
SELECT pg_temp.jwt(:hs256, pg_temp.claims('11111111-0000-4000-8000-0000000000e2'), :secret) AS token_b \gset
SELECT dalgo.authenticate(:'token_b') AS client_b;
COMMIT;
SELECT dalgo.current_user_id() IS NULL AS gone_after_commit;
RESET dalgo.user_id;
\echo '-- the same for claims set for the session by the authenticator'
SELECT set_config('dalgo.claims_authenticators', quote_ident(session_user), false) IS NOT NULL AS authenticator_listed;
BEGIN;
SET request.jwt.claims = '{"sub": "11111111-0000-4000-8000-0000000000e1"}';
SELECT dalgo.current_user_id() AS client_a;
COMMIT;
BEGIN;
SELECT dalgo.current_user_id() AS client_b;
SELECT set_config('request.jwt.claims', '{"sub": "11111111-0000-4000-8000-0000000000e2"}', true) IS NOT NULL AS claims_set;
SELECT dalgo.current_user_id() AS client_b;
COMMIT;
\echo '-- a function''s SET clause counts while it runs'
CREATE FUNCTION pg_temp.as_b() RETURNS uuid LANGUAGE sql
	SET dalgo.user_id = '11111111-0000-4000-8000-0000000000e2' AS 'SELECT dalgo.current_user_id()';
SELECT pg_temp.as_b() AS inside_function, dalgo.current_user_id() AS after_it;
\echo '-- a default from ALTER ROLE ... SET counts in no transaction of a new session'
ALTER ROLE CURRENT_USER IN DATABASE :"DBNAME" SET dalgo.user_id = '11111111-0000-4000-8000-0000000000e1';
SELECT dblink_connect('pooled', format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
	split_part(current_setting('unix_socket_directories'), ',', 1))) AS connected;
SELECT x AS new_session_identity FROM dblink('pooled', $$SELECT coalesce(dalgo.current_user_id()::text, 'none')$$) AS t(x text);
SELECT dblink_disconnect('pooled') AS disconnected;
ALTER ROLE CURRENT_USER IN DATABASE :"DBNAME" RESET dalgo.user_id;
RESET request.jwt.claims;
RESET dalgo.claims_authenticators;
RESET dalgo.jwt_secret;
DELETE FROM dalgo.organizations WHERE id = '22222222-0000-4000-8000-0000000000e0';
DELETE FROM dalgo.users WHERE id IN ('11111111-0000-4000-8000-0000000000e1', '11111111-0000-4000-8000-0000000000e2');
