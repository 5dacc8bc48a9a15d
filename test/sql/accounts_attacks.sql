-- accounts_attacks: what an attacker tries against the account flows:
-- replaying a rotated refresh token, accepting someone else's invitation,
-- inviting without the role, an API key reaching a second organization or
-- acting above its creator's current role, enumerating accounts through
-- error messages, reading secrets, forging identities and weakening the
-- settings.  Runs without a wrapping transaction (see accounts_flows).
\set ECHO none
\i test/fixtures/tap_setup.sql
SET dalgo.jwt_secret = '0123456789abcdef0123456789abcdef-accounts';
SET dalgo.bcrypt_cost = 4;
SELECT plan(58);

SET ROLE dalgo_anon;
SELECT dalgo.sign_up('atk.owner@example.org', 'owner password 1') AS owner \gset
SELECT dalgo.sign_up('atk.admin@example.org', 'admin password 1') AS admin \gset
SELECT dalgo.sign_up('atk.member@example.org', 'member password 1') AS member \gset
SELECT dalgo.sign_up('atk.eve@example.org', 'eve password 1') AS eve \gset
RESET ROLE;
INSERT INTO dalgo.organizations (name, slug) VALUES ('Attack org', 'attack-org') RETURNING id AS org \gset
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
	(:'org', :'owner', 'owner'), (:'org', :'admin', 'admin'), (:'org', :'member', 'member');
SELECT o.id AS admin_personal FROM dalgo.organizations o JOIN dalgo.organization_members m ON m.organization_id = o.id
	WHERE m.user_id = :'admin' AND o.org_type = 'personal' \gset
INSERT INTO dalgo.sources (organization_id, name, source_type, warehouse_table_name) VALUES
	(:'org', 'Org sheet', 'google_sheets', 'org_sheet'), (:'admin_personal', 'Private sheet', 'google_sheets', 'private_sheet');

-- Replaying a rotated refresh token (a thief and the victim share a family).
SET ROLE dalgo_anon;
SELECT refresh_token AS stolen FROM dalgo.sign_in('atk.eve@example.org', 'eve password 1') \gset
SELECT refresh_token AS victim_next FROM dalgo.refresh_session(:'stolen') \gset
SELECT throws_ok(format('SELECT * FROM dalgo.refresh_session(%L)', :'stolen'), '28000', 'invalid refresh token',
	'replaying_rotated_token: the thief''s replay fails');
SELECT throws_ok(format('SELECT * FROM dalgo.refresh_session(%L)', :'victim_next'), '28000', 'invalid refresh token',
	'replaying_rotated_token: the whole family is dead, the newest token included');
RESET ROLE;
SELECT is((SELECT count(*) FROM dalgo.refresh_tokens WHERE user_id = :'eve' AND revoked_at IS NULL), 0::bigint,
	'replaying_rotated_token: no live token is left in the family');

-- Invitations.
BEGIN;
SET LOCAL dalgo.user_id = :'member';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok(format('SELECT dalgo.invite_member(%L, %L, %L)', :'org', 'x@example.org', 'viewer'),
	'42501', 'only admins and owners of the organization can invite', 'member_inviting: a member cannot invite');
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = :'admin';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok(format('SELECT dalgo.invite_member(%L, %L, %L)', :'org', 'x@example.org', 'owner'),
	'42501', 'only an owner can invite an owner', 'admin_inviting_owner: an admin cannot invite an owner');
SELECT throws_ok(format('INSERT INTO dalgo.invitations (organization_id, email, role, token, expires_at) VALUES (%L, %L, %L, %L, now() + interval ''1 day'')',
	:'org', 'atk.eve@example.org', 'owner', 'known-hash'),
	'42501', NULL, 'admin_inviting_owner: nor write an invitation row directly');
