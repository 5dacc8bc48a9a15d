/*
 * run_worker.c
 *		The dalgo run workers: a pool, started by the schedulers
 *		(scheduler.c) up to dalgo.max_concurrent_runs in the cluster.  Each
 *		takes the oldest pending run of its database (SKIP LOCKED), marks it
 *		running (committed, so a crash leaves a trace to recover), executes
 *		it under dalgo.run_timeout, records a failure in a fresh
 *		transaction, and takes the next until none is left.  A failing or
 *		hanging run never stops the scheduler or other runs.  The run slot
 *		a worker holds (scheduler_shmem.c) is freed when it exits.
 */
#include "scheduler.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

/* Room for a dalgo.run_kind label ("sync", "output") and its terminator. */
#define RUN_KIND_LEN 16

static RunTicket my_ticket = {-1, 0};

PG_FUNCTION_INFO_V1(dalgo_run_progress_sql);

/* True in a dalgo run worker that holds its run slot. */
bool
dalgo_in_run_worker(void)
{
	return my_ticket.slot >= 0 && MyBackendType == B_BG_WORKER;
}

/*
 * Publish the progress of the run this worker executes in its run slot, for
 * dalgo.run_progress().  Cheap (one short exclusive lock); callers throttle.
 */
void
dalgo_run_progress(const pg_uuid_t *run_id, const pg_uuid_t *organization_id,
				   const pg_uuid_t *source_id, int64 rows, int64 bytes, int page)
{
	RunSlot    *slot;

	if (!dalgo_in_run_worker())
		return;
	LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
	slot = &dalgo_shared->runs[my_ticket.slot];
	if (slot->in_use && slot->generation == my_ticket.generation)
	{
		slot->progress_set = true;
		slot->progress_run = *run_id;
		slot->progress_org = *organization_id;
		slot->progress_source = *source_id;
		slot->progress_rows = rows;
		slot->progress_bytes = bytes;
		slot->progress_page = page;
		slot->progress_at = GetCurrentTimestamp();
	}
	LWLockRelease(dalgo_shared->lock);
}

/* Forget the progress of the run this worker executed. */
void
dalgo_run_progress_clear(void)
{
	if (!dalgo_in_run_worker())
		return;
	LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
	if (dalgo_shared->runs[my_ticket.slot].generation == my_ticket.generation)
		dalgo_shared->runs[my_ticket.slot].progress_set = false;
	LWLockRelease(dalgo_shared->lock);
}

/*
 * SQL: dalgo.run_progress(): the progress of the runs executing now in this
 * database, each shown only to callers who may view its organization
 * (members of any role; superusers and dalgo_service without an identity).
 */
Datum
dalgo_run_progress_sql(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	RunSlot		copy[DALGO_MAX_RUNS];
	int			n = 0;

	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(dalgo_shared->lock, LW_SHARED);
	for (int i = 0; i < DALGO_MAX_RUNS; i++)
		if (dalgo_shared->runs[i].in_use && dalgo_shared->runs[i].progress_set &&
			dalgo_shared->runs[i].dboid == MyDatabaseId)
			copy[n++] = dalgo_shared->runs[i];
	LWLockRelease(dalgo_shared->lock);

	for (int i = 0; i < n; i++)
	{
		Datum		values[7];
		bool		nulls[7] = {false};

		if (!dalgo_caller_may(&copy[i].progress_org, DALGO_ROLE_VIEWER))
			continue;
		values[0] = UUIDPGetDatum(&copy[i].progress_run);
		values[1] = UUIDPGetDatum(&copy[i].progress_org);
		values[2] = UUIDPGetDatum(&copy[i].progress_source);
		values[3] = Int64GetDatum(copy[i].progress_rows);
		values[4] = Int64GetDatum(copy[i].progress_bytes);
		values[5] = Int32GetDatum(copy[i].progress_page);
		values[6] = TimestampTzGetDatum(copy[i].progress_at);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

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
	dalgo_release_run_slot(my_ticket.slot, my_ticket.generation);
	LWLockAcquire(dalgo_shared->lock, LW_SHARED);
	db = dalgo_db_slot(MyDatabaseId, false);
	if (db != NULL)
		latch = db->latch;
	LWLockRelease(dalgo_shared->lock);
	if (latch != NULL)
		SetLatch(latch);
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
		strlcpy(kind, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), RUN_KIND_LEN);
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
execute_run(const char *kind, const char *idtext)
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
		if (SPI_execute(psprintf("SELECT dalgo_internal.execute_scheduled_run(%s, '%s')", quote_literal_cstr(kind), idtext), false, 0) < 0)
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
		run_in_transaction(psprintf("SELECT dalgo_internal.fail_scheduled_run(%s, '%s', %s)", quote_literal_cstr(kind), idtext,
									quote_literal_cstr(edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	dalgo_run_progress_clear();
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
	LWLockAcquire(dalgo_shared->lock, LW_EXCLUSIVE);
	mine = dalgo_shared->runs[ticket.slot].in_use && dalgo_shared->runs[ticket.slot].generation == ticket.generation;
	if (mine)
		dalgo_shared->runs[ticket.slot].pid = MyProcPid;
	LWLockRelease(dalgo_shared->lock);
	if (!mine)
		proc_exit(0);			/* the claim was given up: do not run past the cap */
	my_ticket = ticket;
	/* Registered before the connection, so it runs after the backend leaves pg_stat_activity. */
	on_shmem_exit(run_exit, (Datum) 0);

	dalgo_worker_signals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("dalgo run");
	runcxt = AllocSetContextCreate(TopMemoryContext, "dalgo run", ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		char		kind[RUN_KIND_LEN];
		char		idtext[UUID_LEN * 2 + 5];
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		dalgo_reload_if_needed();
		old = MemoryContextSwitchTo(runcxt);
		if (!take_run(kind, idtext))
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
