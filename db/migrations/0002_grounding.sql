-- 0002: how each evidence item of a stored report was grounded (path,
-- message_id, role of the cited message, match: exact | normalised | fragments),
-- written by mark_done beside the report the model sent.
ALTER TABLE parecer.analyses ADD COLUMN grounding jsonb;
COMMENT ON COLUMN parecer.analyses.grounding IS
'Per evidence item of the report: path, message_id, role (customer/agent) and match (exact, normalised, fragments), as mark_done grounded it.';
