-- scheduler.sql: schedule time arithmetic, the run lifecycle the background
-- workers drive (claim, start, execute, fail, recover, expire, purge), output
-- refreshes, and the functions to run schedules by hand.  What a sync does
-- is in sync.sql.

CREATE FUNCTION dalgo.next_run(frequency dalgo.schedule_frequency, run_at_time time, run_at_day integer,
							   timezone text, after timestamptz)
	RETURNS timestamptz
	AS 'MODULE_PATHNAME', 'dalgo_next_run_sql'
	LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo.next_run(dalgo.schedule_frequency, time, integer, text, timestamptz) IS
	'The first slot of a schedule strictly after "after": local dates in the time zone, DST gaps run at the gap''s end, repeated times run once at their second occurrence, monthly days clamp to the month''s end';

CREATE FUNCTION dalgo_internal.wake_scheduler() RETURNS trigger
	AS 'MODULE_PATHNAME', 'dalgo_wake_scheduler'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo_internal.wake_scheduler() IS 'Statement trigger on schedules: wakes this database''s scheduler when the transaction commits';

CREATE FUNCTION dalgo_internal.wake_launcher() RETURNS void
	AS 'MODULE_PATHNAME', 'dalgo_wake_launcher'
	LANGUAGE C;
COMMENT ON FUNCTION dalgo_internal.wake_launcher() IS 'Ask the launcher to start this database''s scheduler once the transaction commits (CREATE EXTENSION calls it)';

CREATE FUNCTION dalgo.scheduler_status()
	RETURNS TABLE (database_oid oid, dalgo_installed boolean, worker_pid integer, last_tick timestamptz,
				   due integer, running integer, runs_started bigint, last_error text, maintenance_at timestamptz)
	AS 'MODULE_PATHNAME', 'dalgo_scheduler_status'
	LANGUAGE C VOLATILE;
COMMENT ON FUNCTION dalgo.scheduler_status() IS
	'Per database the launcher knows: whether dalgo is installed, the scheduler''s pid, its last tick, due and running counts, runs started, the last error, and when the daily maintenance last finished';

-- next_run_at follows the schedule's definition.
CREATE FUNCTION dalgo_internal.set_schedule_next_run() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP = 'INSERT' AND dalgo.restoring() THEN RETURN NEW; END IF;	-- keeps the dumped next_run_at
	IF NOT NEW.is_active OR NEW.deleted_at IS NOT NULL THEN
		NEW.next_run_at := NULL;
	ELSIF TG_OP = 'INSERT' OR NEW.next_run_at IS NULL
		  OR (NEW.frequency, NEW.run_at_time, NEW.run_at_day, NEW.timezone)
			 IS DISTINCT FROM (OLD.frequency, OLD.run_at_time, OLD.run_at_day, OLD.timezone) THEN
		NEW.next_run_at := dalgo.next_run(NEW.frequency, NEW.run_at_time, NEW.run_at_day, NEW.timezone, now());
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION dalgo_internal.set_schedule_next_run() IS
	'BEFORE trigger on schedules: keeps next_run_at current on insert, on a change of frequency, time, day or zone, and when is_active or deleted_at change';
CREATE TRIGGER before_save BEFORE INSERT OR UPDATE ON dalgo.schedules
	FOR EACH ROW EXECUTE FUNCTION dalgo_internal.set_schedule_next_run();
COMMENT ON TRIGGER before_save ON dalgo.schedules IS 'Keeps next_run_at current';
CREATE TRIGGER wake_scheduler AFTER INSERT OR UPDATE OR DELETE ON dalgo.schedules
	FOR EACH STATEMENT EXECUTE FUNCTION dalgo_internal.wake_scheduler();
COMMENT ON TRIGGER wake_scheduler ON dalgo.schedules IS 'A change to schedules wakes the scheduler';

-- sched: 24:00 is the end of a day, not a time a schedule runs at; 00:00 is.
ALTER TABLE dalgo.schedules ADD CONSTRAINT schedules_run_at_time_of_day CHECK (run_at_time < '24:00');
COMMENT ON CONSTRAINT schedules_run_at_time_of_day ON dalgo.schedules IS
	'run_at_time is a time of day, 00:00 to 23:59:59.999999; 24:00 is refused (use 00:00 of the next day)';

-- ---------------------------------------------------------------------------
-- The run lifecycle
-- ---------------------------------------------------------------------------

-- What a scheduled run does: sync a source (a sync_runs row) or refresh an
-- output (a transformation_runs row).  The one name for the two kinds, in
-- SQL and in the run workers.
CREATE TYPE dalgo.run_kind AS ENUM ('sync', 'output');
COMMENT ON TYPE dalgo.run_kind IS
	'What a scheduled run does: sync (a source, recorded in sync_runs) or output (an output refresh, recorded in transformation_runs)';

-- Citus: whether a table is distributed (a reference or hash table of a
-- Citus cluster, after dalgo.distribute()).  The scheduler and the account
-- functions choose their Citus-compatible statements with it, at run time;
-- without Citus it is false and the single-node statements run unchanged.
CREATE FUNCTION dalgo_internal.citus_distributed(rel regclass) RETURNS boolean
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r boolean;
BEGIN
	IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
		RETURN false;
	END IF;
	EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1)' INTO r USING rel;
	RETURN r;
END
$$;
COMMENT ON FUNCTION dalgo_internal.citus_distributed(regclass) IS
	'Internal: true when the table is distributed by Citus (dalgo.distribute()); false without Citus';
REVOKE ALL ON FUNCTION dalgo_internal.citus_distributed(regclass) FROM PUBLIC;

-- Claim due schedules: lock with SKIP LOCKED, advance next_run_at past "at"
-- (missed slots run once), skip a schedule whose previous run is still going,
-- and create the run row.  outcome: 'queued' (a pending run for the run
-- workers), 'connector' (a pending sync for an outside connector, NOTIFY
-- dalgo_sync with an empty payload) or 'skipped' (a failed run row).
CREATE FUNCTION dalgo_internal.claim_due_schedules(at timestamptz, max_runs integer, only_schedule uuid DEFAULT NULL)
	RETURNS TABLE (schedule_id uuid, run_kind dalgo.run_kind, run_id uuid, outcome text)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s dalgo.schedules;
	src dalgo.sources;
	out dalgo.outputs;
	busy boolean;
	det jsonb;
	rid uuid;
	cur refcursor;
	citus boolean := dalgo_internal.citus_distributed('dalgo.schedules');
	cand_org uuid;
	cand_id uuid;
	claimed integer := 0;
