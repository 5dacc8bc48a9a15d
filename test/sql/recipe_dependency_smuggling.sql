-- recipe_dependency_smuggling: dependencies come only from where the
-- recipe contract allows a reference (source, join.with, union.with[]), so
-- another organization's transformation id hidden elsewhere in a recipe (a
-- rename map, a column, a literal) never enters the dependency graph; and
-- every run checks that each upstream is of the same organization, also
-- without an identity (as the run workers run).
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\i test/fixtures/recipe_setup.sql
SELECT plan(12);
\set as_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_authenticated;'
\set as_worker 'RESET ROLE; SET LOCAL dalgo.user_id = '''';'
-- B's transformation, which A's member must never get run.
\set TB '''55555555-0000-4000-8000-0000000000b1'''
-- A warehouse table of A with a column named transformation_id.
CREATE TABLE org_222222220000400080000000000000a0.links (transformation_id text, n int);
INSERT INTO org_222222220000400080000000000000a0.links VALUES ('x', 1);
ALTER TABLE org_222222220000400080000000000000a0.links OWNER TO dalgo_wh_222222220000400080000000000000a0;

-- Where the contract allows a reference, and nowhere else.
SELECT is(dalgo.recipe_dependencies('{"version": 1, "source": {"transformation_id": "55555555-0000-4000-8000-0000000000a3"},
	"steps": [{"type": "join", "with": {"transformation_id": "55555555-0000-4000-8000-0000000000a2"}, "on": [], "columns": []},
			  {"type": "union", "with": [{"transformation_id": "55555555-0000-4000-8000-0000000000a1"}, {"table": "t"},
										 {"transformation_id": "55555555-0000-4000-8000-0000000000a2"}]}]}'),
	'{55555555-0000-4000-8000-0000000000a1,55555555-0000-4000-8000-0000000000a2,55555555-0000-4000-8000-0000000000a3}'::uuid[],
	'source, join.with and union.with are dependencies (sorted, once each)');
SELECT is(dalgo.recipe_dependencies(format('{"version": 1, "source": {"table": "links"},
	"steps": [{"type": "rename", "columns": {"transformation_id": %s}},
			  {"type": "filter", "conditions": [{"column": "n", "op": "eq", "value": {"val": {"transformation_id": %s}}}]},
			  {"type": "select", "with": {"transformation_id": %s}, "columns": ["n"]},
			  {"type": "cast", "transformation_id": %s}]}', to_json(:TB::text), to_json(:TB::text), to_json(:TB::text), to_json(:TB::text))::jsonb),
	'{}'::uuid[], 'a transformation_id anywhere else (rename map, literal, another step''s "with", a stray key) is not');
SELECT is(dalgo.recipe_dependencies('{"source": {"transformation_id": "not-a-uuid"}, "steps": 3}'), '{}'::uuid[],
	'a malformed recipe names nothing');
SELECT is(dalgo.recipe_dependencies(NULL), '{}'::uuid[], 'nor does NULL');

-- The attack of the issue: B's id as the new name of a column in a rename step.
:as_member_a
INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name) VALUES
	('55555555-0000-4000-8000-0000000000a5', '22222222-0000-4000-8000-0000000000a0', 'Smuggler',
	 format('{"version": 1, "source": {"table": "links"}, "steps": [{"type": "rename", "columns": {"transformation_id": %s}}]}',
			to_json(:TB::text))::jsonb, 'smuggled');
SELECT is((SELECT count(*) FROM dalgo.transformation_upstream('55555555-0000-4000-8000-0000000000a5')), 0::bigint,
	'the smuggled id is not upstream');
:as_worker
SELECT isnt(dalgo.run_transformation('55555555-0000-4000-8000-0000000000a5', true), NULL, 'a run with upstream and no identity');
SELECT is((SELECT count(*) FROM dalgo.transformation_runs WHERE transformation_id = :TB), 0::bigint,
	'does not run the other organization''s transformation');
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE transformation_id = '55555555-0000-4000-8000-0000000000a5'),
	'success', 'and builds its own output');

-- A forged row (written past the triggers) that does name B's transformation as its source.
SET LOCAL session_replication_role = replica;
INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name, current_version) VALUES
	('55555555-0000-4000-8000-0000000000a6', '22222222-0000-4000-8000-0000000000a0', 'Forged',
	 format('{"version": 1, "source": {"transformation_id": %s}, "steps": []}', to_json(:TB::text))::jsonb, 'forged', 1);
SET LOCAL session_replication_role = origin;
SELECT throws_ok($$SELECT * FROM dalgo.transformation_upstream('55555555-0000-4000-8000-0000000000a6')$$, '22023',
	'transformation 55555555-0000-4000-8000-0000000000a6 reads 55555555-0000-4000-8000-0000000000b1, which is not a live transformation of its organization',
	'the upstream walk refuses a dependency of another organization');
SELECT throws_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a6', true)$$, '22023', NULL,
	'a run with upstream refuses it, without an identity');
SELECT is((SELECT count(*) FROM dalgo.transformation_runs WHERE transformation_id = :TB), 0::bigint,
	'and the other organization''s transformation still never ran');
SELECT is((SELECT count(*) FROM dalgo.transformation_runs r WHERE r.transformation_id = '55555555-0000-4000-8000-0000000000a6'
		   AND r.status = 'success'), 0::bigint, 'nor did the forged one build from it');
SELECT * FROM finish();
ROLLBACK;
