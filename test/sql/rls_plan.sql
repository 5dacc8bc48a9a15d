-- rls_plan: the tenant SELECT policy is index-friendly.  A member's
-- count(*) over an organization table uses the organization_id index with
-- the membership list computed once (an initPlan), not a per-row function
-- call over a sequential scan.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-0000000000e1', 'plan@example.org');
INSERT INTO dalgo.organizations (id, name, slug)
	SELECT ('44440000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'org ' || i, 'plan-org-' || i
	FROM generate_series(1, 200) i;
INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	SELECT ('44440000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, '11111111-0000-4000-8000-0000000000e1', 'viewer'
	FROM generate_series(1, 5) i;
INSERT INTO dalgo.sources (organization_id, name, source_type)
	SELECT ('44440000-0000-4000-8000-' || lpad(to_hex(1 + i % 200), 12, '0'))::uuid, 'source ' || i, 'csv'
	FROM generate_series(1, 20000) i;
ANALYZE dalgo.sources;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e1';
SET LOCAL ROLE dalgo_authenticated;
CREATE FUNCTION pg_temp.plan_of(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	line text;
	result text := '';
BEGIN
	FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || q LOOP
		result := result || line || E'\n';
	END LOOP;
	RETURN result;
END
$$;
SELECT plan(4);
SELECT is((SELECT count(*) FROM dalgo.sources), 500::bigint, 'the member counts the rows of their 5 organizations');
SELECT matches(pg_temp.plan_of('SELECT count(*) FROM dalgo.sources'),
	'Index Cond: \(organization_id = ANY \(\$0\)\)', 'the policy is an index condition');
SELECT doesnt_match(pg_temp.plan_of('SELECT count(*) FROM dalgo.sources'), 'Seq Scan', 'no sequential scan');
SELECT matches(pg_temp.plan_of('SELECT count(*) FROM dalgo.sources'), 'InitPlan 1',
	'the membership list is computed once per statement');
SELECT * FROM finish();
\pset tuples_only false
\pset format aligned
EXPLAIN (COSTS OFF) SELECT count(*) FROM dalgo.sources;
ROLLBACK;