SELECT dalgo.invite_member(:'org', 'atk.member2@example.org', 'member') AS inv \gset
COMMIT;
SET ROLE dalgo_service;
SELECT payload->>'token' AS inv_token FROM dalgo.claim_messages(10) WHERE payload->>'invitation_id' = :'inv' \gset
RESET ROLE;
BEGIN;
SET LOCAL dalgo.user_id = :'eve';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok(format('SELECT dalgo.accept_invitation(%L)', :'inv_token'), '42501', 'this invitation was sent to another email address',
	'accepting_as_wrong_user: someone else''s invitation is refused');
SELECT is(dalgo.is_org_member(:'org'), false, 'accepting_as_wrong_user: no membership results');
COMMIT;
SELECT ok((SELECT accepted_at IS NULL FROM dalgo.invitations WHERE id = :'inv'), 'accepting_as_wrong_user: the invitation stays pending');
UPDATE dalgo.invitations SET expires_at = now() - interval '1 second' WHERE id = :'inv';
SET ROLE dalgo_anon;
SELECT dalgo.sign_up('atk.member2@example.org', 'member password 2') AS member2 \gset
RESET ROLE;
BEGIN;
SET LOCAL dalgo.user_id = :'member2';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok(format('SELECT dalgo.accept_invitation(%L)', :'inv_token'), '55000', 'this invitation has expired',
	'accepting_expired_invitation: refused');
SELECT throws_ok($$SELECT dalgo.accept_invitation('made-up')$$, '28000', 'invalid invitation token', 'accepting_unknown_invitation: refused');
COMMIT;
-- An invitation never grants more than its sender may grant now.
BEGIN;
SET LOCAL dalgo.user_id = :'admin';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.invite_member(:'org', 'atk.member2@example.org', 'admin') AS inv2 \gset
COMMIT;
SET ROLE dalgo_service;
SELECT payload->>'token' AS inv2_token FROM dalgo.claim_messages(10) WHERE payload->>'invitation_id' = :'inv2' \gset
RESET ROLE;
UPDATE dalgo.organization_members SET role = 'member' WHERE organization_id = :'org' AND user_id = :'admin';
BEGIN;
SET LOCAL dalgo.user_id = :'member2';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok(format('SELECT dalgo.accept_invitation(%L)', :'inv2_token'), '42501', 'the inviter can no longer invite to this organization',
	'demoted_inviter: an invitation from a demoted admin no longer works');
COMMIT;
UPDATE dalgo.organization_members SET role = 'admin' WHERE organization_id = :'org' AND user_id = :'admin';

-- API keys.
BEGIN;
SET LOCAL dalgo.user_id = :'member';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok(format('SELECT dalgo.create_api_key(%L, %L)', :'org', 'k'), '42501', NULL, 'api_key_by_member: members cannot create keys');
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = :'admin';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok(format('SELECT dalgo.create_api_key(%L, %L, %L)', :'org', 'k', 'owner'), '42501', 'an API key''s role cannot exceed yours',
	'api_key_above_creator: a key''s role cannot exceed its creator''s');
SELECT dalgo.create_api_key(:'org', 'admin key', 'admin') AS key \gset
SELECT dalgo.create_api_key(:'org', 'to revoke', 'viewer') AS revoked_key \gset
SELECT dalgo.create_api_key(:'org', 'expiring', 'viewer', now() + interval '1 hour') AS expired_key \gset
SELECT dalgo.create_api_key(:'org', 'rr key', 'viewer') AS rr_key \gset
SELECT throws_ok($$SELECT key_hash FROM dalgo.api_keys$$, '42501', NULL, 'secrets: key hashes are not readable');
SELECT lives_ok(format('SELECT dalgo.revoke_api_key(id) FROM dalgo.api_keys WHERE name = %L', 'to revoke'), 'an admin revokes a key');
COMMIT;
UPDATE dalgo.api_keys SET expires_at = now() - interval '1 second' WHERE name = 'expiring';
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE action = 'api_key_revoked' AND organization_id = :'org'), 1::bigint,
	'revoking a key leaves an audit row');

