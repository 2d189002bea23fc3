#!/usr/bin/env python3
"""Benchmark 3 - end to end under a shared rate limit.

The stand-in plays a provider with ``--provider-rpm`` (R_provider, default 600) and
300-800 ms latency; parecer's shared limit for the key is R = 80% of it
(``parecer.set_rate_limit('bench:gpt-5-mini', rpm => R)``; tpm lifted so requests
are the only limit). 1, then 2, then 4 runner processes
(``python -m parecer.cli runner --concurrency 8``, PARECER_KEY_LABEL=bench) work a
queue large enough not to run dry. Per configuration: skip the first ``--warmup``
seconds (the bucket's burst), count the analyses done in the next ``--window``
seconds (database timestamps), SIGTERM the runners.

Figures: sustained analyses/minute as a fraction of R (target >= 90%); 429s the
stand-in sent (its ``rate_limited`` counter and injected faults); attempts spent on
429s (must be 0: every item's retry_count equals its failed/expired attempts, and
released attempts are counted by reason).

    python bench/b03_end_to_end.py --provider-rpm 600 --runners 1,2,4
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import common as C
from parecer.devkit.standin import Standin, StandinConfig


def _granted(c: Any) -> int:
    row = c.execute(
        "SELECT granted FROM parecer.rate_limits WHERE limit_key = %s", (C.LIMIT_KEY,)
    ).fetchone()
    return int(row["granted"]) if row else 0


def run(
    server_url: str,
    *,
    provider_rpm: int = 600,
    fraction: float = 0.8,
    runners: tuple[int, ...] = (1, 2, 4),
    concurrency: int = 8,
    warmup: float = 10.0,
    window: float = 30.0,
    latency_ms: tuple[int, int] = (300, 800),
    items: int | None = None,
    seed: int = 7,
    keep: bool = False,
) -> C.Result:
    res = C.Result("b03", "end to end: runners x shared limit vs stand-in provider")
    t_start = time.perf_counter()
    rpm = int(provider_rpm * fraction)
    if items is None:  # what the configurations can consume at R, with a 60% margin
        items = math.ceil(rpm / 60 * (warmup + window + 8) * len(runners) * 1.6) + 100
    logdir = Path(tempfile.mkdtemp(prefix="parecer-bench-b03-"))
    per: list[dict[str, Any]] = []
    with C.bench_database(server_url, "e2e", keep=keep) as url:
        C.load(url, C.sessions_needed(items), seed)
        with C.connect(url) as c:
            script = C.make_script(c)
            sessions = C.client_sessions(c, limit=items)
            if len(sessions) < items:
                raise RuntimeError(f"only {len(sessions)} sessions for {items} items")
            c.execute("SELECT * FROM parecer.enqueue(%s, %s)", (sessions, script["script_id"]))
            c.execute(
                "SELECT * FROM parecer.set_rate_limit(%s, rpm => %s, tpm => 1000000000)",
                (C.LIMIT_KEY, rpm),
            )
        C.vacuum_analyze(url, ["parecer.analyses"])
        C.say(
            f"   b03 setup: {items} items queued; stand-in R_provider = {provider_rpm}/min, "
            f"latency {latency_ms[0]}-{latency_ms[1]} ms; parecer limit R = {rpm}/min on {C.LIMIT_KEY}"
        )
        with (
            Standin(
                StandinConfig(latency_ms=latency_ms, rpm_limit=provider_rpm, seed=seed)
            ) as standin,
            C.connect(url) as c,
        ):
            for n in runners:
                s0 = standin.stats()
                procs = [
                    C.spawn_runner(
                        url,
                        standin.url,
                        logdir / f"runners{n}-{i}.log",
                        "--concurrency",
                        str(concurrency),
                        "--worker-id",
                        f"bench-e2e-{n}x-{i}",
                        "--shutdown-grace",
                        "10",
                    )
                    for i in range(n)
                ]
                try:
                    C.wait_listening(c, n)
                    time.sleep(warmup)
                    w0, g0 = C.db_now(c), _granted(c)
                    time.sleep(window)
                    w1, g1 = C.db_now(c), _granted(c)
                finally:
                    codes = C.stop_runners(procs)
                s1 = standin.stats()
                row = c.execute(
                    "SELECT count(*) FILTER (WHERE outcome = 'done') AS done, count(*) AS finished "
                    "FROM parecer.attempts WHERE finished_at >= %s AND finished_at < %s",
                    (w0, w1),
                ).fetchone()
                assert row is not None
                left = c.execute(
                    "SELECT count(*) AS n FROM parecer.analyses WHERE status = 'pending'"
                ).fetchone()["n"]  # type: ignore[index]
                secs = (w1 - w0).total_seconds()
                per_min = row["done"] * 60 / secs
                p = {
                    "runners": n,
                    "window_s": secs,
                    "done": row["done"],
                    "per_min": per_min,
                    "granted_per_min": (g1 - g0) * 60 / secs,
                    "rate_limited": s1["rate_limited"] - s0["rate_limited"],
                    "faults": sum(s1["faults"].values()) - sum(s0["faults"].values()),
                    "requests": s1["requests"] - s0["requests"],
                    "max_concurrent": s1["max_concurrent"],
                    "exit_codes": codes,
                    "pending_left": left,
                }
                per.append(p)
                C.say(
                    f"   {n} runner(s) x {concurrency}: {row['done']} done in {secs:.1f}s = {per_min:.0f}/min "
                    f"({per_min / rpm:.1%} of R; limiter granted {p['granted_per_min']:.0f}/min); stand-in: {p['requests']} requests, {p['rate_limited']} x 429, "
                    f"{p['faults']} faults; exit codes {codes}; {left} still pending"
                )
                if left == 0:
                    C.say("   WARNING: the queue ran dry; use --items")
                if any(code != 0 for code in codes):
                    for f in sorted(logdir.glob(f"runners{n}-*.log")):
                        C.say(
                            f"   --- tail of {f}:\n"
                            + "\n".join(f.read_text(errors="replace").splitlines()[-15:])
                        )
            final = standin.stats()
        acc = C.connect(url)
        with acc:
            a = acc.execute("""
                WITH spent AS (
                    SELECT analysis_id, count(*) FILTER (WHERE outcome IN ('failed', 'expired')) AS n,
                           count(*) FILTER (WHERE outcome IN ('failed', 'expired')
                                            AND (error ILIKE '%%rate limit%%' OR error LIKE '%%429%%')) AS n429
                    FROM parecer.attempts GROUP BY analysis_id)
                SELECT count(*) FILTER (WHERE a.retry_count <> COALESCE(s.n, 0)) AS mismatched,
                       COALESCE(sum(a.retry_count), 0) AS retry_count_sum,
                       COALESCE(sum(s.n), 0) AS failed_or_expired,
                       COALESCE(sum(s.n429), 0) AS spent_on_429
                FROM parecer.analyses a LEFT JOIN spent s USING (analysis_id)""").fetchone()
            released = {
                r["reason"]: r["n"]
                for r in acc.execute(
                    "SELECT CASE WHEN error ILIKE '%%429%%' OR error ILIKE 'rate limited%%' THEN '429' "
                    "WHEN error LIKE 'shutdown%%' THEN 'shutdown' WHEN error LIKE 'shared rate limit%%' THEN 'shared-limit wait' "
                    "ELSE error END AS reason, count(*) AS n FROM parecer.attempts WHERE outcome = 'released' GROUP BY 1"
                ).fetchall()
            }
            lim = acc.execute(
                "SELECT granted, throttled FROM parecer.rate_limits WHERE limit_key = %s",
                (C.LIMIT_KEY,),
            ).fetchone()
    assert a is not None
    C.say(
        f"   attempts: sum(retry_count) {a['retry_count_sum']} = failed/expired attempts {a['failed_or_expired']} "
        f"(items where they differ: {a['mismatched']}); spent on 429s: {a['spent_on_429']}; "
        f"released by reason: {released or '{}'}; limiter granted {lim['granted'] if lim else '?'}, "
        f"429s reported {lim['throttled'] if lim else '?'}; stand-in total 429s {final['rate_limited']}"
    )
    for p in per:
        res.add(
            f"{p['runners']} runner(s) x c{concurrency}: sustained analyses/min",
            p["per_min"],
            "/min",
            baseline_name=f"R = {fraction:.0%} of R_provider {provider_rpm}",
            baseline=rpm,
            ratio=p["per_min"] / rpm,
            ratio_label="% of R",
            target=">= 90%",
            note=f"{p['rate_limited']} x 429 from the stand-in, {p['faults']} faults",
        )
    res.add(
        "429s sent by the stand-in (all configurations)",
        final["rate_limited"],
        "",
        note=f"faults injected: {sum(final['faults'].values())}",
    )
    res.add(
        "attempts spent on 429s",
        a["spent_on_429"],
        "",
        target="0",
        note=f"retry_count == failed/expired attempts for every item: {a['mismatched'] == 0}; "
        f"released: {released or {}}",
    )
    res.details = {
        "per_config": per,
        "accounting": dict(a),
        "released": released,
        "limiter": dict(lim or {}),
        "standin": final,
        "items": items,
        "rpm": rpm,
        "provider_rpm": provider_rpm,
        "logs": str(logdir),
    }
    res.seconds = time.perf_counter() - t_start
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p)
    p.add_argument(
        "--provider-rpm", type=int, default=600, help="the stand-in's RPM limit (R_provider)"
    )
    p.add_argument(
        "--fraction", type=float, default=0.8, help="parecer's limit R as a fraction of R_provider"
    )
    p.add_argument("--runners", default="1,2,4", help="runner process counts, comma-separated")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument(
        "--warmup",
        type=float,
        default=10.0,
        help="seconds skipped at the start of each configuration",
    )
    p.add_argument("--window", type=float, default=30.0, help="seconds measured per configuration")
    p.add_argument("--latency-ms", default="300,800")
    p.add_argument(
        "--items",
        type=int,
        default=None,
        help="queue size (default: enough for every configuration)",
    )
    a = p.parse_args(argv)
    lo, _, hi = a.latency_ms.partition(",")
    with C.server(a.database_url) as srv:
        res = run(
            srv,
            provider_rpm=a.provider_rpm,
            fraction=a.fraction,
            runners=tuple(int(x) for x in a.runners.split(",")),
            concurrency=a.concurrency,
            warmup=a.warmup,
            window=a.window,
            latency_ms=(int(lo), int(hi or lo)),
            items=a.items,
            seed=a.seed,
            keep=a.keep,
        )
    C.print_result(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
