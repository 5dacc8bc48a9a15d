# export_memory_flat: dalgo.export_warehouse_table streams every row of a
# warehouse table through psql's \copy (SELECT ...) with no row cap, in flat
# memory.  1,000,000 rows (about 80 MB of CSV) go through one session whose
# peak RSS (VmHWM, read from /proc) grows by less than 16 MB over the same
# session's export of 10,000 rows; the file equals what the server's own
# COPY (FORMAT csv, HEADER) writes.  A consumer that stops early closes the
# cursor; a viewer of another organization gets nothing.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

plan skip_all => 'needs /proc/self/status' unless -r '/proc/self/status';

my $node = PostgreSQL::Test::Cluster->new('export_memory_flat');
$node->init;
# small shared buffers: the shared memory a backend touches counts in its RSS
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\nshared_buffers = 16MB\nwork_mem = 4MB\n");
$node->start;

my $org = '22222222-0000-4000-8000-0000000000e0';
my $wh = 'org_222222220000400080000000000000e0';
my $role = 'dalgo_wh_222222220000400080000000000000e0';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.users (id, email) VALUES
		('11111111-0000-4000-8000-0000000000e1', 'viewer\@example.org'),
		('11111111-0000-4000-8000-0000000000e2', 'stranger\@example.org');
	INSERT INTO dalgo.organizations (id, name, slug) VALUES
		('$org', 'Export', 'export'), ('22222222-0000-4000-8000-0000000000f0', 'Other', 'other');
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
		('$org', '11111111-0000-4000-8000-0000000000e1', 'viewer'),
		('22222222-0000-4000-8000-0000000000f0', '11111111-0000-4000-8000-0000000000e2', 'owner');
	SELECT dalgo.ensure_warehouse('$org');
	CREATE TABLE $wh.big AS SELECT g AS id, md5(g::text) AS label, 'Comma, "quoted"' AS note,
		CASE WHEN g % 10 = 0 THEN NULL ELSE g * 1.5 END AS amount, date '2024-01-01' + g % 365 AS day
		FROM generate_series(1, 1000000) g;
	CREATE TABLE $wh.small AS SELECT * FROM $wh.big WHERE id <= 10000;
	ALTER TABLE $wh.big OWNER TO $role;
	ALTER TABLE $wh.small OWNER TO $role;
});

my $dir = PostgreSQL::Test::Utils::tempdir();
my $as_viewer = "BEGIN; SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e1'; SET LOCAL ROLE dalgo_authenticated;";

# One session: the viewer exports 10,000 rows, then 1,000,000; the peak RSS
# of the backend is read after each (as a superuser: pg_read_file).
my $start = time();
my ($ret, $out, $err) = $node->psql('postgres', qq{
	$as_viewer
	\\copy (SELECT dalgo.export_warehouse_table('$org', 'small')) TO '$dir/small.csv'
	COMMIT;
	\\echo HWM_SMALL
	SELECT substring(pg_read_file('/proc/self/status') FROM 'VmHWM:\\s*([0-9]+) kB');
	$as_viewer
	\\copy (SELECT dalgo.export_warehouse_table('$org', 'big')) TO '$dir/big.csv'
	COMMIT;
	\\echo HWM_BIG
	SELECT substring(pg_read_file('/proc/self/status') FROM 'VmHWM:\\s*([0-9]+) kB');
}, on_error_stop => 1);
my $seconds = time() - $start;
is($ret, 0, 'a viewer exports both tables through \copy') or diag($err);
my ($small_kb) = $out =~ /HWM_SMALL\n(\d+)/;
my ($big_kb) = $out =~ /HWM_BIG\n(\d+)/;
my $growth_mb = (($big_kb // 1e9) - ($small_kb // 0)) / 1024;
my $big_bytes = -s "$dir/big.csv";
diag(sprintf('export of 1,000,000 rows: %.1f MB of csv in %.1f s; backend VmHWM %.1f MB after 10,000 rows, %.1f MB after 1,000,000 (+%.1f MB)',
	$big_bytes / 1048576, $seconds, ($small_kb // 0) / 1024, ($big_kb // 0) / 1024, $growth_mb));
cmp_ok($growth_mb, '<', 16, "peak backend RSS grows by less than 16 MB from 10,000 to 1,000,000 rows (+${growth_mb} MB)");
cmp_ok($big_bytes, '>', 60 * 1048576, 'the file holds every row (more than 60 MB)');

sub lines_of
{
	my ($f) = @_;
	open(my $fh, '<', $f) or die "$f: $!";
	my $n = 0;
	$n++ while <$fh>;
	close($fh);
	return $n;
}
is(lines_of("$dir/big.csv"), 1_000_001, 'a header line and 1,000,000 rows: no row cap');

# The same bytes as the server's own COPY of the table.
$node->safe_psql('postgres', "COPY $wh.big TO '$dir/server.csv' WITH (FORMAT csv, HEADER)");
is(slurp_file("$dir/big.csv"), slurp_file("$dir/server.csv"), 'the export equals COPY (FORMAT csv, HEADER) of the table');

# The FROM-clause form (materialized in a tuplestore that spills to disk) is flat too.
($ret, $out, $err) = $node->psql('postgres', qq{
	$as_viewer
	\\copy (SELECT * FROM dalgo.export_warehouse_table('$org', 'big', 'json')) TO '$dir/big.json'
	COMMIT;
	\\echo HWM_JSON
	SELECT substring(pg_read_file('/proc/self/status') FROM 'VmHWM:\\s*([0-9]+) kB');
}, on_error_stop => 1);
my ($json_kb) = $out =~ /HWM_JSON\n(\d+)/;
cmp_ok(($json_kb // 1e9) / 1024, '<', (($small_kb // 0) / 1024) + 16, 'the json export in the FROM clause stays flat too (' . (($json_kb // 0) / 1024) . ' MB)');
is(lines_of("$dir/big.json"), 1_000_000, 'one json line per row');

# A consumer that stops early: the cursor is closed, the transaction goes on.
is($node->safe_psql('postgres', qq{$as_viewer
	SELECT count(*) FROM (SELECT dalgo.export_warehouse_table('$org', 'big') LIMIT 5) x;
	SELECT count(*) FROM pg_cursors; COMMIT;}), "5\n0", 'LIMIT 5 reads five lines and leaves no cursor open');

# Another organization's owner exports nothing.
($ret, $out, $err) = $node->psql('postgres', qq{BEGIN; SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000e2'; SET LOCAL ROLE dalgo_authenticated;
	SELECT dalgo.export_warehouse_table('$org', 'small') LIMIT 1;});
like($err, qr/organization $org does not exist or you are not a member/, "another organization's owner exports nothing");

$node->stop;
done_testing();
