-- Rollback of 0012. parecer.rate_limits reads the columns: it goes too, and the
-- API of the release you roll back to must be applied again.
ALTER TABLE parecer._rate_limits DROP COLUMN client_ids CASCADE, DROP COLUMN client_slugs CASCADE;
