-- next_run_fuzz: the scheduler's time maths at extreme next_run_at values.
-- 100,000 seeded random schedules (every frequency and day, times with
-- seconds, every IANA zone) from instants across the whole timestamp range,
-- its two ends, and DST-heavy decades.  next_run() either answers a slot
-- strictly after "after" that is the first one (asking again from just
-- before it gives it back) and that never moves backwards when "after"
-- moves forwards, or, only where the next slot would lie past the end of
-- the timestamp range, fails with 22008; infinite instants and 24:00 fail
-- with clear errors.
\set ECHO none
\i test/fixtures/tap_setup.sql
SET timezone = 'UTC';
BEGIN;
SELECT setseed(0.2323) \g /dev/null
SELECT plan(14);
CREATE TEMP TABLE outcomes (what text, detail text);
DO $$
DECLARE
	zones text[] := ARRAY(SELECT name FROM pg_timezone_names WHERE name NOT LIKE 'posix/%' AND name NOT LIKE 'right/%' ORDER BY name);
	far_end CONSTANT timestamptz := '294276-12-31 23:59:59.999999+00';
	near_end CONSTANT timestamptz := far_end - interval '32 days';
	low_end CONSTANT timestamptz := '4714-11-24 00:00:00+00 BC';
	f dalgo.schedule_frequency;
	t time;
	d int;
	tz text;
	a timestamptz;
	a2 timestamptz;
	n timestamptz;
	n2 timestamptz;
	m timestamptz;
	r float8;
	st text;
	msg text;
BEGIN
	FOR i IN 1..100000 LOOP
		f := (ARRAY['hourly', 'daily', 'weekly', 'monthly'])[1 + floor(random() * 4)]::dalgo.schedule_frequency;
		t := make_time(floor(random() * 24)::int, floor(random() * 60)::int,
					   CASE WHEN random() < 0.7 THEN 0 ELSE floor(random() * 600000) / 10000.0 END);
		d := CASE f WHEN 'weekly' THEN 1 + floor(random() * 7) WHEN 'monthly' THEN 1 + floor(random() * 31) END;
		tz := zones[1 + floor(random() * array_length(zones, 1))];
		r := random();
		a := CASE WHEN r < 0.15 THEN far_end - make_interval(secs => random() * 86400 * 100)
				  WHEN r < 0.30 THEN low_end + make_interval(secs => random() * 86400 * 100)
				  WHEN r < 0.40 THEN low_end + make_interval(secs => random() * 86400 * 365.25 * 290000)
				  WHEN r < 0.55 THEN '1880-01-01+00'::timestamptz + make_interval(secs => random() * 86400 * 365.25 * 120)
				  ELSE '2000-01-01+00'::timestamptz + make_interval(secs => random() * 86400 * 365.25 * 40) END;
		BEGIN
			n := dalgo.next_run(f, t, d, tz, a);
			INSERT INTO outcomes VALUES ('answered', NULL);
			IF n IS NULL OR n <= a THEN
				INSERT INTO outcomes VALUES ('not after', format('%s %s %s %s %s -> %s', f, t, d, tz, a, n));
				CONTINUE;
			END IF;
			m := dalgo.next_run(f, t, d, tz, n - interval '1 microsecond');
			IF m IS DISTINCT FROM n THEN
				INSERT INTO outcomes VALUES ('not first', format('%s %s %s %s %s -> %s, from just before it %s', f, t, d, tz, a, n, m));
			END IF;
			a2 := CASE WHEN a > far_end - interval '40 days' THEN a + (far_end - a) * random()
					   ELSE a + make_interval(secs => random() * 86400 * 40) END;
			BEGIN
				n2 := dalgo.next_run(f, t, d, tz, a2);
				IF n2 < n THEN
					INSERT INTO outcomes VALUES ('not monotone', format('%s %s %s %s %s -> %s; %s -> %s', f, t, d, tz, a, n, a2, n2));
				END IF;
			EXCEPTION WHEN datetime_field_overflow THEN
				IF a2 < near_end THEN
					INSERT INTO outcomes VALUES ('bad error', format('%s %s %s %s %s', f, t, d, tz, a2));
				END IF;
			END;
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
			IF st = '22008' AND a >= near_end THEN
				INSERT INTO outcomes VALUES ('out of range at the end', msg);
			ELSE
				INSERT INTO outcomes VALUES ('bad error', format('%s %s: %s %s %s %s %s', st, msg, f, t, d, tz, a));
			END IF;
		END;
	END LOOP;
