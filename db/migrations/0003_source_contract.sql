-- 0003: the source contract. parecer reads chat data only through these four
-- views. They start empty; an adapter (db/adapters/*.sql) replaces them over
-- the host's tables. CREATE OR REPLACE VIEW refuses a different column list or
-- type, so PostgreSQL itself enforces the contract on every adapter.
CREATE VIEW parecer.source_clients AS
SELECT NULL::text AS client_id, NULL::text AS slug, NULL::text AS name
WHERE false;

CREATE VIEW parecer.source_sessions AS
SELECT NULL::text AS session_id, NULL::text AS client_id, NULL::text AS contact_id,
       NULL::timestamptz AS ended_at
WHERE false;

CREATE VIEW parecer.source_messages AS
SELECT NULL::text AS message_id, NULL::text AS session_id, NULL::boolean AS from_me,
       NULL::timestamptz AS sent_at, NULL::text AS media_type, NULL::text AS body,
       NULL::text AS transcription
WHERE false;

CREATE VIEW parecer.source_contact_tags AS
SELECT NULL::text AS contact_id, NULL::text AS tag
WHERE false;

COMMENT ON VIEW parecer.source_clients IS 'Source contract: tenants (client_id text, slug text, name text). Defined by an adapter.';
COMMENT ON VIEW parecer.source_sessions IS 'Source contract: chat sessions (session_id, client_id, contact_id text, ended_at timestamptz; NULL = still open). Defined by an adapter.';
COMMENT ON VIEW parecer.source_messages IS 'Source contract: messages (message_id, session_id text, from_me boolean, sent_at timestamptz, media_type, body, transcription text). Transcripts order by sent_at, message_id.';
COMMENT ON VIEW parecer.source_contact_tags IS 'Source contract: contact tags (contact_id text, tag text). Defined by an adapter.';