BEGIN
	IF max_runs <= 0 THEN
		RETURN;
	END IF;
	-- Fair between organizations: each organization's oldest due schedule
	-- first, then each one's second, and so on, so that one organization's
	-- backlog never holds another's due schedule back to a later tick.  The
	-- due test is repeated on x: a row another claimer committed in between is
	-- re-checked after its lock.
	-- The limit applies after SKIP LOCKED: a schedule row another
	-- transaction holds (run_schedule_now's run, an open UPDATE) is passed
	-- over and does not use up a place, so locked rows cannot crowd every
	-- other organization's due schedule out of the claim.
	-- On a Citus cluster (schedules distributed) a row lock may only be
	-- taken by a single-shard query: the candidates are read in the same
	-- order without locks, and each is then locked on its own shard, with
	-- SKIP LOCKED, re-checked, and counted against the limit once locked.
	IF citus THEN
		OPEN cur FOR SELECT d.organization_id, d.id FROM
			(SELECT y.organization_id, y.id, y.next_run_at,
					row_number() OVER (PARTITION BY y.organization_id ORDER BY y.next_run_at, y.id) AS turn
			 FROM dalgo.schedules y
			 WHERE y.is_active AND y.deleted_at IS NULL AND y.next_run_at <= at
			   AND (only_schedule IS NULL OR y.id = only_schedule)) d
			ORDER BY d.turn, d.next_run_at, d.id;
	ELSE
		OPEN cur FOR SELECT x.* FROM dalgo.schedules x
			 JOIN (SELECT y.id,
						  row_number() OVER (PARTITION BY y.organization_id ORDER BY y.next_run_at, y.id) AS turn
				   FROM dalgo.schedules y
				   WHERE y.is_active AND y.deleted_at IS NULL AND y.next_run_at <= at
					 AND (only_schedule IS NULL OR y.id = only_schedule)) d ON d.id = x.id
			 WHERE x.is_active AND x.deleted_at IS NULL AND x.next_run_at <= at
			   AND (only_schedule IS NULL OR x.id = only_schedule)
			 ORDER BY d.turn, x.next_run_at, x.id
			 LIMIT max_runs
			 FOR UPDATE OF x SKIP LOCKED;
	END IF;
	LOOP
		IF citus THEN
			EXIT WHEN claimed >= max_runs;
			FETCH cur INTO cand_org, cand_id;
			EXIT WHEN NOT FOUND;
			SELECT x.* INTO s FROM dalgo.schedules x
			WHERE x.organization_id = cand_org AND x.id = cand_id
			  AND x.is_active AND x.deleted_at IS NULL AND x.next_run_at <= at
			FOR UPDATE SKIP LOCKED;
			CONTINUE WHEN NOT FOUND;
			claimed := claimed + 1;
		ELSE
			FETCH cur INTO s;
			EXIT WHEN NOT FOUND;
		END IF;
		det := jsonb_build_object('schedule_id', s.id, 'attempt', 1,
								  'lag_ms', round(extract(epoch FROM clock_timestamp() - s.next_run_at) * 1000));
		UPDATE dalgo.schedules x SET last_run_at = at,
			next_run_at = dalgo.next_run(s.frequency, s.run_at_time, s.run_at_day, s.timezone, greatest(at, s.next_run_at))
		WHERE x.organization_id = s.organization_id AND x.id = s.id;
		schedule_id := s.id;
		IF s.source_id IS NOT NULL THEN
			run_kind := 'sync';
			SELECT * INTO src FROM dalgo.sources x WHERE x.organization_id = s.organization_id AND x.id = s.source_id;
			-- sync_now holds the source row FOR UPDATE while it queues or runs
			-- a sync: that run is going, even if not yet committed.
			PERFORM FROM dalgo.sources x WHERE x.organization_id = s.organization_id AND x.id = s.source_id
				FOR KEY SHARE SKIP LOCKED;
			busy := NOT FOUND OR EXISTS (SELECT FROM dalgo.sync_runs r WHERE r.organization_id = s.organization_id
										 AND r.source_id = s.source_id
										 AND r.status IN ('pending', 'running') AND r.deleted_at IS NULL);
			IF busy THEN
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, started_at, completed_at, error_message, details)
				VALUES (s.organization_id, s.source_id, 'failed', clock_timestamp(), clock_timestamp(),
						'skipped: the previous run of this schedule is still going', det || '{"skipped": true}')
				RETURNING id INTO rid;
				outcome := 'skipped';
			ELSE
				INSERT INTO dalgo.sync_runs (organization_id, source_id, status, details)
				VALUES (s.organization_id, s.source_id, 'pending', det) RETURNING id INTO rid;
				IF dalgo_internal.synced_by_connector(src.config) THEN
					-- Anyone can LISTEN: the payload is empty, connectors learn
					-- the work from claim_sync_run().
					PERFORM pg_notify('dalgo_sync', '');
					outcome := 'connector';
				ELSE
					outcome := 'queued';
				END IF;
			END IF;
		ELSE
			run_kind := 'output';
			SELECT * INTO out FROM dalgo.outputs x WHERE x.organization_id = s.organization_id AND x.id = s.output_id;
			-- Likewise refresh_output_now and the output row; its on-demand
			-- runs (details.output_id) count as this schedule's.
			PERFORM FROM dalgo.outputs x WHERE x.organization_id = s.organization_id AND x.id = s.output_id
				FOR KEY SHARE SKIP LOCKED;
			busy := NOT FOUND OR EXISTS (SELECT FROM dalgo.transformation_runs r WHERE r.organization_id = s.organization_id
										 AND r.transformation_id = out.transformation_id
										 AND r.status IN ('pending', 'running')
										 AND (r.details->>'schedule_id' = s.id::text OR r.details->>'output_id' = s.output_id::text));
			INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, started_at, completed_at,
												   error_message, details)
			VALUES (s.organization_id, out.transformation_id, CASE WHEN busy THEN 'failed' ELSE 'pending' END::dalgo.run_status,
					CASE WHEN busy THEN clock_timestamp() END, CASE WHEN busy THEN clock_timestamp() END,
					CASE WHEN busy THEN 'skipped: the previous run of this schedule is still going' END,
					det || CASE WHEN busy THEN '{"skipped": true}'::jsonb ELSE '{}'::jsonb END)
			RETURNING id INTO rid;
			outcome := CASE WHEN busy THEN 'skipped' ELSE 'queued' END;
		END IF;
		run_id := rid;
		RETURN NEXT;
	END LOOP;
	CLOSE cur;
END
$$;
COMMENT ON FUNCTION dalgo_internal.claim_due_schedules(timestamptz, integer, uuid) IS
	'Internal: claim up to max_runs due schedules (FOR UPDATE SKIP LOCKED), advance them and create their run rows; outcome is queued (for the run workers), connector or skipped';

