-- runs_on_demand: sync_now and refresh_output_now queue a run without a
-- schedule, for members (not viewers, not another organization), into the
-- scheduler's own queue under its one-run-at-a-time rule; wait => true
-- returns the finished run.  The worker's checks accept these runs and
-- nothing else.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_authenticated;'
\set as_viewer_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000004''; SET LOCAL ROLE dalgo_authenticated;'
\set as_owner_b 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000003''; SET LOCAL ROLE dalgo_authenticated;'
\set as_super 'RESET ROLE; SET LOCAL dalgo.user_id = '''';'
SELECT plan(27);

INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-000000000004', 'viewer.a@example.org');
INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	VALUES (:A, '11111111-0000-4000-8000-000000000004', 'viewer');
CREATE TABLE public.crm (id int, name text);
INSERT INTO public.crm SELECT g, 'c' || g FROM generate_series(1, 12) g;
GRANT USAGE ON SCHEMA public TO dalgo_wh_222222220000400080000000000000a0;
GRANT SELECT ON public.crm TO dalgo_wh_222222220000400080000000000000a0;
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000a2', :A, 'CRM', 'postgres', '{"relation": "public.crm"}', 'crm');
UPDATE dalgo.outputs SET destination_config = '{"type": "table", "name": "dashboard"}' WHERE id = '66666666-0000-4000-8000-0000000000a1';

-- A viewer may not; another organization does not even see the source.
:as_viewer_a
SELECT throws_ok($$SELECT dalgo.sync_now('33333333-0000-4000-8000-0000000000a2')$$, '42501',
	'running a sync now needs the member role', 'sync_now as viewer is refused');
SELECT throws_ok($$SELECT dalgo.refresh_output_now('66666666-0000-4000-8000-0000000000a1')$$, '42501',
	'running a refresh now needs the member role', 'refresh_output_now as viewer is refused');
:as_owner_b
SELECT throws_ok($$SELECT dalgo.sync_now('33333333-0000-4000-8000-0000000000a2')$$, '22023',
	'source 33333333-0000-4000-8000-0000000000a2 does not exist', 'another organization''s owner cannot sync it');
SELECT throws_ok($$SELECT dalgo.refresh_output_now('66666666-0000-4000-8000-0000000000a1')$$, '22023',
	'output 66666666-0000-4000-8000-0000000000a1 does not exist', 'nor refresh its output');

-- A member queues a sync: a pending run in the workers' queue, no schedule needed.
:as_member_a
SELECT dalgo.sync_now('33333333-0000-4000-8000-0000000000a2') AS queued \gset
SELECT is((SELECT (status, triggered_by_id, details)::text FROM dalgo.sync_runs WHERE id = :'queued'),
	'(pending,11111111-0000-4000-8000-000000000002,"{""on_demand"": true}")', 'sync_now as member queues a pending run, by the member');
SELECT is(dalgo.sync_now('33333333-0000-4000-8000-0000000000a2'), :'queued'::uuid, 'a second call returns the run already queued (one at a time)');
SELECT is((SELECT count(*) FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000a2'), 1::bigint, 'and queues nothing more');
:as_super
SELECT is(dalgo_internal.pending_runs(), 1, 'the run workers see it');
SELECT is((SELECT (run_kind, run_id)::text FROM dalgo_internal.claim_pending_run()), format('(sync,%s)', :'queued'),
	'a run worker takes it like a scheduled run');
SELECT lives_ok(format('SELECT dalgo_internal.execute_scheduled_run(%L, %L)', 'sync', :'queued'), 'and runs it');
SELECT is((SELECT (status, rows_synced)::text FROM dalgo.sync_runs WHERE id = :'queued'), '(success,12)', 'the sync succeeds');
SELECT is((SELECT count(*) FROM org_222222220000400080000000000000a0.crm), 12::bigint, 'the source is in the warehouse');

-- A due schedule of the source while an on-demand run is pending: skipped, as for its own runs.
:as_member_a
SELECT dalgo.sync_now('33333333-0000-4000-8000-0000000000a2') AS second \gset
:as_super
INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency) VALUES
	('88888888-0000-4000-8000-0000000000a2', :A, '33333333-0000-4000-8000-0000000000a2', 'hourly');
SELECT is((SELECT outcome FROM dalgo_internal.claim_due_schedules(now() + interval '2 hours', 10,
												   '88888888-0000-4000-8000-0000000000a2')), 'skipped',
	'a due schedule of a source with an on-demand run pending is skipped');
UPDATE dalgo.sync_runs SET status = 'failed', completed_at = now() WHERE id = :'second';

-- wait => true: the run happens within the call, through the worker's code.
:as_member_a
SELECT dalgo.sync_now('33333333-0000-4000-8000-0000000000a2', wait => true) AS waited \gset
SELECT is((SELECT (status, rows_synced, details->>'runner_pid' = pg_backend_pid()::text)::text FROM dalgo.sync_runs WHERE id = :'waited'),
	'(success,12,t)', 'sync_now(wait => true) returns the finished run');

-- Refresh an output on demand: its transformation, then its destination table.
SELECT dalgo.refresh_output_now('66666666-0000-4000-8000-0000000000a1', true) AS refreshed \gset
SELECT is((SELECT (status, details->>'output_id')::text FROM dalgo.transformation_runs WHERE id = :'refreshed'),
	'(success,66666666-0000-4000-8000-0000000000a1)', 'refresh_output_now(wait => true) refreshes the output');
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table(:A, 'dashboard')), 5::bigint, 'into its destination table');
SELECT isnt((SELECT last_refreshed_at FROM dalgo.outputs WHERE id = '66666666-0000-4000-8000-0000000000a1'), NULL, 'and stamps it');
SELECT is((SELECT output_id FROM dalgo.warehouse_tables WHERE table_name = 'dashboard' AND organization_id = :A),
	'66666666-0000-4000-8000-0000000000a1'::uuid, 'the output is recorded as the destination''s producer');
SELECT dalgo.refresh_output_now('66666666-0000-4000-8000-0000000000a1') AS queued_refresh \gset
SELECT is(dalgo.refresh_output_now('66666666-0000-4000-8000-0000000000a1'), :'queued_refresh'::uuid,
	'a queued refresh is the answer to the next call');
:as_super
INSERT INTO dalgo.schedules (id, organization_id, output_id, frequency) VALUES
	('88888888-0000-4000-8000-0000000000a1', :A, '66666666-0000-4000-8000-0000000000a1', 'hourly');
SELECT is((SELECT outcome FROM dalgo_internal.claim_due_schedules(now() + interval '2 hours', 10,
												   '88888888-0000-4000-8000-0000000000a1')), 'skipped',
	'and the output''s due schedule is skipped');
:as_member_a
SELECT throws_ok($$SELECT dalgo.sync_now('33333333-0000-4000-8000-0000000000a1', true)$$, '0A000', NULL,
	'a connector source cannot be waited for inside the call');
SELECT lives_ok($$SELECT dalgo.sync_now('33333333-0000-4000-8000-0000000000a1')$$, 'but is queued for its connector');

-- The worker's checks: an on-demand run names its source, or an output of
-- its transformation, in its own organization.
:as_super
INSERT INTO dalgo.transformation_runs (id, organization_id, transformation_id, status, details) VALUES
	('77777777-0000-4000-8000-0000000000f1', :A, '55555555-0000-4000-8000-0000000000a1', 'pending',
	 '{"on_demand": true, "output_id": "66666666-0000-4000-8000-0000000000b1"}'),
	('77777777-0000-4000-8000-0000000000f2', :A, '55555555-0000-4000-8000-0000000000a1', 'pending',
	 '{"on_demand": true}');
INSERT INTO dalgo.sync_runs (id, organization_id, source_id, status, details) VALUES
	('77777777-0000-4000-8000-0000000000f3', :A, '33333333-0000-4000-8000-0000000000a2', 'pending',
	 '{"on_demand": true, "output_id": "66666666-0000-4000-8000-0000000000a1"}');
SELECT throws_ok($$SELECT dalgo_internal.verify_scheduled_run('output', '77777777-0000-4000-8000-0000000000f1')$$, '42501', NULL,
	'a forged on-demand refresh of another organization''s output is refused');
SELECT throws_ok($$SELECT dalgo_internal.verify_scheduled_run('output', '77777777-0000-4000-8000-0000000000f2')$$, '42501', NULL,
	'an on-demand refresh without its output is refused');
SELECT throws_ok($$SELECT dalgo_internal.verify_scheduled_run('sync', '77777777-0000-4000-8000-0000000000f3')$$, '42501', NULL,
	'an on-demand sync that names an output is refused');
SELECT lives_ok(format('SELECT dalgo_internal.verify_scheduled_run(%L, %L)', 'output', :'queued_refresh'),
	'the refresh refresh_output_now queued passes');
SELECT is(to_regclass('org_222222220000400080000000000000b0.dashboard'), NULL, 'nothing reached B''s warehouse');

SELECT * FROM finish();
ROLLBACK;
