"""Shared rate limits, usage and cost, budgets (fail-closed), fair claiming, backlog runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest

from parecer import db, errors
from parecer.devkit.standin import Standin, StandinConfig

from .factories import ended, make_script, make_session, report_for
from .helpers import one


def test_rate_limiter_never_hands_out_more_than_the_limit(db_url: str) -> None:
    with db.connect(db_url) as c:
        c.execute("SELECT * FROM parecer.set_rate_limit('k:m', rpm => 120, tpm => 1000000)")
    granted: list[int] = []
    barrier = threading.Barrier(3)

    def hammer() -> None:
        n = 0
        with db.connect(db_url) as c:
            barrier.wait()
            for _ in range(60):
                if one(c, "SELECT granted FROM parecer.acquire_rate('k:m', 100)")["granted"]:
                    n += 1
        granted.append(n)

    t0 = time.monotonic()
    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    # bucket: 6 s of 120/min = 12 requests, refilled at 2/s while the threads ran
    assert sum(granted) <= 12 + 2 * elapsed + 1
    assert sum(granted) >= 12


def test_429_pauses_every_runner_of_the_key(conn: psycopg.Connection[Any]) -> None:
    assert conn.execute("SELECT granted FROM parecer.acquire_rate('k:m')").fetchone() == {
        "granted": True
    }
    until = conn.execute(
        "SELECT parecer.report_rate('k:m', retry_after_seconds => 30, reason => '429') AS u"
    ).fetchone()
    assert until is not None and until["u"] is not None
    g = conn.execute("SELECT * FROM parecer.acquire_rate('k:m')").fetchone()
    assert g is not None and g["granted"] is False and 25 < g["wait_seconds"] <= 30
    row = conn.execute("SELECT * FROM parecer.rate_limits").fetchone()
    assert row is not None and row["throttled"] == 1 and row["pause_reason"] == "429"


def test_limit_keys_refuse_api_keys(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("SELECT * FROM parecer.acquire_rate('sk-proj-abcdef:gpt-5-mini')")
    assert errors.sqlstate(exc.value) == errors.INVALID_ARGUMENT


def _done_with_usage(
    conn: psycopg.Connection[Any], client: str, usage: dict[str, Any], model: str = "gpt-5-mini"
) -> None:
    script = make_script(conn, client=client)
    s = make_session(conn, client)
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", ([s.session_id], script["script_id"]))
    item = conn.execute("SELECT * FROM parecer.claim('w', client_slug => %s)", (client,)).fetchone()
    assert item is not None
    conn.execute(
        "SELECT parecer.mark_done(%s, %s, %s, %s, %s, %s)",
        (
            item["analysis_id"],
            item["lease_token"],
            json.dumps(report_for(s)),
            model,
            "a" * 64,
            json.dumps(usage),
        ),
    )


def test_cost_is_recorded_per_attempt_and_aggregated(conn: psycopg.Connection[Any]) -> None:
    usage = {"input_tokens": 1_000_000, "cached_input_tokens": 200_000, "output_tokens": 100_000}
    _done_with_usage(conn, "acme", usage, model="gpt-5-mini-2025-08-07")  # priced by prefix
    # gpt-5-mini: 0.25 in, 0.025 cached, 2.00 out per million: 0.8*0.25 + 0.2*0.025 + 0.1*2 = 0.405
    # The done attempt is the item's row (0016): its cost is there, and in the attempt history.
    assert one(conn, "SELECT count(*) AS n FROM parecer._attempts") == {"n": 0}
    assert float(one(conn, "SELECT cost_usd FROM parecer.reports")["cost_usd"]) == pytest.approx(
        0.405
    )
    att = conn.execute("SELECT outcome, usage, cost_usd FROM parecer.attempts").fetchone()
    assert att is not None and att["outcome"] == "done" and att["usage"] == usage
    assert float(att["cost_usd"]) == pytest.approx(0.405)
    d = conn.execute("SELECT * FROM parecer.spend_daily").fetchone()
    assert (
        d is not None
        and d["client_slug"] == "acme"
        and float(d["cost_usd"]) == pytest.approx(0.405)
    )
    assert d["input_tokens"] == 1_000_000 and d["output_tokens"] == 100_000
    est = conn.execute(
        "SELECT parecer.estimate_cost(script_id, 10) AS e FROM parecer.scripts"
    ).fetchone()
    assert est is not None and float(est["e"]) == pytest.approx(4.05)


def test_budget_is_fail_closed_and_alerts_once(db_url: str) -> None:
    with db.connect(db_url) as listener, db.connect(db_url) as c:
        listener.execute("LISTEN parecer_budget")
        make_script(c, client="beta")
        _done_with_usage(c, "acme", {"input_tokens": 0, "output_tokens": 50_000})  # 0.10 USD
        c.execute("SELECT * FROM parecer.set_budget('acme', daily_usd => 0.12)")
        _done_with_usage(c, "acme", {"input_tokens": 0, "output_tokens": 0})  # crosses nothing new
        b = c.execute("SELECT * FROM parecer.budgets WHERE client_slug = 'acme'").fetchone()
        assert b is not None and b["blocked_reason"] is None
        _done_with_usage(c, "acme", {"input_tokens": 0, "output_tokens": 10_000})  # 0.12: 100%
        b = one(c, "SELECT * FROM parecer.budgets WHERE client_slug = 'acme'")
        assert b is not None and b["blocked_reason"].startswith("daily budget reached")
        # acme has work but is over budget: claim hands out only beta's
        script_a = one(c, "SELECT script_id FROM parecer.resolve_script('acme', 'qa')")["script_id"]
        script_b = one(c, "SELECT script_id FROM parecer.resolve_script('beta', 'qa')")["script_id"]
        c.execute(
            "SELECT * FROM parecer.enqueue(%s, %s)",
            ([make_session(c, "acme").session_id], script_a),
        )
        c.execute(
            "SELECT * FROM parecer.enqueue(%s, %s)",
            ([make_session(c, "beta").session_id], script_b),
        )
        got = c.execute("SELECT client_slug FROM parecer.claim('w', 10)").fetchall()
        assert got == [{"client_slug": "beta"}]
        alerts = [json.loads(n.payload) for n in listener.notifies(timeout=0.5, stop_after=10)]
    assert [(a["client"], a["period"], a["threshold"]) for a in alerts] == [
        ("acme", "day", 80),
        ("acme", "day", 100),
    ]


def test_fair_claim_round_robin_weighted_by_priority(conn: psycopg.Connection[Any]) -> None:
    sa, sb = make_script(conn, client="big"), make_script(conn, client="small")
    conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s)",
        ([make_session(conn, "big").session_id for _ in range(30)], sa["script_id"]),
    )
    conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s)",
        ([make_session(conn, "small").session_id for _ in range(3)], sb["script_id"]),
    )
    got = [
        r["client_slug"]
        for r in conn.execute("SELECT client_slug FROM parecer.claim('w', 4)").fetchall()
    ]
    assert sorted(got) == ["big", "big", "small", "small"]  # not starved by big's backlog
    conn.execute("SELECT * FROM parecer.set_client_priority('big', 2)")
    got = [
        r["client_slug"]
        for r in conn.execute("SELECT client_slug FROM parecer.claim('w', 3)").fetchall()
    ]
    assert sorted(got) == ["big", "big", "small"]


def test_budgets_and_priority_are_set_apart(conn: psycopg.Connection[Any]) -> None:
    """set_budget keeps the priority, set_client_priority keeps the budgets, for a client
    with no policy row yet (no work queued) as for one that has it; a bad value changes nothing."""
    make_session(conn, "fresh")  # a client of the source, never queued
    row = one(conn, "SELECT * FROM parecer.set_client_priority('fresh', 3)")
    assert (row["priority"], row["daily_budget_usd"]) == (3, None)
    row = one(conn, "SELECT * FROM parecer.set_budget('fresh', daily_usd => 2, monthly_usd => 40)")
    assert (row["priority"], row["daily_budget_usd"], row["monthly_budget_usd"]) == (3, 2, 40)
    row = one(conn, "SELECT * FROM parecer.set_client_priority('fresh', 5)")
    assert (row["priority"], row["daily_budget_usd"], row["monthly_budget_usd"]) == (5, 2, 40)
    make_session(conn, "other")
    row = one(conn, "SELECT * FROM parecer.set_budget('other', daily_usd => 1)")
    assert (row["priority"], row["daily_budget_usd"], row["monthly_budget_usd"]) == (1, 1, None)
    for sql, code in (
        ("SELECT parecer.set_budget('fresh', daily_usd => -1)", errors.INVALID_ARGUMENT),
        ("SELECT parecer.set_client_priority('fresh', 0)", errors.INVALID_ARGUMENT),
        ("SELECT parecer.set_client_priority('nobody', 2)", errors.UNKNOWN_CLIENT),
    ):
        with pytest.raises(psycopg.Error) as exc, conn.transaction():
            conn.execute(sql)
        assert errors.sqlstate(exc.value) == code
    row = one(conn, "SELECT * FROM parecer.budgets WHERE client_slug = 'fresh'")
    assert (row["priority"], row["daily_budget_usd"], row["monthly_budget_usd"]) == (5, 2, 40)


def test_backlog_run_waits_for_fresh_work_and_goes_oldest_first(
    conn: psycopg.Connection[Any],
) -> None:
    make_script(conn)
    old = [make_session(conn) for _ in range(3)]
    r = conn.execute("SELECT * FROM parecer.start_run('acme', 'qa')").fetchone()
    assert r is not None
    assert conn.execute("SELECT parecer.set_run_backlog(%s) AS n", (r["run_id"],)).fetchone() == {
        "n": 3
    }
    fresh = make_session(conn)
    conn.execute("SELECT * FROM parecer.start_run('acme', 'qa')")
    got = [
        x["session_id"]
        for x in conn.execute("SELECT session_id FROM parecer.claim('w', 3)").fetchall()
    ]
    oldest_first = [s.session_id for s in sorted(old, key=ended)]
    assert got == [fresh.session_id] + oldest_first[:2]


def test_claims_of_one_item_follow_the_same_order(conn: psycopg.Connection[Any]) -> None:
    """Claiming one item at a time (the one-statement path of a single client) hands out what claiming
    them all at once would: fresh work newest-ended first, then the backlog oldest first."""
    make_script(conn)
    old = [make_session(conn) for _ in range(3)]
    r = conn.execute("SELECT * FROM parecer.start_run('acme', 'qa')").fetchone()
    assert r is not None
    conn.execute("SELECT parecer.set_run_backlog(%s)", (r["run_id"],))
    fresh = [make_session(conn) for _ in range(2)]
    conn.execute("SELECT * FROM parecer.start_run('acme', 'qa')")
    with conn.transaction() as tx:
        every = [
            x["session_id"]
            for x in conn.execute("SELECT session_id FROM parecer.claim('w', 10)").fetchall()
        ]
        tx.force_rollback = True
    one_by_one = []
    while (
        row := conn.execute("SELECT session_id FROM parecer.claim('w', 1)").fetchone()
    ) is not None:
        one_by_one.append(row["session_id"])
    newest_first = [s.session_id for s in sorted(fresh, key=ended, reverse=True)]
    oldest_first = [s.session_id for s in sorted(old, key=ended)]
    assert one_by_one == every == newest_first + oldest_first


@pytest.mark.slow
def test_two_runner_processes_share_one_limit_without_429s(db_url: str) -> None:
    """Two runners against a limit at 80% of the provider's: the provider never has to say 429."""
    with db.connect(db_url) as c:
        make_script(c)
        for _ in range(30):
            make_session(c)
        c.execute("SELECT * FROM parecer.start_run('acme', 'qa')")
        c.execute("SELECT * FROM parecer.set_rate_limit('shared:gpt-5-mini', rpm => 48)")
    with Standin(StandinConfig(rpm_limit=60, latency_ms=(5, 20))) as s:
        env = {
            **os.environ,
            "PARECER_DATABASE_URL": db_url,
            "OPENAI_BASE_URL": s.url,
            "OPENAI_API_KEY": "sk-test",
            "PARECER_KEY_LABEL": "shared",
        }
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "parecer.cli", "runner", "--concurrency", "4"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        time.sleep(8)
        for p in procs:
            p.terminate()
        outs = [p.communicate(timeout=30) for p in procs]
        stats = s.stats()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert stats["rate_limited"] == 0
    assert stats["completed"] >= 4  # the burst plus the refill: work did happen
    with db.connect(db_url) as c:
        row = c.execute(
            "SELECT granted, throttled FROM parecer.rate_limits WHERE limit_key = 'shared:gpt-5-mini'"
        ).fetchone()
    assert row is not None and row["throttled"] == 0 and row["granted"] == stats["requests"]


