-- warehouse_table_ownership: each warehouse table has one producer (a
-- source, a transformation or an output).  Every column that names a table
-- is checked on every insert and update, whatever else changed; the swap
-- checks again at run time, and replaces only a table that the same
-- producer made.  A member can no longer overwrite an admin's source table.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\i test/fixtures/recipe_setup.sql
SELECT plan(23);
\set WA org_222222220000400080000000000000a0
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_authenticated;'
\set as_owner_b 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000003''; SET LOCAL ROLE dalgo_authenticated;'
\set TA '''55555555-0000-4000-8000-0000000000a1'''

-- The attack of the issue: a member renames only the output table, onto the admin's source table.
:as_member_a
SELECT throws_ok($$UPDATE dalgo.transformations SET output_table_name = 'visits' WHERE id = '55555555-0000-4000-8000-0000000000a1'$$,
	'22023', 'warehouse table "visits" already belongs to source "Visits A"',
	'changing only output_table_name to a source''s table is refused');
SELECT throws_ok($$INSERT INTO dalgo.transformations (organization_id, name, recipe, output_table_name)
	VALUES ('22222222-0000-4000-8000-0000000000a0', 'Copy', '{"version": 1, "source": {"table": "visits"}, "steps": []}', 'visits')$$,
	'22023', NULL, 'so is a new transformation writing it');
SELECT throws_ok($$INSERT INTO dalgo.outputs (organization_id, transformation_id, name, destination_config)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '55555555-0000-4000-8000-0000000000a1', 'Over', '{"type": "table", "name": "visits"}')$$,
	'22023', NULL, 'an output whose destination is a source''s table is refused');
SELECT throws_ok($$UPDATE dalgo.outputs SET destination_config = '{"name": "visits"}' WHERE id = '66666666-0000-4000-8000-0000000000a1'$$,
	'22023', NULL, 'also by an update of destination_config only');
SELECT throws_ok($$UPDATE dalgo.outputs SET destination_config = '{"name": 7}' WHERE id = '66666666-0000-4000-8000-0000000000a1'$$,
	'22023', NULL, 'a destination name must be a string');
SELECT throws_ok($$UPDATE dalgo.transformations SET output_table_name = '_dalgo_build_00000000000000000000000000000000'
	WHERE id = '55555555-0000-4000-8000-0000000000a1'$$, '22023', NULL, 'dalgo''s own build names are refused');
SELECT lives_ok($$UPDATE dalgo.outputs SET destination_config = '{"type": "table", "name": "totals"}'
	WHERE id = '66666666-0000-4000-8000-0000000000a1'$$, 'an output may publish its own transformation''s table');
SELECT lives_ok($$UPDATE dalgo.outputs SET destination_config = '{"type": "table", "name": "published"}'
	WHERE id = '66666666-0000-4000-8000-0000000000a1'$$, 'or a name of its own');
:as_owner_a
SELECT throws_ok($$UPDATE dalgo.sources SET warehouse_table_name = 'totals' WHERE id = '33333333-0000-4000-8000-0000000000a1'$$,
	'22023', 'warehouse table "totals" already belongs to transformation "Totals A"', 'a source cannot take a transformation''s table');
SELECT throws_ok($$INSERT INTO dalgo.sources (organization_id, name, source_type, warehouse_table_name)
	VALUES ('22222222-0000-4000-8000-0000000000a0', 'Sheet', 'google_sheets', 'published')$$,
	'22023', 'warehouse table "published" already belongs to output "Dashboard A"', 'nor an output''s');
INSERT INTO dalgo.sources (id, organization_id, name, source_type)
	VALUES ('33333333-0000-4000-8000-0000000000a9', '22222222-0000-4000-8000-0000000000a0', 'Unsynced', 'google_sheets');
:as_member_a
SELECT throws_ok($$UPDATE dalgo.transformations SET output_table_name = 'source_333333330000'
	WHERE id = '55555555-0000-4000-8000-0000000000a1'$$, '22023', 'warehouse table "source_333333330000" already belongs to source "Unsynced"',
	'a source not yet synced claims the table its first sync will write');
