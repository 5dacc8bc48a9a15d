-- quota_refusal_starvation: a scheduled run refused by runs_per_hour did not
-- start, so it must not count as started: otherwise an organization whose
-- schedules ask for more than its quota is refused for good, each hour's
-- refusals filling the next hour.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
SELECT plan(5);
INSERT INTO dalgo.outputs (id, organization_id, transformation_id, name) VALUES
	('66666666-0000-4000-8000-0000000000a2', :A, '55555555-0000-4000-8000-0000000000a1', 'Second'),
	('66666666-0000-4000-8000-0000000000a3', :A, '55555555-0000-4000-8000-0000000000a1', 'Third');
INSERT INTO dalgo.schedules (organization_id, output_id, frequency)
SELECT :A, id, 'daily' FROM dalgo.outputs WHERE organization_id = :A;
UPDATE dalgo.organizations SET settings = '{"quotas": {"runs_per_hour": 1}}' WHERE id = :A;
-- Three due slots, one allowed: the first runs, the other two are refused.
CREATE TEMP TABLE claimed AS SELECT * FROM dalgo_internal.claim_due_schedules(now() + interval '2 days', 10);
SELECT dalgo_internal.execute_claimed(ARRAY(SELECT run_id FROM claimed WHERE outcome = 'queued'), ARRAY(SELECT run_kind FROM claimed WHERE outcome = 'queued')) \g /dev/null
SELECT is((SELECT count(*) FROM claimed c JOIN dalgo.transformation_runs r ON r.id = c.run_id WHERE r.status = 'success'),
	1::bigint, 'one scheduled run runs');
SELECT is((SELECT count(*) FROM claimed c JOIN dalgo.transformation_runs r ON r.id = c.run_id
		   WHERE r.status = 'failed' AND r.error_message LIKE 'quota runs_per_hour exceeded:%'), 2::bigint,
	'the others fail with the quota''s message');
SELECT is((SELECT used FROM dalgo_internal.organization_usage(:A) WHERE quota = 'runs_per_hour'), 1::bigint,
	'only the run that ran counts as started');
UPDATE dalgo.organizations SET settings = '{"quotas": {"runs_per_hour": 2}}' WHERE id = :A;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SET LOCAL ROLE dalgo_authenticated;
SELECT lives_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a1')$$,
	'so with a quota of 2 another run starts');
SELECT throws_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a1')$$, '53400',
	'quota runs_per_hour exceeded: the organization started 2 runs in the last hour, the limit is 2',
	'and the one after it is refused');
RESET ROLE;
SELECT * FROM finish();
ROLLBACK;
