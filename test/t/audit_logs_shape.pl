# audit_logs_shape: dalgo.audit_logs altered by an operator (added columns
# with defaults, NOT NULL, generated columns, CHECK constraints, triggers,
# dropped, renamed and retyped columns) never crashes the server.  Every
# audited write either leaves a correct audit row, honouring what was added,
# or fails with a clear error naming the column.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dalgo_audit_shape');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dalgo'\nmax_worker_processes = 16\nrestart_after_crash = on\n");
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION dalgo;
	CREATE TABLE public.items (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), organization_id uuid, n int);
	SELECT dalgo.enable_audit('public.items');
});
my $started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');

# Write k audited rows (one statement) and return the number of new audit rows.
my $seq = 0;
sub write_rows
{
	my ($k) = @_;
	$seq += 100000;
	return $node->safe_psql('postgres', qq{
		INSERT INTO public.items (organization_id, n)
			SELECT '22222222-0000-4000-8000-0000000000a0', $seq + g FROM generate_series(1, $k) g;
		SELECT count(*) FROM dalgo.audit_logs WHERE resource_type = 'public.items' AND (details->>'n')::int > $seq});
}

# An audited write that must fail: returns its stderr.
sub write_fails
{
	my ($stderr);
	my $rc = $node->psql('postgres', q{INSERT INTO public.items (n) VALUES (-1)}, stderr => \$stderr);
	return $rc == 0 ? 'no error' : $stderr;
}

sub still_up
{
	my ($what) = @_;
	is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started,
		"the server did not restart: $what");
}

my $last = q{SELECT %s FROM dalgo.audit_logs WHERE resource_type = 'public.items' ORDER BY id DESC LIMIT 1};

is(write_rows(3), '3', 'the install script\'s shape: three rows, three audit rows');

# 1. A column with a default (0.1.0 crashed here with signal 11).
$node->safe_psql('postgres', q{ALTER TABLE dalgo.audit_logs ADD COLUMN note text DEFAULT 'dflt'});
is(write_rows(1), '1', 'added column with a default: one row');
is(write_rows(2000), '2000', 'and a 2,000-row statement (two batches)');
is($node->safe_psql('postgres', sprintf($last, q{note || ' ' || action || ' ' || (organization_id IS NOT NULL) || ' ' || (resource_id IS NOT NULL) || ' ' || (created_at = updated_at)})),
	'dflt insert true true true', 'the new column holds its default; the known columns are filled');
# An ordinary role, without any right on schema dalgo, writes through the INSERT writer too.
$node->safe_psql('postgres', q{
	CREATE ROLE app NOLOGIN;
	GRANT INSERT, SELECT ON public.items TO app;
	SET ROLE app;
	INSERT INTO public.items (n) VALUES (5);
	RESET ROLE});
is($node->safe_psql('postgres', q{SELECT note FROM dalgo.audit_logs WHERE details->>'n' = '5'}), 'dflt',
	'a role with no right on schema dalgo is audited through the INSERT writer');
still_up('column with a default');

# 2. A NOT NULL column with a default.
$node->safe_psql('postgres', q{ALTER TABLE dalgo.audit_logs ADD COLUMN tag text NOT NULL DEFAULT 'tagged'});
is(write_rows(5), '5', 'NOT NULL column with a default: rows written');
is($node->safe_psql('postgres', sprintf($last, 'tag')), 'tagged', 'holding the default');
still_up('NOT NULL column with a default');

# 3. A generated column.
$node->safe_psql('postgres', q{ALTER TABLE dalgo.audit_logs ADD COLUMN n_text text GENERATED ALWAYS AS (details->>'n') STORED});
write_rows(1);
is($node->safe_psql('postgres', sprintf($last, q{n_text = details->>'n'})), 't', 'the generated column is computed');
still_up('generated column');

# 4. A CHECK constraint: honoured, with PostgreSQL's own error.
$node->safe_psql('postgres', q{ALTER TABLE dalgo.audit_logs ADD CONSTRAINT no_negative CHECK (coalesce((details->>'n')::int, 0) >= 0)});
is(write_rows(1), '1', 'rows that pass the CHECK are written');
like(write_fails(), qr/violates check constraint "no_negative"/, 'a row that fails it is refused, naming the constraint');
$node->safe_psql('postgres', q{ALTER TABLE dalgo.audit_logs DROP CONSTRAINT no_negative});
still_up('CHECK constraint');

