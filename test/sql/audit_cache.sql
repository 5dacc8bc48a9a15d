-- audit_cache: the per-backend cache of audit configurations follows the
-- catalog.  A renamed schema or table renames resource_type at once; the
-- configurations of dropped tables and triggers are freed, so a backend
-- that audits many short-lived tables does not grow.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
SELECT plan(6);
CREATE FUNCTION pg_temp.last_type() RETURNS text LANGUAGE sql
	AS $$ SELECT resource_type FROM dalgo.audit_logs WHERE created_at = now() ORDER BY id DESC LIMIT 1 $$;
CREATE FUNCTION pg_temp.cached_configs() RETURNS bigint LANGUAGE sql
	AS $$ SELECT count(*) FROM pg_backend_memory_contexts WHERE name = 'dalgo audit configuration' $$;

CREATE SCHEMA crm;
CREATE TABLE crm.contacts (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text);
SELECT dalgo.enable_audit('crm.contacts') \g /dev/null
INSERT INTO crm.contacts (name) VALUES ('a');
SELECT is(pg_temp.last_type(), 'crm.contacts', 'resource_type names the schema and table');
ALTER SCHEMA crm RENAME TO people;
INSERT INTO people.contacts (name) VALUES ('b');
SELECT is(pg_temp.last_type(), 'people.contacts', 'a renamed schema is seen at the next write');
ALTER TABLE people.contacts RENAME TO persons;
INSERT INTO people.persons (name) VALUES ('c');
SELECT is(pg_temp.last_type(), 'people.persons', 'and a renamed table');

-- 200 audited tables, each written and dropped: their configurations go.
SELECT pg_temp.cached_configs() AS before \gset
DO $$
BEGIN
	FOR i IN 1..200 LOOP
		EXECUTE format('CREATE TABLE public.tmp_%s (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), n int)', i);
		PERFORM dalgo.enable_audit(format('public.tmp_%s', i)::regclass);
		EXECUTE format('INSERT INTO public.tmp_%s (n) VALUES (1)', i);
		EXECUTE format('UPDATE public.tmp_%s SET n = 2', i);
		EXECUTE format('DROP TABLE public.tmp_%s', i);
	END LOOP;
END
$$;
INSERT INTO people.persons (name) VALUES ('d');
SELECT cmp_ok(pg_temp.cached_configs(), '<=', (:before + 3)::bigint,
	'200 audited tables created, written and dropped leave no cached configuration behind');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE resource_type LIKE 'public.tmp\_%' AND created_at = now()), 400::bigint,
	'while each was audited');
-- Re-enabling audit (new triggers) replaces the old configuration.
SELECT dalgo.enable_audit('people.persons', '{name}') \g /dev/null
INSERT INTO people.persons (name) VALUES ('e');
SELECT is((SELECT details->>'name' FROM dalgo.audit_logs WHERE created_at = now() ORDER BY id DESC LIMIT 1), '[redacted]',
	'new trigger arguments take effect at once');
SELECT * FROM finish();
ROLLBACK;
