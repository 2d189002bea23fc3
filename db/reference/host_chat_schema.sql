-- The reference host's chat tables (schema "chat"): the layout seed 000 describes.
-- clients -> contacts -> tickets -> sessions -> messages; tags hang off contacts.
-- Used by the demo and the tests; your own host schema plugs in through an adapter.
-- Ids are text, so the source-contract views compare them without casts and the
-- host's indexes stay usable (see docs/adapters.md for uuid/bigint hosts).
CREATE SCHEMA IF NOT EXISTS chat;

CREATE TABLE IF NOT EXISTS chat.clients (
    id          text PRIMARY KEY,
    slug        text NOT NULL UNIQUE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS chat.contacts (
    id          text PRIMARY KEY,
    client_id   text NOT NULL REFERENCES chat.clients (id),
    name        text,
    phone       text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS contacts_client_id_idx ON chat.contacts (client_id);

CREATE TABLE IF NOT EXISTS chat.contact_tags (
    contact_id  text NOT NULL REFERENCES chat.contacts (id) ON DELETE CASCADE,
    tag         text NOT NULL,
    PRIMARY KEY (contact_id, tag)
);

CREATE TABLE IF NOT EXISTS chat.tickets (
    id          text PRIMARY KEY,
    client_id   text NOT NULL REFERENCES chat.clients (id),
    contact_id  text NOT NULL REFERENCES chat.contacts (id),
    status      text NOT NULL DEFAULT 'open',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS tickets_client_id_idx ON chat.tickets (client_id);
CREATE INDEX IF NOT EXISTS tickets_contact_id_idx ON chat.tickets (contact_id);

CREATE TABLE IF NOT EXISTS chat.sessions (
    id          text PRIMARY KEY,
    ticket_id   text NOT NULL REFERENCES chat.tickets (id),
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz            -- NULL while the session is open
);
CREATE INDEX IF NOT EXISTS sessions_ticket_id_idx ON chat.sessions (ticket_id);

CREATE TABLE IF NOT EXISTS chat.messages (
    id                   text PRIMARY KEY,
    session_id           text NOT NULL REFERENCES chat.sessions (id) ON DELETE CASCADE,
    from_me              boolean NOT NULL,          -- true: the agent (ATENDENTE)
    media_type           text NOT NULL DEFAULT 'text',
    body                 text,
    transcription        text,                      -- audio transcription, when there is one
    created_at           timestamptz NOT NULL DEFAULT now(),
    created_at_external  timestamptz,
    updated_at_external  timestamptz
);
-- The transcript and eligibility both reach messages by session.
CREATE INDEX IF NOT EXISTS messages_session_id_idx ON chat.messages (session_id);
