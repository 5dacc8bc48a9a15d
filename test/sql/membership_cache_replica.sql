-- membership_cache_replica: the triggers that invalidate membership caches
-- fire on a logical-replication subscriber too, whose apply worker writes
-- with session_replication_role = replica and fires row triggers only: the
-- statement triggers are ENABLE ALWAYS, and row triggers ENABLE REPLICA
-- (test/t/membership_cache_subscriber.pl replicates for real).
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
SELECT plan(5);

SELECT set_eq($$SELECT c.relname::text || ':' || t.tgenabled::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
	WHERE t.tgname = 'membership_changed' AND c.relnamespace = 'dalgo'::regnamespace$$,
	ARRAY['users:A', 'organizations:A', 'organization_members:A'],
	'the membership_changed triggers are ENABLE ALWAYS');
SELECT set_eq($$SELECT c.relname::text || ':' || t.tgenabled::text || ':' || (t.tgtype & 1)::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
	WHERE t.tgname = 'membership_replicated' AND c.relnamespace = 'dalgo'::regnamespace$$,
	ARRAY['users:R:1', 'organizations:R:1', 'organization_members:R:1'],
	'row triggers for the apply worker fire in replica mode only');

SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-000000000002';
SELECT is(dalgo.is_org_member('22222222-0000-4000-8000-0000000000a0'), true, 'a member before the change');

-- Writes as a subscriber's apply worker makes them.
SET LOCAL session_replication_role = replica;
UPDATE dalgo.organization_members SET deleted_at = now() WHERE user_id = '11111111-0000-4000-8000-000000000002';
SELECT is(dalgo.is_org_member('22222222-0000-4000-8000-0000000000a0'), false, 'a replicated revocation is seen at the next statement');
UPDATE dalgo.users SET is_active = true WHERE id = '11111111-0000-4000-8000-000000000002';
UPDATE dalgo.organization_members SET deleted_at = NULL WHERE user_id = '11111111-0000-4000-8000-000000000002';
UPDATE dalgo.organizations SET deleted_at = now() WHERE id = '22222222-0000-4000-8000-0000000000a0';
SELECT is(dalgo.is_org_member('22222222-0000-4000-8000-0000000000a0'), false, 'so is a replicated organization deletion');
RESET session_replication_role;

SELECT * FROM finish();
ROLLBACK;
