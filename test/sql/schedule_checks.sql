-- schedule_checks: a schedule targets one thing, its day fits its frequency,
-- and its time zone is a real IANA name (the error names a bad one).
-- (A day outside its range is refused by next_run's own check, 22023, before
-- the CHECK constraint would refuse it.)
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
SELECT plan(20);

PREPARE sched(text, int, text, boolean, boolean) AS
	INSERT INTO dalgo.schedules (organization_id, source_id, output_id, frequency, run_at_day, timezone)
	VALUES ('22222222-0000-4000-8000-0000000000a0',
			CASE WHEN $4 THEN '33333333-0000-4000-8000-0000000000a1'::uuid END,
			CASE WHEN $5 THEN '66666666-0000-4000-8000-0000000000a1'::uuid END,
			$1::dalgo.schedule_frequency, $2, $3);

SELECT throws_ok($$EXECUTE sched('daily', NULL, 'UTC', true, true)$$, '23514', NULL, 'both a source and an output is refused');
SELECT throws_ok($$EXECUTE sched('daily', NULL, 'UTC', false, false)$$, '23514', NULL, 'neither a source nor an output is refused');
SELECT lives_ok($$EXECUTE sched('daily', NULL, 'UTC', true, false)$$, 'daily with no day');
DELETE FROM dalgo.schedules;
SELECT throws_ok($$EXECUTE sched('daily', 3, 'UTC', true, false)$$, '23514', NULL, 'daily with a day is refused');
SELECT throws_ok($$EXECUTE sched('hourly', 1, 'UTC', true, false)$$, '23514', NULL, 'hourly with a day is refused');
SELECT lives_ok($$EXECUTE sched('weekly', 7, 'UTC', true, false)$$, 'weekly on ISO day 7 (Sunday)');
DELETE FROM dalgo.schedules;
SELECT throws_ok($$EXECUTE sched('weekly', 0, 'UTC', true, false)$$, '22023', NULL, 'weekly day 0 is refused');
SELECT throws_ok($$EXECUTE sched('weekly', 8, 'UTC', true, false)$$, '22023', NULL, 'weekly day 8 is refused');
SELECT throws_ok($$EXECUTE sched('weekly', NULL, 'UTC', true, false)$$, '22023', NULL, 'weekly without a day is refused');
DELETE FROM dalgo.schedules;
SELECT lives_ok($$EXECUTE sched('monthly', 31, 'Asia/Kolkata', true, false)$$, 'monthly on day 31');
DELETE FROM dalgo.schedules;
SELECT throws_ok($$EXECUTE sched('monthly', 32, 'UTC', true, false)$$, '22023', NULL, 'monthly day 32 is refused');
SELECT lives_ok($$EXECUTE sched('daily', NULL, 'America/New_York', false, true)$$, 'an output schedule in America/New_York');
SELECT throws_ok($$EXECUTE sched('daily', NULL, 'America/New_York', false, true)$$, '23505', NULL,
	'an output has at most one live schedule');
UPDATE dalgo.schedules SET deleted_at = now();
SELECT lives_ok($$EXECUTE sched('daily', NULL, 'America/New_York', false, true)$$, 'a soft-deleted schedule does not block a new one');

-- Time zones.
SELECT ok(dalgo.validate_timezone('Europe/Berlin'), 'Europe/Berlin is valid');
SELECT ok(dalgo.validate_timezone('UTC') AND dalgo.validate_timezone('Etc/GMT+5') AND dalgo.validate_timezone('EST5EDT'),
	'UTC, Etc/GMT+5 and EST5EDT are zone names');
SELECT throws_ok($$SELECT dalgo.validate_timezone('Mars/Olympus_Mons')$$, '22023',
	'invalid time zone "Mars/Olympus_Mons"', 'an unknown zone is named in the error');
SELECT throws_ok($$SELECT dalgo.validate_timezone('XYZ-3')$$, '22023', 'invalid time zone "XYZ-3"',
	'a POSIX TZ specification is not an IANA name');
SELECT throws_ok($$SELECT dalgo.validate_timezone('')$$, '22023', 'invalid time zone ""', 'an empty name is refused');
SELECT throws_ok($$UPDATE dalgo.schedules SET timezone = 'Europe/Atlantis'$$, '22023',
	'invalid time zone "Europe/Atlantis"', 'an update to a bad zone is refused');

SELECT * FROM finish();
ROLLBACK;

-- The error a user sees, with its hint.
\set ON_ERROR_STOP false
\set VERBOSITY default
INSERT INTO dalgo.schedules (organization_id, source_id, frequency, timezone)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000a1', 'daily', 'Asia/Calcutta ');
