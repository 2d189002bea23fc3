-- Rollback of 0018: what this release added goes.
DROP FUNCTION IF EXISTS parecer.claim_with_prompts(text, integer, integer, text, boolean);
DROP TYPE IF EXISTS parecer.claimed_prompt;
