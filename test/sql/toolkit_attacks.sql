-- toolkit_attacks: the toolkit cannot be turned against a schema.  App
-- roles cannot call it; a role given EXECUTE cannot secure (or unsecure)
-- a table it does not own; search_path and temporary objects do not
-- change what it creates; a public-read condition cannot smuggle SQL,
-- subqueries, volatile or temporary functions; anonymous and cross-tenant
-- reads, forged rows and moved rows are refused.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/toolkit_users.sql
CREATE SCHEMA app;
CREATE TABLE app.notes (id serial PRIMARY KEY, organization_id uuid, user_id uuid, body text);
CREATE TABLE app.flags (id serial PRIMARY KEY, name text, enabled boolean, secret text);
CREATE TABLE app.other (id serial PRIMARY KEY, enabled boolean);
INSERT INTO app.notes (organization_id, user_id, body) VALUES
	(:A, :OWNER_A, 'a'), (:B, :OWNER_B, 'b');
INSERT INTO app.flags (name, enabled, secret) VALUES ('on', true, 's1'), ('off', false, 's2');
CREATE ROLE tk_mallory;
GRANT EXECUTE ON FUNCTION dalgo.enable_public_read(regclass, text), dalgo.disable_org_rows(regclass) TO tk_mallory;
GRANT EXECUTE ON FUNCTION dalgo_internal.toolkit_target(regclass), dalgo_internal.toolkit_drop_policies(regclass, text) TO tk_mallory;
GRANT USAGE ON SCHEMA app, dalgo, dalgo_internal TO tk_mallory;
SELECT plan(29);

-- Who may call.
:as_owner_a
SELECT throws_ok($$SELECT dalgo.enable_org_rows('app.notes')$$, '42501', NULL, 'dalgo_authenticated cannot call the toolkit');
:as_anon
SELECT throws_ok($$SELECT dalgo.enable_public_read('app.notes')$$, '42501', NULL, 'dalgo_anon cannot call the toolkit');
:as_service
SELECT throws_ok($$SELECT dalgo.enable_own_rows('app.notes')$$, '42501', NULL, 'dalgo_service cannot call the toolkit');
:as_super
SET LOCAL ROLE tk_mallory;
SELECT throws_ok($$SELECT dalgo.enable_public_read('app.notes')$$, '42501', 'must be owner of table notes',
	'a role granted EXECUTE cannot open a table it does not own to everyone');
SELECT throws_ok($$SELECT dalgo.disable_org_rows('app.notes')$$, '42501', 'must be owner of table notes',
	'...nor remove its policies');
:as_super
SELECT throws_ok($$SELECT dalgo.enable_public_read('dalgo.users')$$, '22023', NULL, 'dalgo''s own tables keep their own policies');
CREATE TEMP TABLE shadow (id int, enabled boolean);
SELECT throws_ok($$SELECT dalgo.enable_public_read('shadow')$$, '42809', NULL, 'a temporary table is refused');
SELECT throws_ok($$SELECT dalgo.enable_org_rows('app.notes', 'body')$$, '42804', NULL, 'the organization column must be a uuid');
SELECT throws_ok($$SELECT dalgo.enable_org_rows('app.notes', 'nope')$$, '42703', NULL, 'a missing column is refused');

-- search_path and temporary objects do not change what is created.
CREATE SCHEMA evil;
CREATE FUNCTION evil.format(text, name) RETURNS text LANGUAGE sql AS $$ SELECT 'true' $$;
CREATE FUNCTION evil.uuid_eq_evil(uuid, uuid) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.uuid_eq_evil);
CREATE FUNCTION pg_temp.current_org_ids(dalgo.member_role) RETURNS uuid[] LANGUAGE sql AS $$ SELECT array_agg(id) FROM dalgo.organizations $$;
SET LOCAL search_path = evil, pg_temp, public;
SELECT dalgo.enable_org_rows('app.notes');
RESET search_path;
SELECT is((SELECT pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polrelid = 'app.notes'::regclass AND polname = 'dalgo_org_select'),
	'(organization_id = ANY (( SELECT dalgo.current_org_ids(''viewer''::dalgo.member_role) AS current_org_ids)::uuid[]))',
	'a hostile search_path (functions, operators, pg_temp) does not reach the generated policy');
