"""The Prisma adapter (seed 000's real layout) over a fixture of that layout."""

from __future__ import annotations

import json

import psycopg

from parecer import db

PRISMA_FIXTURE = """
CREATE TABLE public.clients (id text PRIMARY KEY, slug text UNIQUE NOT NULL, name text NOT NULL);
CREATE TABLE public.contacts (id text PRIMARY KEY, "clientId" text NOT NULL REFERENCES public.clients, name text);
CREATE TABLE public.contact_tags ("contactId" text NOT NULL REFERENCES public.contacts, tag text NOT NULL,
                                  PRIMARY KEY ("contactId", tag));
CREATE TABLE public.tickets (id text PRIMARY KEY, "clientId" text NOT NULL, "contactId" text NOT NULL);
CREATE TABLE public.sessions (id text PRIMARY KEY, "ticketId" text NOT NULL REFERENCES public.tickets,
                              "startedAt" timestamp(3), "endedAt" timestamp(3));
CREATE TABLE public.messages (id text PRIMARY KEY, "sessionId" text NOT NULL REFERENCES public.sessions,
                              "fromMe" boolean NOT NULL, "mediaType" text NOT NULL DEFAULT 'text', body text,
                              transcription text, "createdAt" timestamp(3) NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
                              "createdAtExternal" timestamp(3),
                              "updatedAtExternal" timestamp(3));
INSERT INTO public.clients VALUES ('c1', 'loja', 'Loja');
INSERT INTO public.contacts VALUES ('k1', 'c1', 'Ana'), ('k2', 'c1', 'Bia');
INSERT INTO public.contact_tags VALUES ('k2', 'vip');
INSERT INTO public.tickets VALUES ('t1', 'c1', 'k1'), ('t2', 'c1', 'k2');
INSERT INTO public.sessions VALUES ('s1', 't1', now() - interval '3 days', now() - interval '2 days'),
                                   ('s2', 't2', now() - interval '3 days', now() - interval '2 days');
INSERT INTO public.messages (id, "sessionId", "fromMe", body, "createdAt", "createdAtExternal", "updatedAtExternal")
SELECT 's' || s || '-m' || i, 's' || s, i % 2 = 1, 'mensagem ' || i,
       now() - interval '3 days' + i * interval '1 minute',
       CASE WHEN i % 3 = 0 THEN NULL ELSE now() - interval '3 days' + i * interval '1 minute' END,
       CASE WHEN i = 1 THEN now() - interval '3 days' + interval '30 minutes' END
FROM generate_series(1, 2) s, generate_series(0, 24) i;
"""


def test_prisma_adapter_eligibility_and_transcript(empty_db_url: str) -> None:
    db.migrate(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as c:
        c.execute(PRISMA_FIXTURE.encode())
    db.install_adapter(empty_db_url, "prisma")
    with db.connect(empty_db_url) as c:
        idx = {
            r["indexname"]
            for r in c.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'messages'"
            ).fetchall()
        }
        assert {"ix_messages_sessionId", "ix_messages_sessionId_updatedAtExternal"} <= idx
        rows = c.execute("SELECT * FROM parecer.eligible_sessions('loja')").fetchall()
        assert [(r["session_id"], r["message_count"]) for r in rows] == [
            ("s1", 25)
        ]  # s2's contact is tagged
        vip = c.execute(
            "SELECT session_id FROM parecer.eligible_sessions('loja', tag_filter => %s)",
            (json.dumps({"mode": "any_of", "tags": ["vip"]}),),
        ).fetchall()
        assert vip == [{"session_id": "s2"}]
        t = c.execute("SELECT message_id FROM parecer.session_transcript('s1')").fetchall()
        ids = [r["message_id"] for r in t]
        # m1 was edited 30 minutes in: COALESCE(updatedAtExternal, ...) moves it to the end
        assert ids[-1] == "s1-m1" and ids[:3] == ["s1-m0", "s1-m2", "s1-m3"]
        c.execute(
            "SELECT * FROM parecer.create_script_version('loja', 'qa', 'Avalie.', activate => true)"
        )
        r = c.execute(
            "SELECT * FROM parecer.start_run('loja', 'qa', min_messages => 10)"
        ).fetchone()
        assert r is not None and r["enqueued"] == 1
        item = c.execute("SELECT * FROM parecer.claim('w')").fetchone()
        assert item is not None and item["session_id"] == "s1"
        p = c.execute("SELECT input FROM parecer.prompt_for(%s)", (item["analysis_id"],)).fetchone()
        assert p is not None and p["input"].count("\n") == 24


def test_adapter_with_wrong_column_types_is_refused(db_url: str) -> None:
    import pytest

    with psycopg.connect(db_url, autocommit=True) as c:
        with pytest.raises(psycopg.Error):
            c.execute(
                "CREATE OR REPLACE VIEW parecer.source_sessions AS "
                "SELECT 1 AS session_id, 'x'::text AS client_id, 'y'::text AS contact_id, now() AS ended_at"
            )
