"""prompt_for, session_transcript, report checks and grounding in mark_done."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import psycopg
import pytest

from parecer import errors

from .factories import make_script, make_session, report_for
from .helpers import one, table_checksum


def one_item(conn: psycopg.Connection[Any], **kw: Any) -> tuple[dict[str, Any], Any]:
    script = make_script(conn)
    s = make_session(conn, **kw)
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", ([s.session_id], script["script_id"]))
    item = conn.execute("SELECT * FROM parecer.claim('w')").fetchone()
    assert item is not None
    return item, s


def three_sizes(conn: psycopg.Connection[Any]) -> tuple[Any, Any, Any]:
    """Sessions whose prompts, under max_input_tokens 5000, fit whole, are cut by the
    size policy, and cannot be sent (its one message never fits: PR016)."""
    short, long_ = make_session(conn), make_session(conn, messages=300)
    huge = make_session(conn, messages=0)
    conn.execute(
        "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, created_at,"
        " created_at_external) VALUES (%s, %s, false, 'text', %s, now(), now())",
        (huge.session_id + "-big", huge.session_id, "z" * 20_000),
    )
    return short, long_, huge


def test_transcript_order_and_audio_rule(conn: psycopg.Connection[Any]) -> None:
    s = make_session(conn, messages=0)
    t0 = datetime(2026, 1, 2, 10, 0, tzinfo=timezone.utc)
    rows = [
        # id, from_me, media, body, transcription, created_at, created_ext, updated_ext
        ("b", False, "text", "segunda\nlinha", None, t0, t0 + timedelta(minutes=2), None),
        ("a", True, "text", "primeira", None, t0, t0 + timedelta(minutes=1), None),
        ("c", False, "audio", None, None, t0, t0 + timedelta(minutes=3), None),
        ("d", False, "audio", None, "quero cancelar", t0, t0 + timedelta(minutes=4), None),
        ("e", True, "image", "comprovante", None, t0, None, None),  # falls back to created_at
        (
            "f",
            True,
            "text",
            "editada",
            None,
            t0,
            t0 + timedelta(minutes=0),
            t0 + timedelta(minutes=5),
        ),
    ]
    for r in rows:
        conn.execute(
            "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, transcription, created_at,"
            " created_at_external, updated_at_external) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (f"{s.session_id}-{r[0]}", s.session_id, *r[1:]),
        )
    got = conn.execute("SELECT * FROM parecer.session_transcript(%s)", (s.session_id,)).fetchall()
    assert [g["message_id"][-1] for g in got] == ["e", "a", "b", "c", "d", "f"]
    assert [g["position"] for g in got] == [1, 2, 3, 4, 5, 6]

    script = make_script(conn)
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", ([s.session_id], script["script_id"]))
    aid = one(conn, "SELECT analysis_id FROM parecer.analyses")["analysis_id"]
    p = conn.execute("SELECT * FROM parecer.prompt_for(%s)", (aid,)).fetchone()
    assert p is not None
    sid = s.session_id
    assert p["input"].splitlines() == [
        f"[msg {sid}-e] 2026-01-02T10:00:00Z ATENDENTE: [image] comprovante",
        f"[msg {sid}-a] 2026-01-02T10:01:00Z ATENDENTE: primeira",
        f"[msg {sid}-b] 2026-01-02T10:02:00Z CLIENTE: segunda \u21b5 linha",
        f"[msg {sid}-c] 2026-01-02T10:03:00Z CLIENTE: [áudio: audio_present, conteúdo não disponível]",
        f"[msg {sid}-d] 2026-01-02T10:04:00Z CLIENTE: [áudio transcrito] quero cancelar",
        f"[msg {sid}-f] 2026-01-02T10:05:00Z ATENDENTE: editada",
    ]
    final = p["instructions"] + "\n\n" + p["input"]
    assert p["prompt_hash"] == hashlib.sha256(final.encode()).hexdigest()
    for needle in [
        "Avalie a qualidade do atendimento.",
        "- cancelamento",
        "ATENDENTE = enviada pela empresa (fromMe=true)",
        "audio_present",
        "message_id",
        "somente com um objeto JSON",
    ]:
        assert needle in p["instructions"]


def test_prompt_is_deterministic_across_timezones(db_url: str) -> None:
    from parecer import db

    hashes = set()
    with db.connect(db_url) as c:
        item, _ = one_item(c)
    for tz in ["UTC", "America/Sao_Paulo", "Asia/Tokyo"]:
        with db.connect(db_url, options=f"-c TimeZone={tz}") as c:
            hashes.add(
                one(c, "SELECT prompt_hash FROM parecer.prompt_for(%s)", (item["analysis_id"],))[
                    "prompt_hash"
                ]
            )
    assert len(hashes) == 1


def test_report_schema_is_strict_and_ordered(conn: psycopg.Connection[Any]) -> None:
    item, _ = one_item(conn)
    raw = one(
        conn, "SELECT report_schema::text AS s FROM parecer.prompt_for(%s)", (item["analysis_id"],)
    )["s"]
    schema = json.loads(raw)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object":
                assert node["additionalProperties"] is False
                assert set(node["required"]) == set(node["properties"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    assert list(schema["properties"]["outcome"]["properties"]) == ["evidence", "status"]
    assert schema["properties"]["topics"]["items"]["properties"]["topic"]["enum"] == [
        "cancelamento",
        "internet",
    ]


def test_mark_done_accepts_grounded_report(conn: psycopg.Connection[Any]) -> None:
    item, s = one_item(conn)
    r = report_for(s, excerpt="  MINHA   internet caiu ")  # case and whitespace normalised
    out = conn.execute(
        "SELECT * FROM parecer.mark_done(%s, %s, %s, 'gpt-x', %s, %s)",
        (
            item["analysis_id"],
            item["lease_token"],
            json.dumps(r),
            "a" * 64,
            json.dumps({"input_tokens": 10}),
        ),
    ).fetchone()
    assert out == {"status": "done", "retry_count": 0, "next_retry_at": None}
    rep = conn.execute("SELECT * FROM parecer.reports").fetchone()
    assert (
        rep is not None
        and rep["report"] == r
        and rep["model"] == "gpt-x"
        and rep["script_version"] == 1
    )


def _mutations(s: Any) -> list[tuple[str, Any, str]]:
    good = report_for(s)
    out: list[tuple[str, Any, str]] = []

    def mut(name: str, f: Any, code: str) -> None:
        r = copy.deepcopy(good)
        f(r)
        out.append((name, r, code))

    mut("missing summary", lambda r: r.pop("summary"), errors.INVALID_REPORT)
    mut("extra key", lambda r: r.update(extra=1), errors.INVALID_REPORT)
    mut("bad status", lambda r: r["outcome"].update(status="great"), errors.INVALID_REPORT)
    mut("bad sentiment", lambda r: r["sentiment"].update(end=3), errors.INVALID_REPORT)
    mut("missing topic", lambda r: r["topics"].pop(), errors.INVALID_REPORT)
    mut(
        "duplicate topic",
        lambda r: r["topics"].append(copy.deepcopy(r["topics"][0])),
        errors.INVALID_REPORT,
    )
    mut("unknown topic", lambda r: r["topics"][0].update(topic="other"), errors.INVALID_REPORT)
    mut("confidence > 1", lambda r: r["topics"][0].update(confidence=1.5), errors.INVALID_REPORT)
    mut("evidence not array", lambda r: r["outcome"].update(evidence={}), errors.INVALID_REPORT)
    mut(
        "empty excerpt",
        lambda r: r["outcome"].update(evidence=[{"message_id": s.message_ids[0], "excerpt": " "}]),
        errors.INVALID_REPORT,
    )
    mut(
        "bad flag",
        lambda r: r["flags"].append({"evidence": [], "flag": "nice"}),
        errors.INVALID_REPORT,
    )
    mut("wrong version", lambda r: r.update(schema_version="v0"), errors.INVALID_REPORT)
    mut(
        "fabricated id",
        lambda r: r["outcome"].update(evidence=[{"message_id": "nope", "excerpt": "internet"}]),
        errors.UNGROUNDED_REPORT,
    )
    mut(
        "fabricated excerpt",
        lambda r: r["outcome"].update(
            evidence=[{"message_id": s.message_ids[0], "excerpt": "quero cancelar"}]
        ),
        errors.UNGROUNDED_REPORT,
    )
    mut(
        "other session's message",
        lambda r: r["topics"][1].update(
            evidence=[{"message_id": "ses-x-m000", "excerpt": "internet"}]
        ),
        errors.UNGROUNDED_REPORT,
    )
    return out


def test_bad_reports_are_rejected_and_change_nothing(conn: psycopg.Connection[Any]) -> None:
    item, s = one_item(conn)
    make_session(conn)  # another session whose messages must not ground this report
    for name, report, code in _mutations(s) + [
        ("not an object", [1], errors.INVALID_REPORT),
        ("null", None, errors.INVALID_REPORT),
    ]:
        before = table_checksum(conn)
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(
                "SELECT parecer.mark_done(%s, %s, %s, 'm', %s)",
                (
                    item["analysis_id"],
                    item["lease_token"],
                    None if report is None else json.dumps(report),
                    "a" * 64,
                ),
            )
        assert errors.sqlstate(exc.value) == code, name
        assert exc.value.diag.message_hint, name
        assert table_checksum(conn) == before, name


def test_prompts_for_gives_each_item_what_prompt_for_gives(conn: psycopg.Connection[Any]) -> None:
    script = make_script(conn)
    sessions = [make_session(conn), make_session(conn, messages=300)]
    conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s)",
        ([s.session_id for s in sessions], script["script_id"]),
    )
    items = conn.execute("SELECT * FROM parecer.claim('w', 2)").fetchall()
    conn.execute("SELECT parecer.set_setting('max_input_tokens', %s)", ("3000",))
    unknown = "00000000-0000-0000-0000-000000000000"
    ids = [items[0]["analysis_id"], UUID(unknown), items[1]["analysis_id"]]
    rows = conn.execute("SELECT * FROM parecer.prompts_for(%s::uuid[])", (ids,)).fetchall()
    assert [r["analysis_id"] for r in rows] == [
        items[0]["analysis_id"],
        UUID(unknown),
        items[1]["analysis_id"],
    ]
    assert (rows[1]["sqlstate"], rows[1]["message"], rows[1]["prompt_hash"]) == (
        "PR011",
        f"unknown analysis {unknown}",
        None,
    )
    recorded = {
        r["analysis_id"]: (r["given_prompt_hash"], r["omitted_messages"])
        for r in conn.execute(
            "SELECT analysis_id, given_prompt_hash, omitted_messages FROM parecer.analyses"
        )
    }
    for r in (rows[0], rows[2]):
        assert r["sqlstate"] is None and r["message"] is None
        assert recorded[r["analysis_id"]] == (r["prompt_hash"], r["omitted_messages"])
        single = one(conn, "SELECT * FROM parecer.prompt_for(%s)", (r["analysis_id"],))
        assert single == {
            k: v for k, v in r.items() if k not in ("analysis_id", "sqlstate", "message")
        }
    assert rows[2]["omitted_messages"] > 0  # the long session went through the size policy
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(
            "SELECT * FROM parecer.prompts_for(ARRAY[ARRAY[%s]]::uuid[])", (UUID(unknown),)
        )
    assert errors.sqlstate(exc.value) == errors.INVALID_ARGUMENT
    assert conn.execute("SELECT * FROM parecer.prompts_for('{}'::uuid[])").fetchall() == []


def test_prompts_for_builds_a_batch_of_several_scripts_as_prompt_for_does(
    conn: psycopg.Connection[Any],
) -> None:
    """One statement builds the batch (each script's texts and budget once, the
    transcripts inlined): items of two scripts in two languages, a session the size
    policy cuts and one too large to send get, each, what prompt_for gives them; only a
    call that records a prompt switches its transaction's synchronous_commit off."""
    pt = make_script(conn)
    en = one(
        conn,
        "SELECT script_id FROM parecer.create_script_version('acme', 'en', 'Rate it.',"
        " topics => '{internet}', language => 'en')",
    )
    short, long_, huge = three_sizes(conn)
    for sid in (pt["script_id"], en["script_id"]):
        conn.execute(
            "SELECT * FROM parecer.enqueue(%s, %s)",
            ([short.session_id, long_.session_id, huge.session_id], sid),
        )
    conn.execute("SELECT parecer.set_setting('max_input_tokens', %s)", ("5000",))
    ids = [r["analysis_id"] for r in conn.execute("SELECT * FROM parecer.claim('w', 6)")]
    assert len(ids) == 6
    rows = conn.execute("SELECT * FROM parecer.prompts_for(%s::uuid[])", (ids,)).fetchall()
    assert [r["analysis_id"] for r in rows] == ids
    assert {r["sqlstate"] for r in rows} == {None, "PR016"}
    assert any(r["omitted_messages"] for r in rows), "the size policy cut a session"
    for r in rows:
        if r["sqlstate"] is None:
            single = one(conn, "SELECT * FROM parecer.prompt_for(%s)", (r["analysis_id"],))
            assert single == {
                k: v for k, v in r.items() if k not in ("analysis_id", "sqlstate", "message")
            }
        else:
            with pytest.raises(psycopg.Error) as exc:
                conn.execute("SELECT * FROM parecer.prompt_for(%s)", (r["analysis_id"],))
            assert (errors.sqlstate(exc.value), exc.value.diag.message_primary) == (
                r["sqlstate"],
                r["message"],
            )
    before = one(conn, "SHOW synchronous_commit")["synchronous_commit"]
    with conn.transaction():
        conn.execute("SELECT * FROM parecer.prompts_for(%s::uuid[])", ([UUID(int=0)],))
        assert one(conn, "SHOW synchronous_commit")["synchronous_commit"] == before
        conn.execute("SELECT * FROM parecer.prompts_for(%s::uuid[])", (ids,))
        assert one(conn, "SHOW synchronous_commit")["synchronous_commit"] == "off"
    assert one(conn, "SHOW synchronous_commit")["synchronous_commit"] == before


