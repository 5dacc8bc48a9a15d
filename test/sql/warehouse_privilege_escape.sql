-- warehouse_privilege_escape: nothing a recipe names resolves outside
-- pg_catalog and the organization's own warehouse schema, so a viewer's
-- temporary objects (pg_temp.evil(), a domain pg_temp.evildom whose CHECK
-- calls it) never run as the warehouse role; and previews and
-- read_warehouse_table run read-only, so even a hole could not write.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\i test/fixtures/recipe_setup.sql
SELECT plan(22);
\set WA org_222222220000400080000000000000a0
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_authenticated;'
\set as_viewer_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000009''; SET LOCAL ROLE dalgo_authenticated;'
INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-000000000009', 'viewer9@example.org');
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES ('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000009', 'viewer');
-- Types a superuser put elsewhere: in public, in org B's warehouse, and in org A's own.
CREATE DOMAIN public.pubdom AS text;
CREATE DOMAIN org_222222220000400080000000000000b0.bdom AS text;
CREATE DOMAIN org_222222220000400080000000000000a0.adom AS text CHECK (VALUE <> 'forbidden');
-- A writing function in org A's warehouse, reachable from a domain and a view:
-- it stands for any hole that would let recipe SQL write.
CREATE FUNCTION org_222222220000400080000000000000a0.writer() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	DELETE FROM org_222222220000400080000000000000a0.visits;
	RETURN true;
END $$;
CREATE DOMAIN org_222222220000400080000000000000a0.wdom AS text CHECK (org_222222220000400080000000000000a0.writer());
CREATE VIEW org_222222220000400080000000000000a0.wview AS SELECT org_222222220000400080000000000000a0.writer() AS w;
ALTER FUNCTION org_222222220000400080000000000000a0.writer() OWNER TO dalgo_wh_222222220000400080000000000000a0;
ALTER VIEW org_222222220000400080000000000000a0.wview OWNER TO dalgo_wh_222222220000400080000000000000a0;
CREATE FUNCTION pg_temp.cast_recipe(typ text) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('version', 1, 'source', '{"table": "visits"}'::jsonb,
		'steps', jsonb_build_array(jsonb_build_object('type', 'cast', 'columns', jsonb_build_object('measure1', typ)))) $$;
CREATE FUNCTION pg_temp.unpivot_recipe(typ text) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('version', 1, 'source', '{"table": "visits"}'::jsonb,
		'steps', jsonb_build_array(jsonb_build_object('type', 'unpivot', 'columns', '["measure1", "measure2"]'::jsonb,
			'keep', '["NGO"]'::jsonb, 'cast_to', typ))) $$;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pg_temp TO PUBLIC;

-- The attack of the issue: the viewer's own temporary function and domain.
:as_viewer_a
CREATE FUNCTION pg_temp.evil() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE 'DELETE FROM org_222222220000400080000000000000a0.visits';
	EXECUTE 'GRANT USAGE ON SCHEMA org_222222220000400080000000000000a0 TO PUBLIC';
	RETURN true;
END $$;
CREATE DOMAIN pg_temp.evildom AS text CHECK (pg_temp.evil());
CREATE TYPE pg_temp.evilpair AS (a text);
SELECT throws_ok($$SELECT * FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.cast_recipe('evildom'))$$, '22023',
	'recipe step 1 (cast) columns.measure1: invalid type "evildom": type "evildom" is neither a built-in type nor a type of the organization''s warehouse',
	'a cast to the viewer''s temporary domain is refused');
SELECT throws_ok($$SELECT * FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.cast_recipe('pg_temp.evildom'))$$, '22023', NULL,
	'so is the explicitly qualified pg_temp.evildom');
SELECT throws_ok($$SELECT * FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.unpivot_recipe('evildom'))$$, '22023',
	'recipe step 1 (unpivot) cast_to: invalid type "evildom": type "evildom" is neither a built-in type nor a type of the organization''s warehouse',
	'unpivot''s cast_to to the temporary domain is refused');
