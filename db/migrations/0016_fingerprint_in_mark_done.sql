-- 0016: mark_done's UPDATE records a done item's fingerprint itself (one subplan
-- for a batch) instead of a trigger that ran a query per row; the trigger and
-- its function go.
DROP TRIGGER IF EXISTS analyses_fingerprint ON parecer.analyses;
DROP FUNCTION IF EXISTS parecer._fingerprint();
-- Grounding is a set function (_grounding_set) that the queries join; its
-- one-row wrapper goes (_cost stays, a SQL scalar of _cost_set: same signature).
DROP FUNCTION IF EXISTS parecer._grounding(jsonb, text);