def test_single_item_claims_alternate_between_clients(conn: psycopg.Connection[Any]) -> None:
    """A runner with one free slot claims one item at a time: no client may win every call."""
    sa, sb = make_script(conn, client="one"), make_script(conn, client="two")
    conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s)",
        ([make_session(conn, "one").session_id for _ in range(40)], sa["script_id"]),
    )
    conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s)",
        ([make_session(conn, "two").session_id for _ in range(40)], sb["script_id"]),
    )
    got = [
        one(conn, "SELECT client_slug FROM parecer.claim('w', 1)")["client_slug"] for _ in range(40)
    ]
    # each call is a fair coin between the two: 9 or fewer of 40 has probability ~1e-6
    assert got.count("one") >= 9 and got.count("two") >= 9


USAGE_OK: list[Any] = [
    {},
    {"input_tokens": 0},
    {"input_tokens": 12, "cached_input_tokens": None, "output_tokens": 3},
    {"input_tokens": 999_999_999_999, "model": "x", "latency_ms": 1.5},
]
USAGE_BAD: list[Any] = [
    [],
    5,
    "s",
    None,
    {"input_tokens": -1},
    {"input_tokens": 1.5},
    {"output_tokens": "12"},
    {"cached_input_tokens": True},
    {"input_tokens": 1_000_000_000_000},
    {"output_tokens": [1]},
    {"input_tokens": {"n": 1}},
    {"output_tokens": 1e3},
]  # 1e3: json.dumps writes 1000.0


