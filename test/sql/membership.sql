-- membership: is_org_member / is_org_admin / org_role / current_org_ids
-- follow live memberships, live organizations and active users, see every
-- change at the next statement, and cannot be fooled by search_path.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
INSERT INTO dalgo.users (id, email, is_superadmin) VALUES
	('11111111-0000-4000-8000-000000000004', 'viewer.a@example.org', false),
	('11111111-0000-4000-8000-000000000005', 'root@example.org', true);
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
	('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000004', 'viewer');
SELECT plan(36);
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set B '''22222222-0000-4000-8000-0000000000b0'''

-- No identity: nothing.
SELECT is(dalgo.is_org_member(:A), false, 'no identity: not a member');
SELECT is(dalgo.current_org_ids(), '{}'::uuid[], 'no identity: no organizations');
SELECT is(dalgo.org_role(:A), NULL, 'no identity: no role');

-- A member.
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SELECT is(dalgo.is_org_member(:A), true, 'member: is a member');
SELECT is(dalgo.is_org_member(:A, 'member'), true, 'member: at least member');
SELECT is(dalgo.is_org_member(:A, 'admin'), false, 'member: not admin');
SELECT is(dalgo.is_org_admin(:A), false, 'member: is_org_admin is false');
SELECT is(dalgo.org_role(:A), 'member'::dalgo.member_role, 'member: org_role');
SELECT is(dalgo.is_org_member(:B), false, 'member of A is not a member of B');
SELECT is(dalgo.current_org_ids(), ARRAY[:A]::uuid[], 'current_org_ids lists A only');
SELECT is(dalgo.current_org_ids('admin'), '{}'::uuid[], 'current_org_ids(admin) is empty for a member');

-- Owner and viewer.
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000001';
SELECT is(dalgo.is_org_admin(:A), true, 'owner: is_org_admin');
SELECT is(dalgo.is_org_member(:A, 'owner'), true, 'owner: at least owner');
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000004';
SELECT is(dalgo.is_org_member(:A, 'member'), false, 'viewer: not member');
SELECT is(dalgo.org_role(:A), 'viewer'::dalgo.member_role, 'viewer: org_role');

-- NULL arguments.
SELECT is(dalgo.is_org_member(NULL), false, 'is_org_member(NULL) is false');
SELECT is(dalgo.is_org_member(:A, NULL), false, 'is_org_member(org, NULL) is false');
SELECT is(dalgo.is_org_admin(NULL), false, 'is_org_admin(NULL) is false');
SELECT is(dalgo.org_role(NULL), NULL, 'org_role(NULL) is NULL');
SELECT is(dalgo.current_org_ids(NULL), NULL, 'current_org_ids(NULL) is NULL');

-- Superadmin: owner of every live organization.
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000005';
SELECT is(dalgo.org_role(:B), 'owner'::dalgo.member_role, 'superadmin is owner of B');
SELECT is(cardinality(dalgo.current_org_ids('owner')), 2, 'superadmin owns both organizations');

-- Changes are seen by the next statement of the same transaction.
SET LOCAL dalgo.user_id = '';
UPDATE dalgo.organization_members SET role = 'admin' WHERE user_id = '11111111-0000-4000-8000-000000000002';
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SELECT is(dalgo.is_org_admin(:A), true, 'a promotion is seen at once');
SET LOCAL dalgo.user_id = '';
UPDATE dalgo.organization_members SET deleted_at = now() WHERE user_id = '11111111-0000-4000-8000-000000000002';
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SELECT is(dalgo.is_org_member(:A), false, 'a soft-deleted membership grants nothing, at once');
SET LOCAL dalgo.user_id = '';
UPDATE dalgo.organization_members SET deleted_at = NULL WHERE user_id = '11111111-0000-4000-8000-000000000002';
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SELECT is(dalgo.is_org_member(:A), true, 'a restored membership counts again');
SET LOCAL dalgo.user_id = '';
UPDATE dalgo.users SET is_active = false WHERE id = '11111111-0000-4000-8000-000000000002';
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SELECT is(dalgo.is_org_member(:A), false, 'an inactive user is a member of nothing');
SET LOCAL dalgo.user_id = '';
UPDATE dalgo.users SET is_active = true, deleted_at = now() WHERE id = '11111111-0000-4000-8000-000000000002';
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SELECT is(dalgo.is_org_member(:A), false, 'a soft-deleted user is a member of nothing');
SET LOCAL dalgo.user_id = '';
UPDATE dalgo.users SET deleted_at = NULL WHERE id = '11111111-0000-4000-8000-000000000002';
SET LOCAL dalgo.user_id = '';
UPDATE dalgo.organizations SET deleted_at = now() WHERE id = :A;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SELECT is(dalgo.is_org_member(:A), false, 'a soft-deleted organization has no members');
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000005';
SELECT is(dalgo.is_org_member(:A), false, 'not even a superadmin');
SET LOCAL dalgo.user_id = '';
UPDATE dalgo.organizations SET deleted_at = NULL WHERE id = :A;
SAVEPOINT s1;
SET LOCAL dalgo.user_id = '';
DELETE FROM dalgo.organization_members WHERE organization_id = :B AND role <> 'owner';
UPDATE dalgo.users SET is_superadmin = false WHERE id = '11111111-0000-4000-8000-000000000003';
DELETE FROM dalgo.organizations WHERE id = :B;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000003';
SELECT is(dalgo.is_org_member(:B), false, 'a deleted organization grants nothing');
ROLLBACK TO SAVEPOINT s1;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000003';
SELECT is(dalgo.is_org_member(:B), true, 'a rolled-back deletion is undone in the cache too');

-- search_path cannot redirect the C lookups.
CREATE TEMP TABLE organization_members (organization_id uuid, user_id uuid, role text, deleted_at timestamptz);
INSERT INTO organization_members VALUES (:B, '11111111-0000-4000-8000-000000000002', 'owner', NULL);
CREATE TABLE public.organizations (id uuid, deleted_at timestamptz);
CREATE TABLE public.users (id uuid, is_active boolean, is_superadmin boolean, deleted_at timestamptz);
INSERT INTO public.users VALUES ('11111111-0000-4000-8000-000000000002', true, true, NULL);
SET LOCAL search_path = pg_temp, public, dalgo;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SELECT is(dalgo.is_org_member(:B), false, 'a temp organization_members table is ignored');
SELECT is(dalgo.current_org_ids('viewer'), ARRAY[:A]::uuid[], 'a public users table claiming superadmin is ignored');
SET LOCAL search_path = '';
SELECT dalgo.org_role(:A) AS role_without_path \gset
RESET search_path;
SELECT is(:'role_without_path'::text, 'admin', 'an empty search_path changes nothing');

-- Many memberships: lookups stay correct with a long list.
SET LOCAL dalgo.user_id = '';
INSERT INTO dalgo.organizations (id, name, slug)
	SELECT ('33330000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'bulk ' || i, 'bulk-' || i
	FROM generate_series(1, 300) i;
INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	SELECT ('33330000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, '11111111-0000-4000-8000-000000000004',
		   (ARRAY['viewer', 'member', 'admin'])[1 + i % 3]::dalgo.member_role
	FROM generate_series(1, 300) i;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000004';
SELECT is(cardinality(dalgo.current_org_ids()), 301, '301 organizations');
SELECT is((SELECT count(*) FROM generate_series(1, 300) i
		   WHERE dalgo.is_org_member(('33330000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'admin')),
		  100::bigint, 'every third is admin');

SELECT * FROM finish();
ROLLBACK;
