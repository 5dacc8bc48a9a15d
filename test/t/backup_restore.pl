# Backups: pg_dump of a populated dalgo database, restored into an empty
# database of the same cluster (the roles, dalgo_wh_* included, exist there
# already, as pg_dumpall --globals-only would provide them elsewhere), gives
# back every row of every dalgo table, of the warehouse schemas and of the
# user's own tables, exactly: no trigger refuses, alters or duplicates a
# restored row.  Custom format with pg_restore (in one transaction or not),
# and plain SQL through psql.  In the copy, row-level security still scopes a member to
# their organization, the scheduler runs a due schedule, and restore mode
# (dalgo.restoring()) is out of reach of app roles.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_backup');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE src');
$node->safe_psql('src', 'CREATE EXTENSION dalgo');
$node->safe_psql('src', slurp_file('test/fixtures/backup_data.sql'));

# Every table and sequence of the extension is a configuration table.
is($node->safe_psql('src', q{
	SELECT coalesce(string_agg(c.oid::regclass::text, ' ' ORDER BY c.relname), 'none')
	FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	WHERE n.nspname = 'dalgo' AND c.relkind IN ('r', 'p', 'S')
	  AND c.oid <> ALL (SELECT unnest(extconfig) FROM pg_extension WHERE extname = 'dalgo')}),
	'none', 'every dalgo table and sequence is marked for pg_dump');

