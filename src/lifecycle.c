/*
 * lifecycle.c
 *		The restore window of soft-deleted rows: dalgo.restore_days.
 *
 * A soft-deleted organization, source, transformation or output can be
 * brought back with dalgo.restore() for this many days; dalgo.purge_deleted()
 * hard-deletes it afterwards.  The setting is superuser-only, so that the
 * window is the operator's promise (per cluster, or per database with ALTER
 * DATABASE ... SET) and no app can stretch or shorten it.  The functions
 * themselves are SQL (sql/lifecycle.sql).
 */
#include "dalgo.h"

#include "utils/guc.h"

static int	restore_days = 30;

/* Define dalgo.restore_days. */
void
dalgo_lifecycle_init(void)
{
	DefineCustomIntVariable("dalgo.restore_days",
							"Days during which a soft-deleted organization, source, transformation or output can be restored.",
							"dalgo.purge_deleted() hard-deletes them once this many days have passed.",
							&restore_days, 30, 0, 36500,
							PGC_SUSET, 0, NULL, NULL, NULL);
}
