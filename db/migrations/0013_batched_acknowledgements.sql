-- 0013: reports stored in batches (issue 18): a client's spend is added once per
-- batch of attempts, so _add_spend takes the attempts' usages as an array; its
-- one-usage signature goes here, db/api/ defines the new one.
DROP FUNCTION IF EXISTS parecer._add_spend(text, text, date, jsonb, numeric);
-- prompt_for records the omitted count with the hash it gives the lease holder;
-- mark_done stores it with the report instead of rebuilding the transcript.
COMMENT ON COLUMN parecer.analyses.omitted_messages IS
'Messages the size policy left out of the prompt (0: the whole session was sent): of the stored report''s prompt once done; while processing, of the prompt prompt_for last gave the lease holder (given_prompt_hash).';
