-- recipe_errors: injection attempts compile to harmless SQL or fail, and
-- every malformed recipe gets a clean 22023 error naming step, type and field.
\set ECHO none
\i test/fixtures/tap_setup.sql
\set VERBOSITY default
BEGIN;
\i test/fixtures/two_orgs.sql
\i test/fixtures/recipe_setup.sql
\set ON_ERROR_STOP false
\set ON_ERROR_ROLLBACK on
\echo '-- injection: a filter value x'' OR ''1''=''1 stays a literal (no rows match)'
SELECT * FROM pg_temp.show('[{"type": "filter", "conditions": [{"column": "NGO", "op": "eq", "value": {"val": "x'' OR ''1''=''1"}}]}]');
\echo '-- injection: an "as" that tries to close the identifier stays one column name'
SELECT * FROM pg_temp.show('[{"type": "concat", "parts": [{"col": "NGO"}], "as": "c\", current_user AS \"who"}, {"type": "select", "columns": ["c\", current_user AS \"who"]}]');
\echo '-- injection: 10 --5 stays arithmetic'
SELECT * FROM pg_temp.show('[{"type": "arithmetic", "op": "sub", "operands": [{"val": 10}, {"val": -5}], "as": "r"}, {"type": "select", "columns": ["r"]}, {"type": "limit", "n": 1}]');
\echo '-- names longer than 63 bytes'
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "concat", "parts": [{"col": "NGO"}], "as": "aaaaaaaaaabbbbbbbbbbccccccccccddddddddddeeeeeeeeeeffffffffffabcd"}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "aaaaaaaaaabbbbbbbbbbccccccccccddddddddddeeeeeeeeeeffffffffffabcd"}, "steps": []}');
\echo '-- functions outside the whitelist'
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "function", "fn": "pg_read_file", "args": [{"val": "/etc/passwd"}], "as": "x"}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "function", "fn": "pg_catalog.upper", "args": [{"col": "NGO"}], "as": "x"}]}');
\echo '-- relations outside the organization''s warehouse'
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "pg_catalog.pg_authid"}, "steps": []}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "pg_authid"}, "steps": []}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "../x"}, "steps": []}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "org_222222220000400080000000000000b0\".\"visits"}, "steps": []}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"source_id": "33333333-0000-4000-8000-0000000000b1"}, "steps": []}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"transformation_id": "55555555-0000-4000-8000-0000000000b1"}, "steps": []}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "join", "with": {"source_id": "33333333-0000-4000-8000-0000000000b1"}, "on": [{"left": "NGO", "right": "NGO"}], "columns": []}]}');
\echo '-- types'
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "cast", "columns": {"measure1": "int; drop table x"}}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "cast", "columns": {"measure1": "no_such_type"}}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "cast", "columns": {"measure1": "anyelement"}}]}');
\echo '-- operators, aggregates and patterns come from fixed lists'
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "filter", "conditions": [{"column": "NGO", "op": "= 1 OR 1 =", "value": {"val": 1}}]}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "group", "by": ["NGO"], "aggregates": [{"fn": "string_agg", "column": "SPOC", "as": "x"}]}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "regex_extract", "column": "Month", "pattern": "([0-9]"}]}');
\echo '-- malformed shapes'
SELECT dalgo.compile_recipe(:A, '[1, 2]');
SELECT dalgo.compile_recipe(:A, '"recipe"');
SELECT dalgo.compile_recipe(:A, '{"version": 2, "source": {"table": "visits"}, "steps": []}');
SELECT dalgo.compile_recipe(:A, '{"version": "1", "source": {"table": "visits"}, "steps": []}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": {}}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [], "extra": 1}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits", "source_id": "x"}, "steps": []}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"columns": ["NGO"]}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "explode"}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [42]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "select", "columns": "NGO"}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "select", "columns": [1]}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "select", "columns": ["NGO"], "where": "1=1"}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "limit", "n": "10"}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "limit", "n": 1.5}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "flatten_json", "column": "data", "keys": ["a"], "keep_source": "yes"}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "filter", "conditions": [{"column": "agee", "op": "eq", "value": {"val": 1}}]}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "rename", "columns": {"NGO": "SPOC"}}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "arithmetic", "op": "div", "operands": [{"col": "measure1"}, {"col": "measure2"}, {"val": 2}], "as": "x"}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "filter", "conditions": [{"column": "NGO", "op": "eq", "value": {"col": "NGO", "val": 1}}]}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "union", "with": [{"table": "ngos"}]}, {"type": "union", "with": [{"table": "visits"}]}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "sql", "select": "1"}]}');
SET LOCAL dalgo.allow_raw_sql = on;
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "sql", "select": "1; DROP TABLE x; SELECT 1"}]}');
SELECT dalgo.compile_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "sql", "select": "1", "tail": ") x; DELETE FROM dalgo.users; SELECT (1"}]}');
RESET dalgo.allow_raw_sql;
SELECT dalgo.compile_recipe(:A, jsonb_build_object('version', 1, 'source', '{"table": "visits"}'::jsonb,
	'steps', (SELECT jsonb_agg('{"type": "limit", "n": 5}'::jsonb) FROM generate_series(1, 1000))));
SELECT length(dalgo.compile_recipe(:A, jsonb_build_object('version', 1, 'source', '{"table": "visits"}'::jsonb,
	'steps', (SELECT jsonb_agg('{"type": "limit", "n": 5}'::jsonb) FROM generate_series(1, 500))))) > 0 AS five_hundred_steps_compile;
\echo '-- a member of A cannot compile for B, see B''s tables or preview them'
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.compile_recipe(:B, '{"version": 1, "source": {"table": "visits"}, "steps": []}');
SELECT * FROM dalgo.preview_recipe(:B, '{"version": 1, "source": {"table": "visits"}, "steps": []}');
SELECT * FROM dalgo.read_warehouse_table(:B, 'visits');
SELECT count(*) FROM org_222222220000400080000000000000a0.visits;
SELECT count(*) AS own_rows FROM dalgo.read_warehouse_table(:A, 'visits');
RESET ROLE;
\echo '-- dalgo.statement_timeout cancels long recipe SQL'
RESET dalgo.user_id;
SET LOCAL dalgo.allow_raw_sql = on;
SET LOCAL dalgo.statement_timeout = 200;
\set VERBOSITY terse
SELECT * FROM dalgo.preview_recipe(:A, '{"version": 1, "source": {"table": "visits"}, "steps": [{"type": "sql", "select": "pg_sleep(5) AS s"}]}');
ROLLBACK;
