"""The runner's claim_ahead: items claimed beyond the free slots wait in the runner (leases
heartbeated) for a slot, so that claims come in batches; they never run beyond concurrency,
and go back (released, no attempt spent) when the runner stops or pauses for long."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from parecer import db
from parecer import runner as runner_mod
from parecer.devkit.standin import Standin, StandinConfig
from parecer.runner import Runner, run

from .helpers import one, running, until
from .test_runner import cfg, make_run


def _items(db_url: str) -> list[dict[str, Any]]:
    with db.connect(db_url) as c:
        return c.execute(
            "SELECT status, retry_count, releases, claims FROM parecer.analyses"
        ).fetchall()


def test_claims_come_in_batches_and_never_run_beyond_concurrency(db_url: str) -> None:
    with db.connect(db_url) as c:
        make_run(c, 40)
    leases: list[int] = []

    async def scenario(s: Standin) -> runner_mod.RunnerStats:
        r = Runner(cfg(db_url, s, concurrency=4, claim_ahead=8))
        task = asyncio.create_task(r.run())
        with db.connect(db_url) as c:
            while not task.done():  # items leased at once: at most concurrency + claim_ahead
                leases.append(
                    one(
                        c, "SELECT count(*) AS n FROM parecer.analyses WHERE status = 'processing'"
                    )["n"]
                )
                await asyncio.sleep(0.02)
        return await task

    with Standin(StandinConfig(latency_ms=(30, 120), seed=3)) as s:
        stats = asyncio.run(scenario(s))
        served = s.stats()
    assert stats.outcomes["done"] == 40 and stats.claimed == 40
    # the first claim fills 4 slots and 8 waiting places, the next ones about half of them
    assert stats.claims <= 12, stats.as_dict()
    assert served["max_concurrent"] <= 4 and served["requests"] == 40
    assert max(leases) <= 12
    assert {
        (i["status"], i["retry_count"], i["releases"], i["claims"]) for i in _items(db_url)
    } == {("done", 0, 0, 1)}


def test_without_claim_ahead_a_runner_claims_for_free_slots_only(db_url: str) -> None:
    """The default (0): each claim asks for the free slots, nothing waits in the runner."""
    with db.connect(db_url) as c:
        make_run(c, 12)
    with Standin(StandinConfig(latency_ms=(30, 120), seed=3)) as s:
        stats = run(cfg(db_url, s, concurrency=4))
    assert stats.outcomes["done"] == 12
    # items finish one at a time: most claims after the first fill one slot
    assert stats.claims > 12 / 4


def test_items_claimed_ahead_go_back_unstarted_when_the_runner_stops(db_url: str) -> None:
    with db.connect(db_url) as c:
        make_run(c, 12)
    with Standin(StandinConfig(latency_ms=(3000, 3000), seed=1)) as s:
        r = Runner(cfg(db_url, s, once=False, concurrency=2, claim_ahead=6, shutdown_grace=0.2))
        with running(r) as t:
            until(lambda: s.stats()["requests"] >= 2, t)  # two calls in flight, six waiting
            time.sleep(0.3)
            assert sum(i["status"] == "processing" for i in _items(db_url)) == 8
            r.stop()
        assert s.stats()["requests"] == 2  # the waiting items never reached the model
    got = _items(db_url)
    assert {i["status"] for i in got} == {"pending"}
    assert all(i["retry_count"] == 0 for i in got)  # no attempt spent
    assert sum(i["releases"] for i in got) == 8  # the two in flight and the six waiting
    with db.connect(db_url) as c:
        reasons = c.execute(
            "SELECT error, count(*) AS n FROM parecer.attempts WHERE outcome = 'released' GROUP BY 1"
        ).fetchall()
    assert {r["error"]: r["n"] for r in reasons} == {
        "shutdown: runner stopped before the item started": 6,
        "shutdown: runner stopped": 2,
    }


def test_items_claimed_ahead_go_back_when_the_runner_pauses_for_long(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fatal provider error pauses the runner for a minute or more: the items waiting for a
    slot go back for another runner to take, with the pause as their delay."""
    monkeypatch.setattr(runner_mod, "FATAL_PAUSE_SECONDS", (40.0,))
    with db.connect(db_url) as c:
        make_run(c, 4)
    with Standin(StandinConfig(require_key="sk-the-right-one")) as s:
        r = Runner(
            cfg(
                db_url,
                s,
                once=False,
                concurrency=1,
                claim_ahead=3,
                poll_seconds=0.5,
                rate_limit=False,
            )
        )
        with running(r) as t:
            until(  # the first call refused, then every item back
                lambda: (
                    s.stats()["unauthorized"] >= 1
                    and all(i["status"] == "pending" for i in _items(db_url))
                ),
                t,
            )
            r.stop()
        assert s.stats()["unauthorized"] == 1  # only the item in flight called
    got = _items(db_url)
    assert all(i["retry_count"] == 0 and i["releases"] == 1 for i in got)
    with db.connect(db_url) as c:
        waits = c.execute(
            "SELECT a.error, a.next_retry_at > now() + interval '30 seconds' AS later"
            " FROM parecer.attempts t JOIN parecer.analyses a USING (analysis_id)"
            " WHERE t.outcome = 'released' AND t.error = 'runner paused before the item started'"
        ).fetchall()
    assert len(waits) == 3 and all(w["later"] for w in waits)


