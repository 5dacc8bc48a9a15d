-- membership_cache: another session's committed change to membership is
-- seen by this session's next statement, even inside a long READ COMMITTED
-- transaction; a REPEATABLE READ transaction keeps its snapshot.
\set ECHO none
\i test/fixtures/tap_setup.sql
\pset tuples_only false
\pset format aligned
INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-0000000000c1', 'cache@example.org');
INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000c0', 'Cache org', 'cache-org');
INSERT INTO dalgo.organization_members (id, organization_id, user_id, role) VALUES
	('99999999-0000-4000-8000-0000000000c1', '22222222-0000-4000-8000-0000000000c0', '11111111-0000-4000-8000-0000000000c1', 'admin');
SELECT dblink_connect('other', format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
	split_part(current_setting('unix_socket_directories'), ',', 1))) AS other_session;
-- The identity is set per transaction (a session-level SET counts only in its own).
\set as_user 'SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-0000000000c1'';'
BEGIN;
:as_user
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000c0') AS role_before;
COMMIT;
BEGIN;
:as_user
SELECT dalgo.is_org_member('22222222-0000-4000-8000-0000000000c0') AS member_in_transaction;
SELECT dblink_exec('other', $$UPDATE dalgo.organization_members SET role = 'viewer'
	WHERE id = '99999999-0000-4000-8000-0000000000c1'$$) AS other_demotes;
SELECT dalgo.org_role('22222222-0000-4000-8000-0000000000c0') AS role_after_other_commit;
SELECT dblink_exec('other', $$UPDATE dalgo.organization_members SET deleted_at = now()
	WHERE id = '99999999-0000-4000-8000-0000000000c1'$$) AS other_revokes;
SELECT dalgo.is_org_member('22222222-0000-4000-8000-0000000000c0') AS member_after_revoke;
COMMIT;
SELECT dblink_exec('other', $$UPDATE dalgo.organization_members SET deleted_at = NULL
	WHERE id = '99999999-0000-4000-8000-0000000000c1'$$) AS other_restores;
BEGIN;
:as_user
SELECT dalgo.is_org_member('22222222-0000-4000-8000-0000000000c0') AS member_again;
COMMIT;
BEGIN ISOLATION LEVEL REPEATABLE READ;
:as_user
SELECT dalgo.is_org_member('22222222-0000-4000-8000-0000000000c0') AS member_in_snapshot;
SELECT dblink_exec('other', $$UPDATE dalgo.organization_members SET deleted_at = now()
	WHERE id = '99999999-0000-4000-8000-0000000000c1'$$) AS other_revokes;
SELECT dalgo.is_org_member('22222222-0000-4000-8000-0000000000c0') AS member_after_revoke_in_repeatable_read;
COMMIT;
BEGIN;
:as_user
SELECT dalgo.is_org_member('22222222-0000-4000-8000-0000000000c0') AS member_after_snapshot;
COMMIT;
SELECT dblink_disconnect('other');
DELETE FROM dalgo.organizations WHERE id = '22222222-0000-4000-8000-0000000000c0';
DELETE FROM dalgo.users WHERE id = '11111111-0000-4000-8000-0000000000c1';