SELECT throws_ok($$SELECT * FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.unpivot_recipe('pg_temp.evildom'))$$, '22023', NULL,
	'so is cast_to pg_temp.evildom');
SELECT throws_ok($$SELECT * FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.cast_recipe('evildom[]'))$$, '22023', NULL,
	'an array of the temporary domain is refused');
SELECT throws_ok($$SELECT * FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.cast_recipe('evilpair'))$$, '22023', NULL,
	'a temporary composite type is refused');
SELECT throws_ok($$SELECT dalgo.compile_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.cast_recipe('evildom'))$$, '22023', NULL,
	'compile_recipe itself refuses it');
SELECT throws_ok($$SELECT * FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.cast_recipe('public.pubdom'))$$, '22023', NULL,
	'a type of another schema (public) is refused');
SELECT throws_ok($$SELECT * FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.cast_recipe('pubdom'))$$, '22023', NULL,
	'and is not found unqualified either');
SELECT throws_ok($$SELECT * FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.cast_recipe('org_222222220000400080000000000000b0.bdom'))$$, '22023', NULL,
	'a type of another organization''s warehouse is refused');
:as_member_a
SELECT throws_ok($$INSERT INTO dalgo.transformations (organization_id, name, recipe, output_table_name)
	VALUES ('22222222-0000-4000-8000-0000000000a0', 'evil', pg_temp.cast_recipe('evildom'), 'evil_out')$$, '22023', NULL,
	'a transformation cannot be saved with such a cast either');
RESET ROLE;
SELECT is((SELECT count(*) FROM :WA.visits), 5::bigint, 'the warehouse rows are untouched');
SELECT ok(NOT has_schema_privilege('public', 'org_222222220000400080000000000000a0', 'USAGE'),
	'and the warehouse schema was not granted to PUBLIC');

-- What is allowed: built-in types and the organization's own, emitted schema-qualified.
:as_viewer_a
SELECT matches(dalgo.compile_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.cast_recipe('adom')),
	'CAST\("measure1" AS org_222222220000400080000000000000a0\.adom\)', 'a type of the organization''s warehouse is allowed, qualified');
SELECT matches(dalgo.compile_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.cast_recipe('date')),
	'CAST\("measure1" AS pg_catalog\.date\)', 'a built-in type is emitted qualified with pg_catalog');
SELECT matches(dalgo.compile_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.unpivot_recipe('text')),
	'CAST\(s\."measure1" AS pg_catalog\.text\)', 'so is unpivot''s cast_to');
SELECT is((SELECT count(*) FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.cast_recipe('numeric(6,1)'))), 5::bigint,
	'a built-in type with a modifier still previews');

-- Previews and read_warehouse_table are read-only, even where recipe SQL reaches a writing function.
SELECT throws_ok($$SELECT * FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0', pg_temp.cast_recipe('wdom'))$$, '25006', NULL,
	'a preview that would write fails: it runs read-only');
SELECT throws_ok($$SELECT * FROM dalgo.read_warehouse_table('22222222-0000-4000-8000-0000000000a0', 'wview')$$, '25006', NULL,
	'read_warehouse_table of a view that would write fails too');
SELECT is(current_setting('transaction_read_only'), 'off', 'the caller''s transaction is read-write again afterwards');
RESET ROLE;
SET LOCAL dalgo.allow_raw_sql = on;
:as_owner_a
SELECT throws_ok($$SELECT * FROM dalgo.preview_recipe('22222222-0000-4000-8000-0000000000a0', '{"version": 1, "source": {"table": "visits"},
	"steps": [{"type": "sql", "select": "*, pg_catalog.set_config(''transaction_read_only'', ''off'', false) AS rw"}]}')$$,
	'25001', NULL, 'a raw SQL preview cannot switch read-only off');
RESET ROLE;
SELECT is((SELECT count(*) FROM :WA.visits), 5::bigint, 'the warehouse rows are still all there');

SELECT * FROM finish();
ROLLBACK;
