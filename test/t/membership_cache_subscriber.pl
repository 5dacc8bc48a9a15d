# On a logical-replication subscriber, a membership change replicated from
# the publisher invalidates the subscriber's membership caches: a
# long-lived session there sees a revocation, a restore and a deleted
# organization at its next statement.  (The apply worker runs with
# session_replication_role = replica and fires row triggers only.)
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $conf = "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n";
my $pub = PostgreSQL::Test::Cluster->new('dalgo_publisher');
$pub->init(allows_streaming => 'logical');
$pub->append_conf('postgresql.conf', $conf);
$pub->start;
my $sub = PostgreSQL::Test::Cluster->new('dalgo_subscriber');
$sub->init;
$sub->append_conf('postgresql.conf', $conf);
$sub->start;

my $org = '22222222-0000-4000-8000-0000000000e0';
my $user = '11111111-0000-4000-8000-0000000000e1';
my $owner = '11111111-0000-4000-8000-0000000000e2';
$pub->safe_psql('postgres', qq{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.users (id, email) VALUES ('$user', 'u\@example.org'), ('$owner', 'o\@example.org');
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('$org', 'Replicated', 'replicated');
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES ('$org', '$owner', 'owner'), ('$org', '$user', 'admin');
	CREATE PUBLICATION dalgo_membership FOR TABLE dalgo.users, dalgo.organizations, dalgo.organization_members;
});
$sub->safe_psql('postgres', 'CREATE EXTENSION dalgo');
my $connstr = $pub->connstr . ' dbname=postgres';
$sub->safe_psql('postgres', "CREATE SUBSCRIPTION dalgo_membership CONNECTION '$connstr' PUBLICATION dalgo_membership");
$sub->wait_for_subscription_sync($pub, 'dalgo_membership');

# A long-lived session on the subscriber, acting for the user.
my $s = $sub->background_psql('postgres');
# The identity lasts one transaction: each check sets it again.
sub as_user { my ($sql) = @_; return $s->query_safe("BEGIN; SET LOCAL dalgo.user_id = '$user'; $sql; COMMIT;"); }
is(as_user("SELECT dalgo.org_role('$org')"), 'admin', 'the subscriber knows the replicated membership');

$pub->safe_psql('postgres', "UPDATE dalgo.organization_members SET deleted_at = now() WHERE user_id = '$user'");
$pub->wait_for_catchup('dalgo_membership');
is(as_user("SELECT dalgo.is_org_member('$org')"), 'f', 'a replicated revocation is seen at the next statement');

$pub->safe_psql('postgres', "UPDATE dalgo.organization_members SET deleted_at = NULL, role = 'viewer' WHERE user_id = '$user'");
$pub->wait_for_catchup('dalgo_membership');
is(as_user("SELECT dalgo.org_role('$org')"), 'viewer', 'a replicated restore and demotion too');

$pub->safe_psql('postgres', "UPDATE dalgo.organizations SET deleted_at = now() WHERE id = '$org'");
$pub->wait_for_catchup('dalgo_membership');
is(as_user("SELECT dalgo.is_org_member('$org')"), 'f', 'a replicated organization deletion too');

$pub->safe_psql('postgres', "UPDATE dalgo.organizations SET deleted_at = NULL WHERE id = '$org'");
$pub->safe_psql('postgres', "UPDATE dalgo.users SET is_active = false WHERE id = '$user'");
$pub->wait_for_catchup('dalgo_membership');
is(as_user("SELECT dalgo.is_org_member('$org')"), 'f', 'a replicated deactivation of the user too');

$s->quit;
$sub->stop;
$pub->stop;
done_testing();
