-- identity_sources: dalgo.current_user_id() takes the caller from a verified token,
-- then dalgo.user_id, then request.jwt.claims from a claims authenticator's
-- session; malformed values give
-- no identity; dalgo.authenticate() accepts only good HS256 tokens.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\i test/fixtures/jwt.sql
SELECT plan(40);

-- Sources and their order.
SELECT is(dalgo.current_user_id(), NULL, 'no identity by default');
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000001';
SELECT is(dalgo.current_user_id(), '11111111-0000-4000-8000-000000000001'::uuid, 'dalgo.user_id sets the identity');
SET LOCAL dalgo.user_id = '11111111000040008000000000000002';
SELECT is(dalgo.current_user_id(), '11111111-0000-4000-8000-000000000002'::uuid, 'a uuid without hyphens is accepted');
SET LOCAL dalgo.user_id = 'not-a-uuid';
SELECT is(dalgo.current_user_id(), NULL, 'a malformed dalgo.user_id gives NULL, not an error');
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-00000000000';
SELECT is(dalgo.current_user_id(), NULL, 'a truncated uuid gives NULL');
SET LOCAL dalgo.user_id = '{11111111-0000-4000-8000-000000000001}x';
SELECT is(dalgo.current_user_id(), NULL, 'trailing garbage gives NULL');
SET LOCAL dalgo.user_id = '';
SELECT is(dalgo.current_user_id(), NULL, 'an empty dalgo.user_id gives NULL');

SET LOCAL request.jwt.claims = '{"sub": "11111111-0000-4000-8000-000000000003", "role": "dalgo_authenticated"}';
SELECT is(dalgo.current_user_id(), NULL, 'request.jwt.claims is ignored while session_user is not a claims authenticator');
SELECT set_config('dalgo.claims_authenticators', quote_ident(session_user), true) \g /dev/null
SELECT is(dalgo.current_user_id(), '11111111-0000-4000-8000-000000000003'::uuid, 'trusted claims give the identity');
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000001';
SELECT is(dalgo.current_user_id(), '11111111-0000-4000-8000-000000000001'::uuid, 'dalgo.user_id wins over claims');
SET LOCAL dalgo.user_id = '';
SET LOCAL request.jwt.claims = '{"sub": 42}';
SELECT is(dalgo.current_user_id(), NULL, 'a non-string sub gives NULL');
SET LOCAL request.jwt.claims = '{"sub": "11111111-0000-4000-8000-000000000003"';
SELECT is(dalgo.current_user_id(), NULL, 'broken JSON gives NULL');
SET LOCAL request.jwt.claims = '[{"sub": "11111111-0000-4000-8000-000000000003"}]';
SELECT is(dalgo.current_user_id(), NULL, 'claims that are not an object give NULL');
SET LOCAL request.jwt.claims = '{"sub": "11111111-0000-4000-8000-000000000003", "sub": "11111111-0000-4000-8000-000000000001"}';
SELECT is(dalgo.current_user_id(), NULL, 'a duplicated sub gives NULL');
SET LOCAL request.jwt.claims = '{"x": {"sub": "11111111-0000-4000-8000-000000000003"}}';
SELECT is(dalgo.current_user_id(), NULL, 'a nested sub is not the subject');
DO $$ BEGIN PERFORM set_config('request.jwt.claims', repeat('[', 100000), true); END $$;
SELECT is(dalgo.current_user_id(), NULL, 'deeply nested claims give NULL, not a stack overflow');
SET LOCAL request.jwt.claims = '';
SELECT is(dalgo.current_user_id(), NULL, 'empty claims give NULL');
SET LOCAL dalgo.claims_authenticators = '';

-- Who may set dalgo.user_id and dalgo.claims_authenticators.
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok($$SET dalgo.user_id = '11111111-0000-4000-8000-000000000001'$$, '42501', NULL,
	'dalgo_authenticated cannot set dalgo.user_id');
SELECT throws_ok($$SELECT set_config('dalgo.user_id', '11111111-0000-4000-8000-000000000001', true)$$, '42501', NULL,
	'nor through set_config()');
