-- accounts_flows: every account flow as a client calls it: sign-up, sign-in,
-- refresh rotation, sign-out, password reset through the mail queue,
-- password change, invitations and API keys; and each failure they must
-- report.  Runs without a wrapping transaction: failed sign-ins and reused
-- refresh tokens are recorded by a worker in its own transaction, which
-- must see committed data.
\set ECHO none
\i test/fixtures/tap_setup.sql
SET dalgo.jwt_secret = '0123456789abcdef0123456789abcdef-accounts';
SET dalgo.bcrypt_cost = 4;
SELECT plan(81);

-- Sign-up.
SET ROLE dalgo_anon;
SELECT dalgo.sign_up('  Flow.Owner@Example.org ', 'correct horse battery', 'Flow Owner') AS owner \gset
SELECT dalgo.sign_up('flow.admin@example.org', 'correct horse battery') AS admin \gset
SELECT dalgo.sign_up('flow.member@example.org', 'correct horse battery') AS member \gset
SELECT dalgo.sign_up('flow.guest@example.org', 'correct horse battery') AS guest \gset
RESET ROLE;
SELECT is((SELECT email FROM dalgo.users WHERE id = :'owner'), 'Flow.Owner@Example.org', 'sign_up trims the email');
SELECT matches((SELECT password_hash FROM dalgo.users WHERE id = :'owner'), '^\$2a\$04\$', 'the password is a bcrypt hash at dalgo.bcrypt_cost');
SELECT is((SELECT count(*) FROM dalgo.organizations o JOIN dalgo.organization_members m ON m.organization_id = o.id
		   WHERE m.user_id = :'owner' AND m.role = 'owner' AND o.org_type = 'personal'), 1::bigint,
	'sign_up creates a personal organization the user owns');
SELECT o.id AS personal FROM dalgo.organizations o JOIN dalgo.organization_members m ON m.organization_id = o.id
	WHERE m.user_id = :'owner' \gset
SET ROLE dalgo_anon;
SELECT throws_ok($$SELECT dalgo.sign_up('FLOW.OWNER@example.org', 'correct horse battery')$$,
	'23505', 'an account with this email address already exists', 'the email is unique case-insensitively');
SELECT throws_ok($$SELECT dalgo.sign_up('not-an-email', 'correct horse battery')$$,
	'22023', 'invalid email address', 'a malformed email is refused');
SELECT throws_ok($$SELECT dalgo.sign_up('a b@example.org', 'correct horse battery')$$,
	'22023', 'invalid email address', 'an email with a space is refused');
SELECT throws_ok($$SELECT dalgo.sign_up('short@example.org', 'nine char')$$,
	'22023', 'password must be at least 10 characters long', 'a password under dalgo.min_password_length is refused');
SELECT throws_ok($$SELECT dalgo.sign_up('long@example.org', repeat('x', 73))$$,
	'22023', 'password must be at most 72 bytes long', 'a password over 72 bytes is refused');
RESET ROLE;

-- Sign-in.
SET ROLE dalgo_anon;
SELECT * FROM dalgo.sign_in('flow.owner@EXAMPLE.org', 'correct horse battery') \gset s1_
RESET ROLE;
SELECT is(:'s1_user_id'::uuid, :'owner'::uuid, 'sign_in matches the email case-insensitively and returns the user id');
SELECT matches(:'s1_refresh_token'::text, '^[A-Za-z0-9_-]{43}$', 'the refresh token is 32 random bytes, base64url');
SELECT is((SELECT count(*) FROM dalgo.refresh_tokens WHERE token_hash = encode(sha256(convert_to(:'s1_refresh_token', 'UTF8')), 'hex')),
	1::bigint, 'only the SHA-256 of the refresh token is stored');
SELECT is((SELECT count(*) FROM dalgo.refresh_tokens WHERE token_hash = :'s1_refresh_token'), 0::bigint, 'the raw refresh token is not stored');
SELECT ok((SELECT expires_at > now() + interval '29 days' FROM dalgo.refresh_tokens
		   WHERE token_hash = encode(sha256(convert_to(:'s1_refresh_token', 'UTF8')), 'hex')), 'the refresh token lives dalgo.refresh_token_ttl');
SELECT ok(:'s1_expires_at'::timestamptz BETWEEN now() + interval '14 minutes' AND now() + interval '15 minutes',
	'the access token expires after dalgo.access_token_ttl');
