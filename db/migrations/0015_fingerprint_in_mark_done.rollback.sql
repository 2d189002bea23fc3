-- Rollback of 0015: nothing to undo here. The API of the release you roll back to
-- defines the fingerprint trigger again when it is applied.
SELECT 1;
