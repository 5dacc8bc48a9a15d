-- membership_cache_load_failure: an error while the membership cache is
-- being loaded (here a lock timeout; equally a cancel, a statement timeout
-- or running out of memory) leaves the cache invalid, so the next call
-- loads it again instead of answering from an empty cache.
\set ECHO none
\i test/fixtures/tap_setup.sql
INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-0000000000d1', 'cache.fault@example.org');
INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000d0', 'Cache fault org', 'cache-fault-org');
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
	('22222222-0000-4000-8000-0000000000d0', '11111111-0000-4000-8000-0000000000d1', 'admin');
SELECT plan(5);
SELECT is(dblink_connect('locker', format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
	split_part(current_setting('unix_socket_directories'), ',', 1))), 'OK', 'a second session');

-- The other session holds organization_members, so loading the cache times out.
SELECT dblink_exec('locker', 'BEGIN') \g /dev/null
SELECT dblink_exec('locker', 'LOCK TABLE dalgo.organization_members IN ACCESS EXCLUSIVE MODE') \g /dev/null
BEGIN;
SET LOCAL lock_timeout = '200ms';
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000d1';
SELECT throws_ok($$SELECT dalgo.is_org_member('22222222-0000-4000-8000-0000000000d0')$$,
	'55P03', NULL, 'loading the membership cache fails with a lock timeout');
SELECT throws_ok($$SELECT dalgo.current_org_ids()$$,
	'55P03', NULL, 'and fails again while the lock is held (it is not answered from an empty cache)');
SELECT dblink_exec('locker', 'ROLLBACK') \g /dev/null
SET LOCAL lock_timeout = 0;

-- Nothing changed membership meanwhile, so no invalidation came: only a
-- cache that was left invalid is loaded again.
SELECT is(dalgo.is_org_member('22222222-0000-4000-8000-0000000000d0', 'admin'), true,
	'the next call loads the cache and sees the membership');
SELECT is(dalgo.current_org_ids(), ARRAY['22222222-0000-4000-8000-0000000000d0']::uuid[], 'current_org_ids too');
COMMIT;

SELECT * FROM finish();
SELECT dblink_disconnect('locker') \g /dev/null
DELETE FROM dalgo.organizations WHERE id = '22222222-0000-4000-8000-0000000000d0';
DELETE FROM dalgo.users WHERE id = '11111111-0000-4000-8000-0000000000d1';
