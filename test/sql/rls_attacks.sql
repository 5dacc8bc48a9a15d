-- rls_attacks: tenant isolation holds for any SQL a dalgo_authenticated
-- client can send: cross-tenant reads and writes, moving rows, role
-- escalation, stale access after revocation, bad identities, forged
-- tokens, upserts, RETURNING, data-modifying CTEs, views, TRUNCATE, COPY
-- and search_path tricks.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\i test/fixtures/jwt.sql
INSERT INTO dalgo.users (id, email) VALUES
	('11111111-0000-4000-8000-000000000004', 'viewer.a@example.org'),
	('11111111-0000-4000-8000-000000000006', 'admin.a@example.org');
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
	('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000004', 'viewer'),
	('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000006', 'admin');
INSERT INTO dalgo.invitations (organization_id, email, token, expires_at)
	VALUES ('22222222-0000-4000-8000-0000000000a0', 'new@example.org', 'secret-invite-token', now() + interval '1 day');
INSERT INTO dalgo.refresh_tokens (user_id, token_hash, expires_at)
	VALUES ('11111111-0000-4000-8000-000000000002', 'refresh-hash', now() + interval '1 day');
UPDATE dalgo.warehouse_connections SET access_token_encrypted = 'enc:secret';
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set B '''22222222-0000-4000-8000-0000000000b0'''
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_authenticated;'
\set as_viewer_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000004''; SET LOCAL ROLE dalgo_authenticated;'
\set as_admin_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000006''; SET LOCAL ROLE dalgo_authenticated;'
\set as_nobody 'RESET ROLE; SET LOCAL dalgo.user_id = ''''; SET LOCAL ROLE dalgo_authenticated;'
\set as_super 'RESET ROLE; SET LOCAL dalgo.user_id = '''';'
SELECT plan(66);
SELECT is_empty($$SELECT relname FROM pg_class WHERE relnamespace = 'dalgo'::regnamespace AND relkind = 'r'
	AND NOT (relrowsecurity AND relforcerowsecurity)$$, 'row-level security is enabled and forced on every dalgo table');

-- Cross-tenant reads.
:as_member_a
SELECT is((SELECT count(*) FROM dalgo.sources WHERE organization_id = :B), 0::bigint, 'B''s sources are invisible to a member of A');
SELECT is((SELECT count(*) FROM dalgo.sources), 1::bigint, 'a member of A sees exactly A''s source');
SELECT is((SELECT count(*) FROM dalgo.transformations WHERE id = '55555555-0000-4000-8000-0000000000b1'), 0::bigint, 'B''s transformation by id: invisible');
SELECT is((SELECT count(*) FROM dalgo.organizations WHERE id = :B), 0::bigint, 'organization B is invisible');
SELECT is((SELECT count(*) FROM dalgo.organization_members WHERE organization_id = :B), 0::bigint, 'B''s memberships are invisible');
SELECT is((SELECT count(*) FROM dalgo.users WHERE email = 'owner.b@example.org'), 0::bigint, 'B''s users are invisible');
SELECT is((SELECT count(*) FROM dalgo.users), 4::bigint, 'co-members and oneself are visible');
SELECT is((SELECT count(*) FROM dalgo.warehouse_connections WHERE organization_id = :B), 0::bigint, 'B''s warehouse connection is invisible');
SELECT is((SELECT count(*) FROM dalgo.outputs), 1::bigint, 'only A''s output');
SELECT is((SELECT count(*) FROM dalgo.audit_logs), 0::bigint, 'members read no audit rows');

-- Cross-tenant writes.
WITH u AS (UPDATE dalgo.transformations SET name = 'pwned' WHERE organization_id = :B RETURNING 1)
	SELECT is(count(*), 0::bigint, 'UPDATE of B''s transformation touches nothing') FROM u;
WITH d AS (DELETE FROM dalgo.outputs WHERE id = '66666666-0000-4000-8000-0000000000b1' RETURNING 1)
	SELECT is(count(*), 0::bigint, 'DELETE of B''s output touches nothing') FROM d;
SELECT throws_ok($$INSERT INTO dalgo.transformations (organization_id, name, recipe) VALUES ('22222222-0000-4000-8000-0000000000b0', 'x', '{"version": 1, "source": {"table": "visits"}, "steps": []}')$$,
	'42501', NULL, 'INSERT into B is refused');
SELECT throws_ok($$UPDATE dalgo.transformations SET organization_id = '22222222-0000-4000-8000-0000000000b0' WHERE organization_id = '22222222-0000-4000-8000-0000000000a0'$$,
	'42501', NULL, 'moving a row to B is refused');
