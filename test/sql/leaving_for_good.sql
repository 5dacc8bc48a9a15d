-- leaving_for_good: dalgo.delete_my_account() and dalgo.erase_user().  The
-- last owner of a team organization is refused, with a hint; otherwise the
-- personal organization goes with its warehouse, memberships end, sessions,
-- reset tokens and API keys die, the user row keeps its id and loses the
-- person, and so does the audit trail, whose guard still refuses everyone
-- else.  Runs without a wrapping transaction (sign-in failures are recorded
-- by a worker that must see committed rows).
\set ECHO none
\i test/fixtures/tap_setup.sql
SET dalgo.jwt_secret = '0123456789abcdef0123456789abcdef-accounts';
SET dalgo.bcrypt_cost = 4;
SELECT plan(39);

-- pg_temp.hint_of(sql): the SQLSTATE, message and hint a statement fails with.
CREATE FUNCTION pg_temp.hint_of(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	st text;
	msg text;
	hint text;
BEGIN
	EXECUTE q;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
	RETURN st || ': ' || regexp_replace(msg, '[0-9a-f-]{36}', '<id>') || ' / ' || hint;
END
$$;
GRANT EXECUTE ON FUNCTION pg_temp.hint_of(text) TO PUBLIC;

SET ROLE dalgo_anon;
SELECT dalgo.sign_up('leave.owner@example.org', 'owner password 1', 'Leona Leaver') AS owner \gset
SELECT dalgo.sign_up('leave.partner@example.org', 'partner password 1', 'Pat Partner') AS partner \gset
SELECT dalgo.sign_up('leave.member@example.org', 'member password 1', 'Mo Member') AS member \gset
SELECT refresh_token AS owner_refresh FROM dalgo.sign_in('leave.owner@example.org', 'owner password 1') \gset
SELECT dalgo.request_password_reset('leave.owner@example.org') \g /dev/null
RESET ROLE;
SELECT o.id AS personal, replace(o.id::text, '-', '') AS personal_hex FROM dalgo.organizations o
	JOIN dalgo.organization_members m ON m.organization_id = o.id WHERE m.user_id = :'owner' \gset
SELECT dalgo.ensure_warehouse(:'personal') \g /dev/null
BEGIN;
SET LOCAL dalgo.user_id = :'owner';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.create_organization('Leave team', 'leave-team') AS team \gset
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
	(:'team', :'partner', 'admin'), (:'team', :'member', 'member');
SELECT dalgo.create_api_key(:'team', 'robot', 'member') AS owner_key \gset
-- A team organization the owner alone owns, already soft-deleted: it does not hold them back.
SELECT dalgo.create_organization('Leave old team', 'leave-old-team') AS old_team \gset
SELECT dalgo.soft_delete('dalgo.organizations', :'old_team') IS NOT NULL AS old_team_deleted \g /dev/null
COMMIT;
UPDATE dalgo.users SET email = 'leave.owner@example.org', full_name = 'Leona Leaver' WHERE id = :'owner';
SET dalgo.client_ip = '203.0.113.9';
SET dalgo.user_agent = 'LeonaBrowser/1.0';
BEGIN;
SET LOCAL dalgo.user_id = :'owner';
SET LOCAL ROLE dalgo_authenticated;
UPDATE dalgo.organizations SET description = 'Run by Leona Leaver (leave.owner@example.org)' WHERE id = :'team';
COMMIT;
RESET dalgo.client_ip;
RESET dalgo.user_agent;
SELECT ok((SELECT count(*) FROM dalgo.audit_logs WHERE details::text ILIKE '%leave.owner@example.org%') > 0
		  AND (SELECT count(*) FROM dalgo.audit_logs WHERE user_id = :'owner' AND ip_address = '203.0.113.9') > 0,
	'before: the audit trail holds the email and the client address');

-- Who may call what.
SET ROLE dalgo_anon;
SELECT throws_ok('SELECT dalgo.delete_my_account()', '42501', NULL, 'dalgo_anon cannot delete an account');
SELECT throws_ok(format('SELECT dalgo.erase_user(%L)', :'owner'), '42501', NULL, 'nor erase one');
RESET ROLE;
BEGIN;
SET LOCAL dalgo.user_id = :'member';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok(format('SELECT dalgo.erase_user(%L)', :'owner'), '42501', NULL, 'a user cannot erase another');
SELECT throws_ok(format('SELECT dalgo_internal.anonymize_audit_logs(%L, %L, %L)', :'owner', '{}', '{}'), '42501', NULL,
	'nor reach the audit anonymization');
COMMIT;
BEGIN;
SET LOCAL ROLE dalgo_anon;
SELECT dalgo.authenticate_api_key(:'owner_key') \g /dev/null
RESET ROLE;
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok('SELECT dalgo.delete_my_account()', '42501', NULL, 'an API key cannot delete its creator''s account');
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = :'member';
SET LOCAL ROLE dalgo_service;
SELECT throws_ok(format('SELECT dalgo.erase_user(%L)', :'owner'), '42501', 'erase_user is service work; it runs without a user identity',
	'dalgo_service acting for a user cannot erase one');
COMMIT;

-- The last owner of a team organization is refused, with a hint.
BEGIN;
SET LOCAL dalgo.user_id = :'owner';
SET LOCAL ROLE dalgo_authenticated;
SELECT is(pg_temp.hint_of('SELECT dalgo.delete_my_account()'),
	'23514: you are the last owner of the organization "Leave team" (<id>) / Make another member an owner, or delete the organization, first.',
	'the last owner of a team organization cannot leave, and is told what to do');
COMMIT;
SET ROLE dalgo_service;
SELECT is(pg_temp.hint_of(format('SELECT dalgo.erase_user(%L)', :'owner')),
	'23514: you are the last owner of the organization "Leave team" (<id>) / Make another member an owner, or delete the organization, first.',
	'erase_user keeps the same rule');
RESET ROLE;
SELECT is((SELECT deleted_at IS NULL AND email = 'leave.owner@example.org' FROM dalgo.users WHERE id = :'owner'), true,
	'nothing changed');

-- Another owner, then the owner leaves.
BEGIN;
SET LOCAL dalgo.user_id = :'owner';
SET LOCAL ROLE dalgo_authenticated;
UPDATE dalgo.organization_members SET role = 'owner' WHERE organization_id = :'team' AND user_id = :'partner';
SELECT lives_ok('SELECT dalgo.delete_my_account()', 'the owner deletes their account once another owner exists');
COMMIT;

SELECT results_eq(format($$SELECT email = 'erased-' || replace(id::text, '-', '') || '@erased.invalid', full_name, password_hash,
		is_active, deleted_at IS NOT NULL FROM dalgo.users WHERE id = %L$$, :'owner'),
	$$VALUES (true, NULL::text, NULL::text, false, true)$$, 'the user row keeps its id: email replaced, name and password gone, inactive, deleted');
SELECT is((SELECT count(*) FROM dalgo.organizations WHERE id = :'personal'), 0::bigint, 'the personal organization is deleted');
SELECT is((SELECT count(*) FROM pg_namespace WHERE nspname = 'org_' || :'personal_hex')
		  + (SELECT count(*) FROM pg_roles WHERE rolname = 'dalgo_wh_' || :'personal_hex'), 0::bigint,
	'with its warehouse schema and role');
SELECT is((SELECT count(*) FROM dalgo.organization_members WHERE user_id = :'owner' AND deleted_at IS NULL), 0::bigint,
	'every membership ended');
SELECT is((SELECT count(*) FROM dalgo.organization_members WHERE user_id = :'owner'), 2::bigint,
	'the team membership rows stay, by id, for the trail (also of a deleted team organization they were last owner of)');
SELECT is((SELECT count(*) FROM dalgo.refresh_tokens WHERE user_id = :'owner' AND revoked_at IS NULL)
		  + (SELECT count(*) FROM dalgo.password_reset_tokens WHERE user_id = :'owner' AND used_at IS NULL)
		  + (SELECT count(*) FROM dalgo.api_keys WHERE created_by_id = :'owner' AND revoked_at IS NULL), 0::bigint,
	'refresh tokens, reset tokens and API keys are revoked');
SELECT is((SELECT count(*) FROM dalgo.mail_messages WHERE recipient ILIKE 'leave.owner@%'), 0::bigint,
	'no mail names the old address');
SELECT is((SELECT count(*) FROM dalgo.mail_messages WHERE recipient LIKE 'erased-%' AND state = 'pending'), 0::bigint,
	'the pending reset mail is cancelled');
SELECT is((SELECT count(*) FROM dalgo.sign_in_attempts WHERE user_id = :'owner'), 0::bigint, 'sign-in attempts are gone');
SET ROLE dalgo_anon;
SELECT throws_ok(format('SELECT * FROM dalgo.refresh_session(%L)', :'owner_refresh'), '28000', NULL, 'the old refresh token is dead');
SELECT throws_ok('SELECT * FROM dalgo.sign_in(''leave.owner@example.org'', ''owner password 1'')', '28P01', NULL,
	'the old email and password sign in no more');
SELECT throws_ok(format('SELECT dalgo.authenticate_api_key(%L)', :'owner_key'), '28000', NULL, 'the API key is dead');
RESET ROLE;

-- The audit trail: ids stay, the person goes.
SELECT is((SELECT count(*) FROM dalgo.audit_logs
		   WHERE details::text ILIKE '%leave.owner%' OR details::text ILIKE '%Leona%'), 0::bigint,
	'no audit row holds the email or the name');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE user_id = :'owner' AND (ip_address IS NOT NULL OR user_agent IS NOT NULL)),
	0::bigint, 'nor the client address or user agent of what the user did');
