-- Toolkit benchmark: what the generated policies cost.  For each pattern, a
-- 1,000,000-row table secured by one toolkit call; count(*) as a user
-- against a superuser's hand-written filter with the same meaning, 21
-- interleaved runs each, medians (target ratio <= 1.1).  Then retention:
-- 1,000,000 expired rows deleted by dalgo.apply_retention(), one batch per
-- transaction (as CALL dalgo.run_retention() does): total time and the
-- longest transaction, which bounds how long any lock is held.
\pset footer off
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dalgo;
CREATE SCHEMA bench;
\set me '''bbbbbbbb-0000-4000-8000-000000000001'''

INSERT INTO dalgo.users (id, email) VALUES (:me, 'bench@example.org');
INSERT INTO dalgo.users (id, email)
	SELECT ('cccccccc-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'u' || i || '@example.org'
	FROM generate_series(1, 1000) i;
INSERT INTO dalgo.organizations (id, name, slug)
	SELECT ('a0000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'org ' || i, 'org-' || i
	FROM generate_series(1, 1000) i;
INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	SELECT ('a0000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, :me, 'member'
	FROM generate_series(100, 900, 200) i;

-- enable_org_rows: 1,000 organizations x 1,000 rows; the user is in 5.
CREATE TABLE bench.org_items (id bigserial PRIMARY KEY, organization_id uuid NOT NULL, payload text NOT NULL);
INSERT INTO bench.org_items (organization_id, payload)
	SELECT ('a0000000-0000-4000-8000-' || lpad(to_hex(o), 12, '0'))::uuid, md5((o * 1000 + r)::text)
	FROM generate_series(1, 1000) o, generate_series(1, 1000) r;
SELECT dalgo.enable_org_rows('bench.org_items') \g /dev/null
-- enable_own_rows: 1,001 owners x ~1,000 rows.
CREATE TABLE bench.own_items (id bigserial PRIMARY KEY, user_id uuid NOT NULL, payload text NOT NULL);
INSERT INTO bench.own_items (user_id, payload)
	SELECT CASE WHEN u = 0 THEN :me::uuid ELSE ('cccccccc-0000-4000-8000-' || lpad(to_hex(u), 12, '0'))::uuid END, md5((u * 1000 + r)::text)
	FROM generate_series(0, 999) u, generate_series(1, 1000) r;
SELECT dalgo.enable_own_rows('bench.own_items') \g /dev/null
-- enable_public_read: 1,000,000 rows, 0.5% enabled, indexed condition column.
CREATE TABLE bench.pub_items (id bigserial PRIMARY KEY, enabled boolean NOT NULL, payload text NOT NULL);
INSERT INTO bench.pub_items (enabled, payload) SELECT i % 200 = 0, md5(i::text) FROM generate_series(1, 1000000) i;
CREATE INDEX ON bench.pub_items (enabled);
SELECT dalgo.enable_public_read('bench.pub_items', 'enabled') \g /dev/null
-- enable_shared_rows: 1,000,000 documents of 1,001 owners; the user owns
-- 1,000 and has 4,000 shared with them (view and edit).
CREATE TABLE bench.docs (id bigserial PRIMARY KEY, user_id uuid NOT NULL, title text NOT NULL);
INSERT INTO bench.docs (user_id, title)
	SELECT CASE WHEN u = 0 THEN :me::uuid ELSE ('cccccccc-0000-4000-8000-' || lpad(to_hex(u), 12, '0'))::uuid END, md5((u * 1000 + r)::text)
	FROM generate_series(0, 999) u, generate_series(1, 1000) r;
CREATE TYPE bench.perm AS ENUM ('view', 'edit');
CREATE TABLE bench.doc_shares (doc_id bigint REFERENCES bench.docs (id), user_id uuid NOT NULL, permission bench.perm NOT NULL,
	shared_by uuid, PRIMARY KEY (doc_id, user_id));
INSERT INTO bench.doc_shares SELECT d.id, :me, CASE WHEN d.id % 2 = 0 THEN 'view' ELSE 'edit' END::bench.perm, d.user_id
	FROM bench.docs d WHERE d.id % 250 = 7 LIMIT 4000;
INSERT INTO bench.doc_shares SELECT d.id, ('cccccccc-0000-4000-8000-' || lpad(to_hex(1 + d.id % 999), 12, '0'))::uuid, 'view', d.user_id
	FROM bench.docs d WHERE d.id % 10 = 3;
SELECT dalgo.enable_shared_rows('bench.docs', 'bench.doc_shares', public_column => NULL) \g /dev/null
VACUUM ANALYZE;

CREATE FUNCTION bench.interleaved(q_super text, q_user text, runs int)
	RETURNS TABLE (superuser_ms numeric, user_ms numeric, super_rows bigint, user_rows bigint) LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz;
	s numeric[] := '{}';
	m numeric[] := '{}';
BEGIN
	EXECUTE q_super INTO super_rows;
	EXECUTE 'SET LOCAL ROLE dalgo_authenticated';
	EXECUTE q_user INTO user_rows;
	EXECUTE 'RESET ROLE';
	FOR i IN 1..runs LOOP
		t0 := clock_timestamp();
		EXECUTE q_super;
		s := s || (extract(epoch FROM clock_timestamp() - t0) * 1000)::numeric;
		EXECUTE 'SET LOCAL ROLE dalgo_authenticated';
		t0 := clock_timestamp();
		EXECUTE q_user;
		m := m || (extract(epoch FROM clock_timestamp() - t0) * 1000)::numeric;
		EXECUTE 'RESET ROLE';
	END LOOP;
	superuser_ms := (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(s) x)::numeric(12, 3);
	user_ms := (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(m) x)::numeric(12, 3);
	RETURN NEXT;
END $$;

CREATE TABLE bench.results (pattern text, superuser_ms numeric, user_ms numeric, ratio numeric, super_rows bigint, user_rows bigint, ord serial);
SELECT 'SELECT count(*) FROM bench.org_items WHERE organization_id = ANY (''' || array_agg(organization_id)::text || '''::uuid[])' AS q_org
FROM dalgo.organization_members WHERE user_id = :me \gset
BEGIN;
-- The identity holds for the transaction; set in a statement of its own.
SET LOCAL dalgo.user_id = 'bbbbbbbb-0000-4000-8000-000000000001';
INSERT INTO bench.results (pattern, superuser_ms, user_ms, ratio, super_rows, user_rows)
SELECT 'enable_org_rows', superuser_ms, user_ms, round(user_ms / superuser_ms, 2), super_rows, user_rows
FROM bench.interleaved(:'q_org', 'SELECT count(*) FROM bench.org_items', 21);
INSERT INTO bench.results (pattern, superuser_ms, user_ms, ratio, super_rows, user_rows)
SELECT 'enable_own_rows', superuser_ms, user_ms, round(user_ms / superuser_ms, 2), super_rows, user_rows
FROM bench.interleaved('SELECT count(*) FROM bench.own_items WHERE user_id = ''bbbbbbbb-0000-4000-8000-000000000001''',
	'SELECT count(*) FROM bench.own_items', 21);
INSERT INTO bench.results (pattern, superuser_ms, user_ms, ratio, super_rows, user_rows)
SELECT 'enable_public_read(''enabled'')', superuser_ms, user_ms, round(user_ms / superuser_ms, 2), super_rows, user_rows
FROM bench.interleaved('SELECT count(*) FROM bench.pub_items WHERE enabled', 'SELECT count(*) FROM bench.pub_items', 21);
INSERT INTO bench.results (pattern, superuser_ms, user_ms, ratio, super_rows, user_rows)
SELECT 'enable_shared_rows', superuser_ms, user_ms, round(user_ms / superuser_ms, 2), super_rows, user_rows
FROM bench.interleaved('SELECT count(*) FROM bench.docs WHERE user_id = ''bbbbbbbb-0000-4000-8000-000000000001'' OR id = ANY (ARRAY('
	'SELECT doc_id FROM bench.doc_shares WHERE user_id = ''bbbbbbbb-0000-4000-8000-000000000001'' AND permission IN (''view'', ''edit'')))',
	'SELECT count(*) FROM bench.docs', 21);
COMMIT;
\echo
\echo 'count(*) over 1,000,000 rows, median of 21 interleaved runs (target ratio <= 1.1)'
SELECT pattern, superuser_ms, user_ms, ratio, super_rows, user_rows FROM bench.results ORDER BY ord;

-- Retention: 1,000,000 expired rows (and 100,000 kept) in a table with two indexes.
CREATE TABLE bench.telemetry (id bigserial PRIMARY KEY, user_id uuid NOT NULL, at timestamptz NOT NULL, payload jsonb);
INSERT INTO bench.telemetry (user_id, at, payload)
	SELECT :me, now() - interval '100 days' + (i * interval '1 second'), jsonb_build_object('i', i)
	FROM generate_series(1, 1000000) i;
INSERT INTO bench.telemetry (user_id, at, payload)
	SELECT :me, now() - (i * interval '1 second'), jsonb_build_object('i', i) FROM generate_series(1, 100000) i;
SELECT dalgo.enable_own_rows('bench.telemetry') \g /dev/null
SELECT dalgo.set_retention('bench.telemetry', 'at', 30) \g /dev/null
VACUUM ANALYZE bench.telemetry;
UPDATE dalgo.retention_policies SET enabled = (table_name = 'bench.telemetry'::regclass);
CREATE TABLE bench.retention_runs (batch int, ms numeric, rows bigint);
-- One batch per transaction, as CALL dalgo.run_retention() does, timed.
DO $$
DECLARE
	t0 timestamptz;
	n bigint;
	i int := 0;
BEGIN
	LOOP
		i := i + 1;
		t0 := clock_timestamp();
		SELECT sum(rows_affected) INTO n FROM dalgo.apply_retention(10000, 1);
		INSERT INTO bench.retention_runs VALUES (i, extract(epoch FROM clock_timestamp() - t0) * 1000, n);
		COMMIT;
		EXIT WHEN coalesce(n, 0) = 0;
	END LOOP;
END $$;
\echo
\echo 'apply_retention: 1,000,000 expired rows of 1,100,000, batches of 10,000, one transaction each'
SELECT sum(rows) AS rows_deleted, count(*) FILTER (WHERE rows > 0) AS batches, round(sum(ms) / 1000, 2) AS total_s,
	   round(max(ms), 1) AS longest_transaction_ms, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) AS median_batch_ms
FROM bench.retention_runs;
SELECT count(*) AS rows_left FROM bench.telemetry;
