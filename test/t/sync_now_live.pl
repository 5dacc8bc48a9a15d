# sync_now_live: with a live scheduler and run workers, a member's
# sync_now queues a run that a run worker executes once the call commits;
# a second call while it runs returns the same run, and with wait => true
# returns only once the worker has finished it; refresh_output_now goes the
# same way; a viewer is refused.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('sync_now_live');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;

my $org = '22222222-0000-4000-8000-0000000000c0';
my $wh = 'org_222222220000400080000000000000c0';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.users (id, email) VALUES
		('11111111-0000-4000-8000-0000000000c1', 'member\@example.org'),
		('11111111-0000-4000-8000-0000000000c2', 'viewer\@example.org');
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('$org', 'Live', 'live');
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
		('$org', '11111111-0000-4000-8000-0000000000c1', 'member'),
		('$org', '11111111-0000-4000-8000-0000000000c2', 'viewer');
	SELECT dalgo.ensure_warehouse('$org');
	-- a source that takes about two seconds to read
	CREATE TABLE public.people AS SELECT g AS id, 'p' || g AS name FROM generate_series(1, 20) g;
	CREATE VIEW public.slow_people AS SELECT p.* FROM public.people p WHERE pg_sleep(0.1)::text = '';
	GRANT USAGE ON SCHEMA public TO dalgo_wh_222222220000400080000000000000c0;
	GRANT SELECT ON public.people, public.slow_people TO dalgo_wh_222222220000400080000000000000c0;
	INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
		('33333333-0000-4000-8000-0000000000c1', '$org', 'People', 'postgres', '{"relation": "public.slow_people"}', 'people');
});

my $as_member = "BEGIN; SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000c1'; SET LOCAL ROLE dalgo_authenticated;";
my $as_viewer = "BEGIN; SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000c2'; SET LOCAL ROLE dalgo_authenticated;";

my ($ret, $out, $err) = $node->psql('postgres', "$as_viewer SELECT dalgo.sync_now('33333333-0000-4000-8000-0000000000c1'); COMMIT;");
like($err, qr/running a sync now needs the member role/, 'sync_now as viewer is refused');

# The member queues a sync and commits: a run worker takes it.
my $run = $node->safe_psql('postgres', "$as_member SELECT dalgo.sync_now('33333333-0000-4000-8000-0000000000c1'); COMMIT;");
like($run, qr/^[0-9a-f-]{36}$/, 'sync_now as member returns the run id');
ok($node->poll_query_until('postgres', "SELECT status = 'running' FROM dalgo.sync_runs WHERE id = '$run'"),
	'a run worker starts the run');
is($node->safe_psql('postgres', "SELECT a.backend_type FROM dalgo.sync_runs r JOIN pg_stat_activity a ON a.pid::text = r.details->>'runner_pid' WHERE r.id = '$run'"),
	'dalgo run', 'the run is executed by a run worker (backend type "dalgo run")');

# While it runs: the same run, and wait => true waits for the worker to finish it.
my $again = $node->safe_psql('postgres', "$as_member SELECT dalgo.sync_now('33333333-0000-4000-8000-0000000000c1', wait => true); COMMIT;");
is($again, $run, 'sync_now(wait => true) during the run returns the same run');
is($node->safe_psql('postgres', "SELECT status || ' ' || rows_synced FROM dalgo.sync_runs WHERE id = '$run'"), 'success 20',
	'and returns once the worker has finished it');
is($node->safe_psql('postgres', "SELECT count(*) FROM dalgo.sync_runs"), '1', 'one run in all');
is($node->safe_psql('postgres', "SELECT count(*) FROM $wh.people"), '20', 'the warehouse holds the source');

# refresh_output_now: queued, committed, done by a worker.
$node->safe_psql('postgres', qq{$as_member
	INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name) VALUES
		('55555555-0000-4000-8000-0000000000c1', '$org', 'Names', '{"version": 1, "source": {"table": "people"}, "steps": [{"type": "select", "columns": ["id", "name"]}]}', 'names');
	INSERT INTO dalgo.outputs (id, organization_id, transformation_id, name) VALUES
		('66666666-0000-4000-8000-0000000000c1', '$org', '55555555-0000-4000-8000-0000000000c1', 'Names out');
	COMMIT;});
my $refresh = $node->safe_psql('postgres', "$as_member SELECT dalgo.refresh_output_now('66666666-0000-4000-8000-0000000000c1'); COMMIT;");
ok($node->poll_query_until('postgres', "SELECT status = 'success' FROM dalgo.transformation_runs WHERE id = '$refresh'"),
	'refresh_output_now: a run worker refreshes the output');
isnt($node->safe_psql('postgres', "SELECT details->>'runner_pid' FROM dalgo.transformation_runs WHERE id = '$refresh'"), '',
	'with its own process');
is($node->safe_psql('postgres', "SELECT count(*) FROM $wh.names"), '20', 'the output table is built');

$node->stop;
done_testing();
