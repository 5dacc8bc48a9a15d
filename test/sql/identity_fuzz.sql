-- identity_fuzz: 10,000 random and mutated tokens through dalgo.authenticate()
-- and random request.jwt.claims through dalgo.current_user_id().  Tokens
-- only ever fail with 28000 (or authenticate a real user); claims never
-- raise; the backend survives.  Seeded, so runs repeat.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\i test/fixtures/jwt.sql
SET LOCAL dalgo.jwt_secret = :secret;
SELECT setseed(0.1717) \g /dev/null
CREATE TEMP TABLE outcomes (what text, sqlstate text);
CREATE FUNCTION pg_temp.rand_text(n int) RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(substr('abcXYZ019-_.=+/{}[]":,\ é' || chr(1), 1 + floor(random() * 27)::int, 1), '')
	FROM generate_series(1, n) $$;

DO $$
DECLARE
	good text := pg_temp.jwt('{"alg":"HS256","typ":"JWT"}', pg_temp.claims('11111111-0000-4000-8000-000000000001'),
							 current_setting('dalgo.jwt_secret'));
	t text;
	p int;
	state text;
BEGIN
	FOR i IN 1..10000 LOOP
		IF i % 4 = 0 THEN
			t := pg_temp.rand_text(floor(random() * 200)::int);
		ELSIF i % 4 = 1 THEN
			-- flip one character of a valid token
			p := 1 + floor(random() * length(good))::int;
			t := overlay(good PLACING pg_temp.rand_text(1) FROM p FOR 1);
		ELSIF i % 4 = 2 THEN
			-- a random header or payload, validly signed
			t := pg_temp.jwt(CASE WHEN random() < 0.5 THEN '{"alg":"HS256"}' ELSE pg_temp.rand_text(30) END,
							 CASE WHEN random() < 0.5 THEN pg_temp.claims('11111111-0000-4000-8000-00000000000' || floor(random() * 9)::int)
								  ELSE '{"sub":' || pg_temp.rand_text(20) || ',"exp":9999999999}' END,
							 current_setting('dalgo.jwt_secret'));
		ELSE
			-- truncations and repetitions of a valid token
			t := CASE WHEN random() < 0.5 THEN left(good, floor(random() * length(good))::int) ELSE repeat(good, 1 + floor(random() * 3)::int) END;
		END IF;
		BEGIN
			PERFORM dalgo.authenticate(t);
			INSERT INTO outcomes VALUES ('token accepted', NULL);
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
			INSERT INTO outcomes VALUES ('token refused', state);
		END;
		PERFORM dalgo.sign_out();
	END LOOP;
	PERFORM set_config('dalgo.claims_authenticators', quote_ident(session_user), true);
	FOR i IN 1..3000 LOOP
		BEGIN
			PERFORM set_config('request.jwt.claims', CASE WHEN i % 2 = 0 THEN pg_temp.rand_text(floor(random() * 80)::int)
				ELSE '{"sub": "' || pg_temp.rand_text(36) || '", "x": [' || pg_temp.rand_text(10) || ']}' END, true);
			PERFORM dalgo.current_user_id();
			INSERT INTO outcomes VALUES ('claims read', NULL);
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
			INSERT INTO outcomes VALUES ('claims raised', state);
		END;
	END LOOP;
END
$$;

SELECT plan(4);
SELECT is((SELECT count(*) FROM outcomes), 13000::bigint, '13,000 fuzzed inputs, and the backend is still here');
SELECT is_empty($$SELECT DISTINCT sqlstate FROM outcomes WHERE what = 'token refused' AND sqlstate <> '28000'$$,
	'a refused token is always 28000');
SELECT ok((SELECT count(*) FROM outcomes WHERE what = 'token accepted') > 100, 'validly signed tokens of real users are accepted');
SELECT is((SELECT count(*) FROM outcomes WHERE what = 'claims raised'), 0::bigint, 'malformed claims never raise');
SELECT * FROM finish();
ROLLBACK;
