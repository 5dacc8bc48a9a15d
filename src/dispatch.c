/*
 * dispatch.c
 *		What a scheduled run needs from C: the safe resolution of a csv
 *		source's file under dalgo.csv_dir.  The rest of a run (claiming,
 *		syncing, refreshing, recording) is SQL in sql/scheduler.sql, executed
 *		by the run workers of scheduler.c or by dalgo.run_due_schedules().
 */
#include "dalgo.h"

#include <limits.h>
#include <stdlib.h>

#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(dalgo_csv_path);

/* SQL: dalgo.csv_path(relative text): the real path of a file under dalgo.csv_dir. */
Datum
dalgo_csv_path(PG_FUNCTION_ARGS)
{
	char	   *rel;
	char		dir[PATH_MAX];
	char		file[PATH_MAX];
	char	   *joined;
	size_t		dirlen;

	if (dalgo_csv_dir == NULL || dalgo_csv_dir[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("csv sources are disabled"),
				 errhint("A superuser sets dalgo.csv_dir to the directory csv files are read from.")));
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a csv source needs config.path")));
	rel = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (rel[0] == '\0' || rel[0] == '/' || strstr(rel, "..") != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("csv path \"%s\" must be relative to dalgo.csv_dir and must not contain \"..\"", rel)));
	if (realpath(dalgo_csv_dir, dir) == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not resolve dalgo.csv_dir: %m")));
	joined = psprintf("%s/%s", dir, rel);
	if (realpath(joined, file) == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open csv file \"%s\": %m", rel)));
	dirlen = strlen(dir);
	if (strncmp(file, dir, dirlen) != 0 || file[dirlen] != '/')
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("csv path \"%s\" leads outside dalgo.csv_dir", rel)));
	PG_RETURN_TEXT_P(cstring_to_text(file));
}
