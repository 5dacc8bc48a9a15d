# accounts_concurrency: two clients refreshing one token at the same time
# get exactly one new session; the loser of a race does not kill the
# winner's family, a later replay does.  Also, across sessions: the
# dalgo_mail notification carries nothing, and at default log settings a
# failed sign-in, reset or API-key call leaves no secret in the server log.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('dalgo_accounts');
$node->init;
$node->append_conf('postgresql.conf', qq{shared_preload_libraries = 'dalgo'
max_worker_processes = 16
dalgo.jwt_secret = '0123456789abcdef0123456789abcdef-tap'
dalgo.bcrypt_cost = 4
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION dalgo;
	SET ROLE dalgo_anon;
	SELECT dalgo.sign_up('race@example.org', 'race password 1');
});

sub sign_in
{
	return $node->safe_psql('postgres',
		q{SET ROLE dalgo_anon; SELECT refresh_token FROM dalgo.sign_in('race@example.org', 'race password 1')});
}

sub live_in_family
{
	my ($token) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT count(*) FROM dalgo.refresh_tokens
		WHERE family_id = (SELECT family_id FROM dalgo.refresh_tokens WHERE token_hash = dalgo_internal.token_digest('$token'))
		  AND revoked_at IS NULL});
}

# One refresh holds its transaction open; the other arrives meanwhile.
my $token = sign_in();
my $s1 = $node->background_psql('postgres');
my $s2 = $node->background_psql('postgres', on_error_stop => 0);
$s1->query_safe('SET ROLE dalgo_anon');
$s2->query_safe('SET ROLE dalgo_anon');
$s1->query_safe('BEGIN');
my $winner = $s1->query_safe("SELECT refresh_token FROM dalgo.refresh_session('$token')");
like($winner, qr/^[A-Za-z0-9_-]{43}$/, 'the first refresh gets a new token');
my ($out, $failed) = $s2->query("SELECT refresh_token FROM dalgo.refresh_session('$token')");
ok($failed, 'the concurrent refresh of the same token fails at once');
like($s2->{stderr}, qr/invalid refresh token/, 'with the usual error');
$s1->query_safe('COMMIT');
is(live_in_family($winner), '1', "the winner's new token stays live: losing a race is not reuse");
is($node->safe_psql('postgres', qq{SET ROLE dalgo_anon; SELECT count(*) FROM dalgo.refresh_session('$winner')}), '1',
	'and it refreshes');

# Replaying the rotated token afterwards is reuse: the family dies.
($out, $failed) = $s2->query("SELECT refresh_token FROM dalgo.refresh_session('$token')");
ok($failed, 'a replay after the race fails');
is(live_in_family($token), '0', 'and revokes the whole family');
$s1->quit;
$s2->quit;

# Truly simultaneous refreshes, many times: exactly one succeeds each time.
my $psql = $node->installed_command('psql');
my $all_single = 1;
for my $round (1 .. 10)
{
	my $t = sign_in();
	my (@harness, @outs, @errs);
	for my $i (0 .. 1)
	{
		($outs[$i], $errs[$i]) = ('', '');
		$harness[$i] = IPC::Run::start(
			[ $psql, '-X', '-A', '-t', '-d', $node->connstr('postgres'), '-c',
			  "SET ROLE dalgo_anon; SELECT refresh_token FROM dalgo.refresh_session('$t')" ],
			'>', \$outs[$i], '2>', \$errs[$i]);
	}
	my $wins = 0;
	for my $i (0 .. 1)
	{
		$harness[$i]->finish;
		$wins++ if $outs[$i] =~ /^[A-Za-z0-9_-]{43}$/m && $errs[$i] eq '';
	}
	if ($wins != 1)
	{
		$all_single = 0;
		diag("round $round: $wins refreshes succeeded; errors: $errs[0] $errs[1]");
	}
}
ok($all_single, 'two simultaneous refreshes of one token: exactly one succeeds, ten rounds out of ten');

