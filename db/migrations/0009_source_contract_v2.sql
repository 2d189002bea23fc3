-- 0009: source contract v2, backwards compatible (issue 15): who sent a message
-- beyond from_me, and session metadata. Two optional contract views,
-- adapter-owned like the other four: created empty here (so adapters that only
-- know the four views keep working unchanged) and defined by adapters that know
-- more (db/adapters/lia-cortex.sql defines the senders).
-- * sender is one of customer, agent, bot, supervisor, system, note; a message
--   without a row here (or with another value) falls back to from_me;
-- * metadata is a jsonb object per session (department, assistant type, urgency,
--   NPS, ...): a script version shows the keys it names to the model
--   (metadata_keys), a run filters on it (metadata_filter).
-- create_script_version, eligible_sessions and start_run gain arguments: their
-- old signatures go here, db/api/ defines the new ones.
CREATE VIEW parecer.source_message_senders AS
SELECT NULL::text AS message_id, NULL::text AS session_id, NULL::text AS sender
WHERE false;
COMMENT ON VIEW parecer.source_message_senders IS 'Source contract v2 (optional): who sent a message (message_id, session_id, sender text: customer, agent, bot, supervisor, system or note). Empty unless the adapter defines it; messages without a row are labelled by from_me.';

CREATE VIEW parecer.source_session_metadata AS
SELECT NULL::text AS session_id, NULL::jsonb AS metadata
WHERE false;
COMMENT ON VIEW parecer.source_session_metadata IS 'Source contract v2 (optional): a jsonb object of facts per session (session_id text, metadata jsonb), shown to the model for the keys a script version names and filtered on by runs (metadata_filter). Empty unless the adapter defines it.';

ALTER TABLE parecer.scripts ADD COLUMN metadata_keys text[] NOT NULL DEFAULT '{}';
COMMENT ON COLUMN parecer.scripts.metadata_keys IS 'Keys of parecer.source_session_metadata shown to the model in this version''s prompts, in this order.';
ALTER TYPE parecer.script_info ADD ATTRIBUTE metadata_keys text[];

DROP FUNCTION IF EXISTS parecer.create_script_version(text, text, text, text[], text, text, boolean);
DROP FUNCTION IF EXISTS parecer.eligible_sessions(text, integer, jsonb, timestamptz, timestamptz, boolean, interval);
DROP FUNCTION IF EXISTS parecer.start_run(text, text, integer, integer, jsonb, text, boolean, boolean, integer,
                                          timestamptz, timestamptz, boolean, boolean, interval, boolean);
