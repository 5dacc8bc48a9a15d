-- install_lifecycle: the extension installs in a second database of the
-- same cluster, drops cleanly, and installs again.
\set ECHO none
\i test/fixtures/tap_setup.sql
\set regress_db :DBNAME
SELECT extversion, extrelocatable, extnamespace::regnamespace FROM pg_extension WHERE extname = 'dalgo';

CREATE DATABASE dalgo_second;
\connect dalgo_second
\i test/fixtures/tap_setup.sql
CREATE EXTENSION pgtap;
CREATE EXTENSION dalgo;
BEGIN;
SELECT plan(3);
SELECT is((SELECT count(*) FROM pg_tables WHERE schemaname = 'dalgo'), 21::bigint, 'second database: 21 tables (17 of the document, 3 of accounts, retention_policies)');
\i test/fixtures/two_orgs.sql
SELECT is((SELECT count(*) FROM dalgo.organizations), 2::bigint, 'second database: usable');
SELECT throws_ok($$ALTER EXTENSION dalgo SET SCHEMA public$$, '0A000', NULL, 'dalgo is not relocatable');
SELECT * FROM finish();
ROLLBACK;

-- Drop removes every object it created; re-create works.
CREATE TABLE public.keep_me (id int);
DROP EXTENSION dalgo;
SELECT count(*) AS dalgo_schemas FROM pg_namespace WHERE nspname = 'dalgo';
SELECT count(*) AS dalgo_types FROM pg_type WHERE typname IN ('member_role', 'org_type', 'source_type', 'run_status', 'schedule_frequency');
SELECT count(*) AS dalgo_functions FROM pg_proc WHERE prosrc LIKE 'dalgo\_%' OR proname IN ('set_updated_at', 'fill_organization_id');
SELECT count(*) AS unrelated_kept FROM pg_tables WHERE tablename = 'keep_me';
CREATE EXTENSION dalgo;
SELECT count(*) AS tables_after_recreate FROM pg_tables WHERE schemaname = 'dalgo';
DROP TABLE public.keep_me;
\connect :regress_db
-- dalgo's scheduler is connected to every database with dalgo: FORCE ends it.
DROP DATABASE dalgo_second WITH (FORCE);
