-- citus_scheduler_simulated: the scheduler's and the account functions'
-- Citus paths, proven without Citus (CI cannot build it).  With schedules
-- listed in an imitation of Citus's pg_dist_partition (dropped with the
-- transaction), claim_due_schedules locks each due schedule by a
-- single-shard query instead of one FOR UPDATE SKIP LOCKED over all of
-- them: it must claim exactly what the single-node path claims, in the same
-- fair order, within the same limit.  account_audit records a row outside
-- any organization under the nil uuid once audit_logs is distributed.  A
-- failure alert raised on a shard of sync_runs goes to the alert outbox,
-- and deliver_run_alerts() moves it into the mail queue.
-- test/citus/run.sh proves both on a real cluster.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
SELECT plan(13);
SET LOCAL allow_system_table_mods = on;
CREATE TABLE pg_catalog.pg_dist_local_group (groupid integer);
CREATE TABLE pg_catalog.pg_dist_partition (logicalrelid regclass, partmethod "char");
CREATE TABLE pg_catalog.pg_dist_shard (logicalrelid regclass, shardid bigint);
INSERT INTO pg_catalog.pg_dist_local_group VALUES (0);	-- the coordinator

-- Org A: three due schedules (oldest first), org B: one; one more of A not due.
INSERT INTO dalgo.sources (id, organization_id, name, source_type) VALUES
	('33333333-0000-4000-8000-0000000000f1', '22222222-0000-4000-8000-0000000000a0', 'A1', 'google_sheets'),
	('33333333-0000-4000-8000-0000000000f2', '22222222-0000-4000-8000-0000000000a0', 'A2', 'google_sheets'),
	('33333333-0000-4000-8000-0000000000f3', '22222222-0000-4000-8000-0000000000a0', 'A3', 'google_sheets'),
	('33333333-0000-4000-8000-0000000000f4', '22222222-0000-4000-8000-0000000000a0', 'A4', 'google_sheets');
INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency) VALUES
	('88888888-0000-4000-8000-0000000000f1', '22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000f1', 'daily'),
	('88888888-0000-4000-8000-0000000000f2', '22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000f2', 'daily'),
	('88888888-0000-4000-8000-0000000000f3', '22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000f3', 'daily'),
	('88888888-0000-4000-8000-0000000000f4', '22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000f4', 'daily'),
	('88888888-0000-4000-8000-0000000000b9', '22222222-0000-4000-8000-0000000000b0', '33333333-0000-4000-8000-0000000000b1', 'daily');
UPDATE dalgo.schedules SET next_run_at = now() - CASE id
	WHEN '88888888-0000-4000-8000-0000000000f1' THEN interval '3 minutes'
	WHEN '88888888-0000-4000-8000-0000000000f2' THEN interval '2 minutes'
	WHEN '88888888-0000-4000-8000-0000000000f3' THEN interval '1 minute'
	WHEN '88888888-0000-4000-8000-0000000000f4' THEN interval '-1 hour'
	ELSE interval '30 seconds' END;

SELECT is(dalgo_internal.citus_distributed('dalgo.schedules'), false, 'without Citus, schedules are not distributed');

-- The single-node path first, rolled back; then the Citus path.
CREATE TEMP TABLE claims (mode text, round integer, n integer, schedule_id uuid, outcome text);
SAVEPOINT single;
INSERT INTO claims SELECT 'single', 1, row_number() OVER (), schedule_id, outcome FROM dalgo_internal.claim_due_schedules(now(), 2);
INSERT INTO claims SELECT 'single', 2, row_number() OVER (), schedule_id, outcome FROM dalgo_internal.claim_due_schedules(now(), 10);
SELECT string_agg(format('%s/%s %s %s', round, n, schedule_id, outcome), ', ' ORDER BY round, n) AS single_claims FROM claims \gset
ROLLBACK TO SAVEPOINT single;

INSERT INTO pg_catalog.pg_dist_partition VALUES ('dalgo.schedules', 'h');
SELECT is(dalgo_internal.citus_distributed('dalgo.schedules'), true, 'listed in pg_dist_partition, schedules are distributed');
INSERT INTO claims SELECT 'citus', 1, row_number() OVER (), schedule_id, outcome FROM dalgo_internal.claim_due_schedules(now(), 2);
INSERT INTO claims SELECT 'citus', 2, row_number() OVER (), schedule_id, outcome FROM dalgo_internal.claim_due_schedules(now(), 10);

