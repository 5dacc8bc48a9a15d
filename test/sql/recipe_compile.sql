-- recipe_compile: the golden SQL of every step type of the recipe contract,
-- each followed by its rows on the contract's five-row sample, plus the
-- nine-step chain and an empty recipe.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\i test/fixtures/recipe_setup.sql
\echo '-- empty steps'
SELECT * FROM pg_temp.show('[]');
\echo '-- select'
SELECT * FROM pg_temp.show('[{"type": "select", "columns": ["NGO", "measure1"]}]');
\echo '-- drop'
SELECT * FROM pg_temp.show('[{"type": "drop", "columns": ["data", "Indicator", "Month"]}]');
\echo '-- rename'
SELECT * FROM pg_temp.show('[{"type": "rename", "columns": {"SPOC": "spoc", "measure1": "m1"}}, {"type": "select", "columns": ["spoc", "m1"]}]');
\echo '-- cast'
SELECT * FROM pg_temp.show('[{"type": "cast", "columns": {"measure1": "int", "measure2": "numeric(10,2)"}}, {"type": "select", "columns": ["measure1", "measure2"]}]');
\echo '-- arithmetic (add, sub, mul, div)'
SELECT * FROM pg_temp.show('[{"type": "cast", "columns": {"measure1": "int4", "measure2": "integer"}},
	{"type": "arithmetic", "op": "add", "operands": [{"col": "measure1"}, {"col": "measure2"}], "as": "total"},
	{"type": "arithmetic", "op": "sub", "operands": [{"val": 10}, {"val": -5}], "as": "fifteen"},
	{"type": "arithmetic", "op": "mul", "operands": [{"col": "measure1"}, {"val": -1}], "as": "negated"},
	{"type": "arithmetic", "op": "div", "operands": [{"col": "measure1"}, {"col": "measure2"}], "as": "ratio"},
	{"type": "select", "columns": ["NGO", "total", "fifteen", "negated", "ratio"]}]');
\echo '-- coalesce'
SELECT * FROM pg_temp.show('[{"type": "coalesce", "columns": ["measure2", "SPOC"], "default": {"val": "unknown"}, "as": "o"}, {"type": "select", "columns": ["NGO", "o"]}]');
\echo '-- concat'
SELECT * FROM pg_temp.show('[{"type": "concat", "parts": [{"col": "NGO"}, {"val": " / "}, {"col": "SPOC"}], "as": "label"}, {"type": "select", "columns": ["label"]}]');
\echo '-- flatten_json'
SELECT * FROM pg_temp.show('[{"type": "flatten_json", "column": "data", "keys": ["first name", "age", "1st"]}, {"type": "select", "columns": ["NGO", "data_first_name", "data_age", "data_1st"]}]');
\echo '-- regex_extract'
SELECT * FROM pg_temp.show('[{"type": "regex_extract", "column": "Month", "pattern": "^[0-9]{4}", "as": "year"}, {"type": "select", "columns": ["Month", "year"]}]');
\echo '-- replace (in place)'
SELECT * FROM pg_temp.show('[{"type": "replace", "column": "NGO", "pairs": [{"find": "CRC", "replace": "Child Rights"}, {"find": "IMAGE", "replace": "Image"}]}, {"type": "select", "columns": ["NGO"]}]');
\echo '-- filter (any; in, is_null)'
SELECT * FROM pg_temp.show('[{"type": "filter", "match": "any", "conditions": [{"column": "NGO", "op": "in", "value": [{"val": "CRC"}, {"val": "JTS"}]}, {"column": "SPOC", "op": "is_null"}]}, {"type": "select", "columns": ["NGO", "SPOC"]}]');
\echo '-- filter (all; ne, contains, starts_with, ends_with, not_in, gte, lt)'
SELECT * FROM pg_temp.show('[{"type": "filter", "conditions": [{"column": "NGO", "op": "ne", "value": {"val": "JTS"}},
	{"column": "Indicator", "op": "contains", "value": {"val": "ucat"}}, {"column": "Month", "op": "starts_with", "value": {"val": "2022"}},
	{"column": "Month", "op": "ends_with", "value": {"val": "01"}}, {"column": "SPOC", "op": "not_in", "value": [{"val": "SPOC Z"}]},
	{"column": "measure1", "op": "gte", "value": {"val": "1"}}, {"column": "measure2", "op": "lt", "value": {"val": "9"}}]},
	{"type": "select", "columns": ["NGO", "SPOC"]}]');