# 5. Triggers on audit_logs fire for audit rows.
$node->safe_psql('postgres', q{
	CREATE FUNCTION public.stamp() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN NEW.note := 'from trigger'; RETURN NEW; END $$;
	CREATE TRIGGER stamp BEFORE INSERT ON dalgo.audit_logs FOR EACH ROW EXECUTE FUNCTION public.stamp();
	CREATE TABLE public.seen (n bigint);
	CREATE FUNCTION public.count_rows() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN INSERT INTO public.seen SELECT count(*) FROM new_rows; RETURN NULL; END $$;
	CREATE TRIGGER count_rows AFTER INSERT ON dalgo.audit_logs REFERENCING NEW TABLE AS new_rows
		FOR EACH STATEMENT EXECUTE FUNCTION public.count_rows();
});
is(write_rows(3), '3', 'with triggers on audit_logs: rows written');
is($node->safe_psql('postgres', sprintf($last, 'note')), 'from trigger', 'a BEFORE ROW trigger shapes the audit row');
is($node->safe_psql('postgres', 'SELECT sum(n) FROM public.seen'), '3', 'an AFTER STATEMENT trigger sees them');
$node->safe_psql('postgres', q{DROP TRIGGER stamp ON dalgo.audit_logs; DROP TRIGGER count_rows ON dalgo.audit_logs});
still_up('triggers');

# 6. Dropped columns (the added ones): the shape is back to eleven live columns, with holes.
$node->safe_psql('postgres', q{ALTER TABLE dalgo.audit_logs DROP COLUMN note, DROP COLUMN tag, DROP COLUMN n_text});
is(write_rows(1500), '1500', 'after dropping the added columns: rows written');
is($node->safe_psql('postgres', sprintf($last, q{action || ' ' || resource_type})), 'insert public.items', 'and correct');
still_up('dropped columns');

# 7. A renamed column the trail writes: a clear error naming it, until it is back.
$node->safe_psql('postgres', q{ALTER TABLE dalgo.audit_logs RENAME COLUMN user_agent TO ua});
my $err = write_fails();
like($err, qr/ERROR:  dalgo.audit_logs has no column "user_agent"/, 'renamed column: the error names it');
like($err, qr/HINT:  Add the column back: ALTER TABLE dalgo.audit_logs ADD COLUMN user_agent text\./, 'and says how to fix it');
$node->safe_psql('postgres', q{ALTER TABLE dalgo.audit_logs RENAME COLUMN ua TO user_agent});
is(write_rows(1), '1', 'renamed back: rows written');
still_up('renamed column');

# 8. A retyped column.
$node->safe_psql('postgres', q{ALTER TABLE dalgo.audit_logs ALTER COLUMN ip_address TYPE inet USING ip_address::inet});
$err = write_fails();
like($err, qr/ERROR:  column "ip_address" of dalgo.audit_logs has type inet, not text/, 'retyped column: the error names it and both types');
$node->safe_psql('postgres', q{ALTER TABLE dalgo.audit_logs ALTER COLUMN ip_address TYPE text});
is(write_rows(1), '1', 'retyped back: rows written');
still_up('retyped column');

# 9. A dropped column the trail writes, then added back (at the end of the table).
$node->safe_psql('postgres', q{ALTER TABLE dalgo.audit_logs DROP COLUMN details});
like(write_fails(), qr/ERROR:  dalgo.audit_logs has no column "details"/, 'dropped column: the error names it');
my ($out, $delete_err);
$node->psql('postgres', q{DELETE FROM public.items WHERE n = 100001}, stderr => \$delete_err);
like($delete_err, qr/ERROR:  dalgo.audit_logs has no column "details"/, 'a DELETE fails the same way');
is($node->safe_psql('postgres', q{SELECT count(*) FROM public.items WHERE n = 100001}), '1', 'and deletes nothing');
$node->safe_psql('postgres', q{ALTER TABLE dalgo.audit_logs ADD COLUMN details jsonb});
is(write_rows(2), '2', 'added back: rows written');
still_up('dropped column of the trail');

# 10. NOT NULL on a column the writer may leave NULL: PostgreSQL's not-null error.
$node->safe_psql('postgres', q{
	ALTER TABLE dalgo.audit_logs DISABLE TRIGGER append_only;
	UPDATE dalgo.audit_logs SET user_id = '00000000-0000-0000-0000-000000000000' WHERE user_id IS NULL;
	ALTER TABLE dalgo.audit_logs ENABLE TRIGGER append_only;
	ALTER TABLE dalgo.audit_logs ALTER COLUMN user_id SET NOT NULL});
like(write_fails(), qr/null value in column "user_id"/, 'NOT NULL on user_id refuses rows without an actor');
$node->safe_psql('postgres', q{ALTER TABLE dalgo.audit_logs ALTER COLUMN user_id DROP NOT NULL});
still_up('NOT NULL on an optional column');

# 11. A rule that swallows inserts: refused rather than silently losing the trail.
$node->safe_psql('postgres', q{CREATE RULE swallow AS ON INSERT TO dalgo.audit_logs DO INSTEAD NOTHING});
like(write_fails(), qr/an audit row was not written to dalgo.audit_logs/, 'a rule that drops audit rows makes audited writes fail');
$node->safe_psql('postgres', q{DROP RULE swallow ON dalgo.audit_logs});
is(write_rows(1), '1', 'rule dropped: rows written');
still_up('rule');

is($node->safe_psql('postgres', q{SELECT count(*) FROM public.items}) + 0,
	$node->safe_psql('postgres', q{SELECT count(*) FROM dalgo.audit_logs WHERE resource_type = 'public.items' AND action = 'insert'}) + 0,
	'every committed row has exactly one audit row');

$node->stop;
done_testing();
