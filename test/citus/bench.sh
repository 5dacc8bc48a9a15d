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