def test_mark_done_stores_the_omitted_count_prompt_for_gave(conn: psycopg.Connection[Any]) -> None:
    item, s = one_item(conn, messages=300)
    conn.execute("SELECT parecer.set_setting('max_input_tokens', %s)", ("3000",))
    p = one(conn, "SELECT * FROM parecer.prompt_for(%s)", (item["analysis_id"],))
    assert p["omitted_messages"] > 0
    # the setting changes before the report comes back: the report keeps what its prompt left out
    conn.execute("SELECT parecer.set_setting('max_input_tokens', NULL)")
    conn.execute(
        "SELECT * FROM parecer.mark_done(%s, %s, %s, 'm', %s)",
        (item["analysis_id"], item["lease_token"], json.dumps(report_for(s)), p["prompt_hash"]),
    )
    assert one(conn, "SELECT omitted_messages FROM parecer.reports") == {
        "omitted_messages": p["omitted_messages"]
    }


def test_claim_with_prompts_is_claim_then_prompt_for(conn: psycopg.Connection[Any]) -> None:
    """One call claims as claim does and gives each item what prompt_for would give its
    lease holder, the hash recorded as prompt_for records it: an item the size policy cuts,
    one too large to send (claimed all the same, with PR016 and no prompt), and one that
    fits; mark_done takes the recorded hash and refuses another (PR017)."""
    script = make_script(conn)
    short, long_, huge = three_sizes(conn)
    sessions = {s.session_id: s for s in (short, long_, huge)}
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", (list(sessions), script["script_id"]))
    conn.execute("SELECT parecer.set_setting('max_input_tokens', %s)", ("5000",))
    for bad in ("''", "NULL"):  # claim's checks, claim's errors, nothing claimed
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(f"SELECT * FROM parecer.claim_with_prompts({bad}, 3)")
        assert errors.sqlstate(exc.value) == errors.INVALID_ARGUMENT
    with conn.transaction():
        rows = conn.execute(
            "SELECT * FROM parecer.claim_with_prompts('w', 3, sync_commit => false)"
        ).fetchall()
        assert one(conn, "SHOW synchronous_commit")["synchronous_commit"] == "off"
        # the lease's own UPDATE records the hashes: each item's row is written once
        # (a second update in the same transaction also ran the scripts foreign key's check)
        writes = one(
            conn,
            "SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relid = 'parecer.analyses'::regclass",
        )
        assert writes["n_tup_upd"] == 3
    assert len(rows) == 3
    claim_cols = [
        r["attname"]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'parecer.claimed_item'::regclass"
            " AND attnum > 0 ORDER BY attnum"
        )
    ]
    assert list(rows[0])[: len(claim_cols)] == claim_cols  # claim's columns first
    by_session = {r["session_id"]: r for r in rows}
    too_large = by_session[huge.session_id]
    assert (too_large["sqlstate"], too_large["prompt_hash"], too_large["input"]) == (
        "PR016",
        None,
        None,
    )
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("SELECT * FROM parecer.prompt_for(%s)", (too_large["analysis_id"],))
    assert (errors.sqlstate(exc.value), exc.value.diag.message_primary) == (
        "PR016",
        too_large["message"],
    )
    recorded = {
        r["analysis_id"]: r
        for r in conn.execute(
            "SELECT analysis_id, status, lease_token, given_prompt_hash, omitted_messages,"
            " prompt_given_at FROM parecer.analyses"
        )
    }
    assert (
        recorded[too_large["analysis_id"]]["given_prompt_hash"],
        recorded[too_large["analysis_id"]]["prompt_given_at"],
    ) == (None, None)
    assert by_session[long_.session_id]["omitted_messages"] > 0  # the size policy cut it
    for sid in (short.session_id, long_.session_id):
        r = by_session[sid]
        a = recorded[r["analysis_id"]]
        assert (a["status"], a["lease_token"]) == ("processing", r["lease_token"])
        assert (a["given_prompt_hash"], a["omitted_messages"]) == (
            r["prompt_hash"],
            r["omitted_messages"],
        )
        assert a["prompt_given_at"] is not None
        assert r["sqlstate"] is None and r["message"] is None
        single = one(conn, "SELECT * FROM parecer.prompt_for(%s)", (r["analysis_id"],))
        assert single == {k: r[k] for k in single}, "what prompt_for gives the lease holder"
        assert (
            r["prompt_hash"]
            == hashlib.sha256((r["instructions"] + "\n\n" + r["input"]).encode()).hexdigest()
        )
    r = by_session[short.session_id]
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(
            "SELECT * FROM parecer.mark_done(%s, %s, %s, 'm', %s)",
            (r["analysis_id"], r["lease_token"], json.dumps(report_for(short)), "0" * 64),
        )
    assert errors.sqlstate(exc.value) == "PR017"
    done = one(
        conn,
        "SELECT * FROM parecer.mark_done(%s, %s, %s, 'm', %s)",
        (r["analysis_id"], r["lease_token"], json.dumps(report_for(short)), r["prompt_hash"]),
    )
    assert done["status"] == "done"
    assert conn.execute("SELECT * FROM parecer.claim_with_prompts('w', 3)").fetchall() == []


