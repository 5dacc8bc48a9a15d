# Crash recovery of scheduled runs: a run interrupted by a crashed run worker
# (kill -9, so the postmaster restarts every backend) or by an immediate
# shutdown is marked failed when the scheduler starts again, and the schedule
# carries on.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_crash');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\nrestart_after_crash = on\n");
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000e0', 'Crash', 'crash');
	SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000e0');
	CREATE VIEW public.slow_source AS SELECT g AS id FROM generate_series(1, 3) g, pg_sleep(300) s;
	GRANT USAGE ON SCHEMA public TO dalgo_wh_222222220000400080000000000000e0;
	GRANT SELECT ON public.slow_source TO dalgo_wh_222222220000400080000000000000e0;
	INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name)
		VALUES ('33333333-0000-4000-8000-0000000000e1', '22222222-0000-4000-8000-0000000000e0', 'Slow', 'postgres',
				'{"relation": "public.slow_source"}', 'slow');
	INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency)
		VALUES ('88888888-0000-4000-8000-0000000000e1', '22222222-0000-4000-8000-0000000000e0',
				'33333333-0000-4000-8000-0000000000e1', 'hourly');
	UPDATE dalgo.schedules SET next_run_at = now();
});

my $running = q{SELECT count(*) = 1 FROM dalgo.sync_runs WHERE status = 'running'};
my $restarted = q{SELECT count(*) FROM dalgo.sync_runs WHERE status = 'failed'
	AND error_message = 'the run''s worker ended while the run was in progress (a restart, a crash or a terminated worker)'};

# 1. A run worker dies hard in the middle of its run.
ok($node->poll_query_until('postgres', $running), 'the scheduled run starts and is marked running');
my $pid = $node->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'dalgo run'});
ok($pid =~ /^\d+$/, 'a dalgo run worker executes it');
kill 'KILL', $pid;
ok($node->poll_query_until('postgres', "$restarted", '1'), 'after the crash-restart the run is marked failed');

# 2. The whole server stops immediately in the middle of a run.
$node->safe_psql('postgres', q{UPDATE dalgo.schedules SET next_run_at = now()});
ok($node->poll_query_until('postgres', $running), 'the next run starts');
$node->stop('immediate');
$node->start;
ok($node->poll_query_until('postgres', "$restarted", '2'), 'after an immediate stop and restart it is marked failed too');
is($node->safe_psql('postgres', q{SELECT count(*) FROM dalgo.sync_runs WHERE status = 'running'}), '0', 'nothing is left running');

# 3. The schedule carries on.
$node->safe_psql('postgres', q{
	CREATE OR REPLACE VIEW public.slow_source AS SELECT g AS id FROM generate_series(1, 3) g, (SELECT 1) s;
	UPDATE dalgo.schedules SET next_run_at = now();
});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM dalgo.sync_runs WHERE status = 'success' AND rows_synced = 3}),
	'the schedule runs again and succeeds');
is($node->safe_psql('postgres', q{SELECT next_run_at > now() FROM dalgo.schedules}), 't', 'and its next slot is ahead');
like($node->safe_psql('postgres', q{SELECT application_name FROM pg_stat_activity WHERE backend_type = 'dalgo scheduler'}),
	qr/dalgo scheduler/, 'the scheduler shows in pg_stat_activity');

$node->stop;
done_testing();
