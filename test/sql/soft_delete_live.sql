-- soft_delete_live: with the background scheduler running, a source
-- soft-deleted before its slot never syncs, while another source of the
-- same organization, due at the same moment, does; the wait runs well past
-- the slot.
\set ECHO none
\i test/fixtures/tap_setup.sql
\pset tuples_only false
\pset format aligned
INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-0000000000f1', 'live.delete@example.org');
INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000f0', 'Live delete', 'live-delete');
INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	VALUES ('22222222-0000-4000-8000-0000000000f0', '11111111-0000-4000-8000-0000000000f1', 'owner');
SELECT dalgo.ensure_warehouse('22222222-0000-4000-8000-0000000000f0') \g /dev/null
CREATE TABLE public.live_delete_source (id int);
INSERT INTO public.live_delete_source SELECT generate_series(1, 3);
GRANT USAGE ON SCHEMA public TO dalgo_wh_222222220000400080000000000000f0;
GRANT SELECT ON public.live_delete_source TO dalgo_wh_222222220000400080000000000000f0;
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000f1', '22222222-0000-4000-8000-0000000000f0', 'Kept', 'postgres',
	 '{"relation": "public.live_delete_source"}', 'kept'),
	('33333333-0000-4000-8000-0000000000f2', '22222222-0000-4000-8000-0000000000f0', 'Deleted', 'postgres',
	 '{"relation": "public.live_delete_source"}', 'deleted');
INSERT INTO dalgo.schedules (organization_id, source_id, frequency)
	SELECT '22222222-0000-4000-8000-0000000000f0', id, 'hourly' FROM dalgo.sources
	WHERE organization_id = '22222222-0000-4000-8000-0000000000f0';
-- Both come due 3 s from now, in one committed statement.
SELECT clock_timestamp() + interval '3 seconds' AS slot \gset
UPDATE dalgo.schedules SET next_run_at = :'slot' WHERE organization_id = '22222222-0000-4000-8000-0000000000f0';

-- The owner soft-deletes one source before its slot.
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000f1';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.soft_delete('dalgo.sources', '33333333-0000-4000-8000-0000000000f2') IS NOT NULL AS deleted_before_slot;
COMMIT;
SELECT clock_timestamp() < :'slot'::timestamptz AS slot_still_ahead;

-- Wait until the kept source has synced, then 3 s more past the slot.
DO $$
BEGIN
	FOR i IN 1..150 LOOP
		EXIT WHEN EXISTS (SELECT FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000f1' AND status = 'success');
		PERFORM pg_sleep(0.1);
	END LOOP;
END
$$;
SELECT pg_sleep(greatest(0, extract(epoch FROM :'slot'::timestamptz + interval '3 seconds' - clock_timestamp()))::float8) \g /dev/null
SELECT clock_timestamp() > :'slot'::timestamptz + interval '3 seconds' AS waited_past_slot,
	   EXISTS (SELECT FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000f1' AND status = 'success') AS kept_source_synced,
	   NOT EXISTS (SELECT FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-0000000000f2') AS deleted_source_never_fired,
	   to_regclass('org_222222220000400080000000000000f0.deleted') IS NULL AS no_table_for_it;

-- Clean up: the organization takes its warehouse with it.
DELETE FROM dalgo.organizations WHERE id = '22222222-0000-4000-8000-0000000000f0';
DELETE FROM dalgo.users WHERE id = '11111111-0000-4000-8000-0000000000f1';
DROP TABLE public.live_delete_source;
