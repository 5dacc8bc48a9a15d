# google_sheets and api sources, fetched over HTTP by the run workers from a
# local server (test/fixtures/http_server.py on a free 127.0.0.1 port; no
# packet leaves 127.0.0.0/8).  Sheets values with blank and duplicate
# headers and short rows; api pagination in its four styles; credentials
# (api key, bearer token) sent as headers; 401, 429 with Retry-After,
# 500-then-200, a timeout, an oversized body, redirects to hosts that are
# not listed; a failure keeps the previous table; progress is visible to the
# organization's members only; credentials appear in no error, run row,
# audit row or server log line.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use File::Basename qw(dirname);
use Time::HiRes qw(time);

my $node = PostgreSQL::Test::Cluster->new('dalgo_http');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'dalgo'
max_worker_processes = 16
dalgo.http_allow_hosts = '127.0.0.1'
dalgo.http_timeout = 3
dalgo.http_retries = 2
log_min_messages = debug1
log_error_verbosity = verbose
log_statement = none
});
$node->start;

# The local HTTP server.
my $dir = PostgreSQL::Test::Utils::tempdir;
my $server = dirname(__FILE__) . '/../fixtures/http_server.py';
my $pid = fork();
die "fork: $!" unless defined $pid;
if ($pid == 0)
{
	exec('python3', $server, "$dir/port", "$dir/requests.log") or die "exec: $!";
}
END { kill 'TERM', $pid if $pid; }
for (1 .. 100) { last if -e "$dir/port"; select(undef, undef, undef, 0.1); }
my $port = PostgreSQL::Test::Utils::slurp_file("$dir/port");
like($port, qr/^\d+$/, 'the local HTTP server listens on 127.0.0.1');
my $base = "http://127.0.0.1:$port";
$node->safe_psql('postgres', "ALTER SYSTEM SET dalgo.google_sheets_url = '$base'; SELECT pg_reload_conf();");

my $org = '22222222-0000-4000-8000-0000000000a0';
my $other = '22222222-0000-4000-8000-0000000000b0';
my $schema = 'org_222222220000400080000000000000a0';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.users (id, email, full_name, password_hash) VALUES
		('11111111-0000-4000-8000-000000000001', 'owner.a\@example.org', 'Owner A', 'h'),
		('11111111-0000-4000-8000-000000000002', 'viewer.a\@example.org', 'Viewer A', 'h'),
		('11111111-0000-4000-8000-000000000003', 'owner.b\@example.org', 'Owner B', 'h');
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('$org', 'Org A', 'org-a'), ('$other', 'Org B', 'org-b');
	INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
		('$org', '11111111-0000-4000-8000-000000000001', 'owner'),
		('$org', '11111111-0000-4000-8000-000000000002', 'viewer'),
		('$other', '11111111-0000-4000-8000-000000000003', 'owner');
	SELECT dalgo.ensure_warehouse('$org'), dalgo.ensure_warehouse('$other');
});
# The first credentials written create the secret key, with a LOG line that
# quotes the writing statement: a throwaway one, so that the log check
# below is about the fetch, not about this test's own statements.
$node->safe_psql('postgres', qq{
	INSERT INTO dalgo.sources (organization_id, name, source_type, config)
		VALUES ('$other', 'key maker', 'api', '{"credentials": {"bearer_token": "not-a-real-one"}}');
});

my $n = 0;

# Create a source (and its daily schedule); returns its id.
sub source
{
	my ($type, $config, $table) = @_;
	$n++;
	my $sid = sprintf('33333333-0000-4000-8000-%012d', $n);
	my $sch = sprintf('88888888-0000-4000-8000-%012d', $n);
	$config =~ s/'/''/g;
	$node->safe_psql('postgres', qq{
		INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name)
			VALUES ('$sid', '$org', 'source $n', '$type', '$config', '$table');
		INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency, next_run_at)
			VALUES ('$sch', '$org', '$sid', 'daily', now() + interval '1 day');
	});
	return $sid;
}

# Change a source's config.
sub reconfigure
{
	my ($sid, $config) = @_;
	$config =~ s/'/''/g;
	$node->safe_psql('postgres', "UPDATE dalgo.sources SET config = '$config' WHERE id = '$sid'");
}