SELECT is(convert_from(decode(translate(split_part(:'s1_access_token', '.', 2), '-_', '+/') ||
		  repeat('=', (4 - length(split_part(:'s1_access_token', '.', 2)) % 4) % 4), 'base64'), 'UTF8')::jsonb ?& ARRAY['sub', 'iat', 'exp'],
	true, 'the access token carries sub, iat and exp');
SET ROLE dalgo_anon;
SELECT is(dalgo.authenticate(:'s1_access_token'), :'owner'::uuid, 'dalgo.authenticate() accepts the access token');
RESET ROLE;
BEGIN;
SELECT dalgo.authenticate(:'s1_access_token') \g /dev/null
SET LOCAL ROLE dalgo_authenticated;
SELECT is((SELECT array_agg(id) FROM dalgo.organizations), ARRAY[:'personal'::uuid], 'the signed-in user sees only their organizations');
COMMIT;

SET ROLE dalgo_anon;
SELECT throws_ok($$SELECT * FROM dalgo.sign_in('flow.member@example.org', 'wrong password!')$$,
	'28P01', 'invalid email or password', 'a wrong password fails with 28P01');
SELECT throws_ok($$SELECT * FROM dalgo.sign_in('flow.nobody@example.org', 'wrong password!')$$,
	'28P01', 'invalid email or password', 'an unknown email fails with the same SQLSTATE and message');
RESET ROLE;
SELECT is((SELECT count(*) FROM dalgo.sign_in_attempts WHERE email_hash = sha256(convert_to('flow.member@example.org', 'UTF8')) AND NOT succeeded),
	1::bigint, 'the failed attempt is recorded although its call failed');
SELECT is((SELECT count(*) FROM dalgo.sign_in_attempts WHERE email_hash = sha256(convert_to('flow.nobody@example.org', 'UTF8'))),
	1::bigint, 'attempts on unknown emails are recorded too (by hash)');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE action = 'sign_in_failed' AND resource_id = :'member'), 1::bigint,
	'a failed sign-in leaves an audit row');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE action = 'sign_in' AND user_id = :'owner'), 1::bigint,
	'a sign-in leaves an audit row');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE action = 'sign_up' AND user_id = :'owner'), 1::bigint,
	'a sign-up leaves an audit row');
UPDATE dalgo.users SET is_active = false WHERE id = :'guest';
SET ROLE dalgo_anon;
SELECT throws_ok($$SELECT * FROM dalgo.sign_in('flow.guest@example.org', 'correct horse battery')$$,
	'28P01', 'invalid email or password', 'an inactive user fails like a wrong password');
RESET ROLE;
UPDATE dalgo.users SET is_active = true, deleted_at = now() WHERE id = :'guest';
SET ROLE dalgo_anon;
SELECT throws_ok($$SELECT * FROM dalgo.sign_in('flow.guest@example.org', 'correct horse battery')$$,
	'28P01', 'invalid email or password', 'a soft-deleted user fails like a wrong password');
RESET ROLE;

-- Lockout (here after 3 failures).
SET dalgo.max_failed_sign_ins = 3;
SET ROLE dalgo_anon;
SELECT throws_ok($$SELECT * FROM dalgo.sign_in('flow.member@example.org', 'wrong password!')$$, '28P01', NULL, 'second failure');
SELECT throws_ok($$SELECT * FROM dalgo.sign_in('flow.member@example.org', 'wrong password!')$$, '28P01', NULL, 'third failure');
SELECT throws_ok($$SELECT * FROM dalgo.sign_in('flow.member@example.org', 'correct horse battery')$$,
	'28L01', 'too many failed sign-ins for this email; try again later', 'after dalgo.max_failed_sign_ins failures even the right password is refused at once');
SELECT throws_ok($$SELECT * FROM dalgo.sign_in('flow.nobody@example.org', 'x')$$, '28P01', NULL, 'unknown email, second failure');
SELECT throws_ok($$SELECT * FROM dalgo.sign_in('flow.nobody@example.org', 'x')$$, '28P01', NULL, 'unknown email, third failure');
SELECT throws_ok($$SELECT * FROM dalgo.sign_in('flow.nobody@example.org', 'x')$$, '28L01', NULL, 'unknown emails are locked out too');
RESET ROLE;
SET dalgo.sign_in_lockout = '1s';
SELECT pg_sleep(1.1) \g /dev/null
SET ROLE dalgo_anon;
SELECT is((SELECT user_id FROM dalgo.sign_in('flow.member@example.org', 'correct horse battery')), :'member'::uuid,
	'once the window has passed the right password works again');
