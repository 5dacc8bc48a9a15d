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
 */
#include "dalgo.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/timeout.h"

/* The statement the deadline belongs to, and the deadline itself. */
static LocalTransactionId deadline_lxid = InvalidLocalTransactionId;
static TimestampTz deadline_statement = 0;
static TimestampTz deadline_at = 0;

/* Arm STATEMENT_TIMEOUT at the statement's deadline, unless the caller's is earlier. */
void
dalgo_deadline_enter(DalgoDeadline *d)
{
	d->armed = false;
	if (dalgo_statement_timeout <= 0)
		return;
	if (deadline_lxid != MyProc->lxid || deadline_statement != GetCurrentStatementStartTimestamp())
	{
		/* the outermost call of this statement: the deadline starts now */
		deadline_lxid = MyProc->lxid;
		deadline_statement = GetCurrentStatementStartTimestamp();
		deadline_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), dalgo_statement_timeout);
	}
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
