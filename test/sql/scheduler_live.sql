-- scheduler_live: the background workers run schedules by themselves: one
-- comes due within 2 s in this database and in a second one at the same
-- time, and both run; two sessions claiming at once never get the same
-- schedule.
\set ECHO none
\i test/fixtures/tap_setup.sql
\pset tuples_only false
\pset format aligned
\set regress_db :DBNAME
SELECT count(*) > 0 AS launcher_running FROM pg_stat_activity WHERE backend_type = 'dalgo launcher';

CREATE DATABASE dalgo_live_two;
\connect dalgo_live_two
SET client_min_messages = warning;
CREATE EXTENSION dalgo;
\i test/fixtures/live_schedule.sql
\connect :regress_db
SET client_min_messages = warning;
\i test/fixtures/live_schedule.sql

-- Wait (at most 10 s) until both databases' runs are done.
CREATE FUNCTION pg_temp.wait_for(q text, seconds int) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	ok boolean;
BEGIN
	FOR i IN 1..seconds * 10 LOOP
		EXECUTE q INTO ok;
		IF ok THEN
			RETURN true;
		END IF;
		PERFORM pg_sleep(0.1);
	END LOOP;
	RETURN false;
END
$$;
SELECT pg_temp.wait_for($$SELECT EXISTS (SELECT FROM dalgo.sync_runs WHERE status = 'success' AND source_id = '33333333-0000-4000-8000-0000000000d1')$$, 10)
	AS ran_here;
SELECT dblink_connect('two', format('dbname=dalgo_live_two port=%s host=%s', current_setting('port'),
	split_part(current_setting('unix_socket_directories'), ',', 1))) AS connected;
SELECT ok AS ran_in_second_database FROM dblink('two', $$
	DO $w$ BEGIN FOR i IN 1..100 LOOP
		EXIT WHEN EXISTS (SELECT FROM dalgo.sync_runs WHERE status = 'success');
		PERFORM pg_sleep(0.1); END LOOP; END $w$;
	SELECT EXISTS (SELECT FROM dalgo.sync_runs WHERE status = 'success')$$) AS t(ok boolean);
SELECT (details->>'lag_ms')::numeric < 2000 AS started_on_time, rows_synced,
	   (SELECT next_run_at > now() FROM dalgo.schedules WHERE source_id = r.source_id) AS next_slot_ahead
FROM dalgo.sync_runs r WHERE source_id = '33333333-0000-4000-8000-0000000000d1';
SELECT count(*) AS schedulers_seen FROM dalgo.scheduler_status() WHERE dalgo_installed AND worker_pid IS NOT NULL
	AND database_oid IN (SELECT oid FROM pg_database WHERE datname IN (current_database(), 'dalgo_live_two'));

-- Two sessions claim at once: SKIP LOCKED hands each schedule to one of them.
UPDATE dalgo.schedules SET next_run_at = now() + interval '1 day' WHERE source_id = '33333333-0000-4000-8000-0000000000d1';
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config)
	SELECT ('33333333-0000-4000-8000-' || lpad(to_hex(4096 + g), 12, '0'))::uuid, '22222222-0000-4000-8000-0000000000d0',
		   'queued ' || g, 'api', '{}' FROM generate_series(1, 20) g;
INSERT INTO dalgo.schedules (organization_id, source_id, frequency)
	SELECT '22222222-0000-4000-8000-0000000000d0', id, 'daily' FROM dalgo.sources WHERE name LIKE 'queued %';
UPDATE dalgo.schedules SET next_run_at = now() + interval '1 hour' WHERE source_id IN (SELECT id FROM dalgo.sources WHERE name LIKE 'queued %');
SELECT dblink_connect('other', format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
	split_part(current_setting('unix_socket_directories'), ',', 1))) AS connected;
SELECT dblink_exec('other', 'BEGIN') AS other_begins;
SELECT count(*) AS other_claimed FROM dblink('other', $$SELECT schedule_id FROM dalgo_internal.claim_due_schedules(now() + interval '2 hours', 10)$$) AS t(id uuid);
BEGIN;
SELECT count(*) AS we_claimed FROM dalgo_internal.claim_due_schedules(now() + interval '2 hours', 100);
COMMIT;
SELECT dblink_exec('other', 'COMMIT') AS other_commits;
SELECT count(*) AS runs, count(DISTINCT source_id) AS distinct_sources FROM dalgo.sync_runs WHERE source_id IN (SELECT id FROM dalgo.sources WHERE name LIKE 'queued %');
SELECT dblink_disconnect('other'), dblink_disconnect('two');

-- Clean up: the second database first, so that deleting the organization
-- here drops the warehouse role both databases used.
\connect dalgo_live_two
DROP EXTENSION dalgo;
\connect :regress_db
DROP DATABASE dalgo_live_two WITH (FORCE);
DELETE FROM dalgo.organizations WHERE id = '22222222-0000-4000-8000-0000000000d0';
DELETE FROM dalgo.users WHERE id = '11111111-0000-4000-8000-0000000000d1';
DROP TABLE public.live_source;
