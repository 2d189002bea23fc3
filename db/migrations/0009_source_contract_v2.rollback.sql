-- Rollback of 0009. The functions of this release that use these objects stay
-- until the API of the release you roll back to is applied.
DROP FUNCTION IF EXISTS parecer.create_script_version(text, text, text, text[], text, text, boolean, text[]);
DROP FUNCTION IF EXISTS parecer.eligible_sessions(text, integer, jsonb, timestamptz, timestamptz, boolean, interval, jsonb);
DROP FUNCTION IF EXISTS parecer.start_run(text, text, integer, integer, jsonb, text, boolean, boolean, integer,
                                          timestamptz, timestamptz, boolean, boolean, interval, boolean, jsonb);
ALTER TYPE parecer.script_info DROP ATTRIBUTE metadata_keys CASCADE;
ALTER TABLE parecer.scripts DROP COLUMN metadata_keys CASCADE;
DROP VIEW IF EXISTS parecer.source_session_metadata CASCADE;
DROP VIEW IF EXISTS parecer.source_message_senders CASCADE;
