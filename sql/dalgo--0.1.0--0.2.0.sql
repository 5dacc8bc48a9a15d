-- dalgo 0.1.0 -> 0.2.0
--
-- Every change to an installed object made while 0.2.0 is under work goes
-- both into its sql/ fragment (which builds the fresh install script) and
-- here, in the same commit.  test/t/upgrade_equals_fresh.pl checks that a
-- 0.1.0 database updated with this script equals a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION dalgo UPDATE TO '0.2.0'" to load this file. \quit

-- rlim: size-guarded text functions for compiled recipes (schema dalgo_recipe)
CREATE SCHEMA dalgo_recipe;
COMMENT ON SCHEMA dalgo_recipe IS 'dalgo: size-guarded text functions that compiled recipe SQL calls';
GRANT USAGE ON SCHEMA dalgo_recipe TO PUBLIC;

CREATE FUNCTION dalgo_recipe.concat(VARIADIC "any") RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_concat'
	LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.concat("any") IS
	'CONCAT that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.concat_ws(text, VARIADIC "any") RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_concat_ws'
	LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.concat_ws(text, "any") IS
	'CONCAT_WS that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.replace(text, text, text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_replace'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.replace(text, text, text) IS
	'REPLACE that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.lpad(text, integer) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_lpad'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.lpad(text, integer) IS
	'LPAD that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.lpad(text, integer, text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_lpad'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.lpad(text, integer, text) IS
	'LPAD that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.rpad(text, integer) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_rpad'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.rpad(text, integer) IS
	'RPAD that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
CREATE FUNCTION dalgo_recipe.rpad(text, integer, text) RETURNS text
	AS 'MODULE_PATHNAME', 'dalgo_recipe_rpad'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION dalgo_recipe.rpad(text, integer, text) IS
	'RPAD that refuses to build a value over the recipe limit max_value_bytes (program_limit_exceeded)';
