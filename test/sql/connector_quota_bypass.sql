-- connector_quota_bypass: connector runs are runs.  claim_sync_run must apply
-- the organization's concurrent_runs and runs_per_hour quotas like the
-- in-database runs (a refused run fails with the quota's message), and a
-- connector must not make its run uncounted by writing dalgo's own keys
-- ("skipped", "schedule_id", "runner_pid") into details.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
SELECT plan(9);
UPDATE dalgo.sources SET config = '{"connector": true}' WHERE id = '33333333-0000-4000-8000-0000000000a1';
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000a2', :A, 'Sheet 2', 'google_sheets', '{"connector": true}', 'sheet2'),
	('33333333-0000-4000-8000-0000000000a3', :A, 'Sheet 3', 'google_sheets', '{"connector": true}', 'sheet3');
INSERT INTO dalgo.schedules (organization_id, source_id, frequency)
SELECT organization_id, id, 'daily' FROM dalgo.sources WHERE organization_id = :A AND source_type = 'google_sheets';
UPDATE dalgo.organizations SET settings = '{"quotas": {"concurrent_runs": 1}}' WHERE id = :A;
SELECT is((SELECT count(*) FROM dalgo_internal.claim_due_schedules(now() + interval '2 days', 10) WHERE outcome = 'connector'),
	3::bigint, 'three connector runs are queued');

SET LOCAL ROLE dalgo_service;
SELECT (dalgo.claim_sync_run()).id AS first_run \gset
SELECT isnt(:'first_run'::uuid, NULL, 'a connector claims the first run');
SELECT is((dalgo.claim_sync_run()).id, NULL::uuid, 'a second claim gets nothing while the first runs (concurrent_runs 1)');
RESET ROLE;
SELECT is((SELECT count(*) FROM dalgo.sync_runs WHERE organization_id = :A AND status = 'running'), 1::bigint,
	'only one connector run of the organization is running');
SELECT matches((SELECT min(error_message) FROM dalgo.sync_runs WHERE organization_id = :A AND status = 'failed'),
	'^quota concurrent_runs exceeded: 1 runs of the organization are in progress, the limit is 1$',
	'the refused run failed with the quota''s message');

-- Completing with dalgo's own keys does not make the run uncounted.
SET LOCAL ROLE dalgo_service;
SELECT dalgo.complete_sync_run(:'first_run', 3, NULL,
	'{"skipped": true, "schedule_id": "x", "runner_pid": 1, "cancelled": true, "on_demand": true, "rows_read": 3}') \g /dev/null
SELECT throws_ok($$SELECT dalgo.complete_sync_run('00000000-0000-4000-8000-000000000000', 1, NULL, '[1]')$$, '22023',
	'details must be a JSON object', 'details must be an object');
RESET ROLE;
SELECT is((SELECT details - 'lag_ms' FROM dalgo.sync_runs WHERE id = :'first_run'),
	(SELECT jsonb_build_object('schedule_id', s.id, 'attempt', 1, 'rows_read', 3) FROM dalgo.schedules s
	 WHERE s.source_id = (SELECT source_id FROM dalgo.sync_runs WHERE id = :'first_run')),
	'the connector''s details are merged without dalgo''s own keys');

-- runs_per_hour counts the completed connector run.
UPDATE dalgo.organizations SET settings = '{"quotas": {"runs_per_hour": 1}}' WHERE id = :A;
UPDATE dalgo.sync_runs SET status = 'pending', error_message = NULL, completed_at = NULL
	WHERE organization_id = :A AND status = 'failed';
SET LOCAL ROLE dalgo_service;
SELECT is((dalgo.claim_sync_run()).id, NULL::uuid, 'over runs_per_hour a claim gets nothing');
RESET ROLE;
SELECT matches((SELECT min(error_message) FROM dalgo.sync_runs WHERE organization_id = :A AND status = 'failed'),
	'^quota runs_per_hour exceeded: the organization started 1 runs in the last hour, the limit is 1$',
	'and the run failed with the quota''s message');

SELECT * FROM finish();
ROLLBACK;
