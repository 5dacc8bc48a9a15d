-- recipe_fuzz: 10,000 random and mutated recipes through
-- compile_recipe.  Every one either compiles or fails with a recipe error
-- (22023) or a permission error; none crashes the backend, and the
-- backend answers afterwards.  The generator is seeded, so runs repeat.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\i test/fixtures/recipe_setup.sql
SELECT setseed(0.4242) \g /dev/null
CREATE TEMP TABLE fuzz_result (kind text, sqlstate text);

-- Random JSON values, biased toward the shapes recipes use.
CREATE FUNCTION pg_temp.rand_value(depth int) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	names text[] := ARRAY['NGO', 'SPOC', 'Month', 'measure1', 'measure2', 'Indicator', 'data', 'x', '', '"', 'a"b', 'visits',
						  'ngos', 'pg_authid', '../x', repeat('z', 70), 'int', 'text', 'eq', 'in', 'sum', 'upper', 'all', 'any', 'é', E'\\'];
	r float := random();
BEGIN
	IF depth > 3 OR r < 0.35 THEN
		RETURN to_jsonb(names[1 + floor(random() * array_length(names, 1))::int]);
	ELSIF r < 0.45 THEN
		RETURN to_jsonb((random() * 200 - 100)::int);
	ELSIF r < 0.5 THEN
		RETURN (ARRAY['true', 'false', 'null', '1.5', '-0', '1e400'])[1 + floor(random() * 6)::int]::jsonb;
	ELSIF r < 0.75 THEN
		RETURN (SELECT coalesce(jsonb_agg(pg_temp.rand_value(depth + 1)), '[]') FROM generate_series(1, floor(random() * 4)::int));
	ELSE
		RETURN (SELECT coalesce(jsonb_object_agg(k, pg_temp.rand_value(depth + 1)), '{}')
				FROM (SELECT (ARRAY['col', 'val', 'column', 'op', 'value', 'as', 'columns', 'by', 'fn', 'args', 'n',
									'keys', 'pattern', 'pairs', 'find', 'replace', 'when', 'if', 'then', 'else', 'with',
									'on', 'left', 'right', 'table', 'source_id', 'transformation_id', 'aggregates',
									'values', 'group_by', 'match', 'conditions', 'desc', 'default', 'parts'])[1 + floor(random() * 35)::int] k
					  FROM generate_series(1, floor(random() * 5)::int)) keys);
	END IF;
END
$$;

-- A random step of a known type with random fields.
CREATE FUNCTION pg_temp.rand_step() RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('type', (ARRAY['select', 'drop', 'rename', 'cast', 'arithmetic', 'coalesce', 'concat', 'flatten_json',
		'regex_extract', 'replace', 'filter', 'group', 'aggregate', 'case', 'join', 'union', 'pivot', 'unpivot', 'function',
		'sort', 'distinct', 'limit', 'sql', 'bogus'])[1 + floor(random() * 24)::int])
		|| CASE WHEN jsonb_typeof(v) = 'object' THEN v - 'type' ELSE '{}' END
	FROM (SELECT pg_temp.rand_value(1) AS v) x
$$;

-- Valid recipes from the golden test, to mutate.
CREATE TEMP TABLE seeds (r jsonb);
INSERT INTO seeds VALUES
	('{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "filter", "match": "any", "conditions": [{"column": "NGO", "op": "in", "value": [{"val": "CRC"}]}, {"column": "SPOC", "op": "is_null"}]}]}'),
	('{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "cast", "columns": {"measure1": "int"}}, {"type": "group", "by": ["NGO"], "aggregates": [{"fn": "sum", "column": "measure1", "as": "total"}]}]}'),
	('{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "join", "with": {"table": "ngos"}, "how": "left", "on": [{"left": "NGO", "right": "ngo"}], "columns": ["district"]}]}'),
	('{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "unpivot", "columns": ["measure1", "measure2"], "keep": ["NGO"]}, {"type": "pivot", "column": "field_name", "values": ["measure1"], "group_by": ["NGO"]}]}'),
	('{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "case", "when": [{"if": {"column": "NGO", "op": "eq", "value": {"val": "CRC"}}, "then": {"val": 1}}], "else": {"val": 0}, "as": "c"}]}');

DO $$
DECLARE
	r jsonb;
	state text;
	k int;
BEGIN
	FOR i IN 1..10000 LOOP
		IF i % 3 = 0 THEN
			-- a wholly random document
			r := pg_temp.rand_value(0);
		ELSIF i % 3 = 1 THEN
			-- a recipe of random steps
			r := jsonb_build_object('version', 1, 'source', '{"table": "visits"}'::jsonb,
				'steps', (SELECT jsonb_agg(pg_temp.rand_step()) FROM generate_series(1, 1 + floor(random() * 4)::int)));
		ELSE
			-- a valid recipe with one field of one step replaced
			SELECT s.r INTO r FROM seeds s ORDER BY random() LIMIT 1;
			k := floor(random() * jsonb_array_length(r->'steps'))::int;
			r := jsonb_set(r, ARRAY['steps', k::text, (SELECT key FROM jsonb_object_keys(r->'steps'->k) key ORDER BY random() LIMIT 1)],
						   pg_temp.rand_value(1));
		END IF;
		BEGIN
			PERFORM dalgo.compile_recipe('22222222-0000-4000-8000-0000000000a0', r);
			INSERT INTO fuzz_result VALUES ('compiled', NULL);
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
			INSERT INTO fuzz_result VALUES ('error', state);
		END;
	END LOOP;
END
$$;

SELECT plan(4);
SELECT is((SELECT count(*) FROM fuzz_result), 10000::bigint, '10,000 fuzzed recipes, and the backend is still here');
SELECT is_empty($$SELECT DISTINCT sqlstate FROM fuzz_result WHERE kind = 'error' AND sqlstate NOT IN ('22023', '42501')$$,
	'every failure is a recipe error (22023) or a permission error');
SELECT ok((SELECT count(*) FROM fuzz_result WHERE kind = 'compiled') > 20, 'some mutated recipes still compile (the deep paths are reached)');
SELECT ok((SELECT count(*) FROM fuzz_result WHERE kind = 'error') > 5000, 'and most are refused cleanly');
SELECT * FROM finish();
ROLLBACK;
