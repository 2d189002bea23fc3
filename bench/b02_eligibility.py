#!/usr/bin/env python3
"""Benchmark 2 - eligibility and enqueue at scale.

Grows the sample (``parecer.devkit.sample.load_sample``, ~25 messages per session) through
``--sizes`` (default 50k / 100k / 200k sessions; 200k is ~5M messages; ``--quick``:
10k / 20k / 40k; ``--max-sessions`` drops sizes above it), runs VACUUM ANALYZE after
each load, and times for acme-telecom (60% of the sessions), with the defaults
(min_messages 20, tag filter {"mode":"none"}):

* ``eligible``: SELECT count(*) FROM parecer.eligible_sessions('acme-telecom');
* ``dry run``:  parecer.start_run(..., dry_run => true, max_sessions => cap);
* ``enqueue``:  parecer.start_run(...) for real with max_sessions = every eligible
  session (setting max_sessions_cap raised). The queue is emptied (TRUNCATE of the
  benchmark database's parecer queue tables) before every enqueue, so each one
  enqueues everything from scratch.

Each timing is the median of ``--repeat`` (default 3) runs.

The baseline is the smallest size: t(size) / t(smallest) against size / smallest
(linear growth gives the same ratio, e.g. ~4x for 200k / 50k). At the largest size it
prints EXPLAIN (ANALYZE, BUFFERS) of the eligibility query exactly as
eligible_sessions builds it (copied from db/migrations/0005_queue.sql, tag filter
'none') and which indexes it uses.

    python bench/b02_eligibility.py                 # 50k, 100k, 200k (~5M messages)
    python bench/b02_eligibility.py --quick         # 10k, 20k, 40k
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from typing import Any

from psycopg import sql

import common as C

FULL_SIZES = (50_000, 100_000, 200_000)
QUICK_SIZES = (10_000, 20_000, 40_000)

# The query parecer.eligible_sessions runs (0005_queue.sql) with the 'none' tag filter;
# $1 client_id, $2 ended_after, $3 ended_before, $4 min_messages, $6 require_agent_reply.
ELIGIBLE_SQL = """
SELECT s.session_id, s.ended_at, count(*)::bigint
FROM parecer.source_sessions s
JOIN parecer.source_messages m ON m.session_id = s.session_id
WHERE s.client_id = $1
  AND s.ended_at IS NOT NULL
  AND ($2::timestamptz IS NULL OR s.ended_at >= $2)
  AND ($3::timestamptz IS NULL OR s.ended_at < $3)
  AND NOT EXISTS (SELECT FROM parecer.source_contact_tags t WHERE t.contact_id = s.contact_id)
GROUP BY s.session_id, s.ended_at
HAVING count(*) >= $4 AND (NOT $6 OR bool_or(m.from_me))
ORDER BY s.ended_at DESC, s.session_id
"""


def _timed(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    row = conn.execute(sql, params).fetchone()
    return time.perf_counter() - t0, row


def explain(conn: Any, client_id: str, min_messages: int = 20) -> tuple[str, dict[str, Any]]:
    """EXPLAIN (ANALYZE, BUFFERS) of the eligibility query with the function's parameter values."""
    conn.execute("DEALLOCATE ALL")
    conn.execute(
        f"PREPARE bench_eligible(text, timestamptz, timestamptz, integer, text[], boolean) AS {ELIGIBLE_SQL}"
    )
    # A one-shot plan with known values, as EXECUTE ... USING gets inside the function.
    conn.execute("SET plan_cache_mode = force_custom_plan")
    args = sql.SQL("EXECUTE bench_eligible({}, NULL, NULL, {}, '{{}}', false)").format(
        sql.Literal(client_id), sql.Literal(min_messages)
    )
    rows = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) ") + args).fetchall()
    text = "\n".join(r["QUERY PLAN"] for r in rows)
    js = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + args).fetchone()[
        "QUERY PLAN"
    ][0]
    conn.execute("RESET plan_cache_mode")
    conn.execute("DEALLOCATE bench_eligible")
    scans: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        nt = node["Node Type"]
        if "Scan" in nt:
            scans.append(
                f"{nt} on {node.get('Relation Name', '?')}"
                + (f" using {node['Index Name']}" if "Index Name" in node else "")
            )
        for child in node.get("Plans", []):
            walk(child)

    walk(js["Plan"])
    summary = {
        "execution_ms": js.get("Execution Time"),
        "planning_ms": js.get("Planning Time"),
        "scans": scans,
        "shared_hit": js["Plan"].get("Shared Hit Blocks"),
        "shared_read": js["Plan"].get("Shared Read Blocks"),
        "temp_written": js["Plan"].get("Temp Written Blocks"),
        "indexes": sorted({m.group(1) for m in re.finditer(r"using (\S+)", " ".join(scans))}),
    }
    return text, summary


