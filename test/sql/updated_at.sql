-- updated_at: set_updated_at() stamps every update with now(), cannot be
-- backdated, works on any table and column name, and refuses misuse.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
SELECT plan(9);

UPDATE dalgo.organizations SET updated_at = '2001-01-01', created_at = '2001-01-01' WHERE slug = 'org-a';
SELECT is((SELECT updated_at FROM dalgo.organizations WHERE slug = 'org-a'), now(),
	'an update stamps updated_at with now(), even when the client writes another value');
UPDATE dalgo.organizations SET name = 'Org A2' WHERE slug = 'org-a';
SELECT is((SELECT (updated_at, created_at)::text FROM dalgo.organizations WHERE slug = 'org-a'),
	(now(), '2001-01-01'::timestamptz)::text, 'created_at is left alone');

-- Any table, another column name, timestamp without time zone.
CREATE TABLE public.sibling_items (id bigserial PRIMARY KEY, name text, "updatedAt" timestamp DEFAULT '2000-01-01');
CREATE TRIGGER stamp BEFORE UPDATE ON public.sibling_items
	FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at('updatedAt');
INSERT INTO public.sibling_items (name) VALUES ('x'), ('untouched');
UPDATE public.sibling_items SET name = 'y' WHERE name = 'x';
SELECT is((SELECT "updatedAt" FROM public.sibling_items WHERE name = 'y'), now()::timestamp,
	'a camel-cased timestamp column on a sibling table is stamped');
SELECT is((SELECT "updatedAt" FROM public.sibling_items WHERE name = 'untouched'), '2000-01-01'::timestamp,
	'only the updated row is stamped');

-- Misuse is a clear error.
CREATE TABLE public.no_stamp (id int, touched date);
CREATE TRIGGER wrong_col BEFORE UPDATE ON public.no_stamp FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at('nope');
INSERT INTO public.no_stamp VALUES (1, '2000-01-01');
SELECT throws_ok($$UPDATE public.no_stamp SET id = 2$$, '42703',
	'column "nope" of relation "no_stamp" does not exist', 'a missing column is named');
DROP TRIGGER wrong_col ON public.no_stamp;
CREATE TRIGGER wrong_type BEFORE UPDATE ON public.no_stamp FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at('touched');
SELECT throws_ok($$UPDATE public.no_stamp SET id = 2$$, '42804',
	'column "touched" of relation "no_stamp" must be of type timestamptz or timestamp', 'a non-timestamp column is refused');
DROP TRIGGER wrong_type ON public.no_stamp;
CREATE TRIGGER after_trig AFTER UPDATE ON public.no_stamp FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at('touched');
SELECT throws_ok($$UPDATE public.no_stamp SET id = 2$$, '39P01',
	'set_updated_at() must be fired BEFORE UPDATE FOR EACH ROW', 'an AFTER trigger is refused');
DROP TRIGGER after_trig ON public.no_stamp;
CREATE TRIGGER two_args BEFORE UPDATE ON public.no_stamp FOR EACH ROW EXECUTE FUNCTION dalgo.set_updated_at('a', 'b');
SELECT throws_ok($$UPDATE public.no_stamp SET id = 2$$, '39P01',
	'set_updated_at() takes at most one argument, the column name', 'extra arguments are refused');
SELECT throws_ok($$SELECT dalgo.set_updated_at()$$, '39P01', NULL, 'calling it directly is refused');

SELECT * FROM finish();
ROLLBACK;
