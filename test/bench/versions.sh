#!/usr/bin/env bash
# test/bench/versions.sh OLD_PGBIN [NEW_PGBIN]: the restructure's benchmark.
# Runs the RLS, recipe and audit benchmarks against dalgo 0.1.0 (installed
# into the PostgreSQL 15 copy at OLD_PGBIN) and against the version under
# work (NEW_PGBIN, default /usr/lib/postgresql/15/bin), alternating the two
# ROUNDS times (default 2), and prints the figures side by side.
#
# Build 0.1.0 into a copy of PostgreSQL 15, for example:
#   cp -a /usr/lib/postgresql/15 /usr/share/postgresql/15 /usr/include/postgresql into /opt/pg-old/...
#   git worktree add /tmp/dalgo-0.1.0 <the commit before "Freeze the 0.1.0 install script">
#   make -C /tmp/dalgo-0.1.0 PG_CONFIG=/opt/pg-old/usr/lib/postgresql/15/bin/pg_config install
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OLD=${1:?usage: test/bench/versions.sh OLD_PGBIN [NEW_PGBIN]}
NEW=${2:-/usr/lib/postgresql/15/bin}
ROUNDS=${ROUNDS:-2}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# One run of the three benchmarks against one installation (one cluster each).
run_one() {
	local label=$1 bin=$2 round=$3
	echo "==> round $round: $label ($bin)" >&2
	: > "$out/$label.$round"
	for name in rls recipe audit; do
		PGBIN=$bin ROUNDS=2 SECONDS_PER_RUN=5 "$HERE/run.sh" "$name" >> "$out/$label.$round" 2>&1 ||
			{ echo "$name failed against $bin:" >&2; tail -20 "$out/$label.$round" >&2; exit 1; }
	done
}

# The figures of one run: rls ratio, member ms, compile us, compiled/hand ratio, audit TPS.
figures() {
	local f=$1
	local rls member compile ratio
	rls=$(sed -n 's/.*main figure.*ratio \([0-9.]*\).*/\1/p' "$f")
	member=$(sed -n "s/.*main figure.*member \([0-9.]*\) ms.*/\1/p" "$f")
	compile=$(awk '/compile: median us per 10-step recipe/ {getline; getline; print $1; exit}' "$f")
	ratio=$(awk '/ratio compiled \/ hand-written/ {getline; getline; print $5; exit}' "$f")
	printf '%s\t%s\t%s\t%s' "${member:-?}" "${rls:-?}" "${compile:-?}" "${ratio:-?}"
	awk '/^(single-row INSERT|single-row UPDATE|INSERT \.\.\. SELECT 500 rows) / {printf "\t%s", $(NF - 1)}' "$f"
	echo
}

for r in $(seq 1 "$ROUNDS"); do
	run_one 0.1.0 "$OLD" "$r"
	run_one current "$NEW" "$r"
done

echo
echo "RLS: member count(*) ms and ratio to the superuser's filter; recipe: compile us per"
echo "10-step recipe and compiled/hand-written runtime ratio; audit: TPS ratio of the dalgo-audited"
echo "table to the unaudited one, for single-row INSERT, single-row UPDATE, INSERT ... SELECT 500 rows."
printf 'version\tround\trls_member_ms\trls_ratio\tcompile_us\trecipe_ratio\taudit_insert\taudit_update\taudit_bulk\n'
for r in $(seq 1 "$ROUNDS"); do
	for v in 0.1.0 current; do
		printf '%s\t%s\t%s\n' "$v" "$r" "$(figures "$out/$v.$r")"
	done
done
