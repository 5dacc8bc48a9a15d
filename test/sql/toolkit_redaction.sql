-- toolkit_redaction: dalgo.redact_jsonb() redacts chosen keys at any depth
-- by the audit trail's rules (the same result as dalgo.redact() for the
-- default keys), masks e-mail addresses and phone numbers when asked, and
-- dalgo.enable_redaction() applies it before every insert and update.
\set ECHO none
\i test/fixtures/tap_setup.sql
BEGIN;
SELECT plan(15);
SELECT is(dalgo.redact_jsonb('{"user": {"apiKey": "k1", "name": "x", "list": [{"password": "p"}, "postgres://u:pw@h/db"]}}'),
	'{"user": {"list": [{"password": "[redacted]"}, "postgres://***@h/db"], "name": "x", "apiKey": "[redacted]"}}',
	'default keys: secret names at any depth, credentials inside strings');
SELECT is(dalgo.redact_jsonb(d), dalgo.redact(d), 'the default keys are the audit trail''s: ' || d::text)
FROM (VALUES ('{"token": {"a": 1}, "x": "Bearer abc.def"}'::jsonb), ('[{"client_secret": "s"}, "password=hunter2 host=h"]'),
			 ('"plain"'), ('{"dsn": ["a", "b"], "n": 1}')) v(d);
SELECT is(dalgo.redact_jsonb('{"ip": "1.2.3.4", "IP": "5.6.7.8", "nested": {"Ip": "x"}, "password": "kept"}', '{ip}'),
	'{"IP": "[redacted]", "ip": "[redacted]", "nested": {"Ip": "[redacted]"}, "password": "kept"}',
	'given keys replace the default ones, case-insensitively');
SELECT is(dalgo.redact_jsonb('{"note": "mail ana@example.org or +91 98765 43210, (020) 7946-0958; at 2024-01-15 10:30:00, id 12345678901234567890"}', '{}', true),
	'{"note": "mail *** or ***, ***; at 2024-01-15 10:30:00, id 12345678901234567890"}',
	'pii: e-mail addresses and phone numbers are masked; dates, times and long ids are not');
SELECT is(dalgo.redact_jsonb('{"note": "ana@example.org"}'), '{"note": "ana@example.org"}', 'pii is off by default');
SELECT is(dalgo.redact_jsonb(NULL), NULL, 'NULL stays NULL');

CREATE SCHEMA app;
CREATE TABLE app.telemetry (id serial PRIMARY KEY, meta jsonb, message text, n int);
SELECT dalgo.enable_redaction('app.telemetry', 'meta', pii => true);
SELECT dalgo.enable_redaction('app.telemetry', 'meta', pii => true);
SELECT dalgo.enable_redaction('app.telemetry', 'message');
INSERT INTO app.telemetry (meta, message) VALUES ('{"email": "x", "body": "from bo@example.org", "secret": 1}', 'connect password=hunter2 ok');
SELECT is((SELECT meta FROM app.telemetry), '{"body": "from ***", "email": "x", "secret": "[redacted]"}',
	'enable_redaction: a jsonb column is redacted on insert');
SELECT is((SELECT message FROM app.telemetry), 'connect password=*** ok', 'enable_redaction: a text column loses its credentials');
UPDATE app.telemetry SET meta = meta || '{"refresh_token": "r"}';
SELECT is((SELECT meta ->> 'refresh_token' FROM app.telemetry), '[redacted]', 'enable_redaction: ...and on update');
SELECT is((SELECT count(*) FROM pg_trigger WHERE tgrelid = 'app.telemetry'::regclass AND tgname LIKE 'dalgo_redact_%'), 2::bigint,
	'one trigger per column, however often it is enabled');
SELECT throws_ok($$SELECT dalgo.enable_redaction('app.telemetry', 'n')$$, '42804', NULL, 'only jsonb and text columns');
SELECT dalgo.disable_redaction('app.telemetry', 'message');
INSERT INTO app.telemetry (message) VALUES ('password=kept');
SELECT is((SELECT count(*) FROM app.telemetry WHERE message = 'password=kept'), 1::bigint, 'disable_redaction removes the trigger');
SELECT * FROM finish();
ROLLBACK;
