-- audit_trail: every change to tenant data leaves one audit row with the
-- actor, the organization and the row (or only what changed), secrets
-- redacted, nothing for no-op updates, nothing after a rollback; the trail
-- is append-only and readable only by the organization's admins.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\i test/fixtures/jwt.sql
SELECT plan(57);
\set A '''22222222-0000-4000-8000-0000000000a0'''
CREATE FUNCTION pg_temp.last_audit(tbl text) RETURNS dalgo.audit_logs LANGUAGE sql
	AS $$ SELECT * FROM dalgo.audit_logs WHERE resource_type = tbl AND created_at = now() ORDER BY id DESC LIMIT 1 $$;
CREATE FUNCTION pg_temp.audit_count() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM dalgo.audit_logs WHERE created_at = now() $$;
-- Every audit row of this transaction has created_at = now(); older rows come from other tests.

-- Inserts: the row, its organization, its id, the actor.
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE action = 'insert' AND created_at = now()), 20::bigint,
	'the fixture''s 20 inserts (16 rows, 2 recorded versions, 2 registrations of its warehouse tables) are audited');
SELECT is((pg_temp.last_audit('sources')).organization_id, '22222222-0000-4000-8000-0000000000b0'::uuid, 'organization from the row');
SELECT is((pg_temp.last_audit('sources')).resource_id, '33333333-0000-4000-8000-0000000000b1'::uuid, 'resource id from the primary key');
SELECT is((pg_temp.last_audit('sources')).details->>'name', 'Visits B', 'details hold the inserted row');
SELECT is((SELECT organization_id FROM dalgo.audit_logs WHERE resource_type = 'organizations' AND created_at = now() ORDER BY id LIMIT 1),
	:A::uuid, 'an organization is its own organization');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE resource_type = 'users' AND organization_id IS NOT NULL AND created_at = now()), 0::bigint,
	'users have no organization');
SELECT is((pg_temp.last_audit('users')).user_id, NULL, 'service work without an identity has a NULL actor');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE details ? 'password_hash' AND details->>'password_hash' <> '[redacted]'),
	0::bigint, 'password_hash is always redacted');
SELECT ok((SELECT bool_and(details->>'password_hash' = '[redacted]') FROM dalgo.audit_logs WHERE resource_type = 'users' AND created_at = now()),
	'and written as [redacted]');
SELECT ok((SELECT id FROM dalgo.audit_logs ORDER BY id DESC LIMIT 1) > (SELECT id FROM dalgo.audit_logs ORDER BY created_at, id LIMIT 1)
	AND (SELECT substr(id::text, 15, 1) FROM dalgo.audit_logs LIMIT 1) = '7', 'audit ids are time-ordered version 7 uuids');

-- Updates: only the changed columns; nothing for a no-op.
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000001';
SET LOCAL dalgo.client_ip = '203.0.113.7';
SET LOCAL dalgo.user_agent = 'dalgo-web/1.0';
UPDATE dalgo.sources SET name = 'Visits A2', description = 'renamed' WHERE id = '33333333-0000-4000-8000-0000000000a1';
SELECT is((pg_temp.last_audit('sources')).details,
	'{"name": {"old": "Visits A", "new": "Visits A2"}, "description": {"old": null, "new": "renamed"}}'::jsonb,
	'an update records only the changed columns, old and new');
SELECT is((pg_temp.last_audit('sources')).action, 'update', 'action update');
SELECT is((pg_temp.last_audit('sources')).user_id, '11111111-0000-4000-8000-000000000001'::uuid, 'actor from dalgo.user_id');
SELECT is((pg_temp.last_audit('sources')).ip_address, '203.0.113.7', 'client address from dalgo.client_ip');
SELECT is((pg_temp.last_audit('sources')).user_agent, 'dalgo-web/1.0', 'user agent from dalgo.user_agent');
SELECT pg_temp.audit_count() AS before_noop \gset
UPDATE dalgo.sources SET name = name WHERE id = '33333333-0000-4000-8000-0000000000a1';
SELECT is(pg_temp.audit_count(), :before_noop::bigint, 'an update that changes nothing writes nothing');
UPDATE dalgo.sources SET updated_at = now() - interval '1 hour' WHERE id = '33333333-0000-4000-8000-0000000000a1';
SELECT is(pg_temp.audit_count(), :before_noop::bigint, 'an update of only updated_at writes nothing');

-- Redaction inside config columns.
UPDATE dalgo.sources SET config = '{"sheet": "visits", "api_key": "k-123", "auth": {"refresh_token": "r", "client": {"secret": [1]}}, "Password": "p"}'
	WHERE id = '33333333-0000-4000-8000-0000000000a1';
SELECT is((pg_temp.last_audit('sources')).details->'config'->'new',
	'{"sheet": "visits", "api_key": "[redacted]", "auth": {"refresh_token": "[redacted]", "client": {"secret": "[redacted]"}}, "Password": "[redacted]"}'::jsonb,
	'keys naming secrets, tokens, passwords and keys are redacted at any depth');
