#!/usr/bin/env bash
# Scheduler benchmark (run through test/bench/run.sh scheduler; needs the
# Debian package postgresql-15-cron for the pg_cron comparison).
#  - 10,000 active schedules, 100 of them due at the same instant:
#    dispatch lag (started_at - next_run_at) p50/p95/max and the time until
#    all 100 have started, for in-database syncs (each in a run worker) and
#    for connector syncs (queued; lag to the queue).
#  - The scheduler's and launcher's CPU while idle over a minute.
#  - pg_cron on the same cluster: 100 jobs due at the same minute, start lag.
set -eo pipefail
PGBIN=/usr/lib/postgresql/15/bin
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

psql <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION dalgo;
INSERT INTO dalgo.organizations (id, name, slug) VALUES ('a0000000-0000-4000-8000-000000000001', 'Bench', 'bench');
SELECT dalgo.ensure_warehouse('a0000000-0000-4000-8000-000000000001') \g /dev/null
CREATE TABLE public.tiny AS SELECT g AS id FROM generate_series(1, 10) g;
GRANT USAGE ON SCHEMA public TO dalgo_wh_a0000000000040008000000000000001;
GRANT SELECT ON public.tiny TO dalgo_wh_a0000000000040008000000000000001;
-- 10,000 schedules: 100 in-database syncs and 100 connector syncs due together, the rest next week.
INSERT INTO dalgo.sources (organization_id, name, source_type, config, warehouse_table_name)
	SELECT 'a0000000-0000-4000-8000-000000000001', 's' || g,
		   CASE WHEN g <= 100 THEN 'postgres' ELSE 'api' END::dalgo.source_type,
		   CASE WHEN g <= 100 THEN '{"relation": "public.tiny"}' ELSE '{"connector": true}' END::jsonb, 't' || g
	FROM generate_series(1, 10000) g;
INSERT INTO dalgo.schedules (organization_id, source_id, frequency, run_at_day)
	SELECT organization_id, id, 'weekly', 1 FROM dalgo.sources;
ANALYZE dalgo.schedules;
SQL

echo "--- idle: 10,000 schedules, none due, scheduler CPU over 60 s"
sleep 3
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sched=$(psql -Atc "SELECT pid FROM pg_stat_activity WHERE backend_type = 'dalgo scheduler' AND datname = 'bench'")
launcher=$(psql -Atc "SELECT pid FROM pg_stat_activity WHERE backend_type = 'dalgo launcher'")
hz=$(getconf CLK_TCK)
s0=$(cpu "$sched"); l0=$(cpu "$launcher")
sleep 60
s1=$(cpu "$sched"); l1=$(cpu "$launcher")
awk -v s=$((s1 - s0)) -v l=$((l1 - l0)) -v hz="$hz" 'BEGIN {
	printf "scheduler: %.3f s CPU in 60 s = %.2f %%   launcher: %.3f s = %.2f %%   (target < 1 %%)\n", s / hz, 100 * s / hz / 60, l / hz, 100 * l / hz / 60 }'

echo "--- 100 in-database syncs and 100 connector syncs due at the same instant"
psql <<'SQL'
SELECT (date_trunc('second', clock_timestamp()) + interval '3 seconds') AS due \gset
UPDATE dalgo.schedules s SET next_run_at = :'due'
FROM dalgo.sources src WHERE src.id = s.source_id AND (src.name ~ '^s([1-9][0-9]?|100)$' OR src.name ~ '^s(10[1-9]|1[1-9][0-9]|200)$');
SELECT pg_sleep_until(:'due'::timestamptz + interval '12 seconds');
\pset footer off
SELECT kind, count(*) AS runs,
	   round(percentile_cont(0.5) WITHIN GROUP (ORDER BY lag)) AS p50_ms,
	   round(percentile_cont(0.95) WITHIN GROUP (ORDER BY lag)) AS p95_ms,
	   round(max(lag)) AS max_ms,
	   count(*) FILTER (WHERE status = 'success') AS succeeded
FROM (SELECT CASE WHEN s.source_type = 'postgres' THEN 'in-database (run workers, started_at)' ELSE 'connector (queued, created_at)' END AS kind,
			 extract(epoch FROM coalesce(r.started_at, r.created_at) - :'due'::timestamptz) * 1000 AS lag, r.status
	  FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id) x
GROUP BY kind ORDER BY kind;
SELECT round(extract(epoch FROM max(started_at) - :'due'::timestamptz) * 1000) AS "all 100 in-database runs started after (ms; target <= 500)"
FROM dalgo.sync_runs r JOIN dalgo.sources s ON s.id = r.source_id WHERE s.source_type = 'postgres';
SQL

echo "--- pg_cron on the same cluster: 100 jobs due at the same minute"
psql <<'SQL'
CREATE EXTENSION pg_cron;
SELECT count(cron.schedule('job' || g, '* * * * *', 'SELECT 1')) AS jobs FROM generate_series(1, 100) g;
SELECT pg_sleep_until(date_trunc('minute', clock_timestamp()) + interval '1 minute 20 seconds');
\pset footer off
SELECT count(*) AS runs,
	   round(percentile_cont(0.5) WITHIN GROUP (ORDER BY lag)) AS p50_ms,
	   round(percentile_cont(0.95) WITHIN GROUP (ORDER BY lag)) AS p95_ms,
	   round(max(lag)) AS max_ms
FROM (SELECT extract(epoch FROM start_time - date_trunc('minute', start_time)) * 1000 AS lag
	  FROM cron.job_run_details WHERE start_time = (SELECT max(start_time) FROM cron.job_run_details)
	  OR date_trunc('minute', start_time) = (SELECT date_trunc('minute', max(start_time)) FROM cron.job_run_details)) x;
SQL
