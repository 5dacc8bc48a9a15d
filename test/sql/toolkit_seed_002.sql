-- toolkit_seed_002: DataPulse (seed 002), secured only by toolkit calls
-- (test/fixtures/seed_002_datapulse.sql): dashboards are their owners',
-- shared to view or edit, public ones readable by everyone signed in;
-- widgets and reports follow their dashboard; alerts, models, workflows
-- and API keys are their owners'; the audit log is zero trust and
-- redacted; data sources are for dalgo_service; the report is clean.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/toolkit_users.sql
\i test/fixtures/seed_002_datapulse.sql
INSERT INTO seed_002.dashboards (id, user_id, name, is_public) VALUES
	('dddddddd-0000-4000-8000-000000000001', :OWNER_A, 'A private', false),
	('dddddddd-0000-4000-8000-000000000002', :OWNER_A, 'A public', true),
	('dddddddd-0000-4000-8000-000000000003', :OWNER_B, 'B for member A', false);
INSERT INTO seed_002.dashboard_shares (dashboard_id, user_id, permission, shared_by) VALUES
	('dddddddd-0000-4000-8000-000000000003', :MEMBER_A, 'edit', :OWNER_B);
INSERT INTO seed_002.widgets (dashboard_id, type) SELECT id, 'table' FROM seed_002.dashboards;
INSERT INTO seed_002.reports (dashboard_id, created_by, name) VALUES ('dddddddd-0000-4000-8000-000000000001', :OWNER_A, 'weekly');
INSERT INTO seed_002.alerts (user_id, name, threshold_type, threshold_value) VALUES (:OWNER_A, 'a', 'above', 1), (:OWNER_B, 'b', 'below', 2);
INSERT INTO seed_002.api_keys (user_id, name, key_hash) VALUES (:OWNER_A, 'ka', 'h1'), (:OWNER_B, 'kb', 'h2');
INSERT INTO seed_002.data_sources (name, type, connection_config) VALUES ('warehouse', 'postgresql', '{"host": "db"}');
SELECT plan(18);
:as_owner_b
SELECT set_eq('SELECT name FROM seed_002.dashboards', ARRAY['A public', 'B for member A'], 'users are isolated: own and public dashboards');
SELECT is((SELECT count(*) FROM seed_002.widgets), 2::bigint, 'widgets follow their dashboard');
SELECT is_empty('SELECT * FROM seed_002.reports', 'reports follow their dashboard');
SELECT set_eq('SELECT name FROM seed_002.alerts', ARRAY['b'], 'alerts are their owner''s');
SELECT set_eq('SELECT name FROM seed_002.api_keys', ARRAY['kb'], 'API keys are their owner''s');
SELECT throws_ok($$INSERT INTO seed_002.dashboard_shares (dashboard_id, user_id, permission, shared_by) VALUES ('dddddddd-0000-4000-8000-000000000001', '11111111-0000-4000-8000-000000000003', 'edit', '11111111-0000-4000-8000-000000000003')$$,
	'42501', NULL, 'nobody shares a dashboard they do not own');
:as_member_a
SELECT set_eq('SELECT name FROM seed_002.dashboards', ARRAY['A public', 'B for member A'], 'a share grants reading');
SELECT lives_ok($$UPDATE seed_002.dashboards SET name = 'B edited' WHERE id = 'dddddddd-0000-4000-8000-000000000003'$$, 'an edit share grants changing');
SELECT lives_ok($$INSERT INTO seed_002.widgets (dashboard_id, type) VALUES ('dddddddd-0000-4000-8000-000000000003', 'metric_card')$$,
	'...and adding widgets to it');
SELECT throws_ok($$INSERT INTO seed_002.widgets (dashboard_id, type) VALUES ('dddddddd-0000-4000-8000-000000000002', 'metric_card')$$,
	'42501', NULL, 'a public dashboard is read-only to others');
SELECT throws_ok('SELECT * FROM seed_002.data_sources', '42501', NULL, 'data sources are for dalgo_service only');
SELECT lives_ok($$INSERT INTO seed_002.audit_logs (user_id, action, resource_type, details) VALUES ('11111111-0000-4000-8000-000000000002', 'login', 'user', '{"ip_note": "from ana@example.org", "token": "t"}')$$,
	'users append to their audit log');
SELECT throws_ok($$UPDATE seed_002.audit_logs SET action = 'nothing'$$, '42501', NULL, 'the audit log is never changed');
SELECT is((SELECT details FROM seed_002.audit_logs), '{"token": "[redacted]", "ip_note": "from ***"}', 'audit details are redacted');
:as_super
UPDATE seed_002.dashboards SET updated_at = '2000-01-01' WHERE id = 'dddddddd-0000-4000-8000-000000000003';
SELECT ok((SELECT updated_at > '2001-01-01' FROM seed_002.dashboards WHERE id = 'dddddddd-0000-4000-8000-000000000003'), 'updated_at is set on update');
SELECT ok(EXISTS (SELECT FROM dalgo.audit_logs WHERE resource_type = 'seed_002.dashboards' AND action = 'update'
				  AND user_id = :MEMBER_A), 'changes are audited with who made them');
SELECT is((SELECT retention_days FROM dalgo.retention_policies WHERE table_name = 'seed_002.audit_logs'::regclass), 365, 'the audit log expires after a year');
SELECT is_empty($$SELECT * FROM dalgo.security_report('seed_002')$$, 'the secured schema reports nothing');
SELECT * FROM finish();
ROLLBACK;