\echo '-- group'
SELECT * FROM pg_temp.show('[{"type": "cast", "columns": {"measure1": "int"}}, {"type": "group", "by": ["NGO"], "aggregates": [{"fn": "sum", "column": "measure1", "as": "total"}, {"fn": "count_distinct", "column": "SPOC", "as": "spocs"}, {"fn": "count", "as": "n"}, {"fn": "max", "column": "Month", "as": "last"}]}]');
\echo '-- aggregate'
SELECT * FROM pg_temp.show('[{"type": "cast", "columns": {"measure1": "int"}}, {"type": "aggregate", "aggregates": [{"fn": "sum", "column": "measure1", "as": "total"}, {"fn": "avg", "column": "measure1", "as": "mean"}]}, {"type": "select", "columns": ["NGO", "measure1", "total"]}]');
\echo '-- case'
SELECT * FROM pg_temp.show('[{"type": "cast", "columns": {"measure1": "int"}}, {"type": "case", "when": [{"if": {"column": "measure1", "op": "between", "value": [{"val": 0}, {"val": 5}]}, "then": {"val": "low"}}, {"if": {"column": "measure1", "op": "gt", "value": {"val": 10}}, "then": {"val": "high"}}], "else": {"col": "SPOC"}, "as": "bucket"}, {"type": "select", "columns": ["NGO", "measure1", "bucket"]}]');
\echo '-- join'
SELECT * FROM pg_temp.show('[{"type": "select", "columns": ["NGO", "Month"]}, {"type": "join", "with": {"table": "ngos"}, "how": "left", "on": [{"left": "NGO", "right": "ngo"}], "columns": ["district", "Month"]}]');
\echo '-- union'
SELECT * FROM pg_temp.show('[{"type": "select", "columns": ["NGO", "SPOC", "measure1"]}, {"type": "union", "with": [{"table": "visits_2023"}]}]');
\echo '-- pivot (count, then sum with fn)'
SELECT * FROM pg_temp.show('[{"type": "pivot", "column": "NGO", "values": ["CRC", "IMAGE", "JTS"], "group_by": ["Month"]}]');
SELECT * FROM pg_temp.show('[{"type": "cast", "columns": {"measure1": "int"}}, {"type": "pivot", "column": "NGO", "values": ["CRC", "JTS"], "group_by": ["Indicator"], "fn": "sum", "value_column": "measure1"}]');
\echo '-- unpivot'
SELECT * FROM pg_temp.show('[{"type": "unpivot", "columns": ["measure1", "measure2"], "keep": ["NGO"], "cast_to": "int"}, {"type": "filter", "conditions": [{"column": "NGO", "op": "eq", "value": {"val": "CRC"}}]}]');
\echo '-- function'
SELECT * FROM pg_temp.show('[{"type": "function", "fn": "upper", "args": [{"col": "SPOC"}], "as": "spoc_upper"}, {"type": "function", "fn": "left", "args": [{"col": "Month"}, {"val": 4}], "as": "year"}, {"type": "select", "columns": ["spoc_upper", "year"]}]');
\echo '-- sort, distinct, limit'
SELECT * FROM pg_temp.show('[{"type": "select", "columns": ["NGO", "Month"]}, {"type": "sort", "by": [{"column": "NGO", "desc": true}, {"column": "Month"}]}, {"type": "limit", "n": 3}]');
SELECT * FROM pg_temp.show('[{"type": "select", "columns": ["NGO"]}, {"type": "distinct"}]');
SELECT * FROM pg_temp.show('[{"type": "select", "columns": ["NGO", "Month"]}, {"type": "sort", "by": [{"column": "NGO"}, {"column": "Month"}]}, {"type": "distinct", "columns": ["NGO"]}]');
\echo '-- sql (raw, with dalgo.allow_raw_sql on)'
SET LOCAL dalgo.allow_raw_sql = on;
SELECT * FROM pg_temp.show('[{"type": "sql", "select": "\"NGO\", count(*) AS n", "tail": "GROUP BY \"NGO\""}, {"type": "filter", "conditions": [{"column": "n", "op": "gt", "value": {"val": 1}}]}]');
\echo '-- the nine-step chain'
SELECT * FROM pg_temp.show('[{"type": "cast", "columns": {"measure1": "int", "measure2": "int"}},
	{"type": "arithmetic", "op": "add", "operands": [{"col": "measure1"}, {"col": "measure2"}], "as": "total"},
	{"type": "rename", "columns": {"SPOC": "spoc"}},
	{"type": "drop", "columns": ["data", "Indicator"]},
	{"type": "coalesce", "columns": ["spoc"], "default": {"val": "nobody"}, "as": "owner"},
	{"type": "concat", "parts": [{"col": "NGO"}, {"val": " / "}, {"col": "owner"}], "as": "label"},
	{"type": "regex_extract", "column": "Month", "pattern": "^[0-9]{4}", "as": "year"},
	{"type": "replace", "column": "label", "pairs": [{"find": "CRC", "replace": "Child Rights"}]},
	{"type": "filter", "conditions": [{"column": "total", "op": "gte", "value": {"val": 10}}]}]');
ROLLBACK;
