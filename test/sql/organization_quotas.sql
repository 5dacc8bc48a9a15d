-- organization_quotas: a superuser sets per-organization limits (defaults in
-- dalgo.quota_* settings, overrides in organizations.settings->'quotas');
-- nobody else can; a run that would exceed a quota fails before it starts,
-- or when it crosses it, with a message that names the quota and the
-- figure; members see their usage.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
SELECT plan(25);
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_authenticated;'
\set as_owner_b 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000003''; SET LOCAL ROLE dalgo_authenticated;'
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set B '''22222222-0000-4000-8000-0000000000b0'''
\set TA '''55555555-0000-4000-8000-0000000000a1'''

-- Who sets quotas.
:as_owner_a
SELECT throws_ok($$UPDATE dalgo.organizations SET settings = '{"quotas": {"runs_per_hour": 1000}}' WHERE id = '22222222-0000-4000-8000-0000000000a0'$$,
	'42501', 'only a superuser can change an organization''s quotas', 'an owner cannot raise their own quota');
UPDATE dalgo.organizations SET settings = settings || '{"theme": "dark"}' WHERE id = :A;
SELECT is((SELECT settings->>'theme' FROM dalgo.organizations WHERE id = :A), 'dark', 'other settings stay the owner''s');
RESET ROLE;
SELECT throws_ok($$UPDATE dalgo.organizations SET settings = '{"quotas": {"runs_per_day": 5}}' WHERE id = '22222222-0000-4000-8000-0000000000a0'$$,
	'22023', 'unknown quota "runs_per_day"', 'an unknown quota is refused');
SELECT throws_ok($$UPDATE dalgo.organizations SET settings = '{"quotas": {"runs_per_hour": -1}}' WHERE id = '22222222-0000-4000-8000-0000000000a0'$$,
	'22023', 'quota "runs_per_hour" must be a whole number of at least 0 (0: no limit), not -1', 'a negative figure is refused');
SELECT throws_ok($$UPDATE dalgo.organizations SET settings = '{"quotas": {"runs_per_hour": "many"}}' WHERE id = '22222222-0000-4000-8000-0000000000a0'$$,
	'22023', 'quota "runs_per_hour" must be a whole number of at least 0 (0: no limit), not "many"', 'so is a string');
SELECT throws_ok($$SET LOCAL ROLE dalgo_authenticated; SET LOCAL dalgo.quota_runs_per_hour = 100$$,
	'42501', NULL, 'the defaults are superuser-only settings');
RESET ROLE;
UPDATE dalgo.organizations SET settings = settings || '{"quotas": {"concurrent_runs": 3}}' WHERE id = :A;
:as_owner_a
SELECT throws_ok($$UPDATE dalgo.organizations SET settings = settings - 'quotas' WHERE id = '22222222-0000-4000-8000-0000000000a0'$$,
	'42501', 'only a superuser can change an organization''s quotas', 'nor remove one a superuser set');
RESET ROLE;

-- runs_per_hour: the organization's override wins over the default.
SET LOCAL dalgo.quota_runs_per_hour = 100;
UPDATE dalgo.organizations SET settings = settings || '{"quotas": {"runs_per_hour": 2}}' WHERE id = :A;
:as_member_a
SELECT lives_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a1')$$, 'a first run starts');
SELECT lives_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a1')$$, 'a second run starts');
SELECT throws_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a1')$$, '53400',
	'quota runs_per_hour exceeded: the organization started 2 runs in the last hour, the limit is 2',
	'a third run in the hour is refused, naming the quota and the figures');
SELECT is((SELECT count(*) FROM dalgo.transformation_runs WHERE organization_id = :A), 2::bigint, 'and leaves no run row behind');
SELECT is((SELECT used || '/' || quota_limit FROM dalgo.quota_usage(:A) WHERE quota = 'runs_per_hour'), '2/2',
	'a member sees the usage and the limit');
:as_owner_b
SELECT lives_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000b1')$$, 'another organization is not affected');
SELECT throws_ok($$SELECT * FROM dalgo.quota_usage('22222222-0000-4000-8000-0000000000a0')$$, '42501', NULL,
	'nor can it read the first one''s usage');
RESET ROLE;

-- concurrent_runs: runs executing elsewhere count.
UPDATE dalgo.organizations SET settings = '{"quotas": {"concurrent_runs": 1}}' WHERE id = :A;
INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, started_at, details)
	VALUES (:A, :TA, 'running', now() - interval '2 hours', '{"runner_pid": 0}');
:as_member_a
SELECT throws_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a1')$$, '53400',
	'quota concurrent_runs exceeded: 1 runs of the organization are in progress, the limit is 1',
	'a run beyond the concurrent quota is refused');
RESET ROLE;
UPDATE dalgo.transformation_runs SET status = 'failed', completed_at = now() WHERE organization_id = :A AND status = 'running';
:as_member_a
SELECT lives_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a1', true)$$,
	'once it ends, a run with its upstream starts: the run''s own rows do not count against it');
RESET ROLE;

-- warehouse_bytes: refused before the start when the warehouse is full...
UPDATE dalgo.organizations SET settings = '{"quotas": {"warehouse_bytes": 1}}' WHERE id = :A;
:as_member_a
SELECT throws_like($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a1')$$,
	'quota warehouse_bytes exceeded: the warehouse holds % bytes, the limit is 1', 'a full warehouse refuses new runs');
