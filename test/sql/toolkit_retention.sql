-- toolkit_retention: dalgo.set_retention() records a policy per table;
-- dalgo.apply_retention() deletes or anonymizes expired rows in batches
-- and says what it did; dalgo.run_retention() commits after every batch;
-- the audit trail has its own policy; only superusers set policies and
-- only dalgo_service (and superusers) apply them.
\set ECHO none
\i test/fixtures/tap_setup.sql
CREATE SCHEMA ret;
CREATE TABLE ret.events (id serial PRIMARY KEY, at timestamptz NOT NULL, body text);
CREATE TABLE ret.visits (id serial PRIMARY KEY, at timestamp NOT NULL, ip text, email text, city text NOT NULL);
CREATE TABLE ret.parted (id int, at timestamptz) PARTITION BY RANGE (at);
INSERT INTO ret.events (at, body) SELECT now() - make_interval(days => i), 'e' || i FROM generate_series(1, 100) i;
INSERT INTO ret.visits (at, ip, email, city) SELECT now()::timestamp - make_interval(days => i), '10.0.0.' || i, i || '@x.org', 'Pune'
	FROM generate_series(1, 100) i;
SELECT plan(19);
SELECT is((SELECT retention_days FROM dalgo.retention_policies WHERE table_name = 'dalgo.audit_logs'::regclass), 365,
	'the audit trail is covered by a policy');
SELECT throws_ok($$SELECT dalgo.set_retention('ret.events', 'at', 30, 'shred')$$, '22023', NULL, 'an unknown action is refused');
SELECT throws_ok($$SELECT dalgo.set_retention('ret.events', 'body', 30)$$, '42804', NULL, 'the time column must be a timestamp');
SELECT throws_ok($$SELECT dalgo.set_retention('ret.visits', 'at', 30, 'anonymize', '{city}')$$, '22023', NULL,
	'a NOT NULL column cannot be anonymized');
SELECT throws_ok($$SELECT dalgo.set_retention('ret.parted', 'at', 30)$$, '42809', NULL, 'partitioned tables are refused');
SELECT throws_ok($$SELECT dalgo.set_retention('dalgo.audit_logs', 'created_at', 30, 'anonymize', '{user_id}')$$, '22023', NULL,
	'the audit trail is only expired by deletion');
SELECT lives_ok($$SELECT dalgo.set_retention('ret.events', 'at', 7)$$, 'a delete policy');
SELECT lives_ok($$SELECT dalgo.set_retention('ret.events', 'at', 30)$$, '...replaced');
SELECT lives_ok($$SELECT dalgo.set_retention('ret.visits', 'at', 50, 'anonymize', '{ip,email}')$$, 'an anonymize policy');
SELECT is((SELECT count(*) FROM dalgo.retention_policies WHERE table_name = 'ret.events'::regclass AND retention_days = 30), 1::bigint,
	'one policy per table');
SET ROLE dalgo_authenticated;
SELECT throws_ok($$SELECT * FROM dalgo.apply_retention()$$, '42501', NULL, 'end users cannot apply retention');
SELECT throws_ok($$SELECT dalgo.set_retention('ret.events', 'at', 1)$$, '42501', NULL, 'end users cannot set retention');
RESET ROLE;
SET ROLE dalgo_service;
CREATE TEMP TABLE did AS SELECT * FROM dalgo.apply_retention(batch_size => 25, max_batches => 2);
RESET ROLE;
SELECT set_eq($$SELECT table_name, action, rows_affected, batches FROM did WHERE table_name LIKE 'ret.%'$$,
	$$VALUES ('ret.events', 'delete', 50::bigint, 2), ('ret.visits', 'anonymize', 50::bigint, 2)$$,
	'dalgo_service applies the policies, at most max_batches batches of batch_size rows per table');
SELECT is((SELECT count(*) FROM ret.events), 50::bigint, '...so far');
CALL dalgo.run_retention(batch_size => 7);
SELECT is((SELECT count(*) FROM ret.events), 29::bigint, 'run_retention finishes the job: rows 30 days old or older are gone');
SELECT is((SELECT min(at) > now() - interval '31 days' FROM ret.events), true, '...and only those');
SELECT is((SELECT count(*) FROM ret.visits WHERE ip IS NULL AND email IS NULL), 51::bigint, 'anonymize nulls the columns of expired rows');
SELECT is((SELECT count(*) FROM ret.visits WHERE ip IS NULL AND at > now() - interval '49 days'), 0::bigint, '...and of no other row');
SELECT ok((SELECT bool_and(last_run_at IS NOT NULL) FROM dalgo.retention_policies WHERE table_name::text LIKE 'ret.%'),
	'last_run_at records the run');
SELECT * FROM finish();
SELECT dalgo.disable_retention('ret.events');
SELECT dalgo.disable_retention('ret.visits');
DROP SCHEMA ret CASCADE;
