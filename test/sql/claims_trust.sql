-- claims_trust: request.jwt.claims names the caller only when session_user
-- is a role listed in the superuser-only setting dalgo.claims_authenticators
-- (PostgREST's authenticator).  Any other role that sets the claims, and
-- dalgo.trust_jwt_claims on its own, gives no identity.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
SELECT plan(16);
\set B '''22222222-0000-4000-8000-0000000000b0'''
\set OWNER_B '''11111111-0000-4000-8000-000000000003'''
CREATE ROLE dalgo_test_postgrest NOLOGIN NOINHERIT;
CREATE ROLE dalgo_test_other NOLOGIN NOINHERIT;
GRANT dalgo_authenticated TO dalgo_test_postgrest, dalgo_test_other;

-- Not trusted: nobody is listed.
SET LOCAL request.jwt.claims = '{"sub": "11111111-0000-4000-8000-000000000003"}';
SELECT is(dalgo.current_user_id(), NULL, 'claims give no identity while dalgo.claims_authenticators is empty');
SET LOCAL dalgo.trust_jwt_claims = on;
SELECT is(dalgo.current_user_id(), NULL, 'dalgo.trust_jwt_claims alone no longer grants trust');
SET LOCAL dalgo.trust_jwt_claims = off;

SET LOCAL dalgo.claims_authenticators = 'dalgo_test_postgrest';
SELECT is(current_setting('dalgo.claims_authenticators'), 'dalgo_test_postgrest', 'the list is set');

-- A role that is not the authenticator sets claims: no identity, no rows.
SET LOCAL SESSION AUTHORIZATION dalgo_test_other;
SET LOCAL ROLE dalgo_authenticated;
SET LOCAL request.jwt.claims = '{"sub": "11111111-0000-4000-8000-000000000003"}';
SELECT is(dalgo.current_user_id(), NULL, 'a non-authenticator session setting claims gets no identity');
SELECT is((SELECT count(*) FROM dalgo.sources WHERE organization_id = :B), 0::bigint, 'and reads none of that user''s rows');
SELECT is(dalgo.org_role(:B), NULL, 'and holds no role');
RESET ROLE;
SELECT throws_ok($$SET dalgo.claims_authenticators = 'dalgo_test_other'$$, '42501', NULL,
	'it cannot list itself: the setting is superuser-only');
RESET SESSION AUTHORIZATION;

-- The authenticator's session: the claims name the caller.
SET LOCAL SESSION AUTHORIZATION dalgo_test_postgrest;
SET LOCAL ROLE dalgo_authenticated;
SET LOCAL request.jwt.claims = '{"sub": "11111111-0000-4000-8000-000000000003", "role": "dalgo_authenticated"}';
SELECT is(dalgo.current_user_id(), :OWNER_B::uuid, 'the authenticator''s claims name the caller');
SELECT is((SELECT count(*) FROM dalgo.sources WHERE organization_id = :B), 1::bigint, 'who reads their organization''s rows');
SET LOCAL request.jwt.claims = '{"sub": 3}';
SELECT is(dalgo.current_user_id(), NULL, 'malformed claims from the authenticator still give no identity');
RESET ROLE;
RESET SESSION AUTHORIZATION;

-- Renaming the role ends its trust (the list holds names).
ALTER ROLE dalgo_test_postgrest RENAME TO dalgo_test_renamed;
SET LOCAL SESSION AUTHORIZATION dalgo_test_renamed;
SET LOCAL ROLE dalgo_authenticated;
SET LOCAL request.jwt.claims = '{"sub": "11111111-0000-4000-8000-000000000003"}';
SELECT is(dalgo.current_user_id(), NULL, 'a renamed authenticator is no longer trusted');
RESET ROLE;
RESET SESSION AUTHORIZATION;

-- The superuser running the test is not listed either.
SET LOCAL request.jwt.claims = '{"sub": "11111111-0000-4000-8000-000000000003"}';
SELECT is(dalgo.current_user_id(), NULL, 'a session_user not in the list gets no identity, superuser or not');
SELECT set_config('dalgo.claims_authenticators', 'someone_else, ' || quote_ident(session_user), true) \g /dev/null
SELECT is(dalgo.current_user_id(), :OWNER_B::uuid, 'any role of the list is trusted');

SELECT throws_ok($$SET LOCAL dalgo.claims_authenticators = 'a,,b'$$, '22023', NULL, 'a malformed list is refused');
SET LOCAL dalgo.claims_authenticators = '';
SELECT is(dalgo.current_user_id(), NULL, 'an empty list trusts nobody');

-- dalgo_authenticated cannot set it.
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok($$SET dalgo.claims_authenticators = 'dalgo_authenticated'$$, '42501', NULL, 'dalgo_authenticated cannot set it');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