# Make the source's schedule due, wait for its run to end; returns "status|error|rows".
sub sync_now
{
	my ($sid) = @_;
	my $before = $node->safe_psql('postgres', "SELECT count(*) FROM dalgo.sync_runs WHERE source_id = '$sid'");
	$node->safe_psql('postgres', "UPDATE dalgo.schedules SET next_run_at = now() WHERE source_id = '$sid'");
	$node->poll_query_until('postgres', qq{
		SELECT count(*) > $before AND bool_and(status NOT IN ('pending', 'running'))
		FROM dalgo.sync_runs WHERE source_id = '$sid'}) or die "the run of $sid did not end";
	return $node->safe_psql('postgres', qq{
		SELECT status || '|' || coalesce(error_message, '') || '|' || coalesce(rows_synced::text, '')
		FROM dalgo.sync_runs WHERE source_id = '$sid' ORDER BY created_at DESC LIMIT 1});
}

# Requests the server saw whose path matches a pattern.
sub requests
{
	my ($re) = @_;
	my @lines = grep { /$re/ } split /\n/, PostgreSQL::Test::Utils::slurp_file("$dir/requests.log");
	return scalar @lines;
}

sub sq { return $node->safe_psql('postgres', $_[0]); }

# --- google_sheets -------------------------------------------------------
my $sheet = source('google_sheets', '{"spreadsheet_id": "sheet-1", "range": "Visits!A1:F",
	"credentials": {"api_key": "sheet-key-SECRET"}}', 'visits');
is(sync_now($sheet), 'success||3', 'a Google Sheet syncs in the database');
is(sq(qq{SELECT string_agg(column_name || ':' || column_type, ',' ORDER BY column_order) FROM dalgo.source_schemas WHERE source_id = '$sheet'}),
	'Name:text,column_2:text,Name_2:text,Count:bigint,column_4:text,column_6:text',
	'blank and duplicate headers get stable names; cells past the header get columns (typed by finish_sync)');
is(sq(qq{SELECT string_agg(concat_ws('/', "Name", column_2, "Name_2", "Count", column_4, column_6, 'end'), ';' ORDER BY "Name") FROM $schema.visits}),
	'Asha/x/A2/3/end;Ben/end;Chitra/y/C2/5/e/extra/end', 'short rows are padded with NULL');
is(requests(qr{/v4/spreadsheets/sheet-1/values/Visits%21A1%3AF\?majorDimension=ROWS.*"X-goog-api-key": "sheet-key-SECRET"}), 1,
	'the values endpoint is asked once, with the API key in a header (not the URL)');
is(sq(qq{SELECT count(*) FROM dalgo.warehouse_tables WHERE source_id = '$sheet' AND table_name = 'visits'}), '1',
	'the table is registered in warehouse_tables');

my $first = source('google_sheets', '{"spreadsheet_id": "sheet-2", "credentials": {"api_key": "sheet-key-SECRET"}}', 'first_sheet');
is(sync_now($first), 'success||3', 'without a range, the first sheet');
is(requests(qr{/v4/spreadsheets/sheet-2\?fields=sheets.properties.title}), 1, 'its title comes from the metadata');
is(requests(qr{/v4/spreadsheets/sheet-2/values/%27Visits%27\?}), 1, 'then the values of that sheet');

my $badkey = source('google_sheets', '{"spreadsheet_id": "sheet-3", "range": "A1:B", "credentials": {"api_key": "wrong-SECRET"}}', 'bad_key');
like(sync_now($badkey), qr{^failed\|$base/v4/spreadsheets/sheet-3/values/A1%3AB answered HTTP 401\|$},
	'a 401 fails the run with the URL and the status, nothing else');

# --- api: the four pagination styles -------------------------------------
my $next = source('api', qq{{"url": "$base/api/next?n=2&pages=3", "records": "/data/items",
	"pagination": {"type": "next_url", "pointer": "/next"}}}, 'by_next');
is(sync_now($next), 'success||6', 'next_url pagination: 3 pages of 2');
is(sq(qq{SELECT string_agg(column_name || ':' || column_type, ',' ORDER BY column_order) FROM dalgo.source_schemas WHERE source_id = '$next'}),
	'id:bigint,name:text,tags:jsonb,meta:jsonb', 'keys become columns in first-seen order; nested objects stay jsonb');
is(sq(qq{SELECT string_agg(id || '=' || (meta->>'k'), ',' ORDER BY id::int) FROM $schema.by_next}), '0=0,1=1,2=2,3=3,4=4,5=5',
	'every record of every page');

