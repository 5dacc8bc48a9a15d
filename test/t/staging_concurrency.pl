# Staging tables under concurrency: finishing an upload waits for a COPY in
# flight and includes its rows once it commits (the staging table is locked
# before it is read, and READ COMMITTED reads after the lock); a COPY that
# comes after the finish waits, then fails (its table and the schema access
# are gone) instead of writing into a finished upload;
# and under REPEATABLE READ, whose snapshot would miss rows committed while
# it waited, finishing is refused.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_staging');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;

my $as_member = q{SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000f1'; SET LOCAL ROLE dalgo_authenticated;};
$node->safe_psql('postgres', q{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.users (id, email, full_name, password_hash) VALUES
		('11111111-0000-4000-8000-0000000000f1', 'member@example.org', 'Member', 'x');
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000f0', 'Up', 'up');
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
		('22222222-0000-4000-8000-0000000000f0', '11111111-0000-4000-8000-0000000000f1', 'member');
	INSERT INTO dalgo.sources (id, organization_id, name, source_type, warehouse_table_name) VALUES
		('33333333-0000-4000-8000-0000000000f1', '22222222-0000-4000-8000-0000000000f0', 'Upload', 'csv', 'uploaded');
});
sub begin_upload
{
	return $node->safe_psql('postgres', qq{BEGIN; $as_member
		SELECT dalgo.begin_upload('33333333-0000-4000-8000-0000000000f1', ARRAY['n']); COMMIT;});
}

# 1. A COPY in flight when the upload is finished.
my $stage = begin_upload();
$node->safe_psql('postgres', qq{BEGIN; $as_member INSERT INTO $stage VALUES ('1'), ('2'); COMMIT;});
my $loader = $node->background_psql('postgres', on_error_stop => 0);
$loader->query_safe('SET client_min_messages = warning');
$loader->query_safe("BEGIN; $as_member");
$loader->query_safe("INSERT INTO $stage SELECT g::text FROM generate_series(3, 10) g");
my $finisher = $node->background_psql('postgres', on_error_stop => 0);
$finisher->query_safe('SET client_min_messages = warning');
$finisher->query_until(qr/sent/, qq{\\echo sent
BEGIN; $as_member SELECT 'finished:' || status || ',' || rows_synced FROM dalgo.finish_upload('33333333-0000-4000-8000-0000000000f1'); COMMIT;
});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_locks WHERE relation IS NOT NULL AND NOT granted}),
	'finishing waits for the COPY in flight');
$loader->query_safe('COMMIT');
my $out = $finisher->query('SELECT 1');
like($out, qr/finished:success,10/, 'and includes its rows once it commits');
is($node->safe_psql('postgres', q{SELECT count(*) || ' ' || pg_typeof(max(n)) FROM org_222222220000400080000000000000f0.uploaded}),
	'10 bigint', 'the typed table holds every row');

# 2. A COPY that starts after the finish began waits, then fails: its table is gone.
$stage = begin_upload();
$finisher->query_safe('BEGIN');
$finisher->query_safe("$as_member SELECT * FROM dalgo.finish_upload('33333333-0000-4000-8000-0000000000f1')");
$loader->{stderr} = '';
$loader->query_until(qr/sent/, qq{\\echo sent
BEGIN; $as_member INSERT INTO $stage VALUES ('late');
});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_locks WHERE relation IS NOT NULL AND NOT granted}),
	'a late COPY waits for the finish');
$finisher->query_safe('COMMIT');
$loader->query('SELECT 1');
like($loader->{stderr}, qr/does not exist|permission denied for schema/, 'and then fails (the table and the schema access are gone): it never writes into a finished upload');
$loader->query('ROLLBACK');
is($node->safe_psql('postgres', q{SELECT count(*) FROM org_222222220000400080000000000000f0.uploaded}), '0',
	'the swapped-in table is the finished upload (empty), without the late row');

# 3. REPEATABLE READ is refused, and the upload stays open.
$stage = begin_upload();
my ($ret, $stdout, $stderr) = $node->psql('postgres', qq{BEGIN ISOLATION LEVEL REPEATABLE READ; $as_member
	SELECT * FROM dalgo.finish_upload('33333333-0000-4000-8000-0000000000f1'); COMMIT;});
like($stderr, qr/a sync is finished in a READ COMMITTED transaction/, 'finishing under REPEATABLE READ is refused');
is($node->safe_psql('postgres', qq{SELECT to_regclass('$stage') IS NOT NULL}), 't', 'and the upload stays open');

$loader->quit;
$finisher->quit;
$node->stop;
done_testing();
