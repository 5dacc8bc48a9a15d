-- own_secrets_at_rest: dalgo's own secrets are encrypted at rest.  The
-- credentials object of sources.config and
-- warehouse_connections.access_token_encrypted are stored as ciphertext
-- bound to their row; end users never get them back, not even as
-- ciphertext (dalgo.source_config() masks them); only
-- dalgo_internal.source_credentials() decrypts, and no app role may call
-- it; a value copied into another row does not decrypt there; the audit
-- trail holds neither plaintext nor ciphertext; rotation re-encrypts them.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/toolkit_users.sql
\set SA '''33333333-0000-4000-8000-0000000000a1'''
\set SB '''33333333-0000-4000-8000-0000000000b1'''
\set WA '''44444444-0000-4000-8000-0000000000a1'''
SELECT plan(33);

-- An admin (the owner) writes credentials; they are stored encrypted.
:as_owner_a
SELECT lives_ok($$UPDATE dalgo.sources SET config = '{"spreadsheet_id": "1AbC", "credentials": {"api_key": "AIza-SECRET-1"}}'
	WHERE id = '33333333-0000-4000-8000-0000000000a1'$$, 'an admin sets a source''s credentials');
SELECT lives_ok($$UPDATE dalgo.warehouse_connections SET access_token_encrypted = 'wh-SECRET-2'
	WHERE id = '44444444-0000-4000-8000-0000000000a1'$$, 'and the warehouse access token');
:as_super
SELECT is((SELECT config->'spreadsheet_id' FROM dalgo.sources WHERE id = :SA), '"1AbC"'::jsonb, 'the rest of config is stored as written');
SELECT ok((SELECT config->>'credentials' LIKE 'dalgo:pgp1:%' AND config::text !~ 'SECRET' FROM dalgo.sources WHERE id = :SA),
	'config.credentials is stored as ciphertext: even a superuser''s SELECT shows no plaintext');
SELECT ok((SELECT access_token_encrypted LIKE 'dalgo:pgp1:%' FROM dalgo.warehouse_connections WHERE id = :WA),
	'so is the warehouse access token');
SELECT is(dalgo_internal.source_credentials(:SA), '{"api_key": "AIza-SECRET-1"}'::jsonb, 'source_credentials() decrypts for the workers');
SELECT is(dalgo_internal.source_credentials(:SB), NULL, '...and is NULL for a source without credentials');
SELECT is(dalgo_internal.warehouse_access_token(:WA), 'wh-SECRET-2', 'warehouse_access_token() decrypts the token');

-- End users: no plaintext, no ciphertext.
:as_viewer_a
SELECT throws_ok($$SELECT config FROM dalgo.sources$$, '42501', NULL, 'a viewer cannot select config');
SELECT is(dalgo.source_config(:SA), '{"spreadsheet_id": "1AbC", "credentials": "[redacted]"}'::jsonb,
	'source_config() shows a viewer that credentials are set, and nothing of them');
:as_member_a
SELECT is(dalgo.source_config(:SA)->'credentials', '"[redacted]"'::jsonb, 'so does it to a member');
:as_owner_a
SELECT is(dalgo.source_config(:SA)->'credentials', '"[redacted]"'::jsonb, '...and to the owner: credentials are write-only');
SELECT throws_ok($$SELECT access_token_encrypted FROM dalgo.warehouse_connections$$, '42501', NULL, 'nobody selects the access token');

-- Nobody but the workers decrypts.
SELECT throws_ok($$SELECT dalgo_internal.source_credentials('33333333-0000-4000-8000-0000000000a1')$$, '42501', NULL,
	'an owner cannot call source_credentials()');
:as_member_a
SELECT throws_ok($$SELECT dalgo_internal.source_credentials('33333333-0000-4000-8000-0000000000a1')$$, '42501', NULL, 'nor a member');
:as_service
SELECT throws_ok($$SELECT dalgo_internal.source_credentials('33333333-0000-4000-8000-0000000000a1')$$, '42501', NULL, 'nor dalgo_service');
SELECT throws_ok($$SELECT dalgo_internal.warehouse_access_token('44444444-0000-4000-8000-0000000000a1')$$, '42501', NULL,
	'nor the token reader');
:as_anon
SELECT throws_ok($$SELECT dalgo_internal.source_credentials('33333333-0000-4000-8000-0000000000a1')$$, '42501', NULL, 'nor dalgo_anon');
:as_super
SELECT is((SELECT array_agg(r ORDER BY r) FROM unnest(ARRAY['dalgo_authenticated', 'dalgo_anon', 'dalgo_service', 'public']) r
	WHERE has_function_privilege(r, 'dalgo_internal.source_credentials(uuid)', 'EXECUTE')
	   OR has_function_privilege(r, 'dalgo_internal.warehouse_access_token(uuid)', 'EXECUTE')), NULL,
	'no app role may execute the readers');

