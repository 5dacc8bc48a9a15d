-- secrets_not_readable: credentials stored in sources.config are
-- write-only for end users.  No viewer, member, admin or owner reads them
-- back: not by column, whole row, row-to-json, filter oracle or RETURNING;
-- dalgo.source_config() gives members the config redacted, and nothing for
-- sources they cannot see.  The audit trail and the run history never show
-- them.  dalgo_service (connectors) reads the config whole.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
SELECT plan(31);
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set SA '''33333333-0000-4000-8000-0000000000a1'''
\set SB '''33333333-0000-4000-8000-0000000000b1'''
INSERT INTO dalgo.users (id, email, full_name) VALUES ('11111111-0000-4000-8000-000000000004', 'viewer.a@example.org', 'Viewer A');
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES (:A, '11111111-0000-4000-8000-000000000004', 'viewer');
UPDATE dalgo.sources SET config = '{"spreadsheet_id": "1AbC", "api_key": "k-SECRET-1",
	"dsn": "postgres://etl:pw-SECRET-2@db.example.org/crm", "oauth": {"refresh_token": "r-SECRET-3"}}' WHERE id = :SA;
UPDATE dalgo.sources SET config = '{"path": "b.csv", "password": "b-SECRET-4"}' WHERE id = :SB;

-- A viewer.
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000004';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok($$SELECT config FROM dalgo.sources$$, '42501', NULL, 'a viewer cannot select config');
SELECT throws_ok($$SELECT * FROM dalgo.sources$$, '42501', NULL, 'nor SELECT *');
SELECT throws_ok($$SELECT s FROM dalgo.sources s$$, '42501', NULL, 'nor the whole row');
SELECT throws_ok($$SELECT to_jsonb(s) FROM dalgo.sources s$$, '42501', NULL, 'nor the row as json');
SELECT throws_ok($$SELECT count(*) FROM dalgo.sources WHERE config->>'api_key' LIKE 'k-%'$$, '42501', NULL,
	'nor filter on it (no oracle)');
SELECT throws_ok($$SELECT id FROM dalgo.sources ORDER BY config$$, '42501', NULL, 'nor sort on it');
SELECT is((SELECT name FROM dalgo.sources), 'Visits A', 'every other column stays readable, under RLS');
SELECT is(dalgo.source_config(:SA),
	'{"spreadsheet_id": "1AbC", "api_key": "[redacted]", "dsn": "[redacted]", "oauth": {"refresh_token": "[redacted]"}}'::jsonb,
	'source_config() gives a member the config with its secrets redacted');
SELECT is(dalgo.source_config(:SB), NULL, 'and nothing for another organization''s source');
SELECT is(dalgo.source_config('33333333-0000-4000-8000-00000000ffff'), NULL, 'or for a source that does not exist');
RESET ROLE;

-- The owner: secrets are write-only for admins and owners too.
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok($$SELECT config FROM dalgo.sources$$, '42501', NULL, 'an owner cannot select config either');
SELECT throws_ok($$UPDATE dalgo.sources SET name = name WHERE config->>'api_key' = 'k-SECRET-1'$$, '42501', NULL,
	'nor use it as an oracle in an UPDATE');
SELECT throws_ok($$UPDATE dalgo.sources SET name = 'Visits A' RETURNING config$$, '42501', NULL, 'nor read it with RETURNING');
SELECT throws_ok($$UPDATE dalgo.sources SET config = config || '{"x": 1}'$$, '42501', NULL,
	'nor read it inside an update (replace the whole config instead)');
SELECT lives_ok($$UPDATE dalgo.sources SET config = '{"spreadsheet_id": "1AbC", "api_key": "k-SECRET-5"}' WHERE id = '33333333-0000-4000-8000-0000000000a1'$$,
	'an owner replaces the config');
SELECT lives_ok($$INSERT INTO dalgo.sources (organization_id, name, source_type, config) VALUES
	('22222222-0000-4000-8000-0000000000a0', 'Second', 'api', '{"token": "t-SECRET-6"}') RETURNING id$$,
	'and creates sources with secrets (RETURNING id)');
