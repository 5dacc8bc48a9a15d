-- csv_tenant_isolation: a csv source reads only its organization's own
-- directory dalgo.csv_dir/org_<hex id>/.  Another organization's files, the
-- shared root, ".." and absolute paths, and symlinks (to files or
-- directories) that lead out are refused when the source is saved and again
-- when it syncs, and a missing file and a refused one give the same error,
-- which reveals nothing outside the directory.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set B '''22222222-0000-4000-8000-0000000000b0'''
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_owner_b 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000003''; SET LOCAL ROLE dalgo_authenticated;'
\set as_super 'RESET ROLE; SET LOCAL dalgo.user_id = '''';'
SELECT plan(22);

-- The files, made by the server's OS user under a fresh csv_dir:
--   csv_dir/shared.csv                  (the root is nobody's)
--   csv_dir/org_<A>/mine.csv, swap.csv  (A's)
--   csv_dir/org_<A>/to_b.csv  -> ../org_<B>/secret.csv
--   csv_dir/org_<A>/b_dir     -> ../org_<B>
--   csv_dir/org_<A>/b_abs.csv -> <absolute path of B's secret.csv>
--   csv_dir/org_<B>/secret.csv          (B's)
SELECT current_setting('data_directory') || '/csv_iso_' || pg_backend_pid() AS csvdir \gset
\set dir_a :csvdir '/org_222222220000400080000000000000a0'
\set dir_b :csvdir '/org_222222220000400080000000000000b0'
SELECT format('mkdir -p %s %s && cd %s && ln -s ../org_222222220000400080000000000000b0/secret.csv to_b.csv'
			  ' && ln -s ../org_222222220000400080000000000000b0 b_dir && ln -s %s/secret.csv b_abs.csv',
			  :'dir_a', :'dir_b', :'dir_a', :'dir_b') AS setup \gset
COPY (SELECT WHERE false) TO PROGRAM :'setup';
\set f :dir_a '/mine.csv'
COPY (SELECT 'a' || g AS id, 'mine' AS owner FROM generate_series(1, 3) g) TO :'f' WITH (FORMAT csv, HEADER true);
\set f :dir_a '/swap.csv'
COPY (SELECT 'a' || g AS id, 'mine' AS owner FROM generate_series(1, 2) g) TO :'f' WITH (FORMAT csv, HEADER true);
\set f :dir_b '/secret.csv'
COPY (SELECT 'b' || g AS id, 'secret of B' AS owner FROM generate_series(1, 4) g) TO :'f' WITH (FORMAT csv, HEADER true);
\set f :csvdir '/shared.csv'
COPY (SELECT 1 AS id) TO :'f' WITH (FORMAT csv, HEADER true);
SET LOCAL dalgo.csv_dir = :'csvdir';

-- When the source is saved (an admin of A, through row-level security).
:as_owner_a
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000a5', :A, 'Mine', 'csv', '{"path": "mine.csv"}', 'mine'),
	('33333333-0000-4000-8000-0000000000a6', :A, 'Swap', 'csv', '{"path": "swap.csv"}', 'swapped');
SELECT pass('a file in the organization''s own directory is accepted');
SELECT throws_ok(format($$INSERT INTO dalgo.sources (organization_id, name, source_type, config)
	VALUES (%L, 'x', 'csv', '{"path": "../org_222222220000400080000000000000b0/secret.csv"}')$$, :A),
	'42501', 'csv path "../org_222222220000400080000000000000b0/secret.csv" must be relative to the organization''s csv directory and must not contain ".."',
	'".." into B''s directory is refused');
SELECT throws_ok(format($$INSERT INTO dalgo.sources (organization_id, name, source_type, config)
	VALUES (%L, 'x', 'csv', '{"path": %s}')$$, :A, to_jsonb(:'dir_b' || '/secret.csv')),
	'42501', NULL, 'an absolute path is refused');
SELECT throws_ok(format($$INSERT INTO dalgo.sources (organization_id, name, source_type, config)
	VALUES (%L, 'x', 'csv', '{"path": "to_b.csv"}')$$, :A),
	'58P01', 'csv file "to_b.csv" is not available', 'a symlink to B''s file is refused');
SELECT throws_ok(format($$INSERT INTO dalgo.sources (organization_id, name, source_type, config)
	VALUES (%L, 'x', 'csv', '{"path": "b_abs.csv"}')$$, :A),
	'58P01', 'csv file "b_abs.csv" is not available', 'an absolute symlink to B''s file is refused');
SELECT throws_ok(format($$INSERT INTO dalgo.sources (organization_id, name, source_type, config)
	VALUES (%L, 'x', 'csv', '{"path": "b_dir/secret.csv"}')$$, :A),
	'58P01', 'csv file "b_dir/secret.csv" is not available', 'a symlinked directory into B''s is refused');
SELECT throws_ok(format($$INSERT INTO dalgo.sources (organization_id, name, source_type, config)
	VALUES (%L, 'x', 'csv', '{"path": "b_dir/no_such.csv"}')$$, :A),
	'58P01', 'csv file "b_dir/no_such.csv" is not available', 'whether or not the file exists there');
SELECT throws_ok(format($$INSERT INTO dalgo.sources (organization_id, name, source_type, config)
	VALUES (%L, 'x', 'csv', '{"path": "no_such.csv"}')$$, :A),
	'58P01', 'csv file "no_such.csv" is not available', 'a missing file gives the same error');
SELECT throws_ok(format($$INSERT INTO dalgo.sources (organization_id, name, source_type, config)
	VALUES (%L, 'x', 'csv', '{"path": "b_dir"}')$$, :A),
	'58P01', 'csv file "b_dir" is not available', 'a directory is not a file');
SELECT throws_ok($$UPDATE dalgo.sources SET config = '{"path": "to_b.csv"}' WHERE id = '33333333-0000-4000-8000-0000000000a5'$$,
	'58P01', 'csv file "to_b.csv" is not available', 'changing the path is checked too');
SELECT throws_ok(format($$INSERT INTO dalgo.sources (organization_id, name, source_type, config)
	VALUES (%L, 'x', 'csv', '{"path": "../shared.csv"}')$$, :A),
	'42501', NULL, 'the shared root is not the organization''s');
:as_owner_b
SELECT throws_ok(format($$INSERT INTO dalgo.sources (organization_id, name, source_type, config)
	VALUES (%L, 'x', 'csv', '{"path": "mine.csv"}')$$, :B),
	'58P01', 'csv file "mine.csv" is not available', 'B cannot name A''s file');
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000b5', :B, 'Secret', 'csv', '{"path": "secret.csv"}', 'secret');
SELECT pass('B names its own file');

-- At sync time: A's file becomes a symlink to B's after the source was saved.
:as_super
INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency) VALUES
	('88888888-0000-4000-8000-0000000000a5', :A, '33333333-0000-4000-8000-0000000000a5', 'daily'),
	('88888888-0000-4000-8000-0000000000a6', :A, '33333333-0000-4000-8000-0000000000a6', 'daily'),
	('88888888-0000-4000-8000-0000000000b5', :B, '33333333-0000-4000-8000-0000000000b5', 'daily');
SELECT format('cd %s && ln -sf ../org_222222220000400080000000000000b0/secret.csv swap.csv', :'dir_a') AS relink \gset
COPY (SELECT WHERE false) TO PROGRAM :'relink';
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a5') AS run_mine \gset
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a6') AS run_swap \gset
SELECT is((SELECT (status, rows_synced)::text FROM dalgo.sync_runs WHERE id = :'run_mine'), '(success,3)',
	'A syncs its own file');
SELECT is((SELECT (status, error_message)::text FROM dalgo.sync_runs WHERE id = :'run_swap'),
	'(failed,"csv file ""swap.csv"" is not available")', 'a file swapped for a symlink to B''s is refused at sync time');
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table(:A, 'mine') x WHERE x->>'owner' = 'mine'), 3::bigint,
	'A''s warehouse has A''s rows');
SELECT is((SELECT count(*) FROM dalgo.sync_runs WHERE organization_id = :A AND error_message LIKE '%' || :'csvdir' || '%'), 0::bigint,
	'no error names the csv directory');
:as_super
SELECT is(to_regclass('org_222222220000400080000000000000a0.swapped'), NULL, 'and nothing of B''s reached A''s warehouse');
:as_owner_b
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000b5') AS run_b \gset
SELECT is((SELECT (status, rows_synced)::text FROM dalgo.sync_runs WHERE id = :'run_b'), '(success,4)', 'B syncs its own file');

-- The function itself, as the workers call it.
:as_super
SELECT throws_ok(format($$SELECT dalgo_internal.csv_path(%L, 'to_b.csv')$$, :A), '58P01', 'csv file "to_b.csv" is not available',
	'csv_path refuses the symlink');
SELECT is(dalgo_internal.csv_path(:B, 'secret.csv'), :'dir_b' || '/secret.csv', 'and resolves B''s own file for B');
SELECT is(dalgo_internal.csv_path(:A, './mine.csv'), :'dir_a' || '/mine.csv', 'a path is canonicalised');

SELECT * FROM finish();
ROLLBACK;
