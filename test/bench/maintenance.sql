-- Daily maintenance benchmark: what the scheduler's daily run costs.
-- 1,000,000 expired rows of 1,100,000 (the toolkit benchmark's retention
-- table, 1,000 users) deleted by dalgo_internal.daily_maintenance(), one
-- pass per transaction as the scheduler calls it: passes, total time, the
-- longest pass (which bounds how long any lock is held).  Then the same
-- with a per-user override (a days table of 1,000 users, 10% at 20 days).
\pset footer off
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dalgo;
CREATE SCHEMA bench;
CREATE TABLE bench.prefs (user_id uuid PRIMARY KEY, days int);
INSERT INTO bench.prefs SELECT ('aaaaaaaa-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, CASE WHEN i % 10 = 0 THEN 20 ELSE 30 END
	FROM generate_series(0, 999) i;
CREATE TABLE bench.runs (variant text, pass int, ms numeric, rows bigint);
CREATE TABLE bench.telemetry (id bigserial PRIMARY KEY, user_id uuid NOT NULL, at timestamptz NOT NULL, payload jsonb);
CREATE PROCEDURE bench.fill() LANGUAGE sql AS $$
	TRUNCATE bench.telemetry;
	INSERT INTO bench.telemetry (user_id, at, payload)
		SELECT ('aaaaaaaa-0000-4000-8000-' || lpad((i % 1000)::text, 12, '0'))::uuid,
			   now() - interval '100 days' + (i * interval '1 second'), jsonb_build_object('i', i)
		FROM generate_series(1, 1000000) i;
	INSERT INTO bench.telemetry (user_id, at, payload)
		SELECT ('aaaaaaaa-0000-4000-8000-' || lpad((i % 1000)::text, 12, '0'))::uuid, now() - (i * interval '1 second'),
			   jsonb_build_object('i', i)
		FROM generate_series(1, 100000) i;
$$;
-- As the scheduler does: one call per transaction until done.
CREATE PROCEDURE bench.maintain(variant text) LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz;
	r jsonb;
	i int := 0;
BEGIN
	LOOP
		i := i + 1;
		t0 := clock_timestamp();
		r := dalgo_internal.daily_maintenance();
		INSERT INTO bench.runs VALUES (variant, i, extract(epoch FROM clock_timestamp() - t0) * 1000, (r->>'retention_rows')::bigint);
		COMMIT;
		EXIT WHEN (r->>'done')::boolean;
	END LOOP;
END $$;
SELECT dalgo.enable_own_rows('bench.telemetry') \g /dev/null
UPDATE dalgo.retention_policies SET enabled = false;

CALL bench.fill();
SELECT dalgo.set_retention('bench.telemetry', 'at', 30) \g /dev/null
VACUUM ANALYZE bench.telemetry;
CALL bench.maintain('retention_days 30');

CALL bench.fill();
SELECT dalgo.set_retention('bench.telemetry', 'at', 30, user_column => 'user_id', user_days => 'bench.prefs.days') \g /dev/null
VACUUM ANALYZE bench.telemetry;
CALL bench.maintain('per-user days (1,000 users)');

\echo
\echo 'daily_maintenance: 1,000,000 expired rows of 1,100,000, one pass (a batch of 10,000) per transaction'
SELECT variant, sum(rows) AS rows_deleted, count(*) AS passes, round(sum(ms) / 1000, 2) AS total_s,
	   round(max(ms), 1) AS longest_pass_ms, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) AS median_pass_ms
FROM bench.runs GROUP BY variant ORDER BY variant DESC;
