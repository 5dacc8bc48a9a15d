# audit_purge_plan: dalgo.purge_audit_logs() finds the old rows of a large
# trail through an index on created_at instead of scanning all of it (0.1.0
# read every row of audit_logs on every purge).  The plan of the DELETE the
# purge runs is captured with auto_explain.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_audit_purge');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;

# 200 days of trail, 500 rows a day, in time order as the trail is written.
$node->safe_psql('postgres', q{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.audit_logs (action, resource_type, created_at, details)
		SELECT 'insert', 'bench', now() - interval '200 days' + g * interval '172.8 seconds', '{}'
		FROM generate_series(1, 100000) g;
	SELECT brin_summarize_new_values('dalgo.audit_logs_created_at_idx');
	ANALYZE dalgo.audit_logs;
});

my $explain = q{
	LOAD 'auto_explain';
	SET auto_explain.log_min_duration = 0;
	SET auto_explain.log_nested_statements = on;
	SET auto_explain.log_level = notice;
	SET client_min_messages = notice;
	SET ROLE dalgo_service;
};
my ($out, $err);
$node->psql('postgres', $explain . q{SELECT dalgo.purge_audit_logs('190 days')}, stdout => \$out, stderr => \$err);
like($err, qr/DELETE FROM dalgo\.audit_logs WHERE created_at < \$1/, 'auto_explain shows the purge\'s DELETE');
like($err, qr/Index Scan on audit_logs_created_at_idx/, 'which reads the old rows through the created_at index');
unlike($err, qr/Seq Scan on audit_logs/, 'and does not scan the whole trail');
ok($out >= 4990 && $out <= 5010, "the ten oldest days are purged ($out rows)");
is($node->safe_psql('postgres', q{SELECT count(*) FROM dalgo.audit_logs WHERE created_at < now() - interval '190 days'}), '0',
	'and gone');
is($node->safe_psql('postgres', q{SELECT count(*) >= 94990 FROM dalgo.audit_logs WHERE resource_type = 'bench'}), 't',
	'newer rows stay');

$node->stop;
done_testing();
