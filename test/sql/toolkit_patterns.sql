-- toolkit_patterns: each policy pattern secures a plain table with one
-- call: organization rows (with and without an owner column), own rows
-- (and zero-trust immutable rows), public read with a condition, shared
-- rows, child rows, service only; each call is idempotent and its
-- disable_ counterpart removes it.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/toolkit_users.sql
CREATE SCHEMA app;
CREATE TABLE app.notes (id serial PRIMARY KEY, organization_id uuid, user_id uuid, body text);
CREATE TABLE app.diary (id serial PRIMARY KEY, user_id uuid NOT NULL, body text);
CREATE TABLE app.ledger (id serial PRIMARY KEY, user_id uuid NOT NULL, amount int);
CREATE TABLE app.flags (id serial PRIMARY KEY, name text, enabled boolean);
CREATE TABLE app.docs (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id uuid NOT NULL, title text, is_public boolean NOT NULL DEFAULT false);
CREATE TYPE app.perm AS ENUM ('view', 'edit');
CREATE TABLE app.doc_shares (doc_id uuid REFERENCES app.docs (id), user_id uuid, permission app.perm, shared_by uuid, PRIMARY KEY (doc_id, user_id));
CREATE TABLE app.doc_pages (id serial PRIMARY KEY, doc_id uuid NOT NULL REFERENCES app.docs (id), text text);
CREATE TABLE app.internal (id serial PRIMARY KEY, secret_sauce text);
SELECT dalgo.enable_org_rows('app.notes', owner_column => 'user_id');
SELECT dalgo.enable_org_rows('app.notes', owner_column => 'user_id');
SELECT dalgo.enable_own_rows('app.diary');
SELECT dalgo.enable_own_rows('app.ledger', immutable => true);
SELECT dalgo.enable_public_read('app.flags', 'enabled');
SELECT dalgo.enable_shared_rows('app.docs', 'app.doc_shares');
SELECT dalgo.enable_child_rows('app.doc_pages', 'app.docs');
SELECT dalgo.enable_service_only('app.internal');
INSERT INTO app.notes (organization_id, user_id, body) VALUES
	(:A, :OWNER_A, 'a by owner'), (:A, :MEMBER_A, 'a by member'), (:B, :OWNER_B, 'b by owner'),
	(NULL, :LONER, 'loner private'), (:B, :VIEWER_A, 'viewer a owns a row in b');
INSERT INTO app.diary (user_id, body) VALUES (:OWNER_A, 'dear diary A'), (:OWNER_B, 'dear diary B');
INSERT INTO app.ledger (user_id, amount) VALUES (:OWNER_A, 10), (:OWNER_B, 20);
INSERT INTO app.flags (name, enabled) VALUES ('on', true), ('off', false);
INSERT INTO app.docs (id, user_id, title, is_public) VALUES
	('dddddddd-0000-4000-8000-000000000001', :OWNER_A, 'A private', false),
	('dddddddd-0000-4000-8000-000000000002', :OWNER_A, 'A public', true),
	('dddddddd-0000-4000-8000-000000000003', :OWNER_B, 'B shared with member A to view', false),
	('dddddddd-0000-4000-8000-000000000004', :OWNER_B, 'B shared with member A to edit', false);
INSERT INTO app.doc_shares VALUES
	('dddddddd-0000-4000-8000-000000000003', :MEMBER_A, 'view', :OWNER_B),
	('dddddddd-0000-4000-8000-000000000004', :MEMBER_A, 'edit', :OWNER_B);
INSERT INTO app.doc_pages (doc_id, text) SELECT id, 'page of ' || title FROM app.docs;
INSERT INTO app.internal (secret_sauce) VALUES ('ketchup');
SELECT plan(46);

-- Organization rows, with the owner column.
:as_viewer_a
SELECT set_eq('SELECT body FROM app.notes', ARRAY['a by owner', 'a by member', 'viewer a owns a row in b'],
	'a viewer reads the rows of their organization and their own rows elsewhere');
SELECT throws_ok($$INSERT INTO app.notes (organization_id, user_id, body) VALUES ('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000004', 'x')$$,
	'42501', NULL, 'a viewer cannot add a row to the organization (write_role member)');
SELECT is(pg_temp.affected($q$UPDATE app.notes SET body = 'edited' WHERE body = 'a by owner'$q$), 0::bigint,
	'a viewer changes no row of the organization');