SELECT results_eq($$SELECT schedule_id FROM claims WHERE mode = 'citus' AND round = 1 ORDER BY n$$,
	$$VALUES ('88888888-0000-4000-8000-0000000000f1'::uuid), ('88888888-0000-4000-8000-0000000000b9')$$,
	'the Citus path is fair: each organization''s oldest due schedule first, within the limit');
SELECT results_eq($$SELECT schedule_id FROM claims WHERE mode = 'citus' AND round = 2 ORDER BY n$$,
	$$VALUES ('88888888-0000-4000-8000-0000000000f2'::uuid), ('88888888-0000-4000-8000-0000000000f3')$$,
	'the next claim takes the rest, oldest first; a schedule not yet due is left');
SELECT is((SELECT string_agg(format('%s/%s %s %s', round, n, schedule_id, outcome), ', ' ORDER BY round, n) FROM claims),
	:'single_claims', 'the Citus path claims exactly what the single-node path claims');
SELECT is((SELECT count(*) FROM dalgo.sync_runs WHERE source_id IN ('33333333-0000-4000-8000-0000000000f1',
	'33333333-0000-4000-8000-0000000000f2', '33333333-0000-4000-8000-0000000000f3', '33333333-0000-4000-8000-0000000000b1')
	AND status = 'pending'), 4::bigint, 'one pending run per claimed schedule');
SELECT is((SELECT count(*) FROM dalgo_internal.claim_due_schedules(now(), 10)), 0::bigint,
	'claimed schedules are advanced: nothing is claimed twice');

-- account_audit: a row outside any organization.
SELECT dalgo_internal.account_audit('sim_single', NULL, NULL, 'user', NULL) \g /dev/null
INSERT INTO pg_catalog.pg_dist_partition VALUES ('dalgo.audit_logs', 'h');
SELECT dalgo_internal.account_audit('sim_citus', NULL, NULL, 'user', NULL) \g /dev/null
SELECT is((SELECT organization_id FROM dalgo.audit_logs WHERE action = 'sim_single'), NULL,
	'on one node, an audit row outside any organization has no organization_id');
SELECT is((SELECT organization_id FROM dalgo.audit_logs WHERE action = 'sim_citus'), '00000000-0000-0000-0000-000000000000'::uuid,
	'with audit_logs distributed, it carries the nil uuid (Citus refuses NULL in the distribution column)');

-- Failure alerts on a shard: into the outbox, then the coordinator queues them.
CREATE TABLE dalgo.sync_runs_102060 (LIKE dalgo.sync_runs INCLUDING DEFAULTS);
CREATE TRIGGER alert_on_outcome AFTER UPDATE OF status ON dalgo.sync_runs_102060
	FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('success', 'failed')
					   AND NEW.details ? 'schedule_id')
	EXECUTE FUNCTION dalgo_internal.record_run_alert();
INSERT INTO pg_catalog.pg_dist_partition VALUES ('dalgo.sync_runs', 'h'), ('dalgo_internal.alert_outbox', 'h');
INSERT INTO pg_catalog.pg_dist_shard VALUES ('dalgo.sync_runs', 102060);
SELECT count(*) AS mail_before FROM dalgo.mail_messages WHERE kind = 'run_failed' \gset
INSERT INTO dalgo.sync_runs_102060 (organization_id, source_id, status, details)
	VALUES ('22222222-0000-4000-8000-0000000000a0', '33333333-0000-4000-8000-0000000000f4', 'running',
			'{"schedule_id": "88888888-0000-4000-8000-0000000000f4"}');
UPDATE dalgo.sync_runs_102060 SET status = 'failed', completed_at = now(), error_message = 'sheet gone';
SELECT is((SELECT array_agg(kind || ' ' || recipient || ' ' || (payload->>'target_name') ORDER BY recipient) FROM dalgo_internal.alert_outbox),
	ARRAY['run_failed owner.a@example.org A4'],
	'a scheduled run failing on a shard leaves its alert for the organization''s owner in the outbox (not for a member)');
SELECT is((SELECT count(*) FROM dalgo.mail_messages WHERE kind = 'run_failed') - :mail_before, 0::bigint,
	'... and queues no mail there (a worker cannot write the mail queue)');
SELECT is(dalgo_internal.deliver_run_alerts(), 1, 'the coordinator queues it');
SELECT ok((SELECT count(*) FROM dalgo.mail_messages WHERE kind = 'run_failed' AND recipient = 'owner.a@example.org'
		   AND payload->>'error' = 'sheet gone') = 1 AND NOT EXISTS (SELECT FROM dalgo_internal.alert_outbox),
	'the alert is in the mail queue, the outbox is empty');

SELECT * FROM finish();
ROLLBACK;
