-- dalgo 0.1.0 -> 0.2.0
--
-- Every change to an installed object made while 0.2.0 is under work goes
-- both into its sql/ fragment (which builds the fresh install script) and
-- here, in the same commit.  test/t/upgrade_equals_fresh.pl checks that a
-- 0.1.0 database updated with this script equals a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION dalgo UPDATE TO '0.2.0'" to load this file. \quit
