-- run_forgery: run rows and version rows are written only by dalgo's own
-- code.  App roles (members, admins, owners, dalgo_service) cannot insert,
-- change or delete sync_runs, transformation_runs, transformation_versions,
-- source_schemas or warehouse_tables; the documented functions still record
-- them; and a run row forged anyway (as a superuser) whose schedule, output,
-- transformation and organization disagree is refused by the worker's code
-- and marked failed, leaving the other organization's output untouched.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set B '''22222222-0000-4000-8000-0000000000b0'''
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_authenticated;'
\set as_service 'RESET ROLE; SET LOCAL dalgo.user_id = ''''; SET LOCAL ROLE dalgo_service;'
\set as_super 'RESET ROLE; SET LOCAL dalgo.user_id = '''';'
SELECT plan(31);

-- A schedule for each organization's output; B's is published as a table.
UPDATE dalgo.outputs SET destination_config = '{"type": "table", "name": "published"}'
	WHERE id = '66666666-0000-4000-8000-0000000000b1';
INSERT INTO dalgo.schedules (id, organization_id, output_id, frequency) VALUES
	('88888888-0000-4000-8000-0000000000a1', :A, '66666666-0000-4000-8000-0000000000a1', 'daily'),
	('88888888-0000-4000-8000-0000000000b1', :B, '66666666-0000-4000-8000-0000000000b1', 'daily');
SELECT isnt(dalgo.run_transformation('55555555-0000-4000-8000-0000000000b1'), NULL, 'B''s output is built');
SELECT count(*) AS b_rows FROM org_222222220000400080000000000000b0.totals \gset
CREATE TABLE public.crm (id int);
GRANT USAGE ON SCHEMA public TO dalgo_wh_222222220000400080000000000000a0;
GRANT SELECT ON public.crm TO dalgo_wh_222222220000400080000000000000a0;
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000a2', :A, 'CRM A', 'postgres', '{"relation": "public.crm"}', 'crm');
INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency) VALUES
	('88888888-0000-4000-8000-0000000000a2', :A, '33333333-0000-4000-8000-0000000000a2', 'daily');

-- The attack of issue 9.3: a member queues a pending run of their own
-- transformation under B's output schedule.
:as_member_a
SELECT throws_ok($$INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, details)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '55555555-0000-4000-8000-0000000000a1', 'pending',
			'{"schedule_id": "88888888-0000-4000-8000-0000000000b1"}')$$,
	'42501', NULL, 'a member cannot insert a transformation run');
SELECT throws_ok($$INSERT INTO dalgo.transformation_versions (transformation_id, version_number, recipe)
	VALUES ('55555555-0000-4000-8000-0000000000a1', 99, '{}')$$,
	'42501', NULL, 'a member cannot insert a transformation version');
SELECT throws_ok($$UPDATE dalgo.transformation_runs SET status = 'pending'$$,
	'42501', NULL, 'a member cannot change transformation runs');
:as_owner_a
SELECT throws_ok($$INSERT INTO dalgo.sync_runs (source_id, details)
	VALUES ('33333333-0000-4000-8000-0000000000a2', '{"schedule_id": "88888888-0000-4000-8000-0000000000a2"}')$$,
	'42501', NULL, 'an owner cannot insert a sync run');
SELECT throws_ok($$UPDATE dalgo.sync_runs SET status = 'pending'$$, '42501', NULL, 'an owner cannot change sync runs');
SELECT throws_ok($$DELETE FROM dalgo.transformation_runs$$, '42501', NULL, 'an owner cannot delete transformation runs');
SELECT throws_ok($$DELETE FROM dalgo.transformation_versions$$, '42501', NULL, 'an owner cannot delete versions');
SELECT throws_ok($$INSERT INTO dalgo.source_schemas (source_id, column_name, column_type, column_order)
	VALUES ('33333333-0000-4000-8000-0000000000a2', 'x', 'text', 1)$$,
	'42501', NULL, 'an owner cannot forge synced columns');
SELECT throws_ok($$UPDATE dalgo.warehouse_tables SET row_count = 0$$, '42501', NULL, 'an owner cannot forge warehouse tables');
:as_service
SELECT throws_ok($$INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, details)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '55555555-0000-4000-8000-0000000000a1', 'pending',
			'{"schedule_id": "88888888-0000-4000-8000-0000000000b1"}')$$,
	'42501', NULL, 'dalgo_service cannot insert a transformation run either');
SELECT throws_ok($$UPDATE dalgo.sync_runs SET status = 'pending'$$, '42501', NULL, 'nor change sync runs');
SELECT is((SELECT count(*) FROM dalgo.transformation_runs), 1::bigint, 'dalgo_service still reads runs');

-- dalgo's own code still records runs and versions for the roles it serves.
:as_member_a
SET LOCAL dalgo.change_description = 'more steps';
UPDATE dalgo.transformations SET recipe = '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "limit", "n": 3}]}'
	WHERE id = '55555555-0000-4000-8000-0000000000a1';
SELECT is((SELECT (version_number, created_by_id, change_description)::text FROM dalgo.transformation_versions
		   WHERE transformation_id = '55555555-0000-4000-8000-0000000000a1' ORDER BY version_number DESC LIMIT 1),
	'(2,11111111-0000-4000-8000-000000000002,"more steps")', 'saving a recipe records its version, by its author');
SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a1') AS member_run \gset
SELECT is((SELECT (status, triggered_by_id)::text FROM dalgo.transformation_runs WHERE id = :'member_run'),
	'(success,11111111-0000-4000-8000-000000000002)', 'run_transformation records the member''s run');
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a1') AS owner_run \gset
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE id = :'owner_run'), 'success',
	'run_schedule_now records the admin''s scheduled run');
SELECT is((SELECT count(*) FROM dalgo.transformation_runs WHERE organization_id = :A), 2::bigint, 'the owner reads A''s runs');

-- A forged row (only a superuser can write one now) that names B's output
-- schedule but A's transformation: the worker refuses it and marks it failed.
:as_super
INSERT INTO dalgo.transformation_runs (id, organization_id, transformation_id, status, details) VALUES
	('77777777-0000-4000-8000-0000000000f1', :A, '55555555-0000-4000-8000-0000000000a1', 'pending',
	 '{"schedule_id": "88888888-0000-4000-8000-0000000000b1"}');
SELECT is((SELECT (run_kind, run_id)::text FROM dalgo_internal.claim_pending_run()), '(output,77777777-0000-4000-8000-0000000000f1)',
	'a run worker takes the forged row');
SELECT throws_ok($$SELECT dalgo_internal.execute_scheduled_run('output', '77777777-0000-4000-8000-0000000000f1')$$,
	'42501', 'run 77777777-0000-4000-8000-0000000000f1 was refused: it does not match its schedule',
	'and refuses to execute it');
-- The same row through the worker's whole code path (start, execute, fail).
UPDATE dalgo.transformation_runs SET status = 'pending' WHERE id = '77777777-0000-4000-8000-0000000000f1';
SELECT is(dalgo_internal.execute_claimed(ARRAY['77777777-0000-4000-8000-0000000000f1'::uuid], ARRAY['output']::dalgo.run_kind[]), 1, 'the worker path handles it');
SELECT is((SELECT (status, error_message)::text FROM dalgo.transformation_runs WHERE id = '77777777-0000-4000-8000-0000000000f1'),
	'(failed,"run 77777777-0000-4000-8000-0000000000f1 was refused: it does not match its schedule")', 'and marks it failed');
SELECT is(to_regclass('org_222222220000400080000000000000b0.published'), NULL, 'B''s published table was not written');
SELECT is((SELECT last_refreshed_at FROM dalgo.outputs WHERE id = '66666666-0000-4000-8000-0000000000b1'), NULL,
	'B''s output was not refreshed');

-- Other disagreements: B's transformation under A's schedule, a schedule id
-- that is not a uuid, no schedule at all, and a sync run under another
-- source's schedule.
INSERT INTO dalgo.transformation_runs (id, organization_id, transformation_id, status, details) VALUES
	('77777777-0000-4000-8000-0000000000f2', :B, '55555555-0000-4000-8000-0000000000b1', 'pending',
	 '{"schedule_id": "88888888-0000-4000-8000-0000000000a1"}'),
	('77777777-0000-4000-8000-0000000000f3', :A, '55555555-0000-4000-8000-0000000000a1', 'pending',
	 '{"schedule_id": "not a uuid"}'),
	('77777777-0000-4000-8000-0000000000f4', :A, '55555555-0000-4000-8000-0000000000a1', 'pending',
	 '{"schedule_id": "88888888-0000-4000-8000-0000000000a2"}');
INSERT INTO dalgo.sync_runs (id, organization_id, source_id, status, details) VALUES
	('77777777-0000-4000-8000-0000000000f5', :A, '33333333-0000-4000-8000-0000000000a2', 'pending',
	 '{"schedule_id": "88888888-0000-4000-8000-0000000000a1"}'),
	('77777777-0000-4000-8000-0000000000f6', :B, '33333333-0000-4000-8000-0000000000b1', 'pending',
	 '{"schedule_id": "88888888-0000-4000-8000-0000000000a2"}');
SELECT is(dalgo_internal.execute_claimed(ARRAY['77777777-0000-4000-8000-0000000000f2', '77777777-0000-4000-8000-0000000000f3',
									  '77777777-0000-4000-8000-0000000000f4']::uuid[], ARRAY['output', 'output', 'output']::dalgo.run_kind[]), 3, 'three forged refreshes');
SELECT is((SELECT array_agg(status::text ORDER BY id) FROM dalgo.transformation_runs
		   WHERE id IN ('77777777-0000-4000-8000-0000000000f2', '77777777-0000-4000-8000-0000000000f3', '77777777-0000-4000-8000-0000000000f4')),
	ARRAY['failed', 'failed', 'failed'], 'are all refused');
SELECT is(dalgo_internal.execute_claimed(ARRAY['77777777-0000-4000-8000-0000000000f5', '77777777-0000-4000-8000-0000000000f6']::uuid[],
								ARRAY['sync', 'sync']::dalgo.run_kind[]), 2, 'two forged syncs');
SELECT is((SELECT array_agg(error_message ORDER BY id) FROM dalgo.sync_runs
		   WHERE id IN ('77777777-0000-4000-8000-0000000000f5', '77777777-0000-4000-8000-0000000000f6')),
	ARRAY['run 77777777-0000-4000-8000-0000000000f5 was refused: it does not match its schedule',
		  'run 77777777-0000-4000-8000-0000000000f6 was refused: it does not match its schedule'], 'are refused too');
SELECT is(to_regclass('org_222222220000400080000000000000b0.crm'), NULL, 'nothing was synced into B''s warehouse');
SELECT is((SELECT count(*) FROM dalgo.transformation_runs WHERE transformation_id = '55555555-0000-4000-8000-0000000000b1'
		   AND status = 'success'), 1::bigint, 'B''s transformation ran only when B built it');
-- A genuine scheduled run still passes the check.
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000b1') AS b_run \gset
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE id = :'b_run'), 'success',
	'a run dalgo claimed itself passes the check');
SELECT is((SELECT count(*) FROM org_222222220000400080000000000000b0.published), :b_rows::bigint, 'and publishes B''s output');

SELECT * FROM finish();
ROLLBACK;
