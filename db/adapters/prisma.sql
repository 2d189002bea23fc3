-- Adapter: parecer's source contract over seed 000's Prisma layout — tables in
-- "public" with quoted camelCase columns:
--   clients (id, slug, name)
--   contacts (id, "clientId", ...)           contact_tags ("contactId", tag)
--   tickets (id, "clientId", "contactId")    sessions (id, "ticketId", "endedAt")
--   messages (id, "sessionId", "fromMe", "mediaType", body, transcription,
--             "createdAt", "createdAtExternal", "updatedAtExternal")
-- Prisma ids are text (String @id) already; cast with ::text if yours are not
-- and add an expression index (see docs/adapters.md).
--
-- Timestamps: Prisma's DateTime is timestamp(3) WITHOUT time zone holding UTC
-- (AT TIME ZONE 'UTC' makes it a timestamptz independent of the session's
-- TimeZone: prompt hashes depend on it); with @db.Timestamptz(3) the column is a
-- timestamptz already and is taken as it is. The block below looks at each
-- column's type and writes the views accordingly.
--
-- Indexes: seed 000's migration creates ix_messages_sessionId unquoted, which
-- PostgreSQL stores as ix_messages_sessionid. Whatever its name, an index that
-- starts with "sessionId" is used; one is created only when none exists.
DO $adapter$
DECLARE
    v_ended text;
    v_sent text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_index i
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                   WHERE i.indrelid = 'public.messages'::regclass AND a.attname = 'sessionId') THEN
        -- Mandatory for the transcript and eligibility (seed 000).
        CREATE INDEX "ix_messages_sessionId" ON public.messages ("sessionId");
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_index i
                   JOIN pg_catalog.pg_attribute a0 ON a0.attrelid = i.indrelid AND a0.attnum = i.indkey[0]
                   JOIN pg_catalog.pg_attribute a1 ON a1.attrelid = i.indrelid AND a1.attnum = i.indkey[1]
                   WHERE i.indrelid = 'public.messages'::regclass
                     AND a0.attname = 'sessionId' AND a1.attname = 'updatedAtExternal') THEN
        -- Recommended by seed 000 for the ordering key.
        CREATE INDEX "ix_messages_sessionId_updatedAtExternal" ON public.messages ("sessionId", "updatedAtExternal");
    END IF;

    SELECT pg_catalog.format(CASE a.atttypid WHEN 'timestamptz'::regtype THEN 's.%I::timestamptz' ELSE '(s.%I AT TIME ZONE ''UTC'')' END, a.attname)
      INTO v_ended
      FROM pg_catalog.pg_attribute a WHERE a.attrelid = 'public.sessions'::regclass AND a.attname = 'endedAt';
    SELECT 'COALESCE(' || string_agg(pg_catalog.format(
               CASE a.atttypid WHEN 'timestamptz'::regtype THEN 'm.%I::timestamptz' ELSE '(m.%I AT TIME ZONE ''UTC'')' END, a.attname),
               ', ' ORDER BY array_position(ARRAY['updatedAtExternal', 'createdAtExternal', 'createdAt'], a.attname::text)) || ')'
      INTO v_sent
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = 'public.messages'::regclass AND a.attname IN ('updatedAtExternal', 'createdAtExternal', 'createdAt');
    IF v_ended IS NULL OR v_sent IS NULL OR v_sent NOT LIKE '%updatedAtExternal%createdAtExternal%createdAt%' THEN
        RAISE EXCEPTION 'the prisma adapter needs public.sessions."endedAt" and public.messages."updatedAtExternal", "createdAtExternal", "createdAt"'
            USING ERRCODE = 'undefined_column', HINT = 'See docs/adapters.md: copy db/adapters/prisma.sql and adjust the column names.';
    END IF;

    EXECUTE $v$
        CREATE OR REPLACE VIEW parecer.source_clients AS
        SELECT c.id AS client_id, c.slug, c.name
        FROM public.clients c $v$;

    EXECUTE pg_catalog.format($v$
        CREATE OR REPLACE VIEW parecer.source_sessions AS
        SELECT s.id AS session_id, t."clientId" AS client_id, t."contactId" AS contact_id,
               %s AS ended_at
        FROM public.sessions s
        JOIN public.tickets t ON t.id = s."ticketId" $v$, v_ended);

    EXECUTE pg_catalog.format($v$
        CREATE OR REPLACE VIEW parecer.source_messages AS
        SELECT m.id AS message_id,
               m."sessionId" AS session_id,
               m."fromMe" AS from_me,
               %s AS sent_at,
               m."mediaType" AS media_type,
               m.body,
               m.transcription
        FROM public.messages m $v$, v_sent);

    EXECUTE $v$
        CREATE OR REPLACE VIEW parecer.source_contact_tags AS
        SELECT ct."contactId" AS contact_id, ct.tag
        FROM public.contact_tags ct $v$;
END
$adapter$;