SELECT throws_ok($$UPDATE app.notes SET body = 'edited' WHERE body = 'viewer a owns a row in b'$$,
	'42501', NULL, 'an owner''s row stays in no organization where the owner lacks write_role, even unchanged');
SELECT lives_ok($$UPDATE app.notes SET organization_id = NULL WHERE body = 'viewer a owns a row in b'$$,
	'...but the owner may take it out of the organization');
:as_member_a
SELECT lives_ok($$INSERT INTO app.notes (organization_id, user_id, body) VALUES ('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000002', 'new by member')$$,
	'a member adds a row to the organization');
SELECT is(pg_temp.affected($q$UPDATE app.notes SET body = body || '!' WHERE organization_id = '22222222-0000-4000-8000-0000000000a0'$q$), 3::bigint,
	'a member changes every row of the organization');
SELECT throws_ok($$UPDATE app.notes SET organization_id = '22222222-0000-4000-8000-0000000000b0' WHERE body LIKE 'a by member%'$$,
	'42501', NULL, 'a member cannot move a row to an organization they are not in');
SELECT throws_ok($$INSERT INTO app.notes (organization_id, user_id, body) VALUES ('22222222-0000-4000-8000-0000000000b0', '11111111-0000-4000-8000-000000000002', 'x')$$,
	'42501', NULL, 'a member cannot add a row to another organization, even as its owner');
:as_loner
SELECT set_eq('SELECT body FROM app.notes', ARRAY['loner private'], 'a user in no organization reads only their own rows');
SELECT lives_ok($$INSERT INTO app.notes (organization_id, user_id, body) VALUES (NULL, '11111111-0000-4000-8000-000000000005', 'loner again')$$,
	'a user adds a private row of their own');
SELECT throws_ok($$INSERT INTO app.notes (organization_id, user_id, body) VALUES (NULL, '11111111-0000-4000-8000-000000000001', 'forged')$$,
	'42501', NULL, 'a private row cannot be forged in another user''s name');

-- Own rows.
:as_owner_a
SELECT set_eq('SELECT body FROM app.diary', ARRAY['dear diary A'], 'an owner reads only their own rows');
SELECT lives_ok($$UPDATE app.diary SET body = 'dear diary, edited'$$, 'an owner changes their rows');
SELECT throws_ok($$UPDATE app.diary SET user_id = '11111111-0000-4000-8000-000000000003'$$, '42501', NULL,
	'an owner cannot give a row away');
SELECT throws_ok($$INSERT INTO app.diary (user_id, body) VALUES ('11111111-0000-4000-8000-000000000003', 'forged')$$, '42501', NULL,
	'a row cannot be forged in another user''s name');
SELECT is(pg_temp.affected($q$DELETE FROM app.diary WHERE user_id = '11111111-0000-4000-8000-000000000003'$q$), 0::bigint,
	'another user''s rows cannot be deleted');

-- Immutable own rows (zero trust).
SELECT set_eq('SELECT amount FROM app.ledger', ARRAY[10], 'immutable rows: the owner reads their rows');
SELECT lives_ok($$INSERT INTO app.ledger (user_id, amount) VALUES ('11111111-0000-4000-8000-000000000001', 11)$$,
	'immutable rows: the owner inserts');
SELECT throws_ok($$UPDATE app.ledger SET amount = 0$$, '42501', NULL, 'immutable rows: not even the owner updates');
SELECT throws_ok($$DELETE FROM app.ledger$$, '42501', NULL, 'immutable rows: not even the owner deletes');
:as_service
SELECT throws_ok($$UPDATE app.ledger SET amount = 0$$, '42501', NULL, 'immutable rows: dalgo_service does not update either');
SELECT throws_ok($$DELETE FROM app.ledger$$, '42501', NULL, 'immutable rows: dalgo_service does not delete either');
SELECT is((SELECT count(*) FROM app.ledger), 3::bigint, 'immutable rows: dalgo_service reads them all');

