-- Rollback of 0004. prompt_for and the reports view read the columns: they go too,
-- and the API of the release you roll back to must be applied again (parecer db
-- migrate of that release does it).
DROP FUNCTION IF EXISTS parecer.prompt_for(uuid);
ALTER TABLE parecer.analyses DROP COLUMN omitted_messages CASCADE, DROP COLUMN releases CASCADE;
