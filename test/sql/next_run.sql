-- next_run: schedule slots on local dates, across DST changes in both
-- directions, month ends, year ends, half-hour zones and hourly schedules.
\set ECHO none
\i test/fixtures/tap_setup.sql
\pset tuples_only false
\pset format aligned
SET timezone = 'UTC';
CREATE TEMP TABLE cases (label text, frequency dalgo.schedule_frequency, at time, day int, tz text, after timestamptz);
INSERT INTO cases VALUES
	('daily 02:30 New York, spring-forward gap', 'daily', '02:30', NULL, 'America/New_York', '2026-03-07 12:00 America/New_York'),
	('daily 02:30 New York, the day after', 'daily', '02:30', NULL, 'America/New_York', '2026-03-08 12:00 America/New_York'),
	('daily 01:30 New York, fall-back overlap', 'daily', '01:30', NULL, 'America/New_York', '2026-10-31 12:00 America/New_York'),
	('daily 01:30 New York, just after the first 01:30', 'daily', '01:30', NULL, 'America/New_York', '2026-11-01 05:31 UTC'),
	('daily 09:00 New York across spring-forward', 'daily', '09:00', NULL, 'America/New_York', '2026-03-07 10:00 America/New_York'),
	('daily 02:30 Berlin, spring-forward gap', 'daily', '02:30', NULL, 'Europe/Berlin', '2026-03-28 12:00 Europe/Berlin'),
	('daily 02:30 Berlin, fall-back overlap', 'daily', '02:30', NULL, 'Europe/Berlin', '2026-10-24 12:00 Europe/Berlin'),
	('daily 06:30 Kolkata (UTC+05:30)', 'daily', '06:30', NULL, 'Asia/Kolkata', '2026-06-01 00:00 UTC'),
	('daily at exactly the slot is not strictly after', 'daily', '06:30', NULL, 'Asia/Kolkata', '2026-06-01 01:00 UTC'),
	('monthly 31 in February 2024 (leap)', 'monthly', '08:00', 31, 'UTC', '2024-02-01 00:00 UTC'),
	('monthly 31 in February 2026', 'monthly', '08:00', 31, 'UTC', '2026-02-01 00:00 UTC'),
	('monthly 31 after February 2026 (no drift)', 'monthly', '08:00', 31, 'UTC', '2026-02-28 09:00 UTC'),
	('monthly 15 Kolkata', 'monthly', '00:00', 15, 'Asia/Kolkata', '2026-06-14 19:00 UTC'),
	('weekly Monday across the year end', 'weekly', '07:00', 1, 'Europe/Berlin', '2026-12-30 12:00 Europe/Berlin'),
	('weekly Sunday (7)', 'weekly', '23:00', 7, 'America/New_York', '2026-12-27 23:30 America/New_York'),
	('hourly :15 Kolkata', 'hourly', '00:15', NULL, 'Asia/Kolkata', '2026-06-01 00:00 UTC'),
	('hourly :30 New York into spring-forward', 'hourly', '00:30', NULL, 'America/New_York', '2026-03-08 01:45 America/New_York'),
	('hourly :30 New York into fall-back (first 01:30)', 'hourly', '00:30', NULL, 'America/New_York', '2026-11-01 05:00 UTC'),
	('hourly :30 New York, fall-back (second 01:30)', 'hourly', '00:30', NULL, 'America/New_York', '2026-11-01 05:30 UTC');
SELECT label, dalgo.next_run(frequency, at, day, tz, after) AS next_utc,
	   to_char(dalgo.next_run(frequency, at, day, tz, after) AT TIME ZONE tz, 'YYYY-MM-DD HH24:MI Dy') AS next_local
FROM cases ORDER BY label;

\echo '-- a sequence of slots: daily 02:30 New York over the spring-forward weekend'
WITH RECURSIVE s(n, t) AS (
	SELECT 1, dalgo.next_run('daily', '02:30', NULL, 'America/New_York', '2026-03-06 12:00 UTC')
	UNION ALL SELECT n + 1, dalgo.next_run('daily', '02:30', NULL, 'America/New_York', t) FROM s WHERE n < 4)
SELECT n, t AS utc, to_char(t AT TIME ZONE 'America/New_York', 'YYYY-MM-DD HH24:MI') AS local FROM s;
\echo '-- hourly New York across fall-back: every absolute hour, both 01:30s'
WITH RECURSIVE s(n, t) AS (
	SELECT 1, dalgo.next_run('hourly', '00:30', NULL, 'America/New_York', '2026-11-01 03:00 UTC')
	UNION ALL SELECT n + 1, dalgo.next_run('hourly', '00:30', NULL, 'America/New_York', t) FROM s WHERE n < 5)
SELECT n, t AS utc, to_char(t AT TIME ZONE 'America/New_York', 'HH24:MI TZ') AS local FROM s;
\echo '-- errors'
\set ON_ERROR_STOP false
SELECT dalgo.next_run('daily', '01:00', NULL, 'Mars/Olympus', now());
SELECT dalgo.next_run('weekly', '01:00', 8, 'UTC', now());
SELECT dalgo.next_run('monthly', '01:00', NULL, 'UTC', now());
SELECT dalgo.next_run('daily', '01:00', NULL, NULL, now()) IS NULL AS null_zone_gives_null;
\echo '-- next_run_at follows the schedule'
BEGIN;
\i test/fixtures/two_orgs.sql
INSERT INTO dalgo.schedules (organization_id, source_id, frequency, run_at_time, timezone)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000a1', 'daily', '06:30', 'Asia/Kolkata');
SELECT next_run_at = dalgo.next_run('daily', '06:30', NULL, 'Asia/Kolkata', now()) AS set_on_insert FROM dalgo.schedules;
UPDATE dalgo.schedules SET is_active = false;
SELECT next_run_at IS NULL AS cleared_when_inactive FROM dalgo.schedules;
UPDATE dalgo.schedules SET is_active = true, frequency = 'weekly', run_at_day = 3;
SELECT next_run_at = dalgo.next_run('weekly', '06:30', 3, 'Asia/Kolkata', now()) AS recomputed_on_change FROM dalgo.schedules;
ROLLBACK;