# A host adapter whose cast fails on one message (a body that should have been a
# number): reading that session's messages raises 22P02, as a real adapter's cast
# of the host's data can.
POISONED_ADAPTER = """
CREATE OR REPLACE VIEW parecer.source_messages AS
SELECT m.id AS message_id, m.session_id, m.from_me,
       COALESCE(m.updated_at_external, m.created_at_external, m.created_at) AS sent_at,
       m.media_type,
       CASE WHEN m.body LIKE 'n=%' THEN (substr(m.body, 3)::integer)::text ELSE m.body END AS body,
       m.transcription
FROM chat.messages m
"""


def test_claim_with_prompts_keeps_the_claim_when_the_hosts_data_breaks_the_batch(
    conn: psycopg.Connection[Any],
) -> None:
    """One statement builds a claim's prompts: when the host's data makes it fail, the
    items stay claimed, each row carries the error and no prompt, and prompt_for per item
    fails only the item whose data is bad (the runner's path for a row without prompt)."""
    script = make_script(conn)
    good = [make_session(conn) for _ in range(2)]
    bad = make_session(conn)
    conn.execute(
        "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, created_at,"
        " created_at_external) VALUES (%s, %s, false, 'text', 'n=doze', now(), now())",
        (bad.session_id + "-n", bad.session_id),
    )
    conn.execute(POISONED_ADAPTER)
    conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s)",
        ([s.session_id for s in (*good, bad)], script["script_id"]),
    )
    rows = conn.execute("SELECT * FROM parecer.claim_with_prompts('w', 3)").fetchall()
    assert len(rows) == 3
    assert {(r["sqlstate"], r["prompt_hash"], r["input"]) for r in rows} == {("22P02", None, None)}
    assert all("integer" in r["message"] for r in rows)
    leased = one(
        conn,
        "SELECT count(*) AS n FROM parecer.analyses WHERE status = 'processing'"
        " AND given_prompt_hash IS NULL",
    )
    assert leased["n"] == 3, "claimed, nothing recorded"
    by_session = {r["session_id"]: r for r in rows}
    for s in good:
        p = one(
            conn, "SELECT * FROM parecer.prompt_for(%s)", (by_session[s.session_id]["analysis_id"],)
        )
        assert p["prompt_hash"]
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(
            "SELECT * FROM parecer.prompt_for(%s)", (by_session[bad.session_id]["analysis_id"],)
        )
    assert errors.sqlstate(exc.value) == "22P02"