-- Take a pending in-database run (SKIP LOCKED) and mark it running; run
-- workers loop on this until nothing is left.  The queue is fair between
-- organizations: the organization with the fewest runs already running goes
-- first, and within that order the one waiting longest; inside an
-- organization, syncs before output refreshes, oldest first.  One
-- organization's backlog therefore never starves another's due run.
CREATE FUNCTION dalgo_internal.claim_pending_run(OUT run_kind dalgo.run_kind, OUT run_id uuid)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	org uuid;
BEGIN
	-- A run whose target is gone is passed over (what target_is_live()
	-- tells, written as joins on (organization_id, id): on a Citus cluster
	-- these queries run on the shards, where a function that reads other
	-- tables cannot).
	FOR org IN
		WITH queued AS (
			SELECT r.organization_id, r.status, r.created_at
			FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.organization_id = r.organization_id AND s.id = r.source_id
			JOIN dalgo.organizations o ON o.id = r.organization_id
			WHERE r.status IN ('pending', 'running') AND NOT dalgo_internal.synced_by_connector(s.config)
			  AND r.details ?| ARRAY['schedule_id', 'on_demand']
			  AND (r.status = 'running' OR (o.deleted_at IS NULL AND s.deleted_at IS NULL))
			UNION ALL
			SELECT r.organization_id, r.status, r.created_at FROM dalgo.transformation_runs r
			JOIN dalgo.organizations o ON o.id = r.organization_id
			JOIN dalgo.transformations t ON t.organization_id = r.organization_id AND t.id = r.transformation_id
			WHERE r.status IN ('pending', 'running') AND r.details ?| ARRAY['schedule_id', 'on_demand']
			  AND (r.status = 'running' OR (o.deleted_at IS NULL AND t.deleted_at IS NULL)))
		SELECT q.organization_id FROM queued q
		GROUP BY q.organization_id
		HAVING bool_or(q.status = 'pending')
		ORDER BY count(*) FILTER (WHERE q.status = 'running'), min(q.created_at) FILTER (WHERE q.status = 'pending'),
				 q.organization_id
	LOOP
		CONTINUE WHEN NOT EXISTS (SELECT FROM dalgo.organizations o WHERE o.id = org AND o.deleted_at IS NULL);
		SELECT 'sync', r.id INTO run_kind, run_id FROM dalgo.sync_runs r
			JOIN dalgo.sources s ON s.organization_id = r.organization_id AND s.id = r.source_id
		WHERE r.status = 'pending' AND r.organization_id = org AND NOT dalgo_internal.synced_by_connector(s.config)
		  AND r.details ?| ARRAY['schedule_id', 'on_demand'] AND s.deleted_at IS NULL
		ORDER BY r.created_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED;
		IF NOT FOUND THEN
			SELECT 'output', r.id INTO run_kind, run_id FROM dalgo.transformation_runs r
				JOIN dalgo.transformations t ON t.organization_id = r.organization_id AND t.id = r.transformation_id
			WHERE r.status = 'pending' AND r.organization_id = org AND r.details ?| ARRAY['schedule_id', 'on_demand']
			  AND t.deleted_at IS NULL
			ORDER BY r.created_at LIMIT 1 FOR UPDATE OF r SKIP LOCKED;
		END IF;
		EXIT WHEN run_id IS NOT NULL;
	END LOOP;
	IF run_id IS NOT NULL THEN
		PERFORM dalgo_internal.start_scheduled_run(run_kind, run_id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.claim_pending_run() IS
	'Internal: a run worker takes a pending in-database run and marks it running: the organization with the fewest running runs first, then the one waiting longest';

CREATE FUNCTION dalgo_internal.pending_runs() RETURNS integer
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
	AS $$ SELECT (SELECT count(*) FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.organization_id = r.organization_id AND s.id = r.source_id
				  WHERE r.status = 'pending' AND NOT dalgo_internal.synced_by_connector(s.config) AND r.details ?| ARRAY['schedule_id', 'on_demand'])::integer
			   + (SELECT count(*) FROM dalgo.transformation_runs r WHERE r.status = 'pending' AND r.details ?| ARRAY['schedule_id', 'on_demand'])::integer $$;
COMMENT ON FUNCTION dalgo_internal.pending_runs() IS 'Internal: in-database runs waiting for a run worker';

CREATE INDEX sync_runs_active_idx ON dalgo.sync_runs (created_at) WHERE status IN ('pending', 'running');
COMMENT ON INDEX dalgo.sync_runs_active_idx IS 'Pending and running sync runs: the run queue and the one-run-at-a-time check';
CREATE INDEX transformation_runs_active_idx ON dalgo.transformation_runs (created_at) WHERE status IN ('pending', 'running');
COMMENT ON INDEX dalgo.transformation_runs_active_idx IS 'Pending and running transformation runs: the run queue and the one-run-at-a-time check';

-- The two run tables seen as one, for the scheduler's steps: run_kind sync
-- is a sync run (sync_runs), output an output refresh (transformation_runs).
CREATE VIEW dalgo_internal.scheduled_runs AS
	SELECT 'sync'::dalgo.run_kind AS run_kind, r.id, r.organization_id, r.source_id, NULL::uuid AS transformation_id, r.details,
		   r.status, r.started_at
	FROM dalgo.sync_runs r
	UNION ALL
	SELECT 'output'::dalgo.run_kind, r.id, r.organization_id, NULL::uuid, r.transformation_id, r.details, r.status, r.started_at
	FROM dalgo.transformation_runs r;
COMMENT ON VIEW dalgo_internal.scheduled_runs IS
	'Internal: sync runs (run_kind sync) and transformation runs (run_kind output) as one relation, for the scheduler''s steps and the run quotas';

-- The one place that writes a run's state by kind: running (started_at
-- and extra details) or finished (completed_at, error_message, details).
CREATE FUNCTION dalgo_internal.set_scheduled_run_status(run_kind dalgo.run_kind, run_id uuid, status dalgo.run_status,
														 message text, extra jsonb) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	starting boolean := status = 'running';
	-- Computed once: Citus refuses a volatile function in an UPDATE of a
	-- distributed table.
	stamp timestamptz := clock_timestamp();
