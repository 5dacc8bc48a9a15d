#!/usr/bin/env bash
# Loading benchmark (run through test/bench/run.sh loading).
#  1. The cost of typing and swapping: a staging table of BENCH_ROWS rows
#     (default 1,000,000; six text columns that infer as bigint, numeric,
#     boolean, date, timestamptz and text) finished by
#     dalgo_internal.finish_sync() (inference scan + typed CREATE TABLE AS +
#     swap + registration), against a plain CREATE TABLE AS of the same
#     staging table (no types) and a CREATE TABLE AS with the casts written by
#     hand (types known in advance, no inference).
#  2. Upload throughput: the same rows as a csv file sent from the client
#     (psql \copy = COPY FROM STDIN) into an upload's staging table, as a
#     signed-in member, then finish_upload(); against \copy of the same file
#     into a plain table by a superuser.
#  Each figure is the median of BENCH_REPS runs (default 3), in seconds.
set -eo pipefail
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROWS=${BENCH_ROWS:-1000000}
REPS=${BENCH_REPS:-3}
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
export PGOPTIONS='-c client_min_messages=warning'
csv=$(mktemp /tmp/dalgo-bench-loading.XXXXXX.csv)
trap 'rm -f "$csv"' EXIT

psql -v rows="$ROWS" <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION dalgo;
INSERT INTO dalgo.users (id, email, full_name, password_hash) VALUES
	('b0000000-0000-4000-8000-000000000001', 'member@example.org', 'Member', 'x');
INSERT INTO dalgo.organizations (id, name, slug) VALUES ('a0000000-0000-4000-8000-000000000001', 'Bench', 'bench');
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
	('a0000000-0000-4000-8000-000000000001', 'b0000000-0000-4000-8000-000000000001', 'member');