BEGIN;
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.authenticate_api_key(:'key') \g /dev/null
SELECT is(dalgo.current_org_ids(), ARRAY[:'org'::uuid], 'api_key_second_org: the key sees exactly one organization');
SELECT is(dalgo.is_org_member(:'admin_personal'), false, 'api_key_second_org: not the creator''s other organization');
SELECT is((SELECT array_agg(name) FROM dalgo.sources), ARRAY['Org sheet'], 'api_key_second_org: RLS shows only the key''s organization');
SELECT is((SELECT count(*) FROM dalgo.organizations WHERE id = :'admin_personal'), 0::bigint, 'api_key_second_org: the other organization is invisible');
SELECT throws_ok(format('INSERT INTO dalgo.sources (organization_id, name, source_type, warehouse_table_name) VALUES (%L, %L, %L, %L)',
	:'admin_personal', 'planted', 'csv', 'planted'), '42501', NULL, 'api_key_second_org: no write into the other organization');
SELECT throws_ok(format('SELECT dalgo.create_api_key(%L, %L)', :'org', 'minted'), '42501', 'creating an API key needs a signed-in user, not an API key',
	'api_key_minting: a key cannot create keys');
SELECT throws_ok($$SELECT dalgo.change_password('admin password 1', 'stolen password')$$, '42501', NULL,
	'api_key_account_takeover: a key cannot change its creator''s password');
SELECT throws_ok($$SELECT dalgo.end_all_sessions()$$, '42501', NULL, 'api_key_account_takeover: nor end its creator''s sessions');
SELECT throws_ok($$SELECT dalgo.create_organization('Escape', 'api-key-escape')$$, '42501',
	'creating an organization needs a signed-in user, not an API key', 'api_key_second_org: a key cannot create another organization');
COMMIT;

-- After a demotion the key acts at most at the creator's current role.
UPDATE dalgo.organization_members SET role = 'viewer' WHERE organization_id = :'org' AND user_id = :'admin';
BEGIN;
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.authenticate_api_key(:'key') \g /dev/null
SELECT is(dalgo.org_role(:'org'), 'viewer'::dalgo.member_role, 'api_key_after_demotion: the admin key now acts as a viewer');
SELECT is(dalgo.is_org_admin(:'org'), false, 'api_key_after_demotion: not an admin');
SELECT throws_ok(format('INSERT INTO dalgo.sources (organization_id, name, source_type, warehouse_table_name) VALUES (%L, %L, %L, %L)',
	:'org', 'planted', 'csv', 'planted'), '42501', NULL, 'api_key_after_demotion: no admin write');
COMMIT;
UPDATE dalgo.organization_members SET deleted_at = now() WHERE organization_id = :'org' AND user_id = :'admin';
BEGIN;
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.authenticate_api_key(:'key') \g /dev/null
SELECT is(dalgo.current_org_ids(), '{}'::uuid[], 'api_key_after_removal: a removed creator''s key sees nothing');
COMMIT;
UPDATE dalgo.organization_members SET deleted_at = NULL, role = 'admin' WHERE organization_id = :'org' AND user_id = :'admin';

SET ROLE dalgo_anon;
SELECT throws_ok(format('SELECT dalgo.authenticate_api_key(%L)', :'revoked_key'), '28000', 'invalid API key', 'api_key_revoked: refused');
SELECT throws_ok(format('SELECT dalgo.authenticate_api_key(%L)', :'expired_key'), '28000', 'invalid API key', 'api_key_expired: the same error');
SELECT throws_ok($$SELECT dalgo.authenticate_api_key('dk_made-up')$$, '28000', 'invalid API key', 'api_key_unknown: the same error');
RESET ROLE;
-- A REPEATABLE READ snapshot taken before a revocation does not revive the key.
SELECT dblink_connect('other', format('dbname=%s port=%s host=%s', current_database(), current_setting('port'),
	split_part(current_setting('unix_socket_directories'), ',', 1))) \g /dev/null
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) FROM dalgo.api_keys \g /dev/null
SELECT dblink_exec('other', $$UPDATE dalgo.api_keys SET revoked_at = now() WHERE name = 'rr key'$$) \g /dev/null
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok(format('SELECT dalgo.authenticate_api_key(%L)', :'rr_key'), '28000', 'invalid API key',
	'api_key_stale_snapshot: a key revoked after the snapshot is refused');
