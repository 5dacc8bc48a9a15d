# recipe_cancel: no recipe holds a backend past a cancel or a timeout.
# pg_cancel_backend during the worst-case compile and the worst-case
# preview ends the call within 1 s, as a cancel (57014), never as a recipe
# error (22023); dalgo.statement_timeout bounds compilation, previews, and a
# whole run_transformation call with its upstream, as one deadline.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(gettimeofday tv_interval usleep);

my $node = PostgreSQL::Test::Cluster->new('recipe_cancel');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n");
$node->start;

my $org = '22222222-0000-4000-8000-0000000000c0';
my $wh = 'org_222222220000400080000000000000c0';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.organizations (id, name, slug) VALUES ('$org', 'Cancel', 'cancel');
	SELECT dalgo.ensure_warehouse('$org');
	-- 1,500 columns with long names: the widest chain a recipe can build
	SELECT format('CREATE TABLE $wh.wide (%s)', string_agg(format('%I text', repeat('c', 50) || g), ', '))
		FROM generate_series(1, 1500) g \\gexec
	CREATE TABLE $wh.big AS SELECT g AS id, (g % 5)::text AS k, md5(g::text) AS v FROM generate_series(1, 100000) g;
	CREATE VIEW $wh.slow AS SELECT 1 AS id FROM pg_sleep(0.9);
	ALTER TABLE $wh.wide OWNER TO dalgo_wh_222222220000400080000000000000c0;
	ALTER TABLE $wh.big OWNER TO dalgo_wh_222222220000400080000000000000c0;
	ALTER VIEW $wh.slow OWNER TO dalgo_wh_222222220000400080000000000000c0;
});

# The issue's attack: flatten_json with 100,000 keys (a 1 MB recipe).
my $flatten = qq{SELECT length(dalgo.compile_recipe('$org', jsonb_build_object('version', 1, 'source', '{"table": "wide"}'::jsonb,
	'steps', jsonb_build_array(jsonb_build_object('type', 'flatten_json', 'column', 'cccccccccccccccccccccccccccccccccccccccccccccccccc1',
	'keys', (SELECT jsonb_agg('k' || g) FROM generate_series(1, 100000) g))))))};
# The worst compile within the limits: eight type checks of a chain of about 4 MB.
my $worst_compile = qq{SELECT length(dalgo.compile_recipe('$org', jsonb_build_object('version', 1, 'source', '{"table": "wide"}'::jsonb, 'steps',
	(SELECT jsonb_agg('{"type": "filter", "conditions": [{"column": "cccccccccccccccccccccccccccccccccccccccccccccccccc1", "op": "is_not_null"}]}'::jsonb) FROM generate_series(1, 30)) ||
	(SELECT jsonb_agg(x ORDER BY g, k) FROM generate_series(1, 8) g, LATERAL (VALUES
		(1, jsonb_build_object('type', 'arithmetic', 'op', 'add', 'operands', '[{"val": 1}, {"val": 2}]'::jsonb, 'as', 'a' || g)),
		(2, '{"type": "union", "with": [{"table": "wide"}]}'::jsonb)) v(k, x)))))};
# The worst preview: a join that multiplies 100,000 rows by 20,000, then sorted.
my $worst_preview = qq{SELECT count(*) FROM dalgo.preview_recipe('$org', '{"version": 1, "source": {"table": "big"}, "steps": [
	{"type": "join", "with": {"table": "big"}, "on": [{"left": "k", "right": "k"}], "columns": ["v"]},
	{"type": "sort", "by": [{"column": "v_2", "desc": true}]}]}', 100)};

# Start sql in its own session; cancel it after $after seconds (unless it
# ended already); return (seconds from start to end, seconds from cancel to
# end or undef, stderr).
sub run_and_cancel
{
	my ($name, $sql, $after, $settings) = @_;
	my ($out, $err) = ('', '');
	my $t0 = [gettimeofday];
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-q', '-v', 'VERBOSITY=verbose', '-d', $node->connstr('postgres') . " application_name=$name",
		  '-c', ($settings // '') . $sql ],
		'>', \$out, '2>', \$err);
	my $cancelled_at;
	while ($h->pumpable && tv_interval($t0) < $after)
	{
		usleep(20_000);
		$h->pump_nb;
	}
	if ($h->pumpable)
	{
		# Timed from the cancel's delivery: pg_cancel_backend() has returned
		# (not from before the psql that sends it starts, which under load
		# took a tenth of the second by itself).
		$node->safe_psql('postgres', "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = '$name'");
		$cancelled_at = [gettimeofday];
	}
	$h->finish;
	my $end = [gettimeofday];
	return (tv_interval($t0, $end), $cancelled_at ? tv_interval($cancelled_at, $end) : undef, $err);
}

# 1. The 100,000-key flatten is refused at once (27-43 s of CPU on 0.1.0).
my ($total, $after_cancel, $err) = run_and_cancel('flatten', $flatten, 1);
cmp_ok($total, '<', 2, "the 100,000-key flatten_json ends within 1 s of a cancel at 1 s (took ${total}s)");
like($err, qr/54000: recipe: the recipe's size in bytes is \d+, over the limit max_recipe_bytes = 262144/,
	'it is refused with program_limit_exceeded, naming the limit');

