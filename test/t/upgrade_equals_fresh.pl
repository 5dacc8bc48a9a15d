# Upgrades: a database created at 0.1.0 with data in every table, updated
# with ALTER EXTENSION dalgo UPDATE, has exactly the objects of a fresh
# install of the current version, and keeps every row.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_upgrade');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;

my $current = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'dalgo'});
my @chain = split /\n/, $node->safe_psql('postgres',
	q{SELECT target FROM pg_extension_update_paths('dalgo') WHERE source = '0.1.0' AND path IS NOT NULL});
ok((grep { $_ eq $current } @chain) || $current eq '0.1.0', "an update path leads from 0.1.0 to $current");

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('postgres', 'CREATE DATABASE upgraded');
$node->safe_psql('fresh', 'CREATE EXTENSION dalgo');
$node->safe_psql('upgraded', q{CREATE EXTENSION dalgo VERSION '0.1.0'});

# Rows in every table of 0.1.0, written the way an application does.
my $fixture = slurp_file('test/fixtures/upgrade_data.sql');
$node->safe_psql('upgraded', $fixture);

my $count_rows = q{
	SELECT string_agg(format('%s=%s', c.relname,
		(xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %s', c.oid::regclass), false, true, '')))[1]::text),
		' ' ORDER BY c.relname)
	FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	WHERE n.nspname LIKE 'dalgo%' AND c.relkind IN ('r', 'p')};
my $before = $node->safe_psql('upgraded', $count_rows);
my $empty = grep { /=0$/ } split / /, $before;
is($empty, 0, 'the 0.1.0 database has rows in every table') or diag $before;

$node->safe_psql('upgraded', 'ALTER EXTENSION dalgo UPDATE');
is($node->safe_psql('upgraded', q{SELECT extversion FROM pg_extension WHERE extname = 'dalgo'}),
	$current, "the update reaches $current");

# Tables the update creates (and the rows it installs in them) are compared
# by the catalog snapshot below; here, the rows of the tables 0.1.0 had.
my %old_table = map { (split /=/)[0] => 1 } split / /, $before;
my $after = join ' ', grep { $old_table{ (split /=/)[0] } } split / /,
	$node->safe_psql('upgraded', $count_rows);
is($after, $before, 'the update keeps every row');

my $snapshot = slurp_file('test/fixtures/catalog_snapshot.sql');
my $want = $node->safe_psql('fresh', $snapshot);
my $got = $node->safe_psql('upgraded', $snapshot);
ok(length($want) > 10000, 'the catalog snapshot covers the installed objects');
if ($got eq $want)
{
	pass('the upgraded database equals a fresh install');
}
else
{
	my %w = map { $_ => 1 } split /\n/, $want;
	my %g = map { $_ => 1 } split /\n/, $got;
	diag("only in fresh install:\n" . join("\n", grep { !$g{$_} } sort keys %w));
	diag("only in upgraded database:\n" . join("\n", grep { !$w{$_} } sort keys %g));
	fail('the upgraded database equals a fresh install');
}

# The upgraded database still works: RLS scopes a member to their rows.
is($node->safe_psql('upgraded', q{
	BEGIN;
	SET LOCAL dalgo.user_id = '00000000-0000-4000-a000-000000000002';
	SET LOCAL ROLE dalgo_authenticated;
	SELECT count(*) FROM dalgo.organizations;
	COMMIT;}), '1', 'row-level security holds after the update');

$node->stop;
done_testing();
