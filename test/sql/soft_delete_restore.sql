-- soft_delete_restore: a soft delete means it.  A soft-deleted source,
-- transformation, output or organization drops out of what apps read (in
-- the policies), its schedules stop and its pending runs fail at once; the
-- claims never take a run of something deleted; admins list and restore
-- within dalgo.restore_days, and nobody else can; after the window the
-- restore is refused and dalgo.purge_deleted() hard-deletes.  Attacks:
-- viewer, member, admin of another organization, dalgo_anon, an API key,
-- a plain UPDATE past the functions, a backdated window.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
INSERT INTO dalgo.users (id, email) VALUES
	('11111111-0000-4000-8000-000000000004', 'viewer.a@example.org'),
	('11111111-0000-4000-8000-000000000006', 'admin.a@example.org');
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
	('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000004', 'viewer'),
	('22222222-0000-4000-8000-0000000000a0', '11111111-0000-4000-8000-000000000006', 'admin'),
	('22222222-0000-4000-8000-0000000000b0', '11111111-0000-4000-8000-000000000006', 'admin');
-- A second, in-database source of A with a schedule and a pending run; an
-- output schedule of A.
INSERT INTO dalgo.sources (id, organization_id, name, source_type, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000a2', '22222222-0000-4000-8000-0000000000a0', 'Households A', 'postgres', 'households');
INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency) VALUES
	('77777777-0000-4000-8000-0000000000a2', '22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000a2', 'daily');
INSERT INTO dalgo.schedules (id, organization_id, output_id, frequency) VALUES
	('77777777-0000-4000-8000-0000000000a3', '22222222-0000-4000-8000-0000000000a0', '66666666-0000-4000-8000-0000000000a1', 'daily');
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set B '''22222222-0000-4000-8000-0000000000b0'''
\set S '''33333333-0000-4000-8000-0000000000a2'''
\set T '''55555555-0000-4000-8000-0000000000a1'''
\set O '''66666666-0000-4000-8000-0000000000a1'''
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_member_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000002''; SET LOCAL ROLE dalgo_authenticated;'
\set as_viewer_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000004''; SET LOCAL ROLE dalgo_authenticated;'
\set as_admin_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000006''; SET LOCAL ROLE dalgo_authenticated;'
\set as_owner_b 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000003''; SET LOCAL ROLE dalgo_authenticated;'
\set as_service 'RESET ROLE; SET LOCAL dalgo.user_id = ''''; SET LOCAL ROLE dalgo_service;'
\set as_super 'RESET ROLE; SET LOCAL dalgo.user_id = '''';'
SELECT plan(68);

-- The claim made a pending run of the schedule (as the scheduler would).
:as_super
SELECT is((SELECT count(*) FROM dalgo_internal.claim_due_schedules(now() + interval '2 days', 10)
		   WHERE schedule_id = '77777777-0000-4000-8000-0000000000a2'), 1::bigint, 'the schedule of the source is due and claimed');
SELECT is((SELECT status::text FROM dalgo.sync_runs WHERE source_id = :S), 'pending', 'its run is pending');

-- Who may soft-delete what.
:as_viewer_a
SELECT throws_ok(format('SELECT dalgo.soft_delete(%L, %L)', 'dalgo.outputs', :O), '42501', NULL, 'a viewer cannot soft-delete an output');
:as_member_a
SELECT throws_ok(format('SELECT dalgo.soft_delete(%L, %L)', 'dalgo.sources', :S), '42501', NULL, 'a member cannot soft-delete a source');
:as_owner_b
SELECT throws_ok(format('SELECT dalgo.soft_delete(%L, %L)', 'dalgo.sources', :S), '42501',
	'no live row 33333333-0000-4000-8000-0000000000a2 in dalgo.sources that you may delete',
	'the owner of another organization cannot, and learns nothing more');
SELECT throws_ok(format('SELECT dalgo.soft_delete(%L, %L)', 'dalgo.schedules', '77777777-0000-4000-8000-0000000000a2'), '22023', NULL,
	'only organizations, sources, transformations and outputs are soft-deleted this way');
