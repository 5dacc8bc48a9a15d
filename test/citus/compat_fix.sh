#!/bin/sh
# The one compatibility fix Citus 13.2.2 needs against PostgreSQL 15.18 and
# later: the server now declares have_createdb_privilege() itself
# (commands/dbcommands.h), and Citus's compatibility header defines a static
# inline function of the same name for servers older than 16, which no longer
# compiles ("static declaration follows non-static declaration").  When the
# server declares the function, remove Citus's copy and include the server's
# declaration instead.  Idempotent; edits the Citus tree given as $1.
# Usage: compat_fix.sh CITUS_SRC PG_CONFIG
set -eu
src=$1
pg_config=$2
hdr="$src/src/include/pg_version_compat.h"
[ -f "$hdr" ] || { echo "compat_fix: $hdr not found (not a Citus source tree?)" >&2; exit 1; }
server_hdr="$("$pg_config" --includedir-server)/commands/dbcommands.h"
if ! grep -q 'have_createdb_privilege' "$server_hdr"; then
	echo "compat_fix: the server does not declare have_createdb_privilege; nothing to do"
	exit 0
fi
if ! grep -q '^have_createdb_privilege(void)' "$hdr"; then
	echo "compat_fix: already applied (or not needed by this Citus version)"
	exit 0
fi
perl -0pi -e 's/static inline bool\nhave_createdb_privilege\(void\)\n\{.*?\n\}\n/#include "commands\/dbcommands.h"\t\/* dalgo compat fix: declared by the server since 15.18 *\/\n/s' "$hdr"
grep -q '^have_createdb_privilege(void)' "$hdr" && { echo "compat_fix: could not patch $hdr" >&2; exit 1; }
echo "compat_fix: $hdr now uses the server's have_createdb_privilege()"
