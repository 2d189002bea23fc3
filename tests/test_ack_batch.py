"""The runner's batched acknowledgements: reports buffered for ack_window_ms (or ack_batch
items) and stored with one parecer.mark_done_many call, one commit."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import psycopg
import pytest

from parecer import db
from parecer.devkit.standin import Standin, StandinConfig
from parecer.metrics import ACK_BATCHES
from parecer.runner import Runner, run

from .helpers import one
from .test_runner import _spawn_runner, cfg, make_run


def _ack_calls() -> float:
    """mark_done_many calls this process's runners made (the histogram's count)."""
    for metric in ACK_BATCHES.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return sample.value
    return 0.0


def _commits(c: psycopg.Connection[Any]) -> int:
    """Distinct commits that stored a report: mark_done sets processed_at = now(), the
    transaction's start, so every item of one mark_done_many shares it."""
    return int(
        one(
            c,
            "SELECT count(DISTINCT processed_at) AS n FROM parecer.analyses WHERE status = 'done'",
        )["n"]
    )


@pytest.mark.parametrize("window_ms", [0, 500])
def test_window_stores_items_together_and_0_stores_each_alone(db_url: str, window_ms: int) -> None:
    with db.connect(db_url) as c:
        make_run(c, 10)
    before = _ack_calls()
    with Standin(StandinConfig(latency_ms=(5, 5), seed=1)) as s:
        stats = run(cfg(db_url, s, concurrency=10, ack_window_ms=window_ms, ack_batch=10))
    assert stats.outcomes["done"] == 10
    with db.connect(db_url) as c:
        done = one(c, "SELECT count(*) AS n FROM parecer.analyses WHERE status = 'done'")["n"]
        commits = _commits(c)
        attempts = c.execute("SELECT DISTINCT attempt, outcome FROM parecer.attempts").fetchall()
    assert done == 10 and attempts == [{"attempt": 1, "outcome": "done"}]
    if window_ms == 0:  # today's path: one mark_done, one commit per item
        assert _ack_calls() == before and commits == 10
    else:  # the ten reports reach the buffer within the window: one call, one commit
        assert _ack_calls() == before + 1 and commits == 1


def test_a_stale_item_in_a_batch_does_not_fail_the_others(db_url: str) -> None:
    with db.connect(db_url) as c:
        make_run(c, 4)

    async def scenario(s: Standin) -> dict[str, int]:
        runner = Runner(cfg(db_url, s, concurrency=4, ack_window_ms=3000, ack_batch=100))
        task = asyncio.create_task(runner.run())
        deadline = time.monotonic() + 20
        while s.stats()["requests"] < 4:  # every report is in the buffer (3 s window)
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        with db.connect(db_url) as c:  # another runner took one item over: its token changed
            c.execute(
                "UPDATE parecer.analyses SET lease_token = gen_random_uuid()"
                " WHERE analysis_id = (SELECT min(analysis_id::text)::uuid FROM parecer.analyses)"
            )
        stats = await task
        return dict(stats.outcomes)

    with Standin(StandinConfig(latency_ms=(5, 5), seed=2)) as s:
        outcomes = asyncio.run(scenario(s))
    assert outcomes == {"done": 3, "stale": 1}
    with db.connect(db_url) as c:
        rows = c.execute(
            "SELECT status, count(*) AS n FROM parecer.analyses GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert rows == [{"status": "done", "n": 3}, {"status": "processing", "n": 1}]


def test_heartbeats_keep_buffered_items_leased(db_url: str) -> None:
    """Reports buffered longer than the lease are stored on their first attempt."""
    with db.connect(db_url) as c:
        make_run(c, 2)
    with Standin(StandinConfig(latency_ms=(5, 5))) as s:
        stats = run(
            cfg(db_url, s, concurrency=2, lease_seconds=5, ack_window_ms=7000, ack_batch=100)
        )
    assert stats.outcomes["done"] == 2
    with db.connect(db_url) as c:
        assert (
            c.execute("SELECT attempt, outcome FROM parecer.attempts").fetchall()
            == [{"attempt": 1, "outcome": "done"}] * 2
        )


@pytest.mark.slow
def test_a_runner_killed_with_a_full_buffer_loses_nothing(db_url: str) -> None:
    with db.connect(db_url) as c:
        run_id = make_run(c, 5)
        c.execute("SELECT parecer.set_setting('backoff_schedule', '{1 second}')")
    with Standin(StandinConfig(latency_ms=(5, 10))) as s:
        p = _spawn_runner(
            db_url,
            s,
            *("--concurrency", "5", "--lease-seconds", "5", "--worker-id", "doomed"),
            *("--ack-window-ms", "10000", "--ack-batch", "1000"),
        )
        deadline = time.monotonic() + 30
        while s.stats()["requests"] < 5:  # every report answered, none stored: all buffered
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.05)
        time.sleep(0.3)
        with db.connect(db_url) as c:
            assert (
                one(c, "SELECT count(*) AS n FROM parecer.analyses WHERE status = 'done'")["n"] == 0
            )
        p.send_signal(signal.SIGKILL)
        p.communicate()
        stats = run(
            cfg(db_url, s, once=False, run_id=run_id, poll_seconds=1.0, worker_id="rescuer")
        )
    assert stats.outcomes["done"] == 5
    with db.connect(db_url) as c:
        hist = c.execute(
            "SELECT worker, outcome FROM parecer.attempts ORDER BY claimed_at"
        ).fetchall()
        per_item = c.execute(
            "SELECT count(*) FILTER (WHERE outcome = 'done') AS done FROM parecer.attempts GROUP BY analysis_id"
        ).fetchall()
    assert [h["outcome"] for h in hist if h["worker"] == "doomed"] == ["expired"] * 5
    assert [h["outcome"] for h in hist if h["worker"] == "rescuer"] == ["done"] * 5
    assert per_item == [{"done": 1}] * 5