RESET ROLE;
SET LOCAL ROLE dalgo_anon;
SELECT throws_ok(format('SELECT dalgo.soft_delete(%L, %L)', 'dalgo.sources', :S), '42501', NULL, 'dalgo_anon cannot call it');
-- A plain UPDATE cannot hide a row from the policy that reads it: the soft delete goes through dalgo.soft_delete.
:as_admin_a
SELECT throws_ok(format('UPDATE dalgo.sources SET deleted_at = now() WHERE id = %L', :S), '42501', NULL,
	'a plain UPDATE of deleted_at is refused by the read policy');

-- The admin soft-deletes the source: it drops out, its schedule stops, its pending run fails.
SELECT isnt(dalgo.soft_delete('dalgo.sources', :S), NULL, 'an admin soft-deletes a source');
SELECT is((SELECT count(*) FROM dalgo.sources WHERE id = :S), 0::bigint, 'the deleted source drops out of the admin''s reads');
:as_member_a
SELECT is((SELECT count(*) FROM dalgo.sources WHERE id = :S), 0::bigint, 'and out of a member''s');
SELECT is((SELECT count(*) FROM dalgo.sources), 1::bigint, 'the live source stays');
SELECT is((SELECT count(*) FROM dalgo.schedules WHERE source_id = :S AND deleted_at IS NULL), 0::bigint, 'its schedule is no longer live');
SELECT is((SELECT status::text || ': ' || error_message FROM dalgo.sync_runs WHERE source_id = :S),
	'failed: cancelled: the source was deleted', 'its pending run failed with a clear message');
:as_super
SELECT is((SELECT count(*) FROM dalgo_internal.claim_due_schedules(now() + interval '30 days', 10)
		   WHERE schedule_id = '77777777-0000-4000-8000-0000000000a2'), 0::bigint, 'the scheduler never claims its schedule');
-- A run queued for it behind the delete's back is never taken by a worker.
INSERT INTO dalgo.sync_runs (organization_id, source_id, status, details)
	SELECT :A, :S, 'pending', jsonb_build_object('schedule_id', '77777777-0000-4000-8000-0000000000a2');
SELECT is((SELECT count(*) FROM generate_series(1, 3) g, dalgo_internal.claim_pending_run() c JOIN dalgo.sync_runs r ON r.id = c.run_id
		   WHERE r.source_id = :S), 0::bigint, 'a run worker does not claim a run of a deleted source');
SELECT is(dalgo.purge_deleted(), 0::bigint, 'purge_deleted removes nothing inside the window');
SELECT is((SELECT count(*) FROM dalgo.sync_runs WHERE source_id = :S AND status = 'failed'
		   AND error_message = 'cancelled: its source or organization was deleted'), 1::bigint, '... and it sweeps the straggler away');

-- Listing what was deleted.
:as_admin_a
SELECT results_eq(format('SELECT tbl::text, id, restorable_until = deleted_at + interval ''30 days'' FROM dalgo.deleted_items(%L)', :A),
	format('VALUES (%L, %L::uuid, true)', 'dalgo.sources', :S), 'an admin lists the deleted source, restorable for 30 days');
:as_member_a
SELECT throws_ok(format('SELECT * FROM dalgo.deleted_items(%L)', :A), '42501', NULL, 'a member cannot list deleted items');
:as_owner_b
SELECT throws_ok(format('SELECT * FROM dalgo.deleted_items(%L)', :A), '42501', NULL, 'nor the owner of another organization');

-- Restoring.
SELECT throws_ok(format('SELECT dalgo.restore(%L, %L)', 'dalgo.sources', :S), '42501', NULL,
	'the owner of another organization cannot restore a row of A');
:as_member_a
SELECT throws_ok(format('SELECT dalgo.restore(%L, %L)', 'dalgo.sources', :S), '42501', NULL, 'a member cannot restore');
:as_admin_a
SELECT throws_ok(format('SELECT dalgo.restore(%L, %L)', 'dalgo.sources', '33333333-0000-4000-8000-0000000000a1'), '42501', NULL,
	'a live row is not restored');
SELECT lives_ok(format('SELECT dalgo.restore(%L, %L)', 'dalgo.sources', :S), 'the admin restores the source');
SELECT is((SELECT count(*) FROM dalgo.sources WHERE id = :S), 1::bigint, 'it is back in every read');
SELECT ok((SELECT deleted_at IS NULL AND next_run_at > now() FROM dalgo.schedules WHERE id = '77777777-0000-4000-8000-0000000000a2'),
	'its schedule is back, next slot ahead');