-- Another organization's names are neither refused nor named: B has its own "visits" and "totals".
:as_owner_b
SELECT lives_ok($$UPDATE dalgo.transformations SET output_table_name = 'published' WHERE id = '55555555-0000-4000-8000-0000000000b1'$$,
	'another organization may use the same names in its own warehouse');
:as_member_a
SELECT throws_ok($$UPDATE dalgo.transformations SET organization_id = '22222222-0000-4000-8000-0000000000b0', output_table_name = 'published'
	WHERE id = '55555555-0000-4000-8000-0000000000a1'$$, '42501', NULL,
	'moving a row into another organization never reveals that organization''s names');

-- At run time: rows forged past the triggers are checked again at the swap.
RESET ROLE;
SET LOCAL client_min_messages = error;
SET LOCAL session_replication_role = replica;
UPDATE dalgo.transformations SET output_table_name = 'visits' WHERE id = :TA;
SET LOCAL session_replication_role = origin;
:as_member_a
SELECT isnt(dalgo.run_transformation(:TA), NULL, 'a run onto a source''s table');
SELECT is((SELECT error_message FROM dalgo.transformation_runs WHERE transformation_id = :TA ORDER BY started_at DESC LIMIT 1),
	'warehouse table "visits" belongs to source "Visits A"; it is not replaced', 'fails at the swap');
RESET ROLE;
SELECT is((SELECT count(*) FROM :WA.visits), 5::bigint, 'and the source table is intact');
-- A table that no producer made (here, by a superuser) is not replaced either.
CREATE TABLE :WA.manual (keep text);
INSERT INTO :WA.manual VALUES ('mine');
UPDATE dalgo.transformations SET output_table_name = 'manual' WHERE id = :TA;
:as_member_a
SELECT isnt(dalgo.run_transformation(:TA), NULL, 'a run onto an unregistered table');
SELECT is((SELECT error_message FROM dalgo.transformation_runs WHERE transformation_id = :TA ORDER BY started_at DESC LIMIT 1),
	'warehouse table "manual" was not produced by this transformation; it is not replaced', 'fails at the swap');
RESET ROLE;
SELECT is((SELECT keep FROM :WA.manual), 'mine', 'and leaves the table alone');
-- Its own table, it replaces, again and again; the registration names it.
UPDATE dalgo.transformations SET output_table_name = 'totals' WHERE id = :TA;
:as_member_a
SELECT dalgo.run_transformation(:TA) IS NOT NULL AS first_run \gset
SELECT dalgo.run_transformation(:TA) IS NOT NULL AS second_run \gset
SELECT is((SELECT array_agg(status::text ORDER BY started_at) FROM (SELECT * FROM dalgo.transformation_runs
		   WHERE transformation_id = :TA ORDER BY started_at DESC LIMIT 2) r), '{success,success}',
	'a transformation replaces its own output on every run');
SELECT is((SELECT (transformation_id, source_id, output_id)::text FROM dalgo.warehouse_tables WHERE table_name = 'totals'
		   AND organization_id = '22222222-0000-4000-8000-0000000000a0'),
	'(55555555-0000-4000-8000-0000000000a1,,)', 'warehouse_tables records it as the producer');
-- An output's own destination table, refreshed twice.
:as_owner_a
INSERT INTO dalgo.schedules (id, organization_id, output_id, frequency)
	VALUES ('88888888-0000-4000-8000-0000000000d1', '22222222-0000-4000-8000-0000000000a0', '66666666-0000-4000-8000-0000000000a1', 'daily');
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000d1') IS NOT NULL AS first_refresh \gset
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000d1') IS NOT NULL AS second_refresh \gset
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table('22222222-0000-4000-8000-0000000000a0', 'published')), 5::bigint,
	'an output refreshes its own destination table, again and again');
SELECT is((SELECT (transformation_id, source_id, output_id)::text FROM dalgo.warehouse_tables WHERE table_name = 'published'
		   AND organization_id = '22222222-0000-4000-8000-0000000000a0'),
	'(,,66666666-0000-4000-8000-0000000000a1)', 'and is recorded as its producer');
SELECT * FROM finish();
ROLLBACK;
