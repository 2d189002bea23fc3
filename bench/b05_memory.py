#!/usr/bin/env python3
"""Benchmark 5 - runner memory at concurrency 64.

One runner process (``python -m parecer.cli runner --once``) drains ``--items``
analyses (default 1000) at ``--concurrency`` 64 against the stand-in (300-800 ms
latency; the shared limiter lifted for the key so it is not the bottleneck). Its
/proc/<pid>/status is read every 100 ms while it lives: peak RSS is the largest
VmHWM seen (the kernel's high-water mark, read up to the last poll before exit)
and the largest VmRSS sample. Baseline: the same runner at ``--concurrency 1`` over
``--baseline-items`` (default 40: at one item per ~0.6 s a long baseline only costs
time). Also items/min (database timestamps: first claim to last finish).

    python bench/b05_memory.py --items 1000 --concurrency 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import common as C
from parecer.devkit.standin import Standin, StandinConfig


def _drain(
    url: str,
    base_url: str,
    sessions: list[str],
    script_id: int,
    concurrency: int,
    worker: str,
    logdir: Path,
) -> dict[str, Any]:
    with C.connect(url) as c:
        c.execute("SELECT * FROM parecer.enqueue(%s, %s)", (sessions, script_id))
    t0 = time.monotonic()
    self0 = C.read_status(os.getpid()).get("cpu_s", 0.0)
    proc = C.spawn_runner(
        url,
        base_url,
        logdir / f"{worker}.log",
        "--once",
        "--concurrency",
        str(concurrency),
        "--worker-id",
        worker,
    )
    hwm = rss = cpu = 0.0
    samples = 0
    busy: list[int] = []  # the runner's pooled connections running a statement, per sample
    conns: list[int] = []
    waits: Counter[str] = Counter()
    with C.connect(url, application_name="bench-sampler") as mon:
        while proc.poll() is None:
            st = C.read_status(proc.pid)
            if st:
                hwm = max(hwm, st.get("VmHWM", 0))
                rss = max(rss, st.get("VmRSS", 0))
                cpu = max(cpu, st.get("cpu_s", 0))
                samples += 1
            rows = mon.execute(
                "SELECT state, COALESCE(wait_event_type || ':' || wait_event, 'CPU') "
                "|| CASE WHEN wait_event_type = 'Lock' THEN ' in ' || "
                "substring(query from 'parecer\\.([a-z_]+)\\(') ELSE '' END AS w "
                "FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'parecer-runner'"
            ).fetchall()
            if rows:
                conns.append(len(rows))
                act = [r for r in rows if r["state"] == "active"]
                busy.append(len(act))
                waits.update(r["w"] for r in act)
            time.sleep(0.1)
    wall = time.monotonic() - t0
    self_cpu = C.read_status(os.getpid()).get("cpu_s", 0.0) - self0
    with C.connect(url) as c:
        row = c.execute(
            "SELECT count(*) FILTER (WHERE outcome = 'done') AS done, count(*) AS attempts, "
            "min(claimed_at) AS t0, max(finished_at) AS t1 FROM parecer.attempts WHERE worker = %s",
            (worker,),
        ).fetchone()
    assert row is not None
    secs = (row["t1"] - row["t0"]).total_seconds() if row["t0"] and row["t1"] else wall
    return {
        "concurrency": concurrency,
        "exit_code": proc.returncode,
        "peak_hwm_kib": hwm,
        "peak_rss_kib": rss,
        "runner_cpu_s": cpu,
        "runner_cpu_share": cpu / wall if wall else 0.0,
        "standin_cpu_share": self_cpu / wall
        if wall
        else 0.0,  # this process: the stand-in + the sampler
        "pool_connections_max": max(conns, default=0),
        "pool_busy_mean": sum(busy) / len(busy) if busy else 0.0,
        "pool_busy_all_share": sum(1 for b, n in zip(busy, conns) if b >= n) / len(busy)
        if busy
        else 0.0,
        "active_waits": dict(waits.most_common(6)),
        "samples": samples,
        "done": row["done"],
        "attempts": row["attempts"],
        "seconds": secs,
        "wall_s": wall,
        "per_min": row["done"] * 60 / secs if secs else 0.0,
    }


def run(
    server_url: str,
    *,
    items: int = 1000,
    concurrency: int = 64,
    baseline_items: int = 40,
    seed: int = 7,
    latency_ms: tuple[int, int] = (300, 800),
    keep: bool = False,
) -> C.Result:
    res = C.Result("b05", f"runner memory at concurrency {concurrency}")
    t_start = time.perf_counter()
    logdir = Path(tempfile.mkdtemp(prefix="parecer-bench-b05-"))
    with C.bench_database(server_url, "memory", keep=keep) as url:
        C.load(url, C.sessions_needed(items + baseline_items), seed)
        with C.connect(url) as c:
            script = C.make_script(c)
            C.no_rate_limit(c)
            sessions = C.client_sessions(c, limit=items + baseline_items)
        with Standin(StandinConfig(latency_ms=latency_ms, seed=seed)) as standin:
            base = _drain(
                url,
                standin.url,
                sessions[:baseline_items],
                script["script_id"],
                1,
                "bench-mem-c1",
                logdir,
            )
            C.say(
                f"   b05 c1: {base['done']} done in {base['seconds']:.1f}s ({base['per_min']:.0f}/min), "
                f"peak VmHWM {base['peak_hwm_kib'] / 1024:.1f} MiB, max VmRSS {base['peak_rss_kib'] / 1024:.1f} MiB, "
                f"exit {base['exit_code']}; runner CPU {base['runner_cpu_share']:.0%} of a core"
            )
            big = _drain(
                url,
                standin.url,
                sessions[baseline_items:],
                script["script_id"],
                concurrency,
                f"bench-mem-c{concurrency}",
                logdir,
            )
            st = standin.stats()
            bound = concurrency / (sum(latency_ms) / 2 / 1000) * 60
            C.say(
                f"   b05 c{concurrency}: {big['done']} done in {big['seconds']:.1f}s ({big['per_min']:.0f}/min; "
                f"{concurrency} slots / mean latency would allow {bound:.0f}/min), "
                f"peak VmHWM {big['peak_hwm_kib'] / 1024:.1f} MiB, max VmRSS {big['peak_rss_kib'] / 1024:.1f} MiB, "
                f"exit {big['exit_code']}; stand-in max concurrent requests {st['max_concurrent']}; "
                f"runner CPU {big['runner_cpu_s']:.1f}s = {big['runner_cpu_share']:.0%} of a core over {big['wall_s']:.0f}s; "
                f"stand-in (this process) CPU {big['standin_cpu_share']:.0%} of a core; "
                f"runner pool: {big['pool_connections_max']} connections, on average {big['pool_busy_mean']:.1f} running "
                f"a statement, all busy in {big['pool_busy_all_share']:.0%} of samples; waits {big['active_waits']}"
            )
    res.add(
        f"peak RSS (VmHWM) at concurrency {concurrency}",
        big["peak_hwm_kib"] / 1024,
        "MiB",
        baseline_name="concurrency 1",
        baseline=base["peak_hwm_kib"] / 1024,
        ratio=big["peak_hwm_kib"] / base["peak_hwm_kib"] if base["peak_hwm_kib"] else None,
        ratio_label="x",
        note=f"max VmRSS sample {big['peak_rss_kib'] / 1024:.1f} vs {base['peak_rss_kib'] / 1024:.1f} MiB",
    )
    res.add(
        f"items/min at concurrency {concurrency}",
        big["per_min"],
        "/min",
        baseline_name="concurrency 1",
        baseline=base["per_min"],
        ratio=big["per_min"] / base["per_min"] if base["per_min"] else None,
        ratio_label="x",
        note=f"{big['done']} items; stand-in peak {st['max_concurrent']} concurrent requests; "
        f"runner CPU {big['runner_cpu_share']:.0%} of a core",
    )
    res.details = {"c1": base, f"c{concurrency}": big, "standin": st, "logs": str(logdir)}
    res.seconds = time.perf_counter() - t_start
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument(
        "--baseline-items", type=int, default=40, help="items for the concurrency-1 baseline"
    )
    p.add_argument("--latency-ms", default="300,800")
    a = p.parse_args(argv)
    lo, _, hi = a.latency_ms.partition(",")
    with C.server(a.database_url) as srv:
        res = run(
            srv,
            items=a.items,
            concurrency=a.concurrency,
            baseline_items=a.baseline_items,
            seed=a.seed,
            latency_ms=(int(lo), int(hi or lo)),
            keep=a.keep,
        )
    C.print_result(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
