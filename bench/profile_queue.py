#!/usr/bin/env python3
"""Where benchmark 1's time goes: a profile of claim / prompt_for / mark_done in PostgreSQL.

Not a benchmark (no baseline); evidence for docs/benchmarks.md. On a database set
up like b01's it drains the queue with 1 and with 8 worker threads and reports:

* per-function time from pg_stat_user_functions (``track_functions = 'all'`` set on
  the benchmark database): calls, total and self milliseconds per item;
* what the 8 workers' backends wait on (pg_stat_activity sampled every 5 ms);
* ``--explain``: auto_explain (ANALYZE, BUFFERS, nested statements) of one claim
  and one mark_done, i.e. the plans of the statements inside the functions;
* ``--wal``: WAL records / full-page images / bytes per claim and per mark_done,
  next to the ceiling's statements;
* ``--plan-cache``: claim times with plan_cache_mode auto vs force_generic_plan
  (how much of a claim is re-planning its statement on every call).

    python bench/profile_queue.py --items 2000 [--no-usage] [--explain] [--wal] [--plan-cache]
"""

from __future__ import annotations

import argparse
import re
import threading
import time
from collections import Counter
from typing import Any

import b01_queue as B
import common as C

FUNCS_SQL = """
SELECT schemaname || '.' || funcname AS fn, calls, round(total_time::numeric, 1) AS total_ms,
       round(self_time::numeric, 1) AS self_ms
FROM pg_stat_user_functions WHERE schemaname = 'parecer' ORDER BY self_time DESC LIMIT %s
"""


def sample_waits(url: str, stop: threading.Event, out: Counter[str]) -> None:
    with C.connect(url, application_name="bench-sampler") as c:
        while not stop.is_set():
            for r in c.execute(
                "SELECT COALESCE(wait_event_type || ':' || wait_event, 'CPU (no wait)') AS w, "
                "substring(query from 'parecer\\.([a-z_]+)\\(') AS fn "
                "FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'parecer-bench' AND state <> 'idle'"
            ).fetchall():
                out[r["w"]] += 1
                if r["w"].startswith("Lock:"):
                    out[f"  {r['w']} in {r['fn']}()"] += 1
            time.sleep(0.005)


def explain_one(url: str, reports: dict[str, str], usage: bool) -> None:
    notes: list[str] = []
    with C.connect(url) as c:
        for _ in range(
            3
        ):  # warm the session: plpgsql plans are cached per session after the first call
            w = c.execute(
                "SELECT analysis_id, lease_token, session_id FROM parecer.claim('explain', 1)"
            ).fetchone()
            assert w is not None
            c.execute(
                "SELECT status FROM parecer.mark_done(%s, %s, %s, %s, %s, %s)",
                (
                    w["analysis_id"],
                    w["lease_token"],
                    reports[w["session_id"]],
                    "bench-noop",
                    B.FAKE_HASH,
                    B.USAGE if usage else None,
                ),
            )
        c.add_notice_handler(lambda d: notes.append(d.message_primary or ""))
        c.execute("LOAD 'auto_explain'")
        for s in (
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_analyze = on",
            "SET auto_explain.log_buffers = on",
            "SET auto_explain.log_nested_statements = on",
            "SET auto_explain.log_timing = on",
            "SET client_min_messages = log",
        ):
            c.execute(s)
        row = c.execute(
            "SELECT analysis_id, lease_token, session_id FROM parecer.claim('explain', 1)"
        ).fetchone()
        assert row is not None
        claim_notes = list(notes)
        notes.clear()
        c.execute(
            "SELECT status FROM parecer.mark_done(%s, %s, %s, %s, %s, %s)",
            (
                row["analysis_id"],
                row["lease_token"],
                reports[row["session_id"]],
                "bench-noop",
                B.FAKE_HASH,
                B.USAGE if usage else None,
            ),
        )
        done_notes = list(notes)
    for title, ns in (("claim", claim_notes), ("mark_done", done_notes)):
        C.say(f"\n---- auto_explain: statements inside one {title} call, slowest first ----")
        timed = []
        for n in ns:
            first = n.splitlines()[0] if n else ""
            try:
                ms = float(first.split("duration:")[1].split("ms")[0])
            except (IndexError, ValueError):
                ms = 0.0
            timed.append((ms, n))
        for _ms, n in sorted(timed, key=lambda x: -x[0])[:6]:
            lines = n.splitlines()
            start = next(
                (i for i, ln in enumerate(lines) if re.match(r"^[A-Z][A-Za-z ]+?  \(cost", ln)), 1
            )
            query = " ".join(" ".join(lines[1:start]).split())
            C.say(f"{lines[0]}  {query[:150]}{'...' if len(query) > 150 else ''}")
            for ln in lines[start:]:
                C.say("    " + ln)
            C.say("")


