-- user_deactivation_guard: a user who is not active and live is a member of
-- nothing, so deactivating or deleting an account removes its memberships.
-- dalgo_service acting for a user passes every policy on users: it must not
-- let a member deactivate another organization's owner or its own
-- organization's last owner, nor bring an account back; and, whoever acts,
-- no organization loses its last live owner through the users table.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
SELECT plan(9);
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set as_service_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_service;'
\set as_service_owner_b 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000003''; SET LOCAL ROLE dalgo_service;'
\set as_operator 'RESET ROLE; SET LOCAL dalgo.user_id = '''';'
:as_service_member_a
SELECT throws_ok($$UPDATE dalgo.users SET is_active = false WHERE id = '11111111-0000-4000-8000-000000000001'$$, '42501',
	'only the user or a superadmin deactivates or deletes an account, and only a superadmin restores one',
	'a member cannot deactivate their organization''s owner');
SELECT throws_ok($$UPDATE dalgo.users SET deleted_at = now() WHERE id = '11111111-0000-4000-8000-000000000003'$$, '42501',
	NULL, 'nor delete another organization''s owner');
:as_service_owner_b
SELECT throws_ok($$UPDATE dalgo.users SET deleted_at = now() WHERE id = '11111111-0000-4000-8000-000000000003'$$, '23514',
	'cannot deactivate or delete the last owner of organization 22222222-0000-4000-8000-0000000000b0',
	'an organization''s last owner cannot delete their own account');
:as_operator
SELECT throws_ok($$UPDATE dalgo.users SET is_active = false WHERE id = '11111111-0000-4000-8000-000000000001'$$, '23514',
	'cannot deactivate or delete the last owner of organization 22222222-0000-4000-8000-0000000000a0',
	'nor can an operator take away the last owner');
SELECT is(dalgo_internal.live_owner_count(:A, NULL), 1, 'the organization keeps its owner');
UPDATE dalgo.organization_members SET role = 'owner' WHERE user_id = '11111111-0000-4000-8000-000000000002';
SELECT lives_ok($$UPDATE dalgo.users SET is_active = false WHERE id = '11111111-0000-4000-8000-000000000001'$$,
	'with a second owner the first can be deactivated');
:as_service_member_a
SELECT lives_ok($$UPDATE dalgo.users SET full_name = 'Still here' WHERE id = '11111111-0000-4000-8000-000000000002'$$,
	'other changes to users go on');
SELECT throws_ok($$UPDATE dalgo.users SET is_active = true WHERE id = '11111111-0000-4000-8000-000000000001'$$, '42501',
	NULL, 'an account is brought back only by a superadmin');
:as_operator
SELECT lives_ok($$UPDATE dalgo.users SET is_active = true WHERE id = '11111111-0000-4000-8000-000000000001'$$,
	'or by work without an identity');
RESET ROLE;
SELECT * FROM finish();
ROLLBACK;
