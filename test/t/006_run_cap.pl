# dalgo.max_concurrent_runs caps the run workers of the whole cluster: two
# databases with many due runs each never have more than that many run
# workers between them (the cap check and the claim of a run slot are one
# step under a lock), and every run still completes.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_cap');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\ndalgo.max_concurrent_runs = 2\n");
$node->start;

my $org = '22222222-0000-4000-8000-0000000000f0';
my $wh = 'dalgo_wh_222222220000400080000000000000f0';
for my $db ('one', 'two')
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, qq{
		CREATE EXTENSION dalgo;
		INSERT INTO dalgo.organizations (id, name, slug) VALUES ('$org', 'Cap', 'cap');
		SELECT dalgo.ensure_warehouse('$org');
		CREATE VIEW public.slowish AS SELECT g AS id FROM generate_series(1, 2) g, pg_sleep(0.5) s;
		GRANT USAGE ON SCHEMA public TO $wh;
		GRANT SELECT ON public.slowish TO $wh;
		INSERT INTO dalgo.sources (organization_id, name, source_type, config, warehouse_table_name)
			SELECT '$org', 'Source ' || g, 'postgres', '{"relation": "public.slowish"}', 'slowish_' || g
			FROM generate_series(1, 8) g;
		INSERT INTO dalgo.schedules (organization_id, source_id, frequency)
			SELECT organization_id, id, 'daily' FROM dalgo.sources;
	});
}

# Both databases' schedules come due at once; sample the run workers meanwhile.
$node->safe_psql('postgres', q{
	CREATE TABLE samples (n int);
	CREATE PROCEDURE sample(seconds int) LANGUAGE plpgsql AS $$
	BEGIN
		FOR i IN 1..seconds * 50 LOOP
			PERFORM pg_stat_clear_snapshot();
			INSERT INTO samples SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'dalgo run';
			COMMIT;
			EXIT WHEN i > 100 AND (SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'dalgo run');
			PERFORM pg_sleep(0.02);
		END LOOP;
	END $$;
});
$node->safe_psql($_, q{UPDATE dalgo.schedules SET next_run_at = now()}) for ('one', 'two');
$node->safe_psql('postgres', q{CALL sample(30)});

my $max = $node->safe_psql('postgres', q{SELECT max(n) FROM samples});
my $count = $node->safe_psql('postgres', q{SELECT count(*) FROM samples});
cmp_ok($count, '>', 100, "the run workers were sampled ($count samples)");
is($max, '2', 'at most dalgo.max_concurrent_runs = 2 run workers in the cluster, and the cap is used');
for my $db ('one', 'two')
{
	ok($node->poll_query_until($db, q{SELECT count(*) = 8 FROM dalgo.sync_runs WHERE status = 'success'}),
		"every run of database $db completes");
}
is($node->safe_psql('one', q{SELECT sum(running) FROM dalgo.scheduler_status()}), '0', 'no run slot is left claimed');

$node->stop;
done_testing();
