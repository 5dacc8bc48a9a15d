-- audit_actor_capture: the audit trail credits a change to the identity in
-- force when the statement started.  Changing the identity while a
-- data-modifying statement runs (sign_out() or authenticate() in a WITH
-- that updates, set_config() of dalgo.user_id or of trusted claims, a
-- trigger, COPY FROM, TRUNCATE) is refused, at any nesting level; between
-- statements it is allowed, and a caught error does not leave the guard on.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\i test/fixtures/jwt.sql
SELECT plan(22);
\set A1 '''33333333-0000-4000-8000-0000000000a1'''
\set OWNER_A '''11111111-0000-4000-8000-000000000001'''
\set MEMBER_A '''11111111-0000-4000-8000-000000000002'''
SET LOCAL dalgo.jwt_secret = :secret;
CREATE FUNCTION pg_temp.last_audit(tbl text) RETURNS dalgo.audit_logs LANGUAGE sql
	AS $$ SELECT * FROM dalgo.audit_logs WHERE resource_type = tbl AND created_at = now() ORDER BY id DESC LIMIT 1 $$;
CREATE FUNCTION pg_temp.audit_count() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM dalgo.audit_logs WHERE created_at = now() $$;
SELECT pg_temp.jwt(:hs256, pg_temp.claims(:OWNER_A), :secret) AS token_a \gset
SELECT pg_temp.jwt(:hs256, pg_temp.claims(:MEMBER_A), :secret) AS token_m \gset
GRANT EXECUTE ON FUNCTION pg_temp.last_audit(text), pg_temp.audit_count() TO PUBLIC;
SELECT set_config('test.token_m', :'token_m', true) \g /dev/null

-- Signed in as owner A, as dalgo_authenticated.
SELECT is(dalgo.authenticate(:'token_a'), :OWNER_A::uuid, 'owner A signs in');
SET LOCAL ROLE dalgo_authenticated;
SELECT pg_temp.audit_count() AS before \gset

-- The attacks.
SELECT throws_ok($$WITH u AS (UPDATE dalgo.sources SET name = 'by nobody' WHERE id = '33333333-0000-4000-8000-0000000000a1' RETURNING 1)
	SELECT dalgo.sign_out() FROM u$$, '25000',
	'dalgo.sign_out() cannot change the identity while a data-modifying statement runs',
	'sign_out() inside a data-modifying WITH is refused');
SELECT throws_ok(format($$WITH u AS (UPDATE dalgo.sources SET name = 'by member' WHERE id = '33333333-0000-4000-8000-0000000000a1' RETURNING 1)
	SELECT dalgo.authenticate(%L) FROM u$$, :'token_m'), '25000',
	'dalgo.authenticate() cannot change the identity while a data-modifying statement runs',
	'authenticate() with another token inside a data-modifying WITH is refused');
SELECT throws_ok(format($$UPDATE dalgo.sources SET name = 'by member' WHERE id = '33333333-0000-4000-8000-0000000000a1'
	AND dalgo.authenticate(%L) IS NOT NULL$$, :'token_m'), '25000', NULL,
	'authenticate() in the WHERE clause of an UPDATE is refused');
SELECT throws_ok($$INSERT INTO dalgo.sources (organization_id, name, source_type)
	SELECT '22222222-0000-4000-8000-0000000000a0', 'sneaky', 'csv' FROM (SELECT dalgo.sign_out()) s$$, '25000', NULL,
	'sign_out() in the SELECT of an INSERT is refused');
SELECT is(pg_temp.audit_count(), :before::bigint, 'no audit row was written by the refused statements');
SELECT is((SELECT name FROM dalgo.sources WHERE id = :A1), 'Visits A', 'and the source is unchanged');
SELECT is(dalgo.current_user_id(), :OWNER_A::uuid, 'owner A is still the identity');

-- The change itself is credited to the identity in force.
UPDATE dalgo.sources SET name = 'by owner' WHERE id = :A1;
SELECT is((pg_temp.last_audit('sources')).user_id, :OWNER_A::uuid, 'an update is credited to the identity in force');
WITH u AS (UPDATE dalgo.sources SET name = 'by owner again' WHERE id = :A1 RETURNING 1)
	SELECT count(*) AS updated FROM u \gset
SELECT is((pg_temp.last_audit('sources')).user_id, :OWNER_A::uuid, 'so is one in a data-modifying WITH');

-- Between statements the identity may change, also inside one function.
RESET ROLE;
DO $$
BEGIN
	PERFORM dalgo.sign_out();
	PERFORM dalgo.authenticate(current_setting('test.token_m'));
	UPDATE dalgo.transformations SET name = 'by member' WHERE id = '55555555-0000-4000-8000-0000000000a1';