SELECT throws_ok($$INSERT INTO dalgo.transformations (id, organization_id, name, recipe)
	VALUES ('55555555-0000-4000-8000-0000000000b1', '22222222-0000-4000-8000-0000000000a0', 'x', '{"version": 1, "source": {"table": "visits"}, "steps": []}')
	ON CONFLICT (id) DO UPDATE SET name = 'pwned'$$,
	'42501', NULL, 'INSERT ... ON CONFLICT DO UPDATE onto B''s row is refused');
SELECT throws_ok($$INSERT INTO dalgo.outputs (organization_id, transformation_id, name)
	VALUES ('22222222-0000-4000-8000-0000000000b0', '55555555-0000-4000-8000-0000000000b1', 'x') RETURNING *$$,
	'42501', NULL, 'INSERT ... RETURNING into B is refused');
WITH d AS (DELETE FROM dalgo.transformations WHERE organization_id = :B RETURNING id)
	SELECT is(count(*), 0::bigint, 'a data-modifying CTE deletes nothing of B') FROM d;
SELECT throws_ok($$WITH i AS (INSERT INTO dalgo.transformations (organization_id, name, recipe)
	VALUES ('22222222-0000-4000-8000-0000000000b0', 'x', '{"version": 1, "source": {"table": "visits"}, "steps": []}') RETURNING id) SELECT count(*) FROM i$$,
	'42501', NULL, 'a data-modifying CTE cannot insert into B');
SELECT throws_ok($$INSERT INTO dalgo.sync_runs (source_id) VALUES ('33333333-0000-4000-8000-0000000000b1')$$,
	'42501', NULL, 'a child of B''s source is refused');
SELECT is(dalgo.is_org_member(:B), false, 'is_org_member with B''s id is false');
SELECT is(dalgo.org_role(:B), NULL, 'org_role with B''s id is NULL');
:as_super
SELECT is((SELECT name FROM dalgo.transformations WHERE id = '55555555-0000-4000-8000-0000000000b1'), 'Totals B', 'B''s data is intact');

-- Viewers read only; members edit transformations, not sources.
:as_viewer_a
SELECT is((SELECT count(*) FROM dalgo.transformations), 1::bigint, 'a viewer reads');
SELECT throws_ok($$INSERT INTO dalgo.transformations (organization_id, name, recipe) VALUES ('22222222-0000-4000-8000-0000000000a0', 'v', '{"version": 1, "source": {"table": "visits"}, "steps": []}')$$,
	'42501', NULL, 'a viewer cannot create a transformation');
WITH u AS (UPDATE dalgo.transformations SET name = 'v' RETURNING 1)
	SELECT is(count(*), 0::bigint, 'a viewer cannot edit a transformation') FROM u;
:as_member_a
SELECT lives_ok($$INSERT INTO dalgo.transformations (organization_id, name, recipe) VALUES ('22222222-0000-4000-8000-0000000000a0', 'm', '{"version": 1, "source": {"table": "visits"}, "steps": []}')$$,
	'a member creates a transformation');
SELECT throws_ok($$INSERT INTO dalgo.sources (organization_id, name, source_type) VALUES ('22222222-0000-4000-8000-0000000000a0', 's', 'csv')$$,
	'42501', NULL, 'a member cannot create a source');
SELECT throws_ok($$INSERT INTO dalgo.schedules (organization_id, source_id, frequency) VALUES ('22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000a1', 'daily')$$,
	'42501', NULL, 'a member cannot create a schedule');

-- Role escalation and owner protection.
WITH u AS (UPDATE dalgo.organization_members SET role = 'owner' WHERE user_id = '11111111-0000-4000-8000-000000000002' RETURNING 1)
	SELECT is(count(*), 0::bigint, 'a member cannot promote themselves') FROM u;
:as_admin_a
SELECT throws_ok($$UPDATE dalgo.organization_members SET role = 'owner' WHERE user_id = '11111111-0000-4000-8000-000000000006'$$,
	'42501', 'you cannot raise your own role', 'an admin cannot promote themselves');
SELECT throws_ok($$INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES ('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000003', 'owner')$$,
	'42501', 'only an owner can add an owner', 'an admin cannot create an owner');
SELECT throws_ok($$UPDATE dalgo.organization_members SET role = 'admin' WHERE user_id = '11111111-0000-4000-8000-000000000001'$$,
	'42501', 'only an owner can grant or revoke the owner role', 'an admin cannot demote an owner');
