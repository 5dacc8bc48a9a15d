#!/usr/bin/env bash
# test/citus/run.sh CITUS_SRC: dalgo on a three-node Citus cluster.  Not part
# of CI (CI cannot build Citus: the package registries do not carry it).
#
#   1. builds Citus from the source tree CITUS_SRC (13.2.x; the one
#      compatibility fix for PostgreSQL 15.18+ headers is applied by
#      compat_fix.sh) and dalgo, and installs both into PGBIN's PostgreSQL;
#   2. starts a coordinator and two workers on loopback ports, with
#      shared_preload_libraries = 'citus,dalgo', the pg_hba and roles of
#      docs/scaling.md;
#   3. creates dalgo, two organizations whose shards live on different
#      workers, and runs dalgo.distribute();
#   4. runs the suite (isolation, role matrix, triggers, audit) and the RLS
#      benchmark (count and point query against a superuser hand filter),
#      printing the cluster's figures beside the single-node ones.
#
# PGBIN must be a PostgreSQL 15 you may install into (a private copy: Citus
# and dalgo are installed into it).  As root, the clusters run as the
# postgres OS user.  KEEP=1 leaves the cluster running (and prints how to
# reach it); SKIP_BUILD=1 uses what is installed; SKIP_BENCH=1 skips step 4's
# benchmark.  Packages the build needs (Debian): build-essential,
# postgresql-server-dev-15 (or the copy's headers), liblz4-dev, libzstd-dev,
# libcurl4-openssl-dev, libkrb5-dev.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PG_CONFIG=$PGBIN/pg_config
[ $# -ge 1 ] || { echo "usage: PGBIN=... test/citus/run.sh CITUS_SRC" >&2; exit 2; }
CITUS_SRC=$(cd "$1" && pwd)
JOBS=${JOBS:-2}

as_owner() {
	if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/bash -c "$(printf '%q ' "$@")"; else "$@"; fi
}

# ---- 1. build -------------------------------------------------------------
if [ -z "${SKIP_BUILD:-}" ]; then
	echo "== building Citus from $CITUS_SRC"
	t0=$(date +%s)
	"$HERE/compat_fix.sh" "$CITUS_SRC" "$PG_CONFIG"
	(cd "$CITUS_SRC" && { [ -f config.status ] || ./configure PG_CONFIG="$PG_CONFIG" >/dev/null; } \
		&& make -s -j"$JOBS" >/dev/null && make -s install >/dev/null)
	echo "   Citus built and installed in $(( $(date +%s) - t0 )) s"
	(cd "$ROOT" && make -s -j"$JOBS" PG_CONFIG="$PG_CONFIG" install >/dev/null)
	echo "   dalgo installed"
fi

# ---- 2. three nodes ---------------------------------------------------------
dir=$(mktemp -d /tmp/dalgo-citus.XXXXXX)
chmod 755 "$dir"
[ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
port=56600
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || (exec 3<>"/dev/tcp/127.0.0.1/$((port + 1))") 2>/dev/null \
	|| (exec 3<>"/dev/tcp/127.0.0.1/$((port + 2))") 2>/dev/null; do port=$((port + 3)); done
COORD=$port W1=$((port + 1)) W2=$((port + 2))
NODES="coord:$COORD w1:$W1 w2:$W2"
stop_all() {
	for n in coord w1 w2; do
		[ -f "$dir/$n/postmaster.pid" ] && as_owner "$PGBIN/pg_ctl" -D "$dir/$n" -m fast stop >/dev/null 2>&1 || true
	done
}
cleanup() { stop_all; rm -rf "$dir"; }
if [ -n "${KEEP:-}" ]; then trap 'echo "cluster kept in $dir: psql -h 127.0.0.1 -p $COORD -U postgres dalgo"' EXIT
else trap cleanup EXIT; fi

# The password Citus uses for the application roles (pg_dist_authinfo); a
# real deployment keeps it out of scripts.
APP_PW=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
# dalgo's secret key (dalgo_secret.key): the same file in every node's data
# directory, since shards are written on the workers and read on the
# coordinator (docs/scaling.md, "Secrets").
SECRET_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

for np in $NODES; do
	n=${np%%:*} p=${np##*:}
	as_owner "$PGBIN/initdb" -D "$dir/$n" -U postgres -A trust --no-instructions >/dev/null
	as_owner bash -c "umask 077; printf '%s\n' '$SECRET_KEY' > '$dir/$n/dalgo_secret.key'"
	as_owner bash -c "cat >> '$dir/$n/postgresql.conf' <<CONF
shared_preload_libraries = 'citus,dalgo'
max_worker_processes = 24
max_connections = 100
listen_addresses = '127.0.0.1'
port = $p
unix_socket_directories = '$dir'
shared_buffers = 256MB
work_mem = 64MB
synchronous_commit = off
jit = off
wal_level = logical
max_prepared_transactions = 100
citus.enable_unsafe_triggers = on
citus.propagate_set_commands = 'local'
dalgo.csv_dir = '$dir/csv-$n'
CONF"
	# Each node its own csv directory, as on separate machines: the files are
	# the coordinator's, where runs read them.
	as_owner mkdir -p "$dir/csv-$n"
	if [ "$n" = coord ]; then
		# The coordinator: the app's roles log in over TCP with a password;
		# postgres (the administrator) over the socket only.
		hba="local all postgres trust
host all postgres 127.0.0.1/32 trust
host all dalgo_authenticated,dalgo_service,dalgo_anon 0.0.0.0/0 reject
host all all 127.0.0.1/32 scram-sha-256"
	else
		# A worker: only the coordinator's address (here loopback), only the
		# roles Citus connects as, with their password; no end user.
		hba="local all postgres trust
host all postgres 127.0.0.1/32 trust
host all dalgo_authenticated,dalgo_service 127.0.0.1/32 scram-sha-256
host all all 0.0.0.0/0 reject"
	fi
	as_owner bash -c "printf '%s\n' '$hba' > '$dir/$n/pg_hba.conf'"
	as_owner "$PGBIN/pg_ctl" -D "$dir/$n" -l "$dir/$n.log" -w start >/dev/null
done
echo "== coordinator 127.0.0.1:$COORD, workers 127.0.0.1:$W1 and 127.0.0.1:$W2 (logs in $dir)"

psql_on() { local p=$1; shift; "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$p" -U postgres -v ON_ERROR_STOP=1 "$@"; }
for p in $COORD $W1 $W2; do
	psql_on "$p" -d postgres -c "CREATE DATABASE dalgo"
done
# Citus and dalgo on every node; the workers' dalgo objects come from its
# install script (dalgo is not a Citus-propagated extension).
for p in $W1 $W2; do
	psql_on "$p" -d dalgo -c "CREATE EXTENSION citus" -c "CREATE EXTENSION dalgo"
done
psql_on "$COORD" -d dalgo <<SQL
CREATE EXTENSION citus;
SELECT citus_set_coordinator_host('127.0.0.1', $COORD) IS NULL AS coordinator_set \gset
SELECT citus_add_node('127.0.0.1', $W1) AS w1_node \gset
SELECT citus_add_node('127.0.0.1', $W2) AS w2_node \gset
SET citus.enable_ddl_propagation = off;
CREATE EXTENSION dalgo;
SQL
# Roles: Citus opens its worker connections as the current role
# (dalgo_authenticated or dalgo_service), and keeps a role's attributes the
# same on every node (it propagates them with the objects that depend on
# them).  So both roles get LOGIN and a password everywhere, and pg_hba
# decides where they may log in: on the workers, from the coordinator's
# address only; on the coordinator, nowhere.  The coordinator keeps the
# password in pg_dist_authinfo.  SET on the identity setting is granted on
# the workers only, where Citus sends it.
psql_on "$COORD" -d dalgo <<SQL
ALTER ROLE dalgo_authenticated LOGIN PASSWORD '$APP_PW';
ALTER ROLE dalgo_service LOGIN PASSWORD '$APP_PW';
INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo) VALUES
	(0, 'dalgo_authenticated', 'password=$APP_PW'),
	(0, 'dalgo_service', 'password=$APP_PW');
SQL
for p in $W1 $W2; do
	psql_on "$p" -d dalgo <<SQL
SET citus.enable_ddl_propagation = off;
ALTER ROLE dalgo_authenticated LOGIN PASSWORD '$APP_PW';
ALTER ROLE dalgo_service LOGIN PASSWORD '$APP_PW';
GRANT SET ON PARAMETER dalgo.user_id, dalgo.api_key_scope TO dalgo_authenticated, dalgo_service;
SQL
done
echo "== citus and dalgo installed on the three nodes"

export PGBIN COORD W1 W2 dir APP_PW
if [ -n "${STOP_AFTER_SETUP:-}" ]; then exit 0; fi

# ---- 3 and 4: the suite and the benchmark ---------------------------------
fails=0
"$HERE/suite.sh" || fails=$?
if [ -z "${SKIP_BENCH:-}" ]; then
	"$HERE/bench.sh" || fails=$((fails + 1))
fi
exit $fails
