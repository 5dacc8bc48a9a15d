# audit_memory_bound: auditing a 40,000-row UPDATE of 3 KB rows, where
# nearly every row is unchanged, keeps the backend's memory flat.  The
# per-row memory of the audit trigger is reset after every row, and only the
# rows waiting to be written are kept (0.1.0 held every unchanged row's
# leftovers until 1,000 changed rows were queued: about 500 MB here).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_audit_memory');
$node->init;
# Small shared buffers: the resident set then measures the backend's own memory.
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\nshared_buffers = 16MB\n");
$node->start;

my $rows = 40000;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION dalgo;
	CREATE FUNCTION public.vm_hwm_kb() RETURNS bigint LANGUAGE sql AS \$\$
		SELECT substring(pg_read_file('/proc/' || pg_backend_pid() || '/status') FROM 'VmHWM:\\s*(\\d+) kB')::bigint \$\$;
	-- payload: 3 KB of random hex, stored out of line; note: 3 KB that compresses, stored inline.
	CREATE TABLE public.wide (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), organization_id uuid, n int,
		payload text, note text);
	INSERT INTO public.wide (organization_id, n, payload, note)
		SELECT '22222222-0000-4000-8000-0000000000a0', g,
			(SELECT string_agg(md5(g::text || ':' || i), '') FROM generate_series(1, 96) i),
			repeat(md5(g::text), 94)
		FROM generate_series(1, $rows) g;
	SELECT dalgo.enable_audit('public.wide');
});
is($node->safe_psql('postgres', q{SELECT pg_column_size(note) < 1000 AND pg_column_size(payload) >= 3000 FROM public.wide LIMIT 1}), 't',
	'the rows are 3 KB: one toasted column, one compressed inline');

# Peak resident memory growth (kB) of one backend over one UPDATE.
sub update_growth
{
	my ($set) = @_;
	my $out = $node->safe_psql('postgres', qq{
		SELECT count(*) FROM public.wide;
		SELECT public.vm_hwm_kb() AS before \\gset
		UPDATE public.wide SET $set;
		SELECT public.vm_hwm_kb() - :before});
	my @lines = split /\n/, $out;
	return $lines[-1];
}

my $start = $node->safe_psql('postgres', q{SELECT count(*) FROM dalgo.audit_logs WHERE resource_type = 'public.wide'});
my $kb = update_growth(q{n = n + (n % 1000 = 0)::int});
note("40,000-row UPDATE, 40 rows changed: peak memory grew by $kb kB");
cmp_ok($kb, '<', 100 * 1024, "mostly unchanged rows: peak memory grows by less than 100 MB (grew $kb kB)");
is($node->safe_psql('postgres', q{SELECT count(*) FROM dalgo.audit_logs WHERE resource_type = 'public.wide'}) - $start, 40,
	'and exactly the 40 changed rows are audited');

$kb = update_growth(q{n = n + 1});
note("40,000-row UPDATE, every row changed: peak memory grew by $kb kB");
cmp_ok($kb, '<', 100 * 1024, "every row changed: peak memory grows by less than 100 MB (grew $kb kB)");
is($node->safe_psql('postgres', q{SELECT count(*) FROM dalgo.audit_logs WHERE resource_type = 'public.wide'}) - $start, 40 + $rows,
	'and every changed row is audited');

$kb = update_growth(q{note = note || 'x' WHERE n % 2 = 0});
note("20,000-row UPDATE of the 3 KB column: peak memory grew by $kb kB");
cmp_ok($kb, '<', 100 * 1024, "3 KB diffs: peak memory grows by less than 100 MB (grew $kb kB)");

$node->stop;
done_testing();
