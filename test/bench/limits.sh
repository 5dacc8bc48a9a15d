#!/usr/bin/env bash
# Recipe limits benchmark (run through test/bench/run.sh limits).
#  Compile time against recipe size, up to the limits and past them:
#  - steps: a chain of filter / replace / cast steps, 10, 100 and 500 steps
#    (max_steps), and 1,000 (refused);
#  - flatten_json keys: 10, 100, 1,000 (max_flatten_keys) and 10,000;
#  - replace pairs: 10, 100 (max_replace_pairs) and 1,000.
#  Each figure is the median of 5 batches of compiles in one statement;
#  "us/item" is microseconds per step, key or pair: flat when compilation
#  is linear.  Past a limit the compile is refused, and the figure is the
#  time to refuse.  BENCH_BIG=1 adds 100,000 keys and 4,000 pairs (the
#  issue's attacks: tens of seconds and gigabytes with the 0.1.0 compiler).
#  PGBIN may point at another build (e.g. a copy with 0.1.0's dalgo.so).
set -eo pipefail
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

psql -v big="${BENCH_BIG:-0}" <<'SQL'
\pset footer off
SET client_min_messages = warning;
CREATE EXTENSION dalgo;
INSERT INTO dalgo.organizations (id, name, slug) VALUES ('a0000000-0000-4000-8000-000000000001', 'Bench', 'bench');
SELECT dalgo.ensure_warehouse('a0000000-0000-4000-8000-000000000001') AS schema \gset
CREATE TABLE :"schema".visits ("NGO" text, "SPOC" text, "Month" text, measure1 text, measure2 text, "Indicator" text, data text);

-- The recipe of a kind and size.
CREATE FUNCTION pg_temp.recipe(kind text, n int) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('version', 1, 'source', '{"table": "visits"}'::jsonb, 'steps', CASE kind
		WHEN 'steps' THEN (SELECT jsonb_agg(CASE g % 3
			WHEN 0 THEN '{"type": "filter", "conditions": [{"column": "NGO", "op": "ne", "value": {"val": "x"}}]}'::jsonb
			WHEN 1 THEN '{"type": "replace", "column": "SPOC", "pairs": [{"find": "SPOC", "replace": "S"}]}'::jsonb
			ELSE '{"type": "cast", "columns": {"measure1": "text"}}'::jsonb END ORDER BY g) FROM generate_series(1, n) g)
		WHEN 'flatten_json keys' THEN jsonb_build_array(jsonb_build_object('type', 'flatten_json', 'column', 'data',
			'keys', (SELECT jsonb_agg('k' || g) FROM generate_series(1, n) g)))
		ELSE jsonb_build_array(jsonb_build_object('type', 'replace', 'column', 'NGO',
			'pairs', (SELECT jsonb_agg(jsonb_build_object('find', 'f' || g, 'replace', 'r' || g)) FROM generate_series(1, n) g)))
		END)
$$;

-- Median milliseconds of one compile of the recipe (batches of reps), or the time to refuse it.
CREATE FUNCTION pg_temp.bench(k text, n int, reps int)
	RETURNS TABLE (kind text, items int, recipe_bytes int, sql_bytes int, ms_per_compile numeric, us_per_item numeric, outcome text)
	LANGUAGE plpgsql AS $$
DECLARE
	r jsonb := pg_temp.recipe(k, n);
	t0 timestamptz;
	times numeric[] := '{}';
	len int;
	msg text := 'compiled';
BEGIN
	FOR i IN 1..5 LOOP
		t0 := clock_timestamp();
		BEGIN
			SELECT max(length(dalgo.compile_recipe('a0000000-0000-4000-8000-000000000001', r))) INTO len FROM generate_series(1, reps);
		EXCEPTION WHEN OTHERS THEN
			msg := 'refused: ' || coalesce(substring(SQLERRM FROM 'limit [a-z_]+ = [0-9]+'), left(SQLERRM, 40));
		END;
		times := times || (extract(epoch FROM clock_timestamp() - t0) * 1000 / reps)::numeric;
	END LOOP;
	RETURN QUERY SELECT k, n, pg_column_size(r), len,
		round((SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(times) x)::numeric, 3),
		round((SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(times) x)::numeric * 1000 / n, 2),
		msg;
END
$$;

SELECT * FROM pg_temp.bench('steps', 10, 200)
UNION ALL SELECT * FROM pg_temp.bench('steps', 100, 20)
UNION ALL SELECT * FROM pg_temp.bench('steps', 500, 3)
UNION ALL SELECT * FROM pg_temp.bench('steps', 1000, 1)
UNION ALL SELECT * FROM pg_temp.bench('flatten_json keys', 10, 200)
UNION ALL SELECT * FROM pg_temp.bench('flatten_json keys', 100, 20)
UNION ALL SELECT * FROM pg_temp.bench('flatten_json keys', 1000, 2)
UNION ALL SELECT * FROM pg_temp.bench('flatten_json keys', 10000, 1)
UNION ALL SELECT * FROM pg_temp.bench('flatten_json keys', 100000, 1) WHERE :big = 1
UNION ALL SELECT * FROM pg_temp.bench('replace pairs', 10, 200)
UNION ALL SELECT * FROM pg_temp.bench('replace pairs', 100, 20)
UNION ALL SELECT * FROM pg_temp.bench('replace pairs', 1000, 1)
UNION ALL SELECT * FROM pg_temp.bench('replace pairs', 4000, 1) WHERE :big = 1;
SQL
