#!/usr/bin/env bash
# test/citus/suite.sh: the checks of suite.sql on the coordinator, and the
# logins the workers refuse.  Called by run.sh (PGBIN, COORD, W1, W2 set).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$("$PGBIN/psql" -X -q -h 127.0.0.1 -p "$COORD" -U postgres -d dalgo -f "$HERE/suite.sql" 2>&1)
rc=$?
# Logins: an end user's role, or the app's roles without their password,
# cannot reach a worker; postgres over TCP is trusted only for this test.
login() { PGPASSWORD=${2:-} PGCONNECT_TIMEOUT=5 "$PGBIN/psql" -X -q -w -h 127.0.0.1 -p "$W1" -U "$1" -d dalgo -c 'SELECT 1' >/dev/null 2>&1; }
"$PGBIN/psql" -X -q -h 127.0.0.1 -p "$COORD" -U postgres -d dalgo -c "CREATE ROLE end_user LOGIN PASSWORD 'x'" >/dev/null 2>&1
if login end_user x; then out+=$'\nnot ok - an end user logs in on a worker'; else out+=$'\nok - an end user cannot log in on a worker'; fi
if login dalgo_authenticated; then out+=$'\nnot ok - dalgo_authenticated logs in on a worker without its password'
else out+=$'\nok - dalgo_authenticated needs its password on a worker'; fi
if login dalgo_anon; then out+=$'\nnot ok - dalgo_anon logs in on a worker'; else out+=$'\nok - dalgo_anon cannot log in on a worker'; fi
if PGCONNECT_TIMEOUT=5 "$PGBIN/psql" -X -q -w -h 127.0.0.1 -p "$COORD" -U dalgo_authenticated -d dalgo -c 'SELECT 1' >/dev/null 2>&1; then
	out+=$'\nnot ok - dalgo_authenticated logs in on the coordinator'
else out+=$'\nok - dalgo_authenticated cannot log in on the coordinator'; fi
echo "$out" | grep -v '^\s*$' | sed 's/^ *//'
pass=$(echo "$out" | grep -c '^ *ok - ')
fail=$(echo "$out" | grep '^ *not ok - ' | grep -vc '# TODO')
todo=$(echo "$out" | grep '^ *not ok - ' | grep -c '# TODO')
[ $rc -eq 0 ] || fail=$((fail + 1))
echo "citus suite: $pass passed, $fail failed, $todo known gaps (# TODO)"
exit $fail
