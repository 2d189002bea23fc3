-- Rollback of 0002. The reports view reads the column: it goes too, and the API
-- of the release you roll back to must be applied again (parecer db migrate of
-- that release does it).
ALTER TABLE parecer.analyses DROP COLUMN grounding CASCADE;
