/*
 * scheduler.h
 *		Private declarations of the scheduler: the shared state that the
 *		launcher (launcher.c), the per-database schedulers (scheduler.c) and
 *		the run workers (run_worker.c) share through scheduler_shmem.c, and
 *		the settings they read.  Only these four files include it.
 */
#ifndef DALGO_SCHEDULER_H
#define DALGO_SCHEDULER_H

#include "dalgo.h"

#include "postmaster/bgworker.h"
#include "storage/latch.h"
#include "storage/lwlock.h"

#define DALGO_MAX_DATABASES 64
#define DALGO_MAX_RUNS 64
#define DALGO_MAX_REQUESTS 16

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
	TimestampTz maintenance_at;	/* the daily maintenance last finished (0: unknown) */
	char		last_error[256];
} SchedulerSlot;

typedef struct RunSlot
{
	Oid			dboid;
	pid_t		pid;			/* 0 until the worker starts */
	bool		in_use;
	uint32		generation;		/* bumped by every claim: tells a slot's users apart */
	/* Progress of the run the worker executes (dalgo.run_progress()). */
	bool		progress_set;
	pg_uuid_t	progress_run;
	pg_uuid_t	progress_org;
	pg_uuid_t	progress_source;
	int64		progress_rows;
	int64		progress_bytes;
	int32		progress_page;
	TimestampTz progress_at;
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

/* scheduler_shmem.c: settings, shared state, wake-ups, scheduler_status */
extern int	dalgo_max_concurrent_runs;
extern int	dalgo_run_timeout;
extern int	dalgo_run_history_days;
extern int	dalgo_connector_timeout;
extern int	dalgo_maintenance_interval;
extern int	dalgo_maintenance_hour;
extern DalgoShared *dalgo_shared;
extern SchedulerSlot *dalgo_db_slot(Oid dboid, bool create);
extern int	dalgo_runs_going(Oid dboid);
extern void dalgo_release_run_slot(int slot, uint32 generation);

/* launcher.c: starting background workers, the launcher */
extern bool dalgo_start_worker(const char *type, const char *function, Oid dboid,
							   const char *extra, Size extralen, bool dynamic,
							   BackgroundWorkerHandle **handle);
extern bool dalgo_worker_started(BackgroundWorkerHandle *handle);
extern void dalgo_worker_signals(void);
extern void dalgo_reload_if_needed(void);

/* The entry points of the three workers, looked up by name (bgw_function_name). */
PGDLLEXPORT void dalgo_launcher_main(Datum arg);
PGDLLEXPORT void dalgo_scheduler_main(Datum arg);
PGDLLEXPORT void dalgo_run_main(Datum arg);

#endif							/* DALGO_SCHEDULER_H */