SELECT ok(position('k-123' IN (SELECT string_agg(details::text, '') FROM dalgo.audit_logs)) = 0, 'the secret appears nowhere in the trail');
INSERT INTO dalgo.invitations (organization_id, email, token, expires_at) VALUES (:A, 'x@example.org', 'invite-secret', now() + interval '1 day');
SELECT is((pg_temp.last_audit('invitations')).details->>'token', '[redacted]', 'invitation tokens are redacted');
UPDATE dalgo.warehouse_connections SET access_token_encrypted = 'enc:abc' WHERE organization_id = :A;
SELECT is((pg_temp.last_audit('warehouse_connections')).details->'access_token_encrypted',
	'{"old": "[redacted]", "new": "[redacted]"}'::jsonb, 'a change to a credential is recorded, its values are not');
INSERT INTO dalgo.refresh_tokens (user_id, token_hash, expires_at) VALUES ('11111111-0000-4000-8000-000000000001', 'th', now());
SELECT is((pg_temp.last_audit('refresh_tokens')).details->>'token_hash', '[redacted]', 'token hashes are redacted');

-- Deletes.
DELETE FROM dalgo.outputs WHERE id = '66666666-0000-4000-8000-0000000000a1';
SELECT is((pg_temp.last_audit('outputs')).action, 'delete', 'action delete');
SELECT is((pg_temp.last_audit('outputs')).details->>'name', 'Dashboard A', 'details hold the deleted row');

-- The actor from a verified token and from trusted claims.
SET LOCAL dalgo.user_id = '';
SET LOCAL dalgo.jwt_secret = :secret;
SELECT dalgo.authenticate(pg_temp.jwt(:hs256, pg_temp.claims('11111111-0000-4000-8000-000000000002'), :secret)) IS NOT NULL AS signed_in \gset
UPDATE dalgo.transformations SET name = 'by token' WHERE id = '55555555-0000-4000-8000-0000000000a1';
SELECT is((pg_temp.last_audit('transformations')).user_id, '11111111-0000-4000-8000-000000000002'::uuid, 'actor from dalgo.authenticate');
SELECT dalgo.sign_out() \g /dev/null
SELECT set_config('dalgo.claims_authenticators', quote_ident(session_user), true) \g /dev/null
SET LOCAL request.jwt.claims = '{"sub": "11111111-0000-4000-8000-000000000003"}';
UPDATE dalgo.transformations SET name = 'by claims' WHERE id = '55555555-0000-4000-8000-0000000000b1';
SELECT is((pg_temp.last_audit('transformations')).user_id, '11111111-0000-4000-8000-000000000003'::uuid, 'actor from request.jwt.claims');
SET LOCAL dalgo.claims_authenticators = '';
SET LOCAL dalgo.client_ip = '';
SET LOCAL dalgo.user_agent = '';
SET LOCAL application_name = 'nightly-job';
UPDATE dalgo.transformations SET name = 'by service' WHERE id = '55555555-0000-4000-8000-0000000000b1';
SELECT is((pg_temp.last_audit('transformations')).user_agent, 'nightly-job', 'user agent falls back to application_name');
SELECT is((pg_temp.last_audit('transformations')).user_id, NULL, 'no identity, no actor');

-- A rollback leaves nothing.
SELECT pg_temp.audit_count() AS before_rollback \gset
SAVEPOINT s;
INSERT INTO dalgo.sources (organization_id, name, source_type) VALUES (:A, 'rolled back', 'csv');
ROLLBACK TO SAVEPOINT s;
SELECT is(pg_temp.audit_count(), :before_rollback::bigint, 'a rolled-back change leaves no audit row');

-- Bulk: one audit row per row, 10,000 at a time.
CREATE TABLE public.bulk_items (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), organization_id uuid, n int, updated_at timestamptz DEFAULT now());
SELECT dalgo.enable_audit('public.bulk_items') \g /dev/null
SELECT pg_temp.audit_count() AS before_bulk \gset
INSERT INTO public.bulk_items (organization_id, n) SELECT :A, g FROM generate_series(1, 10000) g;
SELECT is(pg_temp.audit_count() - :before_bulk, 10000::bigint, '10,000-row INSERT: 10,000 audit rows');
UPDATE public.bulk_items SET n = n + 1;
SELECT is(pg_temp.audit_count() - :before_bulk, 20000::bigint, '10,000-row UPDATE: 10,000 audit rows');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE resource_type = 'public.bulk_items' AND action = 'update'
		   AND details = jsonb_build_object('n', jsonb_build_object('old', (details->'n'->>'old')::int, 'new', (details->'n'->>'old')::int + 1))),
	10000::bigint, 'each update row holds its own diff');
DELETE FROM public.bulk_items;
SELECT is(pg_temp.audit_count() - :before_bulk, 30000::bigint, '10,000-row DELETE: 10,000 audit rows');
SELECT is((SELECT count(DISTINCT resource_id) FROM dalgo.audit_logs WHERE resource_type = 'public.bulk_items'), 10000::bigint,
	'every row is recorded under its own id');

