#!/usr/bin/env python3
"""Benchmark 8 - parecer's batched queue path against pgqueuer 1.6, same cluster, same run.

Both sides drain a queue with ``--workers`` asyncio workers (each its own connection)
in one event loop of this process, so the client side costs both the same:

* **parecer**, through its public functions only, as the runner does with
  ``--ack-batch 10``: ``parecer.claim_with_prompts(worker, 10, sync_commit => false)``
  (ten items and their prompts, each hash recorded as ``prompt_for`` records it; the
  hash goes into the report), then one ``parecer.mark_done_many`` with the ten valid
  grounded reports (each through ``mark_done``'s checks, one commit); against an
  older installation, ``claim`` then ``prompts_for``. Every item is a real analysis of a
  sample session, with a usage object, so spend accounting runs as in production.
  ``--claim-path prompts-for`` claims with ``parecer.claim`` and asks ``prompts_for`` of
  the ten (one more call and transaction a batch); ``prompt-for`` asks ``prompt_for`` of
  each item (a call and a transaction per item: benchmark 1's description, a client
  that asks for each prompt on its own).
* **pgqueuer 1.6.0** (the ``bench`` extra), through its own API: ``Queries.install``,
  ``Queries.enqueue`` of no-op jobs, one ``QueueManager`` per worker with a no-op
  entrypoint, ``run(batch_size=10, mode=drain)`` (it dequeues in batches and
  acknowledges through its buffered status log).

Rounds are interleaved (parecer first in odd rounds, pgqueuer first in even ones);
figures are medians over ``--rounds``. Per item, for both: the server's CPU time
(utime + stime of every postgres process in /proc, before and after the drain, with
the workers' connections open through both reads: the server must run on this host)
and the WAL written (``pg_current_wal_lsn()`` before and after).

Connection modes: ``new`` opens the workers' connections in every round (their
first calls plan and compile), ``kept`` opens them once and warms them up
(``--warm-items`` per worker, not counted), as a long-running runner does.

    python bench/b08_pgqueuer.py --items 20000 --rounds 5 --modes new,kept [--sample]
        [--claim-path runner|prompts-for|prompt-for]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

import common as C
from b01_queue import USAGE, grounded_reports

ENTRYPOINT = "parecer_bench_noop"
# parecer.prompts_for exists (set by run_async): the claimed items' prompts in one call
PROMPTS_FOR = True
# parecer.claim_with_prompts exists (set by run_async): the claim gives the prompts
CLAIM_WITH_PROMPTS = True
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Drain:
    items: int
    seconds: float
    cpu_seconds: float
    wal_bytes: int
    client_cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


async def server_pids(conn: psycopg.AsyncConnection[Any]) -> set[int]:
    """The server processes that work for this benchmark: the backends of its database and
    the cluster's own processes (WAL writer, checkpointer, ...), not the backends of other
    databases nor other PostgreSQL servers on the host (tests running beside it)."""
    cur = await conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " OR (datname IS NULL AND backend_type <> 'client backend')"
    )
    return {int(r[0]) for r in await cur.fetchall()} | {_postmaster(conn)}


def _postmaster(conn: psycopg.AsyncConnection[Any]) -> int:
    """The postmaster's pid: the parent of this connection's backend."""
    with open(f"/proc/{conn.info.backend_pid}/stat", encoding="ascii", errors="replace") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def server_cpu_seconds(pids: set[int] | None = None) -> float | None:
    """utime + stime of the processes ``pids`` (default: every process named postgres on
    this host); None: none visible."""
    total, seen = 0, False
    for pid in os.listdir("/proc") if pids is None else map(str, pids):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if not comm.startswith("postgres"):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        seen = True
    return total / CLK_TCK if seen else None


async def wal_lsn(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn AS b")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


TWO_MESSAGE_CLIENT = "b08"


def two_message_sessions(url: str, n: int) -> None:
    """``n`` ended sessions of two messages (customer, agent) for client b08, set-based
    into the reference chat schema (the host's tables, not parecer's)."""
    with C.connect(url) as c:
        c.execute(
            "INSERT INTO chat.clients (id, slug, name) VALUES ('cl-b08', %s, 'B08')",
            (TWO_MESSAGE_CLIENT,),
        )
        c.execute(
            "INSERT INTO chat.contacts (id, client_id, name)"
            " SELECT 'ct-b08-' || i, 'cl-b08', 'Contato ' || i FROM generate_series(1, %s) i",
            (n,),
        )
        c.execute(
            "INSERT INTO chat.tickets (id, client_id, contact_id)"
            " SELECT 'tk-b08-' || i, 'cl-b08', 'ct-b08-' || i FROM generate_series(1, %s) i",
            (n,),
        )
        c.execute(
            "INSERT INTO chat.sessions (id, ticket_id, started_at, ended_at)"
            " SELECT 'ses-b08-' || i, 'tk-b08-' || i, now() - interval '3 days' - i * interval '1 minute',"
            " now() - interval '2 days' - i * interval '1 minute' FROM generate_series(1, %s) i",
            (n,),
        )
        c.execute(
            "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, created_at,"
            " created_at_external)"
            " SELECT 'ses-b08-' || i || '-m' || k, 'ses-b08-' || i, k = 1, 'text',"
            " CASE k WHEN 0 THEN 'Olá, minha internet caiu de novo desde ontem à noite'"
            " ELSE 'Bom dia, aqui é o atendente, vou verificar a sua conexão agora' END,"
            " t, t FROM generate_series(1, %s) i, generate_series(0, 1) k,"
            " LATERAL (SELECT now() - interval '3 days' - i * interval '1 minute'"
            " + k * interval '10 seconds' AS t) x",
            (n,),
        )


def use_claim_path(claim_path: str) -> None:
    """Claim and get prompts by ``claim_path`` (C.CLAIM_PATHS), within what the installation
    has (PROMPTS_FOR, CLAIM_WITH_PROMPTS as detected): ``runner`` as detected."""
    global PROMPTS_FOR, CLAIM_WITH_PROMPTS
    if claim_path not in C.CLAIM_PATHS:
        raise ValueError(f"claim_path: one of {', '.join(C.CLAIM_PATHS)}")
    if claim_path == "prompts-for" and not PROMPTS_FOR:
        raise RuntimeError("this installation has no parecer.prompts_for")
    if claim_path != "runner":
        CLAIM_WITH_PROMPTS = False
        PROMPTS_FOR = claim_path == "prompts-for"


def parecer_work(url: str, client: str, items: int) -> tuple[Any, list[str], dict[str, Any]]:
    """What the parecer side analyses: a script for ``client``, its first ``items``
    sessions, and a valid grounded report for each (by session id)."""
    with C.connect(url) as c:
        script = C.make_script(c, client=client)
        sessions = C.client_sessions(c, client, limit=items)
        if len(sessions) < items:
            raise RuntimeError(f"only {len(sessions)} sessions of {client} for {items} items")
        reports = {k: json.loads(v) for k, v in grounded_reports(c, sessions).items()}
    return script, sessions, reports


def claim_label() -> str:
    """How the parecer side claims and gets its prompts, for the result lines."""
    if CLAIM_WITH_PROMPTS:
        return "claim_with_prompts10"
    return "claim10+prompts_for" if PROMPTS_FOR else "claim10+prompt_for"


async def close_and_wait(conns: list[psycopg.AsyncConnection[Any]]) -> None:
    """Close connections and wait until their server processes are gone: a backend that
    exits between the two CPU reads would take its CPU time out of the next figure."""
    pids = [cn.info.backend_pid for cn in conns]
    for cn in conns:
        await cn.close()
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def connect(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(
        url, autocommit=True, application_name="parecer-bench"
    )


async def parecer_worker(
    conn: psycopg.AsyncConnection[Any],
    wid: str,
    reports: dict[str, Any],
    limit: int | None,
    batched: bool = True,
) -> int:
    """claim 10, their prompts in one prompts_for call, one mark_done_many (``batched``) or
    one mark_done per item; until the queue is empty (or ``limit`` items)."""
    done = 0
    cur = conn.cursor(row_factory=dict_row)
    while limit is None or done < limit:
        n = 10 if limit is None else min(10, limit - done)
        if CLAIM_WITH_PROMPTS:  # as the runner claims: the prompts come with the items
            await cur.execute(
                "SELECT analysis_id, lease_token, session_id, prompt_hash, sqlstate"
                " FROM parecer.claim_with_prompts(%s, %s, sync_commit => false)",
                (wid, n),
            )
        else:
            await cur.execute(
                "SELECT analysis_id, lease_token, session_id"
                " FROM parecer.claim(%s, %s, sync_commit => false)",
                (wid, n),
            )
        claimed = await cur.fetchall()
        if not claimed:
            break
        if CLAIM_WITH_PROMPTS:
            prompts = claimed
            if any(p["sqlstate"] for p in prompts):
                raise RuntimeError(f"claim_with_prompts gave no prompt for items: {prompts}")
        elif PROMPTS_FOR:
            await cur.execute(
                "SELECT prompt_hash, sqlstate FROM parecer.prompts_for(%s)",
                ([r["analysis_id"] for r in claimed],),
            )
            prompts = await cur.fetchall()
            if any(p["sqlstate"] for p in prompts):
                raise RuntimeError(f"prompts_for refused items: {prompts}")
        else:  # an installation without prompts_for (before issue 18's part 3): one call each
            prompts = []
            for r in claimed:
                await cur.execute(
                    "SELECT prompt_hash FROM parecer.prompt_for(%s)", (r["analysis_id"],)
                )
                p = await cur.fetchone()
                assert p is not None
                prompts.append(p)
        items = [
            {
                "analysis_id": str(r["analysis_id"]),
                "lease_token": str(r["lease_token"]),
                "report": reports[r["session_id"]],
                "model": "bench-noop",
                "prompt_hash": p["prompt_hash"],
                "usage": json.loads(USAGE),
            }
            for r, p in zip(claimed, prompts, strict=True)
        ]
        if batched:
            await cur.execute(
                "SELECT outcome FROM parecer.mark_done_many(%s)", (json.dumps(items),)
            )
            outcomes = [o["outcome"] for o in await cur.fetchall()]
        else:
            outcomes = []
            for it in items:
                await cur.execute(
                    "SELECT status FROM parecer.mark_done(%s, %s, %s, %s, %s, %s)",
                    (
                        it["analysis_id"],
                        it["lease_token"],
                        json.dumps(it["report"]),
                        it["model"],
                        it["prompt_hash"],
                        USAGE,
                    ),
                )
                row = await cur.fetchone()
                outcomes.append("done" if row is not None and row["status"] == "done" else "?")
        if outcomes != ["done"] * len(items):
            raise RuntimeError(f"mark_done_many refused items: {outcomes}")
        done += len(items)
    return done


async def pgqueuer_worker(conn: psycopg.AsyncConnection[Any], batch: int) -> int:
    from pgqueuer import QueueManager
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    qm = QueueManager(Queries(PsycopgDriver(conn)))
    count = 0

    async def noop(job: Any) -> None:
        nonlocal count
        count += 1

    # registered by a call, not a decorator: without the bench extra installed, mypy
    # sees pgqueuer as untyped, and an untyped decorator fails --strict
    qm.entrypoint(ENTRYPOINT)(noop)
    await qm.run(
        batch_size=batch,
        mode=QueueExecutionMode.drain,
        dequeue_timeout=timedelta(seconds=1),
        log_aggregation_interval=timedelta(0),
    )
    return count


async def measure(
    meter: psycopg.AsyncConnection[Any],
    workers: list[Any],
    expected: int,
    finished: str | None = None,
) -> Drain:
    """Drain with ``workers``; the drain ends when they return, or, with ``finished`` (a
    query that is true once every item is acknowledged), as soon as it turns true: a
    pgqueuer QueueManager in drain mode waits for its dequeue timeout and flushes before
    it returns, time that is not queue work."""
    pids = await server_pids(meter)
    cpu0 = server_cpu_seconds(pids)
    wal0 = await wal_lsn(meter)
    me0 = os.times()
    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(w) for w in workers]
    if finished is None:
        counts = await asyncio.gather(*tasks)
    else:
        while True:
            cur = await meter.execute(finished)
            row = await cur.fetchone()
            if row is not None and row[0]:
                break
            if all(t.done() for t in tasks):
                break
            await asyncio.sleep(0.005)
    secs = time.perf_counter() - t0
    me1 = os.times()
    wal1 = await wal_lsn(meter)
    cpu1 = server_cpu_seconds(pids | await server_pids(meter))  # and those started meanwhile
    counts = await asyncio.gather(*tasks)
    items = sum(counts)
    if items != expected:
        raise RuntimeError(f"drained {items} items, expected {expected}")
    cpu = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else float("nan")
    client = (me1.user - me0.user) + (me1.system - me0.system)
    return Drain(items, secs, cpu, wal1 - wal0, client)


async def run_async(
    url: str,
    *,
    items: int,
    workers: int,
    rounds: int,
    modes: tuple[str, ...],
    warm_items: int,
    client: str,
    single: bool,
    res: C.Result,
    claim_path: str = "runner",
) -> None:
    sides: tuple[str, ...] = ("parecer", "pgqueuer", *(("parecer-single",) if single else ()))
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    global PROMPTS_FOR, CLAIM_WITH_PROMPTS
    meter = await connect(url)
    await Queries(PsycopgDriver(meter)).install()
    cur = await meter.execute(
        "SELECT to_regprocedure('parecer.prompts_for(uuid[])') IS NOT NULL,"
        " to_regprocedure('parecer.claim_with_prompts(text, integer, integer, text, boolean)') IS NOT NULL"
    )
    PROMPTS_FOR, CLAIM_WITH_PROMPTS = map(bool, await cur.fetchone() or [False, False])
    use_claim_path(claim_path)
    C.say(f"   b08 claims and prompts: {claim_label()}")
    script, sessions, reports = parecer_work(url, client, items)

    async def queue_parecer(n: int) -> None:
        await meter.execute(
            "SELECT * FROM parecer.enqueue(%s, %s, force_reprocess => true)",
            (sessions[:n], script["script_id"]),
        )

    async def queue_pgqueuer(n: int) -> None:
        await Queries(PsycopgDriver(meter)).enqueue([ENTRYPOINT] * n, [None] * n, [0] * n)

    async def settle() -> None:
        await meter.execute("VACUUM ANALYZE parecer.analyses")
        await meter.execute("VACUUM ANALYZE pgqueuer")

    if "new" not in modes and "kept" not in modes:
        raise ValueError("modes: new and/or kept")
    for mode in modes:
        kept: dict[str, list[psycopg.AsyncConnection[Any]]] = {}
        if mode == "kept":
            kept = {side: [await connect(url) for _ in range(workers)] for side in sides}
            await queue_parecer(warm_items * workers)
            await asyncio.gather(
                *(
                    parecer_worker(cn, f"bench-w{i}", reports, warm_items)
                    for i, cn in enumerate(kept["parecer"])
                )
            )
        per: dict[str, list[Drain]] = {side: [] for side in sides}
        for r in range(rounds):
            order = sides[r % len(sides) :] + sides[: r % len(sides)]  # each side first in turn
            for side in order:
                if side != "pgqueuer":
                    await queue_parecer(items)
                else:
                    await queue_pgqueuer(items)
                await settle()
                conns = kept.get(side) or [await connect(url) for _ in range(workers)]
                if side != "pgqueuer":
                    jobs = [
                        parecer_worker(cn, f"bench-w{i}", reports, None, side == "parecer")
                        for i, cn in enumerate(conns)
                    ]
                else:
                    jobs = [pgqueuer_worker(cn, 10) for cn in conns]
                d = await measure(
                    meter,
                    jobs,
                    items,
                    None if side != "pgqueuer" else "SELECT NOT EXISTS (SELECT FROM pgqueuer)",
                )
                if not kept:
                    await close_and_wait(conns)
                per[side].append(d)
                C.say(
                    f"   b08 {mode} round {r + 1} {side}: {d.rate:.0f} items/s, "
                    f"{d.cpu_seconds / d.items * 1e6:.0f} server CPU µs/item, "
                    f"{d.wal_bytes / d.items:.0f} WAL B/item, "
                    f"{d.client_cpu_seconds / d.items * 1e6:.0f} client CPU µs/item"
                )
        for conns in kept.values():
            await close_and_wait(conns)

        def med(side: str, f: Any, per: dict[str, list[Drain]] = per) -> float:
            return float(statistics.median(f(d) for d in per[side]))

        rate_p, rate_q = med("parecer", lambda d: d.rate), med("pgqueuer", lambda d: d.rate)
        res.add(
            f"parecer {claim_label()}+mark_done_many10, {workers} workers, {mode} connections",
            rate_p,
            "items/s",
            baseline_name="pgqueuer 1.6.0 no-op jobs",
            baseline=rate_q,
            ratio=rate_p / rate_q if rate_q else None,
            ratio_label="x",
            target=">= 1x",
        )
        if "parecer-single" in per:
            rate_s = med("parecer-single", lambda d: d.rate)
            res.add(
                f"parecer {claim_label()}+mark_done per item (ack window 0), {workers} workers, "
                f"{mode} connections",
                rate_s,
                "items/s",
                baseline_name="pgqueuer 1.6.0 no-op jobs",
                baseline=rate_q,
                ratio=rate_s / rate_q if rate_q else None,
                ratio_label="x",
            )
        for label, f, unit in (
            ("server CPU per item", lambda d: d.cpu_seconds / d.items * 1e6, "µs"),
            ("WAL per item", lambda d: d.wal_bytes / d.items, "bytes"),
            ("bench client CPU per item", lambda d: d.client_cpu_seconds / d.items * 1e6, "µs"),
        ):
            p_, q_ = med("parecer", f), med("pgqueuer", f)
            res.add(
                f"{label}, {mode} connections",
                p_,
                unit,
                baseline_name="pgqueuer",
                baseline=q_,
                ratio=p_ / q_ if q_ else None,
                ratio_label="x",
            )
        res.details[mode] = {
            side: [
                {
                    "items_per_s": round(d.rate, 1),
                    "cpu_us_per_item": round(d.cpu_seconds / d.items * 1e6, 1),
                    "wal_bytes_per_item": round(d.wal_bytes / d.items, 1),
                    "client_cpu_us_per_item": round(d.client_cpu_seconds / d.items * 1e6, 1),
                }
                for d in ds
            ]
            for side, ds in per.items()
        }
    await meter.close()


def run(
    server_url: str,
    *,
    items: int = 20000,
    workers: int = 8,
    rounds: int = 3,
    modes: tuple[str, ...] = ("new", "kept"),
    warm_items: int = 20,
    sample: bool = False,
    single: bool = True,
    seed: int = 7,
    keep: bool = False,
    claim_path: str = "runner",
) -> C.Result:
    kind = "sample sessions" if sample else "two-message sessions"
    res = C.Result("b08", f"parecer (batched) vs pgqueuer 1.6.0, {items} {kind}, {workers} workers")
    t0 = time.perf_counter()
    with C.bench_database(server_url, "pgqueuer", keep=keep) as url:
        t1 = time.perf_counter()
        if sample:
            C.load(url, C.sessions_needed(items), seed)
        else:
            two_message_sessions(url, items)
            C.vacuum_analyze(url)
        C.say(f"   b08 setup: {items} {kind} in {time.perf_counter() - t1:.1f}s")
        asyncio.run(
            run_async(
                url,
                items=items,
                workers=workers,
                rounds=rounds,
                modes=modes,
                warm_items=warm_items,
                client=C.CLIENT if sample else TWO_MESSAGE_CLIENT,
                single=single,
                res=res,
                claim_path=claim_path,
            )
        )
    res.seconds = time.perf_counter() - t0
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p)
    p.add_argument("--items", type=int, default=20000, help="queue size per drain")
    p.add_argument(
        "--no-single",
        action="store_true",
        help="leave out the third side: parecer with one mark_done per item (the runner's "
        "--ack-window-ms 0)",
    )
    p.add_argument(
        "--sample",
        action="store_true",
        help="queue the bundled sample's sessions (about 25 messages) instead of two-message ones",
    )
    p.add_argument("--workers", type=int, default=8, help="worker connections per side")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians over them")
    p.add_argument("--modes", default="new,kept", help="connection modes: new, kept or both")
    p.add_argument("--warm-items", type=int, default=20, help="kept mode: warm-up items per worker")
    C.add_claim_path_arg(p)
    a = p.parse_args(argv)
    with C.server(a.database_url) as srv:
        res = run(
            srv,
            items=a.items,
            workers=a.workers,
            rounds=a.rounds,
            modes=tuple(a.modes.split(",")),
            warm_items=a.warm_items,
            sample=a.sample,
            single=not a.no_single,
            seed=a.seed,
            keep=a.keep,
            claim_path=a.claim_path,
        )
    C.print_result(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
