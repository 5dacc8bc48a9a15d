-- staging_protocol: the load path of outside loaders and uploads.  A
-- claimed connector run gets a staging table in the organization's
-- warehouse (owned by the warehouse role); the connector creates it with
-- its columns, COPYs or INSERTs into it and touches nothing else there;
-- complete_sync_run() types and swaps it in, or drops it on failure and
-- the previous table stays.  An upload does the same for a member with
-- write rights, from a client: only the uploader writes its staging table;
-- another organization, a viewer, dalgo_anon and the connector role are
-- refused, and nobody reads a staging table or dalgo's tables through it.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_authenticated;'
\set as_viewer_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000009''; SET LOCAL ROLE dalgo_authenticated;'
\set as_owner_b 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000003''; SET LOCAL ROLE dalgo_authenticated;'
\set as_service 'RESET ROLE; SET LOCAL dalgo.user_id = ''''; SET LOCAL ROLE dalgo_service;'
\set as_anon 'RESET ROLE; SET LOCAL dalgo.user_id = ''''; SET LOCAL ROLE dalgo_anon;'
\set as_super 'RESET ROLE; SET LOCAL dalgo.user_id = '''';'
SELECT plan(52);
INSERT INTO dalgo.users (id, email, full_name, password_hash) VALUES
	('11111111-0000-4000-8000-000000000009', 'viewer.a@example.org', 'Viewer A', 'hash-v');
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES (:A, '11111111-0000-4000-8000-000000000009', 'viewer');
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000a9', :A, 'Feed', 'api', '{"connector": true}', 'feed');
INSERT INTO dalgo.sources (id, organization_id, name, source_type, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000aa', :A, 'Upload', 'csv', 'uploaded');
INSERT INTO dalgo.sync_runs (id, organization_id, source_id, status) VALUES
	('77777777-0000-4000-8000-0000000000a1', :A, '33333333-0000-4000-8000-0000000000a9', 'pending');
\set stage1 org_222222220000400080000000000000a0._dalgo_stage_777777770000400080000000000000a1

-- The connector claims the run: its staging table is named in details.
:as_service
SELECT is((SELECT details->>'staging_table' FROM dalgo.claim_sync_run()), :'stage1',
	'claim_sync_run names the run''s staging table');
SELECT is(dalgo.stage_sync_run('77777777-0000-4000-8000-0000000000a1', ARRAY['id', 'name', 'payload'], ARRAY['text', 'text', 'jsonb']),
	:'stage1', 'the connector creates it with the columns it needs');
:as_super
SELECT is((SELECT relowner::regrole::text FROM pg_class WHERE oid = :'stage1'::regclass),
	'dalgo_wh_222222220000400080000000000000a0', 'it is owned by the warehouse role');
:as_service
INSERT INTO :stage1 VALUES ('1', 'one', '{"a": 1}'), ('2', 'two', NULL);
COPY :stage1 FROM STDIN (FORMAT csv, HEADER);
id,name,payload
3,three,[1]
4,,"{""b"": 2}"
\.
SELECT pass('the connector INSERTs and COPYs into it');
SELECT throws_ok($$SELECT * FROM org_222222220000400080000000000000a0._dalgo_stage_777777770000400080000000000000a1$$, '42501', NULL,
	'but does not read it');
SELECT throws_ok($$SELECT * FROM org_222222220000400080000000000000a0.visits$$, '42501', NULL,
	'nor any other table of the warehouse');
SELECT throws_ok($$INSERT INTO org_222222220000400080000000000000a0.visits ("NGO") VALUES ('x')$$, '42501', NULL,
	'nor writes one');
SELECT throws_ok($$CREATE TABLE org_222222220000400080000000000000a0.mine (x int)$$, '42501', NULL,
	'nor creates one');
SELECT throws_ok($$ALTER TABLE org_222222220000400080000000000000a0._dalgo_stage_777777770000400080000000000000a1 ADD COLUMN x text$$,
	'42501', NULL, 'nor alters its staging table');
SELECT throws_ok($$TRUNCATE org_222222220000400080000000000000a0._dalgo_stage_777777770000400080000000000000a1$$,
	'42501', NULL, 'nor truncates it');
SELECT throws_ok($$DROP TABLE org_222222220000400080000000000000a0._dalgo_stage_777777770000400080000000000000a1$$,
	'42501', NULL, 'nor drops it');
SELECT throws_ok($$SELECT * FROM dalgo_internal.warehouse_execute('22222222-0000-4000-8000-0000000000a0', 'SELECT 1')$$,
	'42501', NULL, 'nor reaches dalgo''s internals');
:as_owner_b
SELECT throws_ok($$INSERT INTO org_222222220000400080000000000000a0._dalgo_stage_777777770000400080000000000000a1 (id) VALUES ('x')$$,
	'42501', NULL, 'another organization cannot write the connector''s staging table');
:as_member_a
SELECT throws_ok($$INSERT INTO org_222222220000400080000000000000a0._dalgo_stage_777777770000400080000000000000a1 (id) VALUES ('x')$$,
	'42501', NULL, 'nor can the organization''s own members');

-- The caller of finish_sync cannot name another table than the run's.
:as_super
SELECT throws_ok($$SELECT dalgo_internal.finish_sync('77777777-0000-4000-8000-0000000000a1', 'org_222222220000400080000000000000a0.visits')$$,
	'42501', '"org_222222220000400080000000000000a0.visits" is not the staging table of sync run 77777777-0000-4000-8000-0000000000a1',
	'a forged staging table name is refused');
SELECT throws_ok($$SELECT dalgo_internal.finish_sync('77777777-0000-4000-8000-0000000000a1', 'org_222222220000400080000000000000b0._dalgo_stage_777777770000400080000000000000a1')$$,
	'42501', NULL, 'so is the same name in another organization''s warehouse');

-- complete_sync_run types and swaps it in.
:as_service
SELECT is((SELECT (status, rows_synced, error_message)::text FROM dalgo.complete_sync_run('77777777-0000-4000-8000-0000000000a1', 99)),
	'(success,4,)', 'complete_sync_run swaps the staging table in and counts its rows');
:as_super
SELECT is((SELECT string_agg(column_name || ' ' || column_type, ', ' ORDER BY column_order) FROM dalgo.source_schemas
		   WHERE source_id = '33333333-0000-4000-8000-0000000000a9'), 'id bigint, name text, payload jsonb',
	'the table is typed and its types recorded');
SELECT is((SELECT (count(*), sum(id))::text FROM org_222222220000400080000000000000a0.feed), '(4,10)', 'with every row');
SELECT is(to_regclass(:'stage1'), NULL, 'the staging table is gone');
SELECT is((SELECT count(*) FROM dalgo.warehouse_tables WHERE source_id = '33333333-0000-4000-8000-0000000000a9'), 1::bigint,
	'the table is registered');
SELECT ok(NOT has_schema_privilege('dalgo_service', 'org_222222220000400080000000000000a0', 'USAGE'),
	'and the connector no longer has any access to the warehouse schema');
SELECT is((SELECT count(*) FROM information_schema.role_table_grants WHERE table_schema = 'org_222222220000400080000000000000a0'
		   AND table_name = 'feed' AND grantee <> 'dalgo_wh_222222220000400080000000000000a0'), 0::bigint,
	'the swapped-in table grants nothing to the loader');

-- A failing completion (over the size quota) keeps the previous table and drops the staging table.
INSERT INTO dalgo.sync_runs (id, organization_id, source_id, status, created_at) VALUES
	('77777777-0000-4000-8000-0000000000a2', :A, '33333333-0000-4000-8000-0000000000a9', 'pending', now() + interval '1 second'),
	('77777777-0000-4000-8000-0000000000a3', :A, '33333333-0000-4000-8000-0000000000a9', 'pending', now() + interval '2 seconds');
:as_service
SELECT is((SELECT id FROM dalgo.claim_sync_run()), '77777777-0000-4000-8000-0000000000a2', 'a second run is claimed');
SELECT dalgo.stage_sync_run('77777777-0000-4000-8000-0000000000a2', ARRAY['id', 'pad']) AS stage2 \gset
INSERT INTO :stage2 SELECT g, md5(g::text) || md5((-g)::text) FROM generate_series(1, 2000) g;
:as_super
UPDATE dalgo.organizations SET settings = jsonb_build_object('quotas', jsonb_build_object('warehouse_bytes',
	dalgo_internal.warehouse_bytes(:A) - pg_total_relation_size(:'stage2') + 16384)) WHERE id = :A;
:as_service
SELECT throws_ok(format('INSERT INTO %s SELECT g, md5(g::text) FROM generate_series(1, 2000) g', :'stage2'), '53400', NULL,
	'a load that takes the warehouse over its size quota is refused as it arrives');
SELECT alike((SELECT status || ': ' || error_message FROM dalgo.complete_sync_run('77777777-0000-4000-8000-0000000000a2', 2000)),
	'failed: quota warehouse_bytes exceeded: %', 'an oversized load fails its run');
:as_super
UPDATE dalgo.organizations SET settings = '{}' WHERE id = :A;
SELECT is((SELECT (count(*), sum(id))::text FROM org_222222220000400080000000000000a0.feed), '(4,10)',
	'and the previous table keeps its rows');
SELECT is(to_regclass(:'stage2'), NULL, 'its staging table is dropped');
:as_service
SELECT is((SELECT id FROM dalgo.claim_sync_run()), '77777777-0000-4000-8000-0000000000a3', 'a third run is claimed');
SELECT dalgo.stage_sync_run('77777777-0000-4000-8000-0000000000a3', ARRAY['id']) AS stage3 \gset
INSERT INTO :stage3 VALUES ('5');
SELECT is((SELECT (status, error_message)::text FROM dalgo.complete_sync_run('77777777-0000-4000-8000-0000000000a3', 0, 'the API is down')),
	'(failed,"the API is down")', 'a connector''s own failure fails the run');
:as_super
SELECT is((SELECT (count(*), to_regclass(:'stage3'))::text FROM org_222222220000400080000000000000a0.feed), '(4,)',
	'the previous table stays and the staging table is dropped');

-- A connector that went away: its run expires, and its staging table goes at the next load.
INSERT INTO dalgo.sync_runs (id, organization_id, source_id, status, created_at) VALUES
	('77777777-0000-4000-8000-0000000000a4', :A, '33333333-0000-4000-8000-0000000000a9', 'pending', now() + interval '3 seconds');
:as_service
SELECT is((SELECT id FROM dalgo.claim_sync_run()), '77777777-0000-4000-8000-0000000000a4', 'a fourth run is claimed');
SELECT dalgo.stage_sync_run('77777777-0000-4000-8000-0000000000a4', ARRAY['id']) AS stage4 \gset
:as_super
UPDATE dalgo.sync_runs SET status = 'failed', error_message = 'expired' WHERE id = '77777777-0000-4000-8000-0000000000a4';

-- What a run worker does (the HTTP sources): create the staging table
-- itself, as a superuser, fill it and call finish_sync.
INSERT INTO dalgo.sync_runs (id, organization_id, source_id, status, started_at) VALUES
	('77777777-0000-4000-8000-0000000000a5', :A, '33333333-0000-4000-8000-0000000000a9', 'running', now());
CREATE TABLE org_222222220000400080000000000000a0._dalgo_stage_777777770000400080000000000000a5 (id text, day text);
INSERT INTO org_222222220000400080000000000000a0._dalgo_stage_777777770000400080000000000000a5 VALUES ('7', '2024-05-01'), ('8', '');
SELECT lives_ok($$SELECT dalgo_internal.finish_sync('77777777-0000-4000-8000-0000000000a5', '_dalgo_stage_777777770000400080000000000000a5')$$,
	'finish_sync takes a staging table that a superuser (a run worker) created');
SELECT is((SELECT string_agg(format_type(atttypid, atttypmod), ', ' ORDER BY attnum) || ' ' || (SELECT count(*) FROM org_222222220000400080000000000000a0.feed)
		   FROM pg_attribute WHERE attrelid = 'org_222222220000400080000000000000a0.feed'::regclass AND attnum > 0),
	'bigint, date 2', 'and swaps in its typed copy');
-- A staging table that another role planted is refused.
INSERT INTO dalgo.sync_runs (id, organization_id, source_id, status, started_at) VALUES
	('77777777-0000-4000-8000-0000000000a6', :A, '33333333-0000-4000-8000-0000000000a9', 'running', now());
CREATE ROLE dalgo_test_planter;
GRANT USAGE, CREATE ON SCHEMA org_222222220000400080000000000000a0 TO dalgo_test_planter;
SET LOCAL ROLE dalgo_test_planter;
CREATE TABLE org_222222220000400080000000000000a0._dalgo_stage_777777770000400080000000000000a6 (id text);
RESET ROLE;
SELECT throws_ok($$SELECT dalgo_internal.finish_sync('77777777-0000-4000-8000-0000000000a6', '_dalgo_stage_777777770000400080000000000000a6')$$,
	'42809', 'the staging table of sync run 77777777-0000-4000-8000-0000000000a6 is not a plain table of the warehouse role',
	'a staging table planted by another role is refused');
UPDATE dalgo.sync_runs SET status = 'failed' WHERE id = '77777777-0000-4000-8000-0000000000a6';
DROP TABLE org_222222220000400080000000000000a0._dalgo_stage_777777770000400080000000000000a6;

-- Uploads.
:as_member_a
SELECT dalgo.begin_upload('33333333-0000-4000-8000-0000000000aa', ARRAY['city', 'visits']) AS upload \gset
:as_super
SELECT is(to_regclass(:'stage4'), NULL, 'the staging table of a run that ended without completing is dropped at the next load');
:as_member_a
SELECT matches(:'upload'::text, '^org_222222220000400080000000000000a0\._dalgo_stage_[0-9a-f]{32}$',
	'a member begins an upload and gets its staging table');
COPY :upload FROM STDIN (FORMAT csv, HEADER);
city,visits
Pune,12
Delhi,7
\.
SELECT pass('and COPYs a file from the client into it');
SELECT throws_ok(format('SELECT * FROM %s', :'upload'), '42501', NULL, 'without reading it back');
SELECT throws_ok($$SELECT * FROM org_222222220000400080000000000000a0.visits$$, '42501', NULL,
	'or reading the warehouse directly');
:as_owner_b
SELECT throws_ok(format('INSERT INTO %s VALUES (%L, %L)', :'upload', 'Evil', '1'), '42501',
	'permission denied for staging table ' || split_part(:'upload', '.', 2), 'another organization cannot write it');
SELECT throws_ok($$SELECT * FROM org_222222220000400080000000000000a0.visits$$, '42501', NULL,
	'nor read the warehouse whose schema the upload opened');
SELECT throws_ok($$SELECT dalgo.begin_upload('33333333-0000-4000-8000-0000000000aa', ARRAY['x'])$$, '42501', NULL,
	'nor begin an upload into another organization''s source');
SELECT throws_ok($$SELECT dalgo.finish_upload('33333333-0000-4000-8000-0000000000aa')$$, '22023', NULL,
	'nor finish one');
:as_owner_a
SELECT throws_ok(format('INSERT INTO %s VALUES (%L, %L)', :'upload', 'Other', '1'), '42501', NULL,
	'another member of the organization does not write someone''s upload');
:as_viewer_a
SELECT throws_ok($$SELECT dalgo.begin_upload('33333333-0000-4000-8000-0000000000aa', ARRAY['x'])$$, '42501', NULL,
	'a viewer cannot begin an upload');
:as_anon
SELECT throws_ok($$SELECT dalgo.begin_upload('33333333-0000-4000-8000-0000000000aa', ARRAY['x'])$$, '42501', NULL,
	'nor can dalgo_anon');
:as_service
SELECT throws_ok(format('SELECT dalgo.stage_sync_run(%L, ARRAY[''x''])', (SELECT id FROM dalgo.sync_runs WHERE details ? 'upload')),
	'22023', NULL, 'the connector cannot take over an upload''s staging table');
SELECT throws_ok(format('SELECT dalgo.complete_sync_run(%L, 1)', (SELECT id FROM dalgo.sync_runs WHERE details ? 'upload')),
	'22023', NULL, 'nor complete an upload');
:as_member_a
SELECT is((SELECT (status, rows_synced, details->>'upload')::text FROM dalgo.finish_upload('33333333-0000-4000-8000-0000000000aa')),
	'(success,2,true)', 'the uploader finishes the upload: a sync_runs row records it');
SELECT is((SELECT string_agg(x::text, ', ') FROM dalgo.read_warehouse_table(:A, 'uploaded') x),
	'{"city": "Pune", "visits": 12}, {"city": "Delhi", "visits": 7}', 'the typed table is in the warehouse');
:as_super
SELECT ok(NOT has_schema_privilege('dalgo_authenticated', 'org_222222220000400080000000000000a0', 'USAGE'),
	'the warehouse schema is closed again');

SELECT * FROM finish();
ROLLBACK;

-- Under a transaction snapshot rows committed while finishing waited would be missed: refused.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT plan(1);
SELECT throws_ok($$SELECT dalgo_internal.finish_sync('77777777-0000-4000-8000-0000000000a1', 'x')$$, '25000',
	'a sync is finished in a READ COMMITTED transaction', 'finishing a sync under REPEATABLE READ is refused');
SELECT * FROM finish();
ROLLBACK;