# A transformation over the synced api table runs, on its typed columns.
sq(qq{
	BEGIN;
	SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000001';
	SET LOCAL ROLE dalgo_authenticated;
	INSERT INTO dalgo.transformations (organization_id, name, recipe, output_table_name) VALUES ('$org', 'api ids',
		'{"version": 1, "source": {"table": "by_next"}, "steps": [{"type": "filter", "conditions": [{"column": "id", "op": "gte", "value": {"val": 3}}]}]}',
		'api_ids');
	SELECT dalgo.run_transformation(id) FROM dalgo.transformations WHERE name = 'api ids';
	COMMIT;});
is(sq(qq{SELECT string_agg(id::text, ',' ORDER BY id) || ' ' || pg_typeof(min(id)) FROM $schema.api_ids}), '3,4,5 bigint',
	'a transformation over the synced api table runs');

my $page = source('api', qq{{"url": "$base/api/page?n=2&pages=3", "records": "/items",
	"pagination": {"type": "page", "param": "page", "start": 1}}}, 'by_page');
is(sync_now($page), 'success||6', 'page pagination stops at the first empty page');
is(requests(qr{/api/page\?n=2&pages=3&page=4}), 1, 'which it asked for');

my $offset = source('api', qq{{"url": "$base/api/offset?total=7", "records": "/items",
	"pagination": {"type": "offset", "param": "offset", "limit_param": "limit", "limit": 3}}}, 'by_offset');
is(sync_now($offset), 'success||7', 'offset pagination stops at a short page');
is(requests(qr{/api/offset\?total=7&offset=6&limit=3}), 1, 'offsets advance by the records received');

my $link = source('api', qq{{"url": "$base/api/link?n=2&pages=3", "records": "",
	"pagination": {"type": "link_header"}}}, 'by_link');
is(sync_now($link), 'success||6', 'Link header pagination (records at the root)');

my $capped = source('api', qq{{"url": "$base/api/next?n=2&pages=50", "records": "/data/items",
	"pagination": {"type": "next_url", "pointer": "/next"}, "max_pages": 2}}, 'capped');
is(sync_now($capped), 'success||4', 'max_pages bounds the pages fetched');

# --- credentials and failures --------------------------------------------
my $auth = source('api', qq{{"url": "$base/api/auth", "records": "/items",
	"credentials": {"bearer_token": "api-token-SECRET"}}}, 'authed');
is(sync_now($auth), 'success||2', 'a bearer token is sent');
my $hdr = source('api', qq{{"url": "$base/api/auth", "records": "/items",
	"credentials": {"header": "X-Api-Key", "value": "key-SECRET"}}}, 'by_header');
is(sync_now($hdr), 'success||2', 'a named header is sent');
my $basic = source('api', qq{{"url": "$base/api/auth", "records": "/items",
	"credentials": {"username": "user", "password": "pw-SECRET"}}}, 'by_basic');
is(sync_now($basic), 'success||2', 'basic auth is sent');
my $smuggle = source('api', qq{{"url": "$base/api/auth", "records": "/items",
	"credentials": {"header": "X-Api-Key", "value": "key-SECRET\\r\\nX-Evil: 1"}}}, 'smuggled');
like(sync_now($smuggle), qr{^failed\|config.credentials.header has a header value with a line break\|$},
	'a header value with a line break is refused');
my $hosthdr = source('api', qq{{"url": "$base/api/auth", "records": "/items", "headers": {"Host": "internal.example"}}}, 'host_header');
like(sync_now($hosthdr), qr{^failed\|config.headers may not set the header "Host"\|$},
	'a Host header is refused (a virtual host behind an allowed address)');
my $framing = source('api', qq{{"url": "$base/api/auth", "records": "/items",
	"credentials": {"header": "transfer-encoding", "value": "chunked"}}}, 'framing_header');
like(sync_now($framing), qr{^failed\|config.credentials.header may not set the header "Transfer-Encoding"\|$},
	'so is a framing header, in any case');

# Credentials go only to the source's origin: the same host on another port
# is another origin.  A second local server listens on another port.
my $pid2 = fork();
die "fork: $!" unless defined $pid2;
if ($pid2 == 0)
{
	exec('python3', $server, "$dir/port2", "$dir/requests2.log") or die "exec: $!";
}
END { kill 'TERM', $pid2 if $pid2; }
for (1 .. 100) { last if -e "$dir/port2"; select(undef, undef, undef, 0.1); }
my $port2 = PostgreSQL::Test::Utils::slurp_file("$dir/port2");
my $hop = source('api', qq{{"url": "$base/api/redirect?to=http://127.0.0.1:$port2/api/auth", "records": "/items",
	"credentials": {"bearer_token": "hop-SECRET"}}}, 'other_port');
