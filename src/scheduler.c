/*
 * scheduler.c
 *		The dalgo scheduler, one per database where dalgo is installed (the
 *		launcher, launcher.c, starts it): checks that the database's dalgo
 *		is the version this library was built for (otherwise it idles until
 *		ALTER EXTENSION dalgo UPDATE), sleeps on its latch until the earliest
 *		next_run_at (at most a second; a change to schedules wakes it), fails
 *		runs whose worker is gone, claims due schedules with FOR UPDATE SKIP
 *		LOCKED (dalgo.claim_due_schedules), which leaves their runs pending,
 *		and starts run workers (run_worker.c) for them, up to
 *		dalgo.max_concurrent_runs in the cluster.  Once a day
 *		(dalgo.maintenance_interval, from dalgo.maintenance_hour UTC) it
 *		runs the daily maintenance (dalgo_internal.daily_maintenance, which
 *		applies the retention policies), one short transaction per pass.
 *		An error in a tick is recorded for dalgo.scheduler_status() and the
 *		loop goes on.
 */
#include "scheduler.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#ifndef DALGO_VERSION
#error "DALGO_VERSION must be defined (the Makefile passes the control file's default_version)"
#endif

#define VERSION_RECHECK_MS 5000
#define PURGE_INTERVAL_SECS 600

static SchedulerSlot *my_slot = NULL;
static TimestampTz last_purge = 0;
static char *my_dbname = NULL;
static bool version_logged = false;	/* the version mismatch is logged */

/* Set by each tick: this node is a Citus worker, where schedules and maintenance do not run. */
static bool on_citus_worker = false;

/* Set by each tick: a Citus coordinator, whose workers leave failure alerts in an outbox. */
static bool alerts_in_outbox = false;

/* On exit: free the database's slot for the next scheduler. */
static void
scheduler_exit(int code, Datum arg)
{
	LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
	if (my_slot != NULL && my_slot->pid == MyProcPid)
	{
		my_slot->pid = 0;
		my_slot->latch = NULL;
		my_slot->starting = false;
	}
	LWLockRelease(dalgo_shared->lock);
}

/* Leave: dalgo is not installed in this database. */
static void
scheduler_leave_absent(void)
{
	LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
	my_slot->absent = true;
	LWLockRelease(dalgo_shared->lock);
	ereport(DEBUG1, (errmsg("dalgo scheduler: dalgo is not installed in database %u", MyDatabaseId)));
	proc_exit(0);
}

/* Record an error of a tick for scheduler_status(), cut at a character boundary. */
static void
record_error(const char *msg)
{
	int			len = pg_mbcliplen(msg, strlen(msg), sizeof(my_slot->last_error) - 1);

	LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
	memcpy(my_slot->last_error, msg, len);
	my_slot->last_error[len] = '\0';
	LWLockRelease(dalgo_shared->lock);
}

typedef enum RunStart
{
	RUN_STARTED,
	RUN_AT_CAP,					/* dalgo.max_concurrent_runs are going */
	RUN_FAILED					/* no worker could be started */
} RunStart;

/*
 * Start one run worker for this database.  The cap check and the claim of
 * the slot are one step under the lock, so schedulers of different
 * databases together never exceed dalgo.max_concurrent_runs; a worker that
 * never starts gives its slot back.
 */
static RunStart
start_run_worker(void)
{
	RunTicket	ticket = {-1, 0};
	BackgroundWorkerHandle *handle;
	int			going = 0;

	LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < DALGO_MAX_RUNS; i++)
	{
		if (dalgo_shared->runs[i].in_use)
			going++;
		else if (ticket.slot < 0)
			ticket.slot = i;
	}
	if (going < dalgo_max_concurrent_runs && ticket.slot >= 0)
	{
		RunSlot    *r = &dalgo_shared->runs[ticket.slot];

		r->in_use = true;
		r->dboid = MyDatabaseId;
		r->pid = 0;
		r->progress_set = false;
		r->generation++;
		ticket.generation = r->generation;
	}
	else
		ticket.slot = -1;
	LWLockRelease(dalgo_shared->lock);
	if (ticket.slot < 0)
		return RUN_AT_CAP;

	if (!dalgo_start_worker("dalgo run", "dalgo_run_main", MyDatabaseId, (char *) &ticket, sizeof(ticket), true, &handle))
	{
		dalgo_release_run_slot(ticket.slot, ticket.generation);
		return RUN_FAILED;
	}
	if (!dalgo_worker_started(handle))
	{
		/* Never forked, or already done: either way the claim is over. */
		pfree(handle);
		dalgo_release_run_slot(ticket.slot, ticket.generation);
		return RUN_FAILED;
	}
	pfree(handle);
	return RUN_STARTED;
}

/* Run a query through SPI; errors propagate. */
static void
spi_run(const char *sql, int expected)
{
	int			rc = SPI_execute(sql, false, 0);

	if (rc != expected)
		elog(ERROR, "\"%s\" failed: %s", sql, SPI_result_code_string(rc));
}

