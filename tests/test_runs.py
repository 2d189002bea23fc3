"""Eligibility, start_run (dry and real), run_summary, scripts."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from parecer import errors

from .factories import ended, make_script, make_session, report_for
from .helpers import table_checksum


def eligible(conn: psycopg.Connection[Any], **kw: Any) -> list[str]:
    args = "".join(f", {k} => %({k})s" for k in kw)
    rows = conn.execute(
        f"SELECT * FROM parecer.eligible_sessions('acme'{args})",
        {k: (json.dumps(v) if k == "tag_filter" else v) for k, v in kw.items()},
    ).fetchall()
    return [r["session_id"] for r in rows]


def test_eligibility_rules(conn: psycopg.Connection[Any]) -> None:
    ok = make_session(conn, messages=20)
    short = make_session(conn, messages=19)
    open_ = make_session(conn, messages=30, ended_at=None)
    tagged = make_session(conn, messages=30, tags=["vip"])
    both = make_session(conn, messages=30, tags=["vip", "lead"])
    silent = make_session(conn, messages=30, agent_replies=False)
    make_session(conn, "other", messages=30)

    assert set(eligible(conn)) == {ok.session_id, silent.session_id}
    assert short.session_id in eligible(conn, min_messages=19)
    assert open_.session_id not in eligible(conn, min_messages=1, tag_filter={"mode": "ignore"})
    assert set(eligible(conn, tag_filter={"mode": "any_of", "tags": ["vip"]})) == {
        tagged.session_id,
        both.session_id,
    }
    assert set(eligible(conn, tag_filter={"mode": "all_of", "tags": ["vip", "lead"]})) == {
        both.session_id
    }
    assert set(eligible(conn, tag_filter={"mode": "none_of", "tags": ["lead"]})) == {
        ok.session_id,
        silent.session_id,
        tagged.session_id,
    }
    assert set(eligible(conn, require_agent_reply=True)) == {ok.session_id}


def test_eligibility_inactivity_window_and_counts(conn: psycopg.Connection[Any]) -> None:
    now = datetime.now(timezone.utc)
    recent = make_session(conn, ended_at=now - timedelta(hours=2))
    old = make_session(conn, ended_at=now - timedelta(days=3))
    rows = conn.execute(
        "SELECT * FROM parecer.eligible_sessions('acme', ended_before => now() - interval '24 hours')"
    ).fetchall()
    assert [r["session_id"] for r in rows] == [old.session_id]
    assert rows[0]["message_count"] == 25
    # the 24-hour rule (setting min_idle) keeps the recent session out unless a run asks for less
    assert eligible(conn, ended_after=now - timedelta(hours=3)) == []
    assert eligible(conn, ended_after=now - timedelta(hours=3), min_idle=timedelta(hours=1)) == [
        recent.session_id
    ]


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        "none",
        {"mode": "maybe"},
        {"mode": "any_of"},
        {"mode": "any_of", "tags": []},
        {"mode": "any_of", "tags": [1]},
        {"mode": "none", "tags": ["x"]},
        {"mode": "all_of", "tags": [""]},
        {"mode": "none", "extra": 1},
        {"mode": ["none"]},
    ],
)
def test_bad_tag_filters_raise_pr004(conn: psycopg.Connection[Any], bad: Any) -> None:
    make_session(conn)
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(
            "SELECT * FROM parecer.eligible_sessions('acme', tag_filter => %s)",
            (None if bad is None else json.dumps(bad),),
        )
    assert errors.sqlstate(exc.value) == errors.BAD_TAG_FILTER


def test_dry_run_counts_and_writes_nothing(conn: psycopg.Connection[Any]) -> None:
    script = make_script(conn)
    sessions = [make_session(conn) for _ in range(6)]
    ids = [s.session_id for s in sessions]
    # one done, one pending, one failed in backoff
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", (ids[:3], script["script_id"]))
    items = conn.execute("SELECT * FROM parecer.claim('w', 3)").fetchall()
    by_session = {i["session_id"]: i for i in items}
    done = by_session[ids[0]]
    conn.execute(
        "SELECT parecer.mark_done(%s, %s, %s, 'm', %s)",
        (done["analysis_id"], done["lease_token"], json.dumps(report_for(sessions[0])), "e" * 64),
    )
    conn.execute(
        "SELECT parecer.release(%s, %s)",
        (by_session[ids[1]]["analysis_id"], by_session[ids[1]]["lease_token"]),
    )
    conn.execute(
        "SELECT parecer.mark_failed(%s, %s, 'x')",
        (by_session[ids[2]]["analysis_id"], by_session[ids[2]]["lease_token"]),
    )

    before = table_checksum(conn)
    r = conn.execute("SELECT * FROM parecer.start_run('acme', 'qa', dry_run => true)").fetchone()
    assert table_checksum(conn) == before
    assert r == {
        "run_id": None,
        "dry_run": True,
        "eligible": 6,
        "already_done": 1,
        "already_queued": 2,
        "would_enqueue": 5,
        "would_process_now": 4,
        "enqueued": 0,
        "reset": 0,
        "estimated_cost_usd": None,
        "min_idle": timedelta(hours=24),
        "note": None,
        "changed": 0,
    }
    forced = conn.execute(
        "SELECT * FROM parecer.start_run('acme', 'qa', dry_run => true, force_reprocess => true)"
    ).fetchone()
    assert forced is not None and forced["would_enqueue"] == 6 and forced["would_process_now"] == 6
    capped = conn.execute(
        "SELECT * FROM parecer.start_run('acme', 'qa', dry_run => true, max_sessions => 2)"
    ).fetchone()
    assert capped is not None and capped["would_enqueue"] == 2


def test_real_run_enqueues_newest_and_summarises(conn: psycopg.Connection[Any]) -> None:
    make_script(conn)
    sessions = [make_session(conn) for _ in range(5)]
    r = conn.execute("SELECT * FROM parecer.start_run('acme', 'qa', max_sessions => 3)").fetchone()
    assert r is not None and r["run_id"] is not None
    assert (r["eligible"], r["would_enqueue"], r["enqueued"], r["reset"]) == (5, 3, 3, 0)
    newest = sorted(sessions, key=ended, reverse=True)[:3]
    queued = {
        row["session_id"]
        for row in conn.execute("SELECT session_id FROM parecer.analyses").fetchall()
    }
    assert queued == {s.session_id for s in newest}

    items = conn.execute("SELECT * FROM parecer.claim('w', 3)").fetchall()
    by = {s.session_id: s for s in sessions}
    conn.execute(
        "SELECT parecer.mark_done(%s, %s, %s, 'm', %s)",
        (
            items[0]["analysis_id"],
            items[0]["lease_token"],
            json.dumps(report_for(by[items[0]["session_id"]])),
            "f" * 64,
        ),
    )
    conn.execute(
        "SELECT parecer.mark_failed(%s, %s, 'x')",
        (items[1]["analysis_id"], items[1]["lease_token"]),
    )
    conn.execute(
        "SELECT parecer.mark_failed(%s, %s, 'x', retryable => false)",
        (items[2]["analysis_id"], items[2]["lease_token"]),
    )
    s = conn.execute("SELECT * FROM parecer.run_summary(%s)", (r["run_id"],)).fetchone()
    assert s == {
        "run_id": r["run_id"],
        "processed": 1,
        "failed": 1,
        "retrying": 1,
        "remaining": 1,
        "done_sample": [items[0]["session_id"]],
        "failed_sample": [items[2]["session_id"]],
        "total": 3,
    }

    # a second run over the same sessions adopts the item still queued (retrying) and
    # skips the done and the terminally failed ones
    r2 = conn.execute("SELECT * FROM parecer.start_run('acme', 'qa', max_sessions => 5)").fetchone()
    assert r2 is not None and (
        r2["already_done"],
        r2["already_queued"],
        r2["would_enqueue"],
        r2["enqueued"],
    ) == (1, 1, 3, 2)
    s2 = conn.execute("SELECT * FROM parecer.run_summary(%s)", (r2["run_id"],)).fetchone()
    assert s2 is not None and s2["total"] == 3


def test_max_sessions_cap(conn: psycopg.Connection[Any]) -> None:
    make_script(conn)
    before = table_checksum(conn)
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("SELECT * FROM parecer.start_run('acme', 'qa', max_sessions => 501)")
    assert errors.sqlstate(exc.value) == errors.MAX_SESSIONS_OUT_OF_RANGE
    assert exc.value.diag.message_hint and "max_sessions_cap" in exc.value.diag.message_hint
    assert table_checksum(conn) == before


def test_script_versions_and_activation(conn: psycopg.Connection[Any]) -> None:
    v1 = make_script(conn, activate=True)
    v2 = make_script(conn, activate=False)
    assert (v1["version"], v2["version"]) == (1, 2)
    assert conn.execute("SELECT version FROM parecer.resolve_script('acme', 'qa')").fetchone() == {
        "version": 1
    }
    conn.execute("SELECT * FROM parecer.activate_script('acme', 'qa', 2)")
    assert conn.execute("SELECT version FROM parecer.resolve_script('acme', 'qa')").fetchone() == {
        "version": 2
    }
    rows = conn.execute("SELECT version, is_active FROM parecer.list_scripts('acme')").fetchall()
    assert rows == [{"version": 2, "is_active": True}, {"version": 1, "is_active": False}]
    assert conn.execute(
        "SELECT version FROM parecer.list_scripts('acme', active_only => true)"
    ).fetchall() == [{"version": 2}]
    conn.execute(
        "SELECT * FROM parecer.activate_script('acme', 'qa', 1, deactivate_others => false)"
    )
    assert conn.execute("SELECT version FROM parecer.resolve_script('acme', 'qa')").fetchone() == {
        "version": 2
    }
    assert conn.execute(
        "SELECT version FROM parecer.resolve_script('acme', 'qa', 1)"
    ).fetchone() == {"version": 1}


def test_terminal_failures_are_not_reselected_without_force(conn: psycopg.Connection[Any]) -> None:
    make_script(conn)
    sessions = sorted((make_session(conn) for _ in range(3)), key=ended, reverse=True)
    r = conn.execute("SELECT * FROM parecer.start_run('acme', 'qa', max_sessions => 1)").fetchone()
    assert r is not None and r["enqueued"] == 1
    item = conn.execute("SELECT * FROM parecer.claim('w')").fetchone()
    assert item is not None and item["session_id"] == sessions[0].session_id
    conn.execute(
        "SELECT parecer.mark_failed(%s, %s, 'context length exceeded', retryable => false)",
        (item["analysis_id"], item["lease_token"]),
    )
    # the next run moves on to the next newest session instead of re-selecting the terminal failure
    r2 = conn.execute("SELECT * FROM parecer.start_run('acme', 'qa', max_sessions => 1)").fetchone()
    assert r2 is not None and r2["enqueued"] == 1
    queued = conn.execute(
        "SELECT session_id FROM parecer.analyses WHERE status = 'pending'"
    ).fetchall()
    assert queued == [{"session_id": sessions[1].session_id}]
