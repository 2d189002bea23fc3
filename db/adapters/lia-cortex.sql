-- Adapter: parecer's source contract over seed 001's LIA CORTEX schema (Drizzle,
-- PostgreSQL), tables in "public":
--   conversations (id varchar, "chatId", status active|transferred|resolved,
--                  "resolvedAt", "autoClosed", "autoClosedAt", "lastMessageTime", ...)
--   messages      (id varchar, "conversationId", role user|assistant|system,
--                  "sendBy" supervisor|agent|ai|client, content, "timestamp",
--                  "isPrivate", "deletedAt", "audioUrl", "imageBase64", ...)
--   contacts      (id varchar, "phoneNumber" UNIQUE, tags text[], ...)
--
-- The seed lists columns in camelCase (its tables) but queries them in
-- snake_case (its example queries: resolved_at, is_private): the block below
-- uses whichever spelling the database has, column by column.
--
-- How the host's facts map (docs/adapters.md, "Seed 001: LIA CORTEX"):
-- * single tenant: no client table; one client whose slug and name are the
--   settings single_tenant_slug / single_tenant_name (parecer.set_setting);
-- * a session is a conversation (one per WhatsApp chat, reopened across episodes);
--   it has ended when it is resolved or auto-closed: ended_at is the later of
--   resolvedAt and autoClosedAt (lastMessageTime when both are missing). A
--   reopened conversation gets new messages, so the min_idle rule (measured from
--   the last message too) holds it back, and parecer.stale_reports flags its report;
-- * contact: the phone number of the chat id (5511...@s.whatsapp.net); chats that
--   are not a phone (groups, @lid ids) have no contact (NULL: no tags);
-- * tags: contacts.tags text[], one row per element, matched on "phoneNumber"
--   (the host's contacts_phone_number_idx serves the tag filters);
-- * messages: private notes ("isPrivate") and soft-deleted messages ("deletedAt")
--   are left out (the customer never saw the one, the host withdrew the other), and
--   so are role = 'system' messages; from_me is true for agents, supervisors and
--   the AI assistant ("sendBy", else role = 'assistant');
-- * senders (contract v2, parecer.source_message_senders): "sendBy" client ->
--   customer, ai -> bot, agent, supervisor; without "sendBy", role user ->
--   customer; so the prompt tells the AI assistant from the human agents;
-- * session metadata (contract v2, parecer.source_session_metadata): department,
--   assistant_type, urgency, transferred_to_human and source of the conversation
--   (those the host has), for scripts' metadata_keys and runs' metadata_filter;
-- * varchar ids are cast to text: a relabel, so the host's plain btree indexes
--   on them keep working;
-- * Drizzle's timestamp is WITHOUT time zone holding UTC (AT TIME ZONE 'UTC');
--   a timestamptz column is taken as it is.
DO $adapter$
DECLARE
    v_cols    jsonb;
    v_missing text;
    v_slug    constant text := '(SELECT COALESCE(st.value, st.default_value) FROM parecer._settings st WHERE st.name = ''single_tenant_slug'')';
    v_name    constant text := '(SELECT COALESCE(st.value, st.default_value) FROM parecer._settings st WHERE st.name = ''single_tenant_name'')';
BEGIN
    -- column name (either spelling) and whether it is a timestamptz, per table.column of the seed
    WITH need(tbl, camel) AS (
        VALUES ('conversations', 'id'), ('conversations', 'chatId'), ('conversations', 'status'),
               ('conversations', 'resolvedAt'), ('conversations', 'autoClosed'), ('conversations', 'autoClosedAt'),
               ('conversations', 'lastMessageTime'),
               -- optional: session metadata (contract v2), left out when missing
               ('conversations', 'department'), ('conversations', 'assistantType'), ('conversations', 'urgency'),
               ('conversations', 'transferredToHuman'), ('conversations', 'conversationSource'),
               ('messages', 'id'), ('messages', 'conversationId'), ('messages', 'role'), ('messages', 'sendBy'),
               ('messages', 'content'), ('messages', 'timestamp'), ('messages', 'isPrivate'), ('messages', 'deletedAt'),
               ('messages', 'audioUrl'), ('messages', 'audioBase64'), ('messages', 'imageBase64'),
               ('messages', 'pdfBase64'), ('messages', 'videoUrl'),
               ('contacts', 'phoneNumber'), ('contacts', 'tags')
    ), found AS (
        SELECT n.tbl, n.camel,
               (SELECT a.attname::text FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = pg_catalog.to_regclass('public.' || n.tbl) AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attname IN (n.camel, lower(regexp_replace(n.camel, '([A-Z])', '_\1', 'g')))
                 ORDER BY a.attname = n.camel DESC LIMIT 1) AS col,
               (SELECT a.atttypid = 'timestamptz'::regtype FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = pg_catalog.to_regclass('public.' || n.tbl) AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attname IN (n.camel, lower(regexp_replace(n.camel, '([A-Z])', '_\1', 'g')))
                 ORDER BY a.attname = n.camel DESC LIMIT 1) AS tz
        FROM need n
    )
    SELECT jsonb_object_agg(f.tbl || '.' || f.camel,
                            CASE WHEN f.col IS NULL THEN NULL
                                 WHEN f.tz IS FALSE AND f.camel IN ('resolvedAt', 'autoClosedAt', 'lastMessageTime', 'timestamp')
                                     THEN pg_catalog.format('(%s.%I AT TIME ZONE ''UTC'')', left(f.tbl, 1), f.col)
                                 WHEN f.tz THEN pg_catalog.format('%s.%I::timestamptz', left(f.tbl, 1), f.col)
                                 ELSE pg_catalog.format('%s.%I', left(f.tbl, 1), f.col) END),
           string_agg(f.tbl || '.' || f.camel, ', ')
               FILTER (WHERE f.col IS NULL AND f.camel NOT IN ('department', 'assistantType', 'urgency',
                                                                'transferredToHuman', 'conversationSource'))
      INTO v_cols, v_missing
      FROM found f;
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'the lia-cortex adapter did not find: %', v_missing
            USING ERRCODE = 'undefined_column',
                  HINT = 'It expects seed 001''s public.conversations, public.messages and public.contacts (camelCase or snake_case columns); copy db/adapters/lia-cortex.sql and adjust it (docs/adapters.md).';
    END IF;

    EXECUTE pg_catalog.format($v$
        CREATE OR REPLACE VIEW parecer.source_clients AS
        SELECT %1$s AS client_id, %1$s AS slug, %2$s AS name $v$, v_slug, v_name);

    EXECUTE pg_catalog.format($v$
        CREATE OR REPLACE VIEW parecer.source_sessions AS
        SELECT %1$s::text AS session_id,
               %2$s AS client_id,
               CASE WHEN %3$s ~ '^\+?[0-9]+(@s\.whatsapp\.net|@c\.us)?$'
                    THEN ltrim(split_part(%3$s, '@', 1), '+') END AS contact_id,
               CASE WHEN %4$s = 'resolved' OR %5$s
                    THEN COALESCE(GREATEST(%6$s, %7$s), %8$s) END AS ended_at
        FROM public.conversations c $v$,
        v_cols ->> 'conversations.id', v_slug, v_cols ->> 'conversations.chatId', v_cols ->> 'conversations.status',
        v_cols ->> 'conversations.autoClosed', v_cols ->> 'conversations.resolvedAt',
        v_cols ->> 'conversations.autoClosedAt', v_cols ->> 'conversations.lastMessageTime');

    EXECUTE pg_catalog.format($v$
        CREATE OR REPLACE VIEW parecer.source_messages AS
        SELECT %1$s::text AS message_id,
               %2$s::text AS session_id,
               COALESCE(%3$s <> 'client', %4$s <> 'user') AS from_me,
               %5$s AS sent_at,
               CASE WHEN %6$s IS NOT NULL OR %7$s IS NOT NULL THEN 'audio'
                    WHEN %8$s IS NOT NULL THEN 'image'
                    WHEN %9$s IS NOT NULL THEN 'document'
                    WHEN %10$s IS NOT NULL THEN 'video'
                    ELSE 'text' END AS media_type,
               %11$s AS body,
               CASE WHEN %6$s IS NOT NULL OR %7$s IS NOT NULL THEN %11$s END AS transcription
        FROM public.messages m
        WHERE %12$s IS NULL
          AND %13$s IS NOT TRUE
          AND %4$s IS DISTINCT FROM 'system' $v$,
        v_cols ->> 'messages.id', v_cols ->> 'messages.conversationId', v_cols ->> 'messages.sendBy',
        v_cols ->> 'messages.role', v_cols ->> 'messages.timestamp', v_cols ->> 'messages.audioUrl',
        v_cols ->> 'messages.audioBase64', v_cols ->> 'messages.imageBase64', v_cols ->> 'messages.pdfBase64',
        v_cols ->> 'messages.videoUrl', v_cols ->> 'messages.content', v_cols ->> 'messages.deletedAt',
        v_cols ->> 'messages.isPrivate');

    -- contract v2: who sent each message, from "sendBy" (client, ai, agent,
    -- supervisor), else role (user: the customer; system); over the same rows
    -- as source_messages, so notes and system messages stay out as above.
    EXECUTE pg_catalog.format($v$
        CREATE OR REPLACE VIEW parecer.source_message_senders AS
        SELECT %1$s::text AS message_id,
               %2$s::text AS session_id,
               CASE WHEN %6$s IS TRUE THEN 'note'
                    ELSE CASE %3$s WHEN 'client' THEN 'customer' WHEN 'ai' THEN 'bot' WHEN 'agent' THEN 'agent'
                                   WHEN 'supervisor' THEN 'supervisor'
                                   ELSE CASE %4$s WHEN 'user' THEN 'customer' WHEN 'system' THEN 'system' END END
               END AS sender
        FROM public.messages m
        WHERE %5$s IS NULL
          AND %6$s IS NOT TRUE
          AND %4$s IS DISTINCT FROM 'system' $v$,
        v_cols ->> 'messages.id', v_cols ->> 'messages.conversationId', v_cols ->> 'messages.sendBy',
        v_cols ->> 'messages.role', v_cols ->> 'messages.deletedAt', v_cols ->> 'messages.isPrivate');

    -- contract v2: the conversation's department, assistant type, urgency,
    -- hand-off to a human and source as session metadata (keys the host lacks are left out)
    EXECUTE pg_catalog.format($v$
        CREATE OR REPLACE VIEW parecer.source_session_metadata AS
        SELECT %1$s::text AS session_id,
               jsonb_strip_nulls(jsonb_build_object('department', %2$s, 'assistant_type', %3$s, 'urgency', %4$s,
                                                    'transferred_to_human', %5$s, 'source', %6$s)) AS metadata
        FROM public.conversations c $v$,
        v_cols ->> 'conversations.id', COALESCE(v_cols ->> 'conversations.department', 'NULL::text'),
        COALESCE(v_cols ->> 'conversations.assistantType', 'NULL::text'),
        COALESCE(v_cols ->> 'conversations.urgency', 'NULL::text'),
        COALESCE(v_cols ->> 'conversations.transferredToHuman', 'NULL::boolean'),
        COALESCE(v_cols ->> 'conversations.conversationSource', 'NULL::text'));

    EXECUTE pg_catalog.format($v$
        CREATE OR REPLACE VIEW parecer.source_contact_tags AS
        SELECT %1$s::text AS contact_id, t.tag::text AS tag
        FROM public.contacts c
        CROSS JOIN LATERAL unnest(%2$s) AS t(tag) $v$,
        v_cols ->> 'contacts.phoneNumber', v_cols ->> 'contacts.tags');
END
$adapter$;
