-- run_queue_fairness: the run queue is fair between organizations.  A
-- backlog of 3,000 pending runs of organization A does not delay organization
-- B's due run: the run workers, the scheduler's claim and the connectors'
-- claim_sync_run take the organization with the fewest runs running first,
-- then the one waiting longest.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set B '''22222222-0000-4000-8000-0000000000b0'''
SELECT plan(12);
INSERT INTO dalgo.schedules (id, organization_id, output_id, frequency) VALUES
	('88888888-0000-4000-8000-0000000000a1', :A, '66666666-0000-4000-8000-0000000000a1', 'daily'),
	('88888888-0000-4000-8000-0000000000b1', :B, '66666666-0000-4000-8000-0000000000b1', 'daily');

-- A's backlog: 3,000 pending output refreshes, all older than B's run.
INSERT INTO dalgo.transformation_runs (organization_id, transformation_id, status, details, created_at)
SELECT :A, '55555555-0000-4000-8000-0000000000a1', 'pending',
	   '{"schedule_id": "88888888-0000-4000-8000-0000000000a1"}', now() - interval '1 hour' + g * interval '1 ms'
FROM generate_series(1, 3000) g;
SELECT is(dalgo_internal.pending_runs(), 3000, 'A has 3,000 runs waiting');
SELECT is((SELECT (t.run_kind, r.organization_id)::text FROM dalgo_internal.claim_pending_run() t JOIN dalgo.transformation_runs r ON r.id = t.run_id),
	'(output,22222222-0000-4000-8000-0000000000a0)', 'a worker takes A''s oldest run');

-- B's schedule falls due while A's backlog waits.
UPDATE dalgo.schedules SET next_run_at = now() - interval '1 minute' WHERE id = '88888888-0000-4000-8000-0000000000b1';
SELECT is((SELECT run_kind FROM dalgo_internal.claim_due_schedules(now(), 1000)), 'output'::dalgo.run_kind, 'the scheduler claims B''s due schedule');
SELECT is((SELECT r.organization_id FROM dalgo_internal.claim_pending_run() t JOIN dalgo.transformation_runs r ON r.id = t.run_id),
	:B::uuid, 'the next worker takes B''s run, not A''s 3,000 older ones');
SELECT is((SELECT r.organization_id FROM dalgo_internal.claim_pending_run() t JOIN dalgo.transformation_runs r ON r.id = t.run_id),
	:A::uuid, 'and A''s backlog goes on after it');
SELECT is(dalgo_internal.pending_runs(), 2998, 'one run of each taken, then A''s again');

-- The scheduler's claim: A's many due schedules do not hold B's back to a later tick.
CREATE TABLE public.src (id int);
INSERT INTO dalgo.sources (organization_id, name, source_type, config, warehouse_table_name)
SELECT :A, 'A' || g, 'postgres', '{"relation": "public.src"}', 'a' || g FROM generate_series(1, 20) g;
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000b2', :B, 'B', 'postgres', '{"relation": "public.src"}', 'b');
INSERT INTO dalgo.schedules (organization_id, source_id, frequency)
SELECT organization_id, id, 'daily' FROM dalgo.sources WHERE source_type = 'postgres';
UPDATE dalgo.schedules SET next_run_at = now() - interval '2 hours' WHERE source_id IS NOT NULL AND organization_id = :A;
UPDATE dalgo.schedules SET next_run_at = now() - interval '1 minute' WHERE source_id = '33333333-0000-4000-8000-0000000000b2';
CREATE TEMP TABLE claimed AS SELECT * FROM dalgo_internal.claim_due_schedules(now(), 2);
SELECT is((SELECT array_agg(DISTINCT r.organization_id ORDER BY r.organization_id)
		   FROM claimed c JOIN dalgo.sync_runs r ON r.id = c.run_id),
	ARRAY[:A::uuid, :B::uuid], 'a claim of two due schedules takes one of A''s and B''s');
SELECT is((SELECT count(*) FROM dalgo_internal.claim_due_schedules(now(), 100)), 19::bigint, 'the rest of A''s follow');

-- Connectors: 3,000 pending google_sheets runs of A, then one of B.
UPDATE dalgo.sources SET config = '{"connector": true}' WHERE id = '33333333-0000-4000-8000-0000000000a1';
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000b3', :B, 'Sheet B', 'google_sheets', '{"connector": true}', 'sheet_b');
INSERT INTO dalgo.sync_runs (organization_id, source_id, status, details, created_at)
SELECT :A, '33333333-0000-4000-8000-0000000000a1', 'pending', '{}', now() - interval '1 hour' + g * interval '1 ms'
FROM generate_series(1, 3000) g;
INSERT INTO dalgo.sync_runs (organization_id, source_id, status, details)
	VALUES (:B, '33333333-0000-4000-8000-0000000000b3', 'pending', '{}');
SET LOCAL ROLE dalgo_service;
SELECT is((dalgo.claim_sync_run()).organization_id, :A::uuid, 'a connector claims A''s oldest run');
SELECT is((dalgo.claim_sync_run()).organization_id, :B::uuid, 'the next claim is B''s run');
SELECT is((dalgo.claim_sync_run()).organization_id, :A::uuid, 'then A''s again');
RESET ROLE;
SELECT is((SELECT count(*) FROM dalgo.sync_runs WHERE status = 'pending' AND organization_id = :A
		   AND source_id = '33333333-0000-4000-8000-0000000000a1'), 2998::bigint, 'A''s backlog is still there');

SELECT * FROM finish();
ROLLBACK;
