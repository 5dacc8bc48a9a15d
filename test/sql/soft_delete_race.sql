-- soft_delete_race: a soft delete racing the claims.  Whatever the order
-- and the isolation level, a run of a deleted source is either cancelled
-- or refused with a serialization failure, never handed out: a claim that
-- holds the schedule makes the delete wait (and fail under REPEATABLE READ,
-- to be retried); a delete that holds the schedule makes the claim pass it
-- by; a connector whose REPEATABLE READ snapshot predates the delete
-- cannot take the cancelled run; a member's open transaction elsewhere
-- loses the deleted organization at its next statement.
\set ECHO none
\i test/fixtures/tap_setup.sql
\pset tuples_only false
\pset format aligned
INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-0000000000a9', 'race.owner@example.org');
INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000a9', 'Race', 'race');
INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	VALUES ('22222222-0000-4000-8000-0000000000a9', '11111111-0000-4000-8000-0000000000a9', 'owner');
-- Connector sources: no background run worker takes their runs, only claim_sync_run.
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name)
	SELECT ('33333333-0000-4000-8000-00000000a9' || lpad(g::text, 2, '0'))::uuid, '22222222-0000-4000-8000-0000000000a9',
		   'race ' || g, 'api', '{"connector": true}', 'race_' || g FROM generate_series(1, 3) g;
INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency)
	SELECT ('77777777-0000-4000-8000-00000000a9' || lpad(g::text, 2, '0'))::uuid, '22222222-0000-4000-8000-0000000000a9',
		   ('33333333-0000-4000-8000-00000000a9' || lpad(g::text, 2, '0'))::uuid, 'daily' FROM generate_series(1, 3) g;
-- Due tomorrow: the background scheduler leaves them to this test's claims.
UPDATE dalgo.schedules SET next_run_at = now() + interval '1 day' WHERE organization_id = '22222222-0000-4000-8000-0000000000a9';
SELECT dblink_connect('claimer', format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
	split_part(current_setting('unix_socket_directories'), ',', 1))) AS claimer;
SELECT dblink_connect('deleter', format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
	split_part(current_setting('unix_socket_directories'), ',', 1))) AS deleter;
\set delete_1 'SELECT dalgo.soft_delete(''dalgo.sources'', ''33333333-0000-4000-8000-00000000a901'') IS NOT NULL'

-- 1. The claim holds the schedule; a REPEATABLE READ delete waits, then fails to serialize.
SELECT dblink_exec('claimer', 'BEGIN') AS claimer_begins;
SELECT count(*) AS claimed FROM dblink('claimer', $$SELECT run_id FROM dalgo_internal.claim_due_schedules(now() + interval '2 days', 10, '77777777-0000-4000-8000-00000000a901')$$) AS t(run_id uuid);
SELECT dblink_exec('deleter', 'BEGIN ISOLATION LEVEL REPEATABLE READ') AS deleter_begins;
SELECT dblink_exec('deleter', 'SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-0000000000a9''') AS deleter_signs_in;
SELECT dblink_send_query('deleter', :'delete_1') AS delete_sent;
SELECT pg_sleep(0.3) \g /dev/null
SELECT dblink_is_busy('deleter') AS delete_waits_for_the_claim;
SELECT dblink_exec('claimer', 'COMMIT') AS claimer_commits;
SELECT x AS deleted FROM dblink_get_result('deleter', false) AS t(x boolean);
SELECT dblink_error_message('deleter') LIKE '%could not serialize access%' AS repeatable_read_delete_fails_to_serialize;
SELECT * FROM dblink_get_result('deleter', false) AS t(x boolean);
SELECT dblink_exec('deleter', 'ROLLBACK') AS deleter_rolls_back;
-- Retried (READ COMMITTED, as a client retries a 40001), the delete cancels the run the claim made.
SELECT dblink_exec('deleter', 'BEGIN') AS deleter_retries;
SELECT dblink_exec('deleter', 'SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-0000000000a9''') AS deleter_signs_in;
SELECT x AS deleted FROM dblink('deleter', :'delete_1') AS t(x boolean);
SELECT dblink_exec('deleter', 'COMMIT') AS deleter_commits;
SELECT status, error_message FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-00000000a901';
SELECT count(*) AS handed_to_a_connector FROM dblink('claimer', 'SELECT id FROM dalgo.claim_sync_run() WHERE id IS NOT NULL') AS t(id uuid);