# Per table of dalgo, of the warehouse schemas and of public: owner, ACL,
# row count and the md5 of its rows in a fixed order; then the warehouse
# schemas with their owners.  ACLs are compared as effective ACLs: pg_dump
# leaves out an explicit ACL that equals the default.
my $fingerprint = q{
	SELECT string_agg(line, E'\n' ORDER BY line COLLATE "C") FROM (
		SELECT format('%s.%s owner=%s acl=%s rows=%s', n.nspname, c.relname, pg_get_userbyid(c.relowner),
			coalesce(c.relacl, acldefault('r', c.relowner))::text,
			(xpath('/row/m/text()', query_to_xml(format(
				'SELECT count(*) || '' '' || md5(coalesce(string_agg(t::text, E''\n'' ORDER BY t::text COLLATE "C"), '''')) AS m FROM %I.%I t',
				n.nspname, c.relname), false, true, '')))[1]::text) AS line
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE (n.nspname IN ('dalgo', 'public') OR n.nspname LIKE 'org\_%') AND c.relkind IN ('r', 'p', 'v')
		UNION ALL
		SELECT format('schema %s owner=%s acl=%s', nspname, pg_get_userbyid(nspowner), coalesce(nspacl, acldefault('n', nspowner))::text)
		FROM pg_namespace WHERE nspname LIKE 'org\_%'
	) s};
my $want = $node->safe_psql('src', $fingerprint);
my @empty = grep { /^dalgo\..* rows=0 / } split /\n/, $want;
is(scalar(@empty), 0, 'the source database has rows in every dalgo table') or diag join("\n", @empty);
like($want, qr/^org_\w+\.dashboard owner=dalgo_wh_\w+ .* rows=3 /m, 'and warehouse tables built by dalgo');

my $dir = PostgreSQL::Test::Utils::tempdir();
$node->command_ok(['pg_dump', '-Fc', '-f', "$dir/src.dump", '-d', 'src'], 'pg_dump -Fc');
$node->command_ok(['pg_dump', '-Fp', '-f', "$dir/src.sql", '-d', 'src'], 'pg_dump -Fp');

$node->safe_psql('postgres', 'CREATE DATABASE dst');
$node->command_ok(['pg_restore', '--exit-on-error', '-d', 'dst', "$dir/src.dump"],
	'pg_restore into an empty database: no error');
is($node->safe_psql('dst', $fingerprint), $want, 'every row of every table comes back exactly');

# The documented way: one transaction, so the new database's scheduler sees
# dalgo only once every row is in.
$node->safe_psql('postgres', 'CREATE DATABASE dst_single');
$node->command_ok(['pg_restore', '--single-transaction', '--exit-on-error', '-d', 'dst_single', "$dir/src.dump"],
	'pg_restore --single-transaction: no error');
is($node->safe_psql('dst_single', $fingerprint), $want, 'and the same rows');

$node->safe_psql('postgres', 'CREATE DATABASE dst_plain');
$node->command_ok(['psql', '-X', '-q', '-1', '-v', 'ON_ERROR_STOP=1', '-d', 'dst_plain', '-f', "$dir/src.sql"],
	'a plain SQL dump replays through psql: no error');
is($node->safe_psql('dst_plain', $fingerprint), $want, 'and the same rows');

# Restore mode: row_security off and a role that bypasses RLS.
is($node->safe_psql('dst', q{SELECT dalgo.restoring()}), 'f', 'a superuser is not restoring by default');
is($node->safe_psql('dst', q{SET row_security = off; SELECT dalgo.restoring()}), 't',
	'a superuser with row_security off is');

# An app server's request cannot reach it: with row_security off its writes
# fail, and a SECURITY DEFINER function it calls is still audited.
$node->safe_psql('dst', q{
	CREATE ROLE app_server LOGIN NOINHERIT;
	GRANT dalgo_authenticated TO app_server;
	GRANT SET ON PARAMETER dalgo.user_id TO app_server;
});
my $as_member = sub {
	my ($user, $sql) = @_;
	return $node->psql('dst', "BEGIN; SET LOCAL dalgo.user_id = '$user'; SET LOCAL ROLE dalgo_authenticated; "
		. "SET LOCAL row_security = off; $sql; COMMIT;", extra_params => ['-U', 'app_server']);
};
my ($rc, $out, $err) = $as_member->('11111111-0000-4000-8000-000000000001', 'SELECT dalgo.restoring()');
is($out, 'f', 'an app role with row_security off is not restoring');
($rc, $out, $err) = $as_member->('11111111-0000-4000-8000-000000000001', q{
	INSERT INTO dalgo.transformations (organization_id, name, recipe)
	VALUES ('22222222-0000-4000-8000-0000000000a0', 'forged', '{"version": 1, "source": {"table": "visits"}, "steps": []}')});
like($err, qr/row-level security/, 'and cannot write a dalgo table');
($rc, $out, $err) = $as_member->('11111111-0000-4000-8000-000000000003', q{SELECT dalgo.create_organization('Org C', 'org-c')});
is($rc, 0, 'a SECURITY DEFINER function still works for it') or diag $err;
is($node->safe_psql('dst', q{
	SELECT count(*) FROM dalgo.audit_logs a JOIN dalgo.organizations o ON o.id = a.organization_id
	WHERE o.slug = 'org-c' AND a.action = 'insert'}), '2', 'and what it writes is audited (organization and owner)');

# Row-level security in the copy: member A sees org A only.
is($node->safe_psql('dst', q{
	BEGIN;
	SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
	SET LOCAL ROLE dalgo_authenticated;
	SELECT string_agg(DISTINCT o.slug, ',') || ' ' || count(DISTINCT s.id) || ' '
		|| (SELECT count(*) FROM dalgo.transformations WHERE organization_id = '22222222-0000-4000-8000-0000000000b0')
	FROM dalgo.organizations o LEFT JOIN dalgo.sources s ON s.organization_id = o.id;
	COMMIT;}), 'org-a 2 0', 'row-level security scopes a member to their organization in the copy');

# The scheduler runs a due schedule in the copy.
$node->safe_psql('dst', q{UPDATE dalgo.schedules SET next_run_at = now() WHERE id = '88888888-0000-4000-8000-0000000000a2'});
ok($node->poll_query_until('dst', q{
	SELECT count(*) = 2 FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000a2' AND status = 'success'}),
	'the scheduler of the restored database runs a due schedule');
is($node->safe_psql('dst', q{SELECT next_run_at > now() FROM dalgo.schedules WHERE id = '88888888-0000-4000-8000-0000000000a2'}),
	't', 'and moves it to its next slot');

# Background workers never enter restore mode, whatever the database's
# settings say: with row_security off for the whole database, the rows the
# scheduler and its run worker insert are still audited.
my $audited_runs = q{
	SELECT count(*) FROM dalgo.sync_runs r
	WHERE r.source_id = '33333333-0000-4000-8000-0000000000a2' AND r.status = 'success'
	  AND EXISTS (SELECT FROM dalgo.audit_logs a WHERE a.resource_id = r.id AND a.action = 'insert')};
is($node->safe_psql('dst', $audited_runs), '2', 'the restored run and the new one are audited');
$node->safe_psql('postgres', 'ALTER DATABASE dst SET row_security = off');
$node->restart;	# the scheduler reconnects with the database's settings
$node->safe_psql('dst', q{UPDATE dalgo.schedules SET next_run_at = now() WHERE id = '88888888-0000-4000-8000-0000000000a2'});
ok($node->poll_query_until('dst', q{
	SELECT count(*) = 3 FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000a2' AND status = 'success'}),
	'with row_security off for the database, the scheduler runs it again');
is($node->safe_psql('dst', $audited_runs), '3', 'and its run is audited: workers are never in restore mode');

$node->stop;
done_testing();
