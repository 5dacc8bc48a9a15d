/*
 * sync.c
 *		What a sync needs from C: the dalgo.csv_dir setting and the safe
 *		resolution of a csv source's file.  Each organization reads only its
 *		own directory dalgo.csv_dir/org_<id>/ (the id as 32 hex digits, no
 *		dashes: the name of its warehouse schema, from warehouse_names.c).
 *		The rest of a run (claiming, syncing, refreshing, recording) is SQL,
 *		executed by the run workers (run_worker.c) or by
 *		dalgo.run_due_schedules().
 */
#include "dalgo.h"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/uuid.h"

PG_FUNCTION_INFO_V1(dalgo_csv_path);
PG_FUNCTION_INFO_V1(dalgo_csv_path_org);

char	   *dalgo_csv_dir = NULL;

/* Refuse csv sources when dalgo.csv_dir is not set. */
static void
csv_require_dir(void)
{
	if (dalgo_csv_dir == NULL || dalgo_csv_dir[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("csv sources are disabled"),
				 errhint("A superuser sets dalgo.csv_dir to the directory csv files are read from.")));
}

/* True if a relative path is acceptable as written: not empty, not absolute, no ".." component. */
static bool
csv_path_syntax_ok(const char *rel)
{
	const char *p = rel;

	if (rel[0] == '\0' || rel[0] == '/')
		return false;
	while (*p)
	{
		const char *end = strchr(p, '/');
		size_t		len = end ? (size_t) (end - p) : strlen(p);

		if (len == 2 && p[0] == '.' && p[1] == '.')
			return false;
		if (end == NULL)
			break;
		p = end + 1;
	}
	return true;
}

/*
 * Resolve "rel" under the directory "base" (itself under dalgo.csv_dir) and
 * return the canonical path of a readable regular file inside it.  A file
 * that does not exist, a symlink that leaves the directory, a directory, an
 * unreadable file or a missing organization directory all give one and the
 * same error, which names only what the caller wrote.
 */
static char *
csv_resolve(const char *base, const char *rel)
{
	char		dir[PATH_MAX];
	char		file[PATH_MAX];
	char	   *joined;
	size_t		dirlen;
	struct stat st;
	bool		ok;

	if (!csv_path_syntax_ok(rel))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("csv path \"%s\" must be relative to the organization's csv directory and must not contain \"..\"", rel)));

	joined = psprintf("%s/%s", base, rel);
	ok = realpath(base, dir) != NULL;
	if (ok)
	{
		dirlen = strlen(dir);
		ok = realpath(joined, file) != NULL &&
			strncmp(file, dir, dirlen) == 0 && file[dirlen] == '/' &&
			stat(file, &st) == 0 && S_ISREG(st.st_mode) &&
			access(file, R_OK) == 0;
	}
	pfree(joined);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FILE),
				 errmsg("csv file \"%s\" is not available", rel),
				 errdetail("It does not exist in the organization's csv directory, or it is not a readable file there."),
				 errhint("Files are read from the organization's own directory org_<organization id in hex> under dalgo.csv_dir.")));
	return pstrdup(file);
}

/*
 * SQL (0.1.0): dalgo.csv_path(relative text): the real path of a file under
 * dalgo.csv_dir.  Kept for databases still at 0.1.0; 0.2.0 resolves under
 * the organization's own directory with csv_path(organization_id, path).
 */
Datum
dalgo_csv_path(PG_FUNCTION_ARGS)
{
	char	   *rel;

	csv_require_dir();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a csv source needs config.path")));
	rel = text_to_cstring(PG_GETARG_TEXT_PP(0));
	PG_RETURN_TEXT_P(cstring_to_text(csv_resolve(dalgo_csv_dir, rel)));
}

/*
 * SQL: dalgo.csv_path(organization_id uuid, relative_path text): the real
 * path of a readable file under dalgo.csv_dir/org_<hex id>/.
 */
Datum
dalgo_csv_path_org(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *org;
	char	   *rel;
	char	   *base;

	csv_require_dir();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("organization_id is required")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a csv source needs config.path")));
	org = PG_GETARG_UUID_P(0);
	rel = text_to_cstring(PG_GETARG_TEXT_PP(1));
	base = psprintf("%s/%s", dalgo_csv_dir, dalgo_warehouse_schema_name(org));
	PG_RETURN_TEXT_P(cstring_to_text(csv_resolve(base, rel)));
}

/* Define dalgo.csv_dir. */
void
dalgo_sync_init(void)
{
	DefineCustomStringVariable("dalgo.csv_dir",
							   "Directory that csv sources read server-side files from; empty disables csv syncs.",
							   NULL, &dalgo_csv_dir, "", PGC_SUSET, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
}
