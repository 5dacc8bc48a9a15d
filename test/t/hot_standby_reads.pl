# Hot standby: a streaming replica of a primary with dalgo serves reads
# under the same identity and row-level security, sees a membership change
# by the next statement after replay, refuses writes with a clear error, and
# runs no scheduler until it is promoted.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = PostgreSQL::Test::Cluster->new('dalgo_primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$primary->start;
$primary->safe_psql('postgres', q{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.users (id, email) VALUES
		('11111111-0000-4000-8000-000000000001', 'owner.a@example.org'),
		('11111111-0000-4000-8000-000000000002', 'member.a@example.org'),
		('11111111-0000-4000-8000-000000000003', 'owner.b@example.org');
	INSERT INTO dalgo.organizations (id, name, slug) VALUES
		('22222222-0000-4000-8000-0000000000a0', 'Org A', 'org-a'),
		('22222222-0000-4000-8000-0000000000b0', 'Org B', 'org-b');
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
		('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000001', 'owner'),
		('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000002', 'member'),
		('22222222-0000-4000-8000-0000000000b0', '11111111-0000-4000-8000-000000000003', 'owner');
	INSERT INTO dalgo.sources (organization_id, name, source_type) VALUES
		('22222222-0000-4000-8000-0000000000a0', 'Visits A', 'google_sheets'),
		('22222222-0000-4000-8000-0000000000b0', 'Visits B', 'csv');
});
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('dalgo_standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);

# What a member reads, through the README's app-server set-up.
sub as_member
{
	my ($node, $sql) = @_;
	return $node->safe_psql('postgres', qq{
		BEGIN;
		SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
		SET LOCAL ROLE dalgo_authenticated;
		$sql;
		COMMIT;});
}

my $orgs = q{SELECT string_agg(slug, ',' ORDER BY slug) FROM dalgo.organizations};
my $sources = q{SELECT string_agg(name, ',' ORDER BY name) FROM dalgo.sources};
is(as_member($standby, $orgs), as_member($primary, $orgs), 'the standby gives a member the same organizations as the primary');
is(as_member($standby, $orgs), 'org-a', 'which are only their own');
is(as_member($standby, $sources), 'Visits A', 'and only their own organization\'s sources');
is(as_member($standby, q{SELECT dalgo.is_org_member('22222222-0000-4000-8000-0000000000a0', 'member')}), 't',
	'the membership functions work on the standby');
is(as_member($standby, q{SELECT dalgo.current_user_id()}), '11111111-0000-4000-8000-000000000002',
	'the identity is set on the standby');
is($standby->safe_psql('postgres', q{SELECT dalgo.current_user_id() IS NULL}), 't', 'and cleared after the transaction');

# One session on the standby keeps its membership cache across the change.
my $session = $standby->background_psql('postgres');
my $read = q{BEGIN; SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002'; SET LOCAL ROLE dalgo_authenticated;
	SELECT count(*) FROM dalgo.sources; COMMIT;};
is($session->query_safe($read), '1', 'a long-lived standby session reads the organization\'s source');

$primary->safe_psql('postgres', q{UPDATE dalgo.organization_members SET deleted_at = now()
	WHERE user_id = '11111111-0000-4000-8000-000000000002'});
$primary->wait_for_catchup($standby);
is($session->query_safe($read), '0', 'a revocation replayed on the standby takes effect by the next statement');
$primary->safe_psql('postgres', q{UPDATE dalgo.organization_members SET deleted_at = NULL
	WHERE user_id = '11111111-0000-4000-8000-000000000002'});
$primary->wait_for_catchup($standby);
is($session->query_safe($read), '1', 'and so does a grant');
$session->quit;

# Writes fail with a clear error.
my ($ret, $stdout, $stderr) = $standby->psql('postgres', q{
	BEGIN;
	SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000001';
	SET LOCAL ROLE dalgo_authenticated;
	SELECT dalgo.create_organization('New', 'new');});
isnt($ret, 0, 'a function that writes fails on the standby');
like($stderr, qr/read-only transaction/, 'with a read-only transaction error');

# No scheduler on the standby; one starts on promotion.
my $workers = q{SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('dalgo launcher', 'dalgo scheduler')};
ok($primary->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'dalgo scheduler'}),
	'the primary runs a scheduler');
is($standby->safe_psql('postgres', $workers), '0', 'the standby runs no launcher and no scheduler');
$standby->promote;
ok($standby->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'dalgo scheduler'}),
	'after promotion the scheduler starts by itself');

$standby->stop;
$primary->stop;
done_testing();
