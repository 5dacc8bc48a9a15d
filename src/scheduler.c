/*
 * scheduler.c
 *		The background workers that run schedules, in every database where
 *		dalgo is installed.
 *
 *	 dalgo launcher   one per cluster (registered by _PG_init): every few
 *					  seconds, or when woken, it lists the databases and starts
 *					  a scheduler for each one that has none.  A scheduler that
 *					  finds no dalgo exits; the database is asked again 30 s
 *					  later, or at once when CREATE EXTENSION wakes the launcher.
 *	 dalgo scheduler  one per database: sleeps on its latch until the earliest
 *					  next_run_at (at most a second; a change to schedules wakes
 *					  it), claims due schedules with FOR UPDATE SKIP LOCKED
 *					  (dalgo.claim_due_schedules), which leaves their runs
 *					  pending, and starts run workers for them, up to
 *					  dalgo.max_concurrent_runs in the cluster.  On
 *					  start it marks runs a crash interrupted as failed.  An
 *					  error in a tick is recorded and the loop goes on.
 *	 dalgo run		  a pool of run workers: each takes the oldest pending run
 *					  (SKIP LOCKED), marks it running (committed, so a crash
 *					  leaves a trace to recover), executes it under
 *					  dalgo.run_timeout, records a failure in a fresh
 *					  transaction, and takes the next until none is left.  A
 *					  failing or hanging run never stops the scheduler or other
 *					  runs.
 *
 * Shared memory holds each database's scheduler (pid, latch, last tick,
 * counts, last error) for dalgo.scheduler_status() and for waking it, and
 * the cluster's running runs for the concurrency cap.
 */
#include "dalgo.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(dalgo_wake_scheduler);
PG_FUNCTION_INFO_V1(dalgo_wake_launcher);
PG_FUNCTION_INFO_V1(dalgo_scheduler_status);

PGDLLEXPORT void dalgo_launcher_main(Datum arg);
PGDLLEXPORT void dalgo_scheduler_main(Datum arg);
PGDLLEXPORT void dalgo_run_main(Datum arg);

#define DALGO_MAX_DATABASES 64
#define DALGO_MAX_RUNS 64
#define LAUNCHER_INTERVAL_MS 5000
#define ABSENT_RECHECK_SECS 30
#define PURGE_INTERVAL_SECS 600

/* Settings. */
static int	dalgo_max_concurrent_runs = 4;
static int	dalgo_run_timeout = 3600000;
static int	dalgo_run_history_days = 30;
static int	dalgo_connector_timeout = 900;
char	   *dalgo_csv_dir = NULL;

typedef struct SchedulerSlot
{
	Oid			dboid;
	pid_t		pid;			/* 0 while none runs */
	Latch	   *latch;
	bool		starting;		/* the launcher started one that has not checked in */
	TimestampTz started_at;
	TimestampTz last_tick;
	TimestampTz absent_since;	/* dalgo was not installed when last checked */
	int			due;
	int			running;
	int64		runs_started;
	char		last_error[256];
} SchedulerSlot;

typedef struct RunSlot
{
	Oid			dboid;
	pid_t		pid;			/* 0 until the worker starts */
	bool		in_use;
} RunSlot;

typedef struct DalgoShared
{
	slock_t		mutex;
	Latch	   *launcher_latch;
	SchedulerSlot dbs[DALGO_MAX_DATABASES];
	RunSlot		runs[DALGO_MAX_RUNS];
} DalgoShared;

static DalgoShared *shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* Reserve shared memory. */
static void
scheduler_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(DalgoShared)));
}

/* Create or attach to the shared state. */
static void
scheduler_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("dalgo scheduler", sizeof(DalgoShared), &found);
	if (!found)
	{
		memset(shared, 0, sizeof(DalgoShared));
		SpinLockInit(&shared->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* The slot of a database, optionally claiming a free one; NULL if none. Hold the mutex. */
static SchedulerSlot *
db_slot(Oid dboid, bool create)
{
	SchedulerSlot *free_slot = NULL;

	for (int i = 0; i < DALGO_MAX_DATABASES; i++)
	{
		if (shared->dbs[i].dboid == dboid)
			return &shared->dbs[i];
		if (free_slot == NULL && shared->dbs[i].dboid == InvalidOid)
			free_slot = &shared->dbs[i];
	}
	if (create && free_slot != NULL)
	{
		memset(free_slot, 0, sizeof(SchedulerSlot));
		free_slot->dboid = dboid;
		return free_slot;
	}
	return NULL;
}

/* Fill and register a background worker. */
static bool
start_worker(const char *type, const char *function, Oid dboid, const char *extra, Size extralen,
			 bool dynamic, BackgroundWorkerHandle **handle)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = dynamic ? BGW_NEVER_RESTART : 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "dalgo");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker.bgw_name, BGW_MAXLEN, "%s", type);
	snprintf(worker.bgw_type, BGW_MAXLEN, "%s", type);
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	if (extra != NULL)
		memcpy(worker.bgw_extra, extra, extralen);
	if (!dynamic)
	{
		RegisterBackgroundWorker(&worker);
		return true;
	}
	worker.bgw_notify_pid = MyProcPid;
	return RegisterDynamicBackgroundWorker(&worker, handle);
}

