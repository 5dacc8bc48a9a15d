-- claim_locked_starvation: schedule rows that another transaction holds
-- locked (a long run_schedule_now, an admin's open UPDATE) are skipped by the
-- scheduler's claim; they must not use up its places, or a few locked rows
-- of one organization keep every other organization's due schedule from
-- being claimed.
\set ECHO none
\i test/fixtures/tap_setup.sql
INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-0000000000f1', 'lock.owner@example.org');
INSERT INTO dalgo.organizations (id, name, slug) VALUES
	('22222222-0000-4000-8000-0000000000f0', 'Locker org', 'locker-org'),
	('22222222-0000-4000-8000-0000000000f1', 'Victim org', 'victim-org');
INSERT INTO dalgo.sources (id, organization_id, name, source_type, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000f0', '22222222-0000-4000-8000-0000000000f0', 'Held', 'google_sheets', 'held'),
	('33333333-0000-4000-8000-0000000000f1', '22222222-0000-4000-8000-0000000000f1', 'Due', 'google_sheets', 'due');
-- Due only far in the future, so that the live scheduler leaves them alone;
-- the locker organization's is older, so it comes first in the claim's order.
INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency) VALUES
	('88888888-0000-4000-8000-0000000000f0', '22222222-0000-4000-8000-0000000000f0', '33333333-0000-4000-8000-0000000000f0', 'daily'),
	('88888888-0000-4000-8000-0000000000f1', '22222222-0000-4000-8000-0000000000f1', '33333333-0000-4000-8000-0000000000f1', 'daily');
UPDATE dalgo.schedules SET next_run_at = '2100-01-01 00:00+00' WHERE id = '88888888-0000-4000-8000-0000000000f0';
UPDATE dalgo.schedules SET next_run_at = '2100-01-01 00:01+00' WHERE id = '88888888-0000-4000-8000-0000000000f1';
SELECT plan(3);
SELECT dblink_connect('holder', format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
	split_part(current_setting('unix_socket_directories'), ',', 1))) \g /dev/null
-- Another session holds the older schedule's row.
SELECT dblink_exec('holder', 'BEGIN') \g /dev/null
SELECT * FROM dblink('holder', $$SELECT 1 FROM dalgo.schedules WHERE id = '88888888-0000-4000-8000-0000000000f0' FOR UPDATE$$)
	AS t(x integer) \g /dev/null

BEGIN;
-- One place more than the other organizations' first due schedules take
-- (schedules other tests left behind come first: they are older).
SELECT count(DISTINCT organization_id) + 1 AS places FROM dalgo.schedules
WHERE is_active AND deleted_at IS NULL AND next_run_at <= '2100-01-02 00:00+00'
  AND organization_id NOT IN ('22222222-0000-4000-8000-0000000000f0', '22222222-0000-4000-8000-0000000000f1') \gset
CREATE TEMP TABLE claimed ON COMMIT DROP AS SELECT * FROM dalgo_internal.claim_due_schedules('2100-01-02 00:00+00', :places);
SELECT count(*) FILTER (WHERE schedule_id = '88888888-0000-4000-8000-0000000000f0') AS held,
	   count(*) FILTER (WHERE schedule_id = '88888888-0000-4000-8000-0000000000f1') AS victim,
	   count(*) AS total FROM claimed \gset
ROLLBACK;
SELECT is(:held::bigint, 0::bigint, 'the locked schedule is skipped');
SELECT is(:victim::bigint, 1::bigint, 'and does not take the place of another organization''s due schedule');
SELECT is(:total::bigint, :places::bigint, 'every place is used');
SELECT dblink_exec('holder', 'ROLLBACK') \g /dev/null
SELECT dblink_disconnect('holder') \g /dev/null
SELECT * FROM finish();
DELETE FROM dalgo.organizations WHERE id IN ('22222222-0000-4000-8000-0000000000f0', '22222222-0000-4000-8000-0000000000f1');
DELETE FROM dalgo.users WHERE id = '11111111-0000-4000-8000-0000000000f1';