def test_usage_is_checked_before_anything_is_stored(conn: psycopg.Connection[Any]) -> None:
    """mark_done refuses a usage that is not an object of non-negative integer token counts (PR010, nothing
    changes); mark_failed records the failure and drops such a usage. (JSON null as the whole usage is
    SQL NULL to mark_done: no usage.)"""
    from .helpers import table_checksum

    script = make_script(conn)
    sessions = [make_session(conn) for _ in range(len(USAGE_OK) + 1)]
    conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s)",
        ([s.session_id for s in sessions], script["script_id"]),
    )
    by_id = {s.session_id: s for s in sessions}
    item = conn.execute("SELECT * FROM parecer.claim('w')").fetchone()
    assert item is not None
    report = json.dumps(report_for(by_id[item["session_id"]]))
    before = table_checksum(conn)
    for bad in USAGE_BAD:
        if bad is None:
            continue
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(
                "SELECT parecer.mark_done(%s, %s, %s, 'm', %s, %s)",
                (item["analysis_id"], item["lease_token"], report, "a" * 64, json.dumps(bad)),
            )
        assert errors.sqlstate(exc.value) == errors.INVALID_ARGUMENT, bad
        assert exc.value.diag.message_hint
        assert table_checksum(conn) == before, bad
    for i, good in enumerate(USAGE_OK):
        if i:
            item = conn.execute("SELECT * FROM parecer.claim('w')").fetchone()
            assert item is not None
            report = json.dumps(report_for(by_id[item["session_id"]]))
        conn.execute(
            "SELECT parecer.mark_done(%s, %s, %s, 'm', %s, %s)",
            (item["analysis_id"], item["lease_token"], report, "a" * 64, json.dumps(good)),
        )
        assert conn.execute(
            "SELECT usage FROM parecer.reports WHERE analysis_id = %s", (item["analysis_id"],)
        ).fetchone() == {"usage": good}
    item = conn.execute("SELECT * FROM parecer.claim('w')").fetchone()
    assert item is not None
    conn.execute(
        "SELECT parecer.mark_failed(%s, %s, 'boom', true, %s)",
        (item["analysis_id"], item["lease_token"], json.dumps({"input_tokens": -5})),
    )
    assert conn.execute(
        "SELECT outcome, usage FROM parecer.attempts WHERE analysis_id = %s", (item["analysis_id"],)
    ).fetchall() == [{"outcome": "failed", "usage": None}]


def test_waits_are_counted_beside_429s(conn: psycopg.Connection[Any]) -> None:
    """A request the buckets cannot cover yet is a wait, counted in parecer.rate_limits.waited
    (throttled counts only the provider's 429s)."""
    conn.execute("SELECT * FROM parecer.set_rate_limit('w:m', rpm => 60, tpm => 100000)")
    grants = [
        conn.execute("SELECT granted FROM parecer.acquire_rate('w:m', 10)").fetchone()
        for _ in range(10)
    ]
    refused = sum(1 for g in grants if g is not None and not g["granted"])
    assert refused > 0  # a burst of 6 s at 60/min holds 6 requests
    row = conn.execute("SELECT granted, waited, throttled FROM parecer.rate_limits").fetchone()
    assert row == {"granted": 10 - refused, "waited": refused, "throttled": 0}
