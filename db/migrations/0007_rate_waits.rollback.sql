-- Rollback of 0007. parecer.rate_limits reads the column: it goes too, and the
-- API of the release you roll back to must be applied again.
ALTER TABLE parecer._rate_limits DROP COLUMN waited CASCADE;
