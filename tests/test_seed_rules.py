"""Seed rules: the 24-hour rule (min_idle), duplicated source sessions (PR015),
changed sessions (fingerprint, stale_reports, reanalyse_changed) and check_adapter."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg import sql

from parecer import errors

from .factories import make_script, make_session, report_for
from .helpers import one


def _eligible(conn: psycopg.Connection[Any], **kw: Any) -> list[str]:
    args = "".join(f", {k} => %({k})s" for k in kw)
    rows = conn.execute(f"SELECT * FROM parecer.eligible_sessions('acme'{args})", kw).fetchall()
    return [r["session_id"] for r in rows]


def test_min_idle_setting_applies_to_every_run_unless_it_asks_for_less(
    conn: psycopg.Connection[Any],
) -> None:
    now = datetime.now(timezone.utc)
    old = make_session(conn, ended_at=now - timedelta(days=3))
    recent = make_session(conn, ended_at=now - timedelta(hours=2))
    future = make_session(conn, ended_at=now + timedelta(hours=2))
    # ended 30 hours ago, but a late message arrived an hour ago: idle since that message
    late = make_session(conn, ended_at=now - timedelta(hours=30))
    conn.execute(
        "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, created_at)"
        " VALUES (%s, %s, false, 'text', 'ainda estou aqui', %s)",
        (late.session_id + "-late", late.session_id, now - timedelta(hours=1)),
    )
    assert _eligible(conn) == [old.session_id]
    assert set(_eligible(conn, min_idle=timedelta(minutes=30))) == {
        old.session_id,
        recent.session_id,
        late.session_id,
    }
    # an end in the future is never eligible, whatever the run asks
    assert future.session_id not in _eligible(conn, min_idle=timedelta(0))

    make_script(conn)
    dry = one(conn, "SELECT * FROM parecer.start_run('acme', 'qa', dry_run => true)")
    assert (dry["eligible"], dry["min_idle"], dry["note"]) == (1, timedelta(hours=24), None)
    less = one(
        conn,
        "SELECT * FROM parecer.start_run('acme', 'qa', dry_run => true, min_idle => '90 minutes')",
    )
    assert less["eligible"] == 2 and less["min_idle"] == timedelta(minutes=90)
    assert less["note"].startswith("min_idle 01:30:00 is below the min_idle setting (24:00:00)")

    # the setting moves every run; the run records the rule it applied
    conn.execute("SELECT parecer.set_setting('min_idle', '90 minutes')")
    real = one(conn, "SELECT * FROM parecer.start_run('acme', 'qa')")
    assert real["enqueued"] == 2 and real["note"] is None
    params = one(conn, "SELECT params FROM parecer.runs WHERE run_id = %s", (real["run_id"],))
    assert params["params"]["min_idle"] == "01:30:00"


@pytest.mark.parametrize("bad", ["soon", "-1 hour", "400 days"])
def test_min_idle_setting_is_validated(conn: psycopg.Connection[Any], bad: str) -> None:
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("SELECT parecer.set_setting('min_idle', %s)", (bad,))
    assert errors.sqlstate(exc.value) == errors.BAD_SETTING
    assert exc.value.diag.message_hint is not None


def test_negative_min_idle_argument_is_pr010(conn: psycopg.Connection[Any]) -> None:
    make_session(conn)
    with pytest.raises(psycopg.Error) as exc:
        _eligible(conn, min_idle=timedelta(hours=-1))
    assert errors.sqlstate(exc.value) == errors.INVALID_ARGUMENT


def _duplicate_sessions(conn: psycopg.Connection[Any], session_id: str) -> None:
    """An adapter whose join gives a session two rows (e.g. two tickets)."""
    q = """
        CREATE OR REPLACE VIEW parecer.source_sessions AS
        SELECT s.id AS session_id, t.client_id, t.contact_id, s.ended_at
        FROM chat.sessions s JOIN chat.tickets t ON t.id = s.ticket_id
        UNION ALL
        SELECT s.id, t.client_id, t.contact_id, s.ended_at - interval '1 minute'
        FROM chat.sessions s JOIN chat.tickets t ON t.id = s.ticket_id
        WHERE s.id = {}"""
    conn.execute(sql.SQL(q).format(sql.Literal(session_id)))


def test_duplicated_source_session_is_pr015_naming_it(conn: psycopg.Connection[Any]) -> None:
    script = make_script(conn)
    sessions = [make_session(conn) for _ in range(2)]
    dup = sessions[1]
    _duplicate_sessions(conn, dup.session_id)
    for query, args in (
        ("SELECT * FROM parecer.start_run('acme', 'qa', dry_run => true)", None),
        ("SELECT * FROM parecer.start_run('acme', 'qa')", None),
        ("SELECT * FROM parecer.enqueue(%s, %s)", ([dup.session_id], script["script_id"])),
        (
            "SELECT * FROM parecer.enqueue(%s, %s, force_reprocess => true)",
            ([dup.session_id], script["script_id"]),
        ),
    ):
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(query, args)
        assert errors.sqlstate(exc.value) == errors.DUPLICATE_SESSION, query
        primary = exc.value.diag.message_primary
        assert primary is not None and dup.session_id in primary
    rows = {r["check_name"]: r for r in conn.execute("SELECT * FROM parecer.check_adapter()")}
    assert rows["duplicate_session_ids"]["status"] == "error"
    assert rows["duplicate_session_ids"]["count"] == 1
    assert dup.session_id in rows["duplicate_session_ids"]["detail"]


def test_check_adapter_on_the_reference_adapter(conn: psycopg.Connection[Any]) -> None:
    now = datetime.now(timezone.utc)
    make_session(conn, messages=3)
    fut = make_session(conn, messages=2, ended_at=now + timedelta(days=1))
    conn.execute("DELETE FROM chat.messages WHERE session_id = %s", (fut.session_id,))
    conn.execute("ALTER TABLE chat.messages DROP CONSTRAINT IF EXISTS messages_session_id_fkey")
    conn.execute(
        "INSERT INTO chat.messages (id, session_id, from_me, media_type, body) "
        "VALUES ('orphan', 'no-such-session', false, 'text', 'x')"
    )
    rows = {r["check_name"]: r for r in conn.execute("SELECT * FROM parecer.check_adapter()")}
    assert rows["sessions"]["count"] == 2 and rows["messages"]["count"] == 4
    assert (rows["future_ended_at"]["status"], rows["future_ended_at"]["count"]) == ("warn", 1)
    assert fut.session_id in rows["future_ended_at"]["detail"]
    assert (rows["messages_without_session"]["count"], rows["duplicate_session_ids"]["status"]) == (
        1,
        "ok",
    )
    for key in ("sessions.session_id", "messages.session_id", "contact_tags.contact_id"):
        assert rows[f"index:source_{key}"]["status"] == "ok", rows[f"index:source_{key}"]
    # without the host's index on messages.session_id the lookup scans the table
    for ix in conn.execute(
        "SELECT indexrelid::regclass::text AS ix FROM pg_index i "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE i.indrelid = 'chat.messages'::regclass AND a.attname = 'session_id'"
    ).fetchall():
        conn.execute(f"DROP INDEX {ix['ix']}")
    rows = {r["check_name"]: r for r in conn.execute("SELECT * FROM parecer.check_adapter()")}
    assert rows["index:source_messages.session_id"]["status"] == "warn"
    assert "messages" in rows["index:source_messages.session_id"]["detail"]


def _done(conn: psycopg.Connection[Any], sessions: dict[str, Any]) -> None:
    while True:
        item = conn.execute("SELECT * FROM parecer.claim('w')").fetchone()
        if item is None:
            return
        conn.execute(
            "SELECT * FROM parecer.mark_done(%s, %s, %s, 'm', %s)",
            (
                item["analysis_id"],
                item["lease_token"],
                json.dumps(report_for(sessions[item["session_id"]])),
                "a" * 64,
            ),
        )


def test_changed_sessions_are_listed_and_reanalysed(conn: psycopg.Connection[Any]) -> None:
    make_script(conn)
    ss = {s.session_id: s for s in (make_session(conn) for _ in range(3))}
    conn.execute("SELECT * FROM parecer.start_run('acme', 'qa')")
    _done(conn, ss)
    fp = conn.execute(
        "SELECT DISTINCT analysed_message_count AS n FROM parecer.analyses WHERE status = 'done'"
    ).fetchall()
    assert fp == [{"n": 25}]
    assert conn.execute("SELECT * FROM parecer.stale_reports").fetchall() == []

    changed = sorted(ss)[0]
    conn.execute(
        "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, created_at)"
        " VALUES (%s, %s, false, 'text', 'mais uma coisa', now() - interval '2 days')",
        (changed + "-late", changed),
    )
    stale = conn.execute("SELECT * FROM parecer.stale_reports").fetchall()
    assert [(r["session_id"], r["analysed_message_count"], r["message_count"]) for r in stale] == [
        (changed, 25, 26)
    ]
    # without the option a run moves on; with it the changed session is queued again
    plain = one(conn, "SELECT * FROM parecer.start_run('acme', 'qa', dry_run => true)")
    assert (plain["would_enqueue"], plain["changed"]) == (0, 0)
    again = one(conn, "SELECT * FROM parecer.start_run('acme', 'qa', reanalyse_changed => true)")
    assert (again["changed"], again["reset"], again["enqueued"]) == (1, 1, 0)
    state = one(conn, "SELECT status FROM parecer.analyses WHERE session_id = %s", (changed,))
    assert state["status"] == "pending"
    _done(conn, ss)
    assert conn.execute("SELECT * FROM parecer.stale_reports").fetchall() == []


def test_a_batch_of_reports_records_each_session_as_analysed(conn: psycopg.Connection[Any]) -> None:
    """mark_done_many records every item's fingerprint as mark_done does: each session's own
    message count and last message time, from the one UPDATE that stores the batch."""
    make_script(conn)
    ss = {s.session_id: s for s in (make_session(conn, messages=n) for n in (20, 23, 27))}
    conn.execute("SELECT * FROM parecer.start_run('acme', 'qa')")
    items = conn.execute("SELECT * FROM parecer.claim('w', 10)").fetchall()
    assert len(items) == 3
    out = conn.execute(
        "SELECT outcome FROM parecer.mark_done_many(%s)",
        (
            json.dumps(
                [
                    {
                        "analysis_id": str(i["analysis_id"]),
                        "lease_token": str(i["lease_token"]),
                        "report": report_for(ss[i["session_id"]]),
                        "model": "m",
                        "prompt_hash": "a" * 64,
                    }
                    for i in items
                ]
            ),
        ),
    ).fetchall()
    assert [o["outcome"] for o in out] == ["done"] * 3
    rows = conn.execute(
        "SELECT a.analysed_message_count AS n, a.analysed_last_message_at AS last,"
        " (SELECT count(*) FROM parecer.source_messages m WHERE m.session_id = a.session_id) AS source_n,"
        " (SELECT max(m.sent_at) FROM parecer.source_messages m WHERE m.session_id = a.session_id)"
        " AS source_last FROM parecer.analyses a"
    ).fetchall()
    assert sorted(r["n"] for r in rows) == [20, 23, 27]
    assert all(r["n"] == r["source_n"] and r["last"] == r["source_last"] for r in rows)
    assert conn.execute("SELECT * FROM parecer.stale_reports").fetchall() == []