RESET ROLE;
RESET dalgo.sign_in_lockout;
RESET dalgo.max_failed_sign_ins;

-- Issued tokens carry the audience and issuer dalgo.authenticate() requires.
SET dalgo.jwt_audience = 'dalgo-test-app';
SET dalgo.jwt_issuer = 'https://dalgo.example.org';
SET ROLE dalgo_anon;
SELECT access_token AS aud_token FROM dalgo.sign_in('flow.owner@example.org', 'correct horse battery') \gset
SELECT is(dalgo.authenticate(:'aud_token'), :'owner'::uuid, 'with dalgo.jwt_audience and dalgo.jwt_issuer set, issued tokens carry them and authenticate');
RESET ROLE;
RESET dalgo.jwt_audience;
RESET dalgo.jwt_issuer;

-- Refresh rotation.
SET ROLE dalgo_anon;
SELECT refresh_token AS r2, access_token AS a2 FROM dalgo.refresh_session(:'s1_refresh_token') \gset
SELECT refresh_token AS r3 FROM dalgo.refresh_session(:'r2') \gset
RESET ROLE;
SELECT is(dalgo.authenticate(:'a2'), :'owner'::uuid, 'a refreshed access token authenticates');
SELECT family_id AS family FROM dalgo.refresh_tokens WHERE token_hash = dalgo_internal.token_digest(:'s1_refresh_token') \gset
SELECT is((SELECT count(*) FROM dalgo.refresh_tokens WHERE family_id = :'family'), 3::bigint, 'each refresh adds a token to the family');
SELECT is((SELECT count(*) FROM dalgo.refresh_tokens WHERE family_id = :'family' AND revoked_at IS NULL), 1::bigint,
	'only the newest token of the family is live');
SET ROLE dalgo_anon;
SELECT throws_ok(format('SELECT * FROM dalgo.refresh_session(%L)', :'s1_refresh_token'),
	'28000', 'invalid refresh token', 'replaying a rotated token fails');
RESET ROLE;
SELECT is((SELECT count(*) FROM dalgo.refresh_tokens WHERE family_id = :'family' AND revoked_at IS NULL), 0::bigint,
	'replaying a rotated token revokes the whole family, although the call failed');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE action = 'refresh_token_reused' AND resource_id = :'owner'), 1::bigint,
	'the reuse leaves an audit row');
SET ROLE dalgo_anon;
SELECT throws_ok(format('SELECT * FROM dalgo.refresh_session(%L)', :'r3'),
	'28000', 'invalid refresh token', 'the newest token of a dead family fails too');
SELECT throws_ok($$SELECT * FROM dalgo.refresh_session('made-up-token')$$,
	'28000', 'invalid refresh token', 'an unknown token fails with the same error');
RESET ROLE;

-- Sign-out.
SET ROLE dalgo_anon;
SELECT refresh_token AS e1 FROM dalgo.sign_in('flow.owner@example.org', 'correct horse battery') \gset
SELECT refresh_token AS e2 FROM dalgo.sign_in('flow.owner@example.org', 'correct horse battery') \gset
SELECT dalgo.end_session(:'e1') \g /dev/null
SELECT throws_ok(format('SELECT * FROM dalgo.refresh_session(%L)', :'e1'), '28000', NULL, 'end_session revokes the session');
SELECT lives_ok(format('SELECT * FROM dalgo.refresh_session(%L)', :'e2'), 'end_session leaves the other sessions');
RESET ROLE;
BEGIN;
SET LOCAL dalgo.user_id = :'owner';
SET LOCAL ROLE dalgo_authenticated;
SELECT ok(dalgo.end_all_sessions() >= 1, 'end_all_sessions revokes the user''s tokens');
COMMIT;
SELECT is((SELECT count(*) FROM dalgo.refresh_tokens WHERE user_id = :'owner' AND revoked_at IS NULL), 0::bigint,
	'no live refresh token is left after end_all_sessions');