BEGIN
	IF run_kind = 'sync' THEN
		UPDATE dalgo.sync_runs r SET status = set_scheduled_run_status.status,
			started_at = CASE WHEN starting THEN stamp ELSE r.started_at END,
			completed_at = CASE WHEN starting THEN r.completed_at ELSE stamp END,
			error_message = CASE WHEN starting THEN r.error_message ELSE message END,
			details = r.details || coalesce(extra, '{}')
		WHERE r.id = run_id;
	ELSE
		UPDATE dalgo.transformation_runs r SET status = set_scheduled_run_status.status,
			started_at = CASE WHEN starting THEN stamp ELSE r.started_at END,
			completed_at = CASE WHEN starting THEN r.completed_at ELSE stamp END,
			error_message = CASE WHEN starting THEN r.error_message ELSE message END,
			details = r.details || coalesce(extra, '{}')
		WHERE r.id = run_id;
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.set_scheduled_run_status(dalgo.run_kind, uuid, dalgo.run_status, text, jsonb) IS
	'Internal: set a scheduled run''s status in its table (sync_runs for sync, transformation_runs for output): running stamps started_at, any other status completed_at and error_message; extra is merged into details';
REVOKE ALL ON FUNCTION dalgo_internal.set_scheduled_run_status(dalgo.run_kind, uuid, dalgo.run_status, text, jsonb) FROM PUBLIC;

CREATE FUNCTION dalgo_internal.start_scheduled_run(run_kind dalgo.run_kind, run_id uuid) RETURNS void
	LANGUAGE sql
	SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT dalgo_internal.set_scheduled_run_status(run_kind, run_id, 'running', NULL,
		jsonb_build_object('runner_pid', pg_backend_pid()));
END;
COMMENT ON FUNCTION dalgo_internal.start_scheduled_run(dalgo.run_kind, uuid) IS 'Internal: mark a claimed run running (committed before it executes)';

CREATE FUNCTION dalgo_internal.fail_scheduled_run(run_kind dalgo.run_kind, run_id uuid, message text) RETURNS void
	LANGUAGE sql
	SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT dalgo_internal.set_scheduled_run_status(run_kind, run_id, 'failed', message, NULL);
END;
COMMENT ON FUNCTION dalgo_internal.fail_scheduled_run(dalgo.run_kind, uuid, text) IS 'Internal: record a run''s failure';

-- A run row is acted on only if it is what dalgo's own claim made: its
-- schedule (details.schedule_id) exists and names the run's source, or the
-- output whose transformation is the run's, and schedule, source or output,
-- transformation and run all belong to one organization.  Anything else is
-- refused (the worker then records the run as failed).
CREATE FUNCTION dalgo_internal.verify_scheduled_run(run_kind dalgo.run_kind, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	det jsonb;
	run_org uuid;
	run_source uuid;
	run_transformation uuid;
	sid uuid;
	s dalgo.schedules;
	agree boolean := false;
BEGIN
	SELECT r.details, r.organization_id, r.source_id, r.transformation_id
	INTO det, run_org, run_source, run_transformation
	FROM dalgo_internal.scheduled_runs r WHERE r.run_kind = verify_scheduled_run.run_kind AND r.id = run_id;
	BEGIN
		sid := (det->>'schedule_id')::uuid;
	EXCEPTION WHEN invalid_text_representation THEN
		sid := NULL;
	END;
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = sid;
	IF det ? 'on_demand' AND NOT det ? 'schedule_id' THEN
		-- A run sync_now or refresh_output_now queued: its source, or the
		-- output (details.output_id) whose transformation is the run's, in
		-- the run's organization.
		IF run_kind = 'sync' THEN
			agree := NOT det ? 'output_id'
				AND EXISTS (SELECT FROM dalgo.sources x WHERE x.id = run_source AND x.organization_id = run_org);
		ELSIF det->>'output_id' ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
			agree := EXISTS (SELECT FROM dalgo.outputs o JOIN dalgo.transformations t ON t.id = o.transformation_id
							 WHERE o.id = (det->>'output_id')::uuid AND o.organization_id = run_org
							   AND t.organization_id = run_org AND t.id = run_transformation);
		END IF;
	ELSIF FOUND AND s.organization_id = run_org AND NOT det ? 'output_id' THEN
		IF run_kind = 'sync' THEN
			agree := s.source_id = run_source
				AND EXISTS (SELECT FROM dalgo.sources x WHERE x.id = run_source AND x.organization_id = run_org);
		ELSE
			agree := EXISTS (SELECT FROM dalgo.outputs o JOIN dalgo.transformations t ON t.id = o.transformation_id
							 WHERE o.id = s.output_id AND o.organization_id = run_org AND t.organization_id = run_org
							   AND t.id = run_transformation);
		END IF;
	END IF;
	IF NOT coalesce(agree, false) THEN
		RAISE EXCEPTION 'run % was refused: it does not match its schedule', run_id
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'A scheduled run must name the schedule that created it, and schedule, source or output, transformation and run must belong to one organization.';
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.verify_scheduled_run(dalgo.run_kind, uuid) IS
	'Internal: refuse a run row whose schedule (or, for a run queued on demand, details.output_id), source or output, transformation and organization do not agree (a forged row); sync_source and refresh_output call it first';

-- An output may drop or replace only a view it made itself: a view over
-- the one warehouse table its transformation builds, and over nothing else.
-- An output's destination_config.name is a member's text; without this test
-- it names any view of the warehouse (an operator's, another output's).
CREATE FUNCTION dalgo_internal.output_view_reads(organization_id uuid, view_name text, table_name text) RETURNS boolean
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce((
		SELECT c.relkind = 'v' AND tbl IS NOT NULL
			AND bool_and(d.refobjid = tbl) AND bool_or(d.refobjid = tbl)
		FROM pg_class c
		JOIN pg_rewrite rw ON rw.ev_class = c.oid
		LEFT JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
			AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> c.oid,
		LATERAL (SELECT to_regclass(format('%I.%I', dalgo_internal.warehouse_schema_name(output_view_reads.organization_id),
										   output_view_reads.table_name))::oid AS tbl) x
		WHERE c.oid = to_regclass(format('%I.%I', dalgo_internal.warehouse_schema_name(output_view_reads.organization_id),
										 output_view_reads.view_name))
		GROUP BY c.relkind, tbl), false)
$$;
COMMENT ON FUNCTION dalgo_internal.output_view_reads(uuid, text, text) IS
	'Internal: true when the warehouse relation view_name is a view that reads the warehouse table table_name and no other relation (an output view dalgo made)';

-- Views over a warehouse table block its swap (DROP TABLE): the
-- organization's live output views (destination type view) over the given
-- tables are dropped before a swap and created again after it, in the same
-- transaction, so readers wait and never miss them.  drop_output_views
-- returns what restore_output_views needs.
CREATE FUNCTION dalgo_internal.drop_output_views(organization_id uuid, table_names text[]) RETURNS jsonb
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	v record;
	dropped jsonb := '[]';
BEGIN
	FOR v IN SELECT DISTINCT coalesce(x.destination_config->>'name', y.output_table_name) AS view_name,
					y.output_table_name AS table_name
			 FROM dalgo.outputs x JOIN dalgo.transformations y ON y.id = x.transformation_id
			 WHERE x.organization_id = drop_output_views.organization_id
			   AND y.organization_id = drop_output_views.organization_id
			   AND x.deleted_at IS NULL AND x.destination_config->>'type' = 'view'
			   AND y.output_table_name = ANY (table_names)
	LOOP
		IF v.view_name <> v.table_name AND dalgo_internal.output_view_reads(organization_id, v.view_name, v.table_name) THEN
			PERFORM dalgo_internal.warehouse_execute(organization_id, format('DROP VIEW %I.%I', schema_name, v.view_name));
			dropped := dropped || jsonb_build_object('view_name', v.view_name, 'table_name', v.table_name);
		END IF;
	END LOOP;
	RETURN dropped;
END
$$;
COMMENT ON FUNCTION dalgo_internal.drop_output_views(uuid, text[]) IS
	'Internal: drop the organization''s output views over the given warehouse tables before they are swapped; returns what restore_output_views needs';

CREATE FUNCTION dalgo_internal.restore_output_views(organization_id uuid, dropped jsonb) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	schema_name text := dalgo_internal.warehouse_schema_name(organization_id);
	v record;
BEGIN
	FOR v IN SELECT * FROM jsonb_to_recordset(dropped) AS d(view_name text, table_name text) LOOP
		IF to_regclass(format('%I.%I', schema_name, v.table_name)) IS NOT NULL THEN
			PERFORM dalgo_internal.warehouse_execute(organization_id, format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I',
				schema_name, v.view_name, schema_name, v.table_name));
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION dalgo_internal.restore_output_views(uuid, jsonb) IS
	'Internal: create again, over the (new) tables, the output views drop_output_views dropped';

