-- typed_sync: a sync types its columns from the data (boolean, bigint,
-- numeric, date, timestamptz, jsonb, else text), and a value that breaks a
-- type, even halfway down the column, keeps that column text without
-- failing the sync; config.infer_types false keeps text.  The typed table
-- is built under a private name and swapped in: a failed or oversized sync
-- leaves the previous table and its rows as they were.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_super 'RESET ROLE; SET LOCAL dalgo.user_id = '''';'
SELECT plan(26);

-- The checks behind inference: a value is accepted only if its cast cannot fail.
SELECT is(dalgo_internal.value_kinds('9223372036854775807') & 2, 2, 'the largest bigint is a bigint');
SELECT is(dalgo_internal.value_kinds('9223372036854775808') & 6, 4, 'one more is only numeric');
SELECT is(dalgo_internal.value_kinds('-9223372036854775808') & 2, 2, 'the smallest bigint is a bigint');
SELECT is(dalgo_internal.value_kinds(repeat('[', 100000)) & 32, 0, 'a value nested past any sane depth is text, not an error');
SELECT is(dalgo_internal.value_kinds(repeat('[', 50) || repeat(']', 50)) & 32, 32, 'a value nested 50 deep is still jsonb');
SELECT is(dalgo_internal.value_kinds('007'), 0, 'a number with leading zeros is an identifier: text');
SELECT is(dalgo_internal.value_kinds('2021-02-29'), 0, 'a day that does not exist is not a date');
SELECT is(dalgo_internal.value_kinds('2024-02-29 24:00'), 0, 'nor an hour that does not');
SELECT is(dalgo_internal.value_kinds('2024-02-29T23:59:59.5+05:30'), 16, 'an ISO timestamp with an offset is a timestamptz');
SELECT is(dalgo_internal.value_kinds('{"a": [1, 2]}'), 32, 'an object is jsonb');
SELECT is(dalgo_internal.value_kinds('"quoted"'), 0, 'a JSON scalar stays text');
SELECT is(dalgo_internal.value_kinds(''), NULL, 'the empty string counts as missing');

-- A csv file of 2000 rows: "late" is an integer until row 1500, "huge" is
-- JSON that passes the check but not jsonb's numeric range.
SELECT current_setting('data_directory') || '/typed_' || pg_backend_pid() AS csvdir \gset
\set dir_a :csvdir '/org_222222220000400080000000000000a0'
SELECT format('mkdir -p %s', :'dir_a') AS setup \gset
COPY (SELECT WHERE false) TO PROGRAM :'setup';
\set f :dir_a '/typed.csv'
COPY (SELECT g AS id, g * 1.25 AS price, g % 2 = 0 AS active, to_char(date '2024-01-01' + g, 'YYYY-MM-DD') AS day,
			 CASE WHEN g % 2 = 0 THEN to_char(date '2024-01-01' + g, 'YYYY-MM-DD') ELSE '2024-03-01T10:00:00Z' END AS seen,
			 jsonb_build_object('n', g) AS meta, lpad(g::text, 5, '0') AS code,
			 CASE WHEN g = 1500 THEN 'n/a' ELSE g::text END AS late,
			 CASE WHEN g = 2000 THEN '[1e1000000]' ELSE '[1]' END AS huge,
			 CASE WHEN g % 3 = 0 THEN '' ELSE 'x' || g END AS label, NULL::text AS empty
	  FROM generate_series(1, 2000) g) TO :'f' WITH (FORMAT csv, HEADER true);
SET LOCAL dalgo.csv_dir = :'csvdir';
:as_owner_a
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000a7', :A, 'Typed', 'csv', '{"path": "typed.csv"}', 'typed'),
	('33333333-0000-4000-8000-0000000000a8', :A, 'Plain', 'csv', '{"path": "typed.csv", "infer_types": false}', 'plain');
:as_super
INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency) VALUES
	('88888888-0000-4000-8000-0000000000a7', :A, '33333333-0000-4000-8000-0000000000a7', 'daily'),
	('88888888-0000-4000-8000-0000000000a8', :A, '33333333-0000-4000-8000-0000000000a8', 'daily');
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a7') AS run1 \gset
SELECT is((SELECT (status, rows_synced, error_message)::text FROM dalgo.sync_runs WHERE id = :'run1'), '(success,2000,)',
	'the csv sync succeeds');
SELECT is((SELECT string_agg(column_name || ' ' || column_type, ', ' ORDER BY column_order) FROM dalgo.source_schemas
		   WHERE source_id = '33333333-0000-4000-8000-0000000000a7'),
	'id bigint, price numeric, active boolean, day date, seen timestamp with time zone, meta jsonb, code text, late text, huge text, label text, empty text',
	'each column has its inferred type in source_schemas; a value breaking a type halfway keeps that column text');
:as_super
SELECT is((SELECT string_agg(format_type(atttypid, atttypmod), ', ' ORDER BY attnum) FROM pg_attribute
		   WHERE attrelid = 'org_222222220000400080000000000000a0.typed'::regclass AND attnum > 0),
	'bigint, numeric, boolean, date, timestamp with time zone, jsonb, text, text, text, text, text',
	'and in the warehouse table itself');
SELECT is((SELECT (sum(id), sum(price), count(*) FILTER (WHERE active), max(day) = date '2029-06-23', count(*) FILTER (WHERE meta ? 'n'),
				   min(code), count(*) FILTER (WHERE late = 'n/a'), count(*) FILTER (WHERE huge = '[1e1000000]'))::text
		   FROM org_222222220000400080000000000000a0.typed),
	'(2001000,2501250.00,1000,t,2000,00001,1,1)', 'every value arrives, converted');
SELECT is((SELECT count(*) FROM org_222222220000400080000000000000a0.typed WHERE label = ''), 666::bigint,
	'a text column keeps its empty strings');
SELECT is((SELECT table_name || ' ' || row_count FROM dalgo.warehouse_tables
		   WHERE source_id = '33333333-0000-4000-8000-0000000000a7'), 'typed 2000', 'the table is registered with its row count');
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a8') AS run2 \gset
SELECT is((SELECT string_agg(DISTINCT column_type, ', ') FROM dalgo.source_schemas
		   WHERE source_id = '33333333-0000-4000-8000-0000000000a8'), 'text', 'config.infer_types false keeps every column text');

-- A failed sync (a malformed file) keeps the previous table and its rows.
:as_super
COPY (SELECT 'id,price' UNION ALL SELECT '1,2,3') TO :'f';
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a7') AS run3 \gset
SELECT is((SELECT status::text FROM dalgo.sync_runs WHERE id = :'run3'), 'failed', 'a malformed file fails the sync');
:as_super
SELECT is((SELECT (count(*), pg_typeof(min(id)))::text FROM org_222222220000400080000000000000a0.typed), '(2000,bigint)',
	'and the previous typed table keeps its rows');

-- An oversized sync (over the warehouse_bytes quota) keeps it too.
COPY (SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 20000) g) TO :'f' WITH (FORMAT csv, HEADER true);
UPDATE dalgo.organizations SET settings = jsonb_build_object('quotas', jsonb_build_object('warehouse_bytes',
	dalgo_internal.warehouse_bytes(:A) + 100000)) WHERE id = :A;
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a7') AS run4 \gset
SELECT alike((SELECT status || ': ' || error_message FROM dalgo.sync_runs WHERE id = :'run4'),
	'failed: quota warehouse_bytes exceeded: the warehouse would hold % bytes, the limit is %', 'an oversized sync is refused');
:as_super
SELECT is((SELECT count(*) FROM org_222222220000400080000000000000a0.typed), 2000::bigint, 'and the previous table keeps its rows');
-- A sync cut short by a timeout keeps it too (the run worker's transaction ends in the error).
UPDATE dalgo.organizations SET settings = '{}' WHERE id = :A;
SAVEPOINT before_timeout;
SET LOCAL dalgo.statement_timeout = 1;
:as_owner_a
\set ON_ERROR_STOP false
\set VERBOSITY terse
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a7');
\set VERBOSITY default
\set ON_ERROR_STOP true
ROLLBACK TO SAVEPOINT before_timeout;
SELECT is((SELECT count(*) FROM org_222222220000400080000000000000a0.typed), 2000::bigint,
	'a sync that times out keeps the previous table and its rows');
SELECT is((SELECT count(*) FROM pg_class WHERE relnamespace = 'org_222222220000400080000000000000a0'::regnamespace
		   AND relname LIKE '\_dalgo\_%'), 0::bigint, 'no build or staging table is left behind');
SELECT is((SELECT string_agg(column_type, ', ' ORDER BY column_order) FROM dalgo.source_schemas
		   WHERE source_id = '33333333-0000-4000-8000-0000000000a7'),
	'bigint, numeric, boolean, date, timestamp with time zone, jsonb, text, text, text, text, text',
	'source_schemas still describes the table in place');

SELECT * FROM finish();
ROLLBACK;
