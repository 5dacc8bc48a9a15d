# Failover: the primary dies while a scheduled run is running; the promoted
# standby's scheduler marks the interrupted run failed with a message that
# says so, loses no schedule, runs no slot twice, and runs due schedules
# within a tick of promotion.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = PostgreSQL::Test::Cluster->new('dalgo_old_primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$primary->start;
$primary->safe_psql('postgres', q{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000f0', 'Failover', 'failover');
	SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000f0');
	CREATE VIEW public.slow_source AS SELECT g AS id FROM generate_series(1, 3) g, pg_sleep(300) s;
	CREATE VIEW public.fast_source AS SELECT g AS id FROM generate_series(1, 5) g;
	GRANT USAGE ON SCHEMA public TO dalgo_wh_222222220000400080000000000000f0;
	GRANT SELECT ON public.slow_source, public.fast_source TO dalgo_wh_222222220000400080000000000000f0;
	INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
		('33333333-0000-4000-8000-0000000000f1', '22222222-0000-4000-8000-0000000000f0', 'Slow', 'postgres',
		 '{"relation": "public.slow_source"}', 'slow'),
		('33333333-0000-4000-8000-0000000000f2', '22222222-0000-4000-8000-0000000000f0', 'Fast', 'postgres',
		 '{"relation": "public.fast_source"}', 'fast');
	INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency) VALUES
		('88888888-0000-4000-8000-0000000000f1', '22222222-0000-4000-8000-0000000000f0', '33333333-0000-4000-8000-0000000000f1', 'hourly'),
		('88888888-0000-4000-8000-0000000000f2', '22222222-0000-4000-8000-0000000000f0', '33333333-0000-4000-8000-0000000000f2', 'hourly');
	UPDATE dalgo.schedules SET next_run_at = now() WHERE id = '88888888-0000-4000-8000-0000000000f1';
	UPDATE dalgo.schedules SET next_run_at = now() + interval '1 day' WHERE id = '88888888-0000-4000-8000-0000000000f2';
});
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('dalgo_new_primary');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;

ok($primary->poll_query_until('postgres', q{SELECT count(*) = 1 FROM dalgo.sync_runs WHERE status = 'running'}),
	'the slow schedule is running on the primary');
my $slot = $primary->safe_psql('postgres', q{SELECT next_run_at FROM dalgo.schedules WHERE id = '88888888-0000-4000-8000-0000000000f1'});
# The fast schedule falls due while the primary is gone.
$primary->safe_psql('postgres', q{UPDATE dalgo.schedules SET next_run_at = now() + interval '3 seconds'
	WHERE id = '88888888-0000-4000-8000-0000000000f2'});
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', q{SELECT count(*) FROM dalgo.sync_runs WHERE status = 'running'}), '1',
	'the standby has replayed the running run');

# The primary fails; the standby takes over.
$primary->stop('immediate');
$standby->promote;

ok($standby->poll_query_until('postgres', q{SELECT count(*) = 0 FROM dalgo.sync_runs WHERE status = 'running'
	AND source_id = '33333333-0000-4000-8000-0000000000f1'}), 'the new primary ends the interrupted run');
like($standby->safe_psql('postgres', q{SELECT status || ': ' || error_message FROM dalgo.sync_runs
	WHERE source_id = '33333333-0000-4000-8000-0000000000f1'}), qr/^failed: .*(restart|failover|interrupted)/,
	'as failed, with a message that says why');
ok($standby->poll_query_until('postgres', q{SELECT count(*) = 1 FROM dalgo.sync_runs
	WHERE source_id = '33333333-0000-4000-8000-0000000000f2' AND status = 'success' AND rows_synced = 5}),
	'the schedule that fell due during the failover runs on the new primary');
my $lag = $standby->safe_psql('postgres', q{SELECT extract(epoch FROM r.started_at - s.last_run_at) < 5
	FROM dalgo.sync_runs r JOIN dalgo.schedules s ON s.source_id = r.source_id
	WHERE r.source_id = '33333333-0000-4000-8000-0000000000f2'});
is($lag, 't', 'within a tick of its slot');
sleep 2;
is($standby->safe_psql('postgres', q{SELECT count(*) FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000f1'}),
	'1', 'the interrupted slot is not run a second time');
is($standby->safe_psql('postgres', q{SELECT next_run_at FROM dalgo.schedules WHERE id = '88888888-0000-4000-8000-0000000000f1'}),
	$slot, 'and its schedule keeps its next slot');
is($standby->safe_psql('postgres', q{SELECT count(*) FROM dalgo.schedules WHERE is_active AND deleted_at IS NULL
	AND next_run_at > now()}), '2', 'no schedule is lost');

$standby->stop;
done_testing();
