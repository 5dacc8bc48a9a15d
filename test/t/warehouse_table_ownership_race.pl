# Warehouse table names under concurrency: two transactions that claim one
# table name for two producers cannot both win, at REPEATABLE READ too (the
# check waits for the organization's name lock and reads the latest committed
# rows, not the transaction's snapshot).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_names');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000e0', 'Race', 'race');
	SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000e0');
	CREATE TABLE org_222222220000400080000000000000e0.base (n int);
	ALTER TABLE org_222222220000400080000000000000e0.base OWNER TO dalgo_wh_222222220000400080000000000000e0;
	INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name) VALUES
		('55555555-0000-4000-8000-0000000000e1', '22222222-0000-4000-8000-0000000000e0', 'T',
		 '{"version": 1, "source": {"table": "base"}, "steps": []}', 't_out');
});

# 1. The other claim committed after our snapshot was taken.
my $s1 = $node->background_psql('postgres', on_error_stop => 0);
$s1->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
$s1->query_safe('SELECT count(*) FROM dalgo.sources');
$node->safe_psql('postgres', q{INSERT INTO dalgo.sources (organization_id, name, source_type, warehouse_table_name)
	VALUES ('22222222-0000-4000-8000-0000000000e0', 'S1', 'google_sheets', 'shared1')});
$s1->{stderr} = '';
$s1->query(q{UPDATE dalgo.transformations SET output_table_name = 'shared1' WHERE id = '55555555-0000-4000-8000-0000000000e1'});
like($s1->{stderr}, qr/warehouse table "shared1" already belongs to source "S1"/,
	'a claim committed after a REPEATABLE READ snapshot is seen');
$s1->query('ROLLBACK');
$s1->{stderr} = '';

# 2. The other claim is still in flight: the second waits for it, then loses.
$s1->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
$s1->query_safe(q{INSERT INTO dalgo.sources (organization_id, name, source_type, warehouse_table_name)
	VALUES ('22222222-0000-4000-8000-0000000000e0', 'S2', 'google_sheets', 'shared2')});
my $s2 = $node->background_psql('postgres', on_error_stop => 0);
$s2->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
$s2->query_safe('SELECT count(*) FROM dalgo.sources');
$s2->{stderr} = '';
$s2->query_until(qr/sent/, qq{\\echo sent\nUPDATE dalgo.transformations SET output_table_name = 'shared2' WHERE id = '55555555-0000-4000-8000-0000000000e1';\n});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted}),
	"the second claim waits for the organization's name lock");
$s1->query_safe('COMMIT');
$s2->query('SELECT 1');
like($s2->{stderr}, qr/warehouse table "shared2" already belongs to source "S2"/,
	'and then loses to the claim that committed first');
$s2->query('ROLLBACK');
$s2->{stderr} = '';
is($node->safe_psql('postgres', q{SELECT output_table_name FROM dalgo.transformations WHERE id = '55555555-0000-4000-8000-0000000000e1'}),
	't_out', 'the transformation keeps its own table');

$s1->quit;
$s2->quit;
$node->stop;
done_testing();
