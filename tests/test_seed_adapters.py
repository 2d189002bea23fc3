"""The bundled adapters against hosts built from their seeds' own DDL text
(tests/seed_ddl.py): prisma for seed 000, lia-cortex for seed 001."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from parecer import db

from . import seed_ddl
from .factories import Session, report_for


def _prisma_host(ts: str) -> str:
    """Seed 000's Prisma tables. The seed gives the index DDL and the ordering
    columns (taken from its text below); the rest is Prisma's layout, with the
    DateTime columns as `ts` (timestamp(3) by default, timestamptz(3) with
    @db.Timestamptz(3))."""
    upd, crx, cra = seed_ddl.seed000_order_columns()
    return f"""
    CREATE TABLE public.clients (id text PRIMARY KEY, slug text UNIQUE NOT NULL, name text NOT NULL);
    CREATE TABLE public.contacts (id text PRIMARY KEY, "clientId" text NOT NULL, name text);
    CREATE TABLE public.contact_tags ("contactId" text NOT NULL, tag text NOT NULL, PRIMARY KEY ("contactId", tag));
    CREATE TABLE public.tickets (id text PRIMARY KEY, "clientId" text NOT NULL, "contactId" text NOT NULL);
    CREATE TABLE public.sessions (id text PRIMARY KEY, "ticketId" text NOT NULL, "endedAt" {ts});
    CREATE TABLE public.messages (id text PRIMARY KEY, "sessionId" text NOT NULL, "fromMe" boolean NOT NULL,
        "mediaType" text NOT NULL DEFAULT 'text', body text, transcription text,
        "{cra}" {ts} NOT NULL, "{crx}" {ts}, "{upd}" {ts});
    {seed_ddl.seed000_index_ddl()}
    INSERT INTO public.clients VALUES ('c1', 'loja', 'Loja');
    INSERT INTO public.tickets VALUES ('t1', 'c1', 'k1');
    INSERT INTO public.sessions VALUES ('s1', 't1', now() - interval '2 days');
    INSERT INTO public.messages (id, "sessionId", "fromMe", body, "{cra}", "{upd}")
    SELECT 'm' || i, 's1', i % 2 = 1, 'mensagem ' || i, now() - interval '3 days' + i * interval '1 minute',
           CASE WHEN i = 0 THEN now() - interval '3 days' + interval '1 hour' END
    FROM generate_series(0, 24) i;
    """


@pytest.mark.parametrize("ts", ["timestamp(3)", "timestamptz(3)"])
def test_prisma_adapter_fits_seed_000_as_written(empty_db_url: str, ts: str) -> None:
    db.migrate(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as c:
        c.execute("SET TimeZone = 'UTC'")  # Prisma writes UTC into timestamp(3)
        c.execute(_prisma_host(ts).encode())
    db.install_adapter(empty_db_url, "prisma")
    db.install_adapter(empty_db_url, "prisma")  # installing again changes nothing
    with db.connect(empty_db_url) as c:
        on_session = c.execute(
            "SELECT indexrelid::regclass::text AS ix FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE i.indrelid = 'public.messages'::regclass AND a.attname = 'sessionId' ORDER BY 1"
        ).fetchall()
        # the seed's index (stored lower-case) is used; only the recommended 2-column one is added
        assert [r["ix"] for r in on_session] == [
            '"ix_messages_sessionId_updatedAtExternal"',
            "ix_messages_sessionid",
        ]
        # both column types give the same UTC instants
        c.execute("SET TimeZone = 'America/Sao_Paulo'")
        [row] = c.execute("SELECT * FROM parecer.eligible_sessions('loja')").fetchall()
        assert (row["session_id"], row["message_count"]) == ("s1", 25)
        off = c.execute(
            "SELECT abs(extract(epoch FROM ended_at - (now() - interval '2 days'))) AS s "
            "FROM parecer.source_sessions"
        ).fetchone()
        assert off is not None and off["s"] < 60
        ids = [
            r["message_id"]
            for r in c.execute("SELECT message_id FROM parecer.session_transcript('s1')").fetchall()
        ]
        assert ids[0] == "m1" and ids[-1] == "m0"  # m0 edited an hour in: the seed's COALESCE order
        checks = {
            r["check_name"]: r["status"] for r in c.execute("SELECT * FROM parecer.check_adapter()")
        }
        assert checks["index:source_messages.session_id"] == "ok"
        assert checks["duplicate_session_ids"] == "ok" and checks["future_ended_at"] == "ok"


LIA_TABLES = ["conversations", "messages", "contacts"]


def _lia_data(c: psycopg.Connection[Any], col: Any) -> dict[str, Session]:
    """Conversations of a LIA CORTEX host; col(name) spells a seed column."""
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)  # timestamp holding UTC

    def conv(cid: str, chat: str, status: str, auto: bool, resolved: datetime | None) -> None:
        c.execute(
            f'INSERT INTO public.conversations (id, "{col("chatId")}", "{col("clientName")}", '
            f'"{col("assistantType")}", status, "{col("autoClosed")}", "{col("autoClosedAt")}", '
            f'"{col("resolvedAt")}", "{col("lastMessageTime")}") VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)',
            (
                cid,
                chat,
                "Cliente " + cid,
                "suporte",
                status,
                auto,
                resolved if auto else None,
                None if auto else resolved,
                resolved,
            ),
        )

    out: dict[str, Session] = {}
    for cid, chat, status, auto in [
        ("c-resolved", "5511999990001@s.whatsapp.net", "resolved", False),
        ("c-auto", "5511999990002@s.whatsapp.net", "active", True),
        ("c-active", "5511999990003@s.whatsapp.net", "active", False),
        ("c-lid", "204938475@lid", "resolved", False),
    ]:
        end = now - timedelta(days=2)
        conv(cid, chat, status, auto, end)
        s = Session(cid, "lia", chat, end)
        for i in range(22):
            mid = f"{cid}-m{i:02d}"
            role, send = (
                ("user", "client") if i % 2 == 0 else ("assistant", "ai" if i < 10 else "agent")
            )
            c.execute(
                f'INSERT INTO public.messages (id, "{col("conversationId")}", role, "{col("sendBy")}", content, '
                f'"timestamp", "{col("isPrivate")}", "{col("deletedAt")}") VALUES (%s, %s, %s, %s, %s, %s, %s, %s)',
                (
                    mid,
                    cid,
                    role,
                    send,
                    f"Olá, minha internet caiu, mensagem {i}"
                    if role == "user"
                    else f"Vou verificar, mensagem {i}",
                    end - timedelta(minutes=60 - i),
                    i == 5,
                    end if i == 7 else None,
                ),
            )
            if i not in (5, 7):
                s.message_ids.append(mid)
        c.execute(
            f'INSERT INTO public.messages (id, "{col("conversationId")}", role, content, "timestamp") '
            "VALUES (%s, %s, 'system', 'thread rotated', %s)",
            (cid + "-sys", cid, end - timedelta(minutes=70)),
        )
        out[cid] = s
    c.execute(
        f'INSERT INTO public.contacts (id, "{col("phoneNumber")}", name, tags) VALUES '
        "('k1', '5511999990001', 'Ana', NULL), ('k2', '5511999990002', 'Bia', '{vip,lead}')"
    )
    return out


@pytest.mark.parametrize("spelling", ["camelCase", "snake_case"])
def test_lia_cortex_adapter_over_seed_001_ddl(empty_db_url: str, spelling: str) -> None:
    snake = spelling == "snake_case"

    def col(name: str) -> str:
        return seed_ddl._snake(name) if snake else name

    db.migrate(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as host:
        host.execute(seed_ddl.seed001_ddl(LIA_TABLES, snake_case=snake).encode())
        sessions = _lia_data(host, col)
    db.install_adapter(empty_db_url, "lia-cortex")
    with db.connect(empty_db_url) as c:
        c.execute("SELECT parecer.set_setting('single_tenant_slug', 'lia')")
        c.execute("SELECT parecer.set_setting('single_tenant_name', 'LIA CORTEX')")
        assert c.execute("SELECT * FROM parecer.source_clients").fetchall() == [
            {"client_id": "lia", "slug": "lia", "name": "LIA CORTEX"}
        ]
        rows = c.execute(
            "SELECT session_id, message_count FROM parecer.eligible_sessions('lia', tag_filter => '{\"mode\":\"ignore\"}')"
        ).fetchall()
        # the active conversation has not ended; private note, deleted and system messages are left out
        assert sorted((r["session_id"], r["message_count"]) for r in rows) == [
            ("c-auto", 20),
            ("c-lid", 20),
            ("c-resolved", 20),
        ]

        def tagged(f: dict[str, Any]) -> list[str]:
            return sorted(
                r["session_id"]
                for r in c.execute(
                    "SELECT session_id FROM parecer.eligible_sessions('lia', tag_filter => %s)",
                    (json.dumps(f),),
                )
            )

        # tags from contacts.tags text[]; a NULL array and an @lid chat (no contact) have none
        assert tagged({"mode": "any_of", "tags": ["vip"]}) == ["c-auto"]
        assert tagged({"mode": "none"}) == ["c-lid", "c-resolved"]
        # contract v2: the conversation's facts as session metadata, and a run filtering on them
        md = c.execute(
            "SELECT metadata FROM parecer.source_session_metadata WHERE session_id = 'c-resolved'"
        ).fetchone()
        assert md == {
            "metadata": {
                "department": "general",
                "assistant_type": "suporte",
                "urgency": "normal",
                "transferred_to_human": False,
                "source": "inbound",
            }
        }
        c.execute(
            f"UPDATE public.conversations SET urgency = 'urgent', \"{col('transferredToHuman')}\" = true"
            " WHERE id = 'c-auto'"
        )
        urgent = c.execute(
            "SELECT session_id FROM parecer.eligible_sessions('lia', tag_filter => '{\"mode\":\"ignore\"}',"
            ' metadata_filter => \'{"urgency": "urgent", "transferred_to_human": true}\')'
        ).fetchall()
        assert urgent == [{"session_id": "c-auto"}]
        t = c.execute("SELECT * FROM parecer.session_transcript('c-resolved')").fetchall()
        assert [r["from_me"] for r in t[:4]] == [False, True, False, True]
        checks = {r["check_name"]: r for r in c.execute("SELECT * FROM parecer.check_adapter()")}
        assert {k: v["status"] for k, v in checks.items() if v["status"] != "info"} == {
            "duplicate_session_ids": "ok",
            "future_ended_at": "ok",
            "messages_without_session": "ok",
            "message_senders": "ok",
            "session_metadata": "ok",
            "index:source_sessions.session_id": "ok",
            "index:source_messages.session_id": "ok",
            "index:source_contact_tags.contact_id": "ok",
        }

        # end to end: run, claim, prompt, report
        c.execute(
            "SELECT * FROM parecer.create_script_version('lia', 'qa', 'Avalie.', activate => true)"
        )
        r = c.execute(
            "SELECT * FROM parecer.start_run('lia', 'qa', tag_filter => '{\"mode\":\"ignore\"}')"
        ).fetchone()
        assert r is not None and r["enqueued"] == 3
        done = 0
        while (item := c.execute("SELECT * FROM parecer.claim('w')").fetchone()) is not None:
            p = c.execute(
                "SELECT input, prompt_hash FROM parecer.prompt_for(%s)", (item["analysis_id"],)
            ).fetchone()
            assert (
                p is not None
                and p["input"].count("\n") == 19
                and "thread rotated" not in p["input"]
            )
            # contract v2: "sendBy" tells the AI assistant from the human agents
            assert "ATENDENTE (ASSISTENTE VIRTUAL): Vou verificar, mensagem 1\n" in p["input"]
            assert "ATENDENTE: Vou verificar, mensagem 11\n" in p["input"]
            assert "CLIENTE: Olá, minha internet caiu, mensagem 0\n" in p["input"]
            c.execute(
                "SELECT * FROM parecer.mark_done(%s, %s, %s, 'm', %s)",
                (
                    item["analysis_id"],
                    item["lease_token"],
                    json.dumps(report_for(sessions[item["session_id"]], [])),
                    p["prompt_hash"],
                ),
            )
            done += 1
        assert done == 3
        # a reopened conversation gets new messages: its report is stale, and idle again only after min_idle
        c.execute(
            f'INSERT INTO public.messages (id, "{col("conversationId")}", role, content, "timestamp") '
            "VALUES ('late', 'c-resolved', 'user', 'voltou a cair', now() AT TIME ZONE 'UTC')"
        )
        assert [
            r["session_id"] for r in c.execute("SELECT session_id FROM parecer.stale_reports")
        ] == ["c-resolved"]
        assert "c-resolved" not in [
            r["session_id"]
            for r in c.execute(
                "SELECT session_id FROM parecer.eligible_sessions('lia', tag_filter => '{\"mode\":\"ignore\"}')"
            )
        ]


def test_lia_cortex_missing_index_is_reported(empty_db_url: str) -> None:
    db.migrate(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as c:
        c.execute(seed_ddl.seed001_ddl(LIA_TABLES).encode())
        c.execute("DROP INDEX messages_conversation_id_idx, messages_conversation_timestamp_idx")
    db.install_adapter(empty_db_url, "lia-cortex")
    with db.connect(empty_db_url) as c:
        checks = {r["check_name"]: r for r in c.execute("SELECT * FROM parecer.check_adapter()")}
        assert checks["index:source_messages.session_id"]["status"] == "warn"
        assert "messages" in checks["index:source_messages.session_id"]["detail"]
        assert (
            checks["index:source_sessions.session_id"]["status"] == "ok"
        )  # varchar PK, cast to text
