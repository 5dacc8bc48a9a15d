-- membership_privilege_escalation: every path that yields an owner row -
-- insert, role change, restoring a soft-deleted row, moving a row - is an
-- owner's act; nobody raises their own role or grants one above their own,
-- whether RLS or the guard is what stands in the way.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
-- Org A: owner ...01, member ...02, viewer ...04, admin ...06; ...07 was an
-- owner and was removed; ...06 was an owner once too (a removed row).
INSERT INTO dalgo.users (id, email) VALUES
	('11111111-0000-4000-8000-000000000004', 'viewer.a@example.org'),
	('11111111-0000-4000-8000-000000000006', 'admin.a@example.org'),
	('11111111-0000-4000-8000-000000000007', 'former.owner.a@example.org');
INSERT INTO dalgo.organization_members (id, organization_id, user_id, role, deleted_at) VALUES
	('99999999-0000-4000-8000-000000000004', '22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000004', 'viewer', NULL),
	('99999999-0000-4000-8000-000000000006', '22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000006', 'admin', NULL),
	('99999999-0000-4000-8000-000000000016', '22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000006', 'owner', now()),
	('99999999-0000-4000-8000-000000000007', '22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000007', 'owner', now()),
	('99999999-0000-4000-8000-000000000017', '22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000007', 'admin', now());
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_admin_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000006''; SET LOCAL ROLE dalgo_authenticated;'
\set as_viewer_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000004''; SET LOCAL ROLE dalgo_authenticated;'
\set as_service_viewer 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000004''; SET LOCAL ROLE dalgo_service;'
\set live_owners 'SELECT count(*) FROM dalgo.organization_members WHERE organization_id = ''22222222-0000-4000-8000-0000000000a0'' AND role = ''owner'' AND deleted_at IS NULL'
SELECT plan(17);

-- Restoring a removed owner's membership grants ownership.
:as_admin_a
SELECT throws_ok($$UPDATE dalgo.organization_members SET deleted_at = NULL WHERE id = '99999999-0000-4000-8000-000000000007'$$,
	'42501', 'only an owner can restore an owner''s membership', 'an admin cannot restore a removed owner''s membership');
SELECT throws_ok($$UPDATE dalgo.organization_members SET deleted_at = CASE WHEN role = 'owner' THEN NULL ELSE now() END
	WHERE user_id = '11111111-0000-4000-8000-000000000006'$$,
	'42501', NULL, 'an admin cannot trade their admin row for their own old owner row');
SELECT throws_ok($$UPDATE dalgo.organization_members SET role = 'owner' WHERE id = '99999999-0000-4000-8000-000000000017'$$,
	'42501', 'only an owner can grant or revoke the owner role', 'an admin cannot turn a removed row into an owner row');
SELECT throws_ok($$INSERT INTO dalgo.organization_members (organization_id, user_id, role, deleted_at)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000003', 'owner', now())$$,
	'42501', 'only an owner can add an owner', 'an admin cannot plant a removed owner row to restore later');
SELECT throws_ok($$UPDATE dalgo.organization_members SET user_id = '11111111-0000-4000-8000-000000000003' WHERE id = '99999999-0000-4000-8000-000000000007'$$,
	'42501', 'a membership cannot be moved to another organization or user', 'an admin cannot hand a removed owner row to another user');
SELECT throws_ok($$UPDATE dalgo.organization_members SET user_id = '11111111-0000-4000-8000-000000000006'
	WHERE user_id = '11111111-0000-4000-8000-000000000001'$$,
	'42501', NULL, 'an admin cannot take over the owner''s row');
SELECT throws_ok($$DELETE FROM dalgo.organization_members WHERE id = '99999999-0000-4000-8000-000000000007'$$,
	'42501', 'only an owner can remove an owner', 'an admin cannot delete a removed owner row either');
SELECT lives_ok($$UPDATE dalgo.organization_members SET deleted_at = NULL WHERE id = '99999999-0000-4000-8000-000000000017'$$,
	'an admin restores a removed admin''s membership');
SELECT throws_ok($$DELETE FROM dalgo.organization_members WHERE user_id = '11111111-0000-4000-8000-000000000001'$$,
	'42501', 'only an owner can remove an owner', 'so the real owner stays');
RESET ROLE;
SELECT is((:live_owners), 1::bigint, 'organization A still has exactly its one owner');

-- Nobody raises their own role by restoring an old membership.
UPDATE dalgo.organization_members SET deleted_at = now() WHERE id = '99999999-0000-4000-8000-000000000004';
INSERT INTO dalgo.organization_members (id, organization_id, user_id, role) VALUES
	('99999999-0000-4000-8000-000000000024', '22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000004', 'viewer');
UPDATE dalgo.organization_members SET role = 'admin' WHERE id = '99999999-0000-4000-8000-000000000004';
:as_viewer_a
WITH u AS (UPDATE dalgo.organization_members SET deleted_at = NULL WHERE id = '99999999-0000-4000-8000-000000000004' RETURNING 1)
	SELECT is(count(*), 0::bigint, 'a viewer cannot restore their old admin row (RLS)') FROM u;

-- The guard holds where RLS does not: a service connection acting for a viewer.
:as_service_viewer
SELECT throws_ok($$UPDATE dalgo.organization_members SET deleted_at = now() WHERE id = '99999999-0000-4000-8000-000000000024';
	UPDATE dalgo.organization_members SET deleted_at = NULL WHERE id = '99999999-0000-4000-8000-000000000004'$$,
	'42501', 'you cannot raise your own role', 'a viewer cannot restore their old admin row, even where RLS lets the update through');
SELECT throws_ok($$INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000003', 'member')$$,
	'42501', 'you cannot grant a role above your own', 'a viewer cannot add a member');
SELECT throws_ok($$UPDATE dalgo.organization_members SET role = 'admin' WHERE user_id = '11111111-0000-4000-8000-000000000002'$$,
	'42501', 'you cannot grant a role above your own', 'a viewer cannot promote a member');

-- Owners may do all of it.
:as_owner_a
SELECT lives_ok($$UPDATE dalgo.organization_members SET deleted_at = now() WHERE id = '99999999-0000-4000-8000-000000000017';
	UPDATE dalgo.organization_members SET deleted_at = NULL WHERE id = '99999999-0000-4000-8000-000000000007'$$,
	'an owner restores a removed owner''s membership');
SELECT lives_ok($$INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000003', 'owner')$$,
	'an owner adds an owner');
RESET ROLE;
SELECT is((:live_owners), 3::bigint, 'organization A now has three owners');

SELECT * FROM finish();
ROLLBACK;
