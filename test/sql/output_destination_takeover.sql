-- output_destination_takeover: an output's destination_config.name is a
-- member's text, and a refresh drops and replaces what it names.  A member
-- must not make a scheduled refresh drop an admin's source table, replace an
-- operator's view, or have another output's refresh drop that view (the view
-- swap around a refresh); an output replaces only what its own refreshes made.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set as_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_authenticated;'
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_super 'RESET ROLE; SET LOCAL dalgo.user_id = '''';'
SELECT plan(13);
-- The admin's schedule for the member's output; a second output of the same
-- transformation; an operator's view over the source table.
INSERT INTO dalgo.outputs (id, organization_id, transformation_id, name) VALUES
	('66666666-0000-4000-8000-0000000000a2', :A, '55555555-0000-4000-8000-0000000000a1', 'Second');
INSERT INTO dalgo.schedules (id, organization_id, output_id, frequency) VALUES
	('88888888-0000-4000-8000-0000000000a1', :A, '66666666-0000-4000-8000-0000000000a1', 'daily'),
	('88888888-0000-4000-8000-0000000000a2', :A, '66666666-0000-4000-8000-0000000000a2', 'daily');
CREATE VIEW org_222222220000400080000000000000a0.report AS
	SELECT "NGO" FROM org_222222220000400080000000000000a0.visits;
ALTER VIEW org_222222220000400080000000000000a0.report OWNER TO dalgo_wh_222222220000400080000000000000a0;
SELECT 'org_222222220000400080000000000000a0.visits'::regclass::oid AS visits_oid \gset
SELECT 'org_222222220000400080000000000000a0.report'::regclass::oid AS report_oid \gset

-- 1. A table destination naming the admin's source table.
:as_member_a
UPDATE dalgo.transformations SET recipe = '{"version": 1, "source": {"table": "visits"}, "steps":
	[{"type": "filter", "conditions": [{"column": "NGO", "op": "eq", "value": {"val": "CRC"}}]}]}'
	WHERE id = '55555555-0000-4000-8000-0000000000a1';
SELECT throws_ok($$UPDATE dalgo.outputs SET destination_config = '{"type": "table", "name": "visits"}'
	WHERE id = '66666666-0000-4000-8000-0000000000a1'$$, '22023', NULL,
	'saving a table destination that names a source''s table is refused');
-- Forged past the save-time check (triggers off), the refresh still refuses it.
:as_super
SET LOCAL session_replication_role = replica;
UPDATE dalgo.outputs SET destination_config = '{"type": "table", "name": "visits"}'
	WHERE id = '66666666-0000-4000-8000-0000000000a1';
SET LOCAL session_replication_role = origin;
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a1') AS r1 \gset
:as_super
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE id = :'r1'), 'failed',
	'a refresh whose table destination is a source''s table fails');
SELECT matches((SELECT error_message FROM dalgo.transformation_runs WHERE id = :'r1'),
	'output destination "visits" exists and was not made by this output', 'and says why');
SELECT is('org_222222220000400080000000000000a0.visits'::regclass::oid, :'visits_oid'::oid, 'the source table was not replaced');
SELECT is((SELECT count(*) FROM org_222222220000400080000000000000a0.visits), 5::bigint, 'and keeps its rows');

-- 2. A view destination naming the operator's view.
:as_member_a
UPDATE dalgo.outputs SET destination_config = '{"type": "view", "name": "report"}'
	WHERE id = '66666666-0000-4000-8000-0000000000a1';
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a1') AS r2 \gset
:as_super
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE id = :'r2'), 'failed',
	'a refresh whose view destination is a view over another table fails');
SELECT is((SELECT count(*) FROM pg_attribute WHERE attrelid = :'report_oid'::oid AND attnum > 0), 1::bigint,
	'the operator''s view was not replaced');

-- 3. The same name on a second output: the first output's (legitimate)
-- refresh must not drop the operator's view around its swap.
:as_member_a
UPDATE dalgo.outputs SET destination_config = '{}' WHERE id = '66666666-0000-4000-8000-0000000000a1';
UPDATE dalgo.outputs SET destination_config = '{"type": "view", "name": "report"}'
	WHERE id = '66666666-0000-4000-8000-0000000000a2';
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a1') AS r3 \gset
:as_super
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE id = :'r3'), 'success', 'the first output refreshes');
SELECT is(to_regclass('org_222222220000400080000000000000a0.report')::oid, :'report_oid'::oid,
	'and the operator''s view named by another output was neither dropped nor replaced');

-- 4. Names that truncation would turn into another name are refused.
:as_member_a
UPDATE dalgo.outputs SET destination_config = jsonb_build_object('type', 'table', 'name', repeat('t', 64))
	WHERE id = '66666666-0000-4000-8000-0000000000a1';
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a1') AS r4 \gset
:as_super
SELECT matches((SELECT error_message FROM dalgo.transformation_runs WHERE id = :'r4'),
	'output destination name "t+" is not allowed', 'a 64-byte destination name is refused');

-- 5. An output's own table destination refreshes again and again.
:as_member_a
UPDATE dalgo.outputs SET destination_config = '{"type": "table", "name": "totals_copy"}'
	WHERE id = '66666666-0000-4000-8000-0000000000a1';
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a1') AS r5 \gset
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a1') AS r6 \gset
:as_super
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE id = :'r5'), 'success', 'a new table destination is created');
SELECT is((SELECT (status, error_message)::text FROM dalgo.transformation_runs WHERE id = :'r6'), '(success,)',
	'and refreshed again: it is the output''s own table');
SELECT is((SELECT count(*) FROM org_222222220000400080000000000000a0.totals_copy), 2::bigint, 'with the new rows');

SELECT * FROM finish();
ROLLBACK;