# A caller cancelled while its failed attempt is being recorded (a short
# statement_timeout to learn "wrong password" cheaply) is still counted.
my $failures = q{SELECT count(*) FROM dalgo.sign_in_attempts
	WHERE email_hash = sha256(convert_to('race@example.org', 'UTF8')) AND NOT succeeded};
my $before = $node->safe_psql('postgres', $failures);
my $blocker = $node->background_psql('postgres');
$blocker->query_safe('BEGIN');
$blocker->query_safe('LOCK TABLE dalgo.sign_in_attempts IN SHARE MODE');
my $guesser = $node->background_psql('postgres', on_error_stop => 0);
($out, $failed) = $guesser->query(
	q{SET statement_timeout = '1s'; SELECT * FROM dalgo.sign_in('race@example.org', 'a wrong guess')});
like($guesser->{stderr}, qr/statement timeout/, 'the guess is cancelled while its attempt is being recorded');
$blocker->query_safe('COMMIT');
my $counted = 0;
for (my $i = 0; $i < 100 && !$counted; $i++)
{
	$counted = $node->safe_psql('postgres', $failures) > $before;
	usleep(100_000) unless $counted;
}
ok($counted, 'cancelled_guess_still_counted: the attempt is recorded although its caller was cancelled');
$blocker->quit;
$guesser->quit;

# The mail notification carries nothing.
my $listener = $node->background_psql('postgres');
$listener->query_safe('SET ROLE dalgo_anon');
$listener->query_safe('LISTEN dalgo_mail');
$node->safe_psql('postgres', q{SET ROLE dalgo_anon; SELECT dalgo.request_password_reset('race@example.org')});
my $seen = '';
for (my $i = 0; $i < 100 && $seen !~ /Asynchronous notification/; $i++)
{
	$seen .= $listener->query('SELECT 1');
	usleep(100_000) if $seen !~ /Asynchronous notification/;
}
like($seen, qr/Asynchronous notification "dalgo_mail"/, 'queuing a mail notifies dalgo_mail');
unlike($seen, qr/with payload/, 'with an empty payload');
$listener->quit;

# No secret in the server log at default settings, nor when every statement is logged.
$node->append_conf('postgresql.conf', "log_statement = 'none'\n");
$node->reload;
my $log_offset = -s $node->logfile;
$node->psql('postgres', q{SET ROLE dalgo_anon; SELECT * FROM dalgo.sign_in('race@example.org', 'Log-Secret-Password-1')});
$node->psql('postgres', q{SET ROLE dalgo_anon; SELECT dalgo.reset_password('Log-Secret-Reset-Token', 'Log-Secret-New-Password')});
$node->psql('postgres', q{SET ROLE dalgo_anon; SELECT dalgo.authenticate_api_key('dk_Log-Secret-Api-Key')});
$node->psql('postgres', q{SET ROLE dalgo_anon; SELECT * FROM dalgo.refresh_session('Log-Secret-Refresh-Token')});
$node->psql('postgres', q{SELECT 'Log-Control-Statement'::int});
my $log = slurp_file($node->logfile, $log_offset);
like($log, qr/invalid email or password/, 'the failed sign-in is logged');
like($log, qr/Log-Control-Statement/, 'control: a failing statement is logged with its text at these settings');
unlike($log, qr/Log-Secret/, 'no password, token or key from an account call appears in the log');
$node->append_conf('postgresql.conf', "log_statement = 'all'\n");
$node->reload;
$log_offset = -s $node->logfile;
$node->psql('postgres', q{SET ROLE dalgo_anon; SELECT * FROM dalgo.sign_in('race@example.org', 'Log-Secret-Password-2')});
$node->psql('postgres', q{SELECT 'Log-Control-Statement-2'});
$log = slurp_file($node->logfile, $log_offset);
like($log, qr/Log-Control-Statement-2/, 'control: log_statement = all logs statements');
unlike($log, qr/Log-Secret/, 'with log_statement = all, an account call is logged without its arguments');

$node->stop;
done_testing();
