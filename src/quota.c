/*
 * quota.c
 *		Per-organization quotas: the cluster-wide defaults a superuser sets.
 *
 * The defaults live in superuser-only settings; a superuser overrides them
 * for one organization in organizations.settings->'quotas'.  The checks
 * themselves are SQL (sql/quotas.sql), where the runs they count live.
 * Zero means "no limit".
 */
#include "dalgo.h"

#include "utils/guc.h"

static int	quota_warehouse_size_kb = 0;
static int	quota_concurrent_runs = 0;
static int	quota_runs_per_hour = 0;
static int	quota_run_seconds = 0;

/* Define the quota defaults. */
void
dalgo_quota_init(void)
{
	DefineCustomIntVariable("dalgo.quota_warehouse_size",
							"Default limit on the size of one organization's warehouse (0: no limit).",
							"A run that would start above it is refused, and a run that crosses it fails before its swap.",
							&quota_warehouse_size_kb, 0, 0, INT_MAX,
							PGC_SUSET, GUC_UNIT_KB, NULL, NULL, NULL);
	DefineCustomIntVariable("dalgo.quota_concurrent_runs",
							"Default limit on the runs of one organization that execute at the same time (0: no limit).",
							NULL, &quota_concurrent_runs, 0, 0, 10000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("dalgo.quota_runs_per_hour",
							"Default limit on the runs one organization starts in any hour (0: no limit).",
							NULL, &quota_runs_per_hour, 0, 0, 1000000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("dalgo.quota_run_seconds",
							"Default limit on the run time of one run_transformation call with its upstream (0: no limit).",
							NULL, &quota_run_seconds, 0, 0, INT_MAX / 1000,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
}
