# The library may be newer than a database's dalgo objects (after a package
# upgrade, before ALTER EXTENSION dalgo UPDATE).  The scheduler then runs
# nothing in that database: it logs once, checks again every few seconds,
# and resumes once the database is updated.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_version');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;

my $current = $node->safe_psql('postgres', q{SELECT default_version FROM pg_available_extensions WHERE name = 'dalgo'});
isnt($current, '0.1.0', "the library is $current");

my $org = '22222222-0000-4000-8000-000000000070';
$node->safe_psql('postgres', 'CREATE DATABASE old');
$node->safe_psql('old', qq{
	CREATE EXTENSION dalgo VERSION '0.1.0';
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('$org', 'Old', 'old');
	INSERT INTO dalgo.sources (id, organization_id, name, source_type, config)
		VALUES ('33333333-0000-4000-8000-000000000071', '$org', 'Sheet', 'api', '{"connector": true}');
	INSERT INTO dalgo.schedules (organization_id, source_id, frequency)
		VALUES ('$org', '33333333-0000-4000-8000-000000000071', 'hourly');
	UPDATE dalgo.schedules SET next_run_at = now();
});

ok($node->wait_for_log(qr/dalgo scheduler: database "old" has dalgo 0\.1\.0, this library is \Q$current\E; no schedules run until the versions match/),
	'the scheduler logs that the database is at 0.1.0');
sleep 12;
is($node->safe_psql('old', q{SELECT count(*) FROM dalgo.sync_runs}), '0', 'a due schedule does not run in a 0.1.0 database');
is($node->safe_psql('old', q{SELECT next_run_at <= now() FROM dalgo.schedules}), 't', 'and is not claimed');
my @logged = (slurp_file($node->logfile) =~ /has dalgo 0\.1\.0, this library is/g);
is(scalar @logged, 1, 'the mismatch is logged once, not on every check');
like($node->safe_psql('old', q{SELECT last_error FROM dalgo.scheduler_status()
	WHERE database_oid = (SELECT oid FROM pg_database WHERE datname = 'old')}),
	qr/^idle: /, 'scheduler_status shows the scheduler idle');

$node->safe_psql('old', 'ALTER EXTENSION dalgo UPDATE');
ok($node->poll_query_until('old', q{SELECT count(*) = 1 FROM dalgo.sync_runs WHERE status = 'pending'}),
	'after ALTER EXTENSION dalgo UPDATE the schedule runs');
ok($node->log_contains(qr/database "old" is now at dalgo \Q$current\E; schedules run again/), 'and the scheduler says so');

$node->stop;
done_testing();
