-- token_confusion: a token minted for another service (another audience or
-- issuer) is refused when dalgo.jwt_audience / dalgo.jwt_issuer are set, and
-- a header with "crit" is refused whatever the value: array, object, empty,
-- null or scalar.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\i test/fixtures/jwt.sql
SELECT plan(30);
SET LOCAL dalgo.jwt_secret = :secret;
\set U '''11111111-0000-4000-8000-000000000001'''
CREATE FUNCTION pg_temp.try(header text, extra text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	RETURN dalgo.authenticate(pg_temp.jwt(header, pg_temp.claims('11111111-0000-4000-8000-000000000001', '1 hour', extra),
										  current_setting('dalgo.jwt_secret')))::text;
EXCEPTION WHEN invalid_authorization_specification THEN
	RETURN 'refused';
END $$;

-- crit, in every form.
SELECT is(pg_temp.try('{"alg":"HS256","typ":"JWT"}', ''), :U, 'a plain HS256 token is accepted');
SELECT is(pg_temp.try('{"alg":"HS256","crit":["exp"]}', ''), 'refused', 'crit as an array is refused');
SELECT is(pg_temp.try('{"alg":"HS256","crit":[]}', ''), 'refused', 'crit as an empty array is refused');
SELECT is(pg_temp.try('{"alg":"HS256","crit":{}}', ''), 'refused', 'crit as an object is refused');
SELECT is(pg_temp.try('{"alg":"HS256","crit":{"b64":false}}', ''), 'refused', 'crit as a non-empty object is refused');
SELECT is(pg_temp.try('{"alg":"HS256","crit":null}', ''), 'refused', 'crit as null is refused');
SELECT is(pg_temp.try('{"alg":"HS256","crit":"exp"}', ''), 'refused', 'crit as a string is refused');
SELECT is(pg_temp.try('{"alg":"HS256","crit":0}', ''), 'refused', 'crit as a number is refused');
SELECT is(pg_temp.try('{"alg":"HS256","crit":false}', ''), 'refused', 'crit as a boolean is refused');
SELECT is(pg_temp.try('{"alg":"HS256","cr\u0069t":[]}', ''), 'refused', 'crit spelt with an escape is refused');
SELECT is(pg_temp.try('{"alg":"HS256","alg":"HS256"}', ''), 'refused', 'a duplicated alg is refused');

-- Without dalgo.jwt_audience / dalgo.jwt_issuer, aud and iss are not checked.
SELECT is(pg_temp.try(:hs256, ', "aud": "another-service", "iss": "https://elsewhere.example"'), :U,
	'aud and iss are not checked while the settings are empty');

-- Audience.
SET LOCAL dalgo.jwt_audience = 'dalgo';
SELECT is(pg_temp.try(:hs256, ''), 'refused', 'with an audience set, a token without aud is refused');
SELECT is(pg_temp.try(:hs256, ', "aud": "another-service"'), 'refused', 'a token for another audience is refused');
SELECT is(pg_temp.try(:hs256, ', "aud": "dalgo"'), :U, 'aud equal to the audience is accepted');
SELECT is(pg_temp.try(:hs256, ', "aud": ["another-service", "dalgo"]'), :U, 'an aud array naming the audience is accepted');
SELECT is(pg_temp.try(:hs256, ', "aud": ["another-service"]'), 'refused', 'an aud array without it is refused');
SELECT is(pg_temp.try(:hs256, ', "aud": []'), 'refused', 'an empty aud array is refused');
SELECT is(pg_temp.try(:hs256, ', "aud": ["dalgo", 1]'), 'refused', 'an aud array with a non-string is refused');
SELECT is(pg_temp.try(:hs256, ', "aud": [["dalgo"]]'), 'refused', 'a nested aud array is refused');
SELECT is(pg_temp.try(:hs256, ', "aud": {"dalgo": true}'), 'refused', 'an aud object is refused');
SELECT is(pg_temp.try(:hs256, ', "aud": "Dalgo"'), 'refused', 'the audience is compared exactly');
SELECT is(pg_temp.try(:hs256, ', "aud": "other", "aud": "dalgo"'), 'refused', 'a duplicated aud is refused');
RESET dalgo.jwt_audience;

-- Issuer.
SET LOCAL dalgo.jwt_issuer = 'https://auth.dalgo.example';
SELECT is(pg_temp.try(:hs256, ''), 'refused', 'with an issuer set, a token without iss is refused');
SELECT is(pg_temp.try(:hs256, ', "iss": "https://elsewhere.example"'), 'refused', 'a token from another issuer is refused');
SELECT is(pg_temp.try(:hs256, ', "iss": ["https://auth.dalgo.example"]'), 'refused', 'an iss array is refused');
SELECT is(pg_temp.try(:hs256, ', "iss": "https://auth.dalgo.example"'), :U, 'the right issuer is accepted');
RESET dalgo.jwt_issuer;

-- Only superusers set them.
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok($$SET dalgo.jwt_audience = 'mine'$$, '42501', NULL, 'dalgo_authenticated cannot set dalgo.jwt_audience');
SELECT throws_ok($$SET dalgo.jwt_issuer = 'mine'$$, '42501', NULL, 'nor dalgo.jwt_issuer');
RESET ROLE;
SELECT is(current_setting('dalgo.jwt_audience'), '', 'the audience is empty by default');

SELECT * FROM finish();
ROLLBACK;
