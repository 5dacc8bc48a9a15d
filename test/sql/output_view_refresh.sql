-- output_view_refresh: an output whose destination is a view refreshes every
-- time, not only once (the swap's DROP TABLE used to fail on the view that
-- depends on the table), also when the table it reads is rebuilt as the
-- upstream of another output, and the view always shows the new rows.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_super 'RESET ROLE; SET LOCAL dalgo.user_id = '''';'
\set add_visit 'INSERT INTO org_222222220000400080000000000000a0.visits ("NGO", "SPOC", measure1) VALUES (''NEW'', ''x'', 1);'
SELECT plan(16);
UPDATE dalgo.outputs SET destination_config = '{"type": "view", "name": "totals_view"}'
	WHERE id = '66666666-0000-4000-8000-0000000000a1';
-- A second view over the same table.
INSERT INTO dalgo.outputs (id, organization_id, transformation_id, name, destination_config) VALUES
	('66666666-0000-4000-8000-0000000000a2', :A, '55555555-0000-4000-8000-0000000000a1', 'Copy', '{"type": "view", "name": "totals_copy"}');
INSERT INTO dalgo.schedules (id, organization_id, output_id, frequency) VALUES
	('88888888-0000-4000-8000-0000000000a1', :A, '66666666-0000-4000-8000-0000000000a1', 'daily'),
	('88888888-0000-4000-8000-0000000000a2', :A, '66666666-0000-4000-8000-0000000000a2', 'daily');
SELECT count(*) AS n0 FROM org_222222220000400080000000000000a0.visits \gset

:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a1') AS r1 \gset
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a2') AS r1b \gset
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE id = :'r1'), 'success', 'the first refresh succeeds');
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table(:A, 'totals_view')), :n0::bigint, 'and creates the view');
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE id = :'r1b'), 'success', 'a second view output over the same table refreshes');

:as_super
:add_visit
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a1') AS r2 \gset
SELECT is((SELECT (status, error_message)::text FROM dalgo.transformation_runs WHERE id = :'r2'), '(success,)', 'the second refresh succeeds');
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table(:A, 'totals_view')), :n0::bigint + 1, 'the view shows the new row');
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table(:A, 'totals_copy')), :n0::bigint + 1, 'so does the other view over the table');

:as_super
:add_visit
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a1') AS r3 \gset
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE id = :'r3'), 'success', 'the third refresh succeeds');
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table(:A, 'totals_view')), :n0::bigint + 2, 'the view shows both new rows');

-- A downstream output rebuilds the viewed table as its upstream.
:as_super
INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name) VALUES
	('55555555-0000-4000-8000-0000000000a2', :A, 'Downstream',
	 '{"version": 1, "source": {"transformation_id": "55555555-0000-4000-8000-0000000000a1"}, "steps": []}', 'downstream');
INSERT INTO dalgo.outputs (id, organization_id, transformation_id, name) VALUES
	('66666666-0000-4000-8000-0000000000a3', :A, '55555555-0000-4000-8000-0000000000a2', 'Downstream');
INSERT INTO dalgo.schedules (id, organization_id, output_id, frequency) VALUES
	('88888888-0000-4000-8000-0000000000a3', :A, '66666666-0000-4000-8000-0000000000a3', 'daily');
:add_visit
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a3') AS r4 \gset
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE id = :'r4'), 'success', 'an output downstream of the viewed table refreshes');
SELECT is((SELECT count(*) FROM dalgo.transformation_runs WHERE transformation_id = '55555555-0000-4000-8000-0000000000a1'
		   AND status = 'failed'), 0::bigint, 'and its upstream run succeeded');
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table(:A, 'totals_view')), :n0::bigint + 3, 'the views read the rebuilt table');
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table(:A, 'downstream')), :n0::bigint + 3, 'and so does the downstream output');

-- A failed build leaves the previous table and its views in place.
:as_super
ALTER TABLE org_222222220000400080000000000000a0.visits RENAME TO visits_away;
SET LOCAL client_min_messages = error;
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a1') AS r5 \gset
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE id = :'r5'), 'failed', 'a refresh whose build fails');
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table(:A, 'totals_view')), :n0::bigint + 3, 'leaves the view over the previous table');

-- A member's manual run of the viewed transformation swaps the table too.
RESET ROLE;
ALTER TABLE org_222222220000400080000000000000a0.visits_away RENAME TO visits;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a1') AS r6 \gset
RESET ROLE;
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE id = :'r6'), 'success',
	'run_transformation by hand rebuilds a table that output views read');
SELECT isnt(to_regclass('org_222222220000400080000000000000a0.totals_view'), NULL, 'and the view is still there');

SELECT * FROM finish();
ROLLBACK;
