-- 0004: no item loops or outgrows the model. releases counts the give-backs of
-- an item (parecer.release: the one beyond the max_releases setting is
-- terminal); omitted_messages records how many messages the size policy left
-- out of the prompt of a stored report (max_input_tokens: prompt_for keeps the
-- start and the end of a long session).
ALTER TABLE parecer.analyses
    ADD COLUMN releases integer NOT NULL DEFAULT 0,
    ADD COLUMN omitted_messages integer;
COMMENT ON COLUMN parecer.analyses.releases IS
'Times the item was given back without spending an attempt (parecer.release); reset by enqueue(force_reprocess) and retry_failed.';
COMMENT ON COLUMN parecer.analyses.omitted_messages IS
'Messages the size policy left out of the prompt of the stored report (0: the whole session was sent), as mark_done recomputed it.';
-- prompt_for returns more columns (omitted_messages, input_tokens, repair_calls) and
-- the transcript is built as lines: the old definitions go, db/api creates the new.
DROP FUNCTION IF EXISTS parecer.prompt_for(uuid);
DROP FUNCTION IF EXISTS parecer._transcript_text(text, text);
