# The daily maintenance: each database's scheduler runs
# dalgo_internal.daily_maintenance() once a period (dalgo.maintenance_interval,
# here 10 s instead of a day), which applies the retention policies in short
# transactions (one batch per pass) until done, and records it
# (dalgo_internal.maintenance, scheduler_status().maintenance_at).  A
# restart does not run it again within the period, a missed period
# catches up once, an interrupted run goes on, and interval 0 turns it off.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_maintenance');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n"
	. "dalgo.maintenance_interval = 10\nlog_statement = none\n");
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION dalgo;
	CREATE SCHEMA app;
	CREATE TABLE app.events (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL);
	SELECT dalgo.enable_service_only('app.events');
	-- 25,000 expired rows: three passes of 10,000, three transactions.
	INSERT INTO app.events (created_at) SELECT now() - interval '40 days' FROM generate_series(1, 25000);
	INSERT INTO app.events (created_at) SELECT now() FROM generate_series(1, 10);
	SELECT dalgo.set_retention('app.events', 'created_at', 30);
});

ok($node->poll_query_until('postgres', q{SELECT count(*) = 10 FROM app.events}),
	'a live scheduler runs the daily maintenance, which applies the retention policies');
ok($node->poll_query_until('postgres', q{SELECT last_finished_at >= last_started_at FROM dalgo_internal.maintenance}),
	'...and records when it finished');
# (The next run is ten seconds away.)
is($node->safe_psql('postgres', q{SELECT (last_summary->>'retention_rows')::int = 25000 AND calls = 3
	FROM dalgo_internal.maintenance}), 't', 'in passes of one batch per policy, each its own transaction')
	or diag $node->safe_psql('postgres', 'SELECT * FROM dalgo_internal.maintenance');
ok($node->poll_query_until('postgres', q{SELECT maintenance_at IS NOT NULL AND last_error IS NULL FROM dalgo.scheduler_status()
	WHERE database_oid = (SELECT oid FROM pg_database WHERE datname = 'postgres')}),
	'scheduler_status() shows when it last finished');

# A day long period that began about twelve hours ago (UTC): the maintenance
# just ran, so it is not due again within the period, restart or not.
my $hour = ($node->safe_psql('postgres', q{SELECT extract(hour FROM now() AT TIME ZONE 'UTC')::int}) + 12) % 24;
$node->append_conf('postgresql.conf', "dalgo.maintenance_interval = 86400\ndalgo.maintenance_hour = $hour\n");
$node->reload;
sleep 3;
$node->safe_psql('postgres', q{UPDATE dalgo_internal.maintenance SET last_started_at = now() - interval '1 hour',
	last_finished_at = now() - interval '59 minutes'});
$node->restart;
$node->safe_psql('postgres', q{INSERT INTO app.events (created_at) SELECT now() - interval '40 days' FROM generate_series(1, 5)});
ok($node->poll_query_until('postgres', q{SELECT last_tick IS NOT NULL AND worker_pid IS NOT NULL
	FROM dalgo.scheduler_status() WHERE database_oid = (SELECT oid FROM pg_database WHERE datname = 'postgres')}),
	'the scheduler is back after a restart');
sleep 3;
is($node->safe_psql('postgres', q{SELECT count(*) FROM app.events}), '15',
	'a restart does not run the maintenance again within its period');

# The server was down for three days: one run catches up, once.
$node->safe_psql('postgres', q{UPDATE dalgo_internal.maintenance SET last_started_at = now() - interval '3 days',
	last_finished_at = now() - interval '3 days'});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 10 FROM app.events}), 'a missed period catches up');
my $started = $node->safe_psql('postgres', q{SELECT last_started_at FROM dalgo_internal.maintenance});
$node->safe_psql('postgres', q{INSERT INTO app.events (created_at) SELECT now() - interval '40 days' FROM generate_series(1, 5)});
sleep 3;
is($node->safe_psql('postgres', q{SELECT count(*) || ' ' || (SELECT last_started_at FROM dalgo_internal.maintenance) FROM app.events}),
	"15 $started", '...once: not again within the period');

# A run interrupted in the middle (no finish recorded) goes on.
$node->safe_psql('postgres', q{UPDATE dalgo_internal.maintenance SET last_finished_at = NULL});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 10 FROM app.events}), 'an unfinished run goes on');
is($node->safe_psql('postgres', q{SELECT last_started_at FROM dalgo_internal.maintenance}), $started,
	'...as the same run');

# Off.
$node->append_conf('postgresql.conf', "dalgo.maintenance_interval = 0\n");
$node->reload;
sleep 2;
$node->safe_psql('postgres', q{UPDATE dalgo_internal.maintenance SET last_started_at = now() - interval '3 days',
	last_finished_at = now() - interval '3 days';
	INSERT INTO app.events (created_at) SELECT now() - interval '40 days' FROM generate_series(1, 5)});
sleep 3;
is($node->safe_psql('postgres', q{SELECT count(*) FROM app.events}), '15', 'dalgo.maintenance_interval = 0 turns it off');

# Only a superuser sets it.
my ($rc, $out, $err) = $node->psql('postgres', q{SET ROLE dalgo_service; SET dalgo.maintenance_interval = 1});
like($err, qr/cannot be changed now|permission denied/, q{the setting is not a session's to change});

$node->stop;
done_testing();
