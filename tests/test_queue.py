"""The work item's life: enqueue, claim, lease, done, failed with backoff, release."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from parecer import db, errors
from parecer.devkit.sample import load_sample

from .factories import make_script, make_session, report_for
from .helpers import table_checksum


def queue(conn: psycopg.Connection[Any], n: int = 3, **kw: Any) -> tuple[dict[str, Any], list[Any]]:
    script = make_script(conn)
    sessions = [make_session(conn, **kw) for _ in range(n)]
    conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s)",
        ([s.session_id for s in sessions], script["script_id"]),
    )
    return script, sessions


def claim(
    conn: psycopg.Connection[Any], worker: str = "w1", n: int = 1, **kw: Any
) -> list[dict[str, Any]]:
    args = ", ".join(f"{k} => %({k})s" for k in kw)
    sql = f"SELECT * FROM parecer.claim(worker => %(worker)s, max_items => %(n)s{', ' + args if args else ''})"
    return conn.execute(sql, {"worker": worker, "n": n, **kw}).fetchall()


def state(conn: psycopg.Connection[Any], analysis_id: Any) -> dict[str, Any]:
    row = conn.execute(
        "SELECT * FROM parecer.analyses WHERE analysis_id = %s", (analysis_id,)
    ).fetchone()
    assert row is not None
    analysis: dict[str, Any] = row
    return analysis


def test_enqueue_counts_and_force_reprocess_resets_done(conn: psycopg.Connection[Any]) -> None:
    script, sessions = queue(conn, 3)
    ids = [s.session_id for s in sessions]
    again = conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s)", (ids, script["script_id"])
    ).fetchone()
    assert again == {"enqueued": 0, "reset": 0, "skipped": 3}

    [item] = claim(conn)
    conn.execute(
        "SELECT * FROM parecer.mark_done(%s, %s, %s, 'm', %s)",
        (
            item["analysis_id"],
            item["lease_token"],
            json.dumps(report_for(next(s for s in sessions if s.session_id == item["session_id"]))),
            "a" * 64,
        ),
    )
    assert state(conn, item["analysis_id"])["status"] == "done"

    forced = conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s, force_reprocess => true)", (ids, script["script_id"])
    ).fetchone()
    assert forced == {"enqueued": 0, "reset": 3, "skipped": 0}
    row = state(conn, item["analysis_id"])
    assert row["status"] == "pending"
    assert (
        row["report"],
        row["error"],
        row["retry_count"],
        row["next_retry_at"],
        row["processed_at"],
        row["started_at"],
    ) == (None, None, 0, None, None, None)


def test_enqueue_notifies_once_per_call(db_url: str) -> None:
    with db.connect(db_url) as listener, db.connect(db_url) as c:
        listener.execute("LISTEN parecer_work")
        script = make_script(c)
        ids = [make_session(c).session_id for _ in range(5)]
        c.execute("SELECT * FROM parecer.enqueue(%s, %s)", (ids, script["script_id"]))
        c.execute(
            "SELECT * FROM parecer.enqueue(%s, %s)", (ids, script["script_id"])
        )  # nothing new: no notify
        got = list(listener.notifies(timeout=1.0, stop_after=5))
    assert len(got) == 1
    assert json.loads(got[0].payload) == {"client": "acme", "n": 5}


def test_claim_order_newest_ended_first(conn: psycopg.Connection[Any]) -> None:
    script, sessions = queue(conn, 4)
    got = [r["session_id"] for r in claim(conn, n=10)]
    expected = [s.session_id for s in sorted(sessions, key=lambda s: s.ended_at, reverse=True)]
    assert got == expected


def test_concurrent_claims_get_disjoint_items(db_url: str) -> None:
    with db.connect(db_url) as c:
        queue(c, 40)
    results: list[list[str]] = []
    barrier = threading.Barrier(4)

    def worker(i: int) -> None:
        got: list[str] = []
        with db.connect(db_url) as wc:
            barrier.wait()
            while True:
                rows = claim(wc, f"w{i}", 3)
                if not rows:
                    break
                got += [str(r["analysis_id"]) for r in rows]
        results.append(got)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [x for r in results for x in r]
    assert len(flat) == 40 and len(set(flat)) == 40


def test_skip_locked_while_another_transaction_holds_a_claim(db_url: str) -> None:
    with db.connect(db_url) as c:
        queue(c, 2)
    with db.connect(db_url, autocommit=False) as a, db.connect(db_url) as b:
        first = claim(a)  # transaction still open: row locked
        second = claim(b)  # must not block, must not get the same item
        assert first and second and first[0]["analysis_id"] != second[0]["analysis_id"]
        assert claim(b) == []
        a.rollback()
        assert len(claim(b)) == 1  # the rolled-back claim is free again


def test_backoff_exact_values_then_terminal(conn: psycopg.Connection[Any]) -> None:
    queue(conn, 1)
    conn.autocommit = False
    expected = [timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15)]
    for n in range(1, 5):
        # now() is fixed inside one transaction; move the retry into the past to claim again
        conn.execute("UPDATE parecer.analyses SET next_retry_at = now() WHERE status = 'pending'")
        [item] = claim(conn)
        assert item["attempt"] == n
        out = conn.execute(
            "SELECT * FROM parecer.mark_failed(%s, %s, 'boom')",
            (item["analysis_id"], item["lease_token"]),
        ).fetchone()
        now = conn.execute("SELECT now() AS now").fetchone()["now"]  # type: ignore[index]
        assert out is not None
        if n < 4:
            assert out == {
                "status": "pending",
                "retry_count": n,
                "next_retry_at": now + expected[n - 1],
            }
        else:
            assert out == {"status": "failed", "retry_count": 4, "next_retry_at": None}
    conn.execute("UPDATE parecer.analyses SET updated_at = now()")
    assert claim(conn) == []  # terminal
    conn.rollback()


def test_not_retryable_goes_terminal_at_once(conn: psycopg.Connection[Any]) -> None:
    queue(conn, 1)
    [item] = claim(conn)
    out = conn.execute(
        "SELECT * FROM parecer.mark_failed(%s, %s, 'context length exceeded', retryable => false)",
        (item["analysis_id"], item["lease_token"]),
    ).fetchone()
    assert out == {"status": "failed", "retry_count": 1, "next_retry_at": None}
    conn.execute("UPDATE parecer.analyses SET updated_at = now() - interval '1 day'")
    assert claim(conn) == []


def test_failed_item_waits_for_backoff(conn: psycopg.Connection[Any]) -> None:
    queue(conn, 1)
    [item] = claim(conn)
    conn.execute(
        "SELECT parecer.mark_failed(%s, %s, 'x')", (item["analysis_id"], item["lease_token"])
    )
    assert claim(conn) == []
    conn.execute("UPDATE parecer.analyses SET next_retry_at = now() - interval '1 second'")
    [again] = claim(conn)
    assert again["analysis_id"] == item["analysis_id"] and again["retry_count"] == 1


def test_release_spends_no_attempt(conn: psycopg.Connection[Any]) -> None:
    queue(conn, 1)
    [item] = claim(conn)
    out = conn.execute(
        "SELECT * FROM parecer.release(%s, %s, reason => 'shutdown')",
        (item["analysis_id"], item["lease_token"]),
    ).fetchone()
    assert out == {"status": "pending", "retry_count": 0, "next_retry_at": None}
    [again] = claim(conn)
    assert again["attempt"] == 2 and again["retry_count"] == 0
    out = conn.execute(
        "SELECT * FROM parecer.release(%s, %s, delay_seconds => 30)",
        (again["analysis_id"], again["lease_token"]),
    ).fetchone()
    assert out is not None and out["status"] == "pending" and out["next_retry_at"] is not None
    assert claim(conn) == []  # delayed
    outcomes = conn.execute(
        "SELECT outcome, error FROM parecer.attempts ORDER BY attempt"
    ).fetchall()
    assert outcomes == [
        {"outcome": "released", "error": "shutdown"},
        {"outcome": "released", "error": "released"},
    ]


def test_stale_runner_cannot_overwrite_newer_result(db_url: str) -> None:
    with db.connect(db_url) as c:
        _, sessions = queue(c, 1)
        [old] = claim(c, "slow", lease_seconds=5)
        # the slow runner's lease runs out; another runner takes the item over
        c.execute("UPDATE parecer.analyses SET lease_expires_at = now() - interval '1 second'")
        assert claim(c, "fast") == []  # recovers the expired item: a failed attempt, with backoff
        assert state(c, old["analysis_id"])["status"] == "pending"
        c.execute("UPDATE parecer.analyses SET next_retry_at = now() - interval '1 second'")
        [new] = claim(c, "fast")
        assert new["analysis_id"] == old["analysis_id"] and new["lease_token"] != old["lease_token"]
        report = json.dumps(report_for(sessions[0]))
        with pytest.raises(psycopg.Error) as exc:
            c.execute(
                "SELECT parecer.mark_done(%s, %s, %s, 'm', %s)",
                (old["analysis_id"], old["lease_token"], report, "b" * 64),
            )
        assert errors.sqlstate(exc.value) == errors.STALE_LEASE
        c.execute(
            "SELECT parecer.mark_done(%s, %s, %s, 'm', %s)",
            (new["analysis_id"], new["lease_token"], report, "c" * 64),
        )
        row = state(c, new["analysis_id"])
        assert row["prompt_hash"] == "c" * 64 and row["retry_count"] == 1
        att = c.execute(
            "SELECT attempt, worker, outcome FROM parecer.attempts ORDER BY attempt"
        ).fetchall()
        assert att == [
            {"attempt": 1, "worker": "slow", "outcome": "expired"},
            {"attempt": 2, "worker": "fast", "outcome": "done"},
        ]


def test_expired_lease_is_rejected_even_before_reclaim(conn: psycopg.Connection[Any]) -> None:
    _, sessions = queue(conn, 1)
    [item] = claim(conn)
    conn.execute("UPDATE parecer.analyses SET lease_expires_at = now() - interval '1 second'")
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(
            "SELECT parecer.extend_lease(%s, %s)", (item["analysis_id"], item["lease_token"])
        )
    assert errors.sqlstate(exc.value) == errors.STALE_LEASE


def test_extend_lease_moves_expiry(conn: psycopg.Connection[Any]) -> None:
    queue(conn, 1)
    [item] = claim(conn, lease_seconds=10)
    exp = conn.execute(
        "SELECT parecer.extend_lease(%s, %s, 600) AS e", (item["analysis_id"], item["lease_token"])
    ).fetchone()["e"]  # type: ignore[index]
    assert exp > item["lease_expires_at"]


def test_expired_lease_on_last_attempt_goes_terminal(conn: psycopg.Connection[Any]) -> None:
    queue(conn, 1)
    conn.execute("SELECT parecer.set_setting('max_attempts', '1')")
    [item] = claim(conn)
    conn.execute("UPDATE parecer.analyses SET lease_expires_at = now() - interval '1 second'")
    assert claim(conn) == []
    row = state(conn, item["analysis_id"])
    assert (row["status"], row["retry_count"], row["next_retry_at"]) == ("failed", 1, None)
    assert row["error"].startswith("lease expired")


def test_force_reprocess_invalidates_in_flight_lease(conn: psycopg.Connection[Any]) -> None:
    script, sessions = queue(conn, 1)
    [item] = claim(conn)
    conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s, force_reprocess => true)",
        ([sessions[0].session_id], script["script_id"]),
    )
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(
            "SELECT parecer.mark_done(%s, %s, %s, 'm', %s)",
            (
                item["analysis_id"],
                item["lease_token"],
                json.dumps(report_for(sessions[0])),
                "d" * 64,
            ),
        )
    assert errors.sqlstate(exc.value) == errors.STALE_LEASE
    assert conn.execute("SELECT outcome FROM parecer.attempts").fetchone() == {"outcome": "reset"}


def test_claim_filters_by_client(conn: psycopg.Connection[Any]) -> None:
    queue(conn, 2)
    other = make_script(conn, client="beta")
    s = make_session(conn, client="beta")
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", ([s.session_id], other["script_id"]))
    got = claim(conn, n=10, client_slug="beta")
    assert [r["session_id"] for r in got] == [s.session_id]


def test_attempt_in_flight_and_attempt_that_finished_are_the_items_row(
    conn: psycopg.Connection[Any],
) -> None:
    """An attempt in flight is the item's own row (parecer.attempts shows it as processing), and so
    is the attempt that finishes it: mark_done writes no attempt row (0016). parecer.attempts
    shows it as done with the usage that reports show."""
    _, sessions = queue(conn, 1)
    [item] = claim(conn, "w9")
    assert conn.execute("SELECT count(*) AS n FROM parecer._attempts").fetchone() == {"n": 0}
    shown = conn.execute(
        "SELECT attempt, worker, outcome, finished_at FROM parecer.attempts"
    ).fetchall()
    assert shown == [{"attempt": 1, "worker": "w9", "outcome": "processing", "finished_at": None}]
    usage = {"input_tokens": 1000, "cached_input_tokens": 0, "output_tokens": 100}
    conn.execute(
        "SELECT parecer.mark_done(%s, %s, %s, 'gpt-5-mini', %s, %s)",
        (
            item["analysis_id"],
            item["lease_token"],
            json.dumps(report_for(sessions[0])),
            "e" * 64,
            json.dumps(usage),
        ),
    )
    rows = conn.execute(
        "SELECT attempt, worker, outcome, finished_at IS NOT NULL AS ended, usage"
        " FROM parecer.attempts"
    ).fetchall()
    assert rows == [
        {"attempt": 1, "worker": "w9", "outcome": "done", "ended": True, "usage": usage}
    ]
    assert conn.execute("SELECT usage FROM parecer.reports").fetchone() == {"usage": usage}
    assert conn.execute("SELECT count(*) AS n FROM parecer._attempts").fetchone() == {"n": 0}


def test_force_reprocess_keeps_the_done_attempt_in_the_history(
    conn: psycopg.Connection[Any],
) -> None:
    """The attempt that finished a done item is the item's row (0016); enqueue(force_reprocess)
    moves it into parecer._attempts before resetting the row, so the history, the run's cost and
    estimate_cost keep it, and the next attempt is numbered after it."""
    script, sessions = queue(conn, 1)
    [item] = claim(conn, "w1")
    usage = {"input_tokens": 1_000_000, "cached_input_tokens": 0, "output_tokens": 100_000}
    conn.execute(
        "SELECT parecer.mark_done(%s, %s, %s, 'gpt-5-mini', %s, %s)",
        (
            item["analysis_id"],
            item["lease_token"],
            json.dumps(report_for(sessions[0])),
            "e" * 64,
            json.dumps(usage),
        ),
    )
    before = conn.execute(
        "SELECT attempt, worker, outcome, model, usage, cost_usd FROM parecer.attempts"
    ).fetchall()
    assert [(r["attempt"], r["outcome"], r["usage"]) for r in before] == [(1, "done", usage)]
    assert before[0]["cost_usd"] is not None and before[0]["cost_usd"] > 0
    est = conn.execute(
        "SELECT parecer.estimate_cost(%s, 1) AS e", (script["script_id"],)
    ).fetchone()
    conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s, force_reprocess => true)",
        ([sessions[0].session_id], script["script_id"]),
    )
    assert conn.execute("SELECT status, usage, cost_usd FROM parecer.analyses").fetchone() == {
        "status": "pending",
        "usage": None,
        "cost_usd": None,
    }
    assert (
        conn.execute(
            "SELECT attempt, worker, outcome, model, usage, cost_usd FROM parecer.attempts"
        ).fetchall()
        == before
    )
    assert conn.execute("SELECT lease_token FROM parecer._attempts").fetchone() == {
        "lease_token": None
    }
    [again] = claim(conn, "w2")
    assert again["attempt"] == 2
    conn.execute(
        "SELECT parecer.mark_done(%s, %s, %s, 'gpt-5-mini', %s, %s)",
        (
            again["analysis_id"],
            again["lease_token"],
            json.dumps(report_for(sessions[0])),
            "f" * 64,
            json.dumps(usage),
        ),
    )
    rows = conn.execute(
        "SELECT attempt, worker, outcome FROM parecer.attempts ORDER BY attempt"
    ).fetchall()
    assert rows == [
        {"attempt": 1, "worker": "w1", "outcome": "done"},
        {"attempt": 2, "worker": "w2", "outcome": "done"},
    ]
    # estimate_cost: every attempt's cost per done item, the moved one included.
    assert est is not None and est["e"] > 0
    assert conn.execute(
        "SELECT parecer.estimate_cost(%s, 1) AS e", (script["script_id"],)
    ).fetchone() == {"e": 2 * est["e"]}


def test_null_report_is_refused_after_the_lease_check(conn: psycopg.Connection[Any]) -> None:
    """mark_done checks the lease before the report, as the UPDATE that carries the lease check
    would otherwise trip the table's done-needs-a-report constraint: PR006 for a stale lease,
    PR007 for a live one, and nothing changes either way."""
    queue(conn, 1)
    [item] = claim(conn)
    before = table_checksum(conn)
    for token, code in ((uuid.uuid4(), errors.STALE_LEASE), (item["lease_token"], "PR007")):
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(
                "SELECT parecer.mark_done(%s, %s, NULL, 'm', %s)",
                (item["analysis_id"], token, "f" * 64),
            )
        assert errors.sqlstate(exc.value) == code
        assert table_checksum(conn) == before


def test_claim_never_scans_the_queue_table(conn: psycopg.Connection[Any]) -> None:
    """The claim runs on a generic plan; an UPDATE joined to its candidates once got a generic plan
    that hashed a sequential scan of all of analyses (0.9 ms per claim at 3000 items, growing with
    the table). Candidates are now updated by primary key: with a queue of thousands, a claim reads
    indexes only, on the one-client path and on the fair path. (Below ~2000 items the planner may
    rightly prefer a sequential scan of the few pages.)"""
    load_sample(conn, sessions=6000, seed=7)
    script = conn.execute(
        "SELECT * FROM parecer.create_script_version('acme-telecom', 'qa', 'Avalie o atendimento.',"
        " topics => ARRAY['cancelamento'], activate => true)"
    ).fetchone()
    assert script is not None
    ids = [
        r["session_id"]
        for r in conn.execute(
            "SELECT s.session_id FROM parecer.source_sessions s JOIN parecer.source_clients c ON c.client_id = s.client_id"
            " WHERE c.slug = 'acme-telecom'"
        ).fetchall()
    ]
    assert len(ids) > 3000
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", (ids, script["script_id"]))
    conn.execute("ANALYZE parecer.analyses")
    for path in ("one client", "fair"):
        if (
            path == "fair"
        ):  # other clients registered (no work queued): every claim takes the fair path
            for r in conn.execute(
                "SELECT slug FROM parecer.source_clients WHERE slug <> 'acme-telecom'"
            ).fetchall():
                conn.execute("SELECT parecer.set_client_priority(%s, 1)", (r["slug"],))
        with conn.transaction():
            for n in (1, 1, 1, 1, 1, 1, 1, 5, 1, 20):  # past the plan cache's first custom plans
                assert len(claim(conn, n=n)) == n
            stats = conn.execute(
                "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables"
                " WHERE relid = 'parecer.analyses'::regclass"
            ).fetchone()
            assert stats is not None and stats["seq_scan"] == 0 and stats["idx_scan"] > 0, (
                path,
                stats,
            )


def test_claim_sync_commit_false_reaches_only_its_own_transaction(db_url: str) -> None:
    """sync_commit => false sets synchronous_commit = off for the claim's transaction (SET LOCAL), not beyond;
    the default leaves it alone; NULL is refused (PR010) and claims nothing."""
    with db.connect(db_url) as c:
        queue(c, 3)
        before = c.execute("SELECT current_setting('synchronous_commit') AS s").fetchone()["s"]  # type: ignore[index]
        assert before != "off"
        # Autocommit: the setting holds for the claim's own statement (its transaction) and is gone after.
        [row] = c.execute(
            "SELECT c.analysis_id, current_setting('synchronous_commit') AS s "
            "FROM parecer.claim('w1', 1, sync_commit => false) c"
        ).fetchall()
        assert row["s"] == "off"
        after = c.execute("SELECT current_setting('synchronous_commit') AS s").fetchone()
        assert after is not None and after["s"] == before
        [row] = c.execute(
            "SELECT c.analysis_id, current_setting('synchronous_commit') AS s "
            "FROM parecer.claim('w1', 1) c"
        ).fetchall()
        assert row["s"] == before
        with pytest.raises(psycopg.Error) as exc:
            claim(c, sync_commit=None)
        assert errors.sqlstate(exc.value) == errors.INVALID_ARGUMENT and exc.value.diag.message_hint
        processing = c.execute(
            "SELECT count(*) AS n FROM parecer.analyses WHERE status = 'processing'"
        ).fetchone()
        assert processing is not None and processing["n"] == 2
    # Inside a caller's transaction it lasts until that transaction ends.
    with db.connect(db_url, autocommit=False) as t:
        assert len(claim(t, sync_commit=False)) == 1
        assert t.execute("SHOW synchronous_commit").fetchone()["synchronous_commit"] == "off"  # type: ignore[index]
        t.commit()
        assert t.execute("SHOW synchronous_commit").fetchone()["synchronous_commit"] == before  # type: ignore[index]
        t.rollback()


def test_a_claim_lost_before_it_reached_disk_is_an_expired_lease(db_url: str) -> None:
    """A claim made with sync_commit => false can be lost in a server crash: the database is then as if
    the claim never happened (a rolled-back transaction is that state). The item is claimable again and
    the runner that thought it held it is refused (PR006) by every call, so nothing is stored twice."""
    with db.connect(db_url) as c:
        _, sessions = queue(c, 1)
    with db.connect(db_url, autocommit=False) as lost:
        [ghost] = claim(lost, "ghost", sync_commit=False)
        lost.rollback()
    with db.connect(db_url) as c:
        assert state(c, ghost["analysis_id"])["status"] == "pending"
        before = table_checksum(c)
        report = json.dumps(report_for(sessions[0]))
        for sql, args in (
            ("SELECT parecer.mark_done(%s, %s, %s, 'm', %s)", (report, "a" * 64)),
            ("SELECT parecer.extend_lease(%s, %s, 60)", ()),
            ("SELECT parecer.mark_failed(%s, %s, 'boom')", ()),
            ("SELECT parecer.release(%s, %s)", ()),
        ):
            with pytest.raises(psycopg.Error) as exc:
                c.execute(sql, (ghost["analysis_id"], ghost["lease_token"], *args))
            assert errors.sqlstate(exc.value) == errors.STALE_LEASE, sql
        assert table_checksum(c) == before
        [again] = claim(c, "w2", sync_commit=False)
        assert (
            again["analysis_id"] == ghost["analysis_id"]
            and again["lease_token"] != ghost["lease_token"]
        )


def test_next_due_answers_now_fast_and_otherwise_the_earliest_wait(
    conn: psycopg.Connection[Any],
) -> None:
    """next_due: now() when an item is claimable (also one behind 120 items waiting for their
    retry, past the first hundred it looks at), else the earliest retry or lease expiry;
    NULL when nothing waits (for the client asked for)."""
    script = make_script(conn)
    sessions = [make_session(conn, messages=2).session_id for _ in range(122)]
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", (sessions, script["script_id"]))

    def due() -> Any:
        return conn.execute("SELECT parecer.next_due() AS d").fetchone()["d"]  # type: ignore[index]

    def due_is_now() -> bool:
        return bool(conn.execute("SELECT parecer.next_due() = now() AS n").fetchone()["n"])  # type: ignore[index]

    assert due_is_now()  # claimable: now()
    # every item waits for a retry, one of them due in 5 minutes, the others later
    conn.execute(
        "UPDATE parecer.analyses SET next_retry_at = now() + interval '1 hour' * (1 + random())"
    )
    first = conn.execute(
        "UPDATE parecer.analyses SET next_retry_at = now() + interval '5 minutes'"
        " WHERE analysis_id = (SELECT min(analysis_id::text)::uuid FROM parecer.analyses)"
        " RETURNING next_retry_at"
    ).fetchone()["next_retry_at"]  # type: ignore[index]
    assert due() == first
    # a claimable item behind the first hundred in claim order (the oldest session ended)
    last = conn.execute(
        "SELECT analysis_id FROM parecer.analyses"
        " ORDER BY session_ended_at ASC NULLS FIRST, created_at LIMIT 1"
    ).fetchone()["analysis_id"]  # type: ignore[index]
    conn.execute("UPDATE parecer.analyses SET next_retry_at = NULL WHERE analysis_id = %s", (last,))
    assert due_is_now()
    # it is claimed: then its lease's expiry is the earliest wait
    item = conn.execute("SELECT * FROM parecer.claim('w', 1, 60)").fetchone()
    assert item is not None and item["analysis_id"] == last
    assert due() == item["lease_expires_at"]
    # nothing of a client with no work waits
    assert conn.execute("SELECT parecer.next_due('nobody') AS d").fetchone() == {"d": None}
