/*
 * scheduler.c
 *		The background workers that run schedules, in every database where
 *		dalgo is installed.
 *
 *	 dalgo launcher   one per cluster (registered by _PG_init): every few
 *					  seconds, or when woken, it lists the databases.  Each
 *					  database it has not seen before is probed once, by
 *					  starting a scheduler there; a scheduler that finds no
 *					  dalgo exits and the launcher remembers the database as
 *					  without dalgo (in its own memory, not in a slot) until
 *					  CREATE EXTENSION dalgo asks for it again (wake_launcher).
 *					  Slots of dropped databases and of databases without
 *					  dalgo are freed; a database that finds no free slot is
 *					  logged.
 *	 dalgo scheduler  one per database: checks that the database's dalgo is
 *					  the version this library was built for (otherwise it
 *					  idles until ALTER EXTENSION dalgo UPDATE), sleeps on its
 *					  latch until the earliest next_run_at (at most a second; a
 *					  change to schedules wakes it), fails runs whose worker is
 *					  gone, claims due schedules with FOR UPDATE SKIP LOCKED
 *					  (dalgo.claim_due_schedules), which leaves their runs
 *					  pending, and starts run workers for them, up to
 *					  dalgo.max_concurrent_runs in the cluster.  An error in a
 *					  tick is recorded and the loop goes on.
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
 * the cluster's run-worker slots for the concurrency cap.  One LWLock (tranche
 * "dalgo") guards it all; the cap check and the claim of a run slot happen
 * under it in one step, and latches are set after it is released.
 */
#include "dalgo.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#ifndef DALGO_VERSION
#error "DALGO_VERSION must be defined (the Makefile passes the control file's default_version)"
#endif

PG_FUNCTION_INFO_V1(dalgo_wake_scheduler);
PG_FUNCTION_INFO_V1(dalgo_wake_launcher);
PG_FUNCTION_INFO_V1(dalgo_scheduler_status);

PGDLLEXPORT void dalgo_launcher_main(Datum arg);
PGDLLEXPORT void dalgo_scheduler_main(Datum arg);
PGDLLEXPORT void dalgo_run_main(Datum arg);

#define DALGO_MAX_DATABASES 64
#define DALGO_MAX_RUNS 64
#define DALGO_MAX_REQUESTS 16
#define LAUNCHER_INTERVAL_MS 5000
#define START_TIMEOUT_MS 60000
#define MAX_PROBES 2			/* databases looked at at once */
#define VERSION_RECHECK_MS 5000
#define PURGE_INTERVAL_SECS 600

/* Settings. */
static int	dalgo_max_concurrent_runs = 4;
static int	dalgo_run_timeout = 3600000;
static int	dalgo_run_history_days = 30;
static int	dalgo_connector_timeout = 900;
char	   *dalgo_csv_dir = NULL;

typedef struct SchedulerSlot
{
	Oid			dboid;			/* InvalidOid: the slot is free */
	pid_t		pid;			/* 0 while none runs */
	Latch	   *latch;
	bool		starting;		/* the launcher started one that has not checked in */
	bool		absent;			/* the scheduler found no dalgo and left */
	bool		recheck;		/* CREATE EXTENSION asked since: look again */
	bool		idle;			/* dalgo is installed at another version */
	bool		probing;		/* not yet known to have dalgo */
	TimestampTz started_at;
	TimestampTz last_tick;
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
	uint32		generation;		/* bumped by every claim: tells a slot's users apart */
} RunSlot;

/* What a run worker gets in bgw_extra. */
typedef struct RunTicket
{
	int			slot;
	uint32		generation;
} RunTicket;

typedef struct DalgoShared
{
	LWLock	   *lock;
	Latch	   *launcher_latch;
	Oid			requests[DALGO_MAX_REQUESTS];	/* databases CREATE EXTENSION asked for */
	bool		requests_overflowed;
	SchedulerSlot dbs[DALGO_MAX_DATABASES];
	RunSlot		runs[DALGO_MAX_RUNS];
} DalgoShared;

