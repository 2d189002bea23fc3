-- Rollback of 0006. The functions of this release that use these columns stay
-- until the API of the release you roll back to is applied.
DROP FUNCTION IF EXISTS parecer.leased_transcript(uuid, uuid);
DROP FUNCTION IF EXISTS parecer.grant_client(name, text);
DROP FUNCTION IF EXISTS parecer.revoke_client(name, text);
DROP VIEW IF EXISTS parecer.client_grants;
ALTER TABLE parecer.analyses DROP COLUMN leased_to CASCADE,
                             DROP COLUMN given_prompt_hash CASCADE,
                             DROP COLUMN prompt_given_at CASCADE;
DROP TABLE parecer._client_grants CASCADE;
DELETE FROM parecer._settings
 WHERE name IN ('isolation', 'max_claim_items', 'max_lease_seconds', 'max_pause_seconds', 'max_request_tokens');
