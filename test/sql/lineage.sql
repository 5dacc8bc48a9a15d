-- lineage: dalgo.lineage follows every reference a recipe makes (its
-- source, a join, a union, a {"transformation_id": ...}) from sources
-- through warehouse tables and transformations to outputs and schedules,
-- upstream and downstream; dalgo.impact lists what a change touches in run
-- order; dalgo.lineage_dot draws it.  Another organization sees none of it.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set B '''22222222-0000-4000-8000-0000000000b0'''
\set as_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_authenticated;'
\set as_owner_b 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000003''; SET LOCAL ROLE dalgo_authenticated;'
SELECT plan(18);

-- The graph: Visits A -> visits -> Totals A -> totals -> Joined (joins
-- Districts' table, unions visits_2024) -> joined -> Report (an output) -> its schedule.
CREATE TABLE org_222222220000400080000000000000a0.districts ("NGO" text, district text);
INSERT INTO org_222222220000400080000000000000a0.districts VALUES ('CRC', 'North');
ALTER TABLE org_222222220000400080000000000000a0.districts OWNER TO dalgo_wh_222222220000400080000000000000a0;
CREATE TABLE org_222222220000400080000000000000a0.visits_2024 AS SELECT * FROM org_222222220000400080000000000000a0.visits WHERE false;
ALTER TABLE org_222222220000400080000000000000a0.visits_2024 OWNER TO dalgo_wh_222222220000400080000000000000a0;
INSERT INTO dalgo.sources (id, organization_id, name, source_type, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000a2', :A, 'Districts', 'csv', 'districts');
:as_member_a
SELECT isnt(dalgo.run_transformation('55555555-0000-4000-8000-0000000000a1'), NULL, 'Totals A builds totals');
INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name) VALUES
	('55555555-0000-4000-8000-0000000000a2', :A, 'Joined',
	 '{"version": 1, "source": {"transformation_id": "55555555-0000-4000-8000-0000000000a1"}, "steps": [
		{"type": "union", "with": [{"table": "visits_2024"}]},
		{"type": "join", "with": {"source_id": "33333333-0000-4000-8000-0000000000a2"}, "how": "left",
		 "on": [{"left": "NGO", "right": "NGO"}], "columns": ["district"]}]}', 'joined');
INSERT INTO dalgo.outputs (id, organization_id, transformation_id, name) VALUES
	('66666666-0000-4000-8000-0000000000a2', :A, '55555555-0000-4000-8000-0000000000a2', 'Report');
RESET ROLE;
INSERT INTO dalgo.schedules (id, organization_id, output_id, frequency, run_at_time) VALUES
	('88888888-0000-4000-8000-0000000000a2', :A, '66666666-0000-4000-8000-0000000000a2', 'daily', '06:30');
:as_member_a

-- Names stand for the ids in what follows.
CREATE TEMP VIEW g AS SELECT node_type, name, id,
	ARRAY(SELECT x.name FROM dalgo.lineage('22222222-0000-4000-8000-0000000000a0') x WHERE x.id = ANY (l.depends_on) ORDER BY x.name) AS reads
	FROM dalgo.lineage('22222222-0000-4000-8000-0000000000a0') l;
SELECT results_eq($$SELECT node_type, name, reads::text FROM g ORDER BY node_type, name$$,
	$$VALUES ('output', 'Dashboard A', '{"Totals A"}'), ('output', 'Report', '{Joined}'),
			 ('schedule', 'daily at 06:30 (UTC)', '{Report}'),
			 ('source', 'Districts', '{}'), ('source', 'Visits A', '{}'),
			 ('transformation', 'Joined', '{districts,totals,visits_2024}'), ('transformation', 'Totals A', '{visits}'),
			 ('warehouse_table', 'districts', '{Districts}'), ('warehouse_table', 'joined', '{Joined}'),
			 ('warehouse_table', 'totals', '{"Totals A"}'), ('warehouse_table', 'visits', '{"Visits A"}'),
			 ('warehouse_table', 'visits_2024', '{}')$$,
	'lineage: the whole graph, with the transformation reference, the union and the join');
SELECT is((SELECT id FROM g WHERE name = 'totals'),
	(SELECT id FROM dalgo.warehouse_tables WHERE table_name = 'totals' AND organization_id = :A),
	'lineage: a built table''s node is its warehouse_tables row');
