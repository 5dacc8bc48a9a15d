# notify_payload_leak: anyone can LISTEN dalgo_sync (PostgreSQL cannot
# restrict LISTEN), dalgo_anon included, so the notification that wakes the
# connectors carries nothing that identifies a tenant: its payload is empty,
# and a connector learns the work from claim_sync_run().
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_notify');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION dalgo;
	CREATE ROLE anon_login LOGIN NOINHERIT;
	GRANT dalgo_anon TO anon_login;
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000e0', 'Notify', 'notify');
	INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
		('33333333-0000-4000-8000-0000000000e1', '22222222-0000-4000-8000-0000000000e0', 'Sheet', 'google_sheets',
		 '{"connector": true}', 'sheet');
	INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency) VALUES
		('88888888-0000-4000-8000-0000000000e1', '22222222-0000-4000-8000-0000000000e0', '33333333-0000-4000-8000-0000000000e1', 'daily');
});

# An unauthenticated client listens.
my $listener = $node->background_psql('postgres', extra_params => ['-U', 'anon_login']);
$listener->query_safe('SET ROLE dalgo_anon');
$listener->query_safe('LISTEN dalgo_sync');

# The connector run is queued (synchronously, at a time the live scheduler will not reach).
is($node->safe_psql('postgres', q{SELECT dalgo.run_due_schedules(now() + interval '2 days')}), '1',
	'a connector sync run is queued');
my $run_id = $node->safe_psql('postgres', q{SELECT id FROM dalgo.sync_runs});
like($run_id, qr/^[0-9a-f-]{36}$/, 'the run exists');

# psql prints a notification after the next command it runs.
my $seen = '';
for (my $i = 0; $i < 100 && $seen !~ /Asynchronous notification/; $i++)
{
	$seen .= $listener->query('SELECT 1');
	usleep(100_000) if $seen !~ /Asynchronous notification/;
}
like($seen, qr/Asynchronous notification "dalgo_sync"/, 'dalgo_anon receives the dalgo_sync notification');
unlike($seen, qr/with payload/, 'its payload is empty');
unlike($seen, qr/\Q$run_id\E/, 'it does not carry the run id');
unlike($seen, qr/22222222-0000-4000-8000-0000000000e0|33333333-0000-4000-8000-0000000000e1/,
	'nor the organization or the source');

# A connector still finds the work.
is($node->safe_psql('postgres', q{SET ROLE dalgo_service; SELECT (dalgo.claim_sync_run()).id}), $run_id,
	'claim_sync_run() hands the run to a connector');

$listener->quit;
$node->stop;
done_testing();
