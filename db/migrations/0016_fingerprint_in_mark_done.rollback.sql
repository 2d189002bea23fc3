-- Rollback of 0016. The API of the release you roll back to defines the
-- fingerprint trigger again when it is applied; the set functions of this
-- release are not in it.
DROP FUNCTION IF EXISTS parecer._grounding_set(jsonb, text);
DROP FUNCTION IF EXISTS parecer._cost_set(text, jsonb);
