-- Rollback of 0008. The functions of this release that use these columns stay
-- until the API of the release you roll back to is applied.
DROP FUNCTION IF EXISTS parecer.set_rate_limit(text, integer, integer, integer);
DROP TABLE IF EXISTS parecer._global_budget CASCADE;
ALTER TABLE parecer._rate_limits DROP COLUMN rpd CASCADE, DROP COLUMN day CASCADE, DROP COLUMN day_requests CASCADE;
