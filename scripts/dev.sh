#!/usr/bin/env bash
# scripts/dev.sh: the two commands of the README.
#
#   scripts/dev.sh demo   install what is missing, build, install, start a
#                         throwaway cluster under .demo/ with dalgo preloaded
#                         and sample data loaded; prints how to connect
#   scripts/dev.sh test   install what is missing, build, install, run the
#                         whole suite (pg_regress + pgTAP + TAP) on temporary
#                         instances; ends with "N passed, N failed"
#   scripts/dev.sh sanitize
#                         build dalgo with AddressSanitizer and UBSan and run
#                         the whole suite with the sanitizer runtime preloaded
#                         into the servers; fails on any sanitizer report
#   scripts/dev.sh stop   stop the demo cluster
#   scripts/dev.sh reference
#                         regenerate docs/reference.md from a fresh install
#
# PostgreSQL refuses to run as root, so when invoked as root the clusters
# run as the "postgres" OS user.
set -euo pipefail

PGVER=15
# PGBIN may point at another (relocated) copy of PostgreSQL 15, so that
# several checkouts can build and test side by side.
PGBIN=${PGBIN:-/usr/lib/postgresql/$PGVER/bin}
export PG_CONFIG=$PGBIN/pg_config
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PACKAGES=(postgresql-$PGVER postgresql-server-dev-$PGVER postgresql-$PGVER-pgtap
		  libipc-run-perl make gcc rsync libcurl4-openssl-dev python3)

log() { printf '==> %s\n' "$*" >&2; }