/*
 * Which dalgo this database has: NULL if none, else its version (palloc'd
 * in the caller's context).  Runs in its own transaction.
 */
static char *
installed_version(void)
{
	char	   *version = NULL;
	MemoryContext outer = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	spi_run("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'dalgo'", SPI_OK_SELECT);
	if (SPI_processed == 1)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (v != NULL)
			version = MemoryContextStrdup(outer, v);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return version;
}

/*
 * One tick: fail runs whose worker is gone, claim what is due (its runs wait
 * as pending rows), time out connector runs, purge old history now and
 * then.  Sets how many runs wait for a worker; returns the milliseconds to
 * sleep.
 */
static long
scheduler_tick(int *pending, TimestampTz *last_purge)
{
	long		sleep_ms = 1000;
	int			rc;
	int			due = 0;
	bool		isnull;

	*pending = 0;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "dalgo scheduler tick");

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/*
	 * On a Citus worker the schedules are shards of the coordinator's
	 * tables: the coordinator's scheduler runs them, once.
	 */
	on_citus_worker = dalgo_citus_is_worker();
	if (on_citus_worker)
	{
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_activity(STATE_IDLE, NULL);
		return 10000;
	}
	spi_run("SELECT dalgo_internal.citus_distributed('dalgo_internal.alert_outbox')", SPI_OK_SELECT);
	if (SPI_processed == 1)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		alerts_in_outbox = !isnull && DatumGetBool(d);
	}
	spi_run("SELECT dalgo_internal.recover_interrupted_runs()", SPI_OK_SELECT);
	spi_run("SELECT count(*) FROM dalgo_internal.claim_due_schedules(pg_catalog.now(), 1000)", SPI_OK_SELECT);
	spi_run("SELECT dalgo_internal.pending_runs()", SPI_OK_SELECT);
	if (SPI_processed == 1)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			*pending = DatumGetInt32(d);
	}

	spi_run(psprintf("SELECT dalgo_internal.expire_connector_runs(%d)", dalgo_connector_timeout), SPI_OK_SELECT);
	spi_run(psprintf("SELECT dalgo_internal.expire_stalled_connector_runs(%d)",
					 dalgo_run_timeout > 0 ? (int) Max(1, dalgo_run_timeout / 1000) : 0), SPI_OK_SELECT);
	if (TimestampDifferenceExceeds(*last_purge, GetCurrentTimestamp(), PURGE_INTERVAL_SECS * 1000))
	{
		spi_run(psprintf("SELECT dalgo_internal.purge_run_history(%d)", dalgo_run_history_days), SPI_OK_SELECT);
		*last_purge = GetCurrentTimestamp();
	}

	/* Both halves use the partial index on next_run_at of active, live schedules. */
	rc = SPI_execute("SELECT (SELECT count(*) FROM dalgo.schedules WHERE is_active AND deleted_at IS NULL"
					 " AND next_run_at <= pg_catalog.now()),"
					 " (SELECT min(next_run_at) FROM dalgo.schedules WHERE is_active AND deleted_at IS NULL)",
					 true, 1);
	if (rc == SPI_OK_SELECT && SPI_processed == 1)
	{
		Datum		d;

		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			due = (int) Min(DatumGetInt64(d), INT_MAX);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		if (!isnull)
		{
			TimestampTz next = DatumGetTimestampTz(d);
			TimestampTz now = GetCurrentTimestamp();

			/*
			 * Clamp in TimestampTz before narrowing: a schedule months
			 * overdue, or one at infinity, must not overflow anything.
			 */
			if (next <= now)
				sleep_ms = 0;
			else if (next - now >= (TimestampTz) 1000 * 1000)
				sleep_ms = 1000;
			else
				sleep_ms = (long) ((next - now + 999) / 1000);
		}
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);

	LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
	my_slot->last_tick = GetCurrentTimestamp();
	my_slot->due = due;
	LWLockRelease(dalgo_shared->lock);
	/* Runs still waiting for a worker: look again soon. */
	if (*pending > 0)
		sleep_ms = Min(sleep_ms, 100);
	return sleep_ms;
}

/*
 * One pass of the daily maintenance, in a transaction of its own:
 * dalgo_internal.maintenance_step() runs a pass of daily_maintenance() when
 * a period has begun since the last run (or a run is unfinished), and
 * records it.  Returns true while the run has work left: the caller comes
 * back at once, so that each pass is a short transaction and schedules
 * still run between passes.
 */
static bool
maintenance_pass(void)
{
	bool		more = false;
	bool		isnull;
	TimestampTz finished = 0;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "dalgo daily maintenance");
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	spi_run(psprintf("SELECT more, finished_at FROM dalgo_internal.maintenance_step(%d, %d)",
					 dalgo_maintenance_interval, dalgo_maintenance_hour), SPI_OK_SELECT);
	if (SPI_processed == 1)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		more = !isnull && DatumGetBool(d);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		if (!isnull)
			finished = DatumGetTimestampTz(d);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);

	LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
	if (finished != 0)
		my_slot->maintenance_at = finished;
	LWLockRelease(dalgo_shared->lock);
	return more;
}