def test_claim_ahead_is_checked() -> None:
    with pytest.raises(ValueError, match="claim_ahead must be between 0 and 1000"):
        runner_mod.RunnerConfig(database_url="postgresql://x", claim_ahead=-1)


def test_a_report_waiting_to_be_stored_gives_its_slot_to_the_next_item(db_url: str) -> None:
    """With claim_ahead, the ack window costs no model time: two slots run all eight calls
    while the first reports still wait in the buffer (a 3 s window), then one store."""
    with db.connect(db_url) as c:
        make_run(c, 8)

    async def scenario(s: Standin) -> tuple[int, runner_mod.RunnerStats]:
        r = Runner(cfg(db_url, s, concurrency=2, claim_ahead=6, ack_window_ms=3000, ack_batch=100))
        task = asyncio.create_task(r.run())
        deadline = time.monotonic() + 2.5  # well inside the first window
        while s.stats()["completed"] < 8:
            assert time.monotonic() < deadline, s.stats()
            await asyncio.sleep(0.02)
        with db.connect(db_url) as c:
            stored = one(c, "SELECT count(*) AS n FROM parecer.reports")["n"]
        return stored, await task

    with Standin(StandinConfig(latency_ms=(50, 50), seed=1)) as s:
        stored, stats = asyncio.run(scenario(s))
        assert s.stats()["max_concurrent"] <= 2
    assert stored == 0 and stats.outcomes["done"] == 8
    with db.connect(db_url) as c:  # every report in one mark_done_many: one commit
        assert one(c, "SELECT count(DISTINCT processed_at) AS n FROM parecer.analyses")["n"] == 1


@pytest.mark.parametrize("window_ms", [200, 0])
def test_a_refused_report_takes_a_slot_back_for_its_repair_call(
    db_url: str, window_ms: int
) -> None:
    """Through the buffer the slot was given back and is taken again; without it (window 0)
    the item kept its slot and makes the repair call with it."""
    with db.connect(db_url) as c:
        make_run(c, 6)
    fault = {"x-standin-fault": "ungrounded_once"}
    with Standin(StandinConfig(latency_ms=(20, 40), seed=1)) as s:
        stats = run(
            cfg(
                db_url,
                s,
                concurrency=2,
                claim_ahead=4,
                ack_window_ms=window_ms,
                extra_headers=fault,
                request_timeout=5.0,
            )
        )
        st = s.stats()
    assert stats.outcomes["done"] == 6
    assert st["repair_requests"] == 6 and st["max_concurrent"] <= 2
    assert {(i["status"], i["retry_count"], i["claims"]) for i in _items(db_url)} == {
        ("done", 0, 1)
    }


def test_an_item_whose_lease_is_lost_while_it_waits_is_not_started(db_url: str) -> None:
    """The heartbeat finds the lease gone (here: every item taken over while the first call
    runs): the waiting items are dropped unstarted, no model call is paid for them."""
    with db.connect(db_url) as c:
        make_run(c, 3)
    with Standin(StandinConfig(latency_ms=(4000, 4000), seed=1)) as s:
        r = Runner(cfg(db_url, s, once=False, concurrency=1, claim_ahead=2, lease_seconds=6))
        with running(r) as t:
            until(lambda: s.stats()["requests"] >= 1, t)
            with db.connect(db_url) as c:  # another runner's now
                c.execute("UPDATE parecer.analyses SET lease_token = gen_random_uuid()")
            # the first's result dropped, two not started
            until(lambda: r.stats.outcomes["stale"] >= 3, t)
        assert s.stats()["requests"] == 1
