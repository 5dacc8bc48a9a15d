-- toolkit_secrets: dalgo.enable_encryption() stores a column encrypted at
-- rest (what a dump or a superuser's SELECT shows is ciphertext); only
-- members at the column's read_role read plaintext through
-- dalgo.read_secret(), dalgo_service through read_secret_service();
-- dalgo.rotate_secret_key() re-encrypts everything, and a rotation rolled
-- back loses nothing; no change after encryption puts plaintext in the
-- audit trail.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/toolkit_users.sql
CREATE SCHEMA app;
CREATE TABLE app.connections (id bigserial PRIMARY KEY, organization_id uuid NOT NULL, name text,
	api_key text, settings jsonb);
SELECT dalgo.enable_org_rows('app.connections', write_role => 'admin');
SELECT dalgo.enable_audit('app.connections');
INSERT INTO app.connections (organization_id, name, api_key, settings) VALUES
	(:A, 'a', 'sk-live-aaaa', '{"password": "pw-a", "host": "db-a"}'),
	(:B, 'b', 'sk-live-bbbb', '{"password": "pw-b"}');
SELECT plan(21);
SELECT ok(EXISTS (SELECT FROM dalgo.security_report('app') WHERE problem LIKE 'column api_key looks like a credential%'),
	'before: the report flags the plaintext credential');
SELECT dalgo.rotate_secret_key();
SELECT is(dalgo.enable_encryption('app.connections', 'api_key', read_role => 'member'), 2::bigint, 'existing values are encrypted at once');
SELECT is(dalgo.enable_encryption('app.connections', 'settings'), 2::bigint, '...in a jsonb column too');
SELECT is_empty($$SELECT * FROM app.connections WHERE api_key NOT LIKE 'dalgo:pgp1:%' OR settings::text NOT LIKE '"dalgo:pgp1:%'
	OR api_key LIKE '%sk-live%' OR settings::text LIKE '%pw-%'$$, 'at rest, even a superuser sees only ciphertext');
SELECT is_empty($$SELECT * FROM dalgo.security_report('app')$$, 'after: the report is clean');
:as_member_a
SELECT is(dalgo.read_secret('app.connections', 'api_key', '1'), 'sk-live-aaaa', 'a member at read_role reads the plaintext');
SELECT is(dalgo.read_secret('app.connections', 'settings', '1'), NULL, 'a member below the column''s read_role (admin) reads nothing');
SELECT is(dalgo.read_secret('app.connections', 'api_key', '2'), NULL, 'another organization''s secret reads as nothing');
SELECT throws_ok($$SELECT dalgo.read_secret_service('app.connections', 'api_key', '2')$$, '42501', NULL,
	'end users cannot call the service''s reader');
SELECT throws_ok($$SELECT dalgo.rotate_secret_key()$$, '42501', NULL, 'end users cannot rotate the key');
:as_owner_a
SELECT is(dalgo.read_secret('app.connections', 'settings', '1'), '{"host": "db-a", "password": "pw-a"}', 'an admin reads the jsonb secret');
SELECT lives_ok($$UPDATE app.connections SET api_key = 'sk-live-new' WHERE id = 1$$, 'an admin replaces a secret');
SELECT is(dalgo.read_secret('app.connections', 'api_key', '1'), 'sk-live-new', '...which is stored encrypted and read back');
:as_anon
SELECT throws_ok($$SELECT dalgo.read_secret('app.connections', 'api_key', '1')$$, '42501', NULL, 'dalgo_anon cannot read secrets');
:as_service
SELECT is(dalgo.read_secret_service('app.connections', 'api_key', '2'), 'sk-live-bbbb', 'dalgo_service reads any secret (sync workers)');
:as_super
SELECT throws_ok($$SELECT dalgo.read_secret('app.connections', 'name', '1')$$, '22023', NULL, 'only encrypted columns are read');
CREATE TEMP TABLE before_rotation AS SELECT id, api_key FROM app.connections;
SELECT is(dalgo.rotate_secret_key(), 4::bigint, 'rotation re-encrypts every encrypted value');
SELECT is_empty($$SELECT * FROM app.connections c JOIN before_rotation b USING (id) WHERE c.api_key = b.api_key$$,
	'...under the new key, and reading still works: ' || dalgo.read_secret_service('app.connections', 'api_key', '2'));
SAVEPOINT rotation;
SELECT dalgo.rotate_secret_key();
ROLLBACK TO rotation;
SELECT is(dalgo.read_secret_service('app.connections', 'api_key', '1') || ' / ' ||
		  (SELECT count(*) FROM dalgo.audit_logs WHERE action = 'update' AND details::text ~ 'sk-live|pw-a|pw-b')::text,
	'sk-live-new / 0', 'a rotation rolled back after writing the key loses nothing; no change after encryption puts plaintext in the audit trail');
SELECT is(dalgo.disable_encryption('app.connections', 'api_key'), 2::bigint, 'disable_encryption decrypts the stored values...');
SELECT is((SELECT api_key FROM app.connections WHERE id = 2), 'sk-live-bbbb', '...back to plaintext');
SELECT * FROM finish();
ROLLBACK;
