# dalgo's own secrets at rest, across an update and a dump: a 0.1.0
# database whose sources hold plaintext credentials (and warehouse access
# tokens) has them encrypted by ALTER EXTENSION dalgo UPDATE, which creates
# the key file, writes no audit row and leaves updated_at alone; the sync
# workers' reader still gets the plaintext; pg_dump shows none of it; an
# error on a row with credentials shows the client and the server log no
# plaintext.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('own_secrets');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;
my $keyfile = $node->data_dir . '/dalgo_secret.key';

$node->safe_psql('postgres', q{
	CREATE EXTENSION dalgo VERSION '0.1.0';
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000a0', 'A', 'a');
	INSERT INTO dalgo.sources (id, organization_id, name, source_type, config) VALUES
		('33333333-0000-4000-8000-0000000000a1', '22222222-0000-4000-8000-0000000000a0', 'Sheet', 'google_sheets',
		 '{"spreadsheet_id": "1AbC", "credentials": {"api_key": "AIza-plaintext-1"}}'),
		('33333333-0000-4000-8000-0000000000a2', '22222222-0000-4000-8000-0000000000a0', 'Plain', 'csv', '{"path": "x.csv"}');
	INSERT INTO dalgo.warehouse_connections (id, organization_id, database_name, access_token_encrypted) VALUES
		('44444444-0000-4000-8000-0000000000a1', '22222222-0000-4000-8000-0000000000a0', 'wh', 'wh-plaintext-2');
});
ok(!-e $keyfile, 'no key file before the update');
my $audit_before = $node->safe_psql('postgres', 'SELECT count(*) FROM dalgo.audit_logs');
my $updated_before = $node->safe_psql('postgres', 'SELECT string_agg(updated_at::text, \',\' ORDER BY id) FROM dalgo.sources');

$node->safe_psql('postgres', 'ALTER EXTENSION dalgo UPDATE');
ok(-e $keyfile, 'the update creates the key file');
is($node->safe_psql('postgres', q{SELECT config->>'credentials' LIKE 'dalgo:pgp1:%' FROM dalgo.sources
	WHERE id = '33333333-0000-4000-8000-0000000000a1'}), 't', 'the update encrypts the plaintext credentials of a source');
is($node->safe_psql('postgres', q{SELECT access_token_encrypted LIKE 'dalgo:pgp1:%' FROM dalgo.warehouse_connections}), 't',
	'...and the warehouse access token');
is($node->safe_psql('postgres', q{SELECT config FROM dalgo.sources WHERE id = '33333333-0000-4000-8000-0000000000a2'}),
	'{"path": "x.csv"}', '...and leaves a config without credentials as it is');
is($node->safe_psql('postgres', q{SELECT dalgo_internal.source_credentials('33333333-0000-4000-8000-0000000000a1')}),
	'{"api_key": "AIza-plaintext-1"}', q{the workers' reader decrypts them});
is($node->safe_psql('postgres', q{SELECT dalgo_internal.warehouse_access_token('44444444-0000-4000-8000-0000000000a1')}),
	'wh-plaintext-2', '...and the token');
is($node->safe_psql('postgres', 'SELECT count(*) FROM dalgo.audit_logs'), $audit_before, 'the update writes no audit row');
is($node->safe_psql('postgres', 'SELECT string_agg(updated_at::text, \',\' ORDER BY id) FROM dalgo.sources'), $updated_before,
	'...and changes no updated_at');

# A source created after the update, by an admin.
$node->safe_psql('postgres', q{
	INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-000000000001', 'a@example.org');
	INSERT INTO dalgo.organization_members (organization_id, user_id, role)
		VALUES ('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000001', 'owner');
	BEGIN;
	SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000001';
	SET LOCAL ROLE dalgo_authenticated;
	INSERT INTO dalgo.sources (organization_id, name, source_type, config) VALUES
		('22222222-0000-4000-8000-0000000000a0', 'Api', 'api', '{"url": "https://x", "credentials": {"bearer_token": "tok-plaintext-3"}}');
	COMMIT;
});

my ($dump, $err) = run_command([ 'pg_dump', '-d', $node->connstr('postgres') ]);
like($dump, qr/dalgo:pgp1:/, 'the dump holds the encrypted credentials');
unlike($dump, qr/plaintext-[123]/, 'the dump holds no plaintext credential or token');
my $k = (split /\n/, slurp_file($keyfile))[0];
unlike($dump, qr/\Q$k\E/, 'the dump does not hold the key');

# An error on a row with credentials: the row that the error shows holds ciphertext.
my ($rc, $out, $stderr) = $node->psql('postgres', q{
	INSERT INTO dalgo.sources (organization_id, name, source_type, config) VALUES
		('22222222-0000-4000-8000-0000000000a0', '', 'api', '{"credentials": {"bearer_token": "tok-plaintext-4"}}')});
like($stderr, qr/violates check constraint/, 'a write with credentials fails on a constraint');
unlike($stderr, qr/plaintext-4/, 'the error shows no plaintext credential');
# The server log: what dalgo's error says (ERROR, DETAIL, CONTEXT) holds no
# plaintext.  The STATEMENT line is the client's own text, which PostgreSQL
# logs verbatim: clients send credentials as bind parameters
# (docs/security.md).
my @lines = grep { /plaintext-4/ && !/(STATEMENT|statement):/ } split /\n(?=\d{4}-)/, slurp_file($node->logfile);
is(scalar(@lines), 0, q{the server log's error lines show none}) or diag join "\n", @lines;

# The key is created by the first write of a secret: its LOG line must not
# carry that write's statement (RAISE LOG would attach it, plaintext and all).
rename($keyfile, "$keyfile.aside") or die "rename: $!";
$node->safe_psql('postgres', q{
	INSERT INTO dalgo.sources (organization_id, name, source_type, config) VALUES
		('22222222-0000-4000-8000-0000000000a0', 'Api 2', 'api', '{"url": "https://x", "credentials": {"bearer_token": "tok-plaintext-5"}}')});
ok(-e $keyfile, 'the first secret written creates a key');
# (The test cluster logs every statement, log_statement = all; what must not
# happen is dalgo's own line carrying the statement along.)
my @entries = grep { /created the secret key/ } split /\n(?=\d{4}-)/, slurp_file($node->logfile);
is(scalar(@entries), 2, 'and says so in the server log (the update made the first key)');
is(scalar(grep { /plaintext-5|STATEMENT/ } @entries), 0, 'without the statement that wrote the secret')
	or diag join "\n", @entries;

$node->stop;
done_testing();
