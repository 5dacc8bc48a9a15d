-- quota_concurrent_race: a run_transformation call's 'running' row is
-- invisible to other sessions until it commits, when the run is over.
-- Concurrent calls must still count against concurrent_runs and
-- runs_per_hour: with a limit of 1, a second run started while the first is
-- still executing in another session is refused.
\set ECHO none
\i test/fixtures/tap_setup.sql
\set Q '''22222222-0000-4000-8000-0000000000e0'''
INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-0000000000e1', 'race.owner@example.org');
INSERT INTO dalgo.organizations (id, name, slug, settings) VALUES
	(:Q, 'Race org', 'race-org', '{"quotas": {"concurrent_runs": 1}}');
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
	(:Q, '11111111-0000-4000-8000-0000000000e1', 'owner');
INSERT INTO dalgo.warehouse_connections (organization_id, database_name) VALUES (:Q, 'wh_race');
CREATE TABLE org_222222220000400080000000000000e0.slow (x int);
CREATE TABLE org_222222220000400080000000000000e0.fast (x int);
ALTER TABLE org_222222220000400080000000000000e0.slow OWNER TO dalgo_wh_222222220000400080000000000000e0;
ALTER TABLE org_222222220000400080000000000000e0.fast OWNER TO dalgo_wh_222222220000400080000000000000e0;
INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name) VALUES
	('55555555-0000-4000-8000-0000000000e1', :Q, 'Slow', '{"version": 1, "source": {"table": "slow"}, "steps": []}', 'slow_out'),
	('55555555-0000-4000-8000-0000000000e2', :Q, 'Fast', '{"version": 1, "source": {"table": "fast"}, "steps": []}', 'fast_out');
SELECT plan(6);

SELECT dblink_connect('locker', format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
	split_part(current_setting('unix_socket_directories'), ',', 1))) \g /dev/null
SELECT dblink_connect('runner', format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
	split_part(current_setting('unix_socket_directories'), ',', 1))) \g /dev/null
SELECT pid AS runner_pid FROM dblink('runner', 'SELECT pg_backend_pid()') AS t(pid integer) \gset
-- Hold the slow run in the middle of its build: it has passed its quota check.
SELECT dblink_exec('locker', 'BEGIN') \g /dev/null
SELECT dblink_exec('locker', 'LOCK TABLE org_222222220000400080000000000000e0.slow IN ACCESS EXCLUSIVE MODE') \g /dev/null
SELECT dblink_exec('runner', 'BEGIN') \g /dev/null
SELECT dblink_exec('runner', $$SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e1'$$) \g /dev/null
SELECT dblink_exec('runner', 'SET LOCAL ROLE dalgo_authenticated') \g /dev/null
SELECT dblink_send_query('runner', $$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000e1')$$) \g /dev/null
SELECT set_config('test.runner_pid', :'runner_pid', false) \g /dev/null
DO $$
BEGIN
	FOR i IN 1..200 LOOP
		EXIT WHEN EXISTS (SELECT FROM pg_stat_activity WHERE pid = current_setting('test.runner_pid')::integer
						  AND wait_event_type = 'Lock');
		PERFORM pg_sleep(0.05);
	END LOOP;
END
$$;
SELECT ok(EXISTS (SELECT FROM pg_stat_activity WHERE pid = :runner_pid AND wait_event_type = 'Lock'),
	'the first run is executing (held by a lock) in another session');

BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e1';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000e2')$$, '53400',
	'quota concurrent_runs exceeded: 1 runs of the organization are in progress, the limit is 1',
	'a second concurrent run is refused although the first one''s row is not visible yet');
RESET ROLE;
-- One more than the runs this session sees: only the unseen one fills it.
SELECT count(*) + 1 AS hour_limit FROM dalgo.transformation_runs WHERE organization_id = :Q \gset
UPDATE dalgo.organizations SET settings = jsonb_build_object('quotas', jsonb_build_object('runs_per_hour', :hour_limit))
	WHERE id = :Q;
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000e2')$$, '53400',
	format('quota runs_per_hour exceeded: the organization started %s runs in the last hour, the limit is %s',
		   :hour_limit, :hour_limit),
	'so is a run over runs_per_hour');
COMMIT;
UPDATE dalgo.organizations SET settings = '{"quotas": {"concurrent_runs": 1}}' WHERE id = :Q;

SELECT dblink_exec('locker', 'ROLLBACK') \g /dev/null
SELECT run_id AS slow_run FROM dblink_get_result('runner') AS t(run_id uuid) \gset
SELECT * FROM dblink_get_result('runner') AS t(x uuid) \g /dev/null
SELECT dblink_exec('runner', 'COMMIT') \g /dev/null
SELECT is((SELECT status FROM dalgo.transformation_runs WHERE id = :'slow_run'), 'success'::dalgo.run_status,
	'the first run then finishes');
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e1';
SET LOCAL ROLE dalgo_authenticated;
SELECT lives_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000e2')$$,
	'after it the next run starts');
COMMIT;
-- Advisory lock keys are shared by every role: a session that holds the
-- organization's gate delays its runs for 10 s at most, then the run fails
-- with a clear error (and does not hang).
SELECT * FROM dblink('locker', format('SELECT pg_advisory_lock(%s)', hashtextextended('dalgo run gate ' || :Q, 0)))
	AS t(x text) \g /dev/null
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e1';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok($$SELECT dalgo.run_transformation('55555555-0000-4000-8000-0000000000e2')$$, '55P03',
	'the quota check of organization 22222222-0000-4000-8000-0000000000e0 is busy',
	'a held gate delays a run by at most 10 s');
COMMIT;
SELECT dblink_disconnect('locker') \g /dev/null
SELECT dblink_disconnect('runner') \g /dev/null

SELECT * FROM finish();
DELETE FROM dalgo.organizations WHERE id = :Q;
DELETE FROM dalgo.users WHERE id = '11111111-0000-4000-8000-0000000000e1';
DROP SCHEMA IF EXISTS org_222222220000400080000000000000e0 CASCADE;	-- gone with the organization since 0.2.0
DROP ROLE IF EXISTS dalgo_wh_222222220000400080000000000000e0;
