/*
 * next_run.c
 *		Schedule time arithmetic: dalgo.next_run() and the time-zone check
 *		that schedules.timezone relies on.  The scheduler calls the same
 *		dalgo_next_run() as SQL does.
 *
 * Slots are computed on local dates in the schedule's time zone, never by
 * adding 24 hours:
 *	 daily    run_at_time every local day;
 *	 weekly   run_at_time on ISO weekday run_at_day (1 = Monday .. 7 = Sunday);
 *	 monthly  run_at_time on day run_at_day, clamped to the month's last day
 *			  and counted from the 1st of each month, so it never drifts;
 *	 hourly   every absolute hour, when the local clock shows run_at_time's
 *			  minute and second.
 * A local time inside a spring-forward gap runs at the first instant after
 * the gap; one that happens twice in a fall-back overlap runs once, at the
 * second occurrence (PostgreSQL's own reading of such times).
 *
 * A schedule's timezone must be an IANA zone name ("Europe/Berlin",
 * "Asia/Kolkata", "UTC").  PostgreSQL's pg_tzset() also accepts POSIX TZ
 * specifications such as "XYZ-3", which have no DST rules a user could
 * expect; those are refused.
 */
#include "dalgo.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(dalgo_validate_timezone);
PG_FUNCTION_INFO_V1(dalgo_next_run_sql);

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
	(void) dalgo_require_timezone(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_BOOL(true);
}

/* Return the zone for name, or raise 22023 naming it. */
pg_tz *
dalgo_require_timezone(const char *name)
{
	pg_tz	   *tz = dalgo_lookup_timezone(name);

	if (tz == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid time zone \"%s\"", name),
				 errhint("Use an IANA time zone name such as \"Europe/Berlin\" or \"UTC\"; pg_timezone_names lists them.")));
	return tz;
}

/* Break an instant into local date (Julian day) and time of day in tz. */
static void
local_parts(TimestampTz t, pg_tz *tz, int *jd, struct pg_tm *tm)
{
	int			tzoff;
	fsec_t		fsec;

	if (timestamp2tm(t, &tzoff, tm, &fsec, NULL, tz) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	*jd = date2j(tm->tm_year, tm->tm_mon, tm->tm_mday);
}

/*
 * The instant at which the local clock in tz shows date jd, time of day
 * tod, into *result.  A time in a spring-forward gap gives the end of the
 * gap.  False when the instant lies outside the timestamp range.
 */
static bool
local_to_instant(int jd, TimeADT tod, pg_tz *tz, TimestampTz *result)
{
	struct pg_tm tm;
	struct pg_tm check;
	fsec_t		fsec;
	int			tzoff;
	int			checkjd;
	int			checkoff;
	fsec_t		checkfsec;
	Timestamp	instant;

	if (jd < 0)
		return false;
	memset(&tm, 0, sizeof(tm));
	j2date(jd, &tm.tm_year, &tm.tm_mon, &tm.tm_mday);
	time2tm(tod, &tm, &fsec);
	tzoff = DetermineTimeZoneOffset(&tm, tz);
	if (tm2timestamp(&tm, fsec, &tzoff, &instant) != 0 || !IS_VALID_TIMESTAMP(instant))
		return false;

	/* In a gap PostgreSQL reads the time with the offset before it: move to the gap's end. */
	if (timestamp2tm(instant, &checkoff, &check, &checkfsec, NULL, tz) != 0)
		return false;
	checkjd = date2j(check.tm_year, check.tm_mon, check.tm_mday);
	if (checkjd != jd || check.tm_hour != tm.tm_hour || check.tm_min != tm.tm_min ||
		check.tm_sec != tm.tm_sec)
	{
		pg_time_t	from = timestamptz_to_time_t(instant) - 2 * SECS_PER_DAY;
		pg_time_t	boundary;
		pg_time_t	last = 0;
		bool		found = false;
		long int	before_gmtoff,
					after_gmtoff;
		int			before_isdst,
					after_isdst;

		while (pg_next_dst_boundary(&from, &before_gmtoff, &before_isdst, &boundary,
									&after_gmtoff, &after_isdst, tz) == 1 &&
			   boundary <= timestamptz_to_time_t(instant))
		{
			last = boundary;
			found = true;
			from = boundary;
		}
		if (found)
			instant = time_t_to_timestamptz(last);
	}
	*result = instant;
	return true;
}

/* Number of days in a month. */
static int
days_in_month(int year, int month)
{
	return day_tab[isleap(year)][month - 1];
}

/* Floor division for possibly negative month counts (years BC). */
static int
floor_div(int a, int b)
{
	return a / b - ((a % b != 0) && ((a < 0) != (b < 0)));
}

/*
 * The first slot strictly after "after" of a schedule, as described at the
 * top of this file.  day is ignored for hourly and daily.  A slot outside
 * the timestamp range is an error (22008); so is an infinite "after".
 */
TimestampTz
dalgo_next_run(DalgoFrequency freq, TimeADT at, int day, pg_tz *tz, TimestampTz after)
{
	struct pg_tm tm;
	int			jd;
	TimestampTz slot;

	if (at < 0 || at >= USECS_PER_DAY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("run_at_time must be a time of day before 24:00"),
				 errhint("A schedule at the end of a day runs at 00:00 of the next day.")));
	if (TIMESTAMP_NOT_FINITE(after))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range"),
				 errdetail("A schedule has no slot after an infinite timestamp.")));

	local_parts(after, tz, &jd, &tm);
	switch (freq)
	{
		case DALGO_FREQ_HOURLY:
			{
				/* Walk whole minutes until the local clock shows the minute. */
				int64		minute_usec = at % USECS_PER_HOUR;
				TimestampTz start = after - (after % USECS_PER_MINUTE);

				if (after < 0 && after % USECS_PER_MINUTE != 0)
					start -= USECS_PER_MINUTE;
				for (int k = 0; k <= 24 * 60; k++)
				{
					TimestampTz minute = start + k * USECS_PER_MINUTE;
					struct pg_tm ltm;
					int			ltzoff;
					fsec_t		lfsec;

					if (!IS_VALID_TIMESTAMP(minute) ||
						timestamp2tm(minute, &ltzoff, &ltm, &lfsec, NULL, tz) != 0)
						break;
					if (ltm.tm_min != minute_usec / USECS_PER_MINUTE)
						continue;
					slot = minute + minute_usec % USECS_PER_MINUTE;
					if (slot > after && IS_VALID_TIMESTAMP(slot))
						return slot;
				}
				break;
			}
		case DALGO_FREQ_DAILY:
			for (int d = jd - 1; d <= jd + 2; d++)
				if (local_to_instant(d, at, tz, &slot) && slot > after)
					return slot;
			break;
		case DALGO_FREQ_WEEKLY:
			for (int d = jd - 1; d <= jd + 8; d++)
			{
				int			dow = j2day(d);

				if ((dow == 0 ? 7 : dow) != day)
					continue;
				if (local_to_instant(d, at, tz, &slot) && slot > after)
					return slot;
			}
			break;
		case DALGO_FREQ_MONTHLY:
			for (int k = -1; k <= 2; k++)
			{
				int			months = tm.tm_year * 12 + (tm.tm_mon - 1) + k;
				int			y = floor_div(months, 12);
				int			m = months - y * 12 + 1;
				int			d = Min(day, days_in_month(y, m));

				if (local_to_instant(date2j(y, m, d), at, tz, &slot) && slot > after)
					return slot;
			}
			break;
	}

	/*
	 * Every candidate was at or before "after", or outside the range: near
	 * the ends of the timestamp range the next slot does not exist.
	 */
	ereport(ERROR,
			(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
			 errmsg("timestamp out of range"),
			 errdetail("The schedule's next slot after %s lies outside the timestamp range.",
					   timestamptz_to_str(after))));
	return 0;					/* keep compiler quiet */
}

