-- scheduler_runs: the scheduler's code path, run synchronously through
-- dalgo.run_due_schedules(): in-database syncs (postgres and csv), output
-- refreshes, the connector queue, skipping a schedule still running, catch-up
-- once, isolation of a failing run, and recovery of interrupted runs.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\i test/fixtures/recipe_setup.sql
SELECT plan(35);
-- Source data the warehouse role of org A may read.
CREATE TABLE public.crm_contacts (id int PRIMARY KEY, name text NOT NULL, city text);
INSERT INTO public.crm_contacts SELECT g, 'name ' || g, CASE WHEN g % 2 = 0 THEN 'Pune' END FROM generate_series(1, 25) g;
GRANT USAGE ON SCHEMA public TO dalgo_wh_222222220000400080000000000000a0;
GRANT SELECT ON public.crm_contacts TO dalgo_wh_222222220000400080000000000000a0;
CREATE TABLE public.private_data (secret text);
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000c1', :A, 'CRM', 'postgres', '{"relation": "public.crm_contacts"}', 'crm'),
	('33333333-0000-4000-8000-0000000000c2', :A, 'Broken', 'postgres', '{"relation": "public.no_such_table"}', 'broken'),
	('33333333-0000-4000-8000-0000000000c3', :A, 'Sheet', 'google_sheets', '{"spreadsheet_id": "x", "connector": true}', 'sheet'),
	('33333333-0000-4000-8000-0000000000c4', :A, 'Not granted', 'postgres', '{"relation": "public.private_data"}', 'stolen'),
	('33333333-0000-4000-8000-0000000000c5', :A, 'Own schema', 'postgres', '{"relation": "dalgo.users"}', 'users_copy'),
	('33333333-0000-4000-8000-0000000000c6', :A, 'File', 'csv', '{"path": "dalgo_test_visits.csv"}', 'file_visits');
INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency) VALUES
	('88888888-0000-4000-8000-0000000000c1', :A, '33333333-0000-4000-8000-0000000000c1', 'daily'),
	('88888888-0000-4000-8000-0000000000c2', :A, '33333333-0000-4000-8000-0000000000c2', 'daily'),
	('88888888-0000-4000-8000-0000000000c3', :A, '33333333-0000-4000-8000-0000000000c3', 'hourly'),
	('88888888-0000-4000-8000-0000000000c4', :A, '33333333-0000-4000-8000-0000000000c4', 'daily'),
	('88888888-0000-4000-8000-0000000000c5', :A, '33333333-0000-4000-8000-0000000000c5', 'daily');
-- All due: the broken one first, so its failure precedes the good run.
UPDATE dalgo.schedules SET next_run_at = now() - interval '3 days' WHERE id = '88888888-0000-4000-8000-0000000000c2';
UPDATE dalgo.schedules SET next_run_at = now() - interval '2 days 1 hour' WHERE id <> '88888888-0000-4000-8000-0000000000c2';
LISTEN dalgo_sync;

