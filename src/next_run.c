/*
 * next_run.c
 *		Schedule time arithmetic.  For now this holds the time-zone check that
 *		schedules.timezone relies on; the next-run computation lives here too
 *		so the worker and SQL share one implementation.
 *
 * A schedule's timezone must be an IANA zone name ("Europe/Berlin",
 * "Asia/Kolkata", "UTC").  PostgreSQL's pg_tzset() also accepts POSIX TZ
 * specifications such as "XYZ-3", which have no DST rules a user could
 * expect; those are refused.
 */
#include "dalgo.h"

#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(dalgo_validate_timezone);

/* All-uppercase zone files whose names also parse as POSIX specifications. */
static const char *const uppercase_zone_files[] = {
	"CST6CDT", "EST5EDT", "MST7MDT", "PST8PDT", "GMT0", "GMT+0", "GMT-0", NULL
};

/* Return the zone for an IANA name, or NULL when the name is not one. */
pg_tz *
dalgo_lookup_timezone(const char *name)
{
	pg_tz	   *tz;
	const char *canonical;
	const char *p;
	bool		has_digit = false;

	if (name == NULL || name[0] == '\0' || strlen(name) > TZ_STRLEN_MAX)
		return NULL;

	tz = pg_tzset(name);
	if (tz == NULL)
		return NULL;

	/*
	 * pg_tzset names a zone loaded from a file by the file's own spelling,
	 * and a POSIX specification by its upper-cased input.  A canonical name
	 * that differs from the upper-cased input therefore came from a file.
	 */
	canonical = pg_get_timezone_name(tz);
	for (p = name; *p; p++)
	{
		if (pg_toupper((unsigned char) *p) != (unsigned char) canonical[p - name])
			return tz;
		if (*p >= '0' && *p <= '9')
			has_digit = true;
	}
	if (canonical[p - name] != '\0')
		return tz;

	/* Every POSIX specification carries an offset, so it contains a digit. */
	if (!has_digit)
		return tz;
	for (int i = 0; uppercase_zone_files[i] != NULL; i++)
		if (strcmp(canonical, uppercase_zone_files[i]) == 0)
			return tz;
	return NULL;
}

/* SQL: dalgo.validate_timezone(text): true, or an error naming the bad value. */
Datum
dalgo_validate_timezone(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	if (dalgo_lookup_timezone(name) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid time zone \"%s\"", name),
				 errhint("Use an IANA time zone name such as \"Europe/Berlin\" or \"UTC\"; pg_timezone_names lists them.")));
	PG_RETURN_BOOL(true);
}