SELECT throws_ok($$SET dalgo.claims_authenticators = 'dalgo_authenticated'$$, '42501', NULL, 'nor turn on claims trust');
SELECT throws_ok($$SET dalgo.jwt_secret = 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'$$, '42501', NULL, 'nor replace the JWT secret');
SELECT throws_ok($$SHOW dalgo.jwt_secret$$, '42501', NULL, 'nor read the JWT secret');
SELECT is((SELECT count(*) FROM pg_settings WHERE name = 'dalgo.jwt_secret'), 0::bigint, 'the secret is not in pg_settings');
SELECT throws_ok($$SET dalgo.no_such_setting = 1$$, '42602', NULL, 'the dalgo. prefix is reserved');
RESET ROLE;
CREATE ROLE dalgo_test_authenticator NOLOGIN;
GRANT dalgo_authenticated TO dalgo_test_authenticator;
GRANT SET ON PARAMETER dalgo.user_id TO dalgo_test_authenticator;
SET LOCAL ROLE dalgo_test_authenticator;
SELECT lives_ok($$SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002'$$,
	'a role granted SET ON PARAMETER dalgo.user_id (an authenticator) can set it');
SELECT is(dalgo.current_user_id(), '11111111-0000-4000-8000-000000000002'::uuid, 'and the identity follows');
RESET ROLE;
SET LOCAL dalgo.user_id = '';

-- dalgo.authenticate: only good HS256 tokens for active users.
SELECT throws_ok(format('SELECT dalgo.authenticate(%L)', pg_temp.jwt(:hs256, pg_temp.claims('11111111-0000-4000-8000-000000000001'), :secret)),
	'28000', 'authentication failed', 'no secret configured: refused');
SELECT throws_ok($$SET LOCAL dalgo.jwt_secret = 'too-short'$$, '22023', NULL, 'a secret shorter than 32 bytes is refused');
SET LOCAL dalgo.jwt_secret = :secret;
SELECT is(dalgo.authenticate(pg_temp.jwt(:hs256, pg_temp.claims('11111111-0000-4000-8000-000000000001'), :secret)),
	'11111111-0000-4000-8000-000000000001'::uuid, 'a good token authenticates');
SELECT is(dalgo.current_user_id(), '11111111-0000-4000-8000-000000000001'::uuid, 'the verified identity is current');
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SELECT is(dalgo.current_user_id(), '11111111-0000-4000-8000-000000000001'::uuid, 'a verified identity wins over dalgo.user_id');
SELECT dalgo.sign_out();
SELECT is(dalgo.current_user_id(), '11111111-0000-4000-8000-000000000002'::uuid, 'sign_out() forgets it');
SET LOCAL dalgo.user_id = '';

PREPARE bad_token(text) AS SELECT dalgo.authenticate($1);
SELECT throws_ok(format('EXECUTE bad_token(%L)', pg_temp.jwt(:hs256, pg_temp.claims('11111111-0000-4000-8000-000000000001'), 'another-secret-another-secret-another')),
	'28000', 'authentication failed', 'wrong secret');
SELECT throws_ok(format('EXECUTE bad_token(%L)', pg_temp.jwt(:hs256, pg_temp.claims('11111111-0000-4000-8000-000000000001', '-1 minute'), :secret)),
	'28000', 'authentication failed', 'expired');
SELECT throws_ok(format('EXECUTE bad_token(%L)', pg_temp.jwt(:hs256, pg_temp.claims('11111111-0000-4000-8000-000000000001', '1 hour',
	format(', "nbf": %s', extract(epoch FROM now() + interval '10 minutes')::bigint)), :secret)),
	'28000', 'authentication failed', 'not yet valid (nbf)');
SELECT throws_ok(format('EXECUTE bad_token(%L)', pg_temp.b64url('{"alg":"none"}') || '.' ||
	pg_temp.b64url(convert_to(pg_temp.claims('11111111-0000-4000-8000-000000000001'), 'UTF8')) || '.'),
	'28000', 'authentication failed', 'alg=none with no signature');
SELECT throws_ok(format('EXECUTE bad_token(%L)', pg_temp.jwt('{"alg":"none"}', pg_temp.claims('11111111-0000-4000-8000-000000000001'), :secret)),
	'28000', 'authentication failed', 'alg=none even when signed');
SELECT throws_ok(format('EXECUTE bad_token(%L)', pg_temp.jwt(:hs256, '{"sub": "11111111-0000-4000-8000-000000000001"}', :secret)),
	'28000', 'authentication failed', 'no exp');
SELECT throws_ok(format('EXECUTE bad_token(%L)',
	(SELECT regexp_replace(t, '^([^.]*)\.([^.]*)\.', '\1.' || pg_temp.b64url(convert_to(pg_temp.claims('11111111-0000-4000-8000-000000000003'), 'UTF8')) || '.')
	 FROM (SELECT pg_temp.jwt(:hs256, pg_temp.claims('11111111-0000-4000-8000-000000000001'), :secret) t) x)),
	'28000', 'authentication failed', 'a payload swapped under a valid signature');
UPDATE dalgo.users SET is_active = false WHERE id = '11111111-0000-4000-8000-000000000002';
SELECT throws_ok(format('EXECUTE bad_token(%L)', pg_temp.jwt(:hs256, pg_temp.claims('11111111-0000-4000-8000-000000000002'), :secret)),
	'28000', 'authentication failed', 'an inactive user');

SELECT * FROM finish();
ROLLBACK;
