-- Adapter: parecer's source contract over seed 000's Prisma layout — tables in
-- "public" with quoted camelCase columns:
--   clients (id, slug, name)
--   contacts (id, "clientId", ...)           contact_tags ("contactId", tag)
--   tickets (id, "clientId", "contactId")    sessions (id, "ticketId", "endedAt")
--   messages (id, "sessionId", "fromMe", "mediaType", body, transcription,
--             "createdAt", "createdAtExternal", "updatedAtExternal")
-- Prisma ids are text (String @id) already; cast with ::text if yours are not
-- and add an expression index (see docs/adapters.md). Prisma's DateTime is
-- timestamp(3) WITHOUT time zone holding UTC: AT TIME ZONE 'UTC' makes it a
-- timestamptz independent of the session's TimeZone (prompt hashes depend on it).

-- Mandatory for the transcript and eligibility (seed 000), and the recommended
-- index for the ordering key.
CREATE INDEX IF NOT EXISTS "ix_messages_sessionId" ON public.messages ("sessionId");
CREATE INDEX IF NOT EXISTS "ix_messages_sessionId_updatedAtExternal" ON public.messages ("sessionId", "updatedAtExternal");

CREATE OR REPLACE VIEW parecer.source_clients AS
SELECT c.id AS client_id, c.slug, c.name
FROM public.clients c;

CREATE OR REPLACE VIEW parecer.source_sessions AS
SELECT s.id AS session_id, t."clientId" AS client_id, t."contactId" AS contact_id,
       s."endedAt" AT TIME ZONE 'UTC' AS ended_at   -- Prisma DateTime: timestamp(3) holding UTC
FROM public.sessions s
JOIN public.tickets t ON t.id = s."ticketId";

CREATE OR REPLACE VIEW parecer.source_messages AS
SELECT m.id AS message_id,
       m."sessionId" AS session_id,
       m."fromMe" AS from_me,
       COALESCE(m."updatedAtExternal", m."createdAtExternal", m."createdAt") AT TIME ZONE 'UTC' AS sent_at,
       m."mediaType" AS media_type,
       m.body,
       m.transcription
FROM public.messages m;

CREATE OR REPLACE VIEW parecer.source_contact_tags AS
SELECT ct."contactId" AS contact_id, ct.tag
FROM public.contact_tags ct;
