-- organization_deletion_catalog: deleting an organization deletes its data.
-- Its owner hard-deletes it; in the same transaction its warehouse schema
-- org_<hex>, with everything in it, and its warehouse role dalgo_wh_<hex>
-- are dropped, with whatever else the role owned or was granted.  The
-- catalog is then searched, table by table, for anything of it.
\set ECHO none
\i test/fixtures/tap_setup.sql
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set hex 222222220000400080000000000000a0
SELECT plan(24);

-- Fill the warehouse the way a busy organization would: tables with
-- sequences, views, a type, a function, default privileges, grants on
-- objects outside it, and an object the role owns elsewhere.
SELECT oid AS role_oid FROM pg_roles WHERE rolname = 'dalgo_wh_' || :'hex' \gset
SELECT oid AS schema_oid FROM pg_namespace WHERE nspname = 'org_' || :'hex' \gset
CREATE TABLE public.shared_lookup (code int);
GRANT SELECT ON public.shared_lookup TO dalgo_wh_:hex;
CREATE TABLE public.owned_elsewhere (x int);
ALTER TABLE public.owned_elsewhere OWNER TO dalgo_wh_:hex;
SET ROLE dalgo_wh_:hex;
CREATE TABLE org_:hex.counted (id serial PRIMARY KEY, label text);
CREATE INDEX ON org_:hex.counted (label);
CREATE VIEW org_:hex.counted_view AS SELECT * FROM org_:hex.counted;
CREATE MATERIALIZED VIEW org_:hex.counted_mat AS SELECT count(*) FROM org_:hex.counted;
CREATE TYPE org_:hex.mood AS ENUM ('ok', 'bad');
CREATE FUNCTION org_:hex.twice(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 2';
ALTER DEFAULT PRIVILEGES IN SCHEMA org_:hex GRANT SELECT ON TABLES TO dalgo_service;
COMMENT ON TABLE org_:hex.counted IS 'rows of organization A';
RESET ROLE;
SELECT ok((SELECT count(*) FROM pg_class WHERE relnamespace = :schema_oid) >= 6, 'before: the warehouse holds objects');

-- pg_temp.remains(): every catalog row that still names or belongs to
-- organization A's warehouse schema or role.
CREATE FUNCTION pg_temp.remains(role_oid oid, schema_oid oid, hex text) RETURNS TABLE (catalog text, what text)
LANGUAGE sql AS $$
	SELECT 'pg_namespace', nspname::text FROM pg_namespace WHERE oid = schema_oid OR nspname LIKE '%' || hex || '%' OR nspowner = role_oid
	UNION ALL SELECT 'pg_roles', rolname::text FROM pg_roles WHERE oid = role_oid OR rolname LIKE '%' || hex || '%'
	UNION ALL SELECT 'pg_class', relname::text FROM pg_class WHERE relnamespace = schema_oid OR relowner = role_oid
		OR relacl::text ~ ('(^|[{,"])' || role_oid || '=')
	UNION ALL SELECT 'pg_type', typname::text FROM pg_type WHERE typnamespace = schema_oid OR typowner = role_oid
	UNION ALL SELECT 'pg_proc', proname::text FROM pg_proc WHERE pronamespace = schema_oid OR proowner = role_oid
	UNION ALL SELECT 'pg_default_acl', defaclrole::text FROM pg_default_acl WHERE defaclrole = role_oid OR defaclnamespace = schema_oid
	UNION ALL SELECT 'pg_shdepend', classid::regclass::text || ' ' || objid FROM pg_shdepend
		WHERE refclassid = 'pg_authid'::regclass AND refobjid = role_oid
	UNION ALL SELECT 'pg_auth_members', roleid || '/' || member FROM pg_auth_members WHERE roleid = role_oid OR member = role_oid
	UNION ALL SELECT 'pg_shdescription', description FROM pg_shdescription WHERE objoid = role_oid
	UNION ALL SELECT 'pg_description', description FROM pg_description WHERE objoid = schema_oid
		OR description LIKE '%' || hex || '%'
	UNION ALL SELECT 'pg_depend', classid::regclass::text || ' ' || objid FROM pg_depend
		WHERE refclassid = 'pg_namespace'::regclass AND refobjid = schema_oid
	UNION ALL SELECT 'pg_namespace acl', nspname::text FROM pg_namespace WHERE nspacl::text ~ ('(^|[{,"])' || role_oid || '=')
$$;

-- The owner deletes organization A: gone at once, in the same transaction.
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
WITH d AS (DELETE FROM dalgo.organizations WHERE id = :A RETURNING 1)
	SELECT is(count(*), 1::bigint, 'the owner deletes the organization') FROM d;
RESET ROLE;
SELECT is_empty(format('SELECT * FROM pg_temp.remains(%s, %s, %L)', :role_oid, :schema_oid, :'hex'),
	'inside the deleting transaction nothing of its warehouse is left');
ROLLBACK;
SELECT is((SELECT count(*) FROM pg_namespace WHERE oid = :schema_oid) + (SELECT count(*) FROM pg_roles WHERE oid = :role_oid), 2::bigint,
	'a rolled-back delete keeps schema and role');
SELECT is((SELECT count(*) FROM org_:hex.counted), 0::bigint, 'and the tables in it');

BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
DELETE FROM dalgo.organizations WHERE id = :A;
COMMIT;

-- The catalog, table by table.
SELECT is_empty(format('SELECT * FROM pg_temp.remains(%s, %s, %L) WHERE catalog = %L', :role_oid, :schema_oid, :'hex', c), 'nothing in ' || c)
FROM unnest(ARRAY['pg_namespace', 'pg_roles', 'pg_class', 'pg_type', 'pg_proc', 'pg_default_acl', 'pg_shdepend',
				  'pg_auth_members', 'pg_shdescription', 'pg_description', 'pg_depend', 'pg_namespace acl']) c;
SELECT is(to_regclass('public.owned_elsewhere'), NULL,
	'what the role owned outside its schema went with it (DROP OWNED BY)');
SELECT ok(has_table_privilege('dalgo_service', 'public.shared_lookup', 'SELECT') IS NOT NULL
		  AND (SELECT relacl::text FROM pg_class WHERE oid = 'public.shared_lookup'::regclass) NOT LIKE '%' || :role_oid || '%',
	'grants to the role on others'' objects are gone');

-- Nothing of A's in dalgo's tables either (but the audit trail, which outlives it by design).
CREATE FUNCTION pg_temp.rows_of(org uuid) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	t text;
	n bigint;
	total bigint := 0;
BEGIN
	FOR t IN SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'organization_id'
			 WHERE c.relnamespace = 'dalgo'::regnamespace AND c.relkind = 'r' AND c.relname <> 'audit_logs'
	LOOP
		EXECUTE format('SELECT count(*) FROM dalgo.%I WHERE organization_id = $1', t) INTO n USING org;
		total := total + n;
	END LOOP;
	RETURN total + (SELECT count(*) FROM dalgo.organizations WHERE id = org);
END
$$;
SELECT is(pg_temp.rows_of(:A), 0::bigint, 'no dalgo row of the organization remains');
SELECT ok(pg_temp.rows_of('22222222-0000-4000-8000-0000000000b0') > 0
		  AND EXISTS (SELECT FROM pg_namespace WHERE nspname = 'org_222222220000400080000000000000b0'),
	'organization B and its warehouse are untouched');

-- Service work deletes organization B (no identity): its warehouse goes too.
DROP TABLE public.shared_lookup;
DELETE FROM dalgo.organizations WHERE id = '22222222-0000-4000-8000-0000000000b0';
DELETE FROM dalgo.users WHERE id IN ('11111111-0000-4000-8000-000000000001', '11111111-0000-4000-8000-000000000002',
									 '11111111-0000-4000-8000-000000000003');
SELECT is((SELECT count(*) FROM pg_roles WHERE rolname IN ('dalgo_wh_222222220000400080000000000000a0', 'dalgo_wh_222222220000400080000000000000b0'))
		  + (SELECT count(*) FROM pg_namespace WHERE nspname IN ('org_222222220000400080000000000000a0', 'org_222222220000400080000000000000b0')),
	0::bigint, 'deleting organization B as service work leaves no warehouse role or schema of either');

-- dalgo drops only what it made: a schema of the warehouse's name that
-- another role owns stays (with a warning), and so does a role of the
-- warehouse role's name that owns objects in it.
INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000c9', 'Squatted', 'squatted');
CREATE SCHEMA org_222222220000400080000000000000c9;
CREATE TABLE org_222222220000400080000000000000c9.precious (x int);
SELECT throws_ok($$SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000c9')$$, '55000', NULL,
	'dalgo refuses to adopt a schema it did not make');
DELETE FROM dalgo.organizations WHERE id = '22222222-0000-4000-8000-0000000000c9';
SELECT isnt(to_regclass('org_222222220000400080000000000000c9.precious'), NULL,
	'deleting the organization leaves a schema dalgo did not make, and what is in it');
DROP SCHEMA org_222222220000400080000000000000c9 CASCADE;
DROP ROLE IF EXISTS dalgo_wh_222222220000400080000000000000c9;

SELECT * FROM finish();
