# A run worker that ends without recording its run (terminated, or exiting
# abnormally) must not leave the run "running" forever: the scheduler fails
# it within a few ticks, without any restart, and the schedule's next run
# proceeds instead of being skipped.  A live worker's run is left alone, and
# a reused pid does not keep a dead run alive.  A connector that claims a run
# and never completes it is timed out by dalgo.run_timeout.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_terminated');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;

my $org = '22222222-0000-4000-8000-0000000000e0';
my $wh = 'dalgo_wh_222222220000400080000000000000e0';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('$org', 'Terminated', 'terminated');
	SELECT dalgo.ensure_warehouse('$org');
	CREATE VIEW public.slow_source AS SELECT g AS id FROM generate_series(1, 3) g, pg_sleep(300) s;
	GRANT USAGE ON SCHEMA public TO $wh;
	GRANT SELECT ON public.slow_source TO $wh;
	INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
		('33333333-0000-4000-8000-0000000000e1', '$org', 'Slow', 'postgres', '{"relation": "public.slow_source"}', 'slow'),
		('33333333-0000-4000-8000-0000000000e2', '$org', 'Sheet', 'google_sheets', '{"connector": true}', NULL);
	INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency)
		VALUES ('88888888-0000-4000-8000-0000000000e1', '$org', '33333333-0000-4000-8000-0000000000e1', 'hourly');
	UPDATE dalgo.schedules SET next_run_at = now();
});

my $postmaster_start = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM dalgo.sync_runs WHERE status = 'running'}),
	'the scheduled run starts');
my $pid = $node->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'dalgo run'});
like($pid, qr/^\d+$/, 'a run worker executes it');
sleep 3;
is($node->safe_psql('postgres', q{SELECT status FROM dalgo.sync_runs}), 'running',
	'while its worker lives, the run stays running across ticks');

# The worker is terminated (SIGTERM: no crash, no restart of the cluster).
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"), 't', 'the run worker is terminated');
my $t0 = time;
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM dalgo.sync_runs WHERE status = 'failed'
	AND error_message LIKE 'the run''s worker ended while the run was in progress%'}),
	'the run is marked failed');
cmp_ok(time - $t0, '<', 10, 'within a few ticks');
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $postmaster_start, 'without a restart');

# The schedule carries on: its next run is not skipped.
$node->safe_psql('postgres', q{
	CREATE OR REPLACE VIEW public.slow_source AS SELECT g AS id FROM generate_series(1, 3) g, (SELECT 1) s;
	UPDATE dalgo.schedules SET next_run_at = now();
});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM dalgo.sync_runs WHERE status = 'success' AND rows_synced = 3}),
	'the next run proceeds and succeeds');
is($node->safe_psql('postgres', q{SELECT count(*) FROM dalgo.sync_runs WHERE details ? 'skipped'}), '0', 'nothing was skipped');

# A reused pid: the run names a live backend's pid, but that backend started after the run did.
my $other = $node->background_psql('postgres');
my $other_pid = $other->query_safe('SELECT pg_backend_pid()');
$node->safe_psql('postgres', qq{
	INSERT INTO dalgo.sync_runs (organization_id, source_id, status, started_at, details)
		VALUES ('$org', '33333333-0000-4000-8000-0000000000e1', 'running', now() - interval '1 hour',
				jsonb_build_object('schedule_id', '88888888-0000-4000-8000-0000000000e1', 'runner_pid', $other_pid));
});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM dalgo.sync_runs WHERE status = 'running'}),
	'a run whose pid now belongs to a younger backend is failed too');
$other->quit;

# A connector claims a run and goes away: dalgo.run_timeout fails it.
$node->safe_psql('postgres', q{ALTER SYSTEM SET dalgo.run_timeout = '2s'; SELECT pg_reload_conf();});
$node->safe_psql('postgres', qq{
	INSERT INTO dalgo.sync_runs (organization_id, source_id, status, details)
		VALUES ('$org', '33333333-0000-4000-8000-0000000000e2', 'pending', '{}');
	SELECT id FROM dalgo.claim_sync_run();
});
is($node->safe_psql('postgres', q{SELECT status FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000e2'}),
	'running', 'a connector claimed a run');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000e2'
	AND status = 'failed' AND error_message = 'the connector did not complete the run within 2 seconds of claiming it'}),
	'the stalled connector run is failed after dalgo.run_timeout');

$node->stop;
done_testing();