SELECT is_empty(format('SELECT * FROM dalgo.deleted_items(%L)', :A), 'nothing is listed as deleted any more');

-- A transformation takes its outputs (and their schedules) with it.
:as_member_a
SELECT isnt(dalgo.soft_delete('dalgo.transformations', :T), NULL, 'a member soft-deletes a transformation');
SELECT is((SELECT count(*) FROM dalgo.transformations WHERE id = :T) + (SELECT count(*) FROM dalgo.outputs WHERE id = :O),
	0::bigint, 'the transformation and its output drop out');
SELECT is((SELECT count(*) FROM dalgo.schedules WHERE output_id = :O AND deleted_at IS NULL), 0::bigint, 'the output''s schedule stops');
:as_admin_a
SELECT throws_ok(format('SELECT dalgo.restore(%L, %L)', 'dalgo.outputs', :O), '55000', 'the transformation "Totals A" of this output is deleted',
	'an output is not restored without its transformation');
SELECT lives_ok(format('SELECT dalgo.restore(%L, %L)', 'dalgo.transformations', :T), 'restoring the transformation');
SELECT is((SELECT count(*) FROM dalgo.outputs WHERE id = :O), 1::bigint, 'brings its output back');
SELECT is((SELECT count(*) FROM dalgo.schedules WHERE output_id = :O AND deleted_at IS NULL), 1::bigint, 'and the output''s schedule');

-- An output deleted on its own, restored on its own.
:as_member_a
SELECT isnt(dalgo.soft_delete('dalgo.outputs', :O), NULL, 'a member soft-deletes an output');
SELECT throws_ok(format('SELECT dalgo.soft_delete(%L, %L)', 'dalgo.outputs', :O), '42501', NULL, 'a deleted row is not deleted twice');
:as_admin_a
SELECT lives_ok(format('SELECT dalgo.restore(%L, %L)', 'dalgo.outputs', :O), 'an admin restores the output');

-- The window: past dalgo.restore_days the restore is refused and the purge deletes.
SELECT isnt(dalgo.soft_delete('dalgo.sources', :S), NULL, 'the source is deleted again');
:as_super
UPDATE dalgo.sources SET deleted_at = now() - interval '31 days' WHERE id = :S;
:as_admin_a
SELECT throws_ok(format('SELECT dalgo.restore(%L, %L)', 'dalgo.sources', :S), '55000', NULL, 'after 30 days the restore is refused');
SELECT throws_ok('SET dalgo.restore_days = 60', '42501', NULL, 'an app cannot stretch the window');
:as_super
SET LOCAL dalgo.restore_days = 60;
:as_admin_a
SELECT ok((SELECT restorable_until > now() FROM dalgo.deleted_items(:A) WHERE id = :S), 'a superuser''s dalgo.restore_days = 60 stretches it');
:as_super
RESET dalgo.restore_days;
:as_admin_a
SELECT throws_ok('SELECT dalgo.purge_deleted()', '42501', NULL, 'an app cannot purge');
:as_service
SELECT is(dalgo.purge_deleted(), 1::bigint, 'dalgo_service purges the source deleted 31 days ago');
:as_super
SELECT is((SELECT count(*) FROM dalgo.sources WHERE id = :S) + (SELECT count(*) FROM dalgo.schedules WHERE source_id = :S)
		  + (SELECT count(*) FROM dalgo.sync_runs WHERE source_id = :S), 0::bigint, 'hard-deleted with its schedule and runs');

-- The purge works in batches of max_rows.
INSERT INTO dalgo.transformations (organization_id, name, recipe, deleted_at)
	SELECT :A, 'old ' || g, '{"version": 1, "source": {"table": "visits"}, "steps": []}', now() - interval '45 days'
	FROM generate_series(1, 3) g;
:as_service
SELECT is(ARRAY[dalgo.purge_deleted(2), dalgo.purge_deleted(2), dalgo.purge_deleted(2)], ARRAY[2, 1, 0]::bigint[],
	'purge_deleted(2) deletes two rows a call, until none is left');
SELECT throws_ok('SELECT dalgo.purge_deleted(0)', '22023', NULL, 'max_rows must be positive');

