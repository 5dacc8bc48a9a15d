-- failure_alerts: a failed scheduled run tells the organization's admins,
-- through the accounts' mail queue (NOTIFY dalgo_mail): one message per
-- schedule per failure streak (after dalgo.alert_after_failures failures in
-- a row, default 1), one "back to normal" when it recovers; skipped slots
-- do not count; the error is redacted; members, viewers and other
-- organizations get nothing.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
\i test/fixtures/two_orgs.sql
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set S '''88888888-0000-4000-8000-0000000000a2'''
\set as_owner_a 'RESET ROLE; SET LOCAL dalgo.user_id = ''11111111-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'
\set as_super 'RESET ROLE; SET LOCAL dalgo.user_id = '''';'
SELECT plan(19);

INSERT INTO dalgo.users (id, email) VALUES ('11111111-0000-4000-8000-000000000005', 'admin.a@example.org'),
	('11111111-0000-4000-8000-000000000006', 'gone.a@example.org');
INSERT INTO dalgo.organization_members (organization_id, user_id, role) VALUES
	(:A, '11111111-0000-4000-8000-000000000005', 'admin'), (:A, '11111111-0000-4000-8000-000000000006', 'admin');
UPDATE dalgo.users SET is_active = false WHERE id = '11111111-0000-4000-8000-000000000006';
-- A source whose relation does not exist yet: its syncs fail, naming it.
GRANT USAGE ON SCHEMA public TO dalgo_wh_222222220000400080000000000000a0;
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000a2', :A, 'CRM', 'postgres', '{"relation": "public.\"password=hunter2\""}', 'crm');
INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency) VALUES (:S, :A, '33333333-0000-4000-8000-0000000000a2', 'daily');
CREATE FUNCTION pg_temp.run() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	rid uuid := dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a2');
BEGIN
	RETURN (SELECT status::text FROM dalgo.sync_runs WHERE id = rid);
END $$;
CREATE VIEW pg_temp.alerts AS SELECT kind, recipient, payload FROM dalgo.mail_messages WHERE kind LIKE 'run\_%' ORDER BY created_at, recipient;
CREATE FUNCTION pg_temp.fix(ok boolean) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	IF ok THEN
		CREATE TABLE public."password=hunter2" (id int);
		GRANT SELECT ON public."password=hunter2" TO dalgo_wh_222222220000400080000000000000a0;
	ELSE
		DROP TABLE public."password=hunter2";
	END IF;
END $$;

LISTEN dalgo_mail;
:as_owner_a
SELECT is(pg_temp.run(), 'failed', 'the scheduled sync fails');
:as_super
SELECT is((SELECT array_agg(kind || ' ' || recipient) FROM pg_temp.alerts),
	ARRAY['run_failed admin.a@example.org', 'run_failed owner.a@example.org'],
	'the first failure alerts each active admin and owner, not the member');
SELECT is((SELECT payload->>'subject' FROM pg_temp.alerts LIMIT 1), '[Org A] sync of "CRM" failed', 'with a subject naming the source');
SELECT is((SELECT (payload->>'schedule_id', payload->>'target_type', payload->>'failures')::text FROM pg_temp.alerts LIMIT 1),
	'(88888888-0000-4000-8000-0000000000a2,source,1)', 'and the schedule, its target and the streak');
SELECT unalike((SELECT string_agg(payload::text, ' ') FROM pg_temp.alerts), '%hunter2%', 'the error in the alert is redacted');
SELECT is((SELECT payload->>'error' FROM pg_temp.alerts LIMIT 1), 'source relation public."password=***" does not exist',
	'but is there');
SELECT is((SELECT DISTINCT error_message FROM dalgo.sync_runs WHERE status = 'failed'), 'source relation public."password=***" does not exist',
	'the run''s own error, which every member reads, is stored redacted too');
:as_owner_a
SELECT is(pg_temp.run() || pg_temp.run(), 'failedfailed', 'two more failures');
:as_super
SELECT is((SELECT count(*) FROM pg_temp.alerts), 2::bigint, 'one message per streak: nothing more');
-- A skipped slot (the previous run still going) is no failure and no success.
INSERT INTO dalgo.sync_runs (organization_id, source_id, status, details)
	VALUES (:A, '33333333-0000-4000-8000-0000000000a2', 'running', '{"schedule_id": "88888888-0000-4000-8000-0000000000a2"}');
UPDATE dalgo.sync_runs SET status = 'failed', completed_at = now(), details = details || '{"skipped": true}'
	WHERE status = 'running';
SELECT is((SELECT count(*) FROM pg_temp.alerts), 2::bigint, 'a skipped slot tells no one');

SELECT pg_temp.fix(true);
:as_owner_a
SELECT is(pg_temp.run(), 'success', 'the source is fixed and syncs');
:as_super
SELECT is((SELECT array_agg(kind || ' ' || recipient) FROM pg_temp.alerts WHERE kind = 'run_recovered'),
	ARRAY['run_recovered admin.a@example.org', 'run_recovered owner.a@example.org'], 'one "back to normal" message to each');
SELECT is((SELECT payload->>'subject' FROM pg_temp.alerts WHERE kind = 'run_recovered' LIMIT 1),
	'[Org A] sync of "CRM" is back to normal', 'saying so');
:as_owner_a
SELECT is(pg_temp.run(), 'success', 'another success');
:as_super
SELECT is((SELECT count(*) FROM pg_temp.alerts), 4::bigint, 'tells no one');

-- dalgo.alert_after_failures = 3: two failures and a success say nothing; three failures say it once.
SET LOCAL dalgo.alert_after_failures = 3;
SELECT pg_temp.fix(false);
:as_owner_a
SELECT pg_temp.run() || pg_temp.run() AS two_failures \gset
:as_super
SELECT pg_temp.fix(true);
:as_owner_a
SELECT pg_temp.run() AS success \gset
:as_super
SELECT is((SELECT count(*) FROM pg_temp.alerts), 4::bigint, 'with alert_after_failures = 3, a streak of two tells no one, nor its end');
SELECT pg_temp.fix(false);
:as_owner_a
SELECT pg_temp.run() || pg_temp.run() || pg_temp.run() || pg_temp.run() AS four_failures \gset
:as_super
SELECT is((SELECT array_agg(kind || ' ' || (payload->>'failures')) FROM pg_temp.alerts WHERE kind = 'run_failed' AND payload->>'failures' = '3'),
	ARRAY['run_failed 3', 'run_failed 3'], 'the third failure in a row alerts once (to each admin), the fourth does not');
SELECT is((SELECT count(*) FROM dalgo.mail_messages m WHERE m.recipient IN ('owner.b@example.org', 'member.a@example.org', 'gone.a@example.org')),
	0::bigint, 'no message for other organizations, members or deactivated admins');

:as_super
-- A member's line break in a name never reaches a subject (a mailer could
-- write it into a header).
SET LOCAL dalgo.alert_after_failures = 1;
INSERT INTO dalgo.sources (id, organization_id, name, source_type, config, warehouse_table_name) VALUES
	('33333333-0000-4000-8000-0000000000a9', :A, E'Evil\r\nBcc: attacker@evil.example', 'postgres', '{"relation": "public.not_there"}', 'evil');
INSERT INTO dalgo.schedules (id, organization_id, source_id, frequency)
	VALUES ('88888888-0000-4000-8000-0000000000a9', :A, '33333333-0000-4000-8000-0000000000a9', 'daily');
:as_owner_a
SELECT dalgo.run_schedule_now('88888888-0000-4000-8000-0000000000a9') IS NOT NULL AS ran \g /dev/null
:as_super
SELECT is((SELECT count(*) FROM pg_temp.alerts WHERE payload->>'schedule_id' = '88888888-0000-4000-8000-0000000000a9'
		   AND payload->>'subject' !~ '[[:cntrl:]]' AND payload->>'subject' LIKE '%Evil  Bcc%'), 2::bigint,
	'control characters in a name become spaces in the subject');
SELECT * FROM finish();
ROLLBACK;