-- Password reset through the queue.
SET ROLE dalgo_anon;
SELECT lives_ok($$SELECT dalgo.request_password_reset('flow.nobody@example.org')$$, 'a reset for an unknown email says nothing');
SELECT lives_ok($$SELECT dalgo.request_password_reset('FLOW.MEMBER@example.org')$$, 'a reset for a user succeeds the same way');
SELECT refresh_token AS m1 FROM dalgo.sign_in('flow.member@example.org', 'correct horse battery') \gset
RESET ROLE;
SELECT is((SELECT count(*) FROM dalgo.mail_messages WHERE recipient = 'flow.nobody@example.org'), 0::bigint, 'no mail for an unknown email');
SET ROLE dalgo_service;
SELECT id AS reset_msg, payload->>'token' AS reset_token FROM dalgo.claim_messages(10) WHERE kind = 'password_reset' \gset
SELECT is((SELECT state FROM dalgo.mail_messages WHERE id = :'reset_msg'), 'sending', 'claim_messages marks the message as sending');
SELECT dalgo.complete_message(:'reset_msg') \g /dev/null
SELECT is((SELECT payload FROM dalgo.mail_messages WHERE id = :'reset_msg'), NULL::jsonb, 'a delivered message loses its payload');
SELECT throws_ok(format('SELECT dalgo.complete_message(%L)', :'reset_msg'), '55000', NULL, 'a message is completed once');
RESET ROLE;
SELECT is((SELECT count(*) FROM dalgo.password_reset_tokens WHERE token_hash = dalgo_internal.token_digest(:'reset_token')), 1::bigint,
	'the reset token is stored hashed');
SET ROLE dalgo_anon;
SELECT throws_ok(format('SELECT dalgo.reset_password(%L, %L)', :'reset_token', 'short'), '22023', NULL, 'the new password follows the rules');
SELECT lives_ok(format('SELECT dalgo.reset_password(%L, %L)', :'reset_token', 'a new password 1'), 'the reset token sets a new password');
SELECT throws_ok(format('SELECT dalgo.reset_password(%L, %L)', :'reset_token', 'a new password 2'),
	'28000', 'invalid or expired password reset token', 'a reset token works once');
SELECT throws_ok(format('SELECT * FROM dalgo.refresh_session(%L)', :'m1'), '28000', NULL, 'a reset revokes the user''s refresh tokens');
SELECT is((SELECT user_id FROM dalgo.sign_in('flow.member@example.org', 'a new password 1')), :'member'::uuid, 'the new password signs in');
SELECT dalgo.request_password_reset('flow.member@example.org') \g /dev/null
RESET ROLE;
UPDATE dalgo.password_reset_tokens SET expires_at = now() - interval '1 second' WHERE user_id = :'member' AND used_at IS NULL;
SET ROLE dalgo_service;
SELECT payload->>'token' AS expired_token FROM dalgo.claim_messages(10) WHERE kind = 'password_reset' \gset
SET ROLE dalgo_anon;
SELECT throws_ok(format('SELECT dalgo.reset_password(%L, %L)', :'expired_token', 'a new password 3'),
	'28000', 'invalid or expired password reset token', 'an expired reset token fails');
RESET ROLE;
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE action = 'password_reset' AND user_id = :'member'), 1::bigint, 'a reset leaves an audit row');

-- Password change.
BEGIN;
SET LOCAL dalgo.user_id = :'member';
SET LOCAL ROLE dalgo_authenticated;
SELECT throws_ok($$SELECT dalgo.change_password('not my password', 'another password')$$, '28P01', 'invalid password',
	'change_password checks the current password');
SELECT lives_ok($$SELECT dalgo.change_password('a new password 1', 'another password')$$, 'change_password sets the new one');
COMMIT;
SET ROLE dalgo_anon;
SELECT is((SELECT user_id FROM dalgo.sign_in('flow.member@example.org', 'another password')), :'member'::uuid, 'the changed password signs in');
RESET ROLE;

-- Invitations.
BEGIN;
SET LOCAL dalgo.user_id = :'owner';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.invite_member(:'personal', 'Flow.Admin@example.org', 'admin') AS inv1 \gset
COMMIT;
SET ROLE dalgo_service;
SELECT payload->>'token' AS inv1_token FROM dalgo.claim_messages(10) WHERE kind = 'invitation' \gset
RESET ROLE;
SELECT is((SELECT token FROM dalgo.invitations WHERE id = :'inv1'), dalgo_internal.token_digest(:'inv1_token'),
	'invitations.token holds the SHA-256 of the mailed token');
