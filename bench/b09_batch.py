#!/usr/bin/env python3
"""Benchmark 9 - Batch API backlog mode: a backlog run end to end, and what it costs.

A backlog run of ``--sessions`` sessions (6 short messages each) goes through
``parecer batch submit`` and ``parecer batch poll`` (the driver in
runner/parecer/batch.py, the real openai SDK) against the stand-in's Files and
Batches endpoints; the stand-in ends the batch at the first poll. Then the same
sessions, in a second database, go through the synchronous runner (concurrency 8,
5-20 ms stand-in latency) as the yardstick.

Figures: wall time of submit (claim, prompts, JSONL, upload, create), of the poll
that stores the results (every line through mark_done's checks), and of the
synchronous run; cost of the batch at the batch price, what the same tokens cost
at the synchronous price, and what the synchronous run cost. The provider's own
time (up to 24 hours) is not part of it: the stand-in runs a batch at once.

    python bench/b09_batch.py --sessions 500
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import common as C
from parecer import batch
from parecer.devkit.standin import Standin, StandinConfig
from parecer.runner import RunnerConfig, run

CLIENT = "batch"
DIALOGUE = [
    (False, "Olá, minha internet caiu de novo, contrato {n}."),
    (True, "Bom dia! Vou verificar o contrato {n} agora."),
    (False, "Já é a terceira vez essa semana, e a fatura veio errada."),
    (True, "Sinto muito. Abri uma visita técnica e pedi o estorno da fatura."),
    (False, "Tá bom, obrigado."),
    (True, "Obrigado pelo contato. A visita está confirmada para amanhã."),
]


def _load(conn: Any, sessions: int) -> None:
    conn.execute(
        "INSERT INTO chat.clients (id, slug, name) VALUES ('cl-batch', %s, 'Batch')", (CLIENT,)
    )
    conn.execute(
        "INSERT INTO chat.contacts (id, client_id) SELECT 'ct-' || g, 'cl-batch'"
        " FROM generate_series(1, %s) g",
        (sessions,),
    )
    conn.execute(
        "INSERT INTO chat.tickets (id, client_id, contact_id)"
        " SELECT 'tk-' || g, 'cl-batch', 'ct-' || g FROM generate_series(1, %s) g",
        (sessions,),
    )
    conn.execute(
        "INSERT INTO chat.sessions (id, ticket_id, started_at, ended_at)"
        " SELECT 'ses-' || g, 'tk-' || g, now() - interval '40 days' - make_interval(mins => g),"
        "        now() - interval '39 days' - make_interval(mins => g) FROM generate_series(1, %s) g",
        (sessions,),
    )
    for i, (from_me, text) in enumerate(DIALOGUE):
        conn.execute(
            "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, created_at, created_at_external)"
            " SELECT 'ses-' || g || '-m' || %(i)s, 'ses-' || g, %(me)s, 'text',"
            "        replace(%(t)s, '{n}', (1000 + g)::text),"
            "        now() - interval '40 days' + make_interval(mins => %(i)s),"
            "        now() - interval '40 days' + make_interval(mins => %(i)s)"
            " FROM generate_series(1, %(n)s) g",
            {"i": i, "me": from_me, "t": text, "n": sessions},
        )
    C.one(
        conn,
        "SELECT * FROM parecer.create_script_version(%s, 'qa', %s, topics => %s, activate => true)",
        (CLIENT, "Avalie a qualidade do atendimento e o desfecho da conversa.", C.TOPICS),
    )


def _prepare(url: str, sessions: int, backlog: bool) -> int:
    with C.connect(url) as c:
        _load(c, sessions)
        C.no_rate_limit(c)
        row = C.one(
            c,
            "SELECT * FROM parecer.start_run(%s, 'qa', max_sessions => %s, min_messages => 1,"
            " backlog => %s)",
            (CLIENT, sessions, backlog),
        )
        assert row["enqueued"] == sessions, row
        return int(row["run_id"])


def _costs(url: str) -> dict[str, Any]:
    with C.connect(url) as c:
        return C.one(
            c,
            "SELECT count(*) FILTER (WHERE status = 'done') AS done, count(*) AS items,"
            " COALESCE(sum(cost_usd), 0)::float8 AS cost,"
            " COALESCE(sum(parecer._cost(model, usage - 'batch')), 0)::float8 AS at_sync_price,"
            " COALESCE(sum((usage ->> 'calls')::int), 0) AS calls"
            " FROM parecer.analyses",
        )


def run_bench(server_url: str, *, sessions: int = 500, seed: int = 7) -> C.Result:
    res = C.Result("b09", f"Batch API backlog mode: {sessions} sessions, stand-in")
    t_all = time.perf_counter()
    conf = StandinConfig(latency_ms=(5, 20), seed=seed, batch_polls=1)

    def cfg(url: str, s: Standin, **kw: Any) -> RunnerConfig:
        return RunnerConfig(
            database_url=url,
            api_key="bench-not-a-key",
            base_url=s.url,
            key_label=C.KEY_LABEL,
            concurrency=8,
            poll_seconds=2.0,
            **kw,
        )

    with C.bench_database(server_url, "batch") as url, Standin(conf) as s:
        run_id = _prepare(url, sessions, backlog=True)
        t0 = time.perf_counter()
        sent = asyncio.run(batch.submit(cfg(url, s), run_id, None))
        t_submit = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows, _ = asyncio.run(batch.poll(cfg(url, s), run_id))
        t_poll = time.perf_counter() - t0
        st = s.stats()
        b = _costs(url)
    assert [r.status for r in rows] == ["completed"] * len(sent), rows
    with C.bench_database(server_url, "batch") as url, Standin(conf) as s:
        run_id = _prepare(url, sessions, backlog=False)
        t0 = time.perf_counter()
        run(cfg(url, s, run_id=run_id))
        t_sync = time.perf_counter() - t0
        y = _costs(url)

    C.say(
        f"   batch: {b['done']}/{b['items']} done, {len(sent)} batch(es), {st['batch_lines']} lines,"
        f" {st['requests']} synchronous calls (repairs); submit {t_submit:.1f} s, poll {t_poll:.1f} s;"
        f" {b['cost']:.6f} USD (same tokens at the synchronous price {b['at_sync_price']:.6f} USD)"
    )
    C.say(
        f"   synchronous runner: {y['done']}/{y['items']} done in {t_sync:.1f} s, {y['cost']:.6f} USD"
    )
    res.add("batch: submit (claim, prompts, upload, create)", t_submit, "s")
    res.add("batch: poll that stores every result", t_poll, "s")
    res.add(
        "batch: submit + poll",
        t_submit + t_poll,
        "s",
        baseline_name="synchronous run",
        baseline=t_sync,
        ratio=(t_submit + t_poll) / t_sync,
        ratio_label="x",
    )
    res.add("batch: done", b["done"], "items", target=f"{sessions}")
    res.add(
        "batch: cost",
        b["cost"],
        "USD",
        baseline_name="same tokens at the synchronous price",
        baseline=b["at_sync_price"],
        ratio=b["cost"] / b["at_sync_price"] if b["at_sync_price"] else None,
        ratio_label="x",
        target="0.5x",
    )
    res.add("synchronous run: cost", y["cost"], "USD")
    res.details.update(
        batch={**b, "submit_s": t_submit, "poll_s": t_poll, "batches": len(sent)},
        synchronous={**y, "seconds": t_sync},
    )
    res.seconds = time.perf_counter() - t_all
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p)
    p.add_argument("--sessions", type=int, default=500)
    a = p.parse_args()
    with C.server(a.database_url) as srv:
        C.print_result(run_bench(srv, sessions=a.sessions, seed=a.seed))


if __name__ == "__main__":
    main()