def test_a_claim_of_one_item_is_planned_once(conn: psycopg.Connection[Any]) -> None:
    """A steady runner claims one or two items at a time: claim_with_prompts plans its
    statements once per connection, not on every claim (before: its last statement got a
    custom plan per call, the few ids making the custom plan look cheaper than the generic
    one). log_planner_stats logs each planning of the calls after the warm-up: none."""
    script = make_script(conn)
    sessions = [make_session(conn, messages=2).session_id for _ in range(12)]
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", (sessions, script["script_id"]))
    for _ in range(8):  # past plancache's five custom plans, whatever it then decides
        assert len(conn.execute("SELECT * FROM parecer.claim_with_prompts('w', 1)").fetchall()) == 1
    plannings: list[str] = []
    conn.add_notice_handler(
        lambda d: (
            plannings.append(d.message_primary or "")
            if "PLANNER STATISTICS" in (d.message_primary or "")
            else None
        )
    )
    conn.execute("SET log_planner_stats = on")
    conn.execute("SET client_min_messages = log")
    try:
        for _ in range(3):
            rows = conn.execute("SELECT * FROM parecer.claim_with_prompts('w', 1)").fetchall()
            assert len(rows) == 1 and rows[0]["prompt_hash"] is not None
    finally:
        conn.execute("RESET client_min_messages")
        conn.execute("RESET log_planner_stats")
    # (the top-level SELECT, prepared by psycopg after five runs, is not planned again either)
    assert plannings == []
