#!/usr/bin/env bash
# Sources benchmark (run through test/bench/run.sh sources): an api source
# of N flat records (id, name, amount, day, active) served over local HTTP
# by test/fixtures/http_server.py on 127.0.0.1, 10,000 records a page
# (next_url pagination), synced by a run worker, against COPY FROM of the
# same rows from a CSV file on the server.
#  - rows/s of each and their ratio (target >= 0.5), at 1,000,000 rows, with
#    config.infer_types false (text columns, as COPY into text columns);
#    the time with type inference (finish_sync's extra pass) is shown too;
#  - the run worker's peak private memory (RssAnon, sampled every 50 ms;
#    VmHWM too, which also counts the shared buffers it touched) at 100,000
#    and 1,000,000 rows: it must not grow with the row count.
# ROWS (default "100000 1000000") sets the sizes.
set -eo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
SIZES=${ROWS:-100000 1000000}
PAGE=10000

tmp=$(mktemp -d /tmp/dalgo-bench-sources.XXXXXX)
chmod 755 "$tmp"
python3 "$HERE/../fixtures/http_server.py" "$tmp/port" /dev/null &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do [ -f "$tmp/port" ] && break; sleep 0.1; done
port=$(cat "$tmp/port")
base="http://127.0.0.1:$port"

psql <<SQL
SET client_min_messages = warning;
CREATE EXTENSION dalgo;
ALTER SYSTEM SET dalgo.http_allow_hosts = '127.0.0.1';
SELECT pg_reload_conf() \g /dev/null
INSERT INTO dalgo.organizations (id, name, slug) VALUES ('a0000000-0000-4000-8000-000000000001', 'Bench', 'bench');
SELECT dalgo.ensure_warehouse('a0000000-0000-4000-8000-000000000001') \g /dev/null
SQL

# Run the sync of an api source of $1 rows ($2: infer_types); prints "seconds peak_rss_anon_kB peak_hwm_kB".
sync_rows() {
	local rows=$1 infer=$2 pages=$(( $1 / PAGE )) sid pid st anon=0 hwm=0 a h
	# Warm the server's page cache so that it only sends bytes during the run.
	for ((p = 0; p < pages; p++)); do curl -s -o /dev/null "$base/api/bench?n=$PAGE&pages=$pages&cursor=$p"; done
	sid=$(psql -Atc "INSERT INTO dalgo.sources (organization_id, name, source_type, config, warehouse_table_name)
		VALUES ('a0000000-0000-4000-8000-000000000001', 'api $rows $infer', 'api',
		jsonb_build_object('url', '$base/api/bench?n=$PAGE&pages=$pages', 'records', '/data/items',
						   'pagination', '{\"type\": \"next_url\", \"pointer\": \"/next\"}'::jsonb, 'max_pages', $pages,
						   'infer_types', $infer),
		'api_${rows}_$infer') RETURNING id")
	psql -c "INSERT INTO dalgo.schedules (organization_id, source_id, frequency)
		VALUES ('a0000000-0000-4000-8000-000000000001', '$sid', 'daily')"
	psql -c "UPDATE dalgo.schedules SET next_run_at = now() WHERE source_id = '$sid'"
	pid=
	while :; do
		st=$(psql -Atc "SELECT status || ' ' || coalesce(details->>'runner_pid', '') FROM dalgo.sync_runs WHERE source_id = '$sid'")
		set -- $st
		[ -n "${2:-}" ] && pid=$2
		if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
			a=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
			h=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
			[ -n "$a" ] && [ "$a" -gt "$anon" ] && anon=$a
			[ -n "$h" ] && [ "$h" -gt "$hwm" ] && hwm=$h
		fi
		case "${1:-}" in success|failed) break ;; esac
		sleep 0.05
	done
	psql -Atc "SELECT CASE WHEN status = 'success' AND rows_synced = $rows THEN '' ELSE 'FAILED: ' || status || ' ' || coalesce(error_message, '') || ' ' END
		|| round(extract(epoch FROM completed_at - started_at)::numeric, 3) || ' $anon $hwm'
		FROM dalgo.sync_runs WHERE source_id = '$sid'"
}

# COPY FROM the same rows from a CSV file; prints seconds.
copy_rows() {
	local rows=$1
	python3 - "$tmp/rows_$rows.csv" "$rows" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    f.write("id,name,amount,day,active\n")
    for i in range(n):
        f.write("%d,name %d,%d.%02d,2024-%02d-%02d,%s\n" % (i, i, i % 1000, i % 100, i % 12 + 1, i % 28 + 1,
                                                         "true" if i % 3 == 0 else "false"))
PY
	chmod 644 "$tmp/rows_$rows.csv"
	psql -Atc "CREATE TABLE public.copy_$rows (id text, name text, amount text, day text, active text)"
	psql -At <<SQL | tail -1
\timing on
COPY public.copy_$rows FROM '$tmp/rows_$rows.csv' WITH (FORMAT csv, HEADER true);
SQL
}

printf '%-10s %12s %12s %12s %12s %8s %16s %14s %12s\n' rows 'api s' 'api rows/s' 'COPY s' 'COPY rows/s' ratio 'RssAnon peak' 'VmHWM peak' 'typed api s'
for rows in $SIZES; do
	read -r api_s anon hwm < <(sync_rows "$rows" false)
	read -r typed_s _ _ < <(sync_rows "$rows" true)
	copy_ms=$(copy_rows "$rows" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')
	awk -v n="$rows" -v a="$api_s" -v c="$copy_ms" -v anon="$anon" -v hwm="$hwm" -v t="$typed_s" 'BEGIN {
		cs = c / 1000;
		printf "%-10d %12.3f %12.0f %12.3f %12.0f %8.2f %13.1f MB %11.1f MB %12.3f\n", n, a, n / a, cs, n / cs, (n / a) / (n / cs), anon / 1024, hwm / 1024, t }'
done
