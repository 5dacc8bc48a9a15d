/*
 * restore.c
 *		Restore mode: recognise the session of pg_restore (or of psql
 *		replaying a plain pg_dump script) that loads dalgo's rows back, so
 *		that the triggers which number versions, compute next_run_at,
 *		create warehouses and write the audit trail leave restored rows
 *		exactly as they were dumped.
 *
 * pg_dump and pg_restore run every session with row_security = off.  Under
 * that setting a query on a table with row-level security fails with
 * "query would be affected by row-level security policy" unless the role
 * bypasses it: only superusers and BYPASSRLS roles can write any dalgo
 * table (every dalgo table has RLS enabled and forced) while it is off.
 * So "row_security is off, and the role bypasses RLS" can only be true for
 * a role that may already write any row of any organization.  An app role
 * (dalgo_authenticated, dalgo_service, an app server's login) that turns
 * row_security off gets errors, not restore mode.
 *
 * Both the current user and the outer user (the one SET ROLE chose, which
 * a SECURITY DEFINER function does not change) must bypass RLS: an app role
 * that turns row_security off and then calls a SECURITY DEFINER function
 * owned by a superuser does not enter restore mode inside it.  Background
 * workers (the scheduler and its run workers) never are in restore mode,
 * whatever settings the database or role carries.
 */
#include "dalgo.h"

#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "utils/acl.h"
#include "utils/rls.h"

PG_FUNCTION_INFO_V1(dalgo_restoring_sql);

/* True while the session is restoring a dump (see the file header). */
bool
dalgo_restoring(void)
{
	if (row_security || IsBackgroundWorker)
		return false;
	return has_bypassrls_privilege(GetUserId()) &&
		has_bypassrls_privilege(GetOuterUserId());
}

/* SQL: dalgo.restoring(): restore mode, for the early return of triggers. */
Datum
dalgo_restoring_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(dalgo_restoring());
}
