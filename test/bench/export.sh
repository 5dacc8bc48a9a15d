#!/usr/bin/env bash
# test/bench/run.sh export: dalgo.export_warehouse_table through psql's
# \copy (SELECT ...): 10,000 and 1,000,000 rows, the backend's peak RSS
# (VmHWM) and its shared memory (RssShmem) after each, beside the server's
# own COPY of the table.  Private peak ~ VmHWM - RssShmem.
set -euo pipefail
P="$PGBIN/psql -X -q -v ON_ERROR_STOP=1"
ORG=22222222-0000-4000-8000-0000000000e0
WH=org_222222220000400080000000000000e0
OUT=$(mktemp -d /tmp/dalgo-export.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
$P <<SQL
CREATE EXTENSION dalgo;
INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-0000000000e1', 'viewer@example.org');
INSERT INTO dalgo.organizations (id, name, slug) VALUES ('$ORG', 'Export', 'export');
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES ('$ORG', '11111111-0000-4000-8000-0000000000e1', 'viewer');
SELECT dalgo.ensure_warehouse('$ORG') \g /dev/null
CREATE TABLE $WH.big AS SELECT g AS id, md5(g::text) AS label, 'Comma, "quoted"' AS note,
	CASE WHEN g % 10 = 0 THEN NULL ELSE g * 1.5 END AS amount, date '2024-01-01' + g % 365 AS day
	FROM generate_series(1, 1000000) g;
CREATE TABLE $WH.small AS SELECT * FROM $WH.big WHERE id <= 10000;
ALTER TABLE $WH.big OWNER TO dalgo_wh_222222220000400080000000000000e0;
ALTER TABLE $WH.small OWNER TO dalgo_wh_222222220000400080000000000000e0;
SQL
mem='SELECT (regexp_match(s, $$VmHWM:\s*(\d+)$$))[1]::int / 1024 || $$ MB peak, $$ || (regexp_match(s, $$RssShmem:\s*(\d+)$$))[1]::int / 1024 || $$ MB shared$$ FROM pg_read_file($$/proc/self/status$$) s;'
viewer="BEGIN; SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e1'; SET LOCAL ROLE dalgo_authenticated;"
for form in "SELECT dalgo.export_warehouse_table('$ORG', 'TABLE')" "SELECT * FROM dalgo.export_warehouse_table('$ORG', 'TABLE', 'json')"; do
	echo "-- ${form//TABLE/...}"
	{
		echo "\\pset tuples_only on"
		for t in small big; do
			echo "$viewer"
			echo "\\echo $t"
			echo "\\timing on"
			echo "\\copy (${form//TABLE/$t}) TO '$OUT/$t.out'"
			echo "\\timing off"
			echo "COMMIT;"
			echo "$mem"
		done
	} | $P | grep -v '^$'
	echo "rows written: $(wc -l < "$OUT/big.out"), $(($(stat -c %s "$OUT/big.out") / 1048576)) MB"
done
echo "-- the server's own COPY $WH.big TO STDOUT (FORMAT csv, HEADER), for comparison"
{ echo "\\timing on"; echo "\\copy $WH.big TO '$OUT/server.csv' WITH (FORMAT csv, HEADER)"; } | $P
$P -c "\\copy (SELECT dalgo.export_warehouse_table('$ORG', 'big')) TO '$OUT/big.csv'"
cmp -s "$OUT/big.csv" "$OUT/server.csv" && echo "export_warehouse_table csv == COPY (FORMAT csv, HEADER): identical" \
	|| echo "export_warehouse_table csv and COPY differ"
