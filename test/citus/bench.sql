-- test/citus/bench.sql: the RLS benchmark on one node and on the cluster
-- (run by test/citus/bench.sh; psql variable "cluster" is on or off).
-- 200 organizations x 1,000 rows of a toolkit-secured table; one user is a
-- member of 5 of them.  Each query runs 15 times, the median is reported,
-- against a superuser running the same query with a hand-written filter.
\set ON_ERROR_STOP 1
\pset footer off
SET client_min_messages = error;

CREATE SCHEMA bench;
GRANT USAGE ON SCHEMA bench TO dalgo_authenticated;
INSERT INTO dalgo.users (id, email) VALUES ('bbbbbbbb-0000-4000-8000-000000000001', 'bench@example.org');
INSERT INTO dalgo.organizations (id, name, slug)
	SELECT ('a0000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'org ' || i, 'org-' || i
	FROM generate_series(1, 200) i;
INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	SELECT ('a0000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'bbbbbbbb-0000-4000-8000-000000000001', 'member'
	FROM generate_series(20, 180, 40) i;
INSERT INTO dalgo.users (id, email)
	SELECT ('cccccccc-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'u' || i || '@example.org'
	FROM generate_series(1, 400) i;
INSERT INTO dalgo.organization_members (organization_id, user_id, role)
	SELECT ('a0000000-0000-4000-8000-' || lpad(to_hex(1 + (i * 7 + k) % 200), 12, '0'))::uuid,
		   ('cccccccc-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'viewer'
	FROM generate_series(1, 400) i, generate_series(1, 5) k;

CREATE TABLE bench.items (
	id uuid NOT NULL DEFAULT gen_random_uuid(),
	organization_id uuid NOT NULL,
	created_at timestamptz NOT NULL,
	payload text NOT NULL,
	PRIMARY KEY (organization_id, id));
CREATE INDEX ON bench.items (organization_id, created_at);
SELECT dalgo.enable_org_rows('bench.items') IS NULL AS secured \gset
SELECT :'cluster'::boolean AS on_cluster \gset
\if :on_cluster
SELECT count(*) AS distributed FROM dalgo.distribute() \gset
\endif
INSERT INTO bench.items (organization_id, created_at, payload)
	SELECT ('a0000000-0000-4000-8000-' || lpad(to_hex(o), 12, '0'))::uuid,
		   timestamptz '2026-01-01' + (r * interval '1 minute'), md5((o * 1000 + r)::text)
	FROM generate_series(1, 200) o, generate_series(1, 1000) r;
VACUUM ANALYZE bench.items;

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
CREATE TABLE bench.results (setup text, policy text, query text, rls_ms numeric, hand_ms numeric, ord serial);

\set ids '''{a0000000-0000-4000-8000-000000000014,a0000000-0000-4000-8000-00000000003c,a0000000-0000-4000-8000-000000000064,a0000000-0000-4000-8000-00000000008c,a0000000-0000-4000-8000-0000000000b4}'''
\set count_q 'SELECT count(*) FROM bench.items'
\set point_q 'SELECT payload FROM bench.items WHERE organization_id = ''a0000000-0000-4000-8000-000000000064'' AND created_at = ''2026-01-01 05:00+00'''

-- The superuser's hand filter, then the member under RLS.
CREATE FUNCTION pg_temp.measure(setup text, policy text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO bench.results (setup, policy, query, hand_ms) VALUES
		(setup, policy, 'count', bench.median_ms($q$SELECT count(*) FROM bench.items WHERE organization_id = ANY ('{a0000000-0000-4000-8000-000000000014,a0000000-0000-4000-8000-00000000003c,a0000000-0000-4000-8000-000000000064,a0000000-0000-4000-8000-00000000008c,a0000000-0000-4000-8000-0000000000b4}'::uuid[])$q$)),
		(setup, policy, 'point', bench.median_ms($q$SELECT payload FROM bench.items WHERE organization_id = 'a0000000-0000-4000-8000-000000000064' AND created_at = '2026-01-01 05:00+00'$q$));
END $$;

\if :on_cluster
SELECT pg_temp.measure('cluster', 'call (subquery-free)') IS NULL AS measured \gset
BEGIN;
SET LOCAL dalgo.user_id = 'bbbbbbbb-0000-4000-8000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
SELECT count(*) AS member_rows FROM bench.items \gset
SELECT bench.median_ms(:'count_q') AS c_ms, bench.median_ms(:'point_q') AS p_ms \gset
COMMIT;
UPDATE bench.results SET rls_ms = CASE query WHEN 'count' THEN :c_ms ELSE :p_ms END WHERE setup = 'cluster';
\else
SELECT pg_temp.measure('one node', 'initPlan (rls.sql)') IS NULL AS measured \gset
BEGIN;
SET LOCAL dalgo.user_id = 'bbbbbbbb-0000-4000-8000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
SELECT count(*) AS member_rows FROM bench.items \gset
SELECT bench.median_ms(:'count_q') AS c_ms, bench.median_ms(:'point_q') AS p_ms \gset
COMMIT;
UPDATE bench.results SET rls_ms = CASE query WHEN 'count' THEN :c_ms ELSE :p_ms END WHERE policy = 'initPlan (rls.sql)';
-- The form distribute() writes, on one node.
DO $$
DECLARE p record;
BEGIN
	FOR p IN SELECT polname, pg_get_expr(polqual, polrelid) q FROM pg_policy WHERE polrelid = 'bench.items'::regclass AND polqual IS NOT NULL LOOP
		EXECUTE format('ALTER POLICY %I ON bench.items USING (%s)', p.polname, dalgo_internal.citus_policy_expr(p.q));
	END LOOP;
END $$;
SELECT pg_temp.measure('one node', 'call (subquery-free)') IS NULL AS measured \gset
BEGIN;
SET LOCAL dalgo.user_id = 'bbbbbbbb-0000-4000-8000-000000000001';
SET LOCAL ROLE dalgo_authenticated;
SELECT bench.median_ms(:'count_q') AS c_ms, bench.median_ms(:'point_q') AS p_ms \gset
COMMIT;
UPDATE bench.results SET rls_ms = CASE query WHEN 'count' THEN :c_ms ELSE :p_ms END WHERE policy = 'call (subquery-free)';
\endif
\echo member sees :member_rows rows (5 organizations x 1000 expected)
SELECT setup, policy, query, rls_ms, hand_ms, round(rls_ms / nullif(hand_ms, 0), 2) AS ratio
FROM bench.results ORDER BY ord;
