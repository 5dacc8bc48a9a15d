-- toolkit_seed_003: the organization/user/plugin model (seed 003), secured
-- only by toolkit calls (test/fixtures/seed_003_org_user_plugin.sql):
-- plugins are invisible to another organization and configured by admins;
-- their credentials are stored encrypted and read in plaintext only by the
-- organization's admins (and dalgo_service); the report is clean.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/toolkit_users.sql
\i test/fixtures/seed_003_org_user_plugin.sql
INSERT INTO seed_003.plugin (organization_id, data_source, title, credentials, properties) VALUES
	(:A, 'postgres', 'A db', '{"password": "pa"}', '{}'), (:B, 'postgres', 'B db', '{"password": "secret-of-b"}', '{}');
SELECT plan(12);
:as_member_a
SELECT set_eq('SELECT title FROM seed_003.plugin', ARRAY['A db'], 'organizations are isolated');
SELECT is_empty($$SELECT * FROM seed_003.plugin WHERE credentials::text LIKE '%secret-of-b%'$$, 'another organization''s credentials are invisible');
SELECT throws_ok($$INSERT INTO seed_003.plugin (organization_id, data_source, title, credentials, properties) VALUES ('22222222-0000-4000-8000-0000000000a0', 'x', 'x', '{}', '{}')$$,
	'42501', NULL, 'members do not configure plugins');
:as_owner_b
SELECT set_eq('SELECT title FROM seed_003.plugin', ARRAY['B db'], 'the other organization sees only its plugin');
SELECT is(pg_temp.affected($$UPDATE seed_003.plugin SET title = 'mine'$$), 1::bigint, 'an owner changes only their organization''s plugin');
:as_super
SELECT ok(EXISTS (SELECT FROM dalgo.audit_logs WHERE resource_type = 'seed_003.plugin' AND organization_id = :B), 'changes are audited');
SELECT is_empty($$SELECT * FROM dalgo.audit_logs WHERE resource_type = 'seed_003.plugin' AND (details::text LIKE '%"pa"%' OR details::text LIKE '%secret-of-b%')$$,
	'the audit trail never shows credentials');
SELECT is_empty($$SELECT * FROM seed_003.plugin WHERE credentials::text NOT LIKE '"dalgo:pgp1:%' OR credentials::text LIKE '%"password"%'$$,
	'credentials are stored encrypted');
SELECT is_empty($$SELECT * FROM dalgo.security_report('seed_003')$$, 'the secured schema reports nothing');
:as_owner_a
SELECT is(dalgo.read_secret('seed_003.plugin', 'credentials', id::text), '{"password": "pa"}', 'an admin reads the credentials')
FROM seed_003.plugin;
SELECT is(dalgo.read_secret('seed_003.plugin', 'credentials', id::text), NULL, 'another organization''s admin reads nothing')
FROM (SELECT 2 AS id) x;
:as_member_a
SELECT is(dalgo.read_secret('seed_003.plugin', 'credentials', id::text), NULL, 'a member (below admin) reads nothing')
FROM seed_003.plugin;
SELECT * FROM finish();
ROLLBACK;