SELECT is(dalgo.source_config(:SA), '{"spreadsheet_id": "1AbC", "api_key": "[redacted]"}'::jsonb, 'and reads them back redacted');
SELECT ok((SELECT count(*) FROM dalgo.audit_logs WHERE resource_type = 'sources') > 0, 'the owner reads the audit trail of sources');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE details::text ~ 'SECRET'), 0::bigint,
	'which shows none of the secrets written');
RESET ROLE;

-- No identity, dalgo_anon.
SET LOCAL dalgo.user_id = '';
SET LOCAL ROLE dalgo_authenticated;
SELECT is(dalgo.source_config(:SA), NULL, 'without an identity, source_config() gives nothing');
RESET ROLE;
SET LOCAL ROLE dalgo_anon;
SELECT throws_ok($$SELECT dalgo.source_config('33333333-0000-4000-8000-0000000000a1')$$, '42501', NULL,
	'dalgo_anon cannot call source_config()');
RESET ROLE;

-- The function itself.
SELECT ok(NOT has_function_privilege('public', 'dalgo.source_config(uuid)', 'EXECUTE'), 'PUBLIC cannot execute source_config()');
SELECT is((SELECT proconfig FROM pg_proc WHERE oid = 'dalgo.source_config(uuid)'::regprocedure),
	'{"search_path=pg_catalog, pg_temp"}'::text[], 'it pins search_path');
SELECT ok((SELECT prosecdef FROM pg_proc WHERE oid = 'dalgo.source_config(uuid)'::regprocedure), 'it is SECURITY DEFINER');
-- A temp-schema hijack of what it calls changes nothing.
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000004';
SET LOCAL ROLE dalgo_authenticated;
CREATE FUNCTION pg_temp.redact(jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT $1 $$;
SET LOCAL search_path = pg_temp, dalgo, public;
SELECT is(dalgo.source_config(:SA)->>'api_key', '[redacted]', 'a pg_temp.redact() on the caller''s path is not used');
RESET search_path;
RESET ROLE;

-- Connectors (dalgo_service) read the config whole.
SET LOCAL dalgo.user_id = '';
SET LOCAL ROLE dalgo_service;
SELECT is((SELECT config->>'api_key' FROM dalgo.sources WHERE id = :SA), 'k-SECRET-5', 'dalgo_service reads the stored secret');
RESET ROLE;

-- Run history: what a connector reports passes through the redaction.
UPDATE dalgo.sources SET config = config || '{"connector": true}' WHERE id = :SA;
INSERT INTO dalgo.sync_runs (id, source_id, status) VALUES ('77777777-0000-4000-8000-0000000000a9', :SA, 'pending');
SET LOCAL ROLE dalgo_service;
SELECT is((dalgo.claim_sync_run()).id, '77777777-0000-4000-8000-0000000000a9'::uuid, 'a connector claims the run');
SELECT lives_ok($$SELECT dalgo.complete_sync_run('77777777-0000-4000-8000-0000000000a9', 0,
	'could not connect to postgres://etl:pw-SECRET-7@db.example.org/crm (password=pw-SECRET-7)',
	'{"access_token": "a-SECRET-8", "pages": 3}')$$, 'and reports a failure that quotes its credentials');
RESET ROLE;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000004';
SET LOCAL ROLE dalgo_authenticated;
SELECT is((SELECT error_message FROM dalgo.sync_runs WHERE id = '77777777-0000-4000-8000-0000000000a9'),
	'could not connect to postgres://***@db.example.org/crm (password=***)', 'a viewer reads the error without them');
SELECT is((SELECT details FROM dalgo.sync_runs WHERE id = '77777777-0000-4000-8000-0000000000a9'),
	'{"access_token": "[redacted]", "pages": 3}'::jsonb, 'and the run details without them');
RESET ROLE;
SELECT is((SELECT count(*) FROM dalgo.sync_runs WHERE error_message ~ 'SECRET' OR details::text ~ 'SECRET'), 0::bigint,
	'no run row stores them');

SELECT * FROM finish();
ROLLBACK;
