# dalgo.run_timeout cancels a scheduled run that takes too long, without
# stopping the scheduler; the setting is picked up by a reload (SIGHUP).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_timeout');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000f0', 'Timeout', 'timeout');
	SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000f0');
	CREATE VIEW public.slow_source AS SELECT g AS id FROM generate_series(1, 3) g, pg_sleep(30) s;
	CREATE VIEW public.fast_source AS SELECT g AS id FROM generate_series(1, 4) g;
	GRANT USAGE ON SCHEMA public TO dalgo_wh_222222220000400080000000000000f0;
	GRANT SELECT ON public.slow_source, public.fast_source TO dalgo_wh_222222220000400080000000000000f0;
	INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
		('33333333-0000-4000-8000-0000000000f1', '22222222-0000-4000-8000-0000000000f0', 'Slow', 'postgres', '{"relation": "public.slow_source"}', 'slow'),
		('33333333-0000-4000-8000-0000000000f2', '22222222-0000-4000-8000-0000000000f0', 'Fast', 'postgres', '{"relation": "public.fast_source"}', 'fast');
	INSERT INTO dalgo.schedules (organization_id, source_id, frequency)
		SELECT organization_id, id, 'daily' FROM dalgo.sources;
});

# A reload lowers the timeout.
$node->safe_psql('postgres', q{ALTER SYSTEM SET dalgo.run_timeout = '1s'; SELECT pg_reload_conf();});
$node->safe_psql('postgres', q{UPDATE dalgo.schedules SET next_run_at = now()});

ok($node->poll_query_until('postgres', q{SELECT count(*) = 2 FROM dalgo.sync_runs WHERE status IN ('success', 'failed')}),
	'both runs finish');
is($node->safe_psql('postgres', q{SELECT error_message FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000f1'}),
	'canceling statement due to statement timeout', 'the slow run is cancelled by dalgo.run_timeout after the reload');
is($node->safe_psql('postgres', q{SELECT (status, rows_synced)::text FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000f2'}),
	'(success,4)', 'the other run is not affected');
cmp_ok($node->safe_psql('postgres', q{SELECT extract(epoch FROM completed_at - started_at) FROM dalgo.sync_runs
	WHERE source_id = '33333333-0000-4000-8000-0000000000f1'}), '<', 10, 'the slow run was stopped long before its 30 s');
is($node->safe_psql('postgres', q{SELECT count(*) FROM dalgo.scheduler_status() WHERE worker_pid IS NOT NULL}), '1',
	'the scheduler is still running');

$node->stop;
done_testing();
