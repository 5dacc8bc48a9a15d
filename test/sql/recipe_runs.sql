-- recipe_runs: saving a recipe records versions and refuses cycles; runs
-- build outputs atomically, record success and failure (keeping the old
-- output), run upstream first, and stay inside the organization.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\i test/fixtures/recipe_setup.sql
SELECT plan(33);
\set as_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_authenticated;'
\set as_viewer_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000009''; SET LOCAL ROLE dalgo_authenticated;'
INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-000000000009', 'viewer9@example.org');
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES (:A, '11111111-0000-4000-8000-000000000009', 'viewer');
UPDATE dalgo.sources SET warehouse_table_name = 'visits' WHERE id = '33333333-0000-4000-8000-0000000000a1';

-- Versions.
:as_member_a
SET LOCAL dalgo.change_description = 'first cut';
INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name) VALUES
	('55555555-0000-4000-8000-0000000000a2', :A, 'By NGO',
	 '{"version": 1, "source": {"source_id": "33333333-0000-4000-8000-0000000000a1"}, "steps": [{"type": "cast", "columns": {"measure1": "int"}}, {"type": "group", "by": ["NGO"], "aggregates": [{"fn": "sum", "column": "measure1", "as": "total"}]}]}',
	 'by_ngo');
SELECT is((SELECT current_version FROM dalgo.transformations WHERE id = '55555555-0000-4000-8000-0000000000a2'), 1, 'a new transformation is version 1');
SELECT is((SELECT (version_number, created_by_id, change_description)::text FROM dalgo.transformation_versions
		   WHERE transformation_id = '55555555-0000-4000-8000-0000000000a2'),
	'(1,11111111-0000-4000-8000-000000000002,"first cut")', 'version 1 is recorded with its author and description');
SELECT matches((SELECT generated_sql FROM dalgo.transformation_versions WHERE transformation_id = '55555555-0000-4000-8000-0000000000a2'),
	'GROUP BY "NGO"', 'with its generated SQL');
SET LOCAL dalgo.change_description = '';
UPDATE dalgo.transformations SET recipe = jsonb_set(recipe, '{steps,1,aggregates,0,fn}', '"max"') WHERE id = '55555555-0000-4000-8000-0000000000a2';
SELECT is((SELECT current_version FROM dalgo.transformations WHERE id = '55555555-0000-4000-8000-0000000000a2'), 2, 'a changed recipe bumps the version');
SELECT is((SELECT count(*) FROM dalgo.transformation_versions WHERE transformation_id = '55555555-0000-4000-8000-0000000000a2'), 2::bigint, 'and records it');
UPDATE dalgo.transformations SET name = 'By NGO (max)' WHERE id = '55555555-0000-4000-8000-0000000000a2';
SELECT is((SELECT current_version FROM dalgo.transformations WHERE id = '55555555-0000-4000-8000-0000000000a2'), 2, 'a rename is not a new version');
UPDATE dalgo.transformations SET current_version = 9 WHERE id = '55555555-0000-4000-8000-0000000000a2';
SELECT is((SELECT current_version FROM dalgo.transformations WHERE id = '55555555-0000-4000-8000-0000000000a2'), 2,
	'the version number cannot be forged');
SELECT throws_ok($$UPDATE dalgo.transformations SET recipe = '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "select", "columns": ["nope"]}]}'
	WHERE id = '55555555-0000-4000-8000-0000000000a2'$$, '22023', NULL, 'an invalid recipe is rejected with the compile error');
SELECT throws_ok($$UPDATE dalgo.transformations SET recipe = '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "group", "by": ["NGO"], "aggregates": [{"fn": "sum", "column": "SPOC", "as": "x"}]}]}'
	WHERE id = '55555555-0000-4000-8000-0000000000a2'$$, '22023', 'recipe does not type-check: function sum(text) does not exist',
	'a recipe that does not type-check is rejected');

-- Dependencies and cycles (a recipe reads another transformation's built output).
SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a1') IS NOT NULL AS built \gset
INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name) VALUES
	('55555555-0000-4000-8000-0000000000a3', :A, 'Top NGOs',
	 '{"version": 1, "source": {"transformation_id": "55555555-0000-4000-8000-0000000000a1"}, "steps": [{"type": "select", "columns": ["NGO"]}]}',
	 'top_ngos');
SELECT throws_ok($$UPDATE dalgo.transformations SET recipe = '{"version": 1, "source": {"transformation_id": "55555555-0000-4000-8000-0000000000a3"}, "steps": []}'
	WHERE id = '55555555-0000-4000-8000-0000000000a1'$$, '22023', NULL, 'a dependency cycle is rejected');
SELECT throws_ok($$UPDATE dalgo.transformations SET recipe = '{"version": 1, "source": {"transformation_id": "55555555-0000-4000-8000-0000000000a1"}, "steps": []}'
	WHERE id = '55555555-0000-4000-8000-0000000000a1'$$, '22023', NULL, 'so is a self-reference');
SELECT throws_ok($$INSERT INTO dalgo.transformations (organization_id, name, recipe, output_table_name) VALUES
	('22222222-0000-4000-8000-0000000000a0', 'x', '{"version": 1, "source": {"source_id": "33333333-0000-4000-8000-0000000000b1"}, "steps": []}', 'x')$$,
	'22023', NULL, 'another organization''s source is rejected');

