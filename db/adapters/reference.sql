-- Adapter: parecer's source contract over the reference chat schema ("chat").
-- An adapter (re)defines the four parecer.source_* views; nothing else in
-- parecer reads host tables. Simple views: the planner inlines them.
CREATE OR REPLACE VIEW parecer.source_clients AS
SELECT c.id AS client_id, c.slug, c.name
FROM chat.clients c;

CREATE OR REPLACE VIEW parecer.source_sessions AS
SELECT s.id AS session_id, t.client_id, t.contact_id, s.ended_at
FROM chat.sessions s
JOIN chat.tickets t ON t.id = s.ticket_id;

CREATE OR REPLACE VIEW parecer.source_messages AS
SELECT m.id AS message_id,
       m.session_id,
       m.from_me,
       COALESCE(m.updated_at_external, m.created_at_external, m.created_at) AS sent_at,
       m.media_type,
       m.body,
       m.transcription
FROM chat.messages m;

CREATE OR REPLACE VIEW parecer.source_contact_tags AS
SELECT ct.contact_id, ct.tag
FROM chat.contact_tags ct;
