#!/usr/bin/env python3
"""Benchmark 4 - wake-up latency of an idle runner (NOTIFY vs the poll backstop).

One runner process (``python -m parecer.cli runner --poll-seconds 60``) sits idle.
``--samples`` times (default 50): enqueue one fresh session with parecer.enqueue
(which sends one NOTIFY parecer_work at commit), read
clock_timestamp() right after the commit (``BEGIN; SELECT parecer.enqueue(...);
SELECT clock_timestamp(); COMMIT; SELECT clock_timestamp()`` sent as one
simple-query message, so no client round trip separates the commit from the clock
reads), and wait for the claim; the latency is parecer.attempts.claimed_at - the
clock read after COMMIT (both database clocks; claimed_at is now() of the claim's
transaction, i.e. when the claim statement started). If the enqueuing backend is
descheduled between its COMMIT and that read, a sample comes out low, even
negative; the read just before COMMIT gives an upper bound, also printed. Between samples the item is processed (stand-in, 5-20 ms) and the
runner is left idle for ``--idle`` seconds.

Baseline: a runner that only polled every 60 s would claim on average 30 s after
the enqueue; the ratio is p50 / 30 s.

    python bench/b04_wakeup.py --samples 50
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from psycopg import sql

import common as C
from parecer.devkit.standin import Standin, StandinConfig


def enqueue_one(c: Any, sid: str, script_id: int) -> tuple[Any, Any]:
    """Enqueue one session; returns (clock before COMMIT, clock right after COMMIT).

    ``BEGIN; SELECT parecer.enqueue(...); SELECT clock_timestamp(); COMMIT; SELECT
    clock_timestamp()`` goes as one simple-query message, so no client round trip
    separates the commit from either clock read: the commit happened between them."""
    cur = c.execute(
        sql.SQL(
            "BEGIN; SELECT * FROM parecer.enqueue(ARRAY[{}], {}); "
            "SELECT clock_timestamp() AS t_pre; COMMIT; SELECT clock_timestamp() AS t_post"
        ).format(sql.Literal(sid), sql.Literal(script_id))
    )
    got: dict[str, Any] = {}
    while True:
        if cur.description is not None:
            row = cur.fetchone()
            if row:
                got.update(row)
        if not cur.nextset():
            break
    if got.get("enqueued") != 1 or "t_pre" not in got or "t_post" not in got:
        raise RuntimeError(f"enqueue of {sid} returned {got}")
    return got["t_pre"], got["t_post"]


def run(
    server_url: str,
    *,
    samples: int = 50,
    poll_seconds: float = 60.0,
    idle: float = 0.3,
    seed: int = 7,
    keep: bool = False,
) -> C.Result:
    res = C.Result("b04", "wake-up latency: enqueue commit -> claim, idle runner")
    t_start = time.perf_counter()
    logdir = Path(tempfile.mkdtemp(prefix="parecer-bench-b04-"))
    lat_ms: list[float] = []  # claimed_at - clock read right after COMMIT (the figure)
    upper_ms: list[float] = []  # claimed_at - clock read right before COMMIT (an upper bound)
    with C.bench_database(server_url, "wakeup", keep=keep) as url:
        C.load(url, C.sessions_needed(samples), seed)
        with C.connect(url) as c, Standin(StandinConfig(latency_ms=(5, 20), seed=seed)) as standin:
            script = C.make_script(c)
            C.no_rate_limit(c)
            sessions = C.client_sessions(c, limit=samples)
            proc = C.spawn_runner(
                url,
                standin.url,
                logdir / "runner.log",
                "--concurrency",
                "4",
                "--poll-seconds",
                str(poll_seconds),
                "--worker-id",
                "bench-wakeup",
            )
            try:
                C.wait_listening(c, 1)
                time.sleep(1.0)  # its first (empty) claim is done: idle until NOTIFY or the poll
                for sid in sessions:
                    t_pre, t_commit = enqueue_one(c, sid, script["script_id"])
                    deadline = time.monotonic() + poll_seconds + 30
                    while True:
                        row = c.execute(
                            "SELECT claimed_at FROM parecer.attempts WHERE session_id = %s", (sid,)
                        ).fetchone()
                        if row is not None:
                            break
                        if time.monotonic() > deadline or proc.poll() is not None:
                            raise RuntimeError(
                                f"no claim of {sid} (runner exit code {proc.poll()}); log in {logdir}"
                            )
                        time.sleep(0.005)
                    lat_ms.append((row["claimed_at"] - t_commit).total_seconds() * 1000)
                    upper_ms.append((row["claimed_at"] - t_pre).total_seconds() * 1000)
                    while (
                        C.one(
                            c, "SELECT status FROM parecer.analyses WHERE session_id = %s", (sid,)
                        )["status"]
                        == "processing"
                    ):
                        time.sleep(0.01)
                    time.sleep(
                        idle
                    )  # back to idle: the runner's loop sleeps on NOTIFY / poll again
            finally:
                codes = C.stop_runners([proc])
            done = C.one(c, "SELECT count(*) AS n FROM parecer.analyses WHERE status = 'done'")["n"]
    p50, p99, mx = C.percentile(lat_ms, 50), C.percentile(lat_ms, 99), max(lat_ms)
    C.say(
        f"   b04: {len(lat_ms)} samples, {done} done, runner exit {codes}; latency ms "
        f"min {min(lat_ms):.2f} p50 {p50:.2f} p99 {p99:.2f} max {mx:.2f}; upper bound (clock before COMMIT) "
        f"p50 {C.percentile(upper_ms, 50):.2f} p99 {C.percentile(upper_ms, 99):.2f} max {max(upper_ms):.2f}"
    )
    poll_avg_ms = poll_seconds / 2 * 1000
    res.add(
        "wake-up p50",
        p50,
        "ms",
        baseline_name=f"poll-only average ({poll_seconds:.0f} s poll / 2)",
        baseline=poll_avg_ms,
        ratio=p50 / poll_avg_ms,
        ratio_label="x",
    )
    res.add("wake-up p99", p99, "ms")
    neg = sum(1 for x in lat_ms if x < 0)
    res.add(
        "wake-up max",
        mx,
        "ms",
        note=f"{len(lat_ms)} samples, min {min(lat_ms):.2f} ms"
        + (
            f"; {neg} negative: the enqueuing backend was descheduled between COMMIT and its clock read"
            if neg
            else ""
        ),
    )
    res.add(
        "wake-up p50, upper bound (clock before COMMIT)",
        C.percentile(upper_ms, 50),
        "ms",
        note=f"p99 {C.percentile(upper_ms, 99):.2f} ms, max {max(upper_ms):.2f} ms",
    )
    res.details = {
        "latency_ms": lat_ms,
        "upper_bound_ms": upper_ms,
        "poll_seconds": poll_seconds,
        "exit_codes": codes,
        "logs": str(logdir),
    }
    res.seconds = time.perf_counter() - t_start
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument(
        "--poll-seconds", type=float, default=60.0, help="the idle runner's backstop poll"
    )
    p.add_argument(
        "--idle", type=float, default=0.3, help="seconds the runner sits idle before each enqueue"
    )
    a = p.parse_args(argv)
    with C.server(a.database_url) as srv:
        res = run(
            srv,
            samples=a.samples,
            poll_seconds=a.poll_seconds,
            idle=a.idle,
            seed=a.seed,
            keep=a.keep,
        )
    C.print_result(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
