#!/usr/bin/env bash
# test/bench/run.sh NAME [NAME...]: run benchmark scripts on a throwaway
# cluster with dalgo preloaded, and print their figures.
#
#   NAME.sql  is run with psql against a fresh database "bench";
#   NAME.sh   is run with PGHOST/PGPORT/PGDATABASE/PGUSER exported;
#   NAME.conf, if present, is appended to the cluster's postgresql.conf.
#
# Build and install dalgo first (scripts/dev.sh test or demo does both).
# As root, the cluster runs as the postgres OS user.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export PGBIN
[ $# -gt 0 ] || { echo "usage: test/bench/run.sh NAME..." >&2; exit 2; }

as_owner() {
	if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/bash -c "$(printf '%q ' "$@")"; else "$@"; fi
}

dir=$(mktemp -d /tmp/dalgo-bench.XXXXXX)
[ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
port=55500
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
cleanup() { as_owner "$PGBIN/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT

as_owner "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust --no-instructions >/dev/null
as_owner bash -c "cat '$ROOT/test/postgresql.conf' >> '$dir/data/postgresql.conf'
cat >> '$dir/data/postgresql.conf' <<CONF
shared_buffers = 1GB
work_mem = 64MB
maintenance_work_mem = 512MB
max_wal_size = 4GB
checkpoint_timeout = 30min
synchronous_commit = off
jit = off
${BENCH_EXTRA_CONF:-}
CONF"
for name in "$@"; do
	if [ -f "$HERE/$name.conf" ]; then
		as_owner bash -c "cat '$HERE/$name.conf' >> '$dir/data/postgresql.conf'"
	fi
done
as_owner "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=bench
"$PGBIN/psql" -q -X -d postgres -c "CREATE DATABASE bench"

for name in "$@"; do
	echo "==================== $name ===================="
	if [ -f "$HERE/$name.sql" ]; then
		"$PGBIN/psql" -q -X -v ON_ERROR_STOP=1 -f "$HERE/$name.sql"
	else
		bash "$HERE/$name.sh"
	fi
done
