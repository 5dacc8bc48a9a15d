-- audit_foreign_table: enable_audit works on a foreign table (postgres_fdw,
-- audited row by row since foreign tables have no transition tables), with
-- and without an organization column.
\set ECHO none
\i test/fixtures/tap_setup.sql
DO $$
BEGIN
	EXECUTE format('CREATE SERVER loopback FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host %L, port %L, dbname %L)',
				   split_part(current_setting('unix_socket_directories'), ',', 1), current_setting('port'), current_database());
END
$$;
CREATE USER MAPPING FOR CURRENT_USER SERVER loopback;
CREATE TABLE public.remote_items (id uuid PRIMARY KEY, organization_id uuid, label text);
CREATE TABLE public.remote_notes (id int PRIMARY KEY, body text);
CREATE FOREIGN TABLE public.fdw_items (id uuid, organization_id uuid, label text)
	SERVER loopback OPTIONS (table_name 'remote_items');
CREATE FOREIGN TABLE public.fdw_notes (id int, body text) SERVER loopback OPTIONS (table_name 'remote_notes');
SELECT dalgo.enable_audit('public.fdw_items') \g /dev/null
SELECT dalgo.enable_audit('public.fdw_notes') \g /dev/null
BEGIN;
SELECT plan(7);
INSERT INTO public.fdw_items VALUES ('77777777-0000-4000-8000-0000000000f1', '22222222-0000-4000-8000-0000000000a0', 'one');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE resource_type = 'public.fdw_items'), 1::bigint, 'an insert through a foreign table is audited');
SELECT is((SELECT organization_id FROM dalgo.audit_logs WHERE resource_type = 'public.fdw_items'),
	'22222222-0000-4000-8000-0000000000a0'::uuid, 'with the organization from its column');
UPDATE public.fdw_items SET label = 'two';
SELECT is((SELECT details FROM dalgo.audit_logs WHERE resource_type = 'public.fdw_items' AND action = 'update'),
	'{"label": {"old": "one", "new": "two"}}'::jsonb, 'an update records the diff');
DELETE FROM public.fdw_items;
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE resource_type = 'public.fdw_items' AND action = 'delete'), 1::bigint, 'a delete is audited');
INSERT INTO public.fdw_notes VALUES (1, 'note');
SELECT is((SELECT organization_id FROM dalgo.audit_logs WHERE resource_type = 'public.fdw_notes'), NULL, 'no organization column: none');
SELECT is((SELECT details->>'body' FROM dalgo.audit_logs WHERE resource_type = 'public.fdw_notes'), 'note', 'the row is recorded');
SELECT is((SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.fdw_notes'::regclass AND tgname = 'dalgo_audit'), 1::bigint,
	'a foreign table gets one row-level audit trigger');
SELECT * FROM finish();
ROLLBACK;
DROP FOREIGN TABLE public.fdw_items, public.fdw_notes;
DROP TABLE public.remote_items, public.remote_notes;
DROP USER MAPPING FOR CURRENT_USER SERVER loopback;
DROP SERVER loopback;
