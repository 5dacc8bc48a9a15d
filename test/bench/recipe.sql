-- Recipe benchmark.
--  1. Compile time of a 10-step recipe: 10,000 compiles in one statement,
--     repeated 7 times; the median microseconds per compile.
--  2. Runtime of the compiled SQL against the hand-written equivalent over
--     1,000,000 rows, interleaved, median of 7 runs each.
\pset footer off
SET client_min_messages = warning;
CREATE EXTENSION dalgo;
INSERT INTO dalgo.organizations (id, name, slug) VALUES ('a0000000-0000-4000-8000-000000000001', 'Bench', 'bench');
-- 0.1.0 named it warehouse_schema (test/bench/versions.sh compares the two).
SELECT extversion = '0.1.0' AS v010 FROM pg_extension WHERE extname = 'dalgo' \gset
\if :v010
SELECT dalgo.warehouse_schema('a0000000-0000-4000-8000-000000000001') AS schema \gset
\else
SELECT dalgo.ensure_warehouse('a0000000-0000-4000-8000-000000000001') AS schema \gset
\endif
CREATE TABLE :"schema".visits AS
	SELECT (ARRAY['CRC', 'IMAGE', 'JTS', 'ABC', 'XYZ'])[1 + g % 5] AS "NGO",
		   'SPOC ' || (g % 17) AS "SPOC", '2022-' || lpad((1 + g % 12)::text, 2, '0') AS "Month",
		   (g % 100)::text AS measure1, CASE WHEN g % 7 = 0 THEN NULL ELSE (g % 13)::text END AS measure2,
		   (ARRAY['Education', 'Health', 'Livelihood'])[1 + g % 3] AS "Indicator"
	FROM generate_series(1, 1000000) g;
VACUUM ANALYZE :"schema".visits;

CREATE FUNCTION pg_temp.median_ms(q text, runs int) RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz;
	times numeric[] := '{}';
BEGIN
	EXECUTE q;
	FOR i IN 1..runs LOOP
		t0 := clock_timestamp();
		EXECUTE q;
		times := times || (extract(epoch FROM clock_timestamp() - t0) * 1000)::numeric;
	END LOOP;
	RETURN (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(times) x)::numeric(12, 3);
END $$;

-- The ten steps: cast, filter, arithmetic, coalesce, concat, regex_extract, replace, rename, drop, group.
\set recipe '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "cast", "columns": {"measure1": "int", "measure2": "int"}}, {"type": "filter", "conditions": [{"column": "measure1", "op": "gte", "value": {"val": 10}}]}, {"type": "arithmetic", "op": "add", "operands": [{"col": "measure1"}, {"col": "measure2"}], "as": "total"}, {"type": "coalesce", "columns": ["measure2"], "default": {"val": 0}, "as": "m2"}, {"type": "concat", "parts": [{"col": "NGO"}, {"val": " / "}, {"col": "SPOC"}], "as": "label"}, {"type": "regex_extract", "column": "Month", "pattern": "^[0-9]{4}", "as": "year"}, {"type": "replace", "column": "NGO", "pairs": [{"find": "CRC", "replace": "Child Rights"}]}, {"type": "rename", "columns": {"Indicator": "indicator"}}, {"type": "drop", "columns": ["label"]}, {"type": "group", "by": ["NGO", "year"], "aggregates": [{"fn": "sum", "column": "total", "as": "total"}, {"fn": "count", "as": "n"}, {"fn": "avg", "column": "m2", "as": "avg_m2"}]}]}'

SELECT dalgo.compile_recipe('a0000000-0000-4000-8000-000000000001', :'recipe') AS compiled \gset
\echo 'compiled SQL:'
\echo :compiled

SELECT round(pg_temp.median_ms(format('SELECT count(dalgo.compile_recipe(%L, %L)) FROM generate_series(1, 10000)',
	'a0000000-0000-4000-8000-000000000001', :'recipe'), 7) * 1000 / 10000, 1) AS compile_us_per_recipe \gset

\set handwritten 'SELECT replace("NGO", ''CRC'', ''Child Rights'') AS "NGO", substring("Month" FROM ''^[0-9]{4}'') AS year, sum(coalesce(measure1::int, 0) + coalesce(measure2::int, 0)) AS total, count(*) AS n, avg(coalesce(measure2::int, 0)) AS avg_m2 FROM ' :schema '.visits WHERE measure1::int >= 10 GROUP BY 1, 2'

SELECT set_config('bench.compiled', :'compiled', false), set_config('bench.hand', :'handwritten', false) \g /dev/null
CREATE TEMP TABLE runs (kind text, ms numeric);
DO $$
DECLARE
	compiled text := current_setting('bench.compiled');
	hand text := current_setting('bench.hand');
BEGIN
	FOR i IN 1..7 LOOP
		INSERT INTO runs SELECT 'compiled', pg_temp.median_ms('SELECT count(*) FROM (' || compiled || ') q', 1);
		INSERT INTO runs SELECT 'hand-written', pg_temp.median_ms('SELECT count(*) FROM (' || hand || ') q', 1);
	END LOOP;
END $$;

\echo
SELECT :compile_us_per_recipe AS "compile: median us per 10-step recipe (target <= 100)";
SELECT c.ms AS compiled_ms, h.ms AS handwritten_ms, round(c.ms / h.ms, 3) AS "ratio compiled / hand-written (target <= 1.05)"
FROM (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric(12, 1) AS ms FROM runs WHERE kind = 'compiled') c,
	 (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric(12, 1) AS ms FROM runs WHERE kind = 'hand-written') h;