SELECT is_empty($$SELECT d.refobjid FROM pg_policy p JOIN pg_depend d ON d.classid = 'pg_policy'::regclass AND d.objid = p.oid
		   WHERE p.polrelid = 'app.notes'::regclass
			 AND d.refobjid IN (SELECT oid FROM pg_operator WHERE oprnamespace = 'evil'::regnamespace
								UNION ALL SELECT oid FROM pg_proc WHERE pronamespace IN ('evil'::regnamespace, pg_my_temp_schema()))$$,
	'no policy depends on the hostile schema''s or pg_temp''s functions and operators');
:as_owner_b
SELECT set_eq('SELECT body FROM app.notes', ARRAY['b'], 'moving reads: another organization''s rows stay hidden');
SELECT throws_ok($$UPDATE app.notes SET organization_id = '22222222-0000-4000-8000-0000000000a0'$$, '42501', NULL,
	'moving rows: a row cannot be moved into another organization');
SELECT throws_ok($$INSERT INTO app.notes (organization_id, body) VALUES ('22222222-0000-4000-8000-0000000000a0', 'forged')$$,
	'42501', NULL, 'forged rows: no row is written into another organization');
:as_anon
SELECT throws_ok('SELECT * FROM app.notes', '42501', NULL, 'anonymous reads of organization rows are refused');

-- Condition injection.
:as_super
SELECT throws_ok($$SELECT dalgo.enable_public_read('app.flags', 'true; DROP TABLE app.other')$$, '22023',
	'condition must be a single boolean expression', 'a second statement is refused');
SELECT throws_ok($$SELECT dalgo.enable_public_read('app.flags', '*')$$, '22023',
	'condition must be a single boolean expression', 'a star is refused (analyzing it crashed the server)');
SELECT throws_ok($$SELECT dalgo.enable_public_read('app.flags', 'flags.*')$$, '22023',
	'condition must be a single boolean expression', 'a whole-row star is refused');
SELECT throws_ok($$SELECT dalgo.enable_public_read('app.flags', 'true FROM pg_authid')$$, '22023',
	'condition must be a single boolean expression', 'a FROM clause is refused');
SELECT throws_ok($$SELECT dalgo.enable_public_read('app.flags', 'enabled) OR (true')$$, '42601', NULL,
	'breaking out of the parentheses is a syntax error');
SELECT throws_ok($$SELECT dalgo.enable_public_read('app.flags', 'enabled OR EXISTS (SELECT FROM app.other)')$$, '22023',
	'condition is not allowed: subqueries are not allowed', 'a subquery is refused');
SELECT throws_ok($$SELECT dalgo.enable_public_read('app.flags', 'random() < 0.5')$$, '22023',
	'condition is not allowed: it may only call immutable functions', 'a volatile function is refused');
SELECT throws_ok($$SELECT dalgo.enable_public_read('app.flags', 'name = current_setting(''x.y'')')$$, '22023',
	'condition is not allowed: it may only call immutable functions', 'a stable function is refused');
CREATE FUNCTION pg_temp.always(boolean) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT true $$;
SELECT throws_ok($$SELECT dalgo.enable_public_read('app.flags', 'pg_temp.always(enabled)')$$, '22023',
	'condition is not allowed: functions of temporary schemas are not allowed', 'a temporary function is refused');
SELECT throws_ok($$SELECT dalgo.enable_public_read('app.flags', 'app.other.enabled')$$, '42P01', NULL,
	'another table''s column is refused');
SELECT throws_ok($$SELECT dalgo.enable_public_read('app.flags', 'secret')$$, '42804', NULL, 'a condition must be boolean');
SELECT lives_ok($$SELECT dalgo.enable_public_read('app.flags', 'enabled -- AND false')$$, 'a trailing comment is harmless...');
SELECT is((SELECT pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polrelid = 'app.flags'::regclass AND polname = 'dalgo_public_select'),
	'enabled', '...because the policy holds the analyzed condition, not the text given');
:as_anon
SELECT set_eq('SELECT name FROM app.flags', ARRAY['on'], 'dalgo_anon reads only the rows the condition allows');
SELECT * FROM finish();
ROLLBACK;
