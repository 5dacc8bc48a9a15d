# The launcher's database slots do not leak.  Databases without dalgo are
# probed once and hold no slot, so after seventy of them a new database with
# dalgo still gets its scheduler; dropped databases give their slot back;
# and databases without dalgo are not probed again every 30 s.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_slots');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\nlog_min_messages = debug1\n");
$node->start;

# Every scheduler (or probe) started: the postmaster logs its registration at DEBUG1.
my $probes = sub {
	my $log = slurp_file($node->logfile);
	my @hits = ($log =~ /(?<!un)registering background worker "dalgo scheduler"/g);
	return scalar @hits;
};

# Seventy databases without dalgo.
$node->safe_psql('postgres', "CREATE DATABASE plain_$_ STRATEGY FILE_COPY") for 1 .. 70;
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'dalgo scheduler'}),
	'their probes come and go');

# A database with dalgo created after them gets its scheduler.
$node->safe_psql('postgres', 'CREATE DATABASE with_dalgo');
$node->safe_psql('with_dalgo', 'CREATE EXTENSION dalgo');
ok($node->poll_query_until('with_dalgo', q{SELECT count(*) = 1 FROM dalgo.scheduler_status()
	WHERE database_oid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND worker_pid IS NOT NULL}),
	'the database with dalgo created after seventy without gets a scheduler');
# (Polled: the launcher re-probes databases now and then, and a probe holds
# a slot for the moment it looks; one that kept it would never let go.)
ok($node->poll_query_until('with_dalgo', q{SELECT count(*) = 1 FROM dalgo.scheduler_status()}),
	'databases without dalgo hold no slot');

# Databases with dalgo come from a template (found by the one probe of a new
# database) and are dropped again: their slots are given back.
$node->safe_psql('postgres', 'CREATE DATABASE tpl');
$node->safe_psql('tpl', 'CREATE EXTENSION dalgo');
$node->safe_psql('postgres', q{ALTER DATABASE tpl WITH IS_TEMPLATE true ALLOW_CONNECTIONS false;
	SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'tpl'});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = 'tpl'}), 'the template is closed');
for my $round (1 .. 3)
{
	$node->safe_psql('postgres', "CREATE DATABASE copy_${round}_$_ TEMPLATE tpl STRATEGY FILE_COPY") for 1 .. 5;
	ok($node->poll_query_until('with_dalgo', qq{SELECT count(*) = 5 FROM dalgo.scheduler_status() s JOIN pg_database d ON d.oid = s.database_oid
		WHERE d.datname LIKE 'copy_${round}_%' AND s.worker_pid IS NOT NULL}),
		"round $round: five copies of a database with dalgo each get a scheduler");
	$node->safe_psql('postgres', "DROP DATABASE copy_${round}_$_ WITH (FORCE)") for 1 .. 5;
	ok($node->poll_query_until('with_dalgo', q{SELECT count(*) = 1 FROM dalgo.scheduler_status()}),
		"round $round: once dropped, their slots are free again");
}

# A dalgo database whose extension is dropped leaves its slot, and gets it back on CREATE EXTENSION.
$node->safe_psql('with_dalgo', 'DROP EXTENSION dalgo');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'dalgo scheduler'}),
	'DROP EXTENSION: the scheduler leaves');
$node->safe_psql('with_dalgo', 'CREATE EXTENSION dalgo');
ok($node->poll_query_until('with_dalgo', q{SELECT count(*) = 1 FROM dalgo.scheduler_status() WHERE worker_pid IS NOT NULL}),
	'CREATE EXTENSION again: the scheduler is back');

# Probes are bounded: one per database, not one every 30 s.
my $before = $probes->();
# 72 databases probed once, 15 copies started once (and perhaps once more
# while DROP DATABASE was terminating them), with_dalgo twice.
cmp_ok($before, '<=', 72 + 2 * 15 + 2 + 3, "about one scheduler or probe per database so far ($before)");
sleep 40;
is($probes->(), $before, 'no database without dalgo is probed again within 40 s');

$node->stop;
done_testing();
