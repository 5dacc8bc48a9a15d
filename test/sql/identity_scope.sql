-- identity_scope: how long an identity lasts.  SET LOCAL and
-- dalgo.authenticate() end with the transaction; a session-level SET (the
-- pooler hazard) and authenticate(..., session => true) outlive COMMIT until
-- RESET / DISCARD ALL / sign_out(); a rolled-back authenticate never
-- happened.
\set ECHO none
\i test/fixtures/tap_setup.sql
\i test/fixtures/jwt.sql
\pset tuples_only false
\pset format aligned
INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-0000000000f1', 'scope@example.org');
SET dalgo.jwt_secret = :secret;
SELECT pg_temp.jwt(:hs256, pg_temp.claims('11111111-0000-4000-8000-0000000000f1'), :secret) AS token \gset
\echo '-- SET LOCAL ends with the transaction (the pattern for transaction poolers)'
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000f1';
SELECT dalgo.current_user_id() AS inside;
COMMIT;
SELECT dalgo.current_user_id() IS NULL AS gone_after_commit;
\echo '-- a session-level SET survives COMMIT: under transaction pooling it leaks to the next client'
BEGIN;
SET dalgo.user_id = '11111111-0000-4000-8000-0000000000f1';
COMMIT;
SELECT dalgo.current_user_id() AS still_there;
RESET dalgo.user_id;
SELECT dalgo.current_user_id() IS NULL AS gone_after_reset;
\echo '-- authenticate() is transaction-scoped by default'
BEGIN;
SELECT dalgo.authenticate(:'token') = dalgo.current_user_id() AS authenticated;
COMMIT;
SELECT dalgo.current_user_id() IS NULL AS gone_after_commit;
\echo '-- a rolled-back authenticate never happened, even with session => true'
BEGIN;
SELECT dalgo.authenticate(:'token', true) IS NOT NULL AS authenticated;
ROLLBACK;
SELECT dalgo.current_user_id() IS NULL AS gone_after_rollback;
BEGIN;
SAVEPOINT s;
SELECT dalgo.authenticate(:'token') IS NOT NULL AS authenticated_in_savepoint;
ROLLBACK TO SAVEPOINT s;
SELECT dalgo.current_user_id() IS NULL AS gone_after_rollback_to_savepoint;
SAVEPOINT a;
SELECT dalgo.authenticate(:'token') IS NOT NULL AS authenticated_in_released_savepoint;
RELEASE SAVEPOINT a;
SAVEPOINT b;
ROLLBACK TO SAVEPOINT b;
SELECT dalgo.current_user_id() IS NOT NULL AS kept_after_a_sibling_rolls_back;
COMMIT;
\echo '-- session => true lasts until sign_out(), DISCARD ALL or RESET ALL'
SELECT dalgo.authenticate(:'token', true) IS NOT NULL AS authenticated;
SELECT dalgo.current_user_id() AS after_commit;
SELECT dalgo.sign_out();
SELECT dalgo.current_user_id() IS NULL AS gone_after_sign_out;
SELECT dalgo.authenticate(:'token', true) IS NOT NULL AS authenticated;
DISCARD ALL;
SELECT dalgo.current_user_id() IS NULL AS gone_after_discard_all;
SET dalgo.jwt_secret = :secret;
SELECT dalgo.authenticate(:'token', true) IS NOT NULL AS authenticated;
RESET ALL;
SELECT dalgo.current_user_id() IS NULL AS gone_after_reset_all;
\echo '-- the error never says which check failed'
\set ON_ERROR_STOP false
SET dalgo.jwt_secret = :secret;
SELECT dalgo.authenticate('a.b.c');
SELECT dalgo.authenticate(NULL);
SELECT dalgo.authenticate(repeat('x', 100000));
\set ON_ERROR_STOP true
DELETE FROM dalgo.users WHERE id = '11111111-0000-4000-8000-0000000000f1';
