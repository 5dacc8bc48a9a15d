#!/usr/bin/env bash
# Accounts benchmark (run through test/bench/run.sh accounts).  Prints:
#   1. sign-ins per second at bcrypt cost 10 against bare pgcrypto crypt()
#      at the same cost (same clients, interleaved rounds, median), and the
#      ratio (target >= 0.95);
#   2. refreshes per second, with p50/p99 latency;
#   3. time of a sign-in with an unknown email against one with a wrong
#      password (target: within 10%);
#   4. RLS point-query TPS (pgbench) while sign-ins, refreshes and failed
#      attempts run at 50/s in parallel, against the same without them
#      (target ratio >= 0.9).
set -eo pipefail
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_RUN:-8}
CLIENTS=${CLIENTS:-2}
work=$(mktemp -d)
chmod 777 "$work"
trap 'rm -rf "$work"' EXIT
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
pgbench() { "$PGBIN/pgbench" -n "$@"; }
tps() { sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

psql <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION pgcrypto;
CREATE EXTENSION dalgo;
CREATE SCHEMA bench;
SET dalgo.bcrypt_cost = 10;
SELECT count(dalgo.sign_up(format('bench%s@example.org', g), 'bench password 1')) FROM generate_series(1, 100) g;
CREATE TABLE bench.hash AS SELECT crypt('bench password 1', gen_salt('bf', 10)) AS h;
CREATE TABLE bench.tokens (client int PRIMARY KEY, token text NOT NULL);
SQL
# Lockout off for the benchmark's own failed attempts.
psql -c "ALTER DATABASE bench SET dalgo.max_failed_sign_ins = 1000" >/dev/null

cat > "$work/sign_in.sql" <<'SQL'
\set u random(1, 100)
SELECT user_id FROM dalgo.sign_in('bench' || :u || '@example.org', 'bench password 1');
SQL
cat > "$work/crypt.sql" <<'SQL'
SELECT crypt('bench password 1', h) = h FROM bench.hash;
SQL

echo "1. sign-in vs bare crypt() at cost 10 ($CLIENTS clients, both scripts interleaved at random in each ${SECS}s round, median of $ROUNDS)"
: > "$work/si"; : > "$work/cr"
for r in $(seq "$ROUNDS"); do
	pgbench -c "$CLIENTS" -j "$CLIENTS" -T "$SECS" -f "$work/sign_in.sql" -f "$work/crypt.sql" > "$work/si.out"
	sed -n '/sign_in.sql/,/crypt.sql/s/^ *- latency average = \([0-9.]*\) ms/\1/p' "$work/si.out" >> "$work/si"
	sed -n '/crypt.sql/,$s/^ *- latency average = \([0-9.]*\) ms/\1/p' "$work/si.out" >> "$work/cr"
done
si=$(median < "$work/si"); cr=$(median < "$work/cr")
echo "   sign_in: $si ms ($(awk -v a="$si" -v c="$CLIENTS" 'BEGIN {printf "%.1f", c * 1000 / a}') /s)   crypt(): $cr ms ($(awk -v a="$cr" -v c="$CLIENTS" 'BEGIN {printf "%.1f", c * 1000 / a}') /s)   ratio of rates: $(awk -v a="$si" -v b="$cr" 'BEGIN {printf "%.3f", b / a}') (target >= 0.95)"

echo "2. refresh_session ($CLIENTS clients, ${SECS}s)"
for c in $(seq 0 $((CLIENTS - 1))); do
	psql -c "INSERT INTO bench.tokens SELECT $c, refresh_token FROM dalgo.sign_in('bench$((c + 1))@example.org', 'bench password 1')" >/dev/null
done
cat > "$work/refresh.sql" <<'SQL'
UPDATE bench.tokens t SET token = (SELECT r.refresh_token FROM dalgo.refresh_session(t.token) r) WHERE t.client = :client_id;
SQL
(cd "$work" && pgbench -c "$CLIENTS" -j "$CLIENTS" -T "$SECS" -l --log-prefix="$work/rlog" -f "$work/refresh.sql" > "$work/refresh.out")
rt=$(tps < "$work/refresh.out")
cat "$work"/rlog* | awk '{print $3 / 1000.0}' | sort -g > "$work/rlat"
n=$(wc -l < "$work/rlat")
p50=$(sed -n "$(( (n + 1) / 2 ))p" "$work/rlat"); p99=$(sed -n "$(( (n * 99 + 99) / 100 ))p" "$work/rlat")
echo "   refreshes: $rt /s   p50: ${p50} ms   p99: ${p99} ms"

echo "3. failed sign-in: unknown email vs wrong password (1 client, both scripts interleaved at random in each ${SECS}s round, median of $ROUNDS)"
cat > "$work/unknown.sql" <<'SQL'
\set u random(1, 1000000000)
DO $$BEGIN PERFORM dalgo.sign_in('nobody' || :u || '@example.org', 'bench password 2'); EXCEPTION WHEN invalid_password THEN NULL; END$$;
SQL
cat > "$work/wrong.sql" <<'SQL'
\set u random(1, 100)
DO $$BEGIN PERFORM dalgo.sign_in('bench' || :u || '@example.org', 'bench password 2'); EXCEPTION WHEN invalid_password THEN NULL; END$$;
SQL
: > "$work/un"; : > "$work/wr"
for r in $(seq "$ROUNDS"); do
	pgbench -c 1 -T "$SECS" -f "$work/unknown.sql" -f "$work/wrong.sql" > "$work/fail.out"
	sed -n '/unknown.sql/,/wrong.sql/s/^ *- latency average = \([0-9.]*\) ms/\1/p' "$work/fail.out" >> "$work/un"
	sed -n '/wrong.sql/,$s/^ *- latency average = \([0-9.]*\) ms/\1/p' "$work/fail.out" >> "$work/wr"
done
un=$(median < "$work/un"); wr=$(median < "$work/wr")
echo "   unknown email: $un ms   wrong password: $wr ms   difference: $(awk -v a="$un" -v b="$wr" 'BEGIN {printf "%.1f%%", (a - b) / b * 100}') (target within 10%)"

echo "4. RLS point queries with and without accounts traffic at 50/s (${SECS}s rounds, median of $ROUNDS)"
psql <<'SQL'
SET client_min_messages = warning;
INSERT INTO dalgo.users (id, email) VALUES ('00000000-0000-4000-8000-00000000b001', 'reader@example.org');
INSERT INTO dalgo.organizations (id, name, slug)
	SELECT md5('org' || g)::uuid, 'Org ' || g, 'org-' || g FROM generate_series(1, 100) g;
INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	SELECT md5('org' || g)::uuid, '00000000-0000-4000-8000-00000000b001', 'viewer' FROM generate_series(1, 5) g;
INSERT INTO dalgo.sources (id, organization_id, name, source_type, warehouse_table_name)
	SELECT md5('src' || g)::uuid, md5('org' || (g % 100 + 1))::uuid, 'Source ' || g, 'csv', 'src_' || g FROM generate_series(1, 100000) g;
VACUUM ANALYZE dalgo.sources;
DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_reader') THEN CREATE ROLE bench_reader LOGIN; END IF; END$$;
GRANT dalgo_authenticated TO bench_reader;
ALTER ROLE bench_reader SET role = 'dalgo_authenticated';
ALTER ROLE bench_reader IN DATABASE bench SET dalgo.user_id = '00000000-0000-4000-8000-00000000b001';
SQL
cat > "$work/point.sql" <<'SQL'
\set g random(1, 100000)
SELECT name FROM dalgo.sources WHERE id = md5('src' || :g)::uuid;
SQL
for c in 0 1 2 3; do
	psql -c "INSERT INTO bench.tokens SELECT $c, refresh_token FROM dalgo.sign_in('bench$((c + 1))@example.org', 'bench password 1')
		ON CONFLICT (client) DO UPDATE SET token = excluded.token" >/dev/null
done
cat > "$work/traffic_sign_in.sql" <<'SQL'
\set u random(1, 100)
SELECT user_id FROM dalgo.sign_in('bench' || :u || '@example.org', 'bench password 1');
SQL
cat > "$work/traffic_refresh.sql" <<'SQL'
UPDATE bench.tokens t SET token = (SELECT r.refresh_token FROM dalgo.refresh_session(t.token) r) WHERE t.client = :client_id;
SQL
cat > "$work/traffic_failed.sql" <<'SQL'
\set u random(1, 1000000000)
DO $$BEGIN PERFORM dalgo.sign_in('nobody' || :u || '@example.org', 'bench password 2'); EXCEPTION WHEN invalid_password THEN NULL; END$$;
SQL
: > "$work/quiet"; : > "$work/busy"
for r in $(seq "$ROUNDS"); do
	pgbench -U bench_reader -M prepared -c "$CLIENTS" -j "$CLIENTS" -T "$SECS" -f "$work/point.sql" | tps >> "$work/quiet"
	pgbench -c 4 -j 2 -R 50 -T $((SECS + 2)) -f "$work/traffic_sign_in.sql" -f "$work/traffic_refresh.sql" -f "$work/traffic_failed.sql" > "$work/traffic.out" 2>&1 &
	bg=$!
	sleep 1
	pgbench -U bench_reader -M prepared -c "$CLIENTS" -j "$CLIENTS" -T "$SECS" -f "$work/point.sql" | tps >> "$work/busy"
	wait "$bg" || { echo "accounts traffic failed:"; cat "$work/traffic.out"; exit 1; }
done
quiet=$(median < "$work/quiet"); busy=$(median < "$work/busy")
echo "   point queries alone: $quiet tps   with accounts traffic at 50/s: $busy tps   ratio: $(awk -v a="$busy" -v b="$quiet" 'BEGIN {printf "%.3f", a / b}') (target >= 0.9)"
echo "   (accounts traffic achieved: $(tps < "$work/traffic.out") /s; at cost 10 one bcrypt takes tens of ms of CPU, so two thirds of 50/s exceed this machine's cores)"
: > "$work/busy2"
for r in $(seq "$ROUNDS"); do
	pgbench -c 4 -j 2 -R 50 -T $((SECS + 2)) -f "$work/traffic_refresh.sql" > "$work/traffic2.out" 2>&1 &
	bg=$!
	sleep 1
	pgbench -U bench_reader -M prepared -c "$CLIENTS" -j "$CLIENTS" -T "$SECS" -f "$work/point.sql" | tps >> "$work/busy2"
	wait "$bg" || { echo "refresh traffic failed:"; cat "$work/traffic2.out"; exit 1; }
done
busy2=$(median < "$work/busy2")
echo "   with refreshes only (no bcrypt) at 50/s: $busy2 tps   ratio: $(awk -v a="$busy2" -v b="$quiet" 'BEGIN {printf "%.3f", a / b}')"
# Control: the same four extra clients at 50/s running SELECT 1 (what the
# machine's scheduler costs the point queries, without any dalgo work).
echo 'SELECT 1;' > "$work/control.sql"
: > "$work/busy3"
for r in $(seq "$ROUNDS"); do
	pgbench -c 4 -j 2 -R 50 -T $((SECS + 2)) -f "$work/control.sql" > "$work/traffic3.out" 2>&1 &
	bg=$!
	sleep 1
	pgbench -U bench_reader -M prepared -c "$CLIENTS" -j "$CLIENTS" -T "$SECS" -f "$work/point.sql" | tps >> "$work/busy3"
	wait "$bg" || { echo "control traffic failed:"; cat "$work/traffic3.out"; exit 1; }
done
busy3=$(median < "$work/busy3")
echo "   control, SELECT 1 at 50/s: $busy3 tps   ratio: $(awk -v a="$busy3" -v b="$quiet" 'BEGIN {printf "%.3f", a / b}')"
