-- warehouse_arrivals: a table that arrives in an organization's warehouse
-- schema by any path (a superuser's CREATE TABLE, another role's CREATE
-- TABLE AS, the statements pg_restore runs, a foreign table, ALTER ... SET
-- SCHEMA) is readable by that organization's warehouse role, so its
-- transformations run over it, and is registered in warehouse_tables.
-- Only SELECT is granted, only to that organization's role: no other
-- organization's role gains anything, a table another organization's role
-- owns is not adopted, views (which read with their owner's rights) are
-- not granted, and a pg_restore session is left alone.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_super 'RESET ROLE; SET LOCAL dalgo.user_id = '''';'
\set WA dalgo_wh_222222220000400080000000000000a0
\set WB dalgo_wh_222222220000400080000000000000b0
SELECT plan(24);

-- A superuser's CREATE TABLE, then a transformation over it.
CREATE TABLE org_222222220000400080000000000000a0.census (district text, people integer);
INSERT INTO org_222222220000400080000000000000a0.census VALUES ('Pune', 10), ('Nashik', 5), ('Pune', 1);
SELECT ok(has_table_privilege(:'WA', 'org_222222220000400080000000000000a0.census', 'SELECT'),
	'a superuser''s table is readable by the organization''s warehouse role');
SELECT is((SELECT relowner::regrole::text FROM pg_class WHERE oid = 'org_222222220000400080000000000000a0.census'::regclass),
	current_user::text, 'its owner stays the superuser');
SELECT is((SELECT (source_id, transformation_id, output_id)::text FROM dalgo.warehouse_tables
		   WHERE organization_id = :A AND table_name = 'census'), '(,,)', 'it is registered, without a producer');
:as_owner_a
INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name) VALUES
	('55555555-0000-4000-8000-0000000000a7', :A, 'Census totals',
	 '{"version": 1, "source": {"table": "census"}, "steps": [{"type": "group", "by": ["district"], "aggregates": [{"fn": "sum", "column": "people", "as": "people"}]}]}',
	 'census_totals');
SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a7') AS run \gset
SELECT is((SELECT (status, rows_affected, error_message)::text FROM dalgo.transformation_runs WHERE id = :'run'), '(success,2,)',
	'run_transformation reads the superuser''s table');

-- Another role's CREATE TABLE AS (a role a superuser let into the schema).
:as_super
CREATE ROLE dalgo_test_etl;
GRANT USAGE, CREATE ON SCHEMA org_222222220000400080000000000000a0 TO dalgo_test_etl;
SET LOCAL ROLE dalgo_test_etl;
CREATE TABLE org_222222220000400080000000000000a0.etl_out AS SELECT g AS id FROM generate_series(1, 3) g;
RESET ROLE;
SELECT ok(has_table_privilege(:'WA', 'org_222222220000400080000000000000a0.etl_out', 'SELECT'),
	'another role''s CREATE TABLE AS is readable by the warehouse role');
SELECT is((SELECT count(*) FROM dalgo.warehouse_tables WHERE organization_id = :A AND table_name = 'etl_out'), 1::bigint,
	'and registered');

-- What pg_restore runs: CREATE TABLE, ALTER TABLE ... OWNER TO, COPY.
CREATE TABLE org_222222220000400080000000000000a0.restored (id integer, label text);
ALTER TABLE org_222222220000400080000000000000a0.restored OWNER TO dalgo_wh_222222220000400080000000000000a0;
COPY org_222222220000400080000000000000a0.restored FROM STDIN;
1	one
2	two
\.
SELECT is((SELECT count(*) FROM dalgo.warehouse_tables WHERE organization_id = :A AND table_name = 'restored'), 1::bigint,
	'a table restored by pg_restore is registered once');
:as_owner_a
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table(:A, 'restored')), 2::bigint, 'and read through the warehouse role');

-- A foreign table.
:as_super
CREATE SERVER dalgo_test_remote FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname 'nowhere');
CREATE FOREIGN TABLE org_222222220000400080000000000000a0.remote (id integer) SERVER dalgo_test_remote;
SELECT ok(has_table_privilege(:'WA', 'org_222222220000400080000000000000a0.remote', 'SELECT'),
	'a foreign table is readable by the warehouse role');
SELECT is((SELECT count(*) FROM dalgo.warehouse_tables WHERE organization_id = :A AND table_name = 'remote'), 1::bigint,
	'and registered');

-- A table with a default and a trigger that run with a superuser's rights:
-- reading it runs neither, and nothing but reading is granted.
CREATE FUNCTION pg_temp.stamp() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN RETURN NEW; END $$;
CREATE TABLE org_222222220000400080000000000000a0.guarded (id integer, who text DEFAULT current_user);
CREATE TRIGGER stamp BEFORE INSERT ON org_222222220000400080000000000000a0.guarded FOR EACH ROW EXECUTE FUNCTION pg_temp.stamp();
SELECT is(ARRAY(SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) p
				WHERE has_table_privilege(:'WA', 'org_222222220000400080000000000000a0.guarded', p)),
	ARRAY['SELECT'], 'the warehouse role may only read a superuser''s table, never write it or fire its triggers');

-- Views read with their owner's rights: a superuser's view is not granted.
CREATE VIEW org_222222220000400080000000000000a0.roles AS SELECT rolname, rolpassword FROM pg_authid;
SELECT ok(NOT has_table_privilege(:'WA', 'org_222222220000400080000000000000a0.roles', 'SELECT'),
	'a superuser''s view is not granted (it would read pg_authid as the superuser)');

-- Nobody else gains anything: only A's warehouse role holds grants in A's schema.
SELECT is((SELECT array_agg(DISTINCT a.grantee::regrole::text) FROM pg_class c, aclexplode(c.relacl) a
		   WHERE c.relnamespace = 'org_222222220000400080000000000000a0'::regnamespace AND a.grantee <> c.relowner),
	ARRAY[:'WA'], 'no role but A''s warehouse role was granted anything in A''s warehouse');
SELECT is((SELECT count(*) FROM pg_class c WHERE c.relnamespace = 'org_222222220000400080000000000000a0'::regnamespace
		   AND (has_table_privilege(:'WB', c.oid, 'SELECT') OR has_table_privilege('dalgo_authenticated', c.oid, 'SELECT')
				OR has_table_privilege('dalgo_service', c.oid, 'SELECT') OR has_table_privilege('dalgo_anon', c.oid, 'SELECT'))),
	0::bigint, 'B''s warehouse role and the app roles read nothing of A''s warehouse');
SELECT is((SELECT count(*) FROM dalgo.warehouse_tables WHERE organization_id <> :A
		   AND table_name IN ('census', 'etl_out', 'restored', 'remote', 'guarded')), 0::bigint,
	'and no other organization registers A''s tables');

-- A table of B's warehouse role moved into A's schema is not adopted (its rows are B's).
CREATE TABLE org_222222220000400080000000000000b0.b_secret AS SELECT 'of B' AS x;
ALTER TABLE org_222222220000400080000000000000b0.b_secret OWNER TO dalgo_wh_222222220000400080000000000000b0;
SET LOCAL client_min_messages = error;
ALTER TABLE org_222222220000400080000000000000b0.b_secret SET SCHEMA org_222222220000400080000000000000a0;
SET LOCAL client_min_messages = warning;
SELECT ok(NOT has_table_privilege(:'WA', 'org_222222220000400080000000000000a0.b_secret', 'SELECT'),
	'a table owned by another organization''s warehouse role is not granted to A');
SELECT is((SELECT count(*) FROM dalgo.warehouse_tables WHERE organization_id = :A AND table_name = 'b_secret'), 0::bigint,
	'nor registered for A');

-- dalgo's own private names, and restore mode, are left alone.
CREATE TABLE org_222222220000400080000000000000a0._dalgo_private (x int);
SELECT is((SELECT count(*) FROM dalgo.warehouse_tables WHERE table_name = '_dalgo_private'), 0::bigint,
	'a _dalgo_ name is not registered');
SET LOCAL row_security = off;
CREATE TABLE org_222222220000400080000000000000a0.from_dump (x int);
RESET row_security;
SELECT is((SELECT count(*) FROM dalgo.warehouse_tables WHERE table_name = 'from_dump'), 0::bigint,
	'a pg_restore session (restore mode) restores warehouse_tables rows itself');
SELECT ok(NOT has_table_privilege(:'WA', 'org_222222220000400080000000000000a0.from_dump', 'SELECT'),
	'and its grants');
SELECT is(dalgo_internal.adopt_warehouse_tables(:A), 1,
	'what the event trigger did not see is adopted by the next sync (a pg_restore -t in restore mode, a table from before 0.2.0)');
SELECT ok(has_table_privilege(:'WA', 'org_222222220000400080000000000000a0.from_dump', 'SELECT')
	AND EXISTS (SELECT FROM dalgo.warehouse_tables WHERE organization_id = :A AND table_name = 'from_dump'),
	'then it is readable and registered');

-- A table nobody in dalgo produced, dropped, leaves the list.
DROP TABLE org_222222220000400080000000000000a0.etl_out;
:as_owner_a
SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000a7') AS run2 \gset
:as_super
SELECT is((SELECT count(*) FROM dalgo.warehouse_tables WHERE organization_id = :A AND table_name = 'etl_out' AND deleted_at IS NULL),
	0::bigint, 'a dropped table is no longer registered');
SELECT is((SELECT count(*) FROM dalgo.warehouse_tables WHERE organization_id = :A AND table_name = 'census_totals' AND deleted_at IS NULL),
	1::bigint, 'while the transformation''s own table stays registered across its swaps');

SELECT * FROM finish();
ROLLBACK;
