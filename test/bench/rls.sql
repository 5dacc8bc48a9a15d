-- RLS benchmark: what tenant isolation costs a member's queries.
-- 1,000 organizations x 1,000 rows; one user in 5 of them.  Each query runs
-- 15 times (the slow per-row and Basejump policies 10 and 3 times); the
-- median is reported.  "ratio" compares with a superuser
-- running the same query with WHERE organization_id = ANY(<the 5 ids>).
\pset footer off
SET client_min_messages = warning;
CREATE EXTENSION dalgo;
CREATE SCHEMA bench;
GRANT USAGE ON SCHEMA bench TO dalgo_authenticated;

INSERT INTO dalgo.users (id, email) VALUES ('bbbbbbbb-0000-4000-8000-000000000001', 'bench@example.org');
INSERT INTO dalgo.organizations (id, name, slug)
	SELECT ('a0000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'org ' || i, 'org-' || i
	FROM generate_series(1, 1000) i;
INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	SELECT ('a0000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'bbbbbbbb-0000-4000-8000-000000000001', 'member'
	FROM generate_series(100, 900, 200) i;
-- Other users' memberships, so the membership table is realistic (5,000 rows).
INSERT INTO dalgo.users (id, email)
	SELECT ('cccccccc-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'u' || i || '@example.org'
	FROM generate_series(1, 1000) i;
INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	SELECT ('a0000000-0000-4000-8000-' || lpad(to_hex(1 + (i * 7 + k) % 1000), 12, '0'))::uuid,
		   ('cccccccc-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'viewer'
	FROM generate_series(1, 1000) i, generate_series(1, 5) k;

CREATE TABLE bench.items (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	organization_id uuid NOT NULL,
	created_at timestamptz NOT NULL,
	payload text NOT NULL,
	deleted_at timestamptz);
-- 1% of the rows are soft-deleted, as dalgo's sources, transformations and outputs can be.
INSERT INTO bench.items (organization_id, created_at, payload, deleted_at)
	SELECT ('a0000000-0000-4000-8000-' || lpad(to_hex(o), 12, '0'))::uuid,
		   timestamptz '2026-01-01' + (r * interval '1 minute'), md5((o * 1000 + r)::text),
		   CASE WHEN r % 100 = 0 THEN timestamptz '2026-06-01' END
	FROM generate_series(1, 1000) o, generate_series(1, 1000) r;
CREATE INDEX ON bench.items (organization_id, created_at);
VACUUM ANALYZE bench.items;
GRANT SELECT ON bench.items TO dalgo_authenticated;
ALTER TABLE bench.items ENABLE ROW LEVEL SECURITY;

-- The Basejump pattern: IN (SELECT ...) from a SECURITY DEFINER SQL function.
CREATE FUNCTION bench.basejump_org_ids() RETURNS SETOF uuid LANGUAGE sql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	AS $$ SELECT m.organization_id FROM dalgo.organization_members m
		  WHERE m.user_id = dalgo.current_user_id() AND m.deleted_at IS NULL $$;
GRANT EXECUTE ON FUNCTION bench.basejump_org_ids() TO dalgo_authenticated;

-- A plain SQL membership check, the usual hand-written is_org_member.
CREATE FUNCTION bench.sql_is_org_member(org uuid) RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	AS $$ SELECT EXISTS (SELECT FROM dalgo.organization_members m JOIN dalgo.organizations o ON o.id = m.organization_id
		  JOIN dalgo.users u ON u.id = m.user_id
		  WHERE m.organization_id = org AND m.user_id = dalgo.current_user_id()
		    AND m.deleted_at IS NULL AND o.deleted_at IS NULL AND u.deleted_at IS NULL AND u.is_active) $$;
GRANT EXECUTE ON FUNCTION bench.sql_is_org_member(uuid) TO dalgo_authenticated;

-- median_ms(query, runs): run a query repeatedly, return the median wall time in ms.
CREATE FUNCTION bench.median_ms(q text, runs int DEFAULT 15) RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz;
	times numeric[] := '{}';
BEGIN
	EXECUTE q;	-- warm up
	FOR i IN 1..runs LOOP
		t0 := clock_timestamp();
		EXECUTE q;
		times := times || (extract(epoch FROM clock_timestamp() - t0) * 1000)::numeric;
	END LOOP;
	RETURN (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(times) x)::numeric(12, 3);
END $$;
GRANT EXECUTE ON FUNCTION bench.median_ms(text, int) TO dalgo_authenticated;

CREATE TABLE bench.results (policy text, query text, median_ms numeric, ord serial);
GRANT INSERT ON bench.results TO dalgo_authenticated;
GRANT USAGE ON SEQUENCE bench.results_ord_seq TO dalgo_authenticated;

-- run_queries(label, filter): the three queries, with an optional WHERE filter.
CREATE FUNCTION bench.run_queries(label text, filter text, runs int DEFAULT 15) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	w text := CASE WHEN filter = '' THEN '' ELSE ' WHERE ' || filter END;
	a text := CASE WHEN filter = '' THEN ' WHERE ' ELSE ' AND ' END;
BEGIN
	INSERT INTO bench.results (policy, query, median_ms) VALUES
		(label, 'count(*)', bench.median_ms('SELECT count(*) FROM bench.items' || w, runs)),
		(label, 'point lookup by id', bench.median_ms(
			'SELECT * FROM bench.items' || w || a || 'id = ''' ||
			(SELECT id FROM bench.items WHERE organization_id = 'a0000000-0000-4000-8000-000000000064' LIMIT 1) || '''', runs)),
		(label, '50-row page by created_at', bench.median_ms(
			'SELECT * FROM bench.items' || w || ' ORDER BY created_at DESC LIMIT 50', runs));
END $$;
GRANT EXECUTE ON FUNCTION bench.run_queries(text, text, int) TO dalgo_authenticated;

-- Superuser anchor: the same five ids written into the query.
SELECT bench.run_queries('superuser, ANY(5 ids)',
	'organization_id = ANY (''' || array_agg(organization_id)::text || '''::uuid[])')
FROM dalgo.organization_members WHERE user_id = 'bbbbbbbb-0000-4000-8000-000000000001' \g /dev/null

-- run_policy(label, using): install one SELECT policy and measure it as the member.
-- The identity counts only in the transaction that sets it: one transaction per measurement.
\set run_as_member 'BEGIN; SET LOCAL dalgo.user_id = ''bbbbbbbb-0000-4000-8000-000000000001''; SET LOCAL ROLE dalgo_authenticated;'

CREATE POLICY p ON bench.items FOR SELECT TO dalgo_authenticated
	USING (organization_id = ANY ((SELECT dalgo.current_org_ids('viewer'))::uuid[]));
:run_as_member
SELECT count(*) AS member_rows FROM bench.items \gset
SELECT bench.run_queries('dalgo: = ANY((SELECT current_org_ids()))', '') \g /dev/null
COMMIT;

-- The main figure, interleaved: superuser and member take turns, 31 times each.
CREATE FUNCTION bench.interleaved(q_super text, q_member text, runs int)
	RETURNS TABLE (superuser_ms numeric, member_ms numeric) LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz;
	s numeric[] := '{}';
	m numeric[] := '{}';
BEGIN
	PERFORM set_config('dalgo.user_id', 'bbbbbbbb-0000-4000-8000-000000000001', true);
	EXECUTE q_super;
	FOR i IN 1..runs LOOP
		t0 := clock_timestamp();
		EXECUTE q_super;
		s := s || (extract(epoch FROM clock_timestamp() - t0) * 1000)::numeric;
		EXECUTE 'SET LOCAL ROLE dalgo_authenticated';
		t0 := clock_timestamp();
		EXECUTE q_member;
		m := m || (extract(epoch FROM clock_timestamp() - t0) * 1000)::numeric;
		EXECUTE 'RESET ROLE';
	END LOOP;
	RETURN QUERY SELECT (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(s) x)::numeric(12, 3),
						(SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(m) x)::numeric(12, 3);
END $$;
SELECT 'SELECT count(*) FROM bench.items WHERE organization_id = ANY (''' || array_agg(organization_id)::text || '''::uuid[])' AS q_super
FROM dalgo.organization_members WHERE user_id = 'bbbbbbbb-0000-4000-8000-000000000001' \gset
BEGIN;
SELECT superuser_ms, member_ms, round(member_ms / superuser_ms, 2) AS ratio
FROM bench.interleaved(:'q_super', 'SELECT count(*) FROM bench.items', 31) \gset main_
COMMIT;
DROP POLICY p ON bench.items;

-- The same with soft-deleted rows hidden in the policy (0.2.0's form for
-- sources, transformations and outputs), against a superuser who filters them too.
CREATE POLICY p ON bench.items FOR SELECT TO dalgo_authenticated
	USING (deleted_at IS NULL AND organization_id = ANY ((SELECT dalgo.current_org_ids('viewer'))::uuid[]));
:run_as_member
SELECT count(*) AS live_member_rows FROM bench.items \gset
SELECT bench.run_queries('dalgo: deleted_at IS NULL AND = ANY((SELECT current_org_ids()))', '') \g /dev/null
COMMIT;
BEGIN;
SELECT superuser_ms, member_ms, round(member_ms / superuser_ms, 2) AS ratio
FROM bench.interleaved(:'q_super' || ' AND deleted_at IS NULL', 'SELECT count(*) FROM bench.items', 31) \gset live_
COMMIT;
DROP POLICY p ON bench.items;

CREATE POLICY p ON bench.items FOR SELECT TO dalgo_authenticated
	USING (organization_id IN (SELECT bench.basejump_org_ids()));
:run_as_member
SELECT bench.run_queries('Basejump: IN (SELECT sql function)', '', 10) \g /dev/null
COMMIT;
DROP POLICY p ON bench.items;

CREATE POLICY p ON bench.items FOR SELECT TO dalgo_authenticated
	USING (dalgo.is_org_member(organization_id));
:run_as_member
SELECT bench.run_queries('per-row dalgo.is_org_member(organization_id)', '', 10) \g /dev/null
COMMIT;
DROP POLICY p ON bench.items;

CREATE POLICY p ON bench.items FOR SELECT TO dalgo_authenticated
	USING (bench.sql_is_org_member(organization_id));
:run_as_member
SELECT bench.run_queries('per-row SQL is_org_member(organization_id)', '', 3) \g /dev/null
COMMIT;
DROP POLICY p ON bench.items;

\echo
\echo 'rows visible to the member:' :member_rows
\echo 'main figure, count(*) median of 31 interleaved runs: superuser' :main_superuser_ms 'ms, member' :main_member_ms 'ms, ratio' :main_ratio '(target <= 1.2)'
\echo 'live rows visible to the member:' :live_member_rows
\echo 'with deleted_at IS NULL in the policy, count(*) median of 31 interleaved runs: superuser' :live_superuser_ms 'ms, member' :live_member_ms 'ms, ratio' :live_ratio '(target <= 1.2)'
\echo
SELECT r.policy, r.query, r.median_ms,
	   round(r.median_ms / NULLIF(s.median_ms, 0), 2) AS ratio_to_superuser
FROM bench.results r JOIN bench.results s ON s.query = r.query AND s.policy = 'superuser, ANY(5 ids)'
ORDER BY r.query, r.ord;

-- Per-call cost of the membership functions over 1,000,000 calls.
BEGIN;
SET LOCAL dalgo.user_id = 'bbbbbbbb-0000-4000-8000-000000000001';
CREATE TEMP TABLE orgs AS SELECT ('a0000000-0000-4000-8000-' || lpad(to_hex(1 + i % 1000), 12, '0'))::uuid AS org
	FROM generate_series(1, 1000000) i;
SELECT bench.median_ms('SELECT count(*) FROM orgs WHERE org IS NOT NULL', 5) AS base \gset
SELECT bench.median_ms('SELECT count(*) FROM orgs WHERE dalgo.is_org_member(org)', 5) AS c \gset
SELECT bench.median_ms('SELECT count(*) FROM orgs WHERE bench.sql_is_org_member(org)', 3) AS s \gset
SELECT 'dalgo.is_org_member (C, cached)' AS function, round((:c - :base) * 1000 / 1000000, 3) AS us_per_call
UNION ALL
SELECT 'SQL EXISTS over the tables', round((:s - :base) * 1000 / 1000000, 3);
COMMIT;
