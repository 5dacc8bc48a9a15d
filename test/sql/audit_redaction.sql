-- audit_redaction: one shared redaction (src/redact.c) for the audit trail
-- and for SQL.  Keys naming secrets are matched case-insensitively, with
-- camelCase and dashes read as underscores, by name and by ending; URL
-- credentials, secret=value pairs and bearer tokens are stripped from every
-- string, in json and in text columns alike.
\set QUIET 1
\pset pager off
SET client_min_messages = warning;
BEGIN;
\set ECHO none
\i test/fixtures/two_orgs.sql
\set ECHO all
\set A '''22222222-0000-4000-8000-0000000000a0'''
\set S '''33333333-0000-4000-8000-0000000000a1'''

-- Every key of the list, and keys that only end in a secret word.
SELECT key, value FROM jsonb_each(dalgo.redact('{
	"password": "1", "Passwd": "2", "PWD": "3", "passphrase": "4", "secret": "5", "token": "6",
	"api_key": "7", "apikey": "8", "access_token": "9", "refresh_token": "10", "private_key": "11",
	"client_secret": "12", "dsn": "13", "connection_string": "14", "credentials": {"user": "u", "pass": "p"},
	"authorization": "15", "aws_secret": "16", "encryption_key": "17", "github_token": "18",
	"db_password": "19", "apiKey": "20", "X-Api-Key": "21", "clientSecret": "22", "SECRET_ACCESS_KEY": "23",
	"sheet_id": "1AbC", "monkey": "banana", "keys": ["x"], "token_count": 3, "region": "eu"}'::jsonb))
ORDER BY key;

-- Nested at any depth, arrays of objects, and the whole value of a secret key.
SELECT dalgo.redact('{"auth": {"oauth": [{"refresh_token": "r1"}, {"id": 2}], "client": {"Secret": [1, 2]}}, "n": 1}'::jsonb);

-- Credentials inside strings: URLs (with and without a password), query
-- strings, libpq conninfo, bearer tokens; strings without credentials stay.
SELECT v, dalgo.redact(v) FROM (VALUES
	('postgres://bob:hunter2@db.example.org:5432/crm'),
	('https://ghp_tok3n@github.com/org/repo.git'),
	('mysql://reader@10.0.0.1/app'),
	('https://api.example.org/v1?api_key=k-123&format=csv'),
	('host=db user=etl password=''s3 cr3t'' dbname=crm'),
	('Authorization: Bearer eyJhbGciOi.x.y'),
	('see https://example.org/a?b=c and ftp://u:p@files.example.org/x'),
	('https://example.org/path@v2'),
	('plain text, no secrets')) AS t(v);
SELECT dalgo.redact('"s3://AKIA:wJalr@bucket/key"'::jsonb) AS scalar_json,
	dalgo.redact('["https://u:p@h/", {"dsn": "x"}, "ok"]'::jsonb) AS array_json;

-- The audit trail uses the same redaction.
UPDATE dalgo.sources SET config = '{"sheet_id": "1AbC", "pwd": "p-1", "Passphrase": "p-2", "dsn": "p-3",
	"connection_string": "p-4", "warehouse_secret": "p-5", "signing_key": "p-6",
	"url": "postgres://etl:p-7@db.example.org/crm", "nested": {"apiKey": "p-8"}}'
	WHERE id = :S;
SELECT jsonb_pretty(details->'config'->'new') FROM dalgo.audit_logs
	WHERE resource_type = 'sources' AND action = 'update' AND created_at = now() ORDER BY id DESC LIMIT 1;
-- Text columns too: a URL with credentials pasted into a description.
UPDATE dalgo.sources SET description = 'copied from https://etl:p-9@db.example.org/crm' WHERE id = :S;
SELECT details->'description' FROM dalgo.audit_logs
	WHERE resource_type = 'sources' AND action = 'update' AND created_at = now() ORDER BY id DESC LIMIT 1;
-- Every json column, whatever its name.
CREATE TABLE public.jobs (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), organization_id uuid, spec jsonb);
SELECT dalgo.enable_audit('public.jobs') \g /dev/null
INSERT INTO public.jobs (organization_id, spec) VALUES (:A, '{"target": "postgres://loader:p-10@wh/db", "api_key": "p-11"}');
SELECT details->'spec' FROM dalgo.audit_logs WHERE resource_type = 'public.jobs' AND created_at = now();
-- No secret written above survives anywhere in the trail.
SELECT count(*) AS leaked FROM dalgo.audit_logs
	WHERE created_at = now() AND details::text ~ 'p-[0-9]+\M';
ROLLBACK;