/* Map a dalgo.schedule_frequency label to its enum. */
DalgoFrequency
dalgo_frequency_from_label(const char *label)
{
	if (strcmp(label, "hourly") == 0)
		return DALGO_FREQ_HOURLY;
	if (strcmp(label, "daily") == 0)
		return DALGO_FREQ_DAILY;
	if (strcmp(label, "weekly") == 0)
		return DALGO_FREQ_WEEKLY;
	if (strcmp(label, "monthly") == 0)
		return DALGO_FREQ_MONTHLY;
	elog(ERROR, "unknown schedule frequency \"%s\"", label);
	return DALGO_FREQ_DAILY;	/* keep compiler quiet */
}

/* Check run_at_day against the frequency; raise 22023 if it does not fit. */
void
dalgo_check_run_at_day(DalgoFrequency freq, bool day_isnull, int day)
{
	if (freq == DALGO_FREQ_WEEKLY && (day_isnull || day < 1 || day > 7))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a weekly schedule needs run_at_day between 1 (Monday) and 7 (Sunday)")));
	if (freq == DALGO_FREQ_MONTHLY && (day_isnull || day < 1 || day > 31))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a monthly schedule needs run_at_day between 1 and 31")));
}

/*
 * SQL: dalgo.next_run(frequency, run_at_time, run_at_day, timezone, after):
 * the first slot strictly after "after"; NULL if any argument but run_at_day is NULL.
 */
Datum
dalgo_next_run_sql(PG_FUNCTION_ARGS)
{
	DalgoFrequency freq;
	pg_tz	   *tz;
	int			day = 0;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(3) || PG_ARGISNULL(4))
		PG_RETURN_NULL();
	freq = dalgo_frequency_from_label(DatumGetCString(DirectFunctionCall1(enum_out, PG_GETARG_DATUM(0))));
	if (!PG_ARGISNULL(2))
		day = PG_GETARG_INT32(2);
	dalgo_check_run_at_day(freq, PG_ARGISNULL(2), day);
	tz = dalgo_require_timezone(text_to_cstring(PG_GETARG_TEXT_PP(3)));
	PG_RETURN_TIMESTAMPTZ(dalgo_next_run(freq, PG_GETARG_TIMEADT(1), day, tz, PG_GETARG_TIMESTAMPTZ(4)));
}
