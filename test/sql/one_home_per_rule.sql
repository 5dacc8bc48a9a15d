-- one_home_per_rule: a rule written twice drifts.  The warehouse schema and
-- role names are written once (dalgo_internal.warehouse_schema_name and
-- warehouse_role_name) and every warehouse really uses them; a run's state
-- is written by kind in one function (set_scheduled_run_status), and the
-- two run tables are read by kind through one view (scheduled_runs).
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
SELECT plan(8);
SELECT is_empty($$SELECT p.oid::regprocedure::text FROM pg_proc p
	WHERE p.pronamespace IN ('dalgo'::regnamespace, 'dalgo_internal'::regnamespace)
	  AND (p.prosrc ~ '''(org|dalgo_wh)_''\s*\|\|' OR p.prosrc ~ 'format\(''(org|dalgo_wh)_%')
	  AND p.proname NOT IN ('warehouse_schema_name', 'warehouse_role_name')$$,
	'one_home_per_rule: only warehouse_schema_name and warehouse_role_name spell the warehouse names');
SELECT is(dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000a0'),
	dalgo_internal.warehouse_schema_name('22222222-0000-4000-8000-0000000000a0'),
	'one_home_per_rule: ensure_warehouse creates the schema warehouse_schema_name names');
SELECT is((SELECT pg_get_userbyid(n.nspowner)::text FROM pg_namespace n
		   WHERE n.nspname = dalgo_internal.warehouse_schema_name('22222222-0000-4000-8000-0000000000a0')),
	dalgo_internal.warehouse_role_name('22222222-0000-4000-8000-0000000000a0'),
	'one_home_per_rule: and its owner is the role warehouse_role_name names');
SELECT is(dalgo_internal.warehouse_schema_name('22222222-0000-4000-8000-0000000000a0'),
	'org_222222220000400080000000000000a0', 'one_home_per_rule: org_ and the id without dashes');
SELECT is_empty($$SELECT p.oid::regprocedure::text FROM pg_proc p
	WHERE p.pronamespace IN ('dalgo'::regnamespace, 'dalgo_internal'::regnamespace)
	  AND p.prosrc ~ 'run_kind = ''sync''' AND p.prosrc ~ 'UPDATE dalgo\.sync_runs'
	  AND p.prosrc ~ 'UPDATE dalgo\.transformation_runs'
	  AND p.proname <> 'set_scheduled_run_status'$$,
	'one_home_per_rule: only set_scheduled_run_status updates either run table by kind');
SELECT set_eq($$SELECT run_kind, id FROM dalgo_internal.scheduled_runs$$,
	$$SELECT 'sync'::dalgo.run_kind, id FROM dalgo.sync_runs UNION ALL SELECT 'output', id FROM dalgo.transformation_runs$$,
	'one_home_per_rule: scheduled_runs holds every run of both tables, by kind');
SELECT is(enum_range(NULL::dalgo.run_kind)::text, '{sync,output}',
	'one_home_per_rule: run kinds are one enum, dalgo.run_kind');
SELECT is_empty($$SELECT p.oid::regprocedure::text FROM pg_proc p
	WHERE p.pronamespace IN ('dalgo'::regnamespace, 'dalgo_internal'::regnamespace)
	  AND p.prosrc ~ '(run_kind|kinds\[i\])\s*(=|:=|IN)\s*\(?''(s|o|connector|skipped)'''$$,
	'one_home_per_rule: no function spells a run kind as a letter or mixes it with an outcome');
SELECT * FROM finish();
ROLLBACK;
