# A schedule far overdue (here: held by a lock, so no tick can claim it) or
# far ahead must not stop its database's scheduler: the tick's sleep is
# computed without overflow, so due runs still execute, connector runs still
# expire, and the tick records no error.  The scheduler's own writes reach
# the cumulative statistics (pg_stat_user_tables), so autovacuum sees them.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_overdue');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;

my $org = '22222222-0000-4000-8000-0000000000c0';
my $wh = 'dalgo_wh_222222220000400080000000000000c0';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('$org', 'Overdue', 'overdue');
	SELECT dalgo.ensure_warehouse('$org');
	CREATE VIEW public.small_source AS SELECT g AS id FROM generate_series(1, 5) g;
	GRANT USAGE ON SCHEMA public TO $wh;
	GRANT SELECT ON public.small_source TO $wh;
	INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
		('33333333-0000-4000-8000-0000000000c1', '$org', 'Small', 'postgres', '{"relation": "public.small_source"}', 'small'),
		('33333333-0000-4000-8000-0000000000c2', '$org', 'Locked', 'api', '{"connector": true}', NULL),
		('33333333-0000-4000-8000-0000000000c3', '$org', 'Monthly', 'api', '{"connector": true}', NULL),
		('33333333-0000-4000-8000-0000000000c4', '$org', 'Sheet', 'google_sheets', '{"connector": true}', NULL);
	-- Inserted only (the trigger sets next_run_at): due about three seconds from now.
	INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency, run_at_time) VALUES
		('88888888-0000-4000-8000-0000000000c1', '$org', '33333333-0000-4000-8000-0000000000c1', 'hourly',
		 (clock_timestamp() AT TIME ZONE 'UTC' + interval '3 seconds')::time);
});

# 1. Statistics: nothing but the scheduler updates dalgo.schedules here.
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM dalgo.sync_runs WHERE status = 'success'}),
	'the schedule comes due and runs');
ok($node->poll_query_until('postgres', q{SELECT n_tup_upd > 0
	FROM pg_stat_user_tables WHERE schemaname = 'dalgo' AND relname = 'schedules'}),
	'the scheduler\'s updates of schedules reach pg_stat_user_tables');
ok($node->poll_query_until('postgres', q{SELECT n_tup_ins > 0
	FROM pg_stat_user_tables WHERE schemaname = 'dalgo' AND relname = 'sync_runs'}),
	'and so do the inserts of runs');

# 2. A schedule 30 days overdue that no tick can claim (a KEY SHARE lock makes
# claim_due_schedules' FOR UPDATE SKIP LOCKED pass it by), and a monthly one
# about a month ahead.
my $locker = $node->background_psql('postgres');
$locker->query_safe(q{BEGIN});
$locker->query_safe(q{SELECT 1 FROM dalgo.schedules WHERE id = '88888888-0000-4000-8000-0000000000c2' FOR KEY SHARE});
$node->safe_psql('postgres', qq{
	INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency) VALUES
		('88888888-0000-4000-8000-0000000000c2', '$org', '33333333-0000-4000-8000-0000000000c2', 'daily');
});
$locker->query_safe(q{SELECT 1 FROM dalgo.schedules WHERE id = '88888888-0000-4000-8000-0000000000c2' FOR KEY SHARE});
$node->safe_psql('postgres', qq{
	UPDATE dalgo.schedules SET next_run_at = now() - interval '30 days' WHERE id = '88888888-0000-4000-8000-0000000000c2';
	INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency, run_at_day, run_at_time) VALUES
		('88888888-0000-4000-8000-0000000000c3', '$org', '33333333-0000-4000-8000-0000000000c3', 'monthly',
		 extract(day FROM now() AT TIME ZONE 'UTC')::int, '00:00');
});
is($node->safe_psql('postgres', q{SELECT next_run_at < now() - interval '29 days' FROM dalgo.schedules
	WHERE id = '88888888-0000-4000-8000-0000000000c2'}), 't', 'one schedule is 30 days overdue and stays so');

# The scheduler goes on: a connector run nobody claimed expires ...
$node->safe_psql('postgres', q{ALTER SYSTEM SET dalgo.connector_timeout = 1; SELECT pg_reload_conf();});
$node->safe_psql('postgres', qq{
	INSERT INTO dalgo.sync_runs (organization_id, source_id, status, details)
		VALUES ('$org', '33333333-0000-4000-8000-0000000000c4', 'pending', '{}');
});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM dalgo.sync_runs
	WHERE source_id = '33333333-0000-4000-8000-0000000000c4' AND status = 'failed'}),
	'a stale connector run expires');
# ... and a due run executes.
$node->safe_psql('postgres', q{UPDATE dalgo.schedules SET next_run_at = now() WHERE id = '88888888-0000-4000-8000-0000000000c1'});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 2 FROM dalgo.sync_runs
	WHERE source_id = '33333333-0000-4000-8000-0000000000c1' AND status = 'success'}),
	'a due run executes while the other schedule is overdue');
my $tick1 = $node->safe_psql('postgres', q{SELECT last_tick FROM dalgo.scheduler_status() WHERE database_oid =
	(SELECT oid FROM pg_database WHERE datname = current_database())});
sleep 2;
is($node->safe_psql('postgres', q{SELECT last_tick > '} . $tick1 . q{' AND last_error IS NULL FROM dalgo.scheduler_status()
	WHERE database_oid = (SELECT oid FROM pg_database WHERE datname = current_database())}), 't',
	'the scheduler keeps ticking without error');
ok(!$node->log_contains('integer out of range'), 'no tick failed with integer out of range');

$locker->query_safe(q{COMMIT});
$locker->quit;
$node->stop;
done_testing();
