# Build guard: dalgo.h refuses, with a clear message, every PostgreSQL major
# version other than 15 (the code uses 15's internal APIs, which differ both
# before and after it), and accepts 15's own headers.
use strict;
use warnings;
use PostgreSQL::Test::Utils;
use Test::More;
use File::Temp qw(tempdir);

my $pg_config = $ENV{PG_CONFIG} // 'pg_config';
my $cc = `$pg_config --cc`;
chomp $cc;
my @cc = (split(' ', $cc), split(' ', `$pg_config --cppflags`),
	'-I', 'src', '-I', scalar(`$pg_config --includedir-server`) =~ s/\s+$//r, '-fsyntax-only');
my $dir = tempdir(CLEANUP => 1);

# Compile dalgo.h as if the server headers reported version $version (or as they are).
sub compile_with
{
	my ($version) = @_;
	my $file = "$dir/guard_" . ($version // 'real') . '.c';
	open my $fh, '>', $file or die "$file: $!";
	print $fh "#include \"postgres.h\"\n";
	print $fh "#undef PG_VERSION_NUM\n#define PG_VERSION_NUM $version\n" if defined $version;
	print $fh "#include \"dalgo.h\"\n";
	close $fh;
	my ($out, $err) = run_command([ @cc, $file ]);
	return ($?, $err);
}

my ($rc, $err) = compile_with(undef);
is($rc, 0, 'dalgo.h compiles against the installed PostgreSQL 15 headers') or diag $err;
for my $version (140011, 160000, 170002)
{
	($rc, $err) = compile_with($version);
	isnt($rc, 0, "PostgreSQL $version is refused");
	like($err, qr/dalgo builds only against PostgreSQL 15/, 'with a message that says which version it needs');
}
done_testing();
