-- warehouse_setting_isolation: a setting changed inside a warehouse step
-- (raw SQL with set_config(..., false), i.e. a session-level SET) is rolled
-- back when the step ends, on success and on error, for previews and for
-- runs alike: nothing leaks into the caller's session, the next request on
-- a pooled connection, or a run worker's next run.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
SELECT plan(16);
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
SET LOCAL dalgo.allow_raw_sql = on;
SET LOCAL statement_timeout = '77s';
SELECT current_setting('search_path') AS path_before \gset
CREATE FUNCTION pg_temp.leaky(extra text DEFAULT '') RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('version', 1, 'source', '{"table": "visits"}'::jsonb,
		'steps', jsonb_build_array(jsonb_build_object('type', 'sql', 'select',
			'"NGO", pg_catalog.set_config(''search_path'', ''public, pg_temp'', false) AS a, '
			'pg_catalog.set_config(''statement_timeout'', ''1234'', false) AS b, '
			'pg_catalog.set_config(''default_transaction_read_only'', ''on'', false) AS c, '
			'pg_catalog.set_config(''dalgo.change_description'', ''leaked'', false) AS d' || extra))) $$;
GRANT EXECUTE ON FUNCTION pg_temp.leaky(text) TO PUBLIC;
SET LOCAL work_mem = '4MB';

:as_owner_a
SELECT is((SELECT count(*) FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.leaky())), 5::bigint,
	'a raw SQL preview that sets session settings runs');
SELECT is(current_setting('search_path'), :'path_before', 'search_path is the caller''s again');
SELECT is(current_setting('statement_timeout'), '77s', 'statement_timeout too');
SELECT is(current_setting('default_transaction_read_only'), 'off', 'default_transaction_read_only too');
SELECT is(current_setting('dalgo.change_description'), '', 'and a dalgo setting too');

-- A failing step: the settings it made before the error are gone as well.
SELECT throws_ok($$SELECT * FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0',
	pg_temp.leaky(', 1 / (length("NGO") - 5) AS e'))$$, '22012', NULL, 'a raw step that fails after setting things');
SELECT is(current_setting('search_path') || ' ' || current_setting('statement_timeout'), :'path_before' || ' 77s',
	'leaves no setting behind');

-- An error inside a function with a SET clause of its own, called by the step.
RESET ROLE;
CREATE FUNCTION org_222222220000400080000000000000a0.boom() RETURNS int LANGUAGE plpgsql SET work_mem = '8MB' AS $$
BEGIN
	PERFORM pg_catalog.set_config('search_path', 'public', false);
	RAISE EXCEPTION 'boom';
END $$;
ALTER FUNCTION org_222222220000400080000000000000a0.boom() OWNER TO dalgo_wh_222222220000400080000000000000a0;
:as_owner_a
SELECT throws_ok($$SELECT * FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0',
	pg_temp.leaky(', org_222222220000400080000000000000a0.boom() AS b'))$$, 'P0001', 'boom',
	'a step whose function (with its own SET clause) fails');
SELECT is(current_setting('search_path') || ' ' || current_setting('work_mem') || ' ' || current_setting('statement_timeout'),
	:'path_before' || ' 4MB 77s', 'leaves no setting behind either');
SELECT is((SELECT count(*) FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.leaky())), 5::bigint,
	'and the next step runs as before');

-- A run (warehouse_execute, as run workers use it) rolls its settings back too.
INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name)
	VALUES ('55555555-0000-4000-8000-0000000000a7', '22222222-0000-4000-8000-0000000000a0', 'Leaky', pg_temp.leaky(), 'leaky_out');
SELECT isnt(dalgo.run_transformation('55555555-0000-4000-8000-0000000000a7'), NULL, 'a run of a recipe that sets session settings');
SELECT is((SELECT status::text FROM dalgo.transformation_runs WHERE transformation_id = '55555555-0000-4000-8000-0000000000a7'),
	'success', 'succeeds');
SELECT is(current_setting('search_path'), :'path_before', 'and search_path is the caller''s again');
SELECT is(current_setting('statement_timeout') || ' ' || current_setting('default_transaction_read_only'), '77s off',
	'as are statement_timeout and default_transaction_read_only');
RESET ROLE;
-- The run worker's path: execute_scheduled_run without identity.
SELECT lives_ok($$SELECT dalgo_internal.warehouse_execute('22222222-0000-4000-8000-0000000000a0',
	'SELECT pg_catalog.set_config(''search_path'', ''public'', false), pg_catalog.set_config(''work_mem'', ''77MB'', false)')$$,
	'warehouse_execute runs a statement that sets settings');
SELECT is(current_setting('search_path') || ' ' || current_setting('work_mem'), :'path_before' || ' 4MB',
	'and they are rolled back when it returns');
SELECT * FROM finish();
ROLLBACK;
