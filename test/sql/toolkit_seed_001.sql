-- toolkit_seed_001: the AI-ETL framework's schema (seed 001), secured only
-- by toolkit calls (test/fixtures/seed_001_ai_etl.sql): organizations are
-- isolated, admins configure sources, members write results, viewers read;
-- updated_at, audit, redaction and retention work; the report is clean.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/toolkit_users.sql
\i test/fixtures/seed_001_ai_etl.sql
INSERT INTO seed_001.analytics_data_sources (id, org_id, name, config) VALUES
	('sales', :A, 'Sales A', '{"url": "postgres://etl:pw@db/sales"}'), ('sales', :B, 'Sales B', '{}');
INSERT INTO seed_001.analytics_pipeline_history (org_id, source_id, source_name, status, error_message, "timestamp") VALUES
	(:A, 'sales', 'Sales A', 'failed', 'could not connect: password=hunter2 host=db', now()),
	(:A, 'sales', 'Sales A', 'completed', NULL, now() - interval '200 days'),
	(:B, 'sales', 'Sales B', 'completed', NULL, now());
INSERT INTO seed_001.analytics_source_insights (source_id, org_id, data_summary) VALUES ('sales', :A, 'up'), ('sales', :B, 'down');
INSERT INTO seed_001.analytics_visualizations (source_id, org_id, chart_type, chart_config) VALUES ('sales', :B, 'bar', '{}');
SELECT plan(14);
:as_viewer_a
SELECT set_eq('SELECT name FROM seed_001.analytics_data_sources', ARRAY['Sales A'], 'organizations are isolated: a viewer reads their organization''s sources');
SELECT set_eq('SELECT data_summary FROM seed_001.analytics_source_insights', ARRAY['up'], '...and insights');
SELECT is_empty('SELECT * FROM seed_001.analytics_visualizations', '...and nothing of another organization');
SELECT throws_ok($$INSERT INTO seed_001.analytics_source_insights (source_id, org_id) VALUES ('x', '22222222-0000-4000-8000-0000000000a0')$$,
	'42501', NULL, 'a viewer writes nothing');
:as_member_a
SELECT lives_ok($$INSERT INTO seed_001.analytics_visualizations (source_id, org_id, chart_type, chart_config) VALUES ('sales', '22222222-0000-4000-8000-0000000000a0', 'pie', '{}')$$,
	'a member writes results');
SELECT throws_ok($$INSERT INTO seed_001.analytics_data_sources (id, org_id, name, config) VALUES ('x', '22222222-0000-4000-8000-0000000000a0', 'x', '{}')$$,
	'42501', NULL, 'sources are configured by admins only');
SELECT throws_ok($$UPDATE seed_001.analytics_visualizations SET org_id = '22222222-0000-4000-8000-0000000000b0'$$, '42501', NULL,
	'a row cannot move to another organization');
:as_owner_b
SELECT set_eq('SELECT source_name FROM seed_001.analytics_pipeline_history', ARRAY['Sales B'], 'the other organization sees only its history');
:as_owner_a
UPDATE seed_001.analytics_data_sources SET name = 'Sales A2', updated_at = '2000-01-01';
SELECT ok((SELECT updated_at > '2001-01-01' FROM seed_001.analytics_data_sources), 'updated_at is set on update');
:as_super
SELECT ok(EXISTS (SELECT FROM dalgo.audit_logs WHERE resource_type = 'seed_001.analytics_data_sources' AND action = 'update'
				  AND organization_id = :A), 'changes are audited with their organization');
SELECT is((SELECT error_message FROM seed_001.analytics_pipeline_history WHERE status = 'failed'),
	'could not connect: password=*** host=db', 'pipeline errors are stored without credentials');
SELECT is((SELECT config->>'url' FROM seed_001.analytics_data_sources WHERE org_id = :A), 'postgres://***@db/sales',
	'source configs are stored without credentials');
SELECT is((SELECT rows_affected FROM dalgo.apply_retention() WHERE table_name = 'seed_001.analytics_pipeline_history'), 1::bigint,
	'pipeline history older than 90 days expires');
SELECT is_empty($$SELECT * FROM dalgo.security_report('seed_001')$$, 'the secured schema reports nothing');
SELECT * FROM finish();
ROLLBACK;