-- Any table: composite and non-uuid keys, no organization column, TRUNCATE.
CREATE TABLE public.plugin (org_id bigint, name text, n int, credentials jsonb, PRIMARY KEY (org_id, name));
SELECT dalgo.enable_audit('public.plugin', '{n}') \g /dev/null
INSERT INTO public.plugin VALUES (7, 'sheets', 1, '{"api_token": "t", "region": "eu"}');
SELECT is((pg_temp.last_audit('public.plugin')).details,
	'{"org_id": 7, "name": "sheets", "n": "[redacted]", "credentials": {"api_token": "[redacted]", "region": "eu"}, "_key": {"org_id": 7, "name": "sheets"}}'::jsonb,
	'a composite key goes into details as _key; excluded columns and credential keys are redacted');
SELECT is((pg_temp.last_audit('public.plugin')).organization_id, NULL, 'a table without an organization column has none');
SELECT is((pg_temp.last_audit('public.plugin')).resource_id, NULL, 'and no uuid resource id');
CREATE TABLE public.workflows (id bigserial PRIMARY KEY, tenant uuid, title text);
SELECT dalgo.enable_audit('public.workflows', organization_column => 'tenant') \g /dev/null
INSERT INTO public.workflows (tenant, title) VALUES (:A, 'wf');
SELECT is((pg_temp.last_audit('public.workflows')).organization_id, :A::uuid, 'the organization column can be named');
SELECT is((pg_temp.last_audit('public.workflows')).details->'_key', '{"id": 1}'::jsonb, 'a bigint key goes into _key');
TRUNCATE public.workflows;
SELECT is((pg_temp.last_audit('public.workflows')).action, 'truncate', 'TRUNCATE is logged as one row');
SELECT dalgo.disable_audit('public.workflows') \g /dev/null
INSERT INTO public.workflows (tenant, title) VALUES (:A, 'quiet');
SELECT is((pg_temp.last_audit('public.workflows')).action, 'truncate', 'disable_audit stops the trail');
SELECT throws_ok($$SELECT dalgo.enable_audit('public.workflows', '{nope}')$$, '42703', NULL, 'an unknown excluded column is an error');
SELECT throws_ok($$SELECT dalgo.enable_audit('public.workflows', organization_column => 'title')$$, '42703', NULL,
	'a non-uuid organization column is an error');
SELECT throws_ok($$SELECT dalgo.enable_audit('dalgo.audit_logs')$$, '22023', NULL, 'the trail does not audit itself');

-- Append-only, for everyone.
SELECT throws_ok($$UPDATE dalgo.audit_logs SET action = 'x'$$, '42501', 'dalgo.audit_logs is append-only', 'even a superuser''s UPDATE is refused by the trigger');
SELECT throws_ok($$DELETE FROM dalgo.audit_logs$$, '42501', 'dalgo.audit_logs is append-only', 'and DELETE');
SELECT throws_ok($$TRUNCATE dalgo.audit_logs$$, '42501', 'dalgo.audit_logs is append-only', 'and TRUNCATE');
SET LOCAL ROLE dalgo_service;
SELECT throws_ok($$INSERT INTO dalgo.audit_logs (action, resource_type) VALUES ('insert', 'x')$$, '42501', NULL, 'the service role cannot forge rows');
SELECT throws_ok($$UPDATE dalgo.audit_logs SET action = 'x'$$, '42501', NULL, 'nor edit them');
RESET ROLE;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok($$SELECT dalgo.purge_audit_logs('1 day')$$, '42501', NULL, 'end users cannot purge');
RESET ROLE;

-- Purge: the one way rows leave, for dalgo_service.
ALTER TABLE dalgo.audit_logs DISABLE TRIGGER append_only;
UPDATE dalgo.audit_logs SET created_at = now() - interval '100 days' WHERE resource_type = 'public.bulk_items';
ALTER TABLE dalgo.audit_logs ENABLE TRIGGER append_only;
SET LOCAL dalgo.user_id = '';
SET LOCAL ROLE dalgo_service;
SELECT throws_ok($$SELECT dalgo.purge_audit_logs('-1 day')$$, '22023', NULL, 'a negative age is refused');
SELECT is(dalgo.purge_audit_logs('90 days'), 30000::bigint, 'dalgo_service purges rows older than the cutoff');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE resource_type = 'public.bulk_items'), 0::bigint, 'and they are gone');
SELECT ok(pg_temp.audit_count() > 0, 'newer rows stay');
RESET ROLE;

-- Who reads the trail.
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE organization_id IS DISTINCT FROM :A), 0::bigint, 'an owner reads only their organization''s trail');
SELECT ok((SELECT count(*) FROM dalgo.audit_logs) > 0, 'and does read it');
RESET ROLE;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SET LOCAL ROLE dalgo_authenticated;
SELECT is((SELECT count(*) FROM dalgo.audit_logs), 0::bigint, 'a member reads none');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
