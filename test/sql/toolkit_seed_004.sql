-- toolkit_seed_004: the Supabase privacy schema (seed 004), secured only by
-- toolkit calls (test/fixtures/seed_004_privacy.sql), with the seed's
-- patterns: own data, public read (feature_flags, offers), zero trust
-- (telemetry_events, privacy_transparency_log), own + organization rows
-- (workflows, user_integrations), service only; the auto-redact trigger,
-- retention, updated_at, audit; the report is clean.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/toolkit_users.sql
\i test/fixtures/seed_004_privacy.sql
INSERT INTO seed_004.privacy_prefs ("userId", "dataRetentionDays") VALUES (:OWNER_A, 30), (:OWNER_B, 60), (:VIEWER_A, 10), (:LONER, 0);
INSERT INTO seed_004.feature_flags (key, enabled) VALUES ('new_ui', true), ('beta', false);
INSERT INTO seed_004.offers (key, name, "planType", enabled) VALUES ('spring', 'Spring', 'pro', true), ('old', 'Old', 'pro', false);
INSERT INTO seed_004.telemetry_events ("userId", "eventType", "metadataRedactedJson", "timestamp") VALUES
	(:OWNER_A, 'open', '{"path": "/home", "contact": "call +1 415 555 0100", "apiKey": "k"}', now()),
	(:OWNER_A, 'old', '{}', now() - interval '40 days'),
	(:OWNER_B, 'open', '{}', now()),
	-- Per-user retention: B keeps 60 days, the viewer 10, the member (no
	-- preference) and the loner (0: no valid preference) the policy's 30.
	(:OWNER_B, 'kept 40', '{}', now() - interval '40 days'), (:OWNER_B, 'expired 70', '{}', now() - interval '70 days'),
	(:VIEWER_A, 'kept 5', '{}', now() - interval '5 days'), (:VIEWER_A, 'expired 15', '{}', now() - interval '15 days'),
	(:MEMBER_A, 'kept 20', '{}', now() - interval '20 days'), (:MEMBER_A, 'expired 40', '{}', now() - interval '40 days'),
	(:LONER, 'kept 20', '{}', now() - interval '20 days'), (:LONER, 'expired 31', '{}', now() - interval '31 days');
INSERT INTO seed_004.privacy_transparency_log ("userId", action, resource) VALUES (:OWNER_A, 'export', 'events'), (:OWNER_B, 'export', 'events');
INSERT INTO seed_004.workflows (id, "userId", "organizationId", name) VALUES
	('eeeeeeee-0000-4000-8000-000000000001', :OWNER_A, :A, 'A team flow'),
	('eeeeeeee-0000-4000-8000-000000000002', :LONER, NULL, 'loner private flow'),
	('eeeeeeee-0000-4000-8000-000000000003', :OWNER_B, :B, 'B team flow');
INSERT INTO seed_004.workflow_versions ("workflowId", version, definition) SELECT id, 1, '{}' FROM seed_004.workflows;
INSERT INTO seed_004.user_integrations ("userId", "organizationId", provider, name, config) VALUES
	(:MEMBER_A, :A, 'slack', 'A slack', '{"webhook": "https://hooks.example/x", "token": "xoxb"}'), (:OWNER_B, :B, 'slack', 'B slack', '{}');
INSERT INTO seed_004.utm_tracks ("userId", source, campaign, "timestamp") VALUES
	(:OWNER_A, 'google', 'spring', now() - interval '400 days'), (:OWNER_A, 'google', 'summer', now());
INSERT INTO seed_004.metrics_log (source, metric) VALUES ('api', '{"p95": 120}');
SELECT plan(27);
:as_anon
SELECT set_eq('SELECT key FROM seed_004.feature_flags', ARRAY['new_ui'], 'public read: dalgo_anon reads enabled feature flags');
SELECT set_eq('SELECT key FROM seed_004.offers', ARRAY['spring'], 'public read: ...and enabled offers');
SELECT throws_ok('SELECT * FROM seed_004.privacy_prefs', '42501', NULL, 'dalgo_anon reads no private data');
:as_owner_a
SELECT throws_ok($$UPDATE seed_004.feature_flags SET enabled = true$$, '42501', NULL, 'public read: users do not write');
SELECT set_eq('SELECT "dataRetentionDays" FROM seed_004.privacy_prefs', ARRAY[30], 'own data: users are isolated');
SELECT set_eq('SELECT "eventType" FROM seed_004.telemetry_events', ARRAY['open', 'old'], 'zero trust: a user reads their telemetry');
SELECT lives_ok($$INSERT INTO seed_004.telemetry_events ("userId", "eventType") VALUES ('11111111-0000-4000-8000-000000000001', 'click')$$,
	'zero trust: ...and appends to it');