SELECT ok((SELECT count(*) FROM dalgo.audit_logs WHERE user_id = :'owner' AND action = 'update' AND resource_type = 'organizations'
		   AND resource_id = :'team') = 1,
	'what the user did is still there, by id');
SELECT ok((SELECT count(*) FROM dalgo.audit_logs WHERE resource_id = :'owner' AND action = 'account_erased') = 1,
	'the erasure itself is recorded, by id');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE details::text ILIKE '%leave.partner@example.org%'
		   OR details::text ILIKE '%Pat Partner%') > 0, true, 'other people''s rows are untouched');
SELECT throws_ok('UPDATE dalgo.audit_logs SET details = ''{}'' WHERE user_id IS NOT NULL', '42501', 'dalgo.audit_logs is append-only',
	'the append-only guard still refuses everyone else, a superuser too');

-- The other members keep their team.
BEGIN;
SET LOCAL dalgo.user_id = :'partner';
SET LOCAL ROLE dalgo_authenticated;
SELECT is(dalgo.org_role(:'team'), 'owner'::dalgo.member_role, 'the team keeps its other owner');
COMMIT;

-- The service side: a data-subject request for a member.
SET ROLE dalgo_service;
SELECT lives_ok(format('SELECT dalgo.erase_user(%L)', :'member'), 'dalgo_service erases a member');
RESET ROLE;
SELECT is((SELECT email LIKE 'erased-%@erased.invalid' AND full_name IS NULL AND NOT is_active FROM dalgo.users WHERE id = :'member'),
	true, 'the member is anonymized');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE details::text ILIKE '%leave.member%' OR details::text ILIKE '%Mo Member%'),
	0::bigint, 'and gone from the audit trail');
