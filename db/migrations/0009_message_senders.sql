-- 0009: source contract v2, backwards compatible (issue 15): who sent a message,
-- beyond from_me. An optional fifth contract view, adapter-owned like the other
-- four: created empty here (so adapters that only know from_me keep working
-- unchanged) and defined by adapters that know more (db/adapters/lia-cortex.sql).
-- sender is one of customer, agent, bot, supervisor, system, note; a message
-- without a row here (or with another value) falls back to from_me.
CREATE VIEW parecer.source_message_senders AS
SELECT NULL::text AS message_id, NULL::text AS session_id, NULL::text AS sender
WHERE false;
COMMENT ON VIEW parecer.source_message_senders IS 'Source contract v2 (optional): who sent a message (message_id, session_id, sender text: customer, agent, bot, supervisor, system or note). Empty unless the adapter defines it; messages without a row are labelled by from_me.';
