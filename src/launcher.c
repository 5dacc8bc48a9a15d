/*
 * launcher.c
 *		The dalgo launcher, one per cluster, and the plumbing the scheduler's
 *		three kinds of background worker share (starting one, signals).
 *
 * The background workers that run schedules, in every database where dalgo
 * is installed:
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
 * Files: launcher.c (this one), scheduler.c (the per-database loop),
 * run_worker.c (the run workers), scheduler_shmem.c (settings, shared
 * memory, the SQL functions), scheduler.h (their private declarations).
 */
#include "scheduler.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#define LAUNCHER_INTERVAL_MS 5000
#define START_TIMEOUT_MS 60000
#define MAX_PROBES 2			/* databases looked at at once */

/* Fill and register a background worker. */
bool
dalgo_start_worker(const char *type, const char *function, Oid dboid, const char *extra, Size extralen,
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
bool
dalgo_worker_started(BackgroundWorkerHandle *handle)
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
void
dalgo_worker_signals(void)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
}

/* Reload settings after SIGHUP. */
void
dalgo_reload_if_needed(void)
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

	dalgo_worker_signals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("dalgo launcher");
	launcher_cxt = AllocSetContextCreate(TopMemoryContext, "dalgo launcher", ALLOCSET_DEFAULT_SIZES);

	LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
	dalgo_shared->launcher_latch = MyLatch;
	LWLockRelease(dalgo_shared->lock);

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
		dalgo_reload_if_needed();
		old = MemoryContextSwitchTo(launcher_cxt);

		/*
		 * Slots without a scheduler, read before the list of databases: a
		 * slot that existed before that list was read and whose database is
		 * not on it belongs to a database that is gone (or closed).
		 */
		LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
		for (int i = 0; i < DALGO_MAX_DATABASES; i++)
		{
			SchedulerSlot *s = &dalgo_shared->dbs[i];

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
			if (dalgo_shared->requests[i] != InvalidOid)
			{
				without_dalgo = list_delete_oid(without_dalgo, dalgo_shared->requests[i]);
				warned = list_delete_oid(warned, dalgo_shared->requests[i]);
				dalgo_shared->requests[i] = InvalidOid;
			}
		if (dalgo_shared->requests_overflowed)
		{
			list_free(without_dalgo);
			without_dalgo = NIL;
			dalgo_shared->requests_overflowed = false;
		}
		LWLockRelease(dalgo_shared->lock);

		dbs = list_databases();
		MemoryContextSwitchTo(launcher_cxt);
		/* Forget dropped databases. */
		without_dalgo = oids_still_listed(without_dalgo, dbs);
		warned = oids_still_listed(warned, dbs);

		LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
		for (int i = 0; i < DALGO_MAX_DATABASES; i++)
		{
			SchedulerSlot *s = &dalgo_shared->dbs[i];

			if (s->dboid != InvalidOid && s->pid == 0 &&
				list_member_oid(idle_slots, s->dboid) && !list_member_oid(dbs, s->dboid))
				memset(s, 0, sizeof(SchedulerSlot));
		}
		/* Probes going now: a database not known to have dalgo, being looked at. */
		for (int i = 0; i < DALGO_MAX_DATABASES; i++)
			if (dalgo_shared->dbs[i].dboid != InvalidOid && dalgo_shared->dbs[i].probing &&
				(dalgo_shared->dbs[i].starting || dalgo_shared->dbs[i].pid != 0))
				probes++;
		foreach(lc, dbs)
		{
			Oid			dboid = lfirst_oid(lc);
			SchedulerSlot *slot;

			if (list_member_oid(without_dalgo, dboid))
				continue;
			slot = dalgo_db_slot(dboid, false);
			if (slot == NULL)
			{
				/* Never seen: probe it, a few at a time, so probes do not crowd out run workers. */
				if (probes >= MAX_PROBES)
					continue;
				slot = dalgo_db_slot(dboid, true);
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
		LWLockRelease(dalgo_shared->lock);
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
				ok = dalgo_start_worker("dalgo scheduler", "dalgo_scheduler_main", dboid, NULL, 0, true, &handle);
			if (ok)
			{
				ok = dalgo_worker_started(handle);
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
				LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
				for (int i = 0; i < DALGO_MAX_DATABASES; i++)
					if (dalgo_shared->dbs[i].dboid == dboid && dalgo_shared->dbs[i].pid == 0 && !dalgo_shared->dbs[i].absent)
						dalgo_shared->dbs[i].starting = false;
				LWLockRelease(dalgo_shared->lock);
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
