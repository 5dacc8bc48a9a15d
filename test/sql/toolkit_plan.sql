-- toolkit_plan: the policies a pattern generates are index-friendly: the
-- caller's organizations or id are computed once per statement (an
-- initPlan) and the pattern's column is an index condition; the pattern
-- creates that index, with a NOTICE, when the table has none.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/toolkit_users.sql
CREATE SCHEMA app;
CREATE TABLE app.notes (id serial PRIMARY KEY, organization_id uuid, body text);
CREATE TABLE app.diary (id serial PRIMARY KEY, user_id uuid NOT NULL, body text);
CREATE INDEX diary_user_id_body ON app.diary (user_id, body);
SET LOCAL client_min_messages = notice;
\set QUIET 0
\pset tuples_only false
SELECT dalgo.enable_org_rows('app.notes');
SELECT dalgo.enable_own_rows('app.diary');
\pset tuples_only true
\set QUIET 1
SET LOCAL client_min_messages = warning;
INSERT INTO app.notes (organization_id, body)
	SELECT CASE WHEN i % 100 = 0 THEN :A::uuid ELSE gen_random_uuid() END, 'n' || i FROM generate_series(1, 20000) i;
INSERT INTO app.diary (user_id, body)
	SELECT CASE WHEN i % 100 = 0 THEN :OWNER_A::uuid ELSE gen_random_uuid() END, 'd' || i FROM generate_series(1, 20000) i;
ANALYZE app.notes;
ANALYZE app.diary;
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
SELECT plan(8);
SELECT is((SELECT count(*) FROM pg_index WHERE indrelid = 'app.notes'::regclass AND indkey[0] = 2), 1::bigint,
	'enable_org_rows created the organization column''s index');
SELECT is((SELECT count(*) FROM pg_index WHERE indrelid = 'app.diary'::regclass AND indkey[0] = 2), 1::bigint,
	'enable_own_rows kept the index that already led with the owner column');
:as_owner_a
SELECT is((SELECT count(*) FROM app.notes), 200::bigint, 'the member counts their organization''s rows');
SELECT matches(pg_temp.plan_of('SELECT count(*) FROM app.notes'), 'Index Cond: \(organization_id = ANY \(\$0\)\)',
	'organization rows: the policy is an index condition');
SELECT matches(pg_temp.plan_of('SELECT count(*) FROM app.notes'), 'InitPlan 1', 'organization rows: membership computed once');
SELECT is((SELECT count(*) FROM app.diary), 200::bigint, 'the owner counts their rows');
SELECT matches(pg_temp.plan_of('SELECT count(*) FROM app.diary'), 'Index Cond: \(user_id = \$0\)', 'own rows: the policy is an index condition');
SELECT doesnt_match(pg_temp.plan_of('SELECT count(*) FROM app.diary'), 'SubPlan|Seq Scan', 'own rows: no per-row call, no sequential scan');
SELECT * FROM finish();
ROLLBACK;
