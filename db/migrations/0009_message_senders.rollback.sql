-- Rollback of 0009. The functions of this release that read the view stay until
-- the API of the release you roll back to is applied.
DROP VIEW IF EXISTS parecer.source_message_senders CASCADE;
