/*
 * deadline.c
 *		dalgo.statement_timeout as one deadline for all the recipe work of a
 *		top-level statement: compiling a recipe, previewing it, and a whole
 *		run_transformation call with its upstream.  The deadline starts at
 *		the first (outermost) call in the statement and is not renewed by
 *		the calls nested in it, however many statements they run.
 *
 * Each C entry point brackets its work with dalgo_deadline_enter() and
 * dalgo_deadline_leave(): while inside, STATEMENT_TIMEOUT is armed at the
 * statement's deadline, or stays at the caller's own if that is earlier;
 * on leaving, the caller's timer is restored, so the statement's other
 * work is not cut short.  Between two calls (plpgsql glue) no timer of
 * ours runs, but the deadline keeps counting.  When the timer fires, the
 * next CHECK_FOR_INTERRUPTS raises "canceling statement due to statement
 * timeout" (57014).
 *
 * A quota may cap the deadline further: run_transformation calls
 * dalgo.cap_statement_deadline() with its organization's run_seconds, and
 * asks dalgo.run_time_quota_hit() when a cancel reaches it, to report the
 * quota rather than a bare timeout.
 */
#include "dalgo.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/timeout.h"

/* The statement the deadline belongs to, and the deadline itself. */
static LocalTransactionId deadline_lxid = InvalidLocalTransactionId;
static TimestampTz deadline_statement = 0;
static TimestampTz deadline_at = 0;		/* 0: no deadline */
static TimestampTz deadline_cap_at = 0;	/* a quota's cap, 0: none */

PG_FUNCTION_INFO_V1(dalgo_cap_statement_deadline);
PG_FUNCTION_INFO_V1(dalgo_run_time_quota_hit);

/* Start the deadline at the outermost call of a new top-level statement. */
static void
deadline_begin_statement(void)
{
	if (deadline_lxid == MyProc->lxid && deadline_statement == GetCurrentStatementStartTimestamp())
		return;
	deadline_lxid = MyProc->lxid;
	deadline_statement = GetCurrentStatementStartTimestamp();
	deadline_at = dalgo_statement_timeout > 0 ?
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), dalgo_statement_timeout) : 0;
	deadline_cap_at = 0;
}

/* Arm STATEMENT_TIMEOUT at the statement's deadline, unless the caller's is earlier. */
void
dalgo_deadline_enter(DalgoDeadline *d)
{
	d->armed = false;
	deadline_begin_statement();
	if (deadline_at == 0)
		return;
	d->had_timeout = get_timeout_active(STATEMENT_TIMEOUT);
	d->caller_at = d->had_timeout ? get_timeout_finish_time(STATEMENT_TIMEOUT) : 0;
	if (d->had_timeout && d->caller_at <= deadline_at)
		return;					/* the caller's deadline is earlier, or ours already runs */
	enable_timeout_at(STATEMENT_TIMEOUT, deadline_at);
	d->armed = true;
}

/* Disarm our timer and re-arm the caller's, if it had one. */
void
dalgo_deadline_leave(DalgoDeadline *d)
{
	if (!d->armed)
		return;
	disable_timeout(STATEMENT_TIMEOUT, false);
	if (d->had_timeout)
		enable_timeout_at(STATEMENT_TIMEOUT, d->caller_at);
	d->armed = false;
}

/* Cap this statement's deadline at seconds from now; the outermost cap wins. */
Datum
dalgo_cap_statement_deadline(PG_FUNCTION_ARGS)
{
	int64		seconds;

	if (PG_ARGISNULL(0))
		PG_RETURN_VOID();
	seconds = PG_GETARG_INT64(0);
	if (seconds <= 0)
		PG_RETURN_VOID();
	deadline_begin_statement();
	if (deadline_cap_at != 0)
		PG_RETURN_VOID();
	/* at most about 68 years: TimestampTzPlusMilliseconds must not overflow */
	seconds = Min(seconds, (int64) PG_INT32_MAX);
	deadline_cap_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), seconds * 1000);
	if (deadline_at == 0 || deadline_cap_at < deadline_at)
		deadline_at = deadline_cap_at;
	PG_RETURN_VOID();
}

/* Whether this statement has passed a quota's cap on its deadline. */
Datum
dalgo_run_time_quota_hit(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(deadline_cap_at != 0 &&
				   deadline_lxid == MyProc->lxid &&
				   deadline_statement == GetCurrentStatementStartTimestamp() &&
				   GetCurrentTimestamp() >= deadline_cap_at);
}