SELECT is((SELECT count(*) FROM dalgo.organizations o JOIN dalgo.organization_members m ON m.organization_id = o.id
		   WHERE m.user_id = :'member' AND o.org_type = 'personal'), 0::bigint, 'with their personal organization');
SET ROLE dalgo_service;
SELECT throws_ok(format('SELECT dalgo.erase_user(%L)', '00000000-0000-4000-8000-000000000000'), 'P0002', NULL,
	'an unknown user is an error');
SELECT lives_ok(format('SELECT dalgo.erase_user(%L)', :'owner'), 'erasing twice is harmless');
RESET ROLE;

-- Leaving an organization's warehouse behind is impossible: the team's is intact.
SELECT is((SELECT count(*) FROM dalgo.organizations WHERE id = :'team' AND deleted_at IS NULL), 1::bigint, 'the team organization stays');

-- A user names themselves after a piece of everyone's ids ("-4000-") and
-- leaves: the erasure touches neither ids nor the audit rows of
-- organizations they never belonged to.
INSERT INTO dalgo.users (id, email, full_name) VALUES ('11111111-0000-4000-8000-0000000000ee', 'mallory@example.org', 'Mallory');
CREATE TEMP TABLE audit_before AS SELECT id, details FROM dalgo.audit_logs WHERE organization_id = :'team';
BEGIN;
SET LOCAL dalgo.user_id = '11111111-0000-4000-8000-0000000000ee';
SET LOCAL ROLE dalgo_authenticated;
UPDATE dalgo.users SET full_name = '-4000-' WHERE id = '11111111-0000-4000-8000-0000000000ee';
SELECT dalgo.delete_my_account();
COMMIT;
SELECT is_empty($$SELECT id FROM audit_before b JOIN dalgo.audit_logs a USING (id) WHERE a.details IS DISTINCT FROM b.details$$,
	'another organization''s audit rows are untouched by a stranger''s erasure');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE details::text LIKE '%"id": "[erased]"%'), 0::bigint,
	'no id is ever erased');
DROP TABLE audit_before;

SELECT * FROM finish();

-- Clean up (service work): the organizations go with their warehouses.
DELETE FROM dalgo.organizations WHERE id IN (:'team', :'old_team')
	OR id IN (SELECT m.organization_id FROM dalgo.organization_members m WHERE m.user_id IN (:'owner', :'partner', :'member'));
DELETE FROM dalgo.users WHERE id IN (:'owner', :'partner', :'member');