INSERT INTO dalgo.sources (id, organization_id, name, source_type, warehouse_table_name) VALUES
	('c0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'Feed', 'api', 'feed'),
	('c0000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000001', 'Upload', 'csv', 'uploaded');
SELECT dalgo.ensure_warehouse('a0000000-0000-4000-8000-000000000001') AS schema \gset
CREATE TABLE public.rows AS
	SELECT g::text AS id, (g * 1.25)::text AS amount, (g % 2 = 0)::text AS flag,
		   to_char(date '2000-01-01' + g % 9000, 'YYYY-MM-DD') AS day,
		   to_char(timestamptz '2020-01-01 00:00+00' + g * interval '1 minute', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS at,
		   'label ' || g AS label
	FROM generate_series(1, :rows) g;
VACUUM ANALYZE public.rows;
SQL
psql -c "COPY public.rows TO STDOUT (FORMAT csv, HEADER)" > "$csv"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Seconds a psql script takes, as measured inside the server (clock_timestamp).
timed() { psql -At "$@" | tail -1; }

fin=(); plain=(); cast=(); up=(); upfin=(); copy=()
for i in $(seq 1 "$REPS"); do
	run=$(printf 'd0000000-0000-4000-8000-%012d' "$i")
	# 1. finish_sync on a filled staging table.
	plain+=("$(timed <<SQL
DROP TABLE IF EXISTS public.plain_ctas;
SELECT clock_timestamp() AS t0 \gset
CREATE TABLE public.plain_ctas AS SELECT * FROM public.rows;
SELECT extract(epoch FROM clock_timestamp() - :'t0');
SQL
)")
	cast+=("$(timed <<SQL
DROP TABLE IF EXISTS public.cast_ctas;
SELECT clock_timestamp() AS t0 \gset
CREATE TABLE public.cast_ctas AS SELECT id::bigint, amount::numeric, flag::boolean, day::date, at::timestamptz, label FROM public.rows;
SELECT extract(epoch FROM clock_timestamp() - :'t0');
SQL
)")
	fin+=("$(timed <<SQL
SET client_min_messages = warning;
INSERT INTO dalgo.sync_runs (id, organization_id, source_id, status, started_at)
	VALUES ('$run', 'a0000000-0000-4000-8000-000000000001', 'c0000000-0000-4000-8000-000000000001', 'running', now());
GRANT SELECT ON public.rows TO dalgo_wh_a0000000000040008000000000000001;
SELECT dalgo_internal.warehouse_execute('a0000000-0000-4000-8000-000000000001',
	format('CREATE TABLE org_a0000000000040008000000000000001.%I AS SELECT * FROM public.rows', dalgo_internal.staging_table_name('$run')));
SELECT clock_timestamp() AS t0 \gset
SELECT dalgo_internal.finish_sync('$run', dalgo_internal.staging_table_name('$run'));
SELECT extract(epoch FROM clock_timestamp() - :'t0');
SQL
)")
	# 2. Uploads from the client.
	copy+=("$(timed <<SQL
DROP TABLE IF EXISTS public.plain_copy;
CREATE TABLE public.plain_copy (id text, amount text, flag text, day text, at text, label text);
SELECT clock_timestamp() AS t0 \gset
\copy public.plain_copy FROM '$csv' (FORMAT csv, HEADER)
SELECT extract(epoch FROM clock_timestamp() - :'t0');
SQL
)")
	stage=$(psql -At <<SQL
BEGIN;
SET LOCAL dalgo.user_id = 'b0000000-0000-4000-8000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.begin_upload('c0000000-0000-4000-8000-000000000002', ARRAY['id', 'amount', 'flag', 'day', 'at', 'label']);
COMMIT;
SQL
)
	out=$(psql -At <<SQL
SELECT clock_timestamp() AS t0 \gset
BEGIN;
SET LOCAL dalgo.user_id = 'b0000000-0000-4000-8000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
\copy $stage FROM '$csv' (FORMAT csv, HEADER)
COMMIT;
SELECT clock_timestamp() AS t1 \gset
BEGIN;
SET LOCAL dalgo.user_id = 'b0000000-0000-4000-8000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
SELECT status FROM dalgo.finish_upload('c0000000-0000-4000-8000-000000000002') \gset
COMMIT;
SELECT extract(epoch FROM :'t1'::timestamptz - :'t0'::timestamptz) || ' ' || extract(epoch FROM clock_timestamp() - :'t1') || ' ' || :'status';
SQL
)
	up+=("$(echo "$out" | tail -1 | cut -d' ' -f1)")
	upfin+=("$(echo "$out" | tail -1 | cut -d' ' -f2)")
	[ "$(echo "$out" | tail -1 | cut -d' ' -f3)" = success ] || { echo "upload failed: $out" >&2; exit 1; }
done

m() { printf '%s\n' "$@" | median; }
p=$(m "${plain[@]}"); c=$(m "${cast[@]}"); f=$(m "${fin[@]}")
cp_=$(m "${copy[@]}"); u=$(m "${up[@]}"); uf=$(m "${upfin[@]}")
psql -At <<SQL
SELECT format('rows: %s, median of %s runs, seconds', $ROWS, $REPS);
SELECT format('typing + swap: finish_sync %s s; plain CREATE TABLE AS %s s (ratio %s); CREATE TABLE AS with hand-written casts %s s (ratio %s)',
	$f, $p, round($f / $p, 2), $c, round($f / $c, 2));
SELECT format('types: %s', (SELECT string_agg(column_name || ' ' || column_type, ', ' ORDER BY column_order) FROM dalgo.source_schemas
	WHERE source_id = 'c0000000-0000-4000-8000-000000000001'));
SELECT format('upload: COPY FROM STDIN into the staging table %s s (%s rows/s) vs into a plain table %s s (%s rows/s), ratio %s; finish_upload %s s; upload end to end %s rows/s',
	$u, round($ROWS / $u), $cp_, round($ROWS / $cp_), round($cp_ / $u, 2), $uf, round($ROWS / ($u + $uf)));
SQL