def function_plan(conn: Any) -> str | None:
    """The plan eligible_sessions really runs (auto_explain of nested statements, sent to the
    client as LOG notices); None when auto_explain cannot be loaded (not a superuser)."""
    notes: list[str] = []

    def grab(diag: Any) -> None:
        if diag.message_primary and "Query Text" in diag.message_primary:
            notes.append(diag.message_primary)

    try:
        conn.execute("LOAD 'auto_explain'")
    except Exception:  # noqa: BLE001 - optional
        return None
    conn.add_notice_handler(grab)
    try:
        for stmt in (
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_analyze = on",
            "SET auto_explain.log_buffers = on",
            "SET auto_explain.log_nested_statements = on",
            "SET client_min_messages = log",
        ):
            conn.execute(stmt)
        conn.execute("SELECT count(*) FROM parecer.eligible_sessions(%s)", (C.CLIENT,)).fetchone()
    finally:
        conn.execute("SET auto_explain.log_min_duration = -1")
        conn.execute("RESET client_min_messages")
        conn.remove_notice_handler(grab)
    inner = [
        n
        for n in notes
        if "source_messages" in n and "count(*) FROM parecer.eligible_sessions" not in n
    ]
    return inner[0] if inner else None


def _shape(plan: str) -> list[str]:
    """Node types and relations of a text plan, without costs and timings."""
    out = []
    for line in plan.splitlines():
        m = re.match(
            r"^\s*(?:->\s*)?([A-Z][A-Za-z ]+?)(?: using (\S+))?(?: on (\S+))?\s+\(cost", line
        )
        if m:
            out.append(" ".join(x for x in m.groups() if x))
    return out


def truncate_queue(url: str) -> None:
    with C.connect(url) as c:
        c.execute(
            "TRUNCATE parecer.run_items, parecer._attempts, parecer.runs, parecer.analyses CASCADE"
        )
    C.vacuum_analyze(
        url, ["parecer.analyses", "parecer.runs", "parecer.run_items", "parecer._attempts"]
    )