SELECT set_eq($$SELECT name FROM dalgo.lineage('22222222-0000-4000-8000-0000000000a0', '55555555-0000-4000-8000-0000000000a2', 'upstream')$$,
	ARRAY['Joined', 'totals', 'Totals A', 'visits', 'Visits A', 'visits_2024', 'districts', 'Districts'],
	'lineage upstream of Joined: through the transformation reference, the union and the join to both sources');
SELECT set_eq($$SELECT name FROM dalgo.lineage('22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000a1', 'downstream')$$,
	ARRAY['Visits A', 'visits', 'Totals A', 'totals', 'Dashboard A', 'Joined', 'joined', 'Report', 'daily at 06:30 (UTC)'],
	'lineage downstream of Visits A: everything built from it');
SELECT set_eq($$SELECT name FROM dalgo.lineage('22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000a2')$$,
	ARRAY['Districts', 'districts', 'Joined', 'joined', 'Report', 'daily at 06:30 (UTC)'],
	'lineage both ways of Districts');
SELECT results_eq($$SELECT run_order, name FROM dalgo.impact('33333333-0000-4000-8000-0000000000a1')$$,
	$$VALUES (1, 'visits'), (2, 'Totals A'), (3, 'Dashboard A'), (3, 'totals'), (4, 'Joined'), (5, 'Report'),
			 (5, 'joined'), (6, 'daily at 06:30 (UTC)')$$,
	'impact of Visits A: downstream in run order, each after what it reads');
SELECT results_eq($$SELECT run_order, name FROM dalgo.impact('55555555-0000-4000-8000-0000000000a2')$$,
	$$VALUES (1, 'Report'), (1, 'joined'), (2, 'daily at 06:30 (UTC)')$$, 'impact of Joined');
SELECT is_empty($$SELECT * FROM dalgo.impact('88888888-0000-4000-8000-0000000000a2')$$, 'a schedule impacts nothing');
SELECT throws_ok($$SELECT * FROM dalgo.lineage('22222222-0000-4000-8000-0000000000a0', '55555555-0000-4000-8000-0000000000a2', 'sideways')$$,
	'22023', 'direction must be both, upstream or downstream', 'an unknown direction is refused');
SELECT matches(dalgo.lineage_dot(:A), '^digraph lineage \{.*"55555555-0000-4000-8000-0000000000a1" \[label="transformation\\nTotals A", shape=ellipse.*"55555555-0000-4000-8000-0000000000a1" -> "'
	|| (SELECT id FROM g WHERE name = 'totals') || '";.*\}$', 'lineage_dot: nodes with their type and name, and edges');
SELECT is((SELECT count(*) FROM regexp_matches(dalgo.lineage_dot(:A), ' -> ', 'g')), (SELECT sum(cardinality(reads)) FROM g),
	'lineage_dot: one edge per dependency');
UPDATE dalgo.transformations SET name = 'Say "hi" \ bye' WHERE id = '55555555-0000-4000-8000-0000000000a2';
SELECT matches(dalgo.lineage_dot(:A), 'label="transformation\\nSay \\"hi\\" \\\\ bye"', 'lineage_dot: names are escaped for DOT');

-- Another organization: no lineage, impact or picture of A's.
:as_owner_b
SELECT throws_ok($$SELECT * FROM dalgo.lineage('22222222-0000-4000-8000-0000000000a0')$$, '42501',
	'organization 22222222-0000-4000-8000-0000000000a0 does not exist or you are not a member', 'another organization gets no lineage');
SELECT throws_ok($$SELECT * FROM dalgo.impact('33333333-0000-4000-8000-0000000000a1')$$, '22023', NULL, 'nor impact');
SELECT throws_ok($$SELECT dalgo.lineage_dot('22222222-0000-4000-8000-0000000000a0')$$, '42501', NULL, 'nor the picture');
SELECT throws_ok($$SELECT * FROM dalgo.lineage('22222222-0000-4000-8000-0000000000b0', '55555555-0000-4000-8000-0000000000a1')$$, '22023',
	NULL, 'nor find A''s node through its own graph');
SELECT set_eq($$SELECT name FROM dalgo.lineage('22222222-0000-4000-8000-0000000000b0')$$,
	ARRAY['Visits B', 'visits', 'Totals B', 'totals', 'Dashboard B'], 'B''s own graph holds only B''s objects');

SELECT * FROM finish();
ROLLBACK;
