#!/usr/bin/env bash
# Audit benchmark (run through test/bench/run.sh audit): pgbench -M prepared,
# 4 clients, interleaved rounds, median TPS of each case.  Compares an
# unaudited table, the same table audited by dalgo, and the same table
# audited by the PL/pgSQL reference trigger in reference_audit.sql, for
# single-row INSERT, single-row UPDATE and INSERT ... SELECT of 500 rows.
set -eo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PGBIN=/usr/lib/postgresql/15/bin
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
CLIENTS=${CLIENTS:-4}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

psql <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION dalgo;
CREATE SCHEMA bench;
SQL
psql -f "$HERE/reference_audit.sql"
for t in plain dalgo plpgsql; do
	psql -c "CREATE TABLE bench.$t (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), n int NOT NULL UNIQUE,
		organization_id uuid NOT NULL, name text NOT NULL, amount int NOT NULL, payload jsonb NOT NULL,
		updated_at timestamptz NOT NULL DEFAULT now())"
done
psql -c "SELECT dalgo.enable_audit('bench.dalgo')" >/dev/null
psql -c "CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON bench.plpgsql FOR EACH ROW EXECUTE FUNCTION bench.plpgsql_audit()"

# Reset all tables to 10,000 rows and an empty audit trail.
reset() {
	psql <<'SQL'
ALTER TABLE dalgo.audit_logs DISABLE TRIGGER append_only_truncate;
TRUNCATE bench.plain, bench.dalgo, bench.plpgsql, dalgo.audit_logs;
ALTER TABLE dalgo.audit_logs ENABLE TRIGGER append_only_truncate;
INSERT INTO bench.plain (n, organization_id, name, amount, payload)
	SELECT g, '00000000-0000-4000-8000-00000000000a', 'row ' || g, g, '{"k": 1}' FROM generate_series(1, 10000) g;
INSERT INTO bench.dalgo SELECT * FROM bench.plain;
INSERT INTO bench.plpgsql SELECT * FROM bench.plain;
SQL
	psql -c "VACUUM ANALYZE bench.plain, bench.dalgo, bench.plpgsql, dalgo.audit_logs" >/dev/null
	psql -c "CHECKPOINT" >/dev/null
}

for t in plain dalgo plpgsql; do
	cat > "$work/insert_$t.sql" <<SQL
\set n random(100000, 2000000000)
INSERT INTO bench.$t (n, organization_id, name, amount, payload) VALUES (:n, '00000000-0000-4000-8000-00000000000a', 'new row', :n, '{"k": 2}') ON CONFLICT (n) DO NOTHING;
SQL
	cat > "$work/update_$t.sql" <<SQL
\set n random(1, 10000)
UPDATE bench.$t SET amount = amount + 1 WHERE n = :n;
SQL
	cat > "$work/bulk_$t.sql" <<SQL
\set n random(1, 4000000)
INSERT INTO bench.$t (n, organization_id, name, amount, payload) SELECT 20000 + :n * 500 + g, '00000000-0000-4000-8000-00000000000a', 'bulk', g, '{"k": 3}' FROM generate_series(1, 500) g ON CONFLICT (n) DO NOTHING;
SQL
done

results=$work/results.txt
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
	for workload in insert update bulk; do
		for t in plain dalgo plpgsql; do
			reset
			out=$("$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -f "$work/${workload}_$t.sql" 2>&1) ||
				{ echo "pgbench failed: $out" >&2; exit 1; }
			tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
			echo "$workload $t $tps" >> "$results"
			printf 'round %s  %-6s %-8s %10s tps\n' "$round" "$workload" "$t" "$tps"
		done
	done
done

echo
echo "median TPS over $ROUNDS interleaved rounds ($CLIENTS clients, ${SECONDS_PER_RUN}s each, -M prepared):"
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = {}
for w, t, tps in rows:
    med.setdefault((w, t), []).append(float(tps))
med = {k: statistics.median(v) for k, v in med.items()}
names = {"insert": "single-row INSERT", "update": "single-row UPDATE", "bulk": "INSERT ... SELECT 500 rows"}
print(f"{'workload':28} {'no audit':>10} {'dalgo':>10} {'PL/pgSQL':>10} {'dalgo ratio':>12} {'PL/pgSQL ratio':>15}")
for w in ("insert", "update", "bulk"):
    p, d, r = med[(w, "plain")], med[(w, "dalgo")], med[(w, "plpgsql")]
    print(f"{names[w]:28} {p:10.0f} {d:10.0f} {r:10.0f} {d / p:12.2f} {r / p:15.2f}")
PY
