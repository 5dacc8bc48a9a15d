# A run worker serves many organizations one run after another: a setting
# that one organization's raw SQL step changes (set_config(..., false), a
# session-level SET) must not reach the next run, another organization's.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_worker_settings');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\n"
	. "dalgo.allow_raw_sql = on\ndalgo.max_concurrent_runs = 1\nwork_mem = '4MB'\n");
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION dalgo;
	INSERT INTO dalgo.organizations (id, name, slug) VALUES
		('22222222-0000-4000-8000-0000000000a0', 'A', 'a'), ('22222222-0000-4000-8000-0000000000b0', 'B', 'b');
	SELECT dalgo.ensure_warehouse(o) FROM (VALUES ('22222222-0000-4000-8000-0000000000a0'::uuid),
		('22222222-0000-4000-8000-0000000000b0'::uuid)) v(o);
	CREATE TABLE org_222222220000400080000000000000a0.base (n int);
	INSERT INTO org_222222220000400080000000000000a0.base VALUES (1);
	ALTER TABLE org_222222220000400080000000000000a0.base OWNER TO dalgo_wh_222222220000400080000000000000a0;
	CREATE TABLE org_222222220000400080000000000000b0.base (n int);
	INSERT INTO org_222222220000400080000000000000b0.base VALUES (1);
	ALTER TABLE org_222222220000400080000000000000b0.base OWNER TO dalgo_wh_222222220000400080000000000000b0;
	-- Each recipe records the settings it runs under, then changes them for the session.
	INSERT INTO dalgo.transformations (id, organization_id, name, recipe, output_table_name) VALUES
		('55555555-0000-4000-8000-0000000000a1', '22222222-0000-4000-8000-0000000000a0', 'Leaky A',
		 '{"version": 1, "source": {"table": "base"}, "steps": [{"type": "sql", "select": "n, pg_catalog.current_setting(''work_mem'') AS wm, pg_catalog.pg_backend_pid() AS pid, pg_catalog.set_config(''work_mem'', ''77MB'', false) AS w"}]}', 'leaky'),
		('55555555-0000-4000-8000-0000000000b1', '22222222-0000-4000-8000-0000000000b0', 'Leaky B',
		 '{"version": 1, "source": {"table": "base"}, "steps": [{"type": "sql", "select": "n, pg_catalog.current_setting(''work_mem'') AS wm, pg_catalog.pg_backend_pid() AS pid, pg_catalog.set_config(''work_mem'', ''77MB'', false) AS w"}]}', 'leaky');
	INSERT INTO dalgo.outputs (id, organization_id, transformation_id, name) VALUES
		('66666666-0000-4000-8000-0000000000a1', '22222222-0000-4000-8000-0000000000a0', '55555555-0000-4000-8000-0000000000a1', 'Leaky A'),
		('66666666-0000-4000-8000-0000000000b1', '22222222-0000-4000-8000-0000000000b0', '55555555-0000-4000-8000-0000000000b1', 'Leaky B');
	INSERT INTO dalgo.schedules (id, organization_id, output_id, frequency) VALUES
		('88888888-0000-4000-8000-0000000000a1', '22222222-0000-4000-8000-0000000000a0', '66666666-0000-4000-8000-0000000000a1', 'daily'),
		('88888888-0000-4000-8000-0000000000b1', '22222222-0000-4000-8000-0000000000b0', '66666666-0000-4000-8000-0000000000b1', 'daily');
});

# Both due at once, A's first: one run worker (max_concurrent_runs = 1) takes A's run, then B's.
$node->safe_psql('postgres', q{
	UPDATE dalgo.schedules SET next_run_at = now() - interval '2 minutes' WHERE id = '88888888-0000-4000-8000-0000000000a1';
	UPDATE dalgo.schedules SET next_run_at = now() - interval '1 minute' WHERE id = '88888888-0000-4000-8000-0000000000b1';
});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 2 FROM dalgo.transformation_runs WHERE status IN ('success', 'failed')}),
	'both runs finish');
is($node->safe_psql('postgres', q{SELECT string_agg(status::text, ',' ORDER BY started_at) FROM dalgo.transformation_runs}),
	'success,success', "both succeed");
is($node->safe_psql('postgres', q{SELECT string_agg(wm, ', ') FROM (
	SELECT * FROM org_222222220000400080000000000000a0.leaky UNION ALL SELECT * FROM org_222222220000400080000000000000b0.leaky) x}),
	'4MB, 4MB', "neither run inherits the settings the other organization's run made");

is($node->safe_psql('postgres', q{SELECT (SELECT pid FROM org_222222220000400080000000000000a0.leaky)
	= (SELECT pid FROM org_222222220000400080000000000000b0.leaky)}), 't', 'one run worker ran both');
$node->stop;
done_testing();