SELECT is(dalgo.run_due_schedules(), 5, 'run_due_schedules starts the due runs (four in-database, one queued)');
SELECT is((SELECT status::text FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c2'), 'failed', 'a failing run fails');
SELECT is((SELECT error_message FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c2'),
	'source relation public.no_such_table does not exist', 'with its error');
SELECT is((SELECT status::text FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c1'), 'success',
	'and does not stop the next run');
SELECT is((SELECT rows_synced FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c1'), 25, 'rows are recorded');
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table(:A, 'crm')), 25::bigint, 'the source is copied into the warehouse');
SELECT is((SELECT array_agg((column_name, column_type, column_order, is_nullable)::text ORDER BY column_order) FROM dalgo.source_schemas
		   WHERE source_id = '33333333-0000-4000-8000-0000000000c1'),
	ARRAY['(id,integer,1,f)', '(name,text,2,f)', '(city,text,3,t)'], 'source_schemas has columns, types, order and nullability');
SELECT isnt((SELECT last_synced_at FROM dalgo.sources WHERE id = '33333333-0000-4000-8000-0000000000c1'), NULL, 'last_synced_at is set');
SELECT is((SELECT row_count FROM dalgo.warehouse_tables WHERE table_name = 'crm'), 25::bigint, 'warehouse_tables registers it');
SELECT ok((SELECT details ?& ARRAY['schedule_id', 'attempt', 'lag_ms'] AND started_at <= completed_at
		   FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c1'), 'runs record schedule_id, attempt, lag_ms and times');
SELECT is((SELECT status::text FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c4'), 'failed',
	'a relation the warehouse role was not granted cannot be synced');
SELECT matches((SELECT error_message FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c4'),
	'permission denied', 'with a permission error');
SELECT is((SELECT error_message FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c5'),
	'source relation "dalgo.users" is not allowed', 'dalgo''s own tables are never a source');

-- Catch-up: the slots missed over two days run once, and the next slot is in the future.
SELECT is((SELECT count(*) FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c1'), 1::bigint, 'missed slots run once');
SELECT ok((SELECT next_run_at > now() AND next_run_at <= now() + interval '1 day' FROM dalgo.schedules
		   WHERE id = '88888888-0000-4000-8000-0000000000c1'), 'then next_run_at is the next slot after now');
SELECT is(dalgo.run_due_schedules(), 0, 'nothing is due any more');

-- The connector queue.
SELECT is((SELECT status::text FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c3'), 'pending',
	'a google_sheets run waits for a connector');
SET LOCAL ROLE dalgo_service;
SELECT is((dalgo.claim_sync_run()).source_id, '33333333-0000-4000-8000-0000000000c3'::uuid, 'a connector claims it');
SELECT is(dalgo.claim_sync_run(), NULL, 'a second claim finds nothing (SKIP LOCKED, claimed once)');
SELECT is((dalgo.complete_sync_run((SELECT id FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c3'),
		   42, NULL, '{"sheet": "visits"}')).status::text, 'success', 'and completes it');
SELECT is((SELECT (rows_synced, details->>'sheet')::text FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c3'),
	'(42,visits)', 'with its rows and details');
SELECT throws_ok($$SELECT dalgo.complete_sync_run((SELECT id FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c3'), 1)$$,
	'22023', NULL, 'a run is completed once');
RESET ROLE;
UPDATE dalgo.schedules SET next_run_at = now() - interval '1 minute' WHERE id = '88888888-0000-4000-8000-0000000000c3';
SELECT dalgo.run_due_schedules() AS queued \gset
UPDATE dalgo.sync_runs SET created_at = now() - interval '2 hours' WHERE status = 'pending';
SELECT is(dalgo_internal.expire_connector_runs(3600), 1, 'a run no connector claims in time');
SELECT is((SELECT error_message FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c3' AND status = 'failed'),
	'no connector claimed the run within 3600 seconds', 'is marked failed');

-- One run at a time: a schedule whose run is still going is skipped, and recorded.
UPDATE dalgo.sync_runs SET status = 'running' WHERE source_id = '33333333-0000-4000-8000-0000000000c1';
UPDATE dalgo.schedules SET next_run_at = now() - interval '1 minute' WHERE id = '88888888-0000-4000-8000-0000000000c1';
SELECT is(dalgo.run_due_schedules(), 0, 'a schedule whose previous run is still going does not start');
SELECT is((SELECT error_message FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c1' AND details ? 'skipped'),
	'skipped: the previous run of this schedule is still going', 'the skip is recorded');
-- Recovery: a running run no run worker owns was interrupted.
UPDATE dalgo.sync_runs SET details = details || '{"runner_pid": 1}' WHERE source_id = '33333333-0000-4000-8000-0000000000c1' AND status = 'running';
SELECT is(dalgo_internal.recover_interrupted_runs(), 1, 'recover_interrupted_runs finds the orphan');
SELECT is((SELECT error_message FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c1' AND NOT details ? 'skipped'),
	'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)', 'and marks it failed');

-- csv sources read only their organization's directory under dalgo.csv_dir.
SELECT current_setting('data_directory') || '/dalgo_csv' AS csvdir \gset
\set orgdir :csvdir '/org_222222220000400080000000000000a0'
\set csvfile :orgdir '/dalgo_test_visits.csv'
\set mkdir 'mkdir -p ' :orgdir
COPY (SELECT WHERE false) TO PROGRAM :'mkdir';
COPY (SELECT "NGO", "SPOC", measure1 FROM org_222222220000400080000000000000a0.visits) TO :'csvfile' WITH (FORMAT csv, HEADER true);
SET LOCAL dalgo.csv_dir = :'csvdir';
INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency)
	VALUES ('88888888-0000-4000-8000-0000000000c6', :A, '33333333-0000-4000-8000-0000000000c6', 'daily');
SELECT isnt(dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000c6'), NULL, 'run_schedule_now runs a schedule at once');
SELECT is((SELECT (status, rows_synced)::text FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000c6'),
	'(success,5)', 'a csv file in the organization''s directory under dalgo.csv_dir is loaded');
SELECT throws_ok($$SELECT dalgo_internal.csv_path('22222222-0000-4000-8000-0000000000a0', '../postgresql.conf')$$, '42501', NULL, 'a path with .. is refused');
SELECT throws_ok($$SELECT dalgo_internal.csv_path('22222222-0000-4000-8000-0000000000a0', '/etc/passwd')$$, '42501', NULL, 'an absolute path is refused');

-- Output schedules: the transformation with its upstream, then the destination.
INSERT INTO dalgo.outputs (id, organization_id, transformation_id, name, destination_config) VALUES
	('66666666-0000-4000-8000-0000000000c1', :A, '55555555-0000-4000-8000-0000000000a1', 'Totals view', '{"type": "view", "name": "totals_view"}');
INSERT INTO dalgo.schedules (id, organization_id, output_id, frequency)
	VALUES ('88888888-0000-4000-8000-0000000000c7', :A, '66666666-0000-4000-8000-0000000000c1', 'daily');
UPDATE dalgo.schedules SET next_run_at = now() - interval '1 minute' WHERE id = '88888888-0000-4000-8000-0000000000c7';
SELECT is(dalgo.run_due_schedules(), 1, 'an output schedule runs');
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table(:A, 'totals_view')), 5::bigint, 'its destination view is refreshed');
SELECT isnt((SELECT last_refreshed_at FROM dalgo.outputs WHERE id = '66666666-0000-4000-8000-0000000000c1'), NULL, 'last_refreshed_at is set');

SELECT * FROM finish();
ROLLBACK;