/* Signals common to the three workers. */
static void
setup_signals(void)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
}

/* Reload settings after SIGHUP. */
static void
reload_if_needed(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/* ---------------------------------------------------------------------------
 * Launcher
 * ---------------------------------------------------------------------------
 */

/* The databases that accept connections. */
static List *
list_databases(void)
{
	List	   *dbs = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	MemoryContext outer = CurrentMemoryContext;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datallowconn && !db->datistemplate)
		{
			MemoryContext old = MemoryContextSwitchTo(outer);

			dbs = lappend_oid(dbs, db->oid);
			MemoryContextSwitchTo(old);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return dbs;
}

/* Launcher main: keep one scheduler per database that has dalgo. */
void
dalgo_launcher_main(Datum arg)
{
	setup_signals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("dalgo launcher");

	SpinLockAcquire(&shared->mutex);
	shared->launcher_latch = MyLatch;
	SpinLockRelease(&shared->mutex);

	for (;;)
	{
		List	   *dbs;
		ListCell   *lc;
		TimestampTz now = GetCurrentTimestamp();

		CHECK_FOR_INTERRUPTS();
		reload_if_needed();
		dbs = list_databases();
		foreach(lc, dbs)
		{
			Oid			dboid = lfirst_oid(lc);
			SchedulerSlot *slot;
			bool		start = false;

			SpinLockAcquire(&shared->mutex);
			slot = db_slot(dboid, true);
			if (slot != NULL && slot->pid == 0 &&
				(!slot->starting || TimestampDifferenceExceeds(slot->started_at, now, 60000)) &&
				(slot->absent_since == 0 ||
				 TimestampDifferenceExceeds(slot->absent_since, now, ABSENT_RECHECK_SECS * 1000)))
			{
				slot->starting = true;
				slot->started_at = now;
				start = true;
			}
			SpinLockRelease(&shared->mutex);
			if (start)
			{
				BackgroundWorkerHandle *handle;

				if (!start_worker("dalgo scheduler", "dalgo_scheduler_main", dboid, NULL, 0, true, &handle))
				{
					SpinLockAcquire(&shared->mutex);
					slot->starting = false;
					SpinLockRelease(&shared->mutex);
					ereport(LOG,
							(errmsg("dalgo launcher could not start a scheduler for database %u", dboid),
							 errhint("Raise max_worker_processes.")));
				}
			}
		}
		list_free(dbs);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 LAUNCHER_INTERVAL_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* ---------------------------------------------------------------------------
 * Per-database scheduler
 * ---------------------------------------------------------------------------
 */

static SchedulerSlot *my_slot = NULL;
static TimestampTz last_purge = 0;
static bool recovered = false;

/* On exit: free the database's slot for the next scheduler. */
static void
scheduler_exit(int code, Datum arg)
{
	SpinLockAcquire(&shared->mutex);
	if (my_slot != NULL && my_slot->pid == MyProcPid)
	{
		my_slot->pid = 0;
		my_slot->latch = NULL;
		my_slot->starting = false;
	}
	SpinLockRelease(&shared->mutex);
}

/* Run workers going in one database, or in the whole cluster (InvalidOid). */
static int
runs_going(Oid dboid)
{
	int			n = 0;

	SpinLockAcquire(&shared->mutex);
	for (int i = 0; i < DALGO_MAX_RUNS; i++)
		if (shared->runs[i].in_use && (dboid == InvalidOid || shared->runs[i].dboid == dboid))
			n++;
	SpinLockRelease(&shared->mutex);
	return n;
}

/* Record an error of a tick for scheduler_status(). */
static void
record_error(const char *msg)
{
	SpinLockAcquire(&shared->mutex);
	strlcpy(my_slot->last_error, msg, sizeof(my_slot->last_error));
	SpinLockRelease(&shared->mutex);
}

/* Start one run worker for this database; false if no run slot or worker is free. */
static bool
start_run_worker(void)
{
	int			slot = -1;
	BackgroundWorkerHandle *handle;

	SpinLockAcquire(&shared->mutex);
	for (int i = 0; i < DALGO_MAX_RUNS && slot < 0; i++)
		if (!shared->runs[i].in_use)
		{
			slot = i;
			shared->runs[i].in_use = true;
			shared->runs[i].dboid = MyDatabaseId;
			shared->runs[i].pid = 0;
		}
	SpinLockRelease(&shared->mutex);
	if (slot < 0)
		return false;
	if (!start_worker("dalgo run", "dalgo_run_main", MyDatabaseId, (char *) &slot, sizeof(int), true, &handle))
	{
		SpinLockAcquire(&shared->mutex);
		shared->runs[slot].in_use = false;
		SpinLockRelease(&shared->mutex);
		return false;
	}
	return true;
}

/*
 * One tick: claim what is due (its runs wait as pending rows), time out
 * unclaimed connector runs, purge old history now and then.  Sets how many
 * runs wait for a worker; returns the milliseconds to sleep.
 */
static long
scheduler_tick(int *pending, TimestampTz *last_purge)
{
	long		sleep_ms = 1000;
	int			rc;
	int			due = 0;

	*pending = 0;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "dalgo scheduler tick");

	if (!OidIsValid(get_extension_oid("dalgo", true)))
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
		SpinLockAcquire(&shared->mutex);
		my_slot->absent_since = GetCurrentTimestamp();
		SpinLockRelease(&shared->mutex);
		proc_exit(0);
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute("SELECT count(*) FROM dalgo.claim_due_schedules(pg_catalog.now(), 1000)", false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "claim_due_schedules failed: %s", SPI_result_code_string(rc));
	rc = SPI_execute("SELECT dalgo.pending_runs()", false, 0);
	if (rc == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;

		*pending = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}

	SPI_execute(psprintf("SELECT dalgo.expire_connector_runs(%d)", dalgo_connector_timeout), false, 0);
	if (TimestampDifferenceExceeds(*last_purge, GetCurrentTimestamp(), PURGE_INTERVAL_SECS * 1000))
	{
		SPI_execute(psprintf("SELECT dalgo.purge_run_history(%d)", dalgo_run_history_days), false, 0);
		*last_purge = GetCurrentTimestamp();
	}

	/* Both halves use the partial index on next_run_at of active, live schedules. */
	rc = SPI_execute("SELECT (SELECT count(*) FROM dalgo.schedules WHERE is_active AND deleted_at IS NULL"
					 " AND next_run_at <= pg_catalog.now()),"
					 " GREATEST(0, LEAST(1000, (EXTRACT(EPOCH FROM (SELECT min(next_run_at) FROM dalgo.schedules"
					 " WHERE is_active AND deleted_at IS NULL) - pg_catalog.clock_timestamp()) * 1000)::int))", true, 1);
	if (rc == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;
		Datum		d;

		due = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		if (!isnull)
			sleep_ms = DatumGetInt32(d);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);

	SpinLockAcquire(&shared->mutex);
	my_slot->last_tick = GetCurrentTimestamp();
	my_slot->due = due;
	SpinLockRelease(&shared->mutex);
	/* Runs still waiting for a worker: look again soon. */
	if (*pending > 0)
		sleep_ms = Min(sleep_ms, 100);
	return sleep_ms;
}

/* Run one SQL statement in its own transaction; errors propagate. */
static void
run_in_transaction(const char *sql)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute(sql, false, 0) < 0)
		elog(ERROR, "could not run \"%s\"", sql);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/* Scheduler main: one database's loop. */
void
dalgo_scheduler_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);

	setup_signals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("dalgo scheduler");

	SpinLockAcquire(&shared->mutex);
	my_slot = db_slot(dboid, true);
	if (my_slot == NULL || (my_slot->pid != 0 && my_slot->pid != MyProcPid))
	{
		SpinLockRelease(&shared->mutex);
		proc_exit(0);			/* another scheduler serves this database */
	}
	my_slot->pid = MyProcPid;
	my_slot->latch = MyLatch;
	my_slot->starting = false;
	SpinLockRelease(&shared->mutex);
	before_shmem_exit(scheduler_exit, (Datum) 0);

	for (;;)
	{
		MemoryContext loopcxt = CurrentMemoryContext;
		int			pending = 0;
		long		sleep_ms = 1000;

		CHECK_FOR_INTERRUPTS();
		reload_if_needed();

		PG_TRY();
		{
			if (!recovered)
			{
				StartTransactionCommand();
				if (!OidIsValid(get_extension_oid("dalgo", true)))
				{
					CommitTransactionCommand();
					SpinLockAcquire(&shared->mutex);
					my_slot->absent_since = GetCurrentTimestamp();
					SpinLockRelease(&shared->mutex);
					proc_exit(0);
				}
				CommitTransactionCommand();
				SpinLockAcquire(&shared->mutex);
				my_slot->absent_since = 0;
				SpinLockRelease(&shared->mutex);
				run_in_transaction("SELECT dalgo.recover_interrupted_runs()");
				recovered = true;
			}
			sleep_ms = scheduler_tick(&pending, &last_purge);
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

		/* Start workers for the waiting runs, within the cluster's cap. */
		{
			int			wanted = pending - runs_going(MyDatabaseId);
			int			started = 0;
			int			running;

			while (wanted-- > 0 && runs_going(InvalidOid) < dalgo_max_concurrent_runs)
			{
				if (!start_run_worker())
				{
					record_error("could not start a run worker (raise max_worker_processes); the runs stay pending");
					break;
				}
				started++;
			}
			running = runs_going(MyDatabaseId);
			SpinLockAcquire(&shared->mutex);
			my_slot->runs_started += started;
			my_slot->running = running;
			SpinLockRelease(&shared->mutex);
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(sleep_ms, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* ---------------------------------------------------------------------------
 * Run worker
 * ---------------------------------------------------------------------------
 */

static int	my_run_slot = -1;

/* On exit: free the run slot and wake the scheduler. */
static void
run_exit(int code, Datum arg)
{
	SchedulerSlot *db;

	SpinLockAcquire(&shared->mutex);
	if (my_run_slot >= 0)
		shared->runs[my_run_slot].in_use = false;
	db = db_slot(MyDatabaseId, false);
	if (db != NULL && db->latch != NULL)
		SetLatch(db->latch);
	SpinLockRelease(&shared->mutex);
}

/* Take the next pending run; false when there is none. */
static bool
take_run(char *kind, char *idtext)
{
	bool		found = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT run_kind, run_id FROM dalgo.take_pending_run() WHERE run_id IS NOT NULL", false, 0) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		*kind = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)[0];
		strlcpy(idtext, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2), UUID_LEN * 2 + 5);
		found = true;
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return found;
}

/* Execute one taken run; a failure is recorded in a fresh transaction. */
static void
execute_run(char kind, const char *idtext)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, psprintf("dalgo run %s", idtext));
		if (dalgo_run_timeout > 0)
			enable_timeout_after(STATEMENT_TIMEOUT, dalgo_run_timeout);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute(psprintf("SELECT dalgo.execute_scheduled_run('%c', '%s')", kind, idtext), false, 0) < 0)
			elog(ERROR, "execute_scheduled_run failed");
		SPI_finish();
		disable_timeout(STATEMENT_TIMEOUT, false);
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		HOLD_INTERRUPTS();
		disable_timeout(STATEMENT_TIMEOUT, false);
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		QueryCancelPending = false;
		RESUME_INTERRUPTS();
		run_in_transaction(psprintf("SELECT dalgo.fail_scheduled_run('%c', '%s', %s)", kind, idtext,
									quote_literal_cstr(edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Run worker main: take pending runs of this database until none is left. */
void
dalgo_run_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	MemoryContext runcxt;

	memcpy(&my_run_slot, MyBgworkerEntry->bgw_extra, sizeof(int));
	before_shmem_exit(run_exit, (Datum) 0);
	SpinLockAcquire(&shared->mutex);
	if (my_run_slot >= 0 && my_run_slot < DALGO_MAX_RUNS)
		shared->runs[my_run_slot].pid = MyProcPid;
	SpinLockRelease(&shared->mutex);

	setup_signals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("dalgo run");
	runcxt = AllocSetContextCreate(TopMemoryContext, "dalgo run", ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		char		kind;
		char		idtext[UUID_LEN * 2 + 5];
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		reload_if_needed();
		old = MemoryContextSwitchTo(runcxt);
		if (!take_run(&kind, idtext))
		{
			MemoryContextSwitchTo(old);
			break;
		}
		execute_run(kind, idtext);
		MemoryContextSwitchTo(old);
		MemoryContextReset(runcxt);
	}
	proc_exit(0);
}

/* ---------------------------------------------------------------------------
 * SQL-callable
 * ---------------------------------------------------------------------------
 */

/* Wake-ups requested by this transaction, delivered when it commits. */
static bool wake_scheduler_at_commit = false;
static bool wake_launcher_at_commit = false;
static bool wake_callback_registered = false;

/* At commit, deliver the wake-ups: the woken process then sees the change. */
static void
wake_xact_callback(XactEvent event, void *arg)
{
	SchedulerSlot *slot;

	if (event == XACT_EVENT_COMMIT && shared != NULL &&
		(wake_scheduler_at_commit || wake_launcher_at_commit))
	{
		SpinLockAcquire(&shared->mutex);
		slot = db_slot(MyDatabaseId, false);
		if (wake_scheduler_at_commit && slot != NULL && slot->latch != NULL)
			SetLatch(slot->latch);
		if (wake_launcher_at_commit)
		{
			if (slot != NULL)
				slot->absent_since = 0;
			if (shared->launcher_latch != NULL)
				SetLatch(shared->launcher_latch);
		}
		SpinLockRelease(&shared->mutex);
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT)
		wake_scheduler_at_commit = wake_launcher_at_commit = false;
}

/* Ask for a wake-up at commit. */
static void
request_wake(bool *flag)
{
	if (!wake_callback_registered)
	{
		RegisterXactCallback(wake_xact_callback, NULL);
		wake_callback_registered = true;
	}
	*flag = true;
}

/* SQL: dalgo.wake_scheduler(): wake this database's scheduler when the transaction commits. */
Datum
dalgo_wake_scheduler(PG_FUNCTION_ARGS)
{
	request_wake(&wake_scheduler_at_commit);
	if (CALLED_AS_TRIGGER(fcinfo))
		return PointerGetDatum(NULL);
	PG_RETURN_VOID();
}

/* SQL: dalgo.wake_launcher(): look for this database once the transaction commits (CREATE EXTENSION). */
Datum
dalgo_wake_launcher(PG_FUNCTION_ARGS)
{
	request_wake(&wake_launcher_at_commit);
	PG_RETURN_VOID();
}

/* SQL: dalgo.scheduler_status(): one row per database the launcher knows. */
Datum
dalgo_scheduler_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	SchedulerSlot copy[DALGO_MAX_DATABASES];

	InitMaterializedSRF(fcinfo, 0);
	if (shared == NULL)
		return (Datum) 0;
	SpinLockAcquire(&shared->mutex);
	memcpy(copy, shared->dbs, sizeof(copy));
	SpinLockRelease(&shared->mutex);
	for (int i = 0; i < DALGO_MAX_DATABASES; i++)
	{
		Datum		values[8];
		bool		nulls[8] = {0};
		SchedulerSlot *s = &copy[i];

		if (s->dboid == InvalidOid)
			continue;
		values[0] = ObjectIdGetDatum(s->dboid);
		values[1] = BoolGetDatum(s->absent_since == 0);
		values[2] = Int32GetDatum(s->pid);
		nulls[2] = s->pid == 0;
		values[3] = TimestampTzGetDatum(s->last_tick);
		nulls[3] = s->last_tick == 0;
		values[4] = Int32GetDatum(s->due);
		values[5] = Int32GetDatum(s->running);
		values[6] = Int64GetDatum(s->runs_started);
		values[7] = CStringGetTextDatum(s->last_error);
		nulls[7] = s->last_error[0] == '\0';
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* Define the settings, reserve shared memory, register the launcher. */
void
dalgo_scheduler_init(void)
{
	DefineCustomIntVariable("dalgo.max_concurrent_runs",
							"Most scheduled runs going at once in the cluster.",
							NULL, &dalgo_max_concurrent_runs, 4, 1, DALGO_MAX_RUNS,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("dalgo.run_timeout",
							"A scheduled run that takes longer is cancelled and recorded as failed.",
							"0 disables it.", &dalgo_run_timeout, 3600000, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("dalgo.run_history_days",
							"Finished sync and transformation runs are purged after this many days.",
							NULL, &dalgo_run_history_days, 30, 1, 36500,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("dalgo.connector_timeout",
							"A connector sync run nobody claims within this time is marked failed.",
							NULL, &dalgo_connector_timeout, 900, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomStringVariable("dalgo.csv_dir",
							   "Directory that csv sources read server-side files from; empty disables csv syncs.",
							   NULL, &dalgo_csv_dir, "", PGC_SUSET, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = scheduler_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = scheduler_shmem_startup;
	start_worker("dalgo launcher", "dalgo_launcher_main", InvalidOid, NULL, 0, false, NULL);
}