RESET ROLE;
-- ... and failed, keeping the old output, when a run crosses it.
CREATE TABLE org_222222220000400080000000000000a0.big AS SELECT g AS id, repeat('x', 100) AS pad FROM generate_series(1, 20000) g;
ALTER TABLE org_222222220000400080000000000000a0.big OWNER TO dalgo_wh_222222220000400080000000000000a0;
SELECT sum(pg_total_relation_size(c.oid)) + 100000 AS room FROM pg_class c
	WHERE c.relnamespace = 'org_222222220000400080000000000000a0'::regnamespace AND c.relname <> 'big' AND c.relkind = 'r' \gset
UPDATE dalgo.organizations SET settings = jsonb_build_object('quotas', jsonb_build_object('warehouse_bytes', :room::bigint + pg_total_relation_size('org_222222220000400080000000000000a0.big'))) WHERE id = :A;
UPDATE dalgo.transformations SET recipe = '{"version": 1, "source": {"table": "big"}, "steps": []}', output_table_name = 'big_copy' WHERE id = :TA;
:as_member_a
SET LOCAL client_min_messages = error;
SELECT dalgo.run_transformation(:TA) AS crossing \gset
RESET ROLE;
RESET dalgo.user_id;
SELECT is((SELECT status::text || ': ' || regexp_replace(error_message, '\d+', 'N', 'g') FROM dalgo.transformation_runs WHERE id = :'crossing'),
	'failed: quota warehouse_bytes exceeded: the warehouse would hold N bytes, the limit is N',
	'a run that crosses the warehouse quota fails before its swap');
SELECT is(to_regclass('org_222222220000400080000000000000a0.big_copy'), NULL, 'and leaves nothing behind');
SELECT is((SELECT count(*) FROM pg_class WHERE relnamespace = 'org_222222220000400080000000000000a0'::regnamespace AND relname LIKE '\_dalgo\_build%'),
	0::bigint, 'not even its build table');

-- Scheduled runs are held to the same quotas, and fail with the message.
UPDATE dalgo.organizations SET settings = '{"quotas": {"runs_per_hour": 1}}' WHERE id = :A;
INSERT INTO dalgo.schedules (id, organization_id, output_id, frequency) VALUES
	('88888888-0000-4000-8000-0000000000a9', :A, '66666666-0000-4000-8000-0000000000a1', 'daily');
UPDATE dalgo.schedules SET next_run_at = now() - interval '1 minute' WHERE id = '88888888-0000-4000-8000-0000000000a9';
SELECT dalgo.run_due_schedules() \g /dev/null
SELECT is((SELECT status::text || ': ' || regexp_replace(error_message, '\d+ runs', 'N runs') FROM dalgo.transformation_runs
		   WHERE details->>'schedule_id' = '88888888-0000-4000-8000-0000000000a9'),
	'failed: quota runs_per_hour exceeded: the organization started N runs in the last hour, the limit is 1',
	'a scheduled run over quota fails with the quota''s message');

-- Connector runs: an organization at its quota keeps its runs pending.
UPDATE dalgo.organizations SET settings = '{"quotas": {"concurrent_runs": 1}}' WHERE id = :A;
UPDATE dalgo.sources SET config = '{"connector": true}' WHERE id = '33333333-0000-4000-8000-0000000000a1';
INSERT INTO dalgo.sync_runs (organization_id, source_id, status, started_at, created_at) VALUES
	(:A, '33333333-0000-4000-8000-0000000000a1', 'running', now(), now() - interval '3 minutes'),
	(:A, '33333333-0000-4000-8000-0000000000a1', 'pending', NULL, now() - interval '2 minutes');
UPDATE dalgo.sources SET source_type = 'api', config = '{"connector": true}' WHERE id = '33333333-0000-4000-8000-0000000000b1';
INSERT INTO dalgo.sync_runs (organization_id, source_id, status, created_at) VALUES
	(:B, '33333333-0000-4000-8000-0000000000b1', 'pending', now() - interval '1 minute');
SET LOCAL ROLE dalgo_service;
SELECT is((SELECT organization_id FROM dalgo.claim_sync_run()), :B::uuid,
	'a connector gets the run of an organization below its quota');
SELECT is((SELECT id FROM dalgo.claim_sync_run()), NULL, 'and none of the organization at its concurrent_runs quota');
RESET ROLE;

-- run_seconds: a run with its upstream is stopped when it crosses the quota.
UPDATE dalgo.organizations SET settings = '{"quotas": {"run_seconds": 1}}' WHERE id = :A;
CREATE VIEW org_222222220000400080000000000000a0.slow AS SELECT g AS n FROM generate_series(1, 3) g, pg_sleep(3) s;
ALTER VIEW org_222222220000400080000000000000a0.slow OWNER TO dalgo_wh_222222220000400080000000000000a0;
UPDATE dalgo.transformations SET recipe = '{"version": 1, "source": {"table": "slow"}, "steps": []}', output_table_name = 'slow_out'
	WHERE id = :TA;
:as_member_a
SELECT clock_timestamp() AS t0 \gset
SELECT throws_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a1')$$, '53400',
	'quota run_seconds exceeded: the run with its upstream took more than 1 seconds',
	'a run that takes longer than run_seconds is stopped, naming the quota');
SELECT ok(clock_timestamp() - :'t0'::timestamptz < interval '2.5 seconds', 'at the quota, not at the end of the run');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
