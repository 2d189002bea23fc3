-- Rollback of 0013. The functions of this release stay until the API of the
-- release you roll back to is applied; these signatures are not in it.
DROP FUNCTION IF EXISTS parecer._add_spend(text, text, date, jsonb[], numeric);
DROP FUNCTION IF EXISTS parecer._store_reports(uuid[], uuid[], jsonb[], text[], text[], jsonb[]);
DROP FUNCTION IF EXISTS parecer._prompts(uuid[]);
DROP FUNCTION IF EXISTS parecer.prompts_for(uuid[]);
COMMENT ON COLUMN parecer.analyses.omitted_messages IS
'Messages the size policy left out of the prompt of the stored report (0: the whole session was sent), as mark_done recomputed it.';
