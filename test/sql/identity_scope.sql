-- identity_scope: how long an identity lasts.  Nothing outlives its
-- transaction: SET LOCAL and dalgo.authenticate() end with it, a
-- session-level SET counts only in the transaction that ran it (the pooler
-- hazard), authenticate(..., session => true) is refused; sign_out() and
-- RESET ALL end an identity early; a rolled-back authenticate never
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
\echo '-- a session-level SET does not outlive its transaction: under transaction pooling it would reach the next client'
BEGIN;
SET dalgo.user_id = '11111111-0000-4000-8000-0000000000f1';
SELECT dalgo.current_user_id() AS inside;
COMMIT;
SELECT dalgo.current_user_id() IS NULL AS gone_after_commit;
RESET dalgo.user_id;
SELECT dalgo.current_user_id() IS NULL AS gone_after_reset;
\echo '-- authenticate() is transaction-scoped by default'
BEGIN;
SELECT dalgo.authenticate(:'token') = dalgo.current_user_id() AS authenticated;
COMMIT;
SELECT dalgo.current_user_id() IS NULL AS gone_after_commit;
\echo '-- a rolled-back authenticate never happened'
BEGIN;
SELECT dalgo.authenticate(:'token') IS NOT NULL AS authenticated;
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
\echo '-- session => true is refused, before the token is even looked at'
\set ON_ERROR_STOP false
SELECT dalgo.authenticate(:'token', true);
SELECT dalgo.authenticate('not-a-token', true);
\set ON_ERROR_STOP true
SELECT dalgo.current_user_id() IS NULL AS no_identity;
\echo '-- sign_out() and RESET ALL end a transaction identity early'
BEGIN;
SELECT dalgo.authenticate(:'token') IS NOT NULL AS authenticated;
SELECT dalgo.sign_out();
SELECT dalgo.current_user_id() IS NULL AS gone_after_sign_out;
SELECT dalgo.authenticate(:'token') IS NOT NULL AS authenticated;
RESET ALL;
SELECT dalgo.current_user_id() IS NULL AS gone_after_reset_all;
COMMIT;
\echo '-- the error never says which check failed'
\set ON_ERROR_STOP false
SET dalgo.jwt_secret = :secret;
SELECT dalgo.authenticate('a.b.c');
SELECT dalgo.authenticate(NULL);
SELECT dalgo.authenticate(repeat('x', 100000));
\set ON_ERROR_STOP true
DELETE FROM dalgo.users WHERE id = '11111111-0000-4000-8000-0000000000f1';