-- 2. The delete holds the schedule (REPEATABLE READ, not yet committed); the claim passes it by.
SELECT dblink_exec('deleter', 'BEGIN ISOLATION LEVEL REPEATABLE READ') AS deleter_begins;
SELECT dblink_exec('deleter', 'SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-0000000000a9''') AS deleter_signs_in;
SELECT x AS deleted FROM dblink('deleter', 'SELECT dalgo.soft_delete(''dalgo.sources'', ''33333333-0000-4000-8000-00000000a902'') IS NOT NULL') AS t(x boolean);
SELECT count(*) AS claimed_while_deleting FROM dblink('claimer', $$SELECT run_id FROM dalgo_internal.claim_due_schedules(now() + interval '2 days', 10, '77777777-0000-4000-8000-00000000a902')$$) AS t(run_id uuid);
SELECT dblink_exec('deleter', 'COMMIT') AS deleter_commits;
SELECT count(*) AS claimed_after_delete FROM dblink('claimer', $$SELECT run_id FROM dalgo_internal.claim_due_schedules(now() + interval '2 days', 10, '77777777-0000-4000-8000-00000000a902')$$) AS t(run_id uuid);
SELECT count(*) AS runs_of_deleted_source FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-00000000a902';

-- 3. A connector's REPEATABLE READ snapshot predates the delete: it cannot take the cancelled run.
SELECT count(*) AS claimed FROM dalgo_internal.claim_due_schedules(now() + interval '2 days', 10, '77777777-0000-4000-8000-00000000a903');
SELECT dblink_exec('claimer', 'BEGIN ISOLATION LEVEL REPEATABLE READ') AS connector_begins;
SELECT count(*) AS connector_snapshot FROM dblink('claimer', 'SELECT 1') AS t(x int);
SELECT dblink_exec('deleter', 'BEGIN') AS deleter_begins;
SELECT dblink_exec('deleter', 'SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-0000000000a9''') AS deleter_signs_in;
SELECT x AS deleted FROM dblink('deleter', 'SELECT dalgo.soft_delete(''dalgo.sources'', ''33333333-0000-4000-8000-00000000a903'') IS NOT NULL') AS t(x boolean);
SELECT dblink_exec('deleter', 'COMMIT') AS deleter_commits;
SELECT dblink_send_query('claimer', 'SELECT id FROM dalgo.claim_sync_run() WHERE id IS NOT NULL') AS connector_claims;
SELECT count(*) AS connector_got_a_run FROM dblink_get_result('claimer', false) AS t(id uuid);
SELECT coalesce(dblink_error_message('claimer') LIKE '%could not serialize access%', false)
	OR dblink_error_message('claimer') = 'OK' AS refused_or_empty;
SELECT * FROM dblink_get_result('claimer', false) AS t(id uuid);
SELECT dblink_exec('claimer', 'ROLLBACK') AS connector_rolls_back;
SELECT status, error_message FROM dalgo.sync_runs WHERE source_id = '33333333-0000-4000-8000-00000000a903';

-- 4. A member in the middle of a READ COMMITTED transaction in another
-- session (a warm membership cache) loses the organization at the next
-- statement after its soft delete commits, and finds it again after the restore.
SELECT dblink_exec('claimer', 'BEGIN') AS member_begins;
SELECT dblink_exec('claimer', 'SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-0000000000a9''') AS member_signs_in;
SELECT dblink_exec('claimer', 'SET LOCAL ROLE dalgo_authenticated') AS member_is_an_app;
SELECT n AS organizations_seen FROM dblink('claimer', 'SELECT count(*) FROM dalgo.organizations') AS t(n bigint);
SELECT dblink_exec('deleter', 'BEGIN') AS owner_begins;
SELECT dblink_exec('deleter', 'SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-0000000000a9''') AS owner_signs_in;
SELECT x AS organization_deleted FROM dblink('deleter', 'SELECT dalgo.soft_delete(''dalgo.organizations'', ''22222222-0000-4000-8000-0000000000a9'') IS NOT NULL') AS t(x boolean);
SELECT dblink_exec('deleter', 'COMMIT') AS owner_commits;
SELECT n AS organizations_seen_after_delete, m AS is_member
	FROM dblink('claimer', 'SELECT count(*), dalgo.is_org_member(''22222222-0000-4000-8000-0000000000a9'') FROM dalgo.organizations') AS t(n bigint, m boolean);
SELECT dblink_exec('deleter', 'BEGIN') AS owner_begins;
SELECT dblink_exec('deleter', 'SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-0000000000a9''') AS owner_signs_in;
SELECT x AS organization_restored FROM dblink('deleter', 'SELECT dalgo.restore(''dalgo.organizations'', ''22222222-0000-4000-8000-0000000000a9'') IS NOT NULL') AS t(x boolean);
SELECT dblink_exec('deleter', 'COMMIT') AS owner_commits;
SELECT n AS organizations_seen_after_restore FROM dblink('claimer', 'SELECT count(*) FROM dalgo.organizations') AS t(n bigint);
SELECT dblink_exec('claimer', 'COMMIT') AS member_commits;

SELECT dblink_disconnect('claimer'), dblink_disconnect('deleter');
DELETE FROM dalgo.organizations WHERE id = '22222222-0000-4000-8000-0000000000a9';
DELETE FROM dalgo.users WHERE id = '11111111-0000-4000-8000-0000000000a9';
