# Secrets at rest: a dump of a table whose credentials dalgo.enable_encryption()
# protects holds ciphertext only, and the key (a file in the data directory)
# is not in it; the workers still read the secret.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('toolkit_dump');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION pgcrypto;
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000a0', 'A', 'a');
	CREATE SCHEMA app;
	CREATE TABLE app.plugin (id bigserial PRIMARY KEY, organization_id uuid NOT NULL, credentials json NOT NULL);
	SELECT dalgo.enable_org_rows('app.plugin', write_role => 'admin');
	SELECT dalgo.rotate_secret_key();
	SELECT dalgo.enable_encryption('app.plugin', 'credentials');
	INSERT INTO app.plugin (organization_id, credentials)
		VALUES ('22222222-0000-4000-8000-0000000000a0', '{"password": "hunter2-plaintext"}');
});
my $key = slurp_file($node->data_dir . '/dalgo_secret.key');
like($key, qr/^[0-9a-f]{64}\n$/, 'the key is a file of the data directory');

my ($dump, $err) = run_command([ 'pg_dump', '-d', $node->connstr('postgres'), '-n', 'app' ]);
like($dump, qr/dalgo:pgp1:/, 'the dump holds the encrypted credentials');
unlike($dump, qr/hunter2-plaintext/, 'the dump holds no plaintext secret');
my $k = (split /\n/, $key)[0];
unlike($dump, qr/\Q$k\E/, 'the dump does not hold the key');
is($node->safe_psql('postgres', q{SELECT dalgo.read_secret_service('app.plugin', 'credentials', '1')}),
	'{"password": "hunter2-plaintext"}', 'the workers still read the secret');

$node->stop;
done_testing();