END $$;
SELECT is((pg_temp.last_audit('transformations')).user_id, :MEMBER_A::uuid, 'a function may change the identity between its statements');

-- Triggers and TRUNCATE are inside the statement too.
CREATE FUNCTION pg_temp.sign_out_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM dalgo.sign_out();
	RETURN NULL;
END $$;
CREATE TRIGGER sneaky BEFORE UPDATE ON dalgo.outputs FOR EACH ROW EXECUTE FUNCTION pg_temp.sign_out_trigger();
SELECT throws_ok($$UPDATE dalgo.outputs SET name = 'x' WHERE id = '66666666-0000-4000-8000-0000000000a1'$$, '25000', NULL,
	'sign_out() in a row trigger is refused');
DROP TRIGGER sneaky ON dalgo.outputs;
CREATE TEMP TABLE scratch (n int);
CREATE TRIGGER sneaky BEFORE TRUNCATE ON scratch FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.sign_out_trigger();
SELECT throws_ok($$TRUNCATE scratch$$, '25000', NULL, 'sign_out() in a TRUNCATE trigger is refused');
DROP TRIGGER sneaky ON scratch;
CREATE TRIGGER sneaky BEFORE INSERT ON scratch FOR EACH ROW EXECUTE FUNCTION pg_temp.sign_out_trigger();
SELECT throws_ok($$COPY scratch FROM PROGRAM 'echo 1'$$, '25000', NULL, 'sign_out() in a trigger fired by COPY FROM is refused');
DROP TRIGGER sneaky ON scratch;

-- dalgo.user_id and trusted claims.
SELECT dalgo.sign_out() \g /dev/null
SET LOCAL dalgo.user_id = :OWNER_A;
SELECT throws_ok($$WITH u AS (UPDATE dalgo.sources SET name = 'x' WHERE id = '33333333-0000-4000-8000-0000000000a1' RETURNING 1)
	SELECT set_config('dalgo.user_id', '11111111-0000-4000-8000-000000000002', true) FROM u$$, '25000',
	'dalgo.user_id cannot change while a data-modifying statement runs',
	'set_config(''dalgo.user_id'') inside a data-modifying statement is refused');
SELECT throws_ok($$WITH u AS (UPDATE dalgo.sources SET name = 'x' WHERE id = '33333333-0000-4000-8000-0000000000a1' RETURNING 1)
	SELECT set_config('dalgo.user_id', NULL, true) FROM u$$, '25000',
	'the identity changed while a data-modifying statement was running',
	'resetting dalgo.user_id inside a data-modifying statement is refused when the identity is read');
SET LOCAL dalgo.user_id = '';
SELECT set_config('dalgo.claims_authenticators', quote_ident(session_user), true) \g /dev/null
SET LOCAL request.jwt.claims = '{"sub": "11111111-0000-4000-8000-000000000001"}';
SELECT is(dalgo.current_user_id(), :OWNER_A::uuid, 'trusted claims name owner A');
SELECT throws_ok($$WITH u AS (UPDATE dalgo.sources SET name = 'x' WHERE id = '33333333-0000-4000-8000-0000000000a1' RETURNING 1)
	SELECT set_config('request.jwt.claims', '{"sub": "11111111-0000-4000-8000-000000000002"}', true) FROM u$$, '25000',
	'the identity changed while a data-modifying statement was running',
	'swapping trusted claims inside a data-modifying statement is refused');
SELECT throws_ok($q$DO $d$ BEGIN UPDATE dalgo.sources SET name = 'x' WHERE id = '33333333-0000-4000-8000-0000000000a1'
	AND set_config('request.jwt.claims', '', true) IS NOT NULL; END $d$$q$, '25000', NULL,
	'so is clearing them, at a nested level');
SET LOCAL request.jwt.claims = '';

-- A caught error inside a data-modifying statement leaves no guard behind.
CREATE FUNCTION pg_temp.swallow() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
	BEGIN
		UPDATE dalgo.sources SET name = 'x' WHERE id = '33333333-0000-4000-8000-0000000000a1' AND 1 / 0 = 1;
	EXCEPTION WHEN division_by_zero THEN
		NULL;
	END;
	RETURN 1;
END $$;
SELECT is(pg_temp.swallow(), 1, 'an error inside an UPDATE is caught');
SELECT lives_ok(format('SELECT dalgo.authenticate(%L)', :'token_m'), 'and the identity can change afterwards');
SELECT throws_ok($$SELECT dalgo.authenticate('x', true)$$, '0A000', 'session-scoped authentication is not supported',
	'(session-scoped authentication is refused)');

SELECT * FROM finish();
ROLLBACK;