END
$$;
SELECT is((SELECT count(*) FROM outcomes WHERE what IN ('answered', 'out of range at the end')), 100000::bigint,
	'100,000 fuzzed schedules: every call answers or fails only at the end of the range');
SELECT ok((SELECT count(*) FROM outcomes WHERE what = 'answered') > 90000, 'most of them have a next slot');
SELECT is((SELECT string_agg(detail, E'\n') FROM (SELECT detail FROM outcomes WHERE what = 'bad error' LIMIT 20) x), NULL,
	'no error but 22008, and that only within 32 days of the end of the range');
SELECT is((SELECT string_agg(detail, E'\n') FROM (SELECT detail FROM outcomes WHERE what = 'not after' LIMIT 20) x), NULL,
	'every slot lies strictly after "after"');
SELECT is((SELECT string_agg(detail, E'\n') FROM (SELECT detail FROM outcomes WHERE what = 'not first' LIMIT 20) x), NULL,
	'every slot is the first one: asked again from just before it, next_run gives it back');
SELECT is((SELECT string_agg(detail, E'\n') FROM (SELECT detail FROM outcomes WHERE what = 'not monotone' LIMIT 20) x), NULL,
	'slots never move backwards when "after" moves forwards');

-- The ends of the range, exactly.
SELECT is(dalgo.next_run('daily', '00:00', NULL, 'UTC', '4714-11-24 00:00:00+00 BC'), '4714-11-25 00:00:00+00 BC'::timestamptz,
	'daily from the first instant of the range');
SELECT is(dalgo.next_run('monthly', '06:00', 31, 'America/New_York', '4714-11-24 00:00:00+00 BC') AT TIME ZONE 'America/New_York',
	'4714-11-30 06:00:00 BC'::timestamp, 'monthly day 31 in the first month of the range clamps to its 30th');
SELECT throws_ok($$SELECT dalgo.next_run('daily', '12:00', NULL, 'UTC', '294276-12-31 12:00:00+00')$$, '22008', 'timestamp out of range',
	'no slot after the last day of the range: 22008');
SELECT throws_ok($$SELECT dalgo.next_run('hourly', '00:00', NULL, 'UTC', 'infinity')$$, '22008', 'timestamp out of range',
	'no slot after infinity');
SELECT throws_ok($$SELECT dalgo.next_run('weekly', '00:00', 1, 'UTC', '-infinity')$$, '22008', 'timestamp out of range',
	'no slot after -infinity');
SELECT throws_ok($$SELECT dalgo.next_run('daily', '24:00', NULL, 'Europe/Berlin', now())$$, '22023',
	'run_at_time must be a time of day before 24:00', '24:00 is not a time of day');
\i test/fixtures/two_orgs.sql
SELECT throws_ok($$INSERT INTO dalgo.schedules (organization_id, source_id, frequency, run_at_time)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000a1', 'daily', '24:00')$$,
	'22023', 'run_at_time must be a time of day before 24:00', 'a schedule at 24:00 is refused');
SELECT throws_ok($$INSERT INTO dalgo.schedules (organization_id, source_id, frequency, run_at_time, is_active)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000a1', 'daily', '24:00', false)$$,
	'23514', NULL, 'an inactive one too (schedules_run_at_time_of_day)');
SELECT * FROM finish();
ROLLBACK;
