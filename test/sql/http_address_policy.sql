-- http_address_policy: the settings of google_sheets and api syncs and the
-- address check that every connection passes after DNS resolution.  With
-- dalgo.http_allow_private off, loopback, private, shared (CGNAT),
-- link-local (cloud metadata), unique-local, unspecified, multicast and
-- reserved addresses are refused, also in the IPv6 forms that embed an
-- IPv4 address, unless the host is listed in dalgo.http_allow_hosts.
-- Proven with literal addresses only: dalgo.http_address_allowed connects
-- nowhere.  The settings are superuser-only, and the fetch itself runs
-- only in a run worker.
\set ECHO none
\i test/fixtures/tap_setup.sql
\pset tuples_only false
\pset format aligned
\set ON_ERROR_STOP false
\echo '-- defaults'
SELECT name, setting, unit, context FROM pg_settings
WHERE name IN ('dalgo.http_timeout', 'dalgo.http_max_bytes', 'dalgo.http_retries', 'dalgo.http_allow_hosts',
			   'dalgo.http_allow_private', 'dalgo.google_sheets_url')
ORDER BY name;
\echo '-- the address check, defaults'
CREATE TEMP TABLE addresses (a inet, what text);
INSERT INTO addresses VALUES
	('127.0.0.1', 'loopback'), ('127.0.0.2', 'loopback'), ('10.0.0.1', 'private'), ('172.16.5.4', 'private'),
	('172.31.255.255', 'private'), ('172.32.0.1', 'public'), ('192.168.1.1', 'private'), ('100.64.0.1', 'shared (CGNAT)'),
	('100.127.255.254', 'shared (CGNAT)'), ('100.128.0.1', 'public'), ('169.254.169.254', 'link-local, cloud metadata'),
	('169.254.0.1', 'link-local'), ('0.0.0.0', 'unspecified'), ('255.255.255.255', 'broadcast'), ('224.0.0.1', 'multicast'),
	('240.0.0.1', 'reserved'), ('192.0.2.1', 'documentation'), ('8.8.8.8', 'public'), ('1.1.1.1', 'public'),
	('::', 'unspecified'), ('::1', 'loopback'), ('fc00::1', 'unique-local'), ('fd12:3456::1', 'unique-local'),
	('fe80::1', 'link-local'), ('fec0::1', 'site-local'), ('ff02::1', 'multicast'), ('2001:db8::1', 'documentation'),
	('::ffff:127.0.0.1', 'IPv4-mapped loopback'), ('::ffff:169.254.169.254', 'IPv4-mapped metadata'),
	('::ffff:10.1.2.3', 'IPv4-mapped private'), ('::ffff:8.8.8.8', 'IPv4-mapped public'),
	('::127.0.0.1', 'IPv4-compatible'), ('64:ff9b::a9fe:a9fe', 'NAT64 of metadata'), ('64:ff9b::808:808', 'NAT64 of public'),
	('2002:a9fe:a9fe::1', '6to4 of metadata'), ('2002:808:808::1', '6to4 of public'), ('2001::1', 'Teredo'),
	('2606:4700:4700::1111', 'public'), ('fd00:ec2::254', 'unique-local, cloud metadata'),
	('10.0.0.0/8', 'a network: its address counts');
SELECT a, what, dalgo.http_address_allowed(a) FROM addresses ORDER BY family(a), a;
\echo '-- listed hosts are allowed, by their text'
SET dalgo.http_allow_hosts = '127.0.0.2, [fd00::5], Metadata.Internal';
SELECT a, dalgo.http_address_allowed(a) FROM (VALUES ('127.0.0.2'::inet), ('127.0.0.1'), ('fd00::5'), ('fd00::6'), ('169.254.169.254')) v(a);
\echo '-- dalgo.http_allow_private allows every address'
SET dalgo.http_allow_private = on;
SELECT count(*) FILTER (WHERE dalgo.http_address_allowed(a)) AS allowed, count(*) AS addresses FROM addresses;
RESET dalgo.http_allow_private;
RESET dalgo.http_allow_hosts;
\echo '-- invalid values'
SET dalgo.google_sheets_url = 'ftp://sheets.example';
SET dalgo.google_sheets_url = 'file:///etc/passwd';
SET dalgo.http_timeout = 0;
SET dalgo.http_retries = 11;
SET dalgo.http_allow_hosts = 'a,,b';
\echo '-- superuser-only: an app role sets none of them and cannot run the check'
SET ROLE dalgo_authenticated;
SET dalgo.http_allow_private = on;
SET dalgo.http_allow_hosts = '169.254.169.254';
SET dalgo.google_sheets_url = 'https://attacker.example';
SET dalgo.http_max_bytes = '2GB';
SELECT dalgo.http_address_allowed('10.0.0.1');
RESET ROLE;
\echo '-- the fetch runs only in a run worker, never in a user''s backend'
SELECT dalgo_internal.fetch_http_source('00000000-0000-4000-8000-000000000001', 'x');
\echo '-- every source type syncs in the database; none needs a connector'
SELECT t, dalgo.is_connector_source(t) FROM unnest(enum_range(NULL::dalgo.source_type)) t;
SELECT dalgo_internal.synced_by_connector(c) FROM (VALUES ('{}'::jsonb), ('{"connector": true}'), ('{"connector": "true"}'), (NULL)) v(c);
\echo '-- no run, no progress'
SELECT count(*) FROM dalgo.run_progress();