BEGIN;
SET LOCAL dalgo.user_id = :'admin';
SET LOCAL ROLE dalgo_authenticated;
SELECT is(dalgo.accept_invitation(:'inv1_token'), :'personal'::uuid, 'the invited user accepts and gets the organization id');
SELECT is(dalgo.org_role(:'personal'), 'admin'::dalgo.member_role, 'the membership has the invited role');
SELECT throws_ok(format('SELECT dalgo.accept_invitation(%L)', :'inv1_token'), '55000', 'this invitation has already been accepted',
	'an invitation is accepted once');
SELECT dalgo.invite_member(:'personal', 'flow.member@example.org', 'viewer') AS inv2 \gset
SELECT dalgo.invite_member(:'personal', 'flow.member@example.org', 'member') AS inv3 \gset
COMMIT;
SELECT ok((SELECT revoked_at IS NOT NULL FROM dalgo.invitations WHERE id = :'inv2'), 're-inviting a pending email revokes the earlier invitation');
SELECT is((SELECT count(*) FROM dalgo.mail_messages WHERE kind = 'invitation' AND state = 'pending'), 1::bigint,
	'and cancels its queued mail');
SET ROLE dalgo_service;
SELECT payload->>'token' AS inv3_token FROM dalgo.claim_messages(10) WHERE kind = 'invitation' \gset
RESET ROLE;
BEGIN;
SET LOCAL dalgo.user_id = :'member';
SET LOCAL ROLE dalgo_authenticated;
SELECT is(dalgo.accept_invitation(:'inv3_token'), :'personal'::uuid, 'the replacing invitation works');
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = :'admin';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.invite_member(:'personal', 'someone@example.org', 'viewer') AS inv4 \gset
SELECT lives_ok(format('SELECT dalgo.revoke_invitation(%L)', :'inv4'), 'an admin revokes an invitation');
COMMIT;
BEGIN;
SET LOCAL dalgo.user_id = :'owner';
SET LOCAL ROLE dalgo_authenticated;
SELECT lives_ok($$SELECT dalgo.invite_member((dalgo.current_org_ids('owner'))[1], 'next.owner@example.org', 'owner')$$, 'an owner invites an owner');
COMMIT;
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE action IN ('invitation_sent', 'invitation_accepted', 'invitation_revoked')
		   AND organization_id = :'personal'), 8::bigint, 'invitations sent, accepted and revoked leave audit rows');

-- API keys.
BEGIN;
SET LOCAL dalgo.user_id = :'admin';
SET LOCAL ROLE dalgo_authenticated;
SELECT dalgo.create_api_key(:'personal', 'nightly sync', 'member') AS key \gset
COMMIT;
SELECT matches(:'key'::text, '^dk_[A-Za-z0-9_-]{43}$', 'create_api_key returns the key');
SELECT is((SELECT key_hash FROM dalgo.api_keys WHERE name = 'nightly sync'), dalgo_internal.token_digest(:'key'), 'only the key''s hash is stored');
BEGIN;
SET LOCAL ROLE dalgo_authenticated;
SELECT is(dalgo.authenticate_api_key(:'key'), :'personal'::uuid, 'authenticate_api_key returns the key''s organization');
SELECT is(dalgo.current_user_id(), :'admin'::uuid, 'the key acts for its creator');
SELECT is(dalgo.org_role(:'personal'), 'member'::dalgo.member_role, 'at the key''s role');
SELECT is((SELECT count(*) FROM dalgo.organization_members WHERE organization_id = :'personal'), 3::bigint, 'RLS lets the key read its organization');
COMMIT;
SELECT is(dalgo.current_api_key_id(), NULL::uuid, 'the key''s identity ends with the transaction');
SELECT is((SELECT count(*) FROM dalgo.audit_logs WHERE action = 'api_key_created' AND organization_id = :'personal'), 1::bigint,
	'creating a key leaves an audit row');

-- Leave nothing behind that later tests would see.
DELETE FROM dalgo.organizations WHERE id IN (SELECT organization_id FROM dalgo.organization_members
	WHERE user_id IN (:'owner', :'admin', :'member', :'guest'));
DELETE FROM dalgo.users WHERE id IN (:'owner', :'admin', :'member', :'guest');
DELETE FROM dalgo.mail_messages;
DELETE FROM dalgo.sign_in_attempts;
SELECT * FROM finish();