sync_now($hop);
my $log2 = -e "$dir/requests2.log" ? PostgreSQL::Test::Utils::slurp_file("$dir/requests2.log") : '';
like($log2, qr{/api/auth}, 'a redirect to another port of the host is followed');
unlike($log2, qr{hop-SECRET}, 'without the credentials');
reconfigure($auth, qq{{"url": "$base/api/auth", "records": "/items", "credentials": {"bearer_token": "stale-SECRET"}}});
like(sync_now($auth), qr{^failed\|$base/api/auth answered HTTP 401\|$}, 'a wrong token fails the run');
is(sq("SELECT count(*) FROM $schema.authed"), '2', 'and the previous table and its rows stay');

my $t0 = time;
my $r429 = source('api', qq{{"url": "$base/api/429?key=a", "records": "/items"}}, 'after_429');
is(sync_now($r429), 'success||2', '429 is retried');
cmp_ok(time - $t0, '>=', 1, 'after the Retry-After delay');
is(requests(qr{/api/429\?key=a}), 2, 'once');

my $r500 = source('api', qq{{"url": "$base/api/500?key=a", "records": "/items"}}, 'after_500');
is(sync_now($r500), 'success||2', '500 then 200 succeeds');

my $slow = source('api', qq{{"url": "$base/api/page?n=2&pages=1", "records": "/items", "pagination": {"type": "page"}}}, 'slow');
is(sync_now($slow), 'success||2', 'a first sync');
reconfigure($slow, qq{{"url": "$base/api/slow?s=10", "records": "/items"}});
like(sync_now($slow), qr{^failed\|the request to $base/api/slow timed out after 3 s \(dalgo.http_timeout\)\|$},
	'a slow response times out after dalgo.http_timeout');
is(sq("SELECT count(*) FROM $schema.slow"), '2', 'and the previous table stays');

sq("ALTER SYSTEM SET dalgo.http_max_bytes = '1MB'; SELECT pg_reload_conf();");
reconfigure($slow, qq{{"url": "$base/api/big?mb=2", "records": "/items"}});
like(sync_now($slow), qr{^failed\|the response from $base/api/big is larger than dalgo.http_max_bytes \(1048576 bytes\)\|$},
	'an oversized body fails the run');
is(sq("SELECT count(*) FROM $schema.slow"), '2', 'and the previous table stays');
sq("ALTER SYSTEM RESET dalgo.http_max_bytes; SELECT pg_reload_conf();");

reconfigure($slow, qq{{"url": "$base/api/bad", "records": "/items"}});
like(sync_now($slow), qr{^failed\|invalid input syntax for type json\|$}, 'a body that is not JSON fails the run');

# --- addresses and redirects ---------------------------------------------
my $redir = source('api', qq{{"url": "$base/api/redirect?to=%2Fapi%2Fpage%3Fn%3D1%26pages%3D1", "records": "/items"}},
	'redirected');
is(sync_now($redir), 'success||1', 'a redirect within the listed host is followed');

