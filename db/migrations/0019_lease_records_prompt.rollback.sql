-- Rollback of 0019. The API of the release you roll back to defines the helpers
-- with their old signatures again when it is applied; the ones this release
-- defines go.
DROP FUNCTION IF EXISTS parecer._claim_ids(text, integer, integer, text, boolean);
DROP FUNCTION IF EXISTS parecer._lease_items(uuid[], text, integer, name, text[], integer[]);
DROP FUNCTION IF EXISTS parecer._prompts(uuid[], boolean);
