#!/usr/bin/env bash
# test/citus/bench.sh: the RLS benchmark (bench.sql) in a fresh database on
# one node (the coordinator's server, without Citus in that database) and on
# the three-node cluster, figures side by side.  Called by run.sh (PGBIN,
# COORD, W1, W2 and APP_PW set).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
psql_on() { local p=$1; shift; "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$p" -U postgres -v ON_ERROR_STOP=1 "$@"; }

echo "== RLS benchmark, one node (database single, no Citus)"
psql_on "$COORD" -d postgres -c "CREATE DATABASE single"
psql_on "$COORD" -d single -c "CREATE EXTENSION dalgo"
psql_on "$COORD" -d single -v cluster=off -f "$HERE/bench.sql"

echo "== RLS benchmark, coordinator + 2 workers (database cluster)"
for p in $COORD $W1 $W2; do
	psql_on "$p" -d postgres -c "CREATE DATABASE cluster"
done
for p in $W1 $W2; do
	psql_on "$p" -d cluster -c "CREATE EXTENSION citus" -c "CREATE EXTENSION dalgo"
done
psql_on "$COORD" -d cluster <<SQL
CREATE EXTENSION citus;
SELECT citus_set_coordinator_host('127.0.0.1', $COORD) IS NULL AS coordinator \gset
SELECT citus_add_node('127.0.0.1', $W1) > 0 AS w1 \gset
SELECT citus_add_node('127.0.0.1', $W2) > 0 AS w2 \gset
SET citus.enable_ddl_propagation = off;
CREATE EXTENSION dalgo;
RESET citus.enable_ddl_propagation;
INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo) VALUES
	(0, 'dalgo_authenticated', 'password=$APP_PW'),
	(0, 'dalgo_service', 'password=$APP_PW');
SQL
psql_on "$COORD" -d cluster -v cluster=on -f "$HERE/bench.sql"

# Per request: the identity from dalgo.user_id (what Citus sends by itself)
# against a token verified on the coordinator (which dalgo sends to the
# workers before the query): one transaction per request, pgbench, 1 client.
echo "== per request: dalgo.user_id against a token (pgbench, 1 client, ${BENCH_SECONDS:=10} s each)"
SECRET="$(head -c 36 /dev/urandom | base64 | tr -d '/+=')"
psql_on "$COORD" -d postgres -c "ALTER SYSTEM SET dalgo.jwt_secret = '$SECRET'" -c "SELECT pg_reload_conf()" >/dev/null
sleep 1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
POINT="SELECT payload FROM bench.items WHERE organization_id = 'a0000000-0000-4000-8000-000000000064' AND created_at = '2026-01-01 05:00+00';"
printf '%s\n' "BEGIN;" "SET LOCAL dalgo.user_id = 'bbbbbbbb-0000-4000-8000-000000000001';" \
	"SET LOCAL ROLE dalgo_authenticated;" "$POINT" "COMMIT;" > "$tmp/setting.sql"
# (pgbench puts the variable's text in place of :tok, quotes included)
printf '%s\n' "BEGIN;" "SET LOCAL ROLE dalgo_authenticated;" "SELECT dalgo.authenticate(':tok');" \
	"$POINT" "COMMIT;" > "$tmp/token.sql"
printf '%-10s %-14s %10s\n' setup identity tps
for db in single cluster; do
	tok=$(psql_on "$COORD" -d "$db" -At -c "SELECT dalgo_internal.sign_access_token('bbbbbbbb-0000-4000-8000-000000000001', now() + interval '1 hour')")
	for mode in setting token; do
		tps=$("$PGBIN/pgbench" -n -h 127.0.0.1 -p "$COORD" -U postgres -c 1 -T "$BENCH_SECONDS" -D tok="$tok" \
			-f "$tmp/$mode.sql" "$db" 2>&1 | sed -n 's/^tps = \([0-9.]*\) .*/\1/p')
		printf '%-10s %-14s %10s\n' "$db" "$mode" "${tps:-failed}"
		[ -n "$tps" ] || exit 1
	done
done
