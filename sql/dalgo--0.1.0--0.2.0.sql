-- dalgo 0.1.0 -> 0.2.0
--
-- Every change to an installed object made while 0.2.0 is under work goes
-- both into its sql/ fragment (which builds the fresh install script) and
-- here, in the same commit.  test/t/upgrade_equals_fresh.pl checks that a
-- 0.1.0 database updated with this script equals a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION dalgo UPDATE TO '0.2.0'" to load this file. \quit

-- sched: the scheduler's recovery judges a run's worker by pid and backend start, on every tick.
CREATE OR REPLACE FUNCTION dalgo.recover_interrupted_runs() RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	m integer;
	seen timestamptz;
	live_pids integer[];
	live_starts timestamptz[];
BEGIN
	-- A run is alive while the backend that marked it running is: the same
	-- pid, started no later than the run (a reused pid starts later).  Only
	-- runs marked before the list of backends was read are judged by it.
	PERFORM pg_stat_clear_snapshot();
	seen := clock_timestamp();
	SELECT array_agg(a.pid), array_agg(a.backend_start) INTO live_pids, live_starts
	FROM pg_stat_activity a WHERE a.backend_start IS NOT NULL;
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = 'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)'
	FROM dalgo.sources s
	WHERE s.id = r.source_id AND NOT dalgo.is_connector_source(s.source_type) AND r.status = 'running'
	  AND r.details ? 'schedule_id' AND coalesce(r.started_at, '-infinity') < seen
	  AND NOT EXISTS (SELECT FROM unnest(live_pids, live_starts) a(pid, started)
					  WHERE a.pid::text = r.details->>'runner_pid' AND a.started <= r.started_at);
	GET DIAGNOSTICS n = ROW_COUNT;
	UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = 'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)'
	WHERE r.status = 'running' AND r.details ? 'schedule_id' AND coalesce(r.started_at, '-infinity') < seen
	  AND NOT EXISTS (SELECT FROM unnest(live_pids, live_starts) a(pid, started)
					  WHERE a.pid::text = r.details->>'runner_pid' AND a.started <= r.started_at);
	GET DIAGNOSTICS m = ROW_COUNT;
	RETURN n + m;
END
$$;
COMMENT ON FUNCTION dalgo.recover_interrupted_runs() IS
	'Mark scheduled runs whose worker is gone (same pid and a backend start no later than the run''s) as failed; the scheduler calls it on every tick (pending runs simply wait for a worker)';

-- sched: a connector that claimed a run and went away.
CREATE FUNCTION dalgo.expire_stalled_connector_runs(timeout_seconds integer) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
BEGIN
	IF timeout_seconds IS NULL OR timeout_seconds <= 0 THEN
		RETURN 0;
	END IF;
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = clock_timestamp(),
		error_message = format('the connector did not complete the run within %s seconds of claiming it', timeout_seconds)
	WHERE r.status = 'running' AND coalesce(r.started_at, r.created_at) < now() - make_interval(secs => timeout_seconds)
	  AND EXISTS (SELECT FROM dalgo.sources s WHERE s.id = r.source_id AND dalgo.is_connector_source(s.source_type));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo.expire_stalled_connector_runs(integer) IS
	'Mark connector runs claimed but not completed within timeout_seconds (dalgo.run_timeout) as failed; 0 disables it';
REVOKE ALL ON FUNCTION dalgo.expire_stalled_connector_runs(integer) FROM PUBLIC;

-- sched: run_at_time 24:00 is refused.  Existing 24:00 rows become 00:00 of
-- the next day: hourly and daily simply 00:00, weekly the next weekday,
-- monthly the next day of the month (31 becomes 1, the first after the
-- month's last day).
UPDATE dalgo.schedules SET run_at_time = '00:00',
	run_at_day = CASE frequency WHEN 'weekly' THEN run_at_day % 7 + 1
								WHEN 'monthly' THEN run_at_day % 31 + 1 END
WHERE run_at_time = '24:00';
ALTER TABLE dalgo.schedules ADD CONSTRAINT schedules_run_at_time_of_day CHECK (run_at_time < '24:00');
COMMENT ON CONSTRAINT schedules_run_at_time_of_day ON dalgo.schedules IS
	'run_at_time is a time of day, 00:00 to 23:59:59.999999; 24:00 is refused (use 00:00 of the next day)';

-- sched: the scheduler idles while a database's dalgo is older than the library; wake it now.
SELECT dalgo.wake_launcher();
