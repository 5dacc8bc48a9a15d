-- warehouse_adoption: ensure_warehouse() never adopts a role or schema of
-- the expected name that dalgo would not have made: a role that can log in,
-- is a superuser, bypasses RLS, creates roles or databases, or has role
-- memberships; a schema owned by another role.  And a warehouse role
-- altered later is not used.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
SELECT plan(12);
INSERT INTO dalgo.organizations (id, name, slug) VALUES
	('22222222-0000-4000-8000-0000000000c0', 'Org C', 'org-c'),
	('22222222-0000-4000-8000-0000000000d0', 'Org D', 'org-d');
\set C '''22222222-0000-4000-8000-0000000000c0'''
\set RC dalgo_wh_222222220000400080000000000000c0
\set SC org_222222220000400080000000000000c0
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'

CREATE ROLE :RC LOGIN;
SELECT throws_ok($$SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000c0')$$, '55000',
	'role "dalgo_wh_222222220000400080000000000000c0" exists but is not a warehouse role dalgo can use: it can log in',
	'a role that can log in is not adopted');
ALTER ROLE :RC NOLOGIN SUPERUSER;
SELECT throws_ok($$SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000c0')$$, '55000', NULL,
	'nor a superuser');
ALTER ROLE :RC NOSUPERUSER BYPASSRLS;
SELECT throws_ok($$SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000c0')$$, '55000', NULL,
	'nor a role that bypasses row-level security');
ALTER ROLE :RC NOBYPASSRLS CREATEROLE;
SELECT throws_ok($$SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000c0')$$, '55000', NULL,
	'nor one that creates roles');
ALTER ROLE :RC NOCREATEROLE CREATEDB;
SELECT throws_ok($$SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000c0')$$, '55000', NULL,
	'nor one that creates databases');
ALTER ROLE :RC NOCREATEDB;
GRANT pg_read_all_data TO :RC;
SELECT throws_ok($$SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000c0')$$, '55000',
	'role "dalgo_wh_222222220000400080000000000000c0" exists but is not a warehouse role dalgo can use: it is a member of pg_read_all_data',
	'nor a member of another role');
REVOKE pg_read_all_data FROM :RC;
CREATE ROLE dalgo_test_intruder LOGIN;
GRANT :RC TO dalgo_test_intruder;
SELECT throws_ok($$SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000c0')$$, '55000', NULL,
	'nor a role granted to a login');
REVOKE :RC FROM dalgo_test_intruder;
CREATE SCHEMA :SC AUTHORIZATION dalgo_test_intruder;
SELECT throws_ok($$SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000c0')$$, '55000',
	'schema "org_222222220000400080000000000000c0" exists but is not owned by the warehouse role "dalgo_wh_222222220000400080000000000000c0"',
	'a schema owned by another role is not adopted');
ALTER SCHEMA :SC OWNER TO :RC;
SELECT is(dalgo.ensure_warehouse(:C), 'org_222222220000400080000000000000c0',
	'a role and schema as dalgo makes them are used');
SELECT is(dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000d0'), 'org_222222220000400080000000000000d0',
	'and a new warehouse is created as before');

-- A warehouse role given more rights later is refused where recipe SQL runs.
ALTER ROLE dalgo_wh_222222220000400080000000000000a0 BYPASSRLS;
:as_owner_a
SELECT throws_ok($$SELECT * FROM dalgo.read_warehouse_table('22222222-0000-4000-8000-0000000000a0', 'visits')$$, '55000', NULL,
	'a preview does not run as a warehouse role that bypasses row-level security');
RESET ROLE;
ALTER ROLE dalgo_wh_222222220000400080000000000000a0 NOBYPASSRLS;
:as_owner_a
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table('22222222-0000-4000-8000-0000000000a0', 'visits')), 5::bigint,
	'and runs again once it is corrected');
SELECT * FROM finish();
ROLLBACK;