ROLLBACK;
SELECT dblink_disconnect('other') \g /dev/null
-- Nor does it hide other sessions' failed attempts or rotations.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT throws_ok($$SELECT * FROM dalgo.sign_in('atk.owner@example.org', 'a wrong guess')$$, '25000',
	'dalgo.sign_in must run in a READ COMMITTED transaction', 'stale_snapshot_sign_in: refused above READ COMMITTED');
SELECT throws_ok($$SELECT * FROM dalgo.refresh_session('x')$$, '25000', NULL, 'stale_snapshot_refresh: refused above READ COMMITTED');
SELECT throws_ok($$SELECT dalgo.reset_password('x', 'long enough password')$$, '25000', NULL, 'stale_snapshot_reset: refused above READ COMMITTED');
ROLLBACK;
BEGIN;
SET LOCAL ROLE dalgo_authenticated;
SAVEPOINT s;
SELECT dalgo.authenticate_api_key(:'key') \g /dev/null
ROLLBACK TO SAVEPOINT s;
SELECT is(dalgo.current_api_key_id(), NULL::uuid, 'api_key_savepoint: a key identity set in a rolled-back savepoint is forgotten');
SELECT is(dalgo.current_user_id(), NULL::uuid, 'api_key_savepoint: and so is its user');
COMMIT;

-- Forging identities and records through the private functions.
SET ROLE dalgo_authenticated;
SELECT throws_ok(format('SELECT dalgo_internal.set_api_key_identity(%L, %L, %L, %L)', :'org', :'owner', :'org', 'owner'), '42501', NULL,
	'forged_identity: set_api_key_identity is not callable');
SELECT throws_ok(format('SELECT dalgo_internal.act_as(%L)', :'owner'), '42501', NULL, 'forged_identity: act_as is not callable');
SELECT throws_ok($$SELECT dalgo_internal.run_autonomously('failed_sign_in', sha256('x'), NULL)$$, '42501', NULL,
	'forged_records: the autonomous recorder is not callable');
SELECT throws_ok($$SELECT dalgo_internal.sign_access_token(gen_random_uuid(), now() + interval '1 day')$$, '42501', NULL,
	'forged_tokens: token signing is not callable');
RESET ROLE;
SET ROLE dalgo_anon;
SELECT throws_ok(format('SELECT dalgo.invite_member(%L, %L, %L)', :'org', 'x@example.org', 'viewer'), '42501', NULL,
	'anonymous callers cannot invite');
RESET ROLE;

