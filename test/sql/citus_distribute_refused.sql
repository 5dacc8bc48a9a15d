-- citus_distribute_refused: without Citus, dalgo.distribute() refuses with a
-- clear error and changes nothing; the single-node policies keep their
-- index-friendly initPlan form; app roles cannot call distribute().
\set VERBOSITY default
SELECT dalgo.distribute();
SELECT count(*) AS wrapped_policies FROM pg_policies
WHERE schemaname = 'dalgo' AND qual LIKE '%SELECT dalgo.current_org_ids%';
SET ROLE dalgo_service;
SELECT dalgo.distribute();
RESET ROLE;
-- The cluster form of a policy, as distribute() would write it.
SELECT dalgo_internal.citus_policy_expr(pg_get_expr(polqual, polrelid))
FROM pg_policy WHERE polname = 'tenant_select' AND polrelid = 'dalgo.sources'::regclass;
-- shares_organization() without identity: false.
SELECT dalgo.shares_organization('00000000-0000-4000-a000-000000000001');