static DalgoShared *shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* Reserve shared memory and the lock. */
static void
scheduler_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(DalgoShared)));
	RequestNamedLWLockTranche("dalgo", 1);
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
		shared->lock = &(GetNamedLWLockTranche("dalgo"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* The slot of a database, optionally claiming a free one; NULL if none. Hold the lock exclusively to create. */
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

/*
 * Wait until a started worker is running or gone: true if it runs (or ran).
 * Exits with the postmaster.
 */
static bool
worker_started(BackgroundWorkerHandle *handle)
{
	pid_t		pid;

	switch (WaitForBackgroundWorkerStartup(handle, &pid))
	{
		case BGWH_STARTED:
			return true;
		case BGWH_POSTMASTER_DIED:
			proc_exit(1);
			break;
		default:
			break;
	}
	return false;
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

/* The members of an OID list that are also in dbs; frees the old list. */
static List *
oids_still_listed(List *oids, List *dbs)
{
	List	   *result = NIL;
	ListCell   *lc;

	foreach(lc, oids)
		if (list_member_oid(dbs, lfirst_oid(lc)))
			result = lappend_oid(result, lfirst_oid(lc));
	list_free(oids);
	return result;
}

/* Launcher main: keep one scheduler per database that has dalgo. */
void
dalgo_launcher_main(Datum arg)
{
	/* Databases probed and found without dalgo; the launcher's own memory. */
	List	   *without_dalgo = NIL;
	/* Databases already logged for want of a slot. */
	List	   *warned = NIL;
	MemoryContext launcher_cxt;

	setup_signals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("dalgo launcher");
	launcher_cxt = AllocSetContextCreate(TopMemoryContext, "dalgo launcher", ALLOCSET_DEFAULT_SIZES);

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	shared->launcher_latch = MyLatch;
	LWLockRelease(shared->lock);

	for (;;)
	{
		List	   *dbs;
		List	   *idle_slots = NIL;
		List	   *to_start = NIL;
		List	   *no_slot = NIL;
		ListCell   *lc;
		int			probes = 0;
		bool		start_failed = false;
		TimestampTz now = GetCurrentTimestamp();
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		reload_if_needed();
		old = MemoryContextSwitchTo(launcher_cxt);

		/*
		 * Slots without a scheduler, read before the list of databases: a
		 * slot that existed before that list was read and whose database is
		 * not on it belongs to a database that is gone (or closed).
		 */
		LWLockAcquire(shared->lock, LW_EXCLUSIVE);
		for (int i = 0; i < DALGO_MAX_DATABASES; i++)
		{
			SchedulerSlot *s = &shared->dbs[i];

			if (s->dboid == InvalidOid || s->pid != 0)
				continue;
			if (s->absent && !s->starting && !s->recheck)
			{
				/* Probed: no dalgo there.  Remember it here, free the slot. */
				MemoryContextSwitchTo(launcher_cxt);
				without_dalgo = list_append_unique_oid(without_dalgo, s->dboid);
				memset(s, 0, sizeof(SchedulerSlot));
				continue;
			}
			idle_slots = lappend_oid(idle_slots, s->dboid);
		}
		/* Databases CREATE EXTENSION asked for: look at them again. */
		for (int i = 0; i < DALGO_MAX_REQUESTS; i++)
			if (shared->requests[i] != InvalidOid)
			{
				without_dalgo = list_delete_oid(without_dalgo, shared->requests[i]);
				warned = list_delete_oid(warned, shared->requests[i]);
				shared->requests[i] = InvalidOid;
			}
		if (shared->requests_overflowed)
		{
			list_free(without_dalgo);
			without_dalgo = NIL;
			shared->requests_overflowed = false;
		}
		LWLockRelease(shared->lock);

		dbs = list_databases();
		MemoryContextSwitchTo(launcher_cxt);
		/* Forget dropped databases. */
		without_dalgo = oids_still_listed(without_dalgo, dbs);
		warned = oids_still_listed(warned, dbs);

		LWLockAcquire(shared->lock, LW_EXCLUSIVE);
		for (int i = 0; i < DALGO_MAX_DATABASES; i++)
		{
			SchedulerSlot *s = &shared->dbs[i];

			if (s->dboid != InvalidOid && s->pid == 0 &&
				list_member_oid(idle_slots, s->dboid) && !list_member_oid(dbs, s->dboid))
				memset(s, 0, sizeof(SchedulerSlot));
		}
		/* Probes going now: a database not known to have dalgo, being looked at. */
		for (int i = 0; i < DALGO_MAX_DATABASES; i++)
			if (shared->dbs[i].dboid != InvalidOid && shared->dbs[i].probing &&
				(shared->dbs[i].starting || shared->dbs[i].pid != 0))
				probes++;
		foreach(lc, dbs)
		{
			Oid			dboid = lfirst_oid(lc);
			SchedulerSlot *slot;

			if (list_member_oid(without_dalgo, dboid))
				continue;
			slot = db_slot(dboid, false);
			if (slot == NULL)
			{
				/* Never seen: probe it, a few at a time, so probes do not crowd out run workers. */
				if (probes >= MAX_PROBES)
					continue;
				slot = db_slot(dboid, true);
				if (slot == NULL)
				{
					if (!list_member_oid(warned, dboid))
					{
						warned = lappend_oid(warned, dboid);
						no_slot = lappend_oid(no_slot, dboid);
					}
					continue;
				}
				slot->probing = true;
			}
			if (slot->pid == 0 &&
				(!slot->starting || TimestampDifferenceExceeds(slot->started_at, now, START_TIMEOUT_MS)))
			{
				if (slot->probing && !slot->starting)
				{
					if (probes >= MAX_PROBES)
						continue;
					probes++;
				}
				slot->starting = true;
				slot->absent = false;
				slot->recheck = false;
				slot->started_at = now;
				to_start = lappend_oid(to_start, dboid);
			}
		}
		LWLockRelease(shared->lock);
		foreach(lc, no_slot)
			ereport(WARNING,
					(errmsg("dalgo launcher: no free scheduler slot for database %u", lfirst_oid(lc)),
					 errdetail("At most %d databases of a cluster get a dalgo scheduler.", DALGO_MAX_DATABASES),
					 errhint("Drop dalgo from databases that do not use it; the slot is freed within seconds.")));
		list_free(no_slot);

		foreach(lc, to_start)
		{
			Oid			dboid = lfirst_oid(lc);
			BackgroundWorkerHandle *handle;
			bool		ok = !start_failed;

			if (ok)
				ok = start_worker("dalgo scheduler", "dalgo_scheduler_main", dboid, NULL, 0, true, &handle);
			if (ok)
			{
				ok = worker_started(handle);
				pfree(handle);
			}
			else if (!start_failed)
			{
				/* No worker slot: log once, try the rest on the next pass. */
				start_failed = true;
				ereport(LOG,
						(errmsg("dalgo launcher could not start a scheduler for database %u", dboid),
						 errhint("Raise max_worker_processes.")));
			}
			if (!ok)
			{
				LWLockAcquire(shared->lock, LW_EXCLUSIVE);
				for (int i = 0; i < DALGO_MAX_DATABASES; i++)
					if (shared->dbs[i].dboid == dboid && shared->dbs[i].pid == 0 && !shared->dbs[i].absent)
						shared->dbs[i].starting = false;
				LWLockRelease(shared->lock);
			}
		}
		list_free(to_start);
		list_free(idle_slots);
		list_free(dbs);
		MemoryContextSwitchTo(old);

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
static char *my_dbname = NULL;
static bool version_logged = false;	/* the version mismatch is logged */

/* On exit: free the database's slot for the next scheduler. */
static void
scheduler_exit(int code, Datum arg)
{
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	if (my_slot != NULL && my_slot->pid == MyProcPid)
	{
		my_slot->pid = 0;
		my_slot->latch = NULL;
		my_slot->starting = false;
	}
	LWLockRelease(shared->lock);
}

/* Leave: dalgo is not installed in this database. */
static void
scheduler_leave_absent(void)
{
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	my_slot->absent = true;
	LWLockRelease(shared->lock);
	ereport(DEBUG1, (errmsg("dalgo scheduler: dalgo is not installed in database %u", MyDatabaseId)));
	proc_exit(0);
}

/* Run workers going in one database, or in the whole cluster (InvalidOid). */
static int
runs_going(Oid dboid)
{
	int			n = 0;

	LWLockAcquire(shared->lock, LW_SHARED);
	for (int i = 0; i < DALGO_MAX_RUNS; i++)
		if (shared->runs[i].in_use && (dboid == InvalidOid || shared->runs[i].dboid == dboid))
			n++;
	LWLockRelease(shared->lock);
	return n;
}

/* Record an error of a tick for scheduler_status(), cut at a character boundary. */
static void
record_error(const char *msg)
{
	int			len = pg_mbcliplen(msg, strlen(msg), sizeof(my_slot->last_error) - 1);

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	memcpy(my_slot->last_error, msg, len);
	my_slot->last_error[len] = '\0';
	LWLockRelease(shared->lock);
}

typedef enum RunStart
{
	RUN_STARTED,
	RUN_AT_CAP,					/* dalgo.max_concurrent_runs are going */
	RUN_FAILED					/* no worker could be started */
} RunStart;

/* Free a run slot if it still belongs to the given claim. */
static void
release_run_slot(int slot, uint32 generation)
{
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	if (shared->runs[slot].generation == generation && shared->runs[slot].in_use)
	{
		shared->runs[slot].in_use = false;
		shared->runs[slot].pid = 0;
	}
	LWLockRelease(shared->lock);
}

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

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < DALGO_MAX_RUNS; i++)
	{
		if (shared->runs[i].in_use)
			going++;
		else if (ticket.slot < 0)
			ticket.slot = i;
	}
	if (going < dalgo_max_concurrent_runs && ticket.slot >= 0)
	{
		RunSlot    *r = &shared->runs[ticket.slot];

		r->in_use = true;
		r->dboid = MyDatabaseId;
		r->pid = 0;
		r->generation++;
		ticket.generation = r->generation;
	}
	else
		ticket.slot = -1;
	LWLockRelease(shared->lock);
	if (ticket.slot < 0)
		return RUN_AT_CAP;

	if (!start_worker("dalgo run", "dalgo_run_main", MyDatabaseId, (char *) &ticket, sizeof(ticket), true, &handle))
	{
		release_run_slot(ticket.slot, ticket.generation);
		return RUN_FAILED;
	}
	if (!worker_started(handle))
	{
		/* Never forked, or already done: either way the claim is over. */
		pfree(handle);
		release_run_slot(ticket.slot, ticket.generation);
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

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	my_slot->last_tick = GetCurrentTimestamp();
	my_slot->due = due;
	LWLockRelease(shared->lock);
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
	pgstat_report_stat(false);
}

/* Start workers for the waiting runs, within the cluster's cap; update the slot's counts. */
static void
start_run_workers(int pending)
{
	int			wanted = pending - runs_going(MyDatabaseId);
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
	running = runs_going(MyDatabaseId);
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	my_slot->runs_started += started;
	my_slot->running = running;
	LWLockRelease(shared->lock);
}

/* Scheduler main: one database's loop. */
void
dalgo_scheduler_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	MemoryContext loopcxt;

	setup_signals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("dalgo scheduler");
	StartTransactionCommand();
	my_dbname = MemoryContextStrdup(TopMemoryContext, get_database_name(dboid));
	CommitTransactionCommand();

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	my_slot = db_slot(dboid, true);
	if (my_slot == NULL || (my_slot->pid != 0 && my_slot->pid != MyProcPid))
	{
		bool		full = my_slot == NULL;

		LWLockRelease(shared->lock);
		if (full)
			ereport(WARNING,
					(errmsg("dalgo scheduler: no free scheduler slot for database %u", dboid)));
		proc_exit(0);			/* another scheduler serves this database */
	}
	my_slot->pid = MyProcPid;
	my_slot->latch = MyLatch;
	my_slot->starting = false;
	my_slot->absent = false;
	LWLockRelease(shared->lock);
	before_shmem_exit(scheduler_exit, (Datum) 0);
	loopcxt = AllocSetContextCreate(TopMemoryContext, "dalgo scheduler loop", ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		volatile int pending = 0;
		volatile long sleep_ms = 1000;
		volatile bool serving = false;

		CHECK_FOR_INTERRUPTS();
		reload_if_needed();
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
			}
			LWLockAcquire(shared->lock, LW_EXCLUSIVE);
			my_slot->idle = !serving;
			my_slot->probing = false;
			LWLockRelease(shared->lock);
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

/* ---------------------------------------------------------------------------
 * Run worker
 * ---------------------------------------------------------------------------
 */

static RunTicket my_ticket = {-1, 0};

/*
 * On exit (on_shmem_exit, after the backend has left pg_stat_activity):
 * free the run slot and wake the scheduler.
 */
static void
run_exit(int code, Datum arg)
{
	SchedulerSlot *db;
	Latch	   *latch = NULL;

	if (my_ticket.slot < 0)
		return;
	release_run_slot(my_ticket.slot, my_ticket.generation);
	LWLockAcquire(shared->lock, LW_SHARED);
	db = db_slot(MyDatabaseId, false);
	if (db != NULL)
		latch = db->latch;
	LWLockRelease(shared->lock);
	if (latch != NULL)
		SetLatch(latch);
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
	if (SPI_execute("SELECT run_kind, run_id FROM dalgo_internal.claim_pending_run() WHERE run_id IS NOT NULL", false, 0) == SPI_OK_SELECT &&
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
		if (SPI_execute(psprintf("SELECT dalgo_internal.execute_scheduled_run('%c', '%s')", kind, idtext), false, 0) < 0)
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
		run_in_transaction(psprintf("SELECT dalgo_internal.fail_scheduled_run('%c', '%s', %s)", kind, idtext,
									quote_literal_cstr(edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Run worker main: take pending runs of this database until none is left. */
void
dalgo_run_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	MemoryContext runcxt;
	RunTicket	ticket;
	bool		mine;

	memcpy(&ticket, MyBgworkerEntry->bgw_extra, sizeof(ticket));
	if (ticket.slot < 0 || ticket.slot >= DALGO_MAX_RUNS)
		proc_exit(0);
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	mine = shared->runs[ticket.slot].in_use && shared->runs[ticket.slot].generation == ticket.generation;
	if (mine)
		shared->runs[ticket.slot].pid = MyProcPid;
	LWLockRelease(shared->lock);
	if (!mine)
		proc_exit(0);			/* the claim was given up: do not run past the cap */
	my_ticket = ticket;
	/* Registered before the connection, so it runs after the backend leaves pg_stat_activity. */
	on_shmem_exit(run_exit, (Datum) 0);

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

/* Ask the launcher, under the lock, to look at this database again. */
static void
request_launcher_locked(void)
{
	SchedulerSlot *slot = db_slot(MyDatabaseId, false);
	int			free_i = -1;

	if (slot != NULL)
	{
		/* A scheduler that is leaving because it saw no dalgo must be started again. */
		slot->recheck = true;
		slot->absent = false;
		return;
	}
	for (int i = 0; i < DALGO_MAX_REQUESTS; i++)
	{
		if (shared->requests[i] == MyDatabaseId)
			return;
		if (free_i < 0 && shared->requests[i] == InvalidOid)
			free_i = i;
	}
	if (free_i >= 0)
		shared->requests[free_i] = MyDatabaseId;
	else
		shared->requests_overflowed = true;
}

/* At commit, deliver the wake-ups: the woken process then sees the change. */
static void
wake_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && shared != NULL &&
		(wake_scheduler_at_commit || wake_launcher_at_commit))
	{
		Latch	   *scheduler_latch = NULL;
		Latch	   *launcher_latch = NULL;
		SchedulerSlot *slot;

		LWLockAcquire(shared->lock, LW_EXCLUSIVE);
		slot = db_slot(MyDatabaseId, false);
		if (slot != NULL)
			scheduler_latch = slot->latch;
		if (wake_launcher_at_commit)
		{
			request_launcher_locked();
			launcher_latch = shared->launcher_latch;
		}
		LWLockRelease(shared->lock);
		if (scheduler_latch != NULL)
			SetLatch(scheduler_latch);
		if (launcher_latch != NULL)
			SetLatch(launcher_latch);
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

/*
 * SQL: dalgo.wake_launcher(): look for this database once the transaction
 * commits (CREATE EXTENSION, ALTER EXTENSION UPDATE).
 */
Datum
dalgo_wake_launcher(PG_FUNCTION_ARGS)
{
	request_wake(&wake_launcher_at_commit);
	PG_RETURN_VOID();
}

/* SQL: dalgo.scheduler_status(): one row per database with a scheduler slot. */
Datum
dalgo_scheduler_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	SchedulerSlot *copy;

	InitMaterializedSRF(fcinfo, 0);
	if (shared == NULL)
		return (Datum) 0;
	copy = palloc(sizeof(shared->dbs));
	LWLockAcquire(shared->lock, LW_SHARED);
	memcpy(copy, shared->dbs, sizeof(shared->dbs));
	LWLockRelease(shared->lock);
	for (int i = 0; i < DALGO_MAX_DATABASES; i++)
	{
		Datum		values[8];
		bool		nulls[8] = {0};
		SchedulerSlot *s = &copy[i];

		if (s->dboid == InvalidOid)
			continue;
		values[0] = ObjectIdGetDatum(s->dboid);
		values[1] = BoolGetDatum(!s->absent);
		values[2] = Int32GetDatum(s->pid);
		nulls[2] = s->pid == 0;
		values[3] = TimestampTzGetDatum(s->last_tick);
		nulls[3] = s->last_tick == 0;
		values[4] = Int32GetDatum(s->due);
		values[5] = Int32GetDatum(s->running);
		values[6] = Int64GetDatum(s->runs_started);
		if (s->idle)
			values[7] = CStringGetTextDatum("idle: the database's dalgo is not the version of the loaded library (ALTER EXTENSION dalgo UPDATE)");
		else
			values[7] = CStringGetTextDatum(s->last_error);
		nulls[7] = !s->idle && s->last_error[0] == '\0';
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	pfree(copy);
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
							"Also the time a connector has to complete a run it claimed. 0 disables it.",
							&dalgo_run_timeout, 3600000, 0, INT_MAX,
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