/*
 * Citus: queue the failure alerts that the workers left in the outbox, in a
 * transaction of its own (deliver_run_alerts() reads the outbox over one
 * connection per node, which the tick's own queries need not be slowed to).
 */
static void
alert_pass(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "dalgo failure alerts");
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	spi_run("SELECT dalgo_internal.deliver_run_alerts()", SPI_OK_SELECT);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Start workers for the waiting runs, within the cluster's cap; update the slot's counts. */
static void
start_run_workers(int pending)
{
	int			wanted = pending - dalgo_runs_going(MyDatabaseId);
	int			started = 0;
	int			running;

	while (wanted-- > 0)
	{
		RunStart	r = start_run_worker();

		if (r == RUN_AT_CAP)
			break;
		if (r == RUN_FAILED)
		{
			record_error("could not start a run worker (raise max_worker_processes); the runs stay pending");
			break;
		}
		started++;
	}
	running = dalgo_runs_going(MyDatabaseId);
	LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
	my_slot->runs_started += started;
	my_slot->running = running;
	LWLockRelease(dalgo_shared->lock);
}

/* Scheduler main: one database's loop. */
void
dalgo_scheduler_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	MemoryContext loopcxt;

	dalgo_worker_signals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("dalgo scheduler");
	StartTransactionCommand();
	my_dbname = MemoryContextStrdup(TopMemoryContext, get_database_name(dboid));
	CommitTransactionCommand();

	LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
	my_slot = dalgo_db_slot(dboid, true);
	if (my_slot == NULL || (my_slot->pid != 0 && my_slot->pid != MyProcPid))
	{
		bool		full = my_slot == NULL;

		LWLockRelease(dalgo_shared->lock);
		if (full)
			ereport(WARNING,
					(errmsg("dalgo scheduler: no free scheduler slot for database %u", dboid)));
		proc_exit(0);			/* another scheduler serves this database */
	}
	my_slot->pid = MyProcPid;
	my_slot->latch = MyLatch;
	my_slot->starting = false;
	my_slot->absent = false;
	LWLockRelease(dalgo_shared->lock);
	before_shmem_exit(scheduler_exit, (Datum) 0);
	loopcxt = AllocSetContextCreate(TopMemoryContext, "dalgo scheduler loop", ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		volatile int pending = 0;
		volatile long sleep_ms = 1000;
		volatile bool serving = false;

		CHECK_FOR_INTERRUPTS();
		dalgo_reload_if_needed();
		/* What a pass allocates outside its transactions lives until the pass ends. */
		MemoryContextSwitchTo(loopcxt);

		PG_TRY();
		{
			char	   *version = installed_version();

			if (version == NULL)
				scheduler_leave_absent();
			if (strcmp(version, DALGO_VERSION) != 0)
			{
				/* The library runs ahead of (or behind) the database's objects: wait for the update. */
				if (!version_logged)
					ereport(LOG,
							(errmsg("dalgo scheduler: database \"%s\" has dalgo %s, this library is %s; no schedules run until the versions match",
									my_dbname, version, DALGO_VERSION),
							 errhint("Run ALTER EXTENSION dalgo UPDATE in that database.")));
				version_logged = true;
				sleep_ms = VERSION_RECHECK_MS;
			}
			else
			{
				int			n = 0;

				if (version_logged)
					ereport(LOG,
							(errmsg("dalgo scheduler: database \"%s\" is now at dalgo %s; schedules run again",
									my_dbname, version)));
				version_logged = false;
				serving = true;
				sleep_ms = scheduler_tick(&n, &last_purge);
				pending = n;
				if (alerts_in_outbox && !on_citus_worker)
					alert_pass();
				/* Work left in the daily maintenance: come back at once. */
				if (dalgo_maintenance_interval > 0 && !on_citus_worker && maintenance_pass())
					sleep_ms = 0;
			}
			LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
			my_slot->idle = !serving;
			my_slot->probing = false;
			LWLockRelease(dalgo_shared->lock);
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			HOLD_INTERRUPTS();
			MemoryContextSwitchTo(loopcxt);
			edata = CopyErrorData();
			FlushErrorState();
			AbortCurrentTransaction();
			RESUME_INTERRUPTS();
			record_error(edata->message);
			ereport(LOG, (errmsg("dalgo scheduler: %s", edata->message)));
			FreeErrorData(edata);
			sleep_ms = 1000;
		}
		PG_END_TRY();

		MemoryContextSwitchTo(loopcxt);
		if (serving)
			start_run_workers(pending);

		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(loopcxt);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(sleep_ms, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