for my $case (
	[ "http://127.0.0.2:$port/api/page", qr{redirect from $base/api/redirect to http://127.0.0.2:$port/api/page refused: plain http is allowed only to hosts in dalgo.http_allow_hosts} ],
	[ "http://localhost:$port/api/page", qr{redirect from $base/api/redirect to http://localhost:$port/api/page refused: plain http is allowed only to hosts in dalgo.http_allow_hosts} ],
	[ "https://localhost:$port/api/page", qr{connection to https://localhost:$port/api/page refused: address (127.0.0.1|::1) is not allowed} ],
	[ "https://127.0.0.2:$port/api/page", qr{connection to https://127.0.0.2:$port/api/page refused: address 127.0.0.2 is not allowed} ])
{
	my ($to, $msg) = @$case;
	(my $enc = $to) =~ s/([^A-Za-z0-9])/sprintf('%%%02X', ord $1)/ge;
	reconfigure($redir, qq{{"url": "$base/api/redirect?to=$enc", "records": "/items"}});
	like(sync_now($redir), qr{^failed\|$msg\|$}, "a redirect to $to is refused");
	is(sq("SELECT count(*) FROM $schema.redirected"), '1', 'and the previous table stays');
}
is(requests(qr{"host": "(127.0.0.2|localhost)}), 0, 'no request reached a host that is not listed');

reconfigure($redir, qq{{"url": "https://127.0.0.2:$port/api/page", "records": "/items"}});
like(sync_now($redir), qr{^failed\|connection to https://127.0.0.2:$port/api/page refused: address 127.0.0.2 is not allowed\|$},
	'a source URL on an address that is not allowed is refused, after DNS, before connecting');

reconfigure($redir, qq{{"url": "$base/api/loop?k=0", "records": "/items"}});
like(sync_now($redir), qr{^failed\|too many redirects from $base/api/loop \(at most 5 are followed\)\|$},
	'at most 5 redirects are followed');
is(requests(qr{/api/loop\?k=}), 6, 'the first request and 5 hops');

# --- progress --------------------------------------------------------------
my $progress = source('api', qq{{"url": "$base/api/next?n=500&pages=8&d=0.5", "records": "/data/items",
	"pagination": {"type": "next_url"}}}, 'progressing');
sq("UPDATE dalgo.schedules SET next_run_at = now() WHERE source_id = '$progress'");
# As a viewer of the organization (safe_psql: one statement at a time).
sub viewer_sees
{
	return sq(qq{BEGIN; SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002'; SET LOCAL ROLE dalgo_authenticated;
		SELECT count(*) = 1 FROM dalgo.run_progress() WHERE source_id = '$progress' AND rows_so_far >= 1000 AND page >= 3;
		COMMIT;});
}
my $watched = 0;
for (1 .. 300)
{
	if (viewer_sees() eq 't') { $watched = 1; last; }
	select(undef, undef, undef, 0.05);
}
ok($watched, 'a viewer of the organization watches the run: rows, bytes, page');
my $seen = sq(qq{BEGIN; SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002'; SET LOCAL ROLE dalgo_authenticated;
	SELECT bytes_so_far > 0 AND updated_at > now() - interval '1 second' AND organization_id = '$org'
	FROM dalgo.run_progress() WHERE source_id = '$progress'; COMMIT;});
is($seen, 't', 'updated within the last second');
is(sq(qq{BEGIN; SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000003'; SET LOCAL ROLE dalgo_authenticated;
	SELECT count(*) FROM dalgo.run_progress(); COMMIT;}), '0', "another organization's owner sees nothing");
ok($node->poll_query_until('postgres', qq{SELECT status = 'success' AND rows_synced = 4000 FROM dalgo.sync_runs
	WHERE source_id = '$progress'}), 'the run ends');
is(sq("SELECT count(*) FROM dalgo.run_progress()"), '0', 'and leaves no progress behind');

# --- run_schedule_now leaves an HTTP sync to the workers -------------------
my $now = sq(qq{BEGIN; SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000001'; SET LOCAL ROLE dalgo_authenticated;
	SELECT dalgo.run_schedule_now(id) FROM dalgo.schedules WHERE source_id = '$next'; COMMIT;});
ok($node->poll_query_until('postgres', "SELECT status = 'success' FROM dalgo.sync_runs WHERE id = '$now'"),
	'run_schedule_now of an api source: a run worker fetches it');

# --- credentials appear nowhere ---------------------------------------------
my $config = sq(qq{BEGIN; SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000001'; SET LOCAL ROLE dalgo_authenticated;
	SELECT dalgo.source_config('$auth')::text; COMMIT;});
like($config, qr{"url"}, 'the owner reads the source\'s config');
unlike($config, qr{SECRET}, 'without its credentials');
is(sq(q{SELECT count(*) FROM dalgo.sync_runs WHERE concat(error_message, details::text) LIKE '%SECRET%'}), '0',
	'no credential in sync_runs');
is(sq(q{SELECT count(*) FROM dalgo.audit_logs WHERE details::text ~ '(sheet-key|api-token|stale|wrong|key|pw)-SECRET'}), '0',
	'no credential in the audit trail');
my $log = PostgreSQL::Test::Utils::slurp_file($node->logfile);
like($log, qr/dalgo run/, 'the server log has the run workers\' lines');
unlike($log, qr/(sheet-key|api-token|stale|wrong|key|pw)-SECRET/, 'but no credential');

$node->stop;
done_testing();