def plan_cache_experiment(url: str, n: int = 300) -> None:
    """Median claim time in fresh sessions with plan_cache_mode auto vs force_generic_plan.

    Each claim runs in a transaction that is rolled back (the queue does not move), so
    this measures the claim's server work without the commit."""
    import psycopg
    from psycopg.rows import dict_row

    C.say(
        f"\n---- plan cache: {n} claims per session, rolled back, median of the last {n - 50} ----"
    )
    claim_fn = "parecer.claim(text, integer, integer, text, boolean)"
    for mode in ("auto", "force_generic_plan", "auto", "force_generic_plan"):
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as c:
            # claim pins plan_cache_mode itself (0010, 0011); the experiment sets it on the function
            c.execute(f"ALTER FUNCTION {claim_fn} SET plan_cache_mode = {mode}")
            ts = []
            for _ in range(n):
                with c.transaction(force_rollback=True):
                    t0 = time.perf_counter()
                    c.execute("SELECT analysis_id FROM parecer.claim('plan-cache', 1)").fetchone()
                    ts.append(time.perf_counter() - t0)
        tail = sorted(ts[50:])
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(f"ALTER FUNCTION {claim_fn} SET plan_cache_mode = force_generic_plan")
        C.say(
            f"plan_cache_mode = {mode:<18}: claim median {tail[len(tail) // 2] * 1000:.2f} ms, "
            f"p90 {tail[int(len(tail) * 0.9)] * 1000:.2f} ms"
        )


