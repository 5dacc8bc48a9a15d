# The last owner cannot be removed by two concurrent transactions either.
# Two owners each remove one owner at the same time, in two sessions,
# under READ COMMITTED, REPEATABLE READ and SERIALIZABLE: the second
# removal waits for the first (the organization row's lock), then counts
# the remaining owners under a fresh snapshot and is refused (or fails to
# serialize).  The organization always keeps an owner.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_owner_race');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;

my $org = '22222222-0000-4000-8000-0000000000f0';
my $o1 = '11111111-0000-4000-8000-0000000000f1';
my $o2 = '11111111-0000-4000-8000-0000000000f2';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.users (id, email) VALUES ('$o1', 'o1\@example.org'), ('$o2', 'o2\@example.org');
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('$org', 'Race', 'race');
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES ('$org', '$o1', 'owner'), ('$org', '$o2', 'owner');
});
my $live_owners = qq{SELECT count(*) FROM dalgo.organization_members
	WHERE organization_id = '$org' AND role = 'owner' AND deleted_at IS NULL};

# How each session removes its own owner row.
my %removal = (
	'soft-delete' => sub { "UPDATE dalgo.organization_members SET deleted_at = now() WHERE user_id = '$_[0]'" },
	'demotion' => sub { "UPDATE dalgo.organization_members SET role = 'admin' WHERE user_id = '$_[0]'" },
	'delete' => sub { "DELETE FROM dalgo.organization_members WHERE user_id = '$_[0]'" });

foreach my $level ('READ COMMITTED', 'REPEATABLE READ', 'SERIALIZABLE')
{
	foreach my $how (sort keys %removal)
	{
		my $case = "$level, $how";
		# Both owners live again (set up past the guard).
		$node->safe_psql('postgres', qq{
			SET session_replication_role = replica;
			DELETE FROM dalgo.organization_members WHERE organization_id = '$org';
			INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES ('$org', '$o1', 'owner'), ('$org', '$o2', 'owner');
		});
		is($node->safe_psql('postgres', $live_owners), '2', "$case: two owners to start with");

		my $s1 = $node->background_psql('postgres', on_error_stop => 0);
		my $s2 = $node->background_psql('postgres', on_error_stop => 0);
		# Both transactions take their snapshot while both owners are live.
		$s1->query_safe("BEGIN ISOLATION LEVEL $level; SET LOCAL dalgo.user_id = '$o1'; SELECT count(*) FROM dalgo.organization_members");
		$s2->query_safe("BEGIN ISOLATION LEVEL $level; SET LOCAL dalgo.user_id = '$o2'; SELECT count(*) FROM dalgo.organization_members");

		$s1->query_safe($removal{$how}->($o1));
		# The second removal waits for the first transaction.
		$s2->{stdin} .= $removal{$how}->($o2) . ";\n";
		$s2->{run}->pump_nb();
		ok($node->poll_query_until('postgres', qq{SELECT count(*) = 1 FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND datname = 'postgres' AND backend_type = 'client backend'}),
			"$case: the second removal waits for the first");
		$s1->query_safe('COMMIT');
		$s2->query('COMMIT');
		like($s2->{stderr}, qr/cannot remove the last owner|could not serialize access/,
			"$case: the second removal is refused");
		$s1->quit;
		$s2->quit;
		is($node->safe_psql('postgres', $live_owners), '1', "$case: the organization keeps one owner");
	}
}

$node->stop;
done_testing();