-- Runs.
SELECT isnt(dalgo.run_transformation('55555555-0000-4000-8000-0000000000a2'), NULL, 'a member runs a transformation');
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE transformation_id = '55555555-0000-4000-8000-0000000000a2'), 'success', 'the run succeeded');
SELECT is((SELECT (rows_affected, version_number)::text FROM dalgo.transformation_runs WHERE transformation_id = '55555555-0000-4000-8000-0000000000a2'),
	'(3,2)', 'with its row count and version');
SELECT ok((SELECT started_at <= completed_at AND executed_sql LIKE 'WITH _s0%' FROM dalgo.transformation_runs
		   WHERE transformation_id = '55555555-0000-4000-8000-0000000000a2'), 'timestamps and executed SQL are recorded');
SELECT is((SELECT array_agg(r ORDER BY r::text) FROM dalgo.read_warehouse_table(:A, 'by_ngo') r),
	ARRAY['{"NGO": "CRC", "total": 10}', '{"NGO": "IMAGE", "total": 3}', '{"NGO": "JTS", "total": 12}']::jsonb[],
	'the output table holds the result');
SELECT is((SELECT (row_count, schema_info)::text FROM dalgo.warehouse_tables WHERE table_name = 'by_ngo'),
	'(3,"[{""name"": ""NGO"", ""type"": ""text"", ""nullable"": true}, {""name"": ""total"", ""type"": ""integer"", ""nullable"": true}]")',
	'warehouse_tables registers it with row count and columns');
SELECT isnt((SELECT last_run_at FROM dalgo.transformations WHERE id = '55555555-0000-4000-8000-0000000000a2'), NULL, 'last_run_at is set');

-- A failing run keeps the old output.
RESET ROLE;
UPDATE org_222222220000400080000000000000a0.visits SET measure1 = 'not a number' WHERE "NGO" = 'JTS';
:as_member_a
SET LOCAL client_min_messages = error;	-- the run's WARNING names a random run id
SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a2') AS failed_run \gset
SET LOCAL client_min_messages = warning;
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE id = :'failed_run'), 'failed', 'a failing run is recorded as failed');
SELECT is((SELECT error_message FROM dalgo.transformation_runs WHERE id = :'failed_run'),
	'invalid input syntax for type integer: "not a number"', 'with the error');
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table(:A, 'by_ngo')), 3::bigint, 'and the previous output is intact');
SELECT is((SELECT count(*) FROM pg_class WHERE relname LIKE '\_dalgo\_build\_%'), 0::bigint, 'no half-built table is left behind');

-- Upstream first.
RESET ROLE;
UPDATE org_222222220000400080000000000000a0.visits SET measure1 = '12' WHERE "NGO" = 'JTS';
:as_member_a
SELECT clock_timestamp() AS before_upstream \gset
SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a3', with_upstream => true) AS top_run \gset
SELECT is((SELECT array_agg(t.name ORDER BY r.started_at) FROM dalgo.transformation_runs r JOIN dalgo.transformations t ON t.id = r.transformation_id
		   WHERE r.status = 'success' AND r.started_at > :'before_upstream'
		   AND t.id IN ('55555555-0000-4000-8000-0000000000a1', '55555555-0000-4000-8000-0000000000a3')),
	ARRAY['Totals A', 'Top NGOs'], 'with_upstream runs what it reads first');
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table(:A, 'top_ngos')), 5::bigint, 'the downstream output is built');
SELECT is((SELECT id FROM dalgo.transformation_upstream('55555555-0000-4000-8000-0000000000a3')),
	'55555555-0000-4000-8000-0000000000a1'::uuid, 'transformation_upstream lists the dependency');

-- Who may run, and where.
:as_viewer_a
SELECT throws_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a2')$$, '42501', NULL, 'a viewer cannot run');
SELECT is((SELECT count(*) FROM dalgo.preview_recipe(:A, '{"version": 1, "source": {"table": "by_ngo"}, "steps": []}')), 3::bigint,
	'a viewer can preview and read the organization''s warehouse');
SELECT throws_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000b1')$$, '22023', NULL,
	'another organization''s transformation does not exist for them');
SELECT throws_ok($$SELECT * FROM org_222222220000400080000000000000a0.by_ngo$$, '42501', NULL, 'warehouse schemas are closed to end users');
SELECT throws_ok($$SELECT dalgo_internal.warehouse_execute('22222222-0000-4000-8000-0000000000a0', 'DROP TABLE org_222222220000400080000000000000a0.by_ngo')$$,
	'42501', NULL, 'the internal executor is not callable');
RESET ROLE;

-- Recipe SQL runs as the organization's role: even raw SQL cannot reach another organization.
SET LOCAL dalgo.allow_raw_sql = on;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000001';
SELECT throws_ok($$SELECT * FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0',
	'{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "sql", "select": "(SELECT count(*) FROM org_222222220000400080000000000000b0.visits) AS n"}]}')$$,
	'42501', NULL, 'raw SQL cannot read another organization''s warehouse');
SELECT throws_ok($$SELECT * FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0',
	'{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "sql", "select": "(SELECT count(*) FROM dalgo.users) AS n"}]}')$$,
	'42501', NULL, 'nor dalgo''s own tables');

SELECT * FROM finish();
ROLLBACK;
