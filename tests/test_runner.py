"""The runner against real PostgreSQL and the stand-in, through the real openai SDK."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from parecer import db
from parecer.devkit.standin import Standin, StandinConfig
from parecer.runner import Runner, RunnerConfig, run

from .factories import make_script, make_session
from .helpers import one, runner_config, running

SECRET_KEY = (
    "sk" + "-test-NEVER-LOG-THIS-0123456789abcdef"
)  # fake; split so no scanner mistakes it for a key


def make_run(conn: psycopg.Connection[Any], n: int, **session_kw: Any) -> int:
    make_script(conn)
    texts = [f"Texto secreto do cliente número {i} sobre a internet" for i in range(25)]
    for _ in range(n):
        make_session(conn, texts=texts, **session_kw)
    r = conn.execute(
        "SELECT * FROM parecer.start_run('acme', 'qa', max_sessions => %s)", (n,)
    ).fetchone()
    assert r is not None and r["enqueued"] == n
    return int(r["run_id"])


@pytest.fixture
def standin() -> Iterator[Standin]:
    with Standin(StandinConfig(latency_ms=(5, 30), seed=3)) as s:
        yield s


def cfg(db_url: str, s: Standin, **kw: Any) -> RunnerConfig:
    return runner_config(
        db_url,
        s,
        SECRET_KEY,
        **({"concurrency": 4, "once": True, "request_timeout": 5.0, "poll_seconds": 30.0} | kw),
    )


def test_drains_a_run_with_grounded_reports(db_url: str, standin: Standin) -> None:
    with db.connect(db_url) as c:
        run_id = make_run(c, 50)
    stats = run(cfg(db_url, standin, concurrency=8))
    assert stats.outcomes["done"] == 50
    with db.connect(db_url) as c:
        s = c.execute("SELECT * FROM parecer.run_summary(%s)", (run_id,)).fetchone()
        assert s is not None and (s["processed"], s["remaining"], s["failed"]) == (50, 0, 0)
        rows = c.execute(
            "SELECT r.analysis_id, r.prompt_hash, r.model, r.usage, p.prompt_hash AS expected "
            "FROM parecer.reports r, parecer.prompt_for(r.analysis_id) p"
        ).fetchall()
        assert len(rows) == 50
        assert all(r["prompt_hash"] == r["expected"] for r in rows)
        assert {r["model"] for r in rows} == {"parecer-standin"}
        assert all(
            r["usage"]["input_tokens"] > 0 and r["usage"]["response_id"].startswith("resp_")
            for r in rows
        )
    assert standin.stats()["max_concurrent"] <= 8


def test_fault_mix_every_item_settles_with_reason_and_429s_spend_nothing(db_url: str) -> None:
    faults = (
        "rate_limit",
        "server_error",
        "malformed",
        "ungrounded",
        "refusal",
        "context_length",
        "incomplete",
        "timeout",
    )
    with db.connect(db_url) as c:
        run_id = make_run(c, 40)
        c.execute("SELECT parecer.set_setting('backoff_schedule', '{1 second}')")
    conf = StandinConfig(
        latency_ms=(5, 20), fault_rate=0.3, faults=faults, seed=11, timeout_delay_s=3.0
    )
    with Standin(conf) as s:
        stats = run(
            cfg(
                db_url,
                s,
                once=False,
                run_id=run_id,
                concurrency=6,
                request_timeout=1.0,
                poll_seconds=2.0,
            )
        )
        injected = s.stats()["faults"]
    assert sum(injected.values()) > 5 and injected["rate_limit"] > 0
    with db.connect(db_url) as c:
        items = c.execute(
            "SELECT analysis_id, status, retry_count, next_retry_at, error FROM parecer.analyses"
        ).fetchall()
        assert {i["status"] for i in items} <= {"done", "failed"}
        assert all(i["next_retry_at"] is None for i in items)
        att = c.execute("SELECT analysis_id, outcome, error FROM parecer.attempts").fetchall()
    by: dict[Any, list[dict[str, Any]]] = {}
    for a in att:
        by.setdefault(a["analysis_id"], []).append(a)
    non_retryable = ("model refused", "context length exceeded", "incomplete output")
    for i in items:
        history = by[i["analysis_id"]]
        spent = [a for a in history if a["outcome"] in ("failed", "expired")]
        assert i["retry_count"] == len(spent), "a release (429) must not spend an attempt"
        assert all("rate limited" in a["error"] for a in history if a["outcome"] == "released")
        if i["status"] == "failed":
            assert i["error"].startswith(non_retryable) or i["retry_count"] == 4, i
    released = sum(1 for a in att if a["outcome"] == "released")
    assert released == injected["rate_limit"]
    assert stats.outcomes["done"] == sum(1 for i in items if i["status"] == "done")


def _spawn_runner(db_url: str, s: Standin, *args: str, **env: str) -> subprocess.Popen[str]:
    e = {
        **os.environ,
        "PARECER_DATABASE_URL": db_url,
        "OPENAI_BASE_URL": s.url,
        "OPENAI_API_KEY": SECRET_KEY,
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "parecer.cli", "runner", *args],
        env=e,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_two_runner_processes_never_process_an_item_twice(db_url: str) -> None:
    with db.connect(db_url) as c:
        make_run(c, 60)
    with Standin(StandinConfig(latency_ms=(20, 60), seed=5)) as s:
        procs = [
            _spawn_runner(db_url, s, "--once", "--concurrency", "4", "--worker-id", f"p{i}")
            for i in range(2)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        requests = s.stats()["requests"]
    assert [p.returncode for p in procs] == [0, 0], outs
    with db.connect(db_url) as c:
        per_item = c.execute(
            "SELECT analysis_id, count(*) FILTER (WHERE outcome = 'done') AS done "
            "FROM parecer.attempts GROUP BY 1"
        ).fetchall()
        workers = {
            r["worker"]
            for r in c.execute("SELECT DISTINCT worker FROM parecer.attempts").fetchall()
        }
    assert len(per_item) == 60 and all(r["done"] == 1 for r in per_item)
    assert requests == 60
    assert workers == {"p0", "p1"}
    for out, err in outs:  # no transcript text, no key in the logs
        assert "Texto secreto" not in out + err and SECRET_KEY not in out + err


@pytest.mark.slow
def test_sigkilled_runner_items_are_recovered_by_another(db_url: str) -> None:
    with db.connect(db_url) as c:
        make_run(c, 3)
        c.execute("SELECT parecer.set_setting('backoff_schedule', '{1 second}')")
    with Standin(StandinConfig(latency_ms=(60_000, 60_000))) as slow:
        p = _spawn_runner(
            db_url, slow, "--concurrency", "3", "--lease-seconds", "5", "--worker-id", "doomed"
        )
        with db.connect(db_url) as c:
            deadline = time.monotonic() + 30
            while (
                one(c, "SELECT count(*) AS n FROM parecer.analyses WHERE status = 'processing'")[
                    "n"
                ]
                < 3
            ):
                assert time.monotonic() < deadline and p.poll() is None
                time.sleep(0.1)
        p.send_signal(signal.SIGKILL)
        p.communicate()
    with Standin(StandinConfig(latency_ms=(5, 10))) as fast:
        with db.connect(db_url) as c:
            run_id = one(c, "SELECT max(run_id) AS r FROM parecer.runs")["r"]
        stats = run(
            cfg(db_url, fast, once=False, run_id=run_id, poll_seconds=1.0, worker_id="rescuer")
        )
    assert stats.outcomes["done"] == 3
    with db.connect(db_url) as c:
        hist = c.execute(
            "SELECT worker, outcome FROM parecer.attempts ORDER BY claimed_at"
        ).fetchall()
    assert [h["outcome"] for h in hist if h["worker"] == "doomed"] == ["expired"] * 3
    assert [h["outcome"] for h in hist if h["worker"] == "rescuer"] == ["done"] * 3


@pytest.mark.slow
def test_sigterm_releases_in_flight_items_and_exits_0(db_url: str) -> None:
    with db.connect(db_url) as c:
        make_run(c, 2)
    with Standin(StandinConfig(latency_ms=(60_000, 60_000))) as slow:
        p = _spawn_runner(db_url, slow, "--concurrency", "2", "--shutdown-grace", "0.5")
        with db.connect(db_url) as c:
            deadline = time.monotonic() + 30
            while (
                one(c, "SELECT count(*) AS n FROM parecer.analyses WHERE status = 'processing'")[
                    "n"
                ]
                < 2
            ):
                assert time.monotonic() < deadline and p.poll() is None
                time.sleep(0.1)
            p.send_signal(signal.SIGTERM)
            out, err = p.communicate(timeout=30)
            assert p.returncode == 0, err
            rows = c.execute("SELECT status, retry_count FROM parecer.analyses").fetchall()
            att = c.execute("SELECT outcome, error FROM parecer.attempts").fetchall()
    assert rows == [{"status": "pending", "retry_count": 0}] * 2
    assert att == [{"outcome": "released", "error": "shutdown: runner stopped"}] * 2
    assert "runner summary" in err


def test_idle_runner_wakes_on_notify_not_poll(db_url: str, standin: Standin) -> None:
    with db.connect(db_url) as c:
        make_script(c)
        s = make_session(c)
    runner = Runner(cfg(db_url, standin, once=False, poll_seconds=3600.0))
    with running(runner), db.connect(db_url) as c:
        # wait until the runner is idle: it has made its first (empty) claim and listens
        deadline = time.monotonic() + 20
        while not c.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'parecer-listen'"
            " AND query ILIKE 'LISTEN%%'"
        ).fetchone():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        c.execute("SELECT * FROM parecer.start_run('acme', 'qa')")
        # the poll would come after an hour: a done item within the wait proves NOTIFY woke it
        deadline = time.monotonic() + 20
        while one(c, "SELECT count(*) AS n FROM parecer.reports")["n"] == 0:
            assert time.monotonic() < deadline, "NOTIFY did not wake the runner"
            time.sleep(0.05)
        assert c.execute("SELECT session_id FROM parecer.reports").fetchone() == {
            "session_id": s.session_id
        }


def test_heartbeats_keep_a_long_call_alive(db_url: str) -> None:
    """A call longer than the lease finishes on its first attempt: heartbeats extend the lease."""
    with db.connect(db_url) as c:
        make_run(c, 1)
    with Standin(StandinConfig(latency_ms=(7000, 7000))) as slow:
        stats = run(cfg(db_url, slow, lease_seconds=5, request_timeout=30.0))
    assert stats.outcomes["done"] == 1
    with db.connect(db_url) as c:
        assert c.execute("SELECT attempt, outcome FROM parecer.attempts").fetchall() == [
            {"attempt": 1, "outcome": "done"}
        ]