-- Enumeration through error messages.
CREATE FUNCTION pg_temp.error_of(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
SET ROLE dalgo_anon;
SELECT is(pg_temp.error_of($$SELECT * FROM dalgo.sign_in('atk.owner@example.org', 'wrong password 1')$$),
		  pg_temp.error_of($$SELECT * FROM dalgo.sign_in('atk.unknown@example.org', 'wrong password 1')$$),
	'enumeration: sign-in errors are identical for a wrong password and an unknown email');
SELECT is(pg_temp.error_of($$SELECT dalgo.request_password_reset('atk.owner@example.org')$$),
		  pg_temp.error_of($$SELECT dalgo.request_password_reset('atk.unknown@example.org')$$),
	'enumeration: a reset request answers the same for a known and an unknown email');
SELECT is(pg_temp.error_of(format('SELECT * FROM dalgo.refresh_session(%L)', :'stolen')),
		  pg_temp.error_of($$SELECT * FROM dalgo.refresh_session('made-up')$$),
	'enumeration: a revoked refresh token fails like an unknown one');
RESET ROLE;

-- Secrets are not readable by app roles.
BEGIN;
SET LOCAL dalgo.user_id = :'owner';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok($$SELECT password_hash FROM dalgo.users$$, '42501', NULL, 'secrets: password hashes are not readable');
SELECT throws_ok($$SELECT token_hash FROM dalgo.refresh_tokens$$, '42501', NULL, 'secrets: refresh token hashes are not readable');
SELECT throws_ok($$SELECT token_hash FROM dalgo.password_reset_tokens$$, '42501', NULL, 'secrets: reset token hashes are not readable');
SELECT throws_ok($$SELECT token FROM dalgo.invitations$$, '42501', NULL, 'secrets: invitation hashes are not readable');
SELECT throws_ok($$SELECT payload FROM dalgo.mail_messages$$, '42501', NULL, 'secrets: the mail queue is not readable');
SELECT throws_ok($$SELECT email_hash FROM dalgo.sign_in_attempts$$, '42501', NULL, 'secrets: sign-in attempts are not readable');
COMMIT;
SET ROLE dalgo_anon;
SELECT throws_ok($$SELECT payload FROM dalgo.mail_messages$$, '42501', NULL, 'secrets: dalgo_anon does not read the queue');
RESET ROLE;
SELECT is((SELECT count(*) FROM dalgo.audit_logs a
		   WHERE a.details::text ~ ANY (ARRAY[:'stolen', :'victim_next', :'inv_token', :'inv2_token', :'key', :'revoked_key',
										 'owner password 1', 'admin password 1', 'eve password 1', '\$2a\$',
										 dalgo_internal.token_digest(:'stolen'), dalgo_internal.token_digest(:'key'), dalgo_internal.token_digest(:'inv_token')])),
	0::bigint, 'secrets: no password, token or hash in audit_logs');

-- Settings that weaken security are for superusers only.
SELECT is((SELECT array_agg(name ORDER BY name) FROM pg_settings WHERE name IN ('dalgo.min_password_length', 'dalgo.bcrypt_cost',
		   'dalgo.access_token_ttl', 'dalgo.refresh_token_ttl', 'dalgo.max_failed_sign_ins', 'dalgo.sign_in_lockout',
		   'dalgo.password_reset_ttl', 'dalgo.invitation_ttl', 'dalgo.mail_claim_timeout') AND context = 'superuser'),
	ARRAY['dalgo.access_token_ttl', 'dalgo.bcrypt_cost', 'dalgo.invitation_ttl', 'dalgo.mail_claim_timeout',
		  'dalgo.max_failed_sign_ins', 'dalgo.min_password_length', 'dalgo.password_reset_ttl', 'dalgo.refresh_token_ttl',
		  'dalgo.sign_in_lockout'], 'settings: every account setting is PGC_SUSET');
SET ROLE dalgo_authenticated;
SELECT throws_ok($$SET dalgo.max_failed_sign_ins = 1000$$, '42501', NULL, 'settings: an app role cannot raise the lockout threshold');
SELECT throws_ok($$SET dalgo.bcrypt_cost = 4$$, '42501', NULL, 'settings: nor lower the bcrypt cost');
RESET ROLE;

DELETE FROM dalgo.organizations WHERE id = :'org' OR id IN (SELECT organization_id FROM dalgo.organization_members
	WHERE user_id IN (:'owner', :'admin', :'member', :'eve', :'member2'));
DELETE FROM dalgo.users WHERE id IN (:'owner', :'admin', :'member', :'eve', :'member2');
DELETE FROM dalgo.mail_messages;
DELETE FROM dalgo.sign_in_attempts;
SELECT * FROM finish();
