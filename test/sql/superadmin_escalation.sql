-- superadmin_escalation: the superadmin flag makes a user an owner of every
-- organization.  dalgo_service acting for a user (its RLS lets any write
-- through) must not let that user, or any non-superadmin, grant it to
-- anyone; a superadmin may, and work without an identity is not limited.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
SELECT plan(7);
\set B '''22222222-0000-4000-8000-0000000000b0'''
\set as_service_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_service;'
\set as_service_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_service;'
:as_service_member_a
SELECT throws_ok($$UPDATE dalgo.users SET is_superadmin = true WHERE id = '11111111-0000-4000-8000-000000000002'$$,
	'42501', 'only a superadmin can grant or revoke the superadmin flag', 'a member cannot make themselves superadmin');
SELECT is(dalgo.org_role(:B), NULL, 'and stays out of the other organization');
:as_service_owner_a
SELECT throws_ok($$UPDATE dalgo.users SET is_superadmin = true WHERE id = '11111111-0000-4000-8000-000000000002'$$,
	'42501', 'only a superadmin can grant or revoke the superadmin flag', 'nor can an owner make another user superadmin');
SELECT throws_ok($$INSERT INTO dalgo.users (email, is_superadmin) VALUES ('new.super@example.org', true)$$,
	'42501', 'only a superadmin can grant or revoke the superadmin flag', 'or create a superadmin');
SELECT lives_ok($$UPDATE dalgo.users SET full_name = 'Renamed' WHERE id = '11111111-0000-4000-8000-000000000002'$$,
	'other changes to users go on');
-- Without an identity (operator work) and by a superadmin it is allowed.
RESET ROLE;
SET LOCAL dalgo.user_id = '';
UPDATE dalgo.users SET is_superadmin = true WHERE id = '11111111-0000-4000-8000-000000000001';
SELECT is((SELECT is_superadmin FROM dalgo.users WHERE id = '11111111-0000-4000-8000-000000000001'), true,
	'work without an identity sets the flag');
:as_service_owner_a
SELECT lives_ok($$UPDATE dalgo.users SET is_superadmin = true WHERE id = '11111111-0000-4000-8000-000000000002'$$,
	'a superadmin grants it');
RESET ROLE;
SELECT * FROM finish();
ROLLBACK;