SELECT throws_ok($$INSERT INTO seed_004.telemetry_events ("userId", "eventType") VALUES ('11111111-0000-4000-8000-000000000003', 'forged')$$,
	'42501', NULL, 'zero trust: never in another user''s name');
SELECT throws_ok($$UPDATE seed_004.telemetry_events SET "eventType" = 'x'$$, '42501', NULL, 'zero trust: telemetry is never changed');
SELECT throws_ok($$DELETE FROM seed_004.privacy_transparency_log$$, '42501', NULL, 'zero trust: the transparency log is never deleted');
SELECT set_eq('SELECT resource FROM seed_004.privacy_transparency_log', ARRAY['events'], 'zero trust: a user reads only their transparency log');
:as_service
SELECT throws_ok($$DELETE FROM seed_004.telemetry_events$$, '42501', NULL, 'zero trust: no admin bypass, not even dalgo_service');
:as_viewer_a
SELECT set_eq('SELECT name FROM seed_004.workflows', ARRAY['A team flow'], 'own + org: members read their organization''s workflows');
SELECT is((SELECT count(*) FROM seed_004.workflow_versions), 1::bigint, '...and their versions');
SELECT set_eq('SELECT name FROM seed_004.user_integrations', ARRAY['A slack'], 'own + org: ...and integrations, not another organization''s');
:as_loner
SELECT set_eq('SELECT name FROM seed_004.workflows', ARRAY['loner private flow'], 'own + org: a user''s own workflow outside any organization');
SELECT throws_ok($$UPDATE seed_004.workflows SET "organizationId" = '22222222-0000-4000-8000-0000000000a0'$$, '42501', NULL,
	'own + org: a row never enters an organization its writer is not a member of');
:as_owner_a
SELECT throws_ok('SELECT * FROM seed_004.metrics_log', '42501', NULL, 'service role: metrics are for dalgo_service only');
:as_super
SELECT is((SELECT "metadataRedactedJson" FROM seed_004.telemetry_events WHERE "eventType" = 'open' AND "userId" = :OWNER_A),
	'{"path": "/home", "apiKey": "[redacted]", "contact": "call ***"}', 'auto-redact: telemetry metadata loses secrets and phone numbers');
SELECT is((SELECT config->>'token' FROM seed_004.user_integrations WHERE name = 'A slack'), '[redacted]', 'integration configs keep no tokens');
SELECT throws_ok($$SELECT dalgo.set_retention('seed_004.events', 'timestamp', 180, user_column => 'userId',
	user_days => 'seed_004.telemetry_events."durationMs"')$$, '22023',
	'column "userId" of seed_004.telemetry_events needs a unique index: one number of days per user',
	'per-user retention: the days come from a table with one row per user');
SELECT throws_ok($$SELECT dalgo.set_retention('seed_004.events', 'timestamp', 180, user_column => 'userId',
	user_days => 'seed_004.privacy_prefs.dataRetentionDays')$$, '42703', NULL, '...named as schema.table.column, quoted like SQL');
SELECT set_eq($$SELECT table_name, rows_affected FROM dalgo.apply_retention(batch_size => 2) WHERE table_name LIKE 'seed_004.%'$$,
	$$VALUES ('seed_004.telemetry_events', 5::bigint), ('seed_004.events', 0::bigint), ('seed_004.utm_tracks', 1::bigint)$$,
	'retention: expired telemetry is deleted (in batches) and old UTM tracks anonymized');
SELECT bag_eq($$SELECT "eventType" FROM seed_004.telemetry_events$$, ARRAY['open', 'open', 'click', 'kept 40', 'kept 5', 'kept 20', 'kept 20'],
	'per-user retention (the seed''s dataRetentionDays): each user''s own days, else the policy''s');
SELECT is((SELECT count(*) FROM seed_004.utm_tracks WHERE source IS NULL AND campaign IS NULL), 1::bigint, '...the old track lost its campaign data');
UPDATE seed_004.privacy_prefs SET "updatedAt" = '2000-01-01', "consentGiven" = true;
SELECT ok((SELECT bool_and("updatedAt" > '2001-01-01') FROM seed_004.privacy_prefs)
		  AND EXISTS (SELECT FROM dalgo.audit_logs WHERE resource_type = 'seed_004.privacy_prefs' AND action = 'update'),
	'updatedAt is maintained and changes are audited');
SELECT is_empty($$SELECT * FROM dalgo.security_report('seed_004')$$, 'the secured schema reports nothing');
SELECT * FROM finish();
ROLLBACK;
