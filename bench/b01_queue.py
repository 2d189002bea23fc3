#!/usr/bin/env python3
"""Benchmark 1 - queue overhead: claim -> mark_done with a no-op model.

Worker threads (each its own autocommit connection) drain a queue of ``--items``
analyses through parecer's functions, with no model call:

* ``claim+mark_done``:            parecer.claim(worker, 1, sync_commit => false) as the
  runner claims (``--sync-claim``: claims wait for the WAL flush too), then parecer.mark_done
  with a valid grounded report (it cites the session's first message, read once per
  session up front through parecer.session_transcript, outside the timed loop);
* ``claim+prompt_for+mark_done``: the same plus parecer.prompt_for (the transcript
  text the runner would send), whose prompt_hash goes into mark_done.

mark_done gets a usage object like the runner's (``--no-usage`` to leave it out), so
spend accounting runs as it does in production.

Baseline (the ceiling): a minimal hand-written SKIP LOCKED loop on the same database
and the same worker counts: a bench table (id, status) with a partial index on the
pending rows, ``WITH c AS (SELECT id ... FOR UPDATE SKIP LOCKED LIMIT 1) UPDATE ...
RETURNING`` then ``UPDATE ... SET status = 'done'``, measured right before parecer
at the same worker count. Figures: items/s and parecer / ceiling (target >= 50%), medians
over ``--rounds`` interleaved rounds (default 7).

Each round opens new worker connections. ``--warm-items N`` keeps each loop's
connections for every round instead, as the runner keeps its pooled connections,
warmed up with N items each (not counted): a new connection's first calls compile
the PL/pgSQL functions and plan their statements (custom plans for the first five
calls), a one-off cost per connection; the first item's time is printed.

    python bench/b01_queue.py --items 4000 --workers 1,8
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import common as C

MODES = ("claim+mark_done", "claim+prompt_for+mark_done")
USAGE = json.dumps(
    {
        "input_tokens": 1800,
        "cached_input_tokens": 900,
        "output_tokens": 350,
        "latency_ms": 0,
        "response_id": "resp_bench",
        "requested_model": C.MODEL,
        "model": "bench-noop",
    }
)
FAKE_HASH = "0" * 64


@dataclass
class Loop:
    items: int = 0
    seconds: float = 0.0
    op_seconds: dict[str, float] = field(default_factory=dict)  # summed over threads

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


def _excerpt(text: str) -> str:
    words = text.split()
    return " ".join(words[:6])[:120]


def grounded_reports(conn: Any, sessions: list[str]) -> dict[str, str]:
    """A valid report per session citing its first message with text (read via session_transcript)."""
    rows = conn.execute(
        "SELECT s AS session_id, t.message_id, COALESCE(NULLIF(btrim(t.body), ''), t.transcription) AS text "
        "FROM unnest(%s::text[]) s CROSS JOIN LATERAL ("
        "  SELECT * FROM parecer.session_transcript(s) x"
        "  WHERE NULLIF(btrim(x.body), '') IS NOT NULL OR NULLIF(btrim(x.transcription), '') IS NOT NULL"
        "  ORDER BY x.position LIMIT 1) t",
        (sessions,),
    ).fetchall()
    out = {}
    for r in rows:
        ev = [{"message_id": r["message_id"], "excerpt": _excerpt(r["text"])}]
        out[r["session_id"]] = json.dumps(
            {
                "schema_version": "parecer.report.v1",
                "summary": "Relatório de benchmark (modelo no-op).",
                "outcome": {"evidence": ev, "status": "resolved"},
                "sentiment": {"evidence": [], "start": "neutral", "end": "neutral"},
                "topics": [
                    {
                        "topic": t,
                        "evidence": ev if i == 0 else [],
                        "present": i == 0,
                        "confidence": 0.9,
                    }
                    for i, t in enumerate(C.TOPICS)
                ],
                "flags": [],
                "insufficient_context": False,
                "next_action": None,
            },
            ensure_ascii=False,
        )
    return out


def _threads(n: int, target: Any) -> float:
    """Run target(i, barrier) in n threads; seconds from the common start to the last finish."""
    barrier = threading.Barrier(n + 1)
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            target(i, barrier)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            barrier.abort()

    ts = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    secs = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return secs


def parecer_cycle(
    c: Any,
    wid: str,
    prompt: bool,
    reports: dict[str, str],
    usage: bool,
    sync_claim: bool,
    ops: dict[str, float],
) -> bool:
    """One item through parecer: claim (False when the queue is empty), [prompt_for,] mark_done."""
    t0 = time.perf_counter()
    row = c.execute(
        "SELECT analysis_id, lease_token, session_id FROM parecer.claim(%s, 1, sync_commit => %s)",
        (wid, sync_claim),
    ).fetchone()
    t1 = time.perf_counter()
    ops["claim"] += t1 - t0
    if row is None:
        return False
    ph = FAKE_HASH
    if prompt:
        p = C.one(c, "SELECT prompt_hash FROM parecer.prompt_for(%s)", (row["analysis_id"],))
        ph = p["prompt_hash"]
        t2 = time.perf_counter()
        ops["prompt_for"] += t2 - t1
        t1 = t2
    c.execute(
        "SELECT status FROM parecer.mark_done(%s, %s, %s, %s, %s, %s)",
        (
            row["analysis_id"],
            row["lease_token"],
            reports[row["session_id"]],
            "bench-noop",
            ph,
            USAGE if usage else None,
        ),
    ).fetchone()
    ops["mark_done"] += time.perf_counter() - t1
    return True


def parecer_loop(
    conns: list[Any], prompt: bool, reports: dict[str, str], usage: bool, sync_claim: bool = False
) -> Loop:
    """Drain the queue with one worker thread per connection."""
    res = Loop(op_seconds={"claim": 0.0, "prompt_for": 0.0, "mark_done": 0.0})
    lock = threading.Lock()

    def work(i: int, barrier: threading.Barrier) -> None:
        done, ops = 0, {"claim": 0.0, "prompt_for": 0.0, "mark_done": 0.0}
        c, wid = conns[i], f"bench-w{i}"
        barrier.wait()
        while parecer_cycle(c, wid, prompt, reports, usage, sync_claim, ops):
            done += 1
        with lock:
            res.items += done
            for k, v in ops.items():
                res.op_seconds[k] += v

    res.seconds = _threads(len(conns), work)
    return res


CEILING_CLAIM = (
    "WITH c AS (SELECT id FROM bench_queue WHERE status = 'pending' ORDER BY id "
    "LIMIT 1 FOR UPDATE SKIP LOCKED) "
    "UPDATE bench_queue q SET status = 'processing' FROM c WHERE q.id = c.id RETURNING q.id"
)
CEILING_DONE = "UPDATE bench_queue SET status = 'done' WHERE id = %s"


def ceiling_setup(url: str, items: int) -> None:
    with C.connect(url) as c:
        c.execute("DROP TABLE IF EXISTS bench_queue")
        c.execute(
            "CREATE TABLE bench_queue (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "status text NOT NULL DEFAULT 'pending')"
        )
        c.execute(
            "CREATE INDEX bench_queue_pending_idx ON bench_queue (id) WHERE status = 'pending'"
        )
        c.execute(
            "INSERT INTO bench_queue (status) SELECT 'pending' FROM generate_series(1, %s)",
            (items,),
        )
    C.vacuum_analyze(url, ["bench_queue"])


def ceiling_reset(url: str) -> None:
    with C.connect(url) as c:
        c.execute("UPDATE bench_queue SET status = 'pending'")
    C.vacuum_analyze(url, ["bench_queue"])


def ceiling_cycle(c: Any) -> bool:
    row = c.execute(CEILING_CLAIM).fetchone()
    if row is None:
        return False
    c.execute(CEILING_DONE, (row["id"],))
    return True


def ceiling_loop(conns: list[Any]) -> Loop:
    res = Loop(op_seconds={"claim": 0.0, "done": 0.0})
    lock = threading.Lock()

    def work(i: int, barrier: threading.Barrier) -> None:
        done, ops = 0, {"claim": 0.0, "done": 0.0}
        c = conns[i]
        barrier.wait()
        while True:
            t0 = time.perf_counter()
            row = c.execute(CEILING_CLAIM).fetchone()
            t1 = time.perf_counter()
            ops["claim"] += t1 - t0
            if row is None:
                break
            c.execute(CEILING_DONE, (row["id"],))
            ops["done"] += time.perf_counter() - t1
            done += 1
        with lock:
            res.items += done
            for k, v in ops.items():
                res.op_seconds[k] += v

    res.seconds = _threads(len(conns), work)
    return res


def warm_up(conns: list[Any], n: int, cycle: Any) -> tuple[float, float]:
    """Run n items on each new connection, one connection after the other (the items are put
    back before the first round). Returns (ms of the first item, median ms of the others)."""
    first: list[float] = []
    rest: list[float] = []
    for c in conns:
        for k in range(n):
            t0 = time.perf_counter()
            if not cycle(c):
                raise RuntimeError("queue too small for the warm-up")
            (first if k == 0 else rest).append((time.perf_counter() - t0) * 1000)
    return (statistics.median(first) if first else 0.0, statistics.median(rest) if rest else 0.0)


def run(
    server_url: str,
    *,
    items: int = 3000,
    workers: tuple[int, ...] = (1, 8),
    seed: int = 7,
    usage: bool = True,
    keep: bool = False,
    rounds: int = 7,
    other_clients: bool = False,
    sync_claim: bool = False,
    warm_items: int = 0,
) -> C.Result:
    res = C.Result("b01", "queue overhead: claim -> mark_done, no-op model")
    t_start = time.perf_counter()
    with C.bench_database(server_url, "queue", keep=keep) as url:
        n_sessions = C.sessions_needed(items)
        load_s = C.load(url, n_sessions, seed)
        with C.connect(url) as c:
            script = C.make_script(c)
            sessions = C.client_sessions(c, limit=items)
            if len(sessions) < items:
                raise RuntimeError(f"only {len(sessions)} sessions of {C.CLIENT} for {items} items")
            t0 = time.perf_counter()
            reports = grounded_reports(c, sessions)
            prep_s = time.perf_counter() - t0
            r = c.execute(
                "SELECT * FROM parecer.enqueue(%s, %s)", (sessions, script["script_id"])
            ).fetchone()
            assert r is not None and r["enqueued"] == items, r
            if (
                other_clients
            ):  # every other sample client registered (no work queued): the fair path
                for o in c.execute(
                    "SELECT slug FROM parecer.source_clients WHERE slug <> %s", (C.CLIENT,)
                ).fetchall():
                    c.execute("SELECT parecer.set_client_priority(%s, 1)", (o["slug"],))
        C.say(
            f"   b01 setup: {n_sessions} sample sessions loaded in {load_s:.1f}s, {items} items queued, "
            f"reports prepared in {prep_s:.1f}s"
        )
        ceiling_setup(url, items)

        def requeue() -> None:
            with C.connect(url) as c:  # put every item back to pending (done included)
                c.execute(
                    "SELECT * FROM parecer.enqueue(%s, %s, force_reprocess => true)",
                    (sessions, script["script_id"]),
                )

        # Long-lived worker connections, one set per loop and worker count, warmed up before
        # the first round (warm_items = 0: new connections in every round, cold).
        kept: dict[tuple[str, int], list[Any]] = {}
        if warm_items > 0:
            noop_ops = {"claim": 0.0, "prompt_for": 0.0, "mark_done": 0.0}
            for w in workers:
                kept[("ceiling", w)] = [C.connect(url) for _ in range(w)]
                kept[("parecer", w)] = [C.connect(url) for _ in range(w)]
            need = warm_items * max(workers)
            if need > items:
                raise RuntimeError(
                    f"--warm-items {warm_items} x {max(workers)} workers needs {need} items"
                )
            for w in workers:
                ceiling_reset(url)
                cf, cs = warm_up(kept[("ceiling", w)], warm_items, ceiling_cycle)
                requeue()
                pf, ps = warm_up(
                    kept[("parecer", w)],
                    warm_items,
                    lambda c: parecer_cycle(
                        c, "bench-warm", True, reports, usage, sync_claim, noop_ops
                    ),
                )
                C.say(
                    f"   warm-up, {w} connection(s) per loop, {warm_items} items each: first item on a new connection "
                    f"{pf:.1f} ms for parecer (claim+prompt_for+mark_done; then {ps:.2f} ms), "
                    f"{cf:.1f} ms for the ceiling (then {cs:.2f} ms)"
                )
                res.details.setdefault("first_item_ms", {})[f"{w}w"] = {
                    "parecer": round(pf, 2),
                    "parecer_after": round(ps, 3),
                    "ceiling": round(cf, 2),
                    "ceiling_after": round(cs, 3),
                }
            res.add(
                "first item on a new connection (parecer, claim+prompt_for+mark_done)",
                statistics.median([d["parecer"] for d in res.details["first_item_ms"].values()]),
                "ms",
            )

        def open_conns(kind: str, w: int) -> list[Any]:
            return kept[(kind, w)] if kept else [C.connect(url) for _ in range(w)]

        def close_conns(conns: list[Any]) -> None:
            if not kept:
                for c in conns:
                    c.close()

        # Interleaved rounds: on a shared (virtual) machine a single few-second sample moves by
        # 20-60%; each round measures the ceiling right before parecer at the same worker count,
        # and the figures are medians over the rounds.
        ceil: dict[int, list[Loop]] = {w: [] for w in workers}
        ours: dict[tuple[str, int], list[Loop]] = {(m, w): [] for m in MODES for w in workers}
        first_ceiling = first_parecer = not kept  # the queues are full only if nothing ran yet
        try:
            for rnd in range(1, rounds + 1):
                for w in workers:
                    if not first_ceiling:
                        ceiling_reset(url)
                    first_ceiling = False
                    conns = open_conns("ceiling", w)
                    loop = ceiling_loop(conns)
                    close_conns(conns)
                    ceil[w].append(loop)
                    C.say(
                        f"   round {rnd}: ceiling SKIP LOCKED, {w} worker(s): {loop.items} items in {loop.seconds:.2f}s "
                        f"= {loop.rate:.0f} items/s"
                    )
                    for mode in MODES:
                        if not first_parecer:
                            requeue()
                        C.vacuum_analyze(
                            url, ["parecer.analyses", "parecer._attempts", "parecer._spend"]
                        )
                        first_parecer = False
                        conns = open_conns("parecer", w)
                        loop = parecer_loop(conns, mode != MODES[0], reports, usage, sync_claim)
                        close_conns(conns)
                        ours[(mode, w)].append(loop)
                        per_op = ", ".join(
                            f"{k} {v / max(loop.items, 1) * 1000:.2f} ms"
                            for k, v in loop.op_seconds.items()
                            if v
                        )
                        C.say(
                            f"   round {rnd}: parecer {mode}, {w} worker(s): {loop.items} items in {loop.seconds:.2f}s "
                            f"= {loop.rate:.0f} items/s ({loop.rate / ceil[w][-1].rate:.0%} of this round's ceiling; "
                            f"per item, summed over workers: {per_op})"
                        )
                        if loop.items != items:
                            raise RuntimeError(f"{mode}/{w}: processed {loop.items} of {items}")
        finally:
            for cs_ in kept.values():
                for c in cs_:
                    c.close()
        with C.connect(url) as c:
            done = C.one(c, "SELECT count(*) AS n FROM parecer.analyses WHERE status = 'done'")["n"]
            assert done == items, done

    def median(xs: list[float]) -> float:
        return statistics.median(xs)

    for w in workers:
        ceil_rate = median([x.rate for x in ceil[w]])
        res.add(f"ceiling (SKIP LOCKED claim+update) {w}w", ceil_rate, "items/s")
        for mode in MODES:
            loops = ours[(mode, w)]
            rate = median([x.rate for x in loops])
            per_round = [o.rate / c.rate for o, c in zip(loops, ceil[w])]
            res.add(
                f"{mode} {w}w",
                rate,
                "items/s",
                baseline_name=f"ceiling {w}w",
                baseline=ceil_rate,
                ratio=rate / ceil_rate,
                ratio_label="% of ceiling",
                target=">= 50%",
            )
            res.details.setdefault("per_round_ratio", {})[f"{mode} {w}w"] = [
                round(x, 3) for x in per_round
            ]
    res.details.update(
        {
            "other_clients": other_clients,
            "sync_claim": sync_claim,
            "items": items,
            "workers": list(workers),
            "usage": usage,
            "rounds": rounds,
            "warm_items": warm_items,
            "ops_ms": {
                f"{m} {w}w": {
                    k: median([x.op_seconds[k] / max(x.items, 1) * 1000 for x in ours[(m, w)]])
                    for k in ours[(m, w)][0].op_seconds
                }
                for (m, w) in ours
            },
        }
    )
    res.seconds = time.perf_counter() - t_start
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p)
    p.add_argument("--items", type=int, default=3000, help="queue size per configuration")
    p.add_argument("--workers", default="1,8", help="worker thread counts, comma-separated")
    p.add_argument(
        "--no-usage",
        action="store_true",
        help="mark_done without a usage object (no spend accounting)",
    )
    p.add_argument(
        "--rounds", type=int, default=7, help="interleaved rounds; figures are medians over them"
    )
    p.add_argument(
        "--other-clients",
        action="store_true",
        help="register the sample's other clients (no work queued), so that every claim takes the "
        "multi-client fair path instead of the one-client path",
    )
    p.add_argument(
        "--sync-claim",
        action="store_true",
        help="claims wait for the WAL flush (sync_commit => true, a claim's default in psql); "
        "the runner claims with sync_commit => false",
    )
    p.add_argument(
        "--warm-items",
        type=int,
        default=0,
        help="keep each loop's worker connections for every round, warmed up with this many items "
        "each (not counted); 0 (default): new connections in every round",
    )
    a = p.parse_args(argv)
    with C.server(a.database_url) as srv:
        res = run(
            srv,
            items=a.items,
            workers=tuple(int(x) for x in a.workers.split(",")),
            seed=a.seed,
            usage=not a.no_usage,
            keep=a.keep,
            rounds=a.rounds,
            other_clients=a.other_clients,
            sync_claim=a.sync_claim,
            warm_items=a.warm_items,
        )
    C.print_result(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