# 2. The worst compile within the limits stops within 1 s of a cancel, as a cancel.
($total, $after_cancel, $err) = run_and_cancel('compile', $worst_compile, 0.5);
ok(defined $after_cancel, 'the worst compile was still running after 0.5 s');
cmp_ok($after_cancel // 99, '<', 1, 'the worst compile ends within 1 s of pg_cancel_backend (' . ($after_cancel // 'n/a') . 's)');
like($err, qr/57014: canceling statement due to user request/, 'it ends as a cancel (57014), not as a recipe error (22023)');

# 3. The worst preview stops within 1 s of a cancel.
($total, $after_cancel, $err) = run_and_cancel('preview', $worst_preview, 1);
ok(defined $after_cancel, 'the worst preview was still running after 1 s');
cmp_ok($after_cancel // 99, '<', 1, 'the worst preview ends within 1 s of pg_cancel_backend (' . ($after_cancel // 'n/a') . 's)');
like($err, qr/57014: canceling statement due to user request/, 'it ends as a cancel');

# 4. dalgo.statement_timeout bounds compilation and previews.
($total, $after_cancel, $err) = run_and_cancel('compile_timeout', $worst_compile, 30, "SET dalgo.statement_timeout = '1s'; ");
cmp_ok($total, '<', 2, "the worst compile ends within 1 s of dalgo.statement_timeout = 1s (took ${total}s)");
like($err, qr/57014: canceling statement due to statement timeout/, 'compilation runs under dalgo.statement_timeout');
($total, $after_cancel, $err) = run_and_cancel('preview_timeout', $worst_preview, 30, "SET dalgo.statement_timeout = '1s'; ");
cmp_ok($total, '<', 2, "the worst preview ends within 1 s of dalgo.statement_timeout = 1s (took ${total}s)");
like($err, qr/57014: canceling statement due to statement timeout/, 'the preview is cancelled by the timeout');

# 5. A timeout that fires inside a type check (here: waiting for a lock that
#    the parse analysis of a raw sql step needs) is re-raised as a timeout;
#    0.1.0 reported it as "recipe ... do not type-check" (22023).
$node->safe_psql('postgres', qq{CREATE TABLE $wh.other (id int);
	ALTER TABLE $wh.other OWNER TO dalgo_wh_222222220000400080000000000000c0;});
my ($lin, $lout, $lerr) = ('', '', '');
my $locker = IPC::Run::start([ 'psql', '-X', '-q', '-d', $node->connstr('postgres') ], '<', \$lin, '>', \$lout, '2>', \$lerr);
$lin .= "BEGIN; LOCK TABLE $wh.other IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n";
$locker->pump until $lout =~ /locked/;
($total, $after_cancel, $err) = run_and_cancel('type_check_timeout',
	qq{SELECT dalgo.compile_recipe('$org', '{"version": 1, "source": {"table": "big"}, "steps": [
		{"type": "sql", "select": "id, (SELECT count(*) FROM $wh.other) AS n"}]}')}, 30,
	"SET dalgo.allow_raw_sql = on; SET statement_timeout = '1s'; ");
like($err, qr/57014: canceling statement due to statement timeout/, 'a timeout during a type check stays a timeout');
unlike($err, qr/22023|do not type-check/, 'it is not reported as a recipe error');
$lin .= "COMMIT;\n\\q\n";
$locker->finish;

# 6. One deadline for run_transformation with its upstream: three builds
#    of 0.9 s each under dalgo.statement_timeout = 2s (each got its own
#    2 s on 0.1.0, and the call succeeded after 2.7 s).
my @t = map { sprintf('55555555-0000-4000-8000-0000000000c%d', $_) } 1 .. 3;
$node->safe_psql('postgres', qq{
	INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name) VALUES
		('$t[0]', '$org', 't1', '{"version": 1, "source": {"table": "slow"}, "steps": []}', 'out1');
	SELECT dalgo.run_transformation('$t[0]');
});
$node->safe_psql('postgres', qq{
	INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name) VALUES
		('$t[1]', '$org', 't2', '{"version": 1, "source": {"table": "slow"}, "steps": [{"type": "union", "with": [{"transformation_id": "$t[0]"}]}]}', 'out2');
	SELECT dalgo.run_transformation('$t[1]');
});
$node->safe_psql('postgres', qq{
	INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name) VALUES
		('$t[2]', '$org', 't3', '{"version": 1, "source": {"table": "slow"}, "steps": [{"type": "union", "with": [{"transformation_id": "$t[1]"}]}]}', 'out3');
});
($total, $after_cancel, $err) = run_and_cancel('run_upstream', "SELECT dalgo.run_transformation('$t[2]', true)", 30,
	"SET dalgo.statement_timeout = '2s'; ");
cmp_ok($total, '<', 2.6, "run_transformation with its upstream stops at the 2 s deadline (took ${total}s, 2.7 s of builds)");
like($err, qr/57014: canceling statement due to statement timeout/, 'the whole call runs under one dalgo.statement_timeout');
($total, $after_cancel, $err) = run_and_cancel('run_upstream_ok', "SELECT dalgo.run_transformation('$t[2]', true)", 30,
	"SET dalgo.statement_timeout = '5s'; ");
unlike($err, qr/ERROR/, 'with a deadline that fits, the same call succeeds');

$node->stop;
done_testing();