SELECT throws_ok($$DELETE FROM dalgo.organization_members WHERE user_id = '11111111-0000-4000-8000-000000000001'$$,
	'42501', 'only an owner can remove an owner', 'an admin cannot remove an owner');
SELECT lives_ok($$UPDATE dalgo.organization_members SET role = 'member' WHERE user_id = '11111111-0000-4000-8000-000000000004'$$,
	'an admin manages non-owner members');
SELECT throws_ok($$UPDATE dalgo.organizations SET deleted_at = now() WHERE id = '22222222-0000-4000-8000-0000000000a0'$$,
	'42501', 'only an owner can delete or restore an organization', 'an admin cannot soft-delete the organization');
WITH d AS (DELETE FROM dalgo.organizations WHERE id = :A RETURNING 1)
	SELECT is(count(*), 0::bigint, 'an admin cannot delete the organization') FROM d;
:as_owner_a
SELECT throws_ok($$DELETE FROM dalgo.organization_members WHERE user_id = '11111111-0000-4000-8000-000000000001'$$,
	'23514', 'cannot remove the last owner of organization 22222222-0000-4000-8000-0000000000a0', 'the last owner cannot leave');
SELECT throws_ok($$UPDATE dalgo.organization_members SET role = 'admin' WHERE user_id = '11111111-0000-4000-8000-000000000001'$$,
	'23514', NULL, 'the last owner cannot demote themselves');
SELECT throws_ok($$UPDATE dalgo.organization_members SET deleted_at = now() WHERE user_id = '11111111-0000-4000-8000-000000000001'$$,
	'23514', NULL, 'the last owner cannot soft-delete their membership');
SELECT throws_ok($$UPDATE dalgo.organization_members SET organization_id = '22222222-0000-4000-8000-0000000000b0' WHERE user_id = '11111111-0000-4000-8000-000000000002'$$,
	'42501', NULL, 'a membership cannot be moved into another organization');

-- Revocation takes effect at the next statement of the same transaction.
UPDATE dalgo.organization_members SET deleted_at = now() WHERE user_id = '11111111-0000-4000-8000-000000000002';
:as_member_a
SELECT is((SELECT count(*) FROM dalgo.sources), 0::bigint, 'a soft-deleted membership reads nothing, right after revocation');
:as_super
UPDATE dalgo.organization_members SET deleted_at = NULL WHERE user_id = '11111111-0000-4000-8000-000000000002';
UPDATE dalgo.users SET deleted_at = now() WHERE id = '11111111-0000-4000-8000-000000000002';
:as_member_a
SELECT is((SELECT count(*) FROM dalgo.sources), 0::bigint, 'a soft-deleted user reads nothing');
:as_super
UPDATE dalgo.users SET deleted_at = NULL WHERE id = '11111111-0000-4000-8000-000000000002';
:as_owner_a
UPDATE dalgo.organizations SET deleted_at = now() WHERE id = :A;
:as_member_a
SELECT is((SELECT count(*) FROM dalgo.sources), 0::bigint, 'a soft-deleted organization reads nothing');
:as_super
UPDATE dalgo.organizations SET deleted_at = NULL WHERE id = :A;

-- Missing, malformed and spoofed identities.
:as_nobody
SELECT is((SELECT count(*) FROM dalgo.sources) + (SELECT count(*) FROM dalgo.users), 0::bigint, 'no identity reads nothing');
RESET ROLE;
SET LOCAL dalgo.user_id = 'x'' OR 1=1 --';
SET LOCAL ROLE dalgo_authenticated;
SELECT is((SELECT count(*) FROM dalgo.sources), 0::bigint, 'a malformed identity reads nothing');
SELECT throws_ok($$SET dalgo.user_id = '11111111-0000-4000-8000-000000000003'$$, '42501', NULL, 'a spoofed SET dalgo.user_id is refused');
SET LOCAL request.jwt.claims = '{"sub": "11111111-0000-4000-8000-000000000003"}';
SELECT is((SELECT count(*) FROM dalgo.sources WHERE organization_id = :B), 0::bigint, 'request.jwt.claims is ignored while untrusted');
RESET ROLE;
SET LOCAL dalgo.user_id = '';
SET LOCAL dalgo.jwt_secret = :secret;
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok(format('SELECT dalgo.authenticate(%L)', pg_temp.jwt(:hs256, pg_temp.claims('11111111-0000-4000-8000-000000000003'), 'forged-forged-forged-forged-forged-forged')),
	'28000', 'authentication failed', 'a JWT forged with another secret is refused');
