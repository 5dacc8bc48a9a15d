# recipe_memory: a preview's backend memory stays flat whatever the recipe
# asks for.  Peak RSS (VmHWM of the backend, read from /proc) stays under
# 200 MB while a preview returns 360 MB of rows (streamed through a cursor,
# spilled to disk past work_mem), when dalgo.max_result_bytes refuses a large
# result, and when a recipe tries to build huge values.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

plan skip_all => 'needs /proc/self/status' unless -r '/proc/self/status';

my $node = PostgreSQL::Test::Cluster->new('recipe_memory');
$node->init;
# small shared buffers: the shared memory a backend touches counts in its RSS
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\nshared_buffers = 16MB\nwork_mem = 4MB\n");
$node->start;

my $org = '22222222-0000-4000-8000-0000000000d0';
my $wh = 'org_222222220000400080000000000000d0';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('$org', 'Memory', 'memory');
	SELECT dalgo.ensure_warehouse('$org');
	CREATE TABLE $wh.t AS SELECT g AS id, 'row ' || g AS name FROM generate_series(1, 1000) g;
	ALTER TABLE $wh.t OWNER TO dalgo_wh_222222220000400080000000000000d0;
});

# Twenty columns of 60,000 characters: 1.2 MB a row, 360 MB for 300 rows.
my $wide_rows = qq{jsonb_build_object('version', 1, 'source', '{"table": "t"}'::jsonb, 'steps',
	(SELECT jsonb_agg(jsonb_build_object('type', 'function', 'fn', 'lpad', 'args',
		jsonb_build_array(jsonb_build_object('col', 'name'), jsonb_build_object('val', 60000)), 'as', 'p' || g)) FROM generate_series(1, 20) g))};
# The issue's attack: each step doubles a value (2 KB of recipe, ~200 MB rows on 0.1.0).
my $doubling = qq{jsonb_build_object('version', 1, 'source', '{"table": "t"}'::jsonb, 'steps',
	(SELECT jsonb_agg(jsonb_build_object('type', 'concat', 'parts',
		jsonb_build_array(jsonb_build_object('col', CASE WHEN g = 1 THEN 'name' ELSE 'c' || (g - 1) END),
						  jsonb_build_object('col', CASE WHEN g = 1 THEN 'name' ELSE 'c' || (g - 1) END)), 'as', 'c' || g) ORDER BY g)
	 FROM generate_series(1, 28) g))};

# Run sql in one session, then read that backend's peak RSS in MB.
sub peak_rss_mb
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', qq{
		$sql;
		\\echo VmHWM
		SELECT substring(pg_read_file('/proc/self/status') FROM 'VmHWM:\\s*([0-9]+) kB');
	}, on_error_stop => 0);
	my ($kb) = $out =~ /VmHWM\n(\d+)/;
	# no figure (the session died) counts as over the bound
	return (defined $kb ? $kb / 1024 : 9999, $out, $err);
}

my ($mb, $out, $err) = peak_rss_mb(qq{SET dalgo.max_result_bytes = '1GB';
	SELECT count(*), sum(length(x::text)) > 350000000 FROM dalgo.preview_recipe('$org', $wide_rows, 300) x});
like($out, qr/^300\|t$/m, 'a preview of 300 rows of 1.2 MB returns them all (360 MB) when dalgo.max_result_bytes allows it');
cmp_ok($mb, '<', 200, "peak backend RSS stays under 200 MB while it streams 360 MB (${mb} MB)");

($mb, $out, $err) = peak_rss_mb(qq{SELECT count(*) FROM dalgo.preview_recipe('$org', $wide_rows, 300) x});
like($err, qr/the result is larger than dalgo.max_result_bytes = 67108864 bytes/, 'the default dalgo.max_result_bytes refuses the 360 MB result');
cmp_ok($mb, '<', 200, "peak backend RSS stays under 200 MB (${mb} MB)");

($mb, $out, $err) = peak_rss_mb(qq{SELECT count(*) FROM dalgo.read_warehouse_table('$org', 't', 10000) x});
like($out, qr/^1000$/m, 'read_warehouse_table streams a whole table');
cmp_ok($mb, '<', 200, "peak backend RSS stays under 200 MB (${mb} MB)");

($mb, $out, $err) = peak_rss_mb(qq{SELECT count(*) FROM dalgo.preview_recipe('$org', $doubling, 40) x});
like($err, qr/recipe value too large: concat would build \d+ bytes, over the limit max_value_bytes = 65536/,
	'a recipe that doubles a value at each step is stopped at max_value_bytes');
cmp_ok($mb, '<', 200, "peak backend RSS stays under 200 MB (${mb} MB)");

$node->stop;
done_testing();