-- Public read.
:as_anon
SELECT set_eq('SELECT name FROM app.flags', ARRAY['on'], 'dalgo_anon reads the rows where the condition holds');
SELECT throws_ok($$INSERT INTO app.flags (name, enabled) VALUES ('mine', true)$$, '42501', NULL, 'dalgo_anon does not write');
:as_loner
SELECT set_eq('SELECT name FROM app.flags', ARRAY['on'], 'a signed-in user reads the same rows');
SELECT throws_ok($$UPDATE app.flags SET enabled = true$$, '42501', NULL, 'a signed-in user does not write');
:as_service
SELECT lives_ok($$UPDATE app.flags SET enabled = true WHERE name = 'off'$$, 'dalgo_service writes');

-- Shared rows and child rows.
:as_member_a
SELECT set_eq('SELECT title FROM app.docs', ARRAY['A public', 'B shared with member A to view', 'B shared with member A to edit'],
	'a user reads public rows and the rows shared with them');
SELECT is(pg_temp.affected($q$UPDATE app.docs SET title = title || '!'$q$), 1::bigint,
	'a user changes only the rows shared with them to edit');
SELECT throws_ok($$UPDATE app.docs SET user_id = '11111111-0000-4000-8000-000000000002'$$, '42501', NULL,
	'an editor cannot take the row over');
SELECT is(pg_temp.affected($q$DELETE FROM app.docs$q$), 0::bigint, 'only owners delete');
SELECT throws_ok($$INSERT INTO app.doc_shares VALUES ('dddddddd-0000-4000-8000-000000000003', '11111111-0000-4000-8000-000000000004', 'edit', '11111111-0000-4000-8000-000000000002')$$,
	'42501', NULL, 'only the owner shares a row');
SELECT set_eq('SELECT text FROM app.doc_pages', ARRAY['page of A public', 'page of B shared with member A to view', 'page of B shared with member A to edit'],
	'child rows: read with their parent');
SELECT is(pg_temp.affected($q$UPDATE app.doc_pages SET text = text || '?'$q$), 1::bigint,
	'child rows: changed only under a parent the user may change');
SELECT throws_ok($$INSERT INTO app.doc_pages (doc_id, text) VALUES ('dddddddd-0000-4000-8000-000000000003', 'x')$$,
	'42501', NULL, 'child rows: not added under a parent the user only reads');
:as_owner_b
SELECT lives_ok($$DELETE FROM app.doc_shares WHERE user_id = '11111111-0000-4000-8000-000000000002' AND permission = 'edit'$$,
	'the owner revokes a share');
:as_member_a
SELECT set_eq('SELECT title FROM app.docs', ARRAY['A public', 'B shared with member A to view'], 'a revoked share reads nothing');

-- Service only.
:as_owner_a
SELECT throws_ok('SELECT * FROM app.internal', '42501', NULL, 'service only: end users have no privilege');
:as_service
SELECT is((SELECT secret_sauce FROM app.internal), 'ketchup', 'service only: dalgo_service reads');

-- Idempotent, and undone.
:as_super
SELECT set_eq($$SELECT polname FROM pg_policy WHERE polrelid = 'app.notes'::regclass$$,
	ARRAY['dalgo_org_select', 'dalgo_org_insert', 'dalgo_org_update', 'dalgo_org_delete', 'dalgo_service'],
	'calling a pattern twice leaves one set of policies');
SELECT dalgo.disable_org_rows('app.notes');
SELECT set_eq($$SELECT polname FROM pg_policy WHERE polrelid = 'app.notes'::regclass$$, ARRAY['dalgo_service'],
	'disable_org_rows removes its policies');
:as_owner_a
SELECT is((SELECT count(*) FROM app.notes), 0::bigint, '...and row-level security stays on: nothing is visible');
:as_super
SELECT dalgo.disable_own_rows('app.diary');
SELECT dalgo.disable_public_read('app.flags');
SELECT dalgo.disable_shared_rows('app.docs', 'app.doc_shares');
SELECT dalgo.disable_child_rows('app.doc_pages');
SELECT is_empty($$SELECT polname FROM pg_policy WHERE polrelid IN ('app.diary'::regclass, 'app.flags'::regclass, 'app.docs'::regclass,
	'app.doc_shares'::regclass, 'app.doc_pages'::regclass) AND polname <> 'dalgo_service'$$,
	'every disable_ counterpart removes its policies');
SELECT ok(NOT has_table_privilege('dalgo_anon', 'app.flags', 'SELECT'), 'disable_public_read takes SELECT back from dalgo_anon');
SELECT * FROM finish();
ROLLBACK;