SELECT throws_ok(format('SELECT dalgo.authenticate(%L)', pg_temp.jwt(:hs256, pg_temp.claims('11111111-0000-4000-8000-000000000003', '-1 second'), :secret)),
	'28000', 'authentication failed', 'an expired JWT is refused');
SELECT throws_ok(format('SELECT dalgo.authenticate(%L)', pg_temp.b64url('{"alg":"none","typ":"JWT"}') || '.' ||
	pg_temp.b64url(convert_to(pg_temp.claims('11111111-0000-4000-8000-000000000003'), 'UTF8')) || '.'),
	'28000', 'authentication failed', 'an alg=none JWT is refused');
SELECT is((SELECT count(*) FROM dalgo.sources), 0::bigint, 'after failed sign-ins there is still no identity');

-- Secrets are never readable; no TRUNCATE, no COPY FROM, no forged audit rows.
:as_admin_a
SELECT throws_ok($$SELECT password_hash FROM dalgo.users$$, '42501', NULL, 'password_hash is not readable');
SELECT throws_ok($$SELECT token FROM dalgo.invitations$$, '42501', NULL, 'invitation tokens are not readable, even by admins');
SELECT throws_ok($$SELECT access_token_encrypted FROM dalgo.warehouse_connections$$, '42501', NULL, 'warehouse credentials are not readable');
SELECT throws_ok($$SELECT * FROM dalgo.refresh_tokens$$, '42501', NULL, 'refresh tokens are not readable');
SELECT throws_ok($$UPDATE dalgo.users SET is_superadmin = true WHERE id = '11111111-0000-4000-8000-000000000006'$$, '42501', NULL, 'a user cannot make themselves superadmin');
WITH u AS (UPDATE dalgo.users SET full_name = 'renamed' WHERE id = '11111111-0000-4000-8000-000000000001' RETURNING 1)
	SELECT is(count(*), 0::bigint, 'a user cannot edit another user') FROM u;
SELECT throws_ok($$TRUNCATE dalgo.sources$$, '42501', NULL, 'TRUNCATE is refused');
SELECT throws_ok($$INSERT INTO dalgo.audit_logs (action, resource_type) VALUES ('delete', 'sources')$$, '42501', NULL, 'forged audit rows are refused');

-- Views and search_path.
SELECT throws_ok($$CREATE VIEW dalgo.leak AS SELECT * FROM dalgo.sources$$, '42501', NULL, 'no objects can be created in schema dalgo');
:as_super
CREATE VIEW public.all_transformations WITH (security_invoker = true) AS SELECT * FROM dalgo.transformations;
GRANT SELECT ON public.all_transformations TO dalgo_authenticated;
:as_member_a
SELECT is((SELECT count(*) FROM public.all_transformations WHERE organization_id = :B), 0::bigint, 'a security_invoker view applies the policies');
CREATE TEMP TABLE organization_members (organization_id uuid, user_id uuid, role text, deleted_at timestamptz);
INSERT INTO organization_members VALUES (:B, '11111111-0000-4000-8000-000000000002', 'owner', NULL);
CREATE FUNCTION pg_temp.current_org_ids(dalgo.member_role DEFAULT 'viewer') RETURNS uuid[] LANGUAGE sql
	AS $$ SELECT ARRAY['22222222-0000-4000-8000-0000000000b0'::uuid] $$;
SET LOCAL search_path = pg_temp, dalgo, public;
SELECT is((SELECT count(*) FROM dalgo.sources WHERE organization_id = :B), 0::bigint, 'a temp-schema search_path hijack changes nothing');
RESET search_path;

:as_super
SET LOCAL ROLE dalgo_anon;
SELECT throws_ok($$SELECT count(*) FROM dalgo.sources$$, '42501', NULL, 'dalgo_anon has no table access');
SELECT throws_ok($$SELECT dalgo.compile_recipe('22222222-0000-4000-8000-0000000000a0', '{}')$$, '42501', NULL,
	'dalgo_anon cannot call the other functions');
SELECT throws_ok($$SELECT dalgo.authenticate('not-a-token')$$, '28000', 'authentication failed', 'but may try to sign in');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;

-- COPY (outside PL/pgSQL): COPY TO applies the policies, COPY FROM is refused.
\set ON_ERROR_STOP false
BEGIN;
\i test/fixtures/two_orgs.sql
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
COPY (SELECT name FROM dalgo.sources ORDER BY name) TO STDOUT;
COPY dalgo.sources (name) TO STDOUT;
COPY dalgo.transformations (organization_id, name, recipe) FROM STDIN;
ROLLBACK;