def run(
    server_url: str,
    *,
    sizes: tuple[int, ...] = FULL_SIZES,
    seed: int = 7,
    keep: bool = False,
    show_plan: bool = True,
    repeat: int = 3,
) -> C.Result:
    res = C.Result("b02", "eligibility + enqueue at scale")
    t_start = time.perf_counter()
    per: list[dict[str, Any]] = []
    plan_text, fplan = "", None
    plan: dict[str, Any] = {}
    with C.bench_database(server_url, "eligibility", keep=keep) as url:
        with C.connect(url) as c:
            C.set_setting(c, "max_sessions_cap", "1000000")
        for i, size in enumerate(sizes):
            if i:
                truncate_queue(url)
            load_s = C.load(url, size, seed)  # grows the sample; VACUUM ANALYZE
            with C.connect(url) as c:
                if i == 0:
                    C.make_script(c)
                counts = c.execute(
                    "SELECT (SELECT count(*) FROM chat.sessions) AS sessions, "
                    "(SELECT count(*) FROM chat.messages) AS messages"
                ).fetchone()
                assert counts is not None
                client_id = c.execute(
                    "SELECT client_id FROM parecer.source_clients WHERE slug = %s", (C.CLIENT,)
                ).fetchone()["client_id"]  # type: ignore[index]
                c.execute(
                    "SELECT count(*) FROM parecer.eligible_sessions(%s)", (C.CLIENT,)
                )  # warm the cache
                els = [
                    _timed(
                        c, "SELECT count(*) AS n FROM parecer.eligible_sessions(%s)", (C.CLIENT,)
                    )
                    for _ in range(repeat)
                ]
                eligible = int(els[0][1]["n"])
                drys = [
                    _timed(
                        c,
                        "SELECT * FROM parecer.start_run(%s, %s, dry_run => true, max_sessions => %s)",
                        (C.CLIENT, C.SCRIPT_KEY, 1_000_000),
                    )
                    for _ in range(repeat)
                ]
                dry = drys[0][1]
                assert dry["eligible"] == eligible and dry["would_enqueue"] == eligible, dry
                enqs = []
                for r in range(repeat):
                    if r:
                        truncate_queue(url)
                    t_e, enq = _timed(
                        c,
                        "SELECT * FROM parecer.start_run(%s, %s, max_sessions => %s)",
                        (C.CLIENT, C.SCRIPT_KEY, eligible),
                    )
                    assert enq["enqueued"] == eligible, enq
                    enqs.append(t_e)
                t_el = statistics.median(t for t, _ in els)
                t_dry = statistics.median(t for t, _ in drys)
                t_enq = statistics.median(enqs)
                if i == len(sizes) - 1:
                    plan_text, plan = explain(c, client_id)
                    fplan = function_plan(c)
            p: dict[str, Any] = {
                "sessions": int(counts["sessions"]),
                "messages": int(counts["messages"]),
                "eligible": eligible,
                "load_s": load_s,
                "eligible_s": t_el,
                "dry_run_s": t_dry,
                "enqueue_s": t_enq,
                "runs": {
                    "eligible_s": [t for t, _ in els],
                    "dry_run_s": [t for t, _ in drys],
                    "enqueue_s": enqs,
                },
            }
            per.append(p)
            C.say(
                f"   b02 {size:>7} sessions ({p['messages']} messages, loaded in {load_s:.0f}s): "
                f"{eligible} eligible; median of {repeat}: eligible_sessions {t_el:.2f}s, dry run {t_dry:.2f}s, "
                f"enqueue {t_enq:.2f}s"
            )
    base = per[0]
    for p in per:
        scale = p["sessions"] / base["sessions"]
        for key, label in (
            ("eligible_s", "eligible_sessions count"),
            ("dry_run_s", "start_run dry run"),
            ("enqueue_s", "start_run enqueue all"),
        ):
            res.add(
                f"{label} @ {p['sessions'] // 1000}k sessions ({p['eligible']} eligible)",
                p[key],
                "s",
                baseline_name=f"@ {base['sessions'] // 1000}k",
                baseline=base[key],
                ratio=p[key] / base[key] if base[key] else None,
                ratio_label="x",
                note=f"size ratio {scale:.0f}x" if p is not base else "",
            )
    last = per[-1]
    res.add(
        f"eligibility query EXPLAIN ANALYZE @ {last['sessions'] // 1000}k",
        (plan.get("execution_ms") or 0) / 1000,
        "s",
        note="indexes: " + (", ".join(plan.get("indexes", [])) or "none"),
    )
    res.details = {"sizes": per, "plan": plan, "plan_text": plan_text, "function_plan": fplan}
    if show_plan:
        C.say(
            f"   EXPLAIN (ANALYZE, BUFFERS) of the eligibility query @ {last['sessions']} sessions:"
        )
        for line in plan_text.splitlines():
            C.say("      " + line)
        C.say("   plan summary: " + json.dumps(plan))
        if fplan:
            same = _shape(fplan) == _shape(plan_text)
            C.say(
                f"   inside eligible_sessions (auto_explain of the nested statement): {fplan.splitlines()[0].strip()}; "
                f"plan shape {'identical to' if same else 'DIFFERENT from'} the one above"
            )
            if not same:
                for line in fplan.splitlines():
                    C.say("      " + line)
    res.seconds = time.perf_counter() - t_start
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p)
    p.add_argument(
        "--sizes", default=None, help="comma-separated session counts (default 50000,100000,200000)"
    )
    p.add_argument("--quick", action="store_true", help="10k, 20k, 40k sessions")
    p.add_argument("--max-sessions", type=int, default=None, help="drop sizes above this")
    p.add_argument(
        "--repeat", type=int, default=3, help="timings per size (the median is reported)"
    )
    a = p.parse_args(argv)
    sizes = (
        tuple(int(x) for x in a.sizes.split(","))
        if a.sizes
        else (QUICK_SIZES if a.quick else FULL_SIZES)
    )
    if a.max_sessions:
        sizes = tuple(s for s in sizes if s <= a.max_sessions) or (a.max_sessions,)
    with C.server(a.database_url) as srv:
        res = run(srv, sizes=sizes, seed=a.seed, keep=a.keep, repeat=a.repeat)
    C.print_result(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
