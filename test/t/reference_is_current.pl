# docs/reference.md is generated from the catalog (scripts/reference.sql):
# it must match what a fresh install describes, so the reference cannot
# drift from the code.  Regenerate it with scripts/dev.sh reference.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_reference');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION dalgo');
my $generated = $node->safe_psql('postgres', slurp_file('scripts/reference.sql')) . "\n";
my $committed = slurp_file('docs/reference.md');
if ($generated eq $committed)
{
	pass('docs/reference.md matches the installed objects');
}
else
{
	my %c = map { $_ => 1 } split /\n/, $committed;
	my %g = map { $_ => 1 } split /\n/, $generated;
	diag("missing from docs/reference.md:\n" . join("\n", grep { !$c{$_} } split /\n/, $generated));
	diag("stale in docs/reference.md:\n" . join("\n", grep { !$g{$_} } split /\n/, $committed));
	fail('docs/reference.md matches the installed objects (run scripts/dev.sh reference)');
}
$node->stop;
done_testing();
