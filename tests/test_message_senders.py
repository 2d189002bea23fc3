"""Source contract v2: who sent a message (parecer.source_message_senders), with
adapters that only know from_me unchanged."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import psycopg
import pytest

from parecer import db, errors

from .factories import make_script, make_session
from .helpers import one
from .test_prisma_adapter import PRISMA_FIXTURE

EMPTY = (
    "SELECT NULL::text AS message_id, NULL::text AS session_id, NULL::text AS sender WHERE false"
)
FROM_ME = (
    "SELECT m.id AS message_id, m.session_id, "
    "CASE WHEN m.from_me THEN 'agent' ELSE 'customer' END AS sender FROM chat.messages m"
)


def _senders(conn: psycopg.Connection[Any], select: str) -> None:
    conn.execute(f"CREATE OR REPLACE VIEW parecer.source_message_senders AS {select}")


def _prompt(conn: psycopg.Connection[Any], analysis_id: Any) -> dict[str, Any]:
    return one(
        conn,
        "SELECT instructions, input, prompt_hash FROM parecer.prompt_for(%s)",
        (analysis_id,),
    )


def _queued(conn: psycopg.Connection[Any], messages: int = 6) -> tuple[Any, Any]:
    script = make_script(conn)
    s = make_session(conn, messages=messages)
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", ([s.session_id], script["script_id"]))
    aid = one(
        conn, "SELECT analysis_id FROM parecer.analyses WHERE session_id = %s", (s.session_id,)
    )["analysis_id"]
    return s, aid


def test_reference_adapter_installs_unchanged_and_prompts_are_byte_identical(db_url: str) -> None:
    with db.connect(db_url) as c:
        _, aid = _queued(c)
        before = _prompt(c, aid)
    db.install_adapter(db_url, "reference")  # an adapter that knows only from_me
    with db.connect(db_url) as c:
        assert c.execute("SELECT count(*) AS n FROM parecer.source_message_senders").fetchone() == {
            "n": 0
        }
        assert _prompt(c, aid) == before
        # the same facts given as senders render the same bytes
        _senders(c, FROM_ME)
        assert _prompt(c, aid) == before


def test_prisma_adapter_installs_unchanged_and_labels_by_from_me(empty_db_url: str) -> None:
    db.migrate(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as c:
        c.execute(PRISMA_FIXTURE.encode())
    db.install_adapter(empty_db_url, "prisma")
    with db.connect(empty_db_url) as c:
        c.execute(
            "SELECT * FROM parecer.create_script_version('loja', 'qa', 'Avalie.', activate => true)"
        )
        c.execute("SELECT * FROM parecer.start_run('loja', 'qa', min_messages => 10)")
        aid = one(c, "SELECT analysis_id FROM parecer.analyses")["analysis_id"]
        before = _prompt(c, aid)
        lines = before["input"].splitlines()
        assert len(lines) == 25
        assert all(re.match(r"^\[msg s1-m\d+\] \S+Z (ATENDENTE|CLIENTE): ", ln) for ln in lines)
        _senders(
            c,
            'SELECT m.id AS message_id, m."sessionId" AS session_id, '
            "CASE WHEN m.\"fromMe\" THEN 'agent' ELSE 'customer' END AS sender FROM public.messages m",
        )
        assert _prompt(c, aid) == before


def test_senders_label_the_transcript_per_language(conn: psycopg.Connection[Any]) -> None:
    s, aid = _queued(conn)
    conn.execute("CREATE TABLE public.test_senders (message_id text, session_id text, sender text)")
    conn.cursor().executemany(
        "INSERT INTO public.test_senders VALUES (%s, %s, %s)",
        [
            (s.message_ids[0], s.session_id, "customer"),
            (s.message_ids[1], s.session_id, "bot"),
            (s.message_ids[2], s.session_id, "supervisor"),
            (s.message_ids[3], s.session_id, "note"),
            (s.message_ids[4], s.session_id, "system"),
            (s.message_ids[5], s.session_id, "robot"),  # unknown: labelled by from_me
        ],
    )
    _senders(conn, "SELECT message_id, session_id, sender FROM public.test_senders")
    roles = [ln.split(" ", 3)[3].split(":")[0] for ln in _prompt(conn, aid)["input"].splitlines()]
    bad = one(conn, "SELECT * FROM parecer.check_adapter() WHERE check_name = 'message_senders'")
    assert (bad["status"], bad["count"], bad["detail"].endswith(s.message_ids[5])) == (
        "warn",
        1,
        True,
    )
    assert roles == [
        "CLIENTE",
        "ATENDENTE (ASSISTENTE VIRTUAL)",
        "ATENDENTE (SUPERVISOR)",
        "NOTA INTERNA (o cliente não vê)",
        "SISTEMA",
        "ATENDENTE",
    ]
    assert [
        one(conn, "SELECT parecer._sender_label('en', %s) AS l", (x,))["l"]
        for x in ("customer", "agent", "bot", "supervisor", "system", "note", "robot")
    ] == [
        "CUSTOMER",
        "AGENT",
        "AGENT (BOT)",
        "AGENT (SUPERVISOR)",
        "SYSTEM",
        "INTERNAL NOTE (not seen by the customer)",
        None,
    ]
    assert one(conn, "SELECT parecer._sender_label('es', 'note') AS l")["l"] == (
        "NOTA INTERNA (el cliente no la ve)"
    )


def test_agent_reply_rule_counts_agents_and_bots_not_notes(conn: psycopg.Connection[Any]) -> None:
    make_script(conn)
    notes_only = make_session(conn, messages=4)  # from_me on messages 1 and 3
    bot = make_session(conn, messages=4)
    conn.execute("CREATE TABLE public.test_senders (message_id text, session_id text, sender text)")
    for s, sender in ((notes_only, "note"), (bot, "bot")):
        conn.cursor().executemany(
            "INSERT INTO public.test_senders VALUES (%s, %s, %s)",
            [(s.message_ids[i], s.session_id, sender) for i in (1, 3)],
        )

    def eligible() -> list[str]:
        return sorted(
            r["session_id"]
            for r in conn.execute(
                "SELECT session_id FROM parecer.eligible_sessions('acme', min_messages => 1,"
                " require_agent_reply => true)"
            )
        )

    assert eligible() == sorted([notes_only.session_id, bot.session_id])  # from_me alone
    _senders(conn, "SELECT message_id, session_id, sender FROM public.test_senders")
    assert eligible() == [bot.session_id]
    _senders(conn, EMPTY)
    assert eligible() == sorted([notes_only.session_id, bot.session_id])


def _metadata(conn: psycopg.Connection[Any], rows: list[tuple[str, dict[str, Any]]]) -> None:
    conn.execute("CREATE TABLE public.test_metadata (session_id text, metadata jsonb)")
    conn.cursor().executemany(
        "INSERT INTO public.test_metadata VALUES (%s, %s)",
        [(sid, json.dumps(md)) for sid, md in rows],
    )
    conn.execute(
        "CREATE OR REPLACE VIEW parecer.source_session_metadata AS"
        " SELECT session_id, metadata FROM public.test_metadata"
    )


def test_metadata_keys_of_a_script_version_are_shown_above_the_transcript(
    conn: psycopg.Connection[Any],
) -> None:
    s, aid = _queued(conn)
    plain = _prompt(conn, aid)
    _metadata(
        conn,
        [(s.session_id, {"department": "vendas", "urgency": "alta\nmesmo", "nps": 9, "x": "y"})],
    )
    assert _prompt(conn, aid) == plain  # the version names no keys: unchanged
    v2 = one(
        conn,
        "SELECT * FROM parecer.create_script_version('acme', 'qa', 'Avalie.', activate => true,"
        " metadata_keys => '{nps,department,urgency,missing}')",
    )
    assert v2["metadata_keys"] == ["nps", "department", "urgency", "missing"]
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s, 'v2')", ([s.session_id], v2["script_id"]))
    aid2 = one(
        conn, "SELECT analysis_id FROM parecer.analyses WHERE script_id = %s", (v2["script_id"],)
    )["analysis_id"]
    p = _prompt(conn, aid2)
    first, rest = p["input"].split("\n", 1)
    assert first == "[dados da sessão] nps: 9; department: vendas; urgency: alta \u21b5 mesmo"
    assert rest.startswith(f"[msg {s.message_ids[0]}] ")
    assert (
        p["prompt_hash"]
        == hashlib.sha256((p["instructions"] + "\n\n" + p["input"]).encode()).hexdigest()
    )


def test_runs_filter_on_metadata(conn: psycopg.Connection[Any]) -> None:
    make_script(conn)
    sales, support, none = (make_session(conn) for _ in range(3))
    _metadata(
        conn,
        [
            (sales.session_id, {"department": "vendas", "urgent": True}),
            (support.session_id, {"department": "suporte", "urgent": True}),
        ],
    )

    def eligible(f: dict[str, Any] | None) -> list[str]:
        return sorted(
            r["session_id"]
            for r in conn.execute(
                "SELECT session_id FROM parecer.eligible_sessions('acme', metadata_filter => %s)",
                (None if f is None else json.dumps(f),),
            )
        )

    everyone = sorted([sales.session_id, support.session_id, none.session_id])
    assert eligible(None) == everyone
    assert eligible({"department": "vendas"}) == [sales.session_id]
    assert eligible({"urgent": True}) == sorted([sales.session_id, support.session_id])
    assert eligible({"department": "vendas", "urgent": False}) == []
    r = one(
        conn,
        "SELECT * FROM parecer.start_run('acme', 'qa', metadata_filter => '{\"department\": \"suporte\"}')",
    )
    assert r["enqueued"] == 1
    assert one(conn, "SELECT params FROM parecer.runs WHERE run_id = %s", (r["run_id"],))["params"][
        "metadata_filter"
    ] == {"department": "suporte"}
    for bad in ('{"department": ["vendas"]}', "{}", '"vendas"', '{"a": {"b": 1}}'):
        with pytest.raises(psycopg.Error) as e:
            conn.execute(
                "SELECT * FROM parecer.eligible_sessions('acme', metadata_filter => %s)", (bad,)
            )
        assert errors.sqlstate(e.value) == errors.BAD_METADATA_FILTER, bad
        assert e.value.diag.message_hint
        conn.rollback()