-- Ciphertext copied into another organization's source is refused, and
-- does not decrypt there if it gets in past the trigger.
CREATE TEMP TABLE stolen AS SELECT config->'credentials' AS c, (SELECT access_token_encrypted FROM dalgo.warehouse_connections
	WHERE id = :WA) AS t FROM dalgo.sources WHERE id = :SA;
SELECT throws_ok($$UPDATE dalgo.sources SET config = jsonb_build_object('credentials', (SELECT c FROM stolen))
	WHERE id = '33333333-0000-4000-8000-0000000000b1'$$, '22023',
	'config.credentials holds an encrypted value that is not this source''s', 'stored credentials copied into another source are refused');
SELECT throws_ok($$UPDATE dalgo.warehouse_connections SET access_token_encrypted = (SELECT t FROM stolen)
	WHERE id = '44444444-0000-4000-8000-0000000000b1'$$, '22023', NULL, '...and so is a copied access token');
SELECT throws_ok($$UPDATE dalgo.sources SET config = '{"credentials": "dalgo:pgp1:bm90IGEgc2VjcmV0"}'
	WHERE id = '33333333-0000-4000-8000-0000000000b1'$$, '22023', NULL, '...and a made-up one');
SET LOCAL session_replication_role = replica;
UPDATE dalgo.sources SET config = jsonb_build_object('credentials', (SELECT c FROM stolen)) WHERE id = :SB;
SET LOCAL session_replication_role = origin;
SELECT throws_ok($$SELECT dalgo_internal.source_credentials('33333333-0000-4000-8000-0000000000b1')$$, 'XX001',
	'the stored secret of 33333333-0000-4000-8000-0000000000b1 cannot be decrypted',
	'a copy that got past the trigger does not decrypt in another source (and the error names no secret)');

-- Replacing and removing.
:as_owner_a
SELECT lives_ok($$UPDATE dalgo.sources SET config = '{"spreadsheet_id": "2XyZ", "credentials": {"access_token": "ya29-SECRET-3"}}'
	WHERE id = '33333333-0000-4000-8000-0000000000a1'$$, 'an admin replaces the credentials');
:as_super
SELECT is(dalgo_internal.source_credentials(:SA), '{"access_token": "ya29-SECRET-3"}'::jsonb, '...which are encrypted again');
UPDATE dalgo.sources SET config = config || '{"range": "Sheet1!A1:C"}' WHERE id = :SA;
SELECT is(dalgo_internal.source_credentials(:SA), '{"access_token": "ya29-SECRET-3"}'::jsonb,
	'an update of other keys keeps the stored credentials');
UPDATE dalgo.sources SET config = config || '{"credentials": null}' WHERE id = :SA;
SELECT is((SELECT config FROM dalgo.sources WHERE id = :SA), '{"spreadsheet_id": "2XyZ", "range": "Sheet1!A1:C"}'::jsonb,
	'credentials: null removes them');
UPDATE dalgo.sources SET config = '{"credentials": {"api_key": "AIza-SECRET-4"}}' WHERE id = :SA;

-- Rotation.
CREATE TEMP TABLE before_rotation AS
	SELECT (SELECT config->>'credentials' FROM dalgo.sources WHERE id = :SA) AS c,
		   (SELECT access_token_encrypted FROM dalgo.warehouse_connections WHERE id = :WA) AS t;
SELECT cmp_ok(dalgo.rotate_secret_key(), '>=', 2::bigint, 'rotate_secret_key() re-encrypts dalgo''s own secrets too');
SELECT ok((SELECT config->>'credentials' FROM dalgo.sources WHERE id = :SA) <> (SELECT c FROM before_rotation)
	AND (SELECT access_token_encrypted FROM dalgo.warehouse_connections WHERE id = :WA) <> (SELECT t FROM before_rotation),
	'both are under the new key');
SELECT is(dalgo_internal.source_credentials(:SA) || jsonb_build_object('token', dalgo_internal.warehouse_access_token(:WA)),
	'{"api_key": "AIza-SECRET-4", "token": "wh-SECRET-2"}'::jsonb, '...and still decrypt');

-- The audit trail.
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE details::text ~ 'SECRET|dalgo:pgp1'), 0::bigint,
	'the audit trail holds neither plaintext nor ciphertext');
SELECT ok((SELECT count(*) FROM dalgo.audit_logs WHERE resource_type = 'sources' AND details::text ~ 'credentials') > 0,
	'...while it records the changes to credentials (redacted)');

-- A stored value is a JSON string: anything else is encrypted.
UPDATE dalgo.sources SET config = '{"credentials": "plain-SECRET-5"}' WHERE id = :SA;
SELECT is(dalgo_internal.source_credentials(:SA), '"plain-SECRET-5"'::jsonb, 'credentials that are not an object are encrypted too');
SELECT * FROM finish();
ROLLBACK;
