-- recipe_limits: every limit on what a recipe may ask of the server is
-- refused with program_limit_exceeded (54000) and a message that names the
-- limit and the figure (docs/recipes-limits.md).  Each line prints the
-- SQLSTATE and the message of one attempt, made by a viewer of org A (the
-- least role that may compile and preview).
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\i test/fixtures/recipe_setup.sql
-- a 1,500-column table with long names, in org A's warehouse
SELECT format('CREATE TABLE org_222222220000400080000000000000a0.wide (%s)',
			  string_agg(format('%I text', repeat('c', 50) || g), ', ')) FROM generate_series(1, 1500) g \gexec
ALTER TABLE org_222222220000400080000000000000a0.wide OWNER TO dalgo_wh_222222220000400080000000000000a0;
INSERT INTO org_222222220000400080000000000000a0.wide (cccccccccccccccccccccccccccccccccccccccccccccccccc1) VALUES (repeat('x', 2000));
CREATE FUNCTION pg_temp.try(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ' ' || SQLERRM;
END
$$;
CREATE FUNCTION pg_temp.compile(steps jsonb, source text DEFAULT 'visits') RETURNS text LANGUAGE sql AS $$
	SELECT pg_temp.try(format('SELECT dalgo.compile_recipe(%L, %L)', '22222222-0000-4000-8000-0000000000a0',
		jsonb_build_object('version', 1, 'source', jsonb_build_object('table', source), 'steps', steps)))
$$;
CREATE FUNCTION pg_temp.preview(steps jsonb) RETURNS text LANGUAGE sql AS $$
	SELECT pg_temp.try(format('SELECT count(*) FROM dalgo.preview_recipe(%L, %L, 100)', '22222222-0000-4000-8000-0000000000a0',
		jsonb_build_object('version', 1, 'source', '{"table": "visits"}'::jsonb, 'steps', steps)))
$$;
INSERT INTO dalgo.users (id, email, full_name) VALUES ('11111111-0000-4000-8000-000000000009', 'viewer.a@example.org', 'Viewer A');
INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000009', 'viewer');
GRANT EXECUTE ON FUNCTION pg_temp.try(text), pg_temp.compile(jsonb, text), pg_temp.preview(jsonb) TO dalgo_authenticated;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000009';
SET LOCAL ROLE dalgo_authenticated;
\pset tuples_only false

\echo '-- max_recipe_bytes: a 1 MB recipe'
SELECT pg_temp.compile(jsonb_build_array(jsonb_build_object('type', 'filter', 'conditions', jsonb_build_array(
	jsonb_build_object('column', 'NGO', 'op', 'in', 'value', (SELECT jsonb_agg(jsonb_build_object('val', 'value number ' || g)) FROM generate_series(1, 40000) g))))));
\echo '-- max_nesting_depth'
SELECT pg_temp.compile(jsonb_build_array(jsonb_build_object('type', 'filter', 'conditions',
	(SELECT string_agg('[', '') || '1' || string_agg(']', '') FROM generate_series(1, 40))::jsonb)));
\echo '-- max_string_bytes'
SELECT pg_temp.compile(jsonb_build_array(jsonb_build_object('type', 'filter', 'conditions', jsonb_build_array(
	jsonb_build_object('column', 'NGO', 'op', 'eq', 'value', jsonb_build_object('val', repeat('x', 16385)))))));
\echo '-- max_steps'
SELECT pg_temp.compile((SELECT jsonb_agg('{"type": "limit", "n": 5}'::jsonb) FROM generate_series(1, 501)));
\echo '-- max_flatten_keys: 100,000 keys (27-43 s of CPU on 0.1.0)'
SELECT pg_temp.compile(jsonb_build_array(jsonb_build_object('type', 'flatten_json', 'column', 'data',
	'keys', (SELECT jsonb_agg('k' || g) FROM generate_series(1, 1001) g))));
\echo '-- max_replace_pairs: 4,000 pairs (1.7 GB on 0.1.0)'
SELECT pg_temp.compile(jsonb_build_array(jsonb_build_object('type', 'replace', 'column', 'NGO',
	'pairs', (SELECT jsonb_agg(jsonb_build_object('find', 'a' || g, 'replace', 'b')) FROM generate_series(1, 4000) g))));
\echo '-- max_list_items'
SELECT pg_temp.compile(jsonb_build_array(jsonb_build_object('type', 'filter', 'conditions',
	(SELECT jsonb_agg('{"column": "NGO", "op": "is_null"}'::jsonb) FROM generate_series(1, 1001)))));
SELECT pg_temp.compile(jsonb_build_array(jsonb_build_object('type', 'rename', 'columns',
	(SELECT jsonb_object_agg('c' || g, 'd' || g) FROM generate_series(1, 1001) g))));
\echo '-- max_columns'
SELECT pg_temp.compile(jsonb_build_array(jsonb_build_object('type', 'flatten_json', 'column', 'cccccccccccccccccccccccccccccccccccccccccccccccccc1',
	'keys', (SELECT jsonb_agg('k' || g) FROM generate_series(1, 200) g))), 'wide');
SELECT pg_temp.compile(jsonb_build_array(jsonb_build_object('type', 'flatten_json', 'column', 'cccccccccccccccccccccccccccccccccccccccccccccccccc1',
	'keep_source', true, 'keys', (SELECT jsonb_agg('k' || g) FROM generate_series(1, 99) g)), '{"type": "union", "with": [{"table": "visits"}]}'::jsonb), 'wide');
\echo '-- max_sql_bytes'
SELECT pg_temp.compile((SELECT jsonb_agg('{"type": "filter", "conditions": [{"column": "cccccccccccccccccccccccccccccccccccccccccccccccccc1", "op": "is_null"}]}'::jsonb)
	FROM generate_series(1, 60)), 'wide');
\echo '-- max_type_checks (through preview_recipe, which may read the warehouse to type-check)'
SELECT pg_temp.preview((SELECT jsonb_agg(x ORDER BY g, k) FROM generate_series(1, 9) g, LATERAL (VALUES
	(1, jsonb_build_object('type', 'arithmetic', 'op', 'add', 'operands', '[{"val": 1}, {"val": 2}]'::jsonb, 'as', 'a' || g)),
	(2, '{"type": "union", "with": [{"table": "visits"}]}'::jsonb)) v(k, x)));
\echo '-- within the limits: 1,000 keys, 100 pairs, 500 steps, 1,000 items compile'
SELECT pg_temp.compile(jsonb_build_array(jsonb_build_object('type', 'flatten_json', 'column', 'data',
	'keys', (SELECT jsonb_agg('k' || g) FROM generate_series(1, 1000) g)))) LIKE 'no error' AS thousand_keys;
SELECT pg_temp.compile(jsonb_build_array(jsonb_build_object('type', 'replace', 'column', 'NGO',
	'pairs', (SELECT jsonb_agg(jsonb_build_object('find', 'a' || g, 'replace', 'b')) FROM generate_series(1, 100) g)))) AS hundred_pairs;
SELECT pg_temp.compile((SELECT jsonb_agg('{"type": "limit", "n": 5}'::jsonb) FROM generate_series(1, 500))) AS five_hundred_steps;

\echo '-- max_value_bytes: values built by concat, concat_ws, replace, lpad and rpad'
SELECT pg_temp.preview('[{"type": "function", "fn": "lpad", "args": [{"col": "NGO"}, {"val": 100000000}], "as": "p"}]');
SELECT pg_temp.preview('[{"type": "function", "fn": "rpad", "args": [{"col": "NGO"}, {"val": 70000}, {"val": "ab"}], "as": "p"}]');
SELECT pg_temp.preview('[{"type": "function", "fn": "lpad", "args": [{"col": "NGO"}, {"val": 40000}], "as": "p"},
	{"type": "concat", "parts": [{"col": "p"}, {"col": "p"}], "as": "pp"}]');
SELECT pg_temp.preview('[{"type": "function", "fn": "lpad", "args": [{"col": "NGO"}, {"val": 40000}], "as": "p"},
	{"type": "function", "fn": "concat_ws", "args": [{"val": "-"}, {"col": "p"}, {"col": "p"}], "as": "pp"}]');
SELECT pg_temp.preview('[{"type": "function", "fn": "lpad", "args": [{"col": "NGO"}, {"val": 40000}], "as": "p"},
	{"type": "replace", "column": "p", "pairs": [{"find": " ", "replace": "xx"}]}]');
SELECT pg_temp.preview('[{"type": "function", "fn": "lpad", "args": [{"col": "NGO"}, {"val": 40000}], "as": "p"},
	{"type": "function", "fn": "replace", "args": [{"col": "p"}, {"val": " "}, {"val": "xx"}], "as": "q"}]');
\echo '-- within max_value_bytes: the same shapes, smaller'
SELECT pg_temp.preview('[{"type": "function", "fn": "lpad", "args": [{"col": "NGO"}, {"val": 30000}], "as": "p"},
	{"type": "concat", "parts": [{"col": "p"}, {"col": "p"}], "as": "pp"},
	{"type": "replace", "column": "p", "pairs": [{"find": " ", "replace": "xy"}]},
	{"type": "function", "fn": "rpad", "args": [{"col": "NGO"}, {"val": 65536}], "as": "r"},
	{"type": "function", "fn": "lpad", "args": [{"col": "NGO"}, {"val": 1}], "as": "l"}]') AS within_limits;
RESET ROLE;

\echo '-- dalgo.max_result_bytes caps what one preview or read returns (superuser-only)'
SET LOCAL dalgo.max_result_bytes = '1kB';
SET LOCAL ROLE dalgo_authenticated;
SELECT pg_temp.preview('[{"type": "function", "fn": "lpad", "args": [{"col": "NGO"}, {"val": 600}], "as": "p"}]');
SELECT pg_temp.try(format('SELECT count(*) FROM dalgo.read_warehouse_table(%L, %L)', '22222222-0000-4000-8000-0000000000a0', 'wide'));
SELECT pg_temp.preview('[{"type": "select", "columns": ["NGO"]}]') AS small_result;
SELECT pg_temp.try('SET dalgo.max_result_bytes = ''1GB''');
RESET ROLE;
ROLLBACK;
