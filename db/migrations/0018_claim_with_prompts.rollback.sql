-- Rollback of 0018. The API of the release you roll back to defines claim,
-- _lease_items and _prompts again when it is applied; what this release added goes.
DROP FUNCTION IF EXISTS parecer.claim_with_prompts(text, integer, integer, text, boolean);
DROP FUNCTION IF EXISTS parecer._claim(text, integer, integer, text, boolean, boolean);
DROP FUNCTION IF EXISTS parecer._lease_items(uuid[], text, integer, name, boolean);
DROP FUNCTION IF EXISTS parecer._prompt_texts(uuid[]);
DROP TYPE IF EXISTS parecer.claimed_prompt;
