-- warehouse_export: export_warehouse_table writes every row as COPY would
-- (csv with a header, COPY's text format, or json lines) for members of the
-- organization, read as its warehouse role; read_warehouse_table pages by
-- key (key_column, after); export_organization gives owners the metadata
-- with no credentials.  Other organizations, viewers (for the organization
-- export) and names outside the warehouse get nothing.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_authenticated;'
\set as_owner_b 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000003''; SET LOCAL ROLE dalgo_authenticated;'
SELECT plan(22);

CREATE TABLE org_222222220000400080000000000000a0.people (id int, name text, note text);
INSERT INTO org_222222220000400080000000000000a0.people VALUES
	(1, 'Asha', 'plain'), (2, 'Ben, Jr.', 'says "hi"'), (3, 'Chitra', E'two\nlines'), (4, NULL, ''), (5, 'Dev', E'tab\there \\ back');
ALTER TABLE org_222222220000400080000000000000a0.people OWNER TO dalgo_wh_222222220000400080000000000000a0;
UPDATE dalgo.sources SET config = '{"sheet": "Visits", "password": "hunter2", "api_key": "sk-live-123"}'
	WHERE id = '33333333-0000-4000-8000-0000000000a1';

:as_member_a
SELECT is(array_agg(l), ARRAY['id,name,note', '1,Asha,plain', '2,"Ben, Jr.","says ""hi"""', E'3,Chitra,"two\nlines"', '4,,""',
							  E'5,Dev,tab\there \\ back'],
	'export csv: a header line, then each row as COPY (FORMAT csv) writes it (NULL empty, empty string quoted)')
	FROM dalgo.export_warehouse_table(:A, 'people') l;
SELECT is(array_agg(l), ARRAY[E'1\tAsha\tplain', E'2\tBen, Jr.\tsays "hi"', E'3\tChitra\ttwo\\nlines', E'4\t\\N\t',
							  E'5\tDev\ttab\\there \\\\ back'],
	'export text: COPY''s text format (\N for NULL, backslash escapes)')
	FROM dalgo.export_warehouse_table(:A, 'people', 'text') l;
SELECT is((SELECT array_agg(l::jsonb->>'name') FROM dalgo.export_warehouse_table(:A, 'people', 'json') l),
	ARRAY['Asha', 'Ben, Jr.', 'Chitra', NULL, 'Dev'], 'export json: one object per row');
SELECT is((SELECT l FROM dalgo.export_warehouse_table(:A, 'people', 'json') l LIMIT 1), '{"id":1,"name":"Asha","note":"plain"}',
	'export json keeps the column order');
SELECT is((SELECT count(*) FROM dalgo.export_warehouse_table(:A, 'visits', 'text')), 5::bigint, 'the select-list and FROM forms agree');
SELECT throws_ok($$SELECT dalgo.export_warehouse_table('22222222-0000-4000-8000-0000000000a0', 'people', 'xml')$$, '22023',
	'unknown export format "xml"', 'an unknown format is refused');
SELECT throws_ok($$SELECT dalgo.export_warehouse_table('22222222-0000-4000-8000-0000000000a0', 'pg_catalog.pg_authid')$$, '22023', NULL,
	'a name outside the warehouse is refused');
SELECT throws_ok($$SELECT dalgo.export_warehouse_table('22222222-0000-4000-8000-0000000000a0', 'org_222222220000400080000000000000b0.visits')$$,
	'22023', NULL, 'so is another organization''s table');
-- A temporary table or function named like what the export reads changes nothing.
CREATE TEMP TABLE people (id int, name text, note text);
INSERT INTO people VALUES (99, 'forged', 'forged');
CREATE FUNCTION pg_temp.compile_recipe(uuid, jsonb) RETURNS text LANGUAGE sql AS $f$ SELECT 'SELECT 99' $f$;
SELECT is((SELECT l FROM dalgo.export_warehouse_table(:A, 'people', 'json') l LIMIT 1), '{"id":1,"name":"Asha","note":"plain"}',
	'a temporary table or function does not take part in the export');

-- Keyset paging.
SELECT is((SELECT array_agg(r->>'id') FROM dalgo.read_warehouse_table(:A, 'people', 2, 'id') r), ARRAY['1', '2'], 'page 1 in key order');
SELECT is((SELECT array_agg(r->>'id') FROM dalgo.read_warehouse_table(:A, 'people', 2, 'id', '2') r), ARRAY['3', '4'], 'page 2 after key 2');
SELECT is((SELECT array_agg(r->>'id') FROM dalgo.read_warehouse_table(:A, 'people', 2, 'id', '4') r), ARRAY['5'], 'the last page');
SELECT is((SELECT count(*) FROM dalgo.read_warehouse_table(:A, 'people', 2, 'id', '5') r), 0::bigint, 'then nothing');
SELECT is((SELECT array_agg(r->>'name') FROM dalgo.read_warehouse_table(:A, 'people', 10, 'name', '"Ben, Jr."') r),
	ARRAY['Chitra', 'Dev'], 'a text key');
SELECT throws_ok($$SELECT * FROM dalgo.read_warehouse_table('22222222-0000-4000-8000-0000000000a0', 'people', 2, NULL, '3')$$, '22023',
	'after needs key_column, the column the pages are ordered by', 'after without key_column is refused');
SELECT throws_ok($$SELECT * FROM dalgo.read_warehouse_table('22222222-0000-4000-8000-0000000000a0', 'people', 2, 'id', '{"x": 1}')$$, '22023',
	NULL, 'after must be a scalar');
SELECT throws_ok($$SELECT * FROM dalgo.read_warehouse_table('22222222-0000-4000-8000-0000000000a0', 'people', 2, 'id; drop table x', '3')$$, '22023',
	NULL, 'key_column names a column, nothing else');

-- The organization's metadata, for owners, without credentials.
:as_owner_a
SELECT is(dalgo.export_organization(:A)->'sources'->0->'config',
	dalgo.redact('{"sheet": "Visits", "password": "hunter2", "api_key": "sk-live-123"}'::jsonb), 'export_organization: source config redacted');
SELECT unalike(dalgo.export_organization(:A)::text, '%hunter2%', 'export_organization: no credential anywhere in the document');
SELECT is((SELECT jsonb_path_query_array(dalgo.export_organization(:A), '$.transformations[*].versions[*].version_number')),
	'[1]', 'export_organization: transformations with their versions');
:as_member_a
SELECT throws_ok($$SELECT dalgo.export_organization('22222222-0000-4000-8000-0000000000a0')$$, '42501',
	'exporting an organization needs the owner role', 'a member cannot export the organization');
:as_owner_b
SELECT throws_ok($$SELECT dalgo.export_organization('22222222-0000-4000-8000-0000000000a0')$$, '42501',
	'organization 22222222-0000-4000-8000-0000000000a0 does not exist or you are not a member', 'nor another organization''s owner');

SELECT * FROM finish();
ROLLBACK;
