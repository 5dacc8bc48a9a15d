-- version_history: transformation versions are written only by dalgo's own
-- code (a forged version is refused, and the next save still numbers its
-- version), revert_transformation saves an old recipe as a new version, and
-- diff_versions names the steps added, removed and changed.  Another
-- organization and a viewer cannot use them.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set T '''55555555-0000-4000-8000-0000000000a1'''
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_authenticated;'
\set as_viewer_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000004''; SET LOCAL ROLE dalgo_authenticated;'
\set as_owner_b 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000003''; SET LOCAL ROLE dalgo_authenticated;'
\set as_service 'RESET ROLE; SET LOCAL dalgo.user_id = ''''; SET LOCAL ROLE dalgo_service;'
SELECT plan(26);

INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-000000000004', 'viewer.a@example.org');
INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	VALUES (:A, '11111111-0000-4000-8000-000000000004', 'viewer');

-- A forged version N+1 would make the next save fail with 23505: no app role may write one.
:as_member_a
SELECT throws_ok($$INSERT INTO dalgo.transformation_versions (transformation_id, version_number, recipe)
	VALUES ('55555555-0000-4000-8000-0000000000a1', 2, '{}')$$,
	'42501', NULL, 'forged_version_refused: a member cannot insert version N+1');
:as_owner_a
SELECT throws_ok($$INSERT INTO dalgo.transformation_versions (transformation_id, version_number, recipe)
	VALUES ('55555555-0000-4000-8000-0000000000a1', 2, '{}')$$,
	'42501', NULL, 'forged_version_refused: nor an owner');
SELECT throws_ok($$UPDATE dalgo.transformation_versions SET recipe = '{}'$$,
	'42501', NULL, 'forged_version_refused: nor change a version');
:as_service
SELECT throws_ok($$INSERT INTO dalgo.transformation_versions (transformation_id, version_number, recipe)
	VALUES ('55555555-0000-4000-8000-0000000000a1', 2, '{}')$$,
	'42501', NULL, 'forged_version_refused: nor dalgo_service');
SELECT throws_ok($$INSERT INTO dalgo.transformation_runs (transformation_id, status) VALUES ('55555555-0000-4000-8000-0000000000a1', 'success')$$,
	'42501', NULL, 'forged_version_refused: nor insert a run');

-- Three saves by the member: versions 2 and 3 follow version 1.
:as_member_a
UPDATE dalgo.transformations SET recipe = '{"version": 1, "source": {"table": "visits"}, "steps": [
	{"type": "filter", "conditions": [{"column": "NGO", "op": "eq", "value": {"val": "CRC"}}]},
	{"type": "select", "columns": ["NGO", "Month", "measure1"]},
	{"type": "limit", "n": 10}]}' WHERE id = :T;
UPDATE dalgo.transformations SET recipe = '{"version": 1, "source": {"table": "visits"}, "steps": [
	{"type": "filter", "conditions": [{"column": "NGO", "op": "eq", "value": {"val": "IMAGE"}}]},
	{"type": "select", "columns": ["NGO", "Month", "measure1"]},
	{"type": "sort", "by": [{"column": "Month"}]},
	{"type": "limit", "n": 10}]}' WHERE id = :T;
SELECT is((SELECT array_agg(version_number ORDER BY version_number) FROM dalgo.transformation_versions WHERE transformation_id = :T),
	ARRAY[1, 2, 3], 'a member''s saves number versions 1, 2, 3');

-- diff 2 -> 3: the filter changed (its conditions), a sort was added, select and limit kept.
SELECT is(dalgo.diff_versions(:T, 2, 3)->'summary',
	'{"added": 1, "removed": 0, "changed": 1, "unchanged": 2}', 'diff 2 -> 3: one step added, one changed, two kept');
SELECT is((SELECT jsonb_agg(jsonb_build_object('change', e->'change', 'a', e->'position_a', 'b', e->'position_b', 'keys', e->'keys'))
		   FROM jsonb_array_elements(dalgo.diff_versions(:T, 2, 3)->'steps') e),
	'[{"a": 1, "b": 1, "keys": ["conditions"], "change": "changed"}, {"a": null, "b": 3, "keys": null, "change": "added"}]',
	'diff 2 -> 3: step 1 (filter) changed in its conditions, step 3 (sort) added');
SELECT is(dalgo.diff_versions(:T, 2, 3)->'steps'->0->'to'->'conditions'->0->'value', '{"val": "IMAGE"}',
	'diff 2 -> 3: the changed step carries both versions');
SELECT is(dalgo.diff_versions(:T, 3, 1)->'summary', '{"added": 0, "removed": 4, "changed": 0, "unchanged": 0}',
	'diff 3 -> 1: all four steps removed');
SELECT is(dalgo.diff_versions(:T, 3, 1)->'steps'->1, '{"step": {"type": "select", "columns": ["NGO", "Month", "measure1"]}, "type": "select", "change": "removed", "position_a": 2}',
	'diff 3 -> 1: each removed step with its position and body');
SELECT is(dalgo.diff_versions(:T, 2, 2)->'steps', '[]', 'diff of a version with itself: no steps');
SELECT throws_ok($$SELECT dalgo.diff_versions('55555555-0000-4000-8000-0000000000a1', 2, 9)$$, '22023',
	'transformation 55555555-0000-4000-8000-0000000000a1 has no version 9', 'diff of a version that does not exist');

-- Revert to version 2: a new version 4 with version 2's recipe, by the member.
SELECT is(dalgo.revert_transformation(:T, 2), 4, 'revert to version 2 saves version 4');
SELECT is((SELECT recipe FROM dalgo.transformation_versions WHERE transformation_id = :T AND version_number = 4),
	(SELECT recipe FROM dalgo.transformation_versions WHERE transformation_id = :T AND version_number = 2),
	'version 4 is version 2''s recipe');
SELECT is((SELECT (created_by_id, change_description)::text FROM dalgo.transformation_versions WHERE transformation_id = :T AND version_number = 4),
	'(11111111-0000-4000-8000-000000000002,"revert to version 2")', 'recorded as the member''s revert');
SELECT is((SELECT (current_version, recipe = (SELECT recipe FROM dalgo.transformation_versions WHERE transformation_id = :T AND version_number = 2))::text
		   FROM dalgo.transformations WHERE id = :T), '(4,t)', 'the transformation now holds it');
SELECT is(dalgo.diff_versions(:T, 2, 4)->'summary', '{"added": 0, "removed": 0, "changed": 0, "unchanged": 3}', 'diff 2 -> 4: nothing changed');
SELECT is(dalgo.revert_transformation(:T, 4), 4, 'reverting to the current recipe saves nothing');
SELECT lives_ok($$UPDATE dalgo.transformations SET recipe = '{"version": 1, "source": {"table": "visits"}, "steps": []}' WHERE id = '55555555-0000-4000-8000-0000000000a1'$$,
	'the next ordinary save still works');
SELECT is((SELECT max(version_number) FROM dalgo.transformation_versions WHERE transformation_id = :T), 5, 'and records version 5');
SELECT throws_ok($$SELECT dalgo.revert_transformation('55555555-0000-4000-8000-0000000000a1', 42)$$, '22023',
	'transformation 55555555-0000-4000-8000-0000000000a1 has no version 42', 'a version that does not exist is refused');

-- A viewer reads the diff but cannot revert; another organization sees neither.
:as_viewer_a
SELECT is(dalgo.diff_versions(:T, 1, 2)->'summary'->>'added', '3', 'a viewer reads a diff');
SELECT throws_ok($$SELECT dalgo.revert_transformation('55555555-0000-4000-8000-0000000000a1', 1)$$, '42501',
	'reverting a transformation needs the member role', 'a viewer cannot revert');
:as_owner_b
SELECT throws_ok($$SELECT dalgo.diff_versions('55555555-0000-4000-8000-0000000000a1', 1, 2)$$, '22023',
	'transformation 55555555-0000-4000-8000-0000000000a1 does not exist', 'another organization''s owner gets no diff');
SELECT throws_ok($$SELECT dalgo.revert_transformation('55555555-0000-4000-8000-0000000000a1', 1)$$, '22023',
	'transformation 55555555-0000-4000-8000-0000000000a1 does not exist', 'and cannot revert');

SELECT * FROM finish();
ROLLBACK;