-- The scheduler's daily maintenance purges too.
:as_super
INSERT INTO dalgo.transformations (organization_id, name, recipe, deleted_at)
	SELECT :A, 'older ' || g, '{"version": 1, "source": {"table": "visits"}, "steps": []}', now() - interval '45 days'
	FROM generate_series(1, 2) g;
SELECT is((SELECT (s->>'purged_rows')::int FROM dalgo_internal.daily_maintenance() s), 2,
	'the daily maintenance purges what outlived the window');
SELECT is((SELECT count(*) FROM dalgo.transformations WHERE name LIKE 'older %'), 0::bigint, 'and they are gone');

-- Organizations: the owner deletes; sign-in and membership end; only an owner restores.
:as_admin_a
SELECT throws_ok(format('SELECT dalgo.soft_delete(%L, %L)', 'dalgo.organizations', :A), '42501', NULL, 'an admin cannot delete the organization');
:as_owner_a
SELECT dalgo.create_api_key(:A, 'robot', 'member') AS key \gset
SELECT isnt(dalgo.soft_delete('dalgo.organizations', :A), NULL, 'the owner soft-deletes the organization');
SELECT is(dalgo.is_org_member(:A), false, 'the owner is no longer a member of it');
SELECT is(dalgo.current_org_ids('viewer') @> ARRAY[:A::uuid], false, 'it is not among current_org_ids');
:as_member_a
SELECT is((SELECT count(*) FROM dalgo.organizations WHERE id = :A) + (SELECT count(*) FROM dalgo.sources), 0::bigint,
	'members read nothing of it');
SELECT is((SELECT count(*) FROM dalgo.schedules WHERE organization_id = :A AND deleted_at IS NULL), 0::bigint, 'its schedules stopped');
RESET ROLE;
SET LOCAL dalgo.user_id = '';
SET LOCAL ROLE dalgo_anon;
SELECT throws_ok(format('SELECT dalgo.authenticate_api_key(%L)', :'key'), '28000', NULL, 'its API key no longer signs in');
:as_admin_a
SELECT throws_ok(format('SELECT * FROM dalgo.deleted_items(%L)', :A), '42501', NULL, 'an admin cannot list a deleted organization');
SELECT throws_ok(format('SELECT dalgo.restore(%L, %L)', 'dalgo.organizations', :A), '42501', NULL, 'nor restore it');
:as_owner_a
SELECT is((SELECT tbl::text FROM dalgo.deleted_items(:A) WHERE id = :A), 'dalgo.organizations', 'the owner lists it');
SELECT lives_ok(format('SELECT dalgo.restore(%L, %L)', 'dalgo.organizations', :A), 'and restores it');
SELECT is(dalgo.is_org_member(:A, 'owner'), true, 'membership is back');
SELECT is((SELECT count(*) FROM dalgo.schedules WHERE organization_id = :A AND deleted_at IS NULL), 1::bigint,
	'the schedules it stopped are back (the purged source''s went with it)');

-- An organization deleted past the window goes, and takes its warehouse.
:as_owner_a
SELECT isnt(dalgo.soft_delete('dalgo.organizations', :A), NULL, 'deleted again');
:as_super
UPDATE dalgo.organizations SET deleted_at = now() - interval '40 days' WHERE id = :A;
:as_owner_a
SELECT throws_ok(format('SELECT dalgo.restore(%L, %L)', 'dalgo.organizations', :A), '55000', NULL, 'too late to restore it');
:as_service
SELECT is(dalgo.purge_deleted(), 1::bigint, 'purge_deleted hard-deletes the organization');
:as_super
SELECT is((SELECT count(*) FROM dalgo.organizations WHERE id = :A) + (SELECT count(*) FROM dalgo.sources WHERE organization_id = :A),
	0::bigint, 'with everything in it');
SELECT is((SELECT count(*) FROM pg_namespace WHERE nspname = 'org_222222220000400080000000000000a0')
		  + (SELECT count(*) FROM pg_roles WHERE rolname = 'dalgo_wh_222222220000400080000000000000a0'), 0::bigint,
	'its warehouse schema and role are gone');
SELECT is((SELECT count(*) FROM dalgo.organizations WHERE id = :B), 1::bigint, 'organization B is untouched');

SELECT * FROM finish();
ROLLBACK;