# Install the Debian packages the build and the tests need, if any is missing.
ensure_packages() {
	local missing=()
	for p in "${PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing ${missing[*]}"
	local sudo=()
	[ "$(id -u)" -eq 0 ] || sudo=(sudo)
	"${sudo[@]}" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Build the extension and install it into the server's directories.
build_install() {
	log "building dalgo"
	make -C "$ROOT" -s -j"$(nproc)"
	local sudo=()
	[ "$(id -u)" -eq 0 ] || [ -w "$($PG_CONFIG --pkglibdir)" ] || sudo=(sudo)
	"${sudo[@]}" make -C "$ROOT" -s install >/dev/null
}

# Run a command as the cluster owner: postgres when we are root, else ourselves.
as_owner() {
	if [ "$(id -u)" -eq 0 ]; then
		su postgres -s /bin/bash -c "$(printf '%q ' "$@")"
	else
		"$@"
	fi
}

# Print the first free TCP port at or above $1 on the loopback interface.
free_port() {
	local p=$1
	while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
	echo "$p"
}

# Copy the tree to a scratch directory the cluster owner can write in.
scratch_copy() {
	local dir
	dir=$(mktemp -d /tmp/dalgo-test.XXXXXX)
	rsync -a --exclude .git --exclude .demo --exclude results --exclude 'tmp_check*' "$ROOT"/ "$dir"/
	[ "$(id -u)" -eq 0 ] && chown -R postgres: "$dir"
	chmod 755 "$dir"
	echo "$dir"
}

# The code must also compile warning-free with clang (the server headers need
# -Wno-ignored-attributes there); builds in a scratch copy.
clang_check() {
	local cc dir
	cc=$(command -v clang-14 || command -v clang || true)
	[ -n "$cc" ] || { log "clang not found; skipping the clang build"; return 0; }
	dir=$(mktemp -d /tmp/dalgo-clang.XXXXXX)
	rsync -a --exclude .git --exclude .demo --exclude '*.o' --exclude '*.so' --exclude '*.bc' "$ROOT"/ "$dir"/
	log "building with $(basename "$cc")"
	make -C "$dir" -s -j"$(nproc)" CC="$cc" CFLAGS="-O2 -g -fPIC -Wno-ignored-attributes" with_llvm=no >/dev/null
	rm -rf "$dir"
}

cmd_test() {
	ensure_packages
	build_install
	clang_check
	local dir out rc=0
	dir=$(scratch_copy)
	out=$dir/test-output.txt
	log "running the suite in $dir"
	as_owner make -C "$dir" -s installcheck PG_CONFIG="$PG_CONFIG" > >(tee "$out") 2>&1 || rc=$?
	sleep 0.2
	if [ -s "$dir/regression.diffs" ]; then
		log "differences (also in $dir/regression.diffs):"
		cat "$dir/regression.diffs"
	fi
	local passed failed
	# pg_regress: one "ok"/"FAILED" line per test; prove: "Files=N, Tests=M" plus failures.
	passed=$(grep -cE '^(ok|test) .*\.\.\. ok|^ok [0-9]+ +[-+] ' "$out" || true)
	failed=$(grep -cE '\.\.\. FAILED|^not ok [0-9]+ +[-+] ' "$out" || true)
	local tap_ok tap_bad
	tap_ok=$(grep -E '^t/.*\.pl \.+ ok|^test/t/.*\.pl \.+ ok' "$out" | wc -l || true)
	tap_bad=$(grep -E '\.pl \.+ (Failed|Dubious)|\.pl \.+ *$' "$out" | wc -l || true)
	passed=$((passed + tap_ok))
	failed=$((failed + tap_bad))
	[ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1
	echo "$passed passed, $failed failed"
	[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]
}

# The sanitizer build: dalgo instrumented, PostgreSQL not.  dalgo.so is
# linked against gcc's libasan and libubsan, which load with it into every
# server process (verify_asan_link_order=0 lets the ASan runtime come in by
# dlopen).  Preloading libasan (LD_PRELOAD) is what ASan wants, but with
# Debian 12's glibc 2.36 and libasan8 it deadlocks every PostgreSQL program
# at start-up (psql, initdb and postgres hang in glibc's locale locks).
# Without the preload ASan cannot intercept siglongjmp, so every ERROR that
# leaves dalgo's frames leaves their stack redzones poisoned and the next
# call reports a false stack-buffer-overflow: stack instrumentation is
# therefore off (asan-stack=0).  What is checked: every undefined behaviour
# UBSan knows (bounds, overflow, shifts, alignment, null, object size), and
# ASan's global-buffer overflows.  Heap checks would need the preload too
# (dalgo allocates with palloc, which ASan does not see either way).  A
# report aborts the process and leaves a file in the log directory, or a
# "runtime error" line in the server log.
SANITIZE_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all --param asan-stack=0"

# Print the sanitizer reports of a finished run: report files, and lines in
# the server logs and the suite's output.
sanitizer_reports() {
	local dir=$1
	find "$dir/sanitizer" -type f -size +0 -print -exec cat {} \; 2>/dev/null || true
	grep -rlE 'runtime error|ERROR: AddressSanitizer|terminated by signal 6' \
		"$dir/test-output.txt" "$dir/tmp_check_regress/log" "$dir/tmp_check/log" 2>/dev/null |
		while read -r f; do
			echo "$f:"
			grep -E 'runtime error|AddressSanitizer|terminated by signal 6' "$f"
		done || true
}

cmd_sanitize() {
	ensure_packages
	local asan dir out rc=0 start reports sudo=()
	asan=$(readlink -f "$(gcc -print-file-name=libasan.so)")
	[ -f "$asan" ] || { log "gcc's AddressSanitizer runtime (libasan, with gcc) is missing"; return 1; }
	start=$(date +%s)
	dir=$(scratch_copy)
	out=$dir/test-output.txt
	log "building dalgo with $SANITIZE_FLAGS in $dir"
	make -C "$dir" -s clean >/dev/null
	make -C "$dir" -s -j"$(nproc)" CC=gcc COPT="$SANITIZE_FLAGS" with_llvm=no
	[ "$(id -u)" -eq 0 ] || [ -w "$($PG_CONFIG --pkglibdir)" ] || sudo=(sudo)
	"${sudo[@]}" make -C "$dir" -s install with_llvm=no >/dev/null
	mkdir -p "$dir/sanitizer"
	[ "$(id -u)" -eq 0 ] && chown -R postgres: "$dir"
	log "running the suite with the sanitizer runtime ($asan) in every server; reports go to $dir/sanitizer"
	as_owner env ASAN_OPTIONS="verify_asan_link_order=0:detect_leaks=0:abort_on_error=1:log_path=$dir/sanitizer/asan" \
		UBSAN_OPTIONS="print_stacktrace=1:abort_on_error=1:log_path=$dir/sanitizer/ubsan" \
		make -C "$dir" -s installcheck PG_CONFIG="$PG_CONFIG" > >(tee "$out") 2>&1 || rc=$?
	sleep 0.2
	[ -s "$dir/regression.diffs" ] && { log "differences:"; cat "$dir/regression.diffs"; }
	reports=$(sanitizer_reports "$dir")
	log "sanitizer run took $(( $(date +%s) - start )) s"
	if [ -n "$reports" ]; then
		log "sanitizer reports:"
		printf '%s\n' "$reports"
		rc=1
	fi
	# The instrumented library needs the sanitizer options to load: put the
	# normal build back.
	build_install
	[ "$rc" -eq 0 ] && log "sanitizer run clean" || log "sanitizer run FAILED (see $dir)"
	return "$rc"
}

DEMO=$ROOT/.demo

# The demo cluster lives under .demo/; when the owner cannot reach the
# checkout (a home directory closed to others), .demo links to /tmp.
demo_datadir() {
	if [ ! -e "$DEMO" ]; then
		if [ "$(id -u)" -eq 0 ] && ! su postgres -s /bin/bash -c "test -x $(printf %q "$ROOT")"; then
			ln -s "$(mktemp -d /tmp/dalgo-demo.XXXXXX)" "$DEMO"
		else
			mkdir -p "$DEMO"
		fi
	fi
	[ "$(id -u)" -eq 0 ] && chown -R postgres: "$(readlink -f "$DEMO")"
	echo "$(readlink -f "$DEMO")"
}

cmd_demo() {
	ensure_packages
	build_install
	local dir port
	dir=$(demo_datadir)
	if [ -f "$dir/port" ] && as_owner "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
		port=$(cat "$dir/port")
		log "demo cluster already running on port $port"
	else
		rm -rf "$dir/data"
		port=$(free_port 54330)
		as_owner "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust --no-instructions >/dev/null
		# The test settings, with the daily maintenance back on (the suite turns it off).
		as_owner bash -c "cat '$ROOT/test/postgresql.conf' >> '$dir/data/postgresql.conf'
			echo 'dalgo.maintenance_interval = 86400' >> '$dir/data/postgresql.conf'; echo $port > '$dir/port'"
		as_owner "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
			-o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
		as_owner "$PGBIN/psql" -q -X -h "$dir" -p "$port" -U postgres -d postgres \
			-v ON_ERROR_STOP=1 -f "$ROOT/test/fixtures/demo.sql"
	fi
	cat <<EOT

dalgo demo cluster is running (data in $dir/data, log in $dir/server.log).
Connect with:

    psql -h 127.0.0.1 -p $port -U postgres -d dalgo_demo

Try:  \\dt dalgo.*
      SELECT * FROM dalgo.read_warehouse_table('00000000-0000-4000-b000-000000000001', 'totals');
Stop: scripts/dev.sh stop
EOT
}

cmd_stop() {
	local dir
	dir=$(readlink -f "$DEMO" 2>/dev/null || true)
	[ -n "$dir" ] && [ -d "$dir/data" ] || { log "no demo cluster"; return 0; }
	as_owner "$PGBIN/pg_ctl" -D "$dir/data" -m fast stop || true
}

# Regenerate docs/reference.md from the catalog of a fresh install.
cmd_reference() {
	ensure_packages
	build_install
	local dir port
	dir=$(mktemp -d /tmp/dalgo-ref.XXXXXX)
	[ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
	port=$(free_port 54400)
	as_owner "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust --no-instructions >/dev/null
	as_owner bash -c "cat '$ROOT/test/postgresql.conf' >> '$dir/data/postgresql.conf'"
	as_owner "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
		-o "-p $port -k $dir -c listen_addresses=''" start >/dev/null
	as_owner "$PGBIN/psql" -q -X -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
		-c 'CREATE EXTENSION dalgo' >/dev/null
	as_owner "$PGBIN/psql" -q -X -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
		-f - < "$ROOT/scripts/reference.sql" > "$ROOT/docs/reference.md"
	as_owner "$PGBIN/pg_ctl" -D "$dir/data" -m fast stop >/dev/null
	rm -rf "$dir"
	log "wrote docs/reference.md"
}

case "${1:-}" in
	test) cmd_test ;;
	demo) cmd_demo ;;
	sanitize) cmd_sanitize ;;
	stop) cmd_stop ;;
	reference) cmd_reference ;;
	*) echo "usage: scripts/dev.sh demo|test|sanitize|stop|reference" >&2; exit 2 ;;
esac