-- An output refresh: the transformation (and what it reads), then the
-- destination.  Output, transformation and organization come from the run's
-- schedule (or, queued by refresh_output_now, its details.output_id), after
-- verify_scheduled_run checked that the run row agrees.
-- A view destination depends on the table it reads, and a swap drops that
-- table: the organization's output views over the tables this refresh
-- rebuilds are dropped first and created again afterwards.
CREATE FUNCTION dalgo_internal.refresh_output(run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r dalgo.transformation_runs;
	o dalgo.outputs;
	t dalgo.transformations;
	v record;
	schema_name text;
	dest text;
	kind text;
BEGIN
	PERFORM dalgo_internal.verify_scheduled_run('output', run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;
	SELECT * INTO o FROM dalgo.outputs x
	WHERE x.id = coalesce((SELECT s.output_id FROM dalgo.schedules s WHERE s.id = (r.details->>'schedule_id')::uuid),
						  (r.details->>'output_id')::uuid);
	SELECT * INTO t FROM dalgo.transformations x WHERE x.id = o.transformation_id;
	schema_name := dalgo_internal.warehouse_schema_name(o.organization_id);
	kind := coalesce(o.destination_config->>'type', 'table');
	dest := coalesce(o.destination_config->>'name', t.output_table_name);
	IF kind NOT IN ('table', 'view') THEN
		RAISE EXCEPTION 'unknown destination type "%" (use table or view)', kind USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF kind = 'view' AND dest = t.output_table_name THEN
		RAISE EXCEPTION 'a view destination needs a name other than the transformation''s table "%"', dest
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Set destination_config.name.';
	END IF;
	-- destination_config.name is a member's text: it may name only what this
	-- output makes.  Longer names would be truncated to another table's name.
	IF dest = '' OR octet_length(dest) >= 64 OR dest LIKE '\_dalgo\_%' THEN
		RAISE EXCEPTION 'output destination name "%" is not allowed', dest
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use a name of 1 to 63 bytes that does not start with _dalgo_.';
	END IF;
	IF dest <> t.output_table_name AND to_regclass(format('%I.%I', schema_name, dest)) IS NOT NULL
	   AND NOT (CASE WHEN kind = 'view' THEN dalgo_internal.output_view_reads(o.organization_id, dest, t.output_table_name)
				ELSE EXISTS (SELECT FROM dalgo.warehouse_tables w
							 WHERE w.organization_id = o.organization_id AND w.table_name = dest
							   AND w.deleted_at IS NULL AND w.output_id = o.id) END) THEN
		RAISE EXCEPTION 'output destination "%" exists and was not made by this output', dest
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'An output replaces only a table or view that its own refreshes made.',
				  HINT = 'Set destination_config.name to a new name.';
	END IF;

	-- Each swap below keeps the output views over its table
	-- (swap_warehouse_table drops and restores them).
	FOR v IN SELECT u.id FROM dalgo.transformation_upstream(t.id) u LOOP
		PERFORM dalgo.run_transformation(v.id, false);
	END LOOP;
	PERFORM dalgo_internal.build_transformation(t.id, run_id);
	SELECT * INTO r FROM dalgo.transformation_runs x WHERE x.id = run_id;

	IF r.status <> 'success' THEN
		RETURN;
	END IF;
	IF kind = 'view' THEN
		PERFORM dalgo_internal.warehouse_execute(o.organization_id, format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I',
			schema_name, dest, schema_name, t.output_table_name));
	ELSIF dest <> t.output_table_name THEN
		PERFORM dalgo_internal.warehouse_execute(o.organization_id, format('CREATE TABLE %I.%I AS SELECT * FROM %I.%I',
			schema_name, '_dalgo_out_' || replace(run_id::text, '-', ''), schema_name, t.output_table_name));
		PERFORM dalgo_internal.check_warehouse_quota(o.organization_id, dest);
		-- The swap records this output as the table's producer.
		PERFORM dalgo_internal.swap_warehouse_table(o.organization_id, '_dalgo_out_' || replace(run_id::text, '-', ''), dest);
	END IF;
	UPDATE dalgo.outputs x SET last_refreshed_at = now() WHERE x.id = o.id;
END
$$;
COMMENT ON FUNCTION dalgo_internal.refresh_output(uuid) IS
	'Internal: run an output''s transformation with its upstream, then refresh destination_config ({"type": "table"|"view", "name": ...}); output views over rebuilt tables are dropped and created again around the swap';

CREATE FUNCTION dalgo_internal.execute_scheduled_run(run_kind dalgo.run_kind, run_id uuid) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	msg text;
BEGIN
	-- A run refused by a quota did not start: it fails with the quota's
	-- message and, like a skipped slot, does not count against runs_per_hour
	-- (else an organization whose schedules ask for more than its quota
	-- would be refused for good, each refusal filling the next hour).
	BEGIN
		PERFORM dalgo_internal.check_run_quota((SELECT r.organization_id FROM dalgo_internal.scheduled_runs r
												WHERE r.run_kind = execute_scheduled_run.run_kind AND r.id = run_id));
	EXCEPTION WHEN configuration_limit_exceeded THEN
		GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
		PERFORM dalgo_internal.set_scheduled_run_status(run_kind, run_id, 'failed', msg,
														 '{"skipped": true, "quota_refused": true}');
		RETURN;
	END;
	IF run_kind = 'sync' THEN
		PERFORM dalgo_internal.sync_source(run_id);
	ELSE
		PERFORM dalgo_internal.refresh_output(run_id);
	END IF;
END
$$;
COMMENT ON FUNCTION dalgo_internal.execute_scheduled_run(dalgo.run_kind, uuid) IS 'Internal: execute a claimed run (what a run worker does); a run over a quota fails without counting as started';

CREATE FUNCTION dalgo_internal.recover_interrupted_runs() RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	m integer;
	seen timestamptz;
	live_pids integer[];
	live_starts timestamptz[];
	stamp timestamptz;
BEGIN
	-- A run is alive while the backend that marked it running is: the same
	-- pid, started no later than the run (a reused pid starts later).  Only
	-- runs marked before the list of backends was read are judged by it.
	PERFORM pg_stat_clear_snapshot();
	seen := clock_timestamp();
	SELECT array_agg(a.pid), array_agg(a.backend_start) INTO live_pids, live_starts
	FROM pg_stat_activity a WHERE a.backend_start IS NOT NULL;
	-- A timestamp computed once, and a join on organization_id: what Citus
	-- accepts in an UPDATE of a distributed table.
	stamp := clock_timestamp();
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stamp,
		error_message = 'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)'
	FROM dalgo.sources s
	WHERE s.organization_id = r.organization_id AND s.id = r.source_id AND NOT dalgo_internal.synced_by_connector(s.config)
	  AND r.status = 'running'
	  AND r.details ?| ARRAY['schedule_id', 'on_demand'] AND coalesce(r.started_at, '-infinity') < seen
	  AND NOT EXISTS (SELECT FROM unnest(live_pids, live_starts) a(pid, started)
					  WHERE a.pid::text = r.details->>'runner_pid' AND a.started <= r.started_at);
	GET DIAGNOSTICS n = ROW_COUNT;
	UPDATE dalgo.transformation_runs r SET status = 'failed', completed_at = stamp,
		error_message = 'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)'
	WHERE r.status = 'running' AND r.details ?| ARRAY['schedule_id', 'on_demand'] AND coalesce(r.started_at, '-infinity') < seen
	  AND NOT EXISTS (SELECT FROM unnest(live_pids, live_starts) a(pid, started)
					  WHERE a.pid::text = r.details->>'runner_pid' AND a.started <= r.started_at);
	GET DIAGNOSTICS m = ROW_COUNT;
	RETURN n + m;
END
$$;
COMMENT ON FUNCTION dalgo_internal.recover_interrupted_runs() IS
	'Mark scheduled runs whose worker is gone (same pid and a backend start no later than the run''s) as failed; the scheduler calls it on every tick (pending runs simply wait for a worker)';

CREATE FUNCTION dalgo_internal.expire_connector_runs(timeout_seconds integer) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	stamp timestamptz;
BEGIN
	stamp := clock_timestamp();	-- once (Citus: no volatile function in an UPDATE)
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stamp,
		error_message = format('no connector claimed the run within %s seconds', timeout_seconds)
	WHERE r.status = 'pending' AND r.created_at < now() - make_interval(secs => timeout_seconds)
	  AND EXISTS (SELECT FROM dalgo.sources s WHERE s.organization_id = r.organization_id AND s.id = r.source_id
				  AND dalgo_internal.synced_by_connector(s.config));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.expire_connector_runs(integer) IS 'Mark connector runs nobody claimed in time as failed';

-- sched: a connector that claimed a run and went away.
CREATE FUNCTION dalgo_internal.expire_stalled_connector_runs(timeout_seconds integer) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	stamp timestamptz;
BEGIN
	IF timeout_seconds IS NULL OR timeout_seconds <= 0 THEN
		RETURN 0;
	END IF;
	stamp := clock_timestamp();	-- once (Citus: no volatile function in an UPDATE)
	UPDATE dalgo.sync_runs r SET status = 'failed', completed_at = stamp,
		error_message = format('the connector did not complete the run within %s seconds of claiming it', timeout_seconds)
	WHERE r.status = 'running' AND coalesce(r.started_at, r.created_at) < now() - make_interval(secs => timeout_seconds)
	  AND EXISTS (SELECT FROM dalgo.sources s WHERE s.organization_id = r.organization_id AND s.id = r.source_id
				  AND dalgo_internal.synced_by_connector(s.config));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.expire_stalled_connector_runs(integer) IS
	'Mark connector runs claimed but not completed within timeout_seconds (dalgo.run_timeout) as failed; 0 disables it';
REVOKE ALL ON FUNCTION dalgo_internal.expire_stalled_connector_runs(integer) FROM PUBLIC;

CREATE FUNCTION dalgo_internal.purge_run_history(days integer) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
	m bigint;
BEGIN
	DELETE FROM dalgo.sync_runs WHERE status IN ('success', 'failed') AND completed_at < now() - make_interval(days => days);
	GET DIAGNOSTICS n = ROW_COUNT;
	DELETE FROM dalgo.transformation_runs WHERE status IN ('success', 'failed') AND completed_at < now() - make_interval(days => days);
	GET DIAGNOSTICS m = ROW_COUNT;
	RETURN n + m;
END
$$;
COMMENT ON FUNCTION dalgo_internal.purge_run_history(integer) IS 'Delete finished runs older than the given number of days (dalgo.run_history_days)';

-- ---------------------------------------------------------------------------
-- Running by hand
-- ---------------------------------------------------------------------------

-- Execute claimed runs here and now, each in a subtransaction (the worker's
-- code path without the worker).
CREATE FUNCTION dalgo_internal.execute_claimed(claimed_runs uuid[], kinds dalgo.run_kind[]) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	msg text;
	n integer := 0;
BEGIN
	FOR i IN 1..coalesce(array_length(claimed_runs, 1), 0) LOOP
		CONTINUE WHEN claimed_runs[i] IS NULL;
		-- HTTP sources are fetched only in the run workers: left pending for them.
		-- (A statement of its own: Citus cannot plan a distributed subquery
		-- in an expression without FROM.)
		IF kinds[i] = 'sync' THEN
			PERFORM FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.organization_id = r.organization_id AND s.id = r.source_id
			WHERE r.id = claimed_runs[i] AND s.source_type IN ('google_sheets', 'api');
			CONTINUE WHEN FOUND;
		END IF;
		PERFORM dalgo_internal.start_scheduled_run(kinds[i], claimed_runs[i]);
		BEGIN
			PERFORM dalgo_internal.execute_scheduled_run(kinds[i], claimed_runs[i]);
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
			PERFORM dalgo_internal.fail_scheduled_run(kinds[i], claimed_runs[i], msg);
		END;
		n := n + 1;
	END LOOP;
	RETURN n;
END
$$;
COMMENT ON FUNCTION dalgo_internal.execute_claimed(uuid[], dalgo.run_kind[]) IS 'Internal: execute claimed runs in this session; syncs of google_sheets and api sources stay pending for the run workers';

CREATE FUNCTION dalgo.run_due_schedules(at timestamptz DEFAULT now()) RETURNS integer
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ids uuid[];
	kinds dalgo.run_kind[];
	started integer;
BEGIN
	IF dalgo.current_user_id() IS NOT NULL OR NOT pg_has_role(session_user, 'dalgo_service', 'MEMBER') THEN
		RAISE EXCEPTION 'run_due_schedules is for dalgo_service and superusers' USING ERRCODE = 'insufficient_privilege';
	END IF;
	SELECT array_agg(c.run_id) FILTER (WHERE c.outcome = 'queued'), array_agg(c.run_kind) FILTER (WHERE c.outcome = 'queued'),
		   count(*) FILTER (WHERE c.outcome <> 'skipped')
	INTO ids, kinds, started FROM dalgo_internal.claim_due_schedules(at, 1000) c;
	PERFORM dalgo_internal.execute_claimed(ids, kinds);
	RETURN started;
END
$$;
COMMENT ON FUNCTION dalgo.run_due_schedules(timestamptz) IS
	'Claim every schedule due at "at" and run it synchronously, through the scheduler''s own claim and run code; returns the runs started (skips not counted). dalgo_service and superusers';

CREATE FUNCTION dalgo.run_schedule_now(schedule_id uuid) RETURNS uuid
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s dalgo.schedules;
	c record;
	stamp timestamptz;
BEGIN
	SELECT * INTO s FROM dalgo.schedules x WHERE x.id = run_schedule_now.schedule_id AND x.deleted_at IS NULL;
	IF NOT FOUND OR NOT dalgo.caller_may(s.organization_id, 'admin') THEN
		RAISE EXCEPTION 'schedule % does not exist or you are not an admin of its organization', schedule_id
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	-- Make it due now and claim it like the scheduler would (a concurrent claim wins the lock).
	-- (By (organization_id, id), and the time computed once: on a Citus
	-- cluster a single-shard statement, which may lock rows.)
	PERFORM FROM dalgo.schedules x WHERE x.organization_id = s.organization_id AND x.id = s.id FOR UPDATE;
	stamp := clock_timestamp();
	UPDATE dalgo.schedules x SET next_run_at = stamp, is_active = true
	WHERE x.organization_id = s.organization_id AND x.id = s.id;
	SELECT * INTO c FROM dalgo_internal.claim_due_schedules(stamp, 1, s.id);
	IF c.outcome = 'queued' THEN
		PERFORM dalgo_internal.execute_claimed(ARRAY[c.run_id], ARRAY[c.run_kind]);
	END IF;
	stamp := CASE WHEN s.is_active THEN dalgo.next_run(s.frequency, s.run_at_time, s.run_at_day, s.timezone, now()) END;
	UPDATE dalgo.schedules x SET is_active = s.is_active, next_run_at = stamp
	WHERE x.organization_id = s.organization_id AND x.id = s.id;
	RETURN c.run_id;
END
$$;
COMMENT ON FUNCTION dalgo.run_schedule_now(uuid) IS 'Run a schedule now, synchronously (admins of its organization); returns the run id';

-- ---------------------------------------------------------------------------
-- Daily maintenance
-- ---------------------------------------------------------------------------
-- Each database's scheduler calls dalgo_internal.maintenance_step() on every
-- tick; once a period (dalgo.maintenance_interval, a day, starting at
-- dalgo.maintenance_hour UTC) it runs dalgo_internal.daily_maintenance()
-- again and again, one short transaction per call, until it is done.  The
-- one row of dalgo_internal.maintenance remembers when it last started and
-- finished, so a restart does not run it again within the period, an
-- interrupted run goes on, and a missed period catches up once.

CREATE TABLE dalgo_internal.maintenance (
	id boolean PRIMARY KEY DEFAULT true CHECK (id),
	last_started_at timestamptz NOT NULL DEFAULT now(),
	last_finished_at timestamptz DEFAULT now(),
	calls integer NOT NULL DEFAULT 0,
	summary jsonb NOT NULL DEFAULT '{}',
	last_summary jsonb
);
COMMENT ON TABLE dalgo_internal.maintenance IS
	'Internal: one row, the state of the daily maintenance (dalgo_internal.maintenance_step); superusers only';
COMMENT ON COLUMN dalgo_internal.maintenance.id IS 'Always true: the table has one row';
COMMENT ON COLUMN dalgo_internal.maintenance.last_started_at IS 'When the last maintenance started (install time before the first)';
COMMENT ON COLUMN dalgo_internal.maintenance.last_finished_at IS 'When it finished; NULL or earlier than last_started_at while it runs';
COMMENT ON COLUMN dalgo_internal.maintenance.calls IS 'Calls of daily_maintenance() in the current or last run';
COMMENT ON COLUMN dalgo_internal.maintenance.summary IS 'What the current or last run did so far (numbers summed over its calls)';
COMMENT ON COLUMN dalgo_internal.maintenance.last_summary IS 'What the last finished run did';
ALTER TABLE dalgo_internal.maintenance ENABLE ROW LEVEL SECURITY;
ALTER TABLE dalgo_internal.maintenance FORCE ROW LEVEL SECURITY;
REVOKE ALL ON dalgo_internal.maintenance FROM PUBLIC;
-- The first maintenance is at the first period start after the install.
INSERT INTO dalgo_internal.maintenance DEFAULT VALUES;

-- The daily maintenance: a list of steps, each doing a bounded amount of
-- work per call and saying whether more is left.  Returns what this call
-- did, with "done": false while a step has more to do; the scheduler calls
-- it again in a new transaction.  A failing step is reported, not raised.
CREATE FUNCTION dalgo_internal.daily_maintenance(batch_size integer DEFAULT 10000) RETURNS jsonb
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	summary jsonb := '{}';
	more boolean := false;
	n bigint;
	m boolean;
BEGIN
	-- Retention: one batch of every enabled policy (dalgo.retention_policies).
	BEGIN
		SELECT coalesce(sum(r.rows_affected), 0), coalesce(bool_or(r.rows_affected >= batch_size), false) INTO n, m
		FROM dalgo.apply_retention(batch_size, 1) r;
		summary := summary || jsonb_build_object('retention_rows', n);
		more := more OR m;
	EXCEPTION WHEN OTHERS THEN
		summary := summary || jsonb_build_object('retention_error', SQLERRM);
	END;
	-- Soft-deleted rows past dalgo.restore_days: one batch (dalgo.purge_deleted).
	BEGIN
		n := dalgo.purge_deleted(1000);
		summary := summary || jsonb_build_object('purged_rows', n);
		more := more OR n > 0;
	EXCEPTION WHEN OTHERS THEN
		summary := summary || jsonb_build_object('purge_error', SQLERRM);
	END;
	RETURN summary || jsonb_build_object('done', NOT more);
END
$$;
COMMENT ON FUNCTION dalgo_internal.daily_maintenance(integer) IS
	'Internal: one pass of the daily maintenance steps (retention, one batch per policy; the purge of soft-deleted rows past dalgo.restore_days, one batch); returns what it did, "done": false while work is left. The scheduler calls it in short transactions until done';

-- The scheduler's call on every tick: runs one pass of daily_maintenance()
-- when a period has begun since the last run started, or a run is unfinished.
CREATE FUNCTION dalgo_internal.maintenance_step(interval_secs integer, start_hour integer,
												OUT more boolean, OUT finished_at timestamptz, OUT summary jsonb)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m dalgo_internal.maintenance;
	epoch double precision := extract(epoch FROM now());
	period_start timestamptz;
	step jsonb;
	k text;
	v jsonb;
BEGIN
	more := false;
	SELECT * INTO m FROM dalgo_internal.maintenance;
	IF NOT FOUND THEN
		INSERT INTO dalgo_internal.maintenance DEFAULT VALUES ON CONFLICT DO NOTHING;
		RETURN;
	END IF;
	finished_at := m.last_finished_at;
	IF interval_secs IS NULL OR interval_secs < 1 THEN
		RETURN;
	END IF;
	-- Periods start at start_hour (UTC) and every interval_secs from there.
	period_start := to_timestamp(floor((epoch - start_hour * 3600) / interval_secs) * interval_secs + start_hour * 3600);
	IF m.last_finished_at >= m.last_started_at AND m.last_started_at >= period_start THEN
		RETURN;						-- done for this period
	END IF;
	SELECT * INTO m FROM dalgo_internal.maintenance FOR UPDATE SKIP LOCKED;
	IF NOT FOUND THEN
		RETURN;						-- someone else is at it
	END IF;
	IF m.last_finished_at >= m.last_started_at THEN
		IF m.last_started_at >= period_start THEN
			RETURN;
		END IF;
		m.last_started_at := now();	-- a new run
		m.calls := 0;
		m.summary := '{}';
	END IF;
	step := dalgo_internal.daily_maintenance();
	-- Sum the numbers over the run's calls; keep the rest as last said.
	FOR k, v IN SELECT * FROM jsonb_each(step - 'done') LOOP
		m.summary := m.summary || jsonb_build_object(k, CASE WHEN jsonb_typeof(v) = 'number' AND jsonb_typeof(m.summary -> k) = 'number'
															 THEN to_jsonb((m.summary ->> k)::numeric + (v #>> '{}')::numeric) ELSE v END);
	END LOOP;
	m.calls := m.calls + 1;
	more := NOT coalesce((step ->> 'done')::boolean, true);
	IF NOT more THEN
		m.last_finished_at := clock_timestamp();
		m.last_summary := m.summary || jsonb_build_object('started_at', m.last_started_at, 'finished_at', m.last_finished_at,
														  'calls', m.calls);
	ELSE
		m.last_finished_at := NULL;
	END IF;
	UPDATE dalgo_internal.maintenance x SET last_started_at = m.last_started_at, last_finished_at = m.last_finished_at,
		calls = m.calls, summary = m.summary, last_summary = m.last_summary;
	finished_at := m.last_finished_at;
	summary := step;
END
$$;
COMMENT ON FUNCTION dalgo_internal.maintenance_step(integer, integer) IS
	'Internal: called by the scheduler on every tick; once per period (interval_secs, starting at start_hour UTC) runs daily_maintenance() pass by pass, recording when it started and finished; more is true while work is left';
REVOKE ALL ON FUNCTION dalgo_internal.daily_maintenance(integer), dalgo_internal.maintenance_step(integer, integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION dalgo.next_run(dalgo.schedule_frequency, time, integer, text, timestamptz),
	dalgo_internal.wake_scheduler(), dalgo_internal.wake_launcher(), dalgo.scheduler_status(), dalgo_internal.set_schedule_next_run(),
	dalgo_internal.claim_due_schedules(timestamptz, integer, uuid), dalgo_internal.start_scheduled_run(dalgo.run_kind, uuid),
	dalgo_internal.claim_pending_run(), dalgo_internal.pending_runs(),
	dalgo_internal.fail_scheduled_run(dalgo.run_kind, uuid, text),
	dalgo_internal.refresh_output(uuid), dalgo_internal.execute_scheduled_run(dalgo.run_kind, uuid),
	dalgo_internal.recover_interrupted_runs(), dalgo_internal.expire_connector_runs(integer), dalgo_internal.purge_run_history(integer),
	dalgo_internal.execute_claimed(uuid[], dalgo.run_kind[]), dalgo.run_due_schedules(timestamptz), dalgo.run_schedule_now(uuid),
	dalgo_internal.verify_scheduled_run(dalgo.run_kind, uuid),
	dalgo_internal.drop_output_views(uuid, text[]), dalgo_internal.restore_output_views(uuid, jsonb),
	dalgo_internal.output_view_reads(uuid, text, text)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dalgo.next_run(dalgo.schedule_frequency, time, integer, text, timestamptz)
	TO dalgo_authenticated, dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.run_schedule_now(uuid) TO dalgo_authenticated, dalgo_service;
GRANT EXECUTE ON FUNCTION dalgo.run_due_schedules(timestamptz), dalgo.scheduler_status() TO dalgo_service;

SELECT dalgo_internal.wake_launcher();
