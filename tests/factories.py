"""Test data in the reference chat schema (host tables, not parecer's)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

_ids = itertools.count(1)


@dataclass
class Session:
    session_id: str
    client_slug: str
    contact_id: str
    ended_at: datetime | None
    message_ids: list[str] = field(default_factory=list)


def make_client(conn: psycopg.Connection[Any], slug: str = "acme", name: str | None = None) -> str:
    conn.execute(
        "INSERT INTO chat.clients (id, slug, name) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        (f"cl-{slug}", slug, name or slug.title()),
    )
    return slug


def make_session(
    conn: psycopg.Connection[Any],
    client: str = "acme",
    *,
    messages: int = 25,
    ended_at: datetime | None | str = "default",
    tags: list[str] | tuple[str, ...] = (),
    contact_id: str | None = None,
    agent_replies: bool = True,
    texts: list[str] | None = None,
) -> Session:
    """A session of ``messages`` alternating CLIENTE / ATENDENTE messages."""
    make_client(conn, client)
    n = next(_ids)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    end: datetime | None = now - timedelta(days=2, minutes=n) if ended_at == "default" else ended_at  # type: ignore[assignment]
    contact = contact_id or f"ct-{client}-{n}"
    conn.execute(
        "INSERT INTO chat.contacts (id, client_id, name) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        (contact, f"cl-{client}", f"Contato {n}"),
    )
    for t in tags:
        conn.execute(
            "INSERT INTO chat.contact_tags VALUES (%s, %s) ON CONFLICT DO NOTHING", (contact, t)
        )
    ticket = f"tk-{client}-{n}"
    conn.execute(
        "INSERT INTO chat.tickets (id, client_id, contact_id) VALUES (%s, %s, %s)",
        (ticket, f"cl-{client}", contact),
    )
    sid = f"ses-{client}-{n}"
    start = (end or now) - timedelta(hours=1)
    conn.execute(
        "INSERT INTO chat.sessions (id, ticket_id, started_at, ended_at) VALUES (%s, %s, %s, %s)",
        (sid, ticket, start, end),
    )
    s = Session(sid, client, contact, end)
    for i in range(messages):
        mid = f"{sid}-m{i:03d}"
        from_me = agent_replies and i % 2 == 1
        body = (
            texts[i]
            if texts and i < len(texts)
            else (
                f"Bom dia, aqui é o atendente, mensagem {i}"
                if from_me
                else f"Olá, minha internet caiu de novo, mensagem {i}"
            )
        )
        conn.execute(
            "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, created_at, created_at_external)"
            " VALUES (%s, %s, %s, 'text', %s, %s, %s)",
            (mid, sid, from_me, body, start + timedelta(minutes=i), start + timedelta(minutes=i)),
        )
        s.message_ids.append(mid)
    return s


def make_script(
    conn: psycopg.Connection[Any],
    client: str = "acme",
    key: str = "qa",
    topics: list[str] | None = None,
    activate: bool = True,
) -> dict[str, Any]:
    make_client(conn, client)
    row = conn.execute(
        "SELECT * FROM parecer.create_script_version(%s, %s, %s, topics => %s, activate => %s)",
        (
            client,
            key,
            "Avalie a qualidade do atendimento.",
            topics if topics is not None else ["cancelamento", "internet"],
            activate,
        ),
    ).fetchone()
    assert row is not None
    return dict(row)


def report_for(
    session: Session, topics: list[str] | None = None, *, excerpt: str = "internet caiu"
) -> dict[str, Any]:
    """A valid, grounded report citing the session's first message."""
    ev = [{"message_id": session.message_ids[0], "excerpt": excerpt}]
    return {
        "schema_version": "parecer.report.v1",
        "summary": "Cliente relatou queda de internet.",
        "outcome": {"evidence": ev, "status": "resolved"},
        "sentiment": {"evidence": [], "start": "negative", "end": "neutral"},
        "topics": [
            {
                "topic": t,
                "evidence": ev if t == "internet" else [],
                "present": t == "internet",
                "confidence": 0.9,
            }
            for t in (topics if topics is not None else ["cancelamento", "internet"])
        ],
        "flags": [],
        "insufficient_context": False,
        "next_action": None,
    }


def ended(s: Session) -> datetime:
    """A closed session's end (a sort key)."""
    assert s.ended_at is not None, s
    return s.ended_at
