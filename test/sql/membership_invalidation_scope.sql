-- membership_invalidation_scope: only writes that can change membership
-- invalidate the membership caches of every backend.  A sign-in, a
-- password change or a renamed organization must not flush the caches of
-- the whole cluster; deactivating or deleting a user or an organization,
-- making a superadmin, and any change to a membership row must.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
SET LOCAL track_functions = 'all';
SELECT plan(9);
INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-0000000000f1', 'scope@example.org');
INSERT INTO dalgo.organizations (id, name, slug) VALUES ('22222222-0000-4000-8000-0000000000f0', 'Scope org', 'scope-org');
CREATE FUNCTION pg_temp.invalidations() RETURNS bigint LANGUAGE sql AS $$
	SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions WHERE schemaname = 'dalgo_internal' AND funcname = 'invalidate_membership_caches' $$;
SELECT pg_temp.invalidations() AS base \gset
UPDATE dalgo.users SET password_hash = 'x', full_name = 'Scope' WHERE id = '11111111-0000-4000-8000-0000000000f1';
SELECT is(pg_temp.invalidations() - :base, 0::bigint, 'a password or name change does not invalidate');
UPDATE dalgo.users SET email = 'scope2@example.org' WHERE id = '11111111-0000-4000-8000-0000000000f1';
SELECT is(pg_temp.invalidations() - :base, 0::bigint, 'an email change does not invalidate');
UPDATE dalgo.organizations SET name = 'Renamed', settings = '{"a": 1}' WHERE id = '22222222-0000-4000-8000-0000000000f0';
SELECT is(pg_temp.invalidations() - :base, 0::bigint, 'renaming an organization does not invalidate');
UPDATE dalgo.users SET is_active = false WHERE id = '11111111-0000-4000-8000-0000000000f1';
SELECT is(pg_temp.invalidations() - :base, 1::bigint, 'deactivating a user invalidates');
UPDATE dalgo.users SET deleted_at = now() WHERE id = '11111111-0000-4000-8000-0000000000f1';
SELECT is(pg_temp.invalidations() - :base, 2::bigint, 'soft-deleting a user invalidates');
UPDATE dalgo.users SET is_superadmin = true WHERE id = '11111111-0000-4000-8000-0000000000f1';
SELECT is(pg_temp.invalidations() - :base, 3::bigint, 'making a superadmin invalidates');
UPDATE dalgo.organizations SET deleted_at = now() WHERE id = '22222222-0000-4000-8000-0000000000f0';
SELECT is(pg_temp.invalidations() - :base, 4::bigint, 'soft-deleting an organization invalidates');
UPDATE dalgo.organization_members SET updated_at = now() WHERE false;
SELECT is(pg_temp.invalidations() - :base, 5::bigint, 'any statement on memberships invalidates');
INSERT INTO dalgo.users (email) VALUES ('scope3@example.org');
SELECT is(pg_temp.invalidations() - :base, 6::bigint, 'a new user invalidates (it may be a superadmin)');
SELECT * FROM finish();
ROLLBACK;
