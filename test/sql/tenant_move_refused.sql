-- tenant_move_refused: a row never moves to another organization.  Every
-- table with a tenant column refuses a change of organization_id - for an
-- admin of both organizations (where RLS would let it through), for the
-- service role and for a superuser - while other updates and inserts (a
-- restore) go on as before.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-000000000008', 'admin.both@example.org');
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
	('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000008', 'admin'),
	('22222222-0000-4000-8000-0000000000b0', '11111111-0000-4000-8000-000000000008', 'admin');
INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency) VALUES
	('88888888-0000-4000-8000-0000000000a1', '22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000a1', 'daily');
INSERT INTO dalgo.invitations (id, organization_id, email, token, expires_at) VALUES
	('77777777-0000-4000-8000-0000000000a9', '22222222-0000-4000-8000-0000000000a0', 'x@example.org', 'invite-a', now() + interval '1 day');
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set B '''22222222-0000-4000-8000-0000000000b0'''
\set as_admin_both 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000008''; SET LOCAL ROLE dalgo_authenticated;'
SELECT plan(14);

SELECT is_empty($$SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'organization_id'
	WHERE c.relnamespace = 'dalgo'::regnamespace AND c.relkind = 'r' AND c.relname <> 'audit_logs'
	  AND NOT EXISTS (SELECT FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
					  WHERE t.tgrelid = c.oid AND t.tgname = 'tenant_fixed'
						AND p.proname = 'refuse_tenant_move' AND t.tgenabled = 'O')$$,
	'every tenant table has the tenant_fixed trigger');

-- An admin of both organizations: RLS allows the row in both, the trigger does not.
:as_admin_both
SELECT throws_ok($$UPDATE dalgo.sources SET organization_id = '22222222-0000-4000-8000-0000000000b0'
	WHERE id = '33333333-0000-4000-8000-0000000000a1'$$,
	'42501', 'a row of sources cannot move to another organization', 'an admin of both cannot move a source (and its config) to B');
SELECT throws_ok($$UPDATE dalgo.transformations SET organization_id = '22222222-0000-4000-8000-0000000000b0'
	WHERE id = '55555555-0000-4000-8000-0000000000a1'$$,
	'42501', 'a row of transformations cannot move to another organization', 'nor a transformation');
SELECT throws_ok($$UPDATE dalgo.schedules SET organization_id = '22222222-0000-4000-8000-0000000000b0', source_id = '33333333-0000-4000-8000-0000000000b1'
	WHERE id = '88888888-0000-4000-8000-0000000000a1'$$,
	'42501', 'a row of schedules cannot move to another organization', 'nor a schedule, with its parent reference adjusted');
SELECT throws_ok($$UPDATE dalgo.invitations SET organization_id = '22222222-0000-4000-8000-0000000000b0'
	WHERE id = '77777777-0000-4000-8000-0000000000a9'$$,
	'42501', NULL, 'nor an invitation (app roles no longer UPDATE invitations at all: accounts)');
SELECT throws_ok($$UPDATE dalgo.warehouse_connections SET organization_id = '22222222-0000-4000-8000-0000000000b0'
	WHERE id = '44444444-0000-4000-8000-0000000000a1'$$,
	'42501', 'a row of warehouse_connections cannot move to another organization', 'nor a warehouse connection');
SELECT throws_ok($$INSERT INTO dalgo.sources (id, organization_id, name, source_type)
	VALUES ('33333333-0000-4000-8000-0000000000a1', '22222222-0000-4000-8000-0000000000a0', 'x', 'csv')
	ON CONFLICT (id) DO UPDATE SET organization_id = '22222222-0000-4000-8000-0000000000b0'$$,
	'42501', 'a row of sources cannot move to another organization', 'nor an upsert');
SELECT lives_ok($$UPDATE dalgo.sources SET name = 'Visits A (renamed)' WHERE id = '33333333-0000-4000-8000-0000000000a1'$$,
	'other columns still change');
SELECT lives_ok($$UPDATE dalgo.sources SET organization_id = organization_id WHERE id = '33333333-0000-4000-8000-0000000000a1'$$,
	'writing the same organization is not a move');

-- The service role and a superuser are refused too, with a hint.
RESET ROLE;
SET LOCAL dalgo.user_id = '';
SET LOCAL ROLE dalgo_service;
SELECT throws_ok($$UPDATE dalgo.outputs SET organization_id = '22222222-0000-4000-8000-0000000000b0'
	WHERE id = '66666666-0000-4000-8000-0000000000a1'$$,
	'42501', 'a row of outputs cannot move to another organization', 'the service role cannot move an output');
RESET ROLE;
SELECT throws_ok($$UPDATE dalgo.transformation_versions SET organization_id = '22222222-0000-4000-8000-0000000000b0'$$,
	'42501', NULL, 'a superuser cannot move a transformation version');
CREATE FUNCTION pg_temp.move_error() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	d text;
	h text;
BEGIN
	UPDATE dalgo.schedules SET organization_id = '22222222-0000-4000-8000-0000000000b0';
	RETURN 'moved';
EXCEPTION WHEN insufficient_privilege THEN
	GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
	RETURN d || ' / ' || h;
END
$$;
SELECT is(pg_temp.move_error(), 'Column organization_id is fixed when the row is created. / Create the row in the other organization instead.',
	'the error says why and what to do instead');
SELECT is((SELECT count(*) FROM dalgo.sources WHERE organization_id = :B), 1::bigint, 'B still has only its own source');

-- A restore inserts rows, which the trigger does not concern.
DELETE FROM dalgo.sources WHERE id = '33333333-0000-4000-8000-0000000000a1';
SELECT lives_ok($$INSERT INTO dalgo.sources (id, organization_id, name, source_type)
	VALUES ('33333333-0000-4000-8000-0000000000a1', '22222222-0000-4000-8000-0000000000a0', 'Visits A', 'google_sheets')$$,
	'inserting a row with its organization (as a restore does) works');
SELECT * FROM finish();
ROLLBACK;
