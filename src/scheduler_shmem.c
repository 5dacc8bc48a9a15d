/*
 * scheduler_shmem.c
 *		What the launcher, the schedulers and the run workers share: the
 *		scheduler's settings, the shared memory, and the SQL functions that
 *		read it (dalgo.scheduler_status()) or poke it (dalgo.wake_scheduler(),
 *		dalgo.wake_launcher()).  dalgo_scheduler_init, at the end, defines the
 *		settings, reserves the memory and registers the launcher.
 *
 * Shared memory holds each database's scheduler (pid, latch, last tick,
 * counts, last error) for dalgo.scheduler_status() and for waking it, and
 * the cluster's run-worker slots for the concurrency cap.  One LWLock (tranche
 * "dalgo") guards it all; the cap check and the claim of a run slot happen
 * under it in one step (scheduler.c), and latches are set after it is
 * released.  How the three workers use it: launcher.c, scheduler.c,
 * run_worker.c.
 */
#include "scheduler.h"

#include "access/xact.h"
#include "commands/trigger.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(dalgo_wake_scheduler);
PG_FUNCTION_INFO_V1(dalgo_wake_launcher);
PG_FUNCTION_INFO_V1(dalgo_scheduler_status);

/* Settings. */
int			dalgo_max_concurrent_runs = 4;
int			dalgo_run_timeout = 3600000;
int			dalgo_run_history_days = 30;
static int	dalgo_alert_after_failures = 1;
int			dalgo_connector_timeout = 900;
int			dalgo_maintenance_interval = 86400;
int			dalgo_maintenance_hour = 3;

DalgoShared *dalgo_shared = NULL;
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
	dalgo_shared = ShmemInitStruct("dalgo scheduler", sizeof(DalgoShared), &found);
	if (!found)
	{
		memset(dalgo_shared, 0, sizeof(DalgoShared));
		dalgo_shared->lock = &(GetNamedLWLockTranche("dalgo"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* The slot of a database, optionally claiming a free one; NULL if none. Hold the lock exclusively to create. */
SchedulerSlot *
dalgo_db_slot(Oid dboid, bool create)
{
	SchedulerSlot *free_slot = NULL;

	for (int i = 0; i < DALGO_MAX_DATABASES; i++)
	{
		if (dalgo_shared->dbs[i].dboid == dboid)
			return &dalgo_shared->dbs[i];
		if (free_slot == NULL && dalgo_shared->dbs[i].dboid == InvalidOid)
			free_slot = &dalgo_shared->dbs[i];
	}
	if (create && free_slot != NULL)
	{
		memset(free_slot, 0, sizeof(SchedulerSlot));
		free_slot->dboid = dboid;
		return free_slot;
	}
	return NULL;
}

/* Run workers going in one database, or in the whole cluster (InvalidOid). */
int
dalgo_runs_going(Oid dboid)
{
	int			n = 0;

	LWLockAcquire(dalgo_shared->lock, LW_SHARED);
	for (int i = 0; i < DALGO_MAX_RUNS; i++)
		if (dalgo_shared->runs[i].in_use && (dboid == InvalidOid || dalgo_shared->runs[i].dboid == dboid))
			n++;
	LWLockRelease(dalgo_shared->lock);
	return n;
}

/* Free a run slot if it still belongs to the given claim. */
void
dalgo_release_run_slot(int slot, uint32 generation)
{
	LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
	if (dalgo_shared->runs[slot].generation == generation && dalgo_shared->runs[slot].in_use)
	{
		dalgo_shared->runs[slot].in_use = false;
		dalgo_shared->runs[slot].pid = 0;
	}
	LWLockRelease(dalgo_shared->lock);
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
	SchedulerSlot *slot = dalgo_db_slot(MyDatabaseId, false);
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
		if (dalgo_shared->requests[i] == MyDatabaseId)
			return;
		if (free_i < 0 && dalgo_shared->requests[i] == InvalidOid)
			free_i = i;
	}
	if (free_i >= 0)
		dalgo_shared->requests[free_i] = MyDatabaseId;
	else
		dalgo_shared->requests_overflowed = true;
}

/* At commit, deliver the wake-ups: the woken process then sees the change. */
static void
wake_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && dalgo_shared != NULL &&
		(wake_scheduler_at_commit || wake_launcher_at_commit))
	{
		Latch	   *scheduler_latch = NULL;
		Latch	   *launcher_latch = NULL;
		SchedulerSlot *slot;

		LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
		slot = dalgo_db_slot(MyDatabaseId, false);
		if (slot != NULL)
			scheduler_latch = slot->latch;
		if (wake_launcher_at_commit)
		{
			request_launcher_locked();
			launcher_latch = dalgo_shared->launcher_latch;
		}
		LWLockRelease(dalgo_shared->lock);
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

/*
 * SQL: dalgo.scheduler_status(): one row per database with a scheduler slot.
 * The 0.1.0 declaration has eight columns, the current one nine: a tuple
 * has as many of them as the caller's declaration.
 */
Datum
dalgo_scheduler_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	SchedulerSlot *copy;

	InitMaterializedSRF(fcinfo, 0);
	if (dalgo_shared == NULL)
		return (Datum) 0;
	if (rsinfo->setDesc->natts > 9)
		elog(ERROR, "dalgo.scheduler_status() is declared with %d columns", rsinfo->setDesc->natts);
	copy = palloc(sizeof(dalgo_shared->dbs));
	LWLockAcquire(dalgo_shared->lock, LW_SHARED);
	memcpy(copy, dalgo_shared->dbs, sizeof(dalgo_shared->dbs));
	LWLockRelease(dalgo_shared->lock);
	for (int i = 0; i < DALGO_MAX_DATABASES; i++)
	{
		Datum		values[9];
		bool		nulls[9] = {0};
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
		values[8] = TimestampTzGetDatum(s->maintenance_at);
		nulls[8] = s->maintenance_at == 0;
		/* An older declaration reads its first columns only. */
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
	DefineCustomIntVariable("dalgo.alert_after_failures",
							"A schedule's admins are alerted when it has failed this many times in a row.",
							"One message per failure streak, and one when the schedule runs well again.",
							&dalgo_alert_after_failures, 1, 1, 1000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("dalgo.connector_timeout",
							"A connector sync run nobody claims within this time is marked failed.",
							NULL, &dalgo_connector_timeout, 900, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("dalgo.maintenance_interval",
							"How often each database's scheduler runs the daily maintenance (retention).",
							"Periods start at dalgo.maintenance_hour (UTC). 0 turns the maintenance off.",
							&dalgo_maintenance_interval, 86400, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("dalgo.maintenance_hour",
							"The hour (UTC) at which the daily maintenance's period starts.",
							NULL, &dalgo_maintenance_hour, 3, 0, 23,
							PGC_SIGHUP, 0, NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = scheduler_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = scheduler_shmem_startup;
	dalgo_start_worker("dalgo launcher", "dalgo_launcher_main", InvalidOid, NULL, 0, false, NULL);
}