def wal_per_item(url: str, reports: dict[str, str], usage: bool, n: int = 200) -> None:
    """WAL written per item by claim and mark_done (EXPLAIN (ANALYZE, WAL) counts every nested
    statement's WAL), next to the ceiling's two statements. The statements really run."""
    from psycopg import sql

    def wal(c: Any, q: Any) -> tuple[float, float, float]:
        plan = c.execute(sql.SQL("EXPLAIN (ANALYZE, WAL, FORMAT JSON) ") + q).fetchone()[
            "QUERY PLAN"
        ][0]["Plan"]
        return plan.get("WAL Records", 0), plan.get("WAL FPI", 0), plan.get("WAL Bytes", 0)

    tot: dict[str, list[float]] = {
        k: [0.0, 0.0, 0.0] for k in ("claim", "mark_done", "ceiling claim", "ceiling done")
    }
    with C.connect(url) as c:
        for _ in range(n):
            for i, v in enumerate(wal(c, sql.SQL("SELECT * FROM parecer.claim('wal', 1)"))):
                tot["claim"][i] += v
            item = c.execute(
                "SELECT analysis_id, lease_token, session_id FROM parecer.analyses "
                "WHERE worker = 'wal' AND status = 'processing' LIMIT 1"
            ).fetchone()
            assert item is not None
            q = sql.SQL("SELECT * FROM parecer.mark_done({}, {}, {}, 'bench-noop', {}, {})").format(
                sql.Literal(str(item["analysis_id"])),
                sql.Literal(str(item["lease_token"])),
                sql.Literal(reports[item["session_id"]]),
                sql.Literal(B.FAKE_HASH),
                sql.Literal(B.USAGE if usage else None),
            )
            for i, v in enumerate(wal(c, q)):
                tot["mark_done"][i] += v
        B.ceiling_setup(url, n)
        for _ in range(n):
            for i, v in enumerate(wal(c, sql.SQL(B.CEILING_CLAIM))):
                tot["ceiling claim"][i] += v
            qid = c.execute(
                "SELECT min(id) AS id FROM bench_queue WHERE status = 'processing'"
            ).fetchone()["id"]  # type: ignore[index]
            for i, v in enumerate(
                wal(c, sql.SQL(B.CEILING_DONE.replace("%s", "{}")).format(sql.Literal(qid)))
            ):
                tot["ceiling done"][i] += v
    C.say(f"\n---- WAL per item (mean of {n}; commit records not included) ----")
    for k, (r, fpi, b) in tot.items():
        C.say(
            f"{k:<14} {r / n:6.1f} records  {fpi / n:5.2f} full-page images  {b / n / 1024:7.2f} KiB"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--workers", default="1,8")
    p.add_argument("--no-usage", action="store_true")
    p.add_argument("--prompt", action="store_true", help="also call prompt_for")
    p.add_argument("--explain", action="store_true")
    p.add_argument(
        "--wal", action="store_true", help="WAL written per claim / mark_done vs the ceiling"
    )
    p.add_argument(
        "--plan-cache",
        action="store_true",
        help="compare claim times with plan_cache_mode auto vs force_generic_plan",
    )
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args(argv)
    usage = not a.no_usage
    with C.server(a.database_url) as srv, C.bench_database(srv, "profile", keep=a.keep) as url:
        C.load(url, C.sessions_needed(a.items), a.seed)
        with C.connect(url) as c:
            script = C.make_script(c)
            sessions = C.client_sessions(c, limit=a.items)
            reports = B.grounded_reports(c, sessions)
            c.execute("SELECT * FROM parecer.enqueue(%s, %s)", (sessions, script["script_id"]))
            c.execute("SELECT current_database() AS d").fetchone()
            c.execute(
                f"ALTER DATABASE {c.execute('SELECT current_database() AS d').fetchone()['d']} "  # type: ignore[index]
                "SET track_functions = 'all'"
            )
        for i, w in enumerate(int(x) for x in a.workers.split(",")):
            with C.connect(url) as c:
                if i:
                    c.execute(
                        "SELECT * FROM parecer.enqueue(%s, %s, force_reprocess => true)",
                        (sessions, script["script_id"]),
                    )
            C.vacuum_analyze(url, ["parecer.analyses", "parecer._attempts"])
            with C.connect(url) as c:
                c.execute("SELECT pg_stat_reset()")
            waits: Counter[str] = Counter()
            stop = threading.Event()
            sampler = threading.Thread(target=sample_waits, args=(url, stop, waits), daemon=True)
            sampler.start()
            conns = [C.connect(url) for _ in range(w)]
            try:
                loop = B.parecer_loop(conns, a.prompt, reports, usage)
            finally:
                for c in conns:
                    c.close()
            stop.set()
            sampler.join()
            time.sleep(1.0)  # let the backends flush their function stats
            C.say(
                f"\n==== {w} worker(s): {loop.items} items in {loop.seconds:.2f}s = {loop.rate:.0f} items/s; "
                f"client-side per item: "
                + ", ".join(
                    f"{k} {v / loop.items * 1000:.2f} ms" for k, v in loop.op_seconds.items() if v
                )
            )
            with C.connect(url) as c:
                rows = c.execute(FUNCS_SQL, (a.top,)).fetchall()
            C.say(f"{'function':<34} {'calls':>7} {'total ms/item':>14} {'self ms/item':>13}")
            for r in rows:
                C.say(
                    f"{r['fn']:<34} {r['calls']:>7} {float(r['total_ms']) / loop.items:>14.3f} "
                    f"{float(r['self_ms']) / loop.items:>13.3f}"
                )
            tot = sum(v for k, v in waits.items() if not k.startswith("  ")) or 1
            C.say(
                "backend states of the workers (share of samples): "
                + ", ".join(
                    f"{k} {v / tot:.0%}" for k, v in waits.most_common() if not k.startswith("  ")
                )
            )
            C.say(
                "lock waits by statement: "
                + ", ".join(
                    f"{k.strip()} {v / tot:.0%}"
                    for k, v in waits.most_common()
                    if k.startswith("  ")
                )
            )
        if a.wal:
            with C.connect(url) as c:
                c.execute(
                    "SELECT * FROM parecer.enqueue(%s, %s, force_reprocess => true)",
                    (sessions[:300], script["script_id"]),
                )
            wal_per_item(url, reports, usage, n=200)
        if a.plan_cache:
            with C.connect(url) as c:
                c.execute(
                    "SELECT * FROM parecer.enqueue(%s, %s, force_reprocess => true)",
                    (sessions[:100], script["script_id"]),
                )
            C.vacuum_analyze(url, ["parecer.analyses", "parecer._spend"])
            plan_cache_experiment(url)
        if a.explain:
            with C.connect(url) as c:
                c.execute(
                    "SELECT * FROM parecer.enqueue(%s, %s, force_reprocess => true)",
                    (sessions[:8], script["script_id"]),
                )
            explain_one(url, reports, usage)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
