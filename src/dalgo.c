/*
 * dalgo.c
 *		Library entry point.  _PG_init defines dalgo's settings and reserves
 *		the "dalgo" prefix so that a misspelt dalgo.* setting is an error
 *		rather than a silently ignored placeholder.
 *
 * dalgo must be loaded through shared_preload_libraries: later parts
 * register a background worker and settings that only the postmaster can
 * set up.  Loading it any other way is refused with a hint.
 */
#include "dalgo.h"

#include "miscadmin.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

/* Define dalgo's settings; refuse to load outside shared_preload_libraries. */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("dalgo must be loaded via shared_preload_libraries"),
				 errhint("Add dalgo to shared_preload_libraries in postgresql.conf and restart the server.")));

	dalgo_identity_init();
	dalgo_membership_init();
	dalgo_audit_init();
	dalgo_recipe_init();
	dalgo_warehouse_init();
	dalgo_scheduler_init();
	dalgo_sync_init();
	dalgo_http_init();
	dalgo_quota_init();
	dalgo_accounts_init();
	dalgo_lifecycle_init();

	MarkGUCPrefixReserved("dalgo");
}
