#!/usr/bin/env python3
"""Benchmark 7 - real-model quoting: what sloppy citations cost.

The stand-in quotes like a real model: ``--quote-slips 0.1`` gives 1 evidence
excerpt in 10 an honest slip (curly quotes, ``...`` joining two parts, a leading
or trailing ellipsis, an added period, NFD, a no-break space, ``-`` for ``—``, an
emoji or an accent dropped). Reports carry about 8 evidence items (3 topics, 2
flags, outcome, sentiment). One runner (concurrency 8) drains a run of
``--items`` sessions per configuration:

* slips only, ``repair_calls`` 1 and 0: grounding must accept every slip;
* slips plus a fabricated citation in ``--fabricated`` of first answers (the
  stand-in's ``ungrounded_once`` fault: a repair request gets a grounded answer),
  ``repair_calls`` 1 and 0: what the repair call saves.

Figures per configuration: share of items done on the first call, share done in
the first attempt, paid calls (stand-in answers) per done item, failed items.
Target (issue 12): >= 98% done, <= 1.1 paid calls per done item.

    python bench/b07_quote_slips.py --items 200 --quote-slips 0.1
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import common as C
from parecer.devkit.standin import Standin, StandinConfig
from parecer.runner import RunnerConfig, run

CLIENT = "slips"
TOPICS = ["internet", "fatura", "visita técnica"]
DIALOGUE = [
    (False, "Olá! Minha internet caiu de novo — já é a terceira vez essa semana 😡"),
    (True, "Bom dia! Sinto muito pelo transtorno. Pode me passar o número do contrato?"),
    (False, "Claro: contrato nº {n}. E a fatura veio com uma cobrança “extra” que não reconheço."),
    (True, "Entendi. Vou verificar a fatura e abrir uma visita técnica para a sua região."),
    (False, "A visita técnica demorou demais da última vez, esperei o dia inteiro..."),
    (True, "Peço desculpas pela demora; agendei a visita técnica para amanhã cedo."),
    (False, "Se não resolverem vou cancelar o serviço, é sério!"),
    (True, "Compreendo a sua insatisfação. O estorno da cobrança foi solicitado agora."),
    (False, "Tá bom, vou aguardar – mas não aguento mais ficar sem internet 🙏"),
    (True, "Obrigado pela paciência. Qualquer coisa é só chamar por aqui."),
    (False, "Ok, obrigado. Espero que resolvam de verdade desta vez."),
    (True, "O atendimento foi encerrado; a visita técnica está confirmada."),
]


def _load(conn: Any, items: int) -> int:
    """``items`` sessions of the dialogue (the contract number varies); returns the script id."""
    conn.execute(
        "INSERT INTO chat.clients (id, slug, name) VALUES ('cl-slips', %s, 'Slips') ON CONFLICT DO NOTHING",
        (CLIENT,),
    )
    conn.execute(
        "INSERT INTO chat.contacts (id, client_id) SELECT 'ct-' || g, 'cl-slips' FROM generate_series(1, %s) g",
        (items,),
    )
    conn.execute(
        "INSERT INTO chat.tickets (id, client_id, contact_id)"
        " SELECT 'tk-' || g, 'cl-slips', 'ct-' || g FROM generate_series(1, %s) g",
        (items,),
    )
    conn.execute(
        "INSERT INTO chat.sessions (id, ticket_id, started_at, ended_at)"
        " SELECT 'ses-' || g, 'tk-' || g, now() - interval '2 days' - make_interval(mins => g),"
        "        now() - interval '1 day' - make_interval(mins => g) FROM generate_series(1, %s) g",
        (items,),
    )
    for i, (from_me, text) in enumerate(DIALOGUE):
        conn.execute(
            "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, created_at, created_at_external)"
            " SELECT 'ses-' || g || '-m' || %(i)s, 'ses-' || g, %(me)s, 'text', replace(%(t)s, '{n}', (1000 + g)::text),"
            "        now() - interval '2 days' + make_interval(mins => %(i)s), now() - interval '2 days' + make_interval(mins => %(i)s)"
            " FROM generate_series(1, %(n)s) g",
            {"i": i, "me": from_me, "t": text, "n": items},
        )
    row = C.one(
        conn,
        "SELECT * FROM parecer.create_script_version(%s, 'slips', %s, topics => %s, activate => true)",
        (CLIENT, "Avalie a qualidade do atendimento e o desfecho da conversa.", TOPICS),
    )
    return int(row["script_id"])


def _one_config(
    server_url: str,
    res: C.Result,
    *,
    label: str,
    items: int,
    quote_slips: float,
    fabricated: float,
    repair_calls: int,
    seed: int,
) -> dict[str, Any]:
    with C.bench_database(server_url, "slips") as url:
        with C.connect(url) as c:
            _load(c, items)
            C.set_setting(c, "repair_calls", str(repair_calls))
            C.set_setting(c, "backoff_schedule", "{1 second}")
            C.no_rate_limit(c)
            run_id = C.one(
                c,
                "SELECT * FROM parecer.start_run(%s, 'slips', max_sessions => %s, min_messages => 1)",
                (CLIENT, items),
            )["run_id"]
        conf = StandinConfig(
            latency_ms=(5, 20),
            quote_slips=quote_slips,
            fault_rate=fabricated,
            faults=("ungrounded_once",),
            seed=seed,
        )
        t0 = time.perf_counter()
        with Standin(conf) as s:
            run(
                RunnerConfig(
                    database_url=url,
                    api_key="bench-not-a-key",
                    base_url=s.url,
                    key_label=C.KEY_LABEL,
                    concurrency=8,
                    run_id=run_id,
                    poll_seconds=2.0,
                )
            )
            st = s.stats()
        secs = time.perf_counter() - t0
        with C.connect(url) as c:
            row = C.one(
                c,
                "SELECT count(*) FILTER (WHERE status = 'done') AS done,"
                " count(*) FILTER (WHERE status = 'failed') AS failed,"
                " count(*) FILTER (WHERE status = 'done' AND claims = 1"
                "                  AND (usage ->> 'calls')::int = 1) AS first_call,"
                " count(*) FILTER (WHERE status = 'done' AND claims = 1) AS first_attempt,"
                " avg(jsonb_array_length(grounding)) FILTER (WHERE status = 'done') AS evidence,"
                " count(*) AS items FROM parecer.analyses",
            )
            matches = {
                r["m"]: r["n"]
                for r in c.execute(
                    "SELECT g ->> 'match' AS m, count(*) AS n FROM parecer.reports,"
                    " jsonb_array_elements(grounding) g GROUP BY 1"
                ).fetchall()
            }
    paid = st["completed"] + st["incomplete"]
    done = int(row["done"])
    out = {
        "items": int(row["items"]),
        "done": done,
        "failed": int(row["failed"]),
        "first_call_share": int(row["first_call"]) / row["items"],
        "first_attempt_share": int(row["first_attempt"]) / row["items"],
        "done_share": done / row["items"],
        "paid_calls": paid,
        "paid_per_done": paid / done if done else float("nan"),
        "evidence_per_report": float(row["evidence"] or 0),
        "slipped_excerpts": st["slipped_excerpts"],
        "fabricated": st["faults"]["ungrounded_once"],
        "repair_requests": st["repair_requests"],
        "matches": matches,
        "seconds": secs,
    }
    C.say(
        f"   {label}: {done}/{out['items']} done ({out['failed']} failed), "
        f"first call {out['first_call_share']:.1%}, first attempt {out['first_attempt_share']:.1%}, "
        f"{out['paid_per_done']:.3f} paid calls/done, {out['evidence_per_report']:.1f} evidence/report, "
        f"{out['slipped_excerpts']} slipped, {out['fabricated']} fabricated, "
        f"{out['repair_requests']} repairs, matches {matches}, {secs:.0f} s"
    )
    res.add(f"{label}: done on the first call", out["first_call_share"] * 100, "%")
    res.add(
        f"{label}: done",
        out["done_share"] * 100,
        "%",
        target=">= 98%",
    )
    res.add(
        f"{label}: paid calls per done item",
        out["paid_per_done"],
        "calls",
        target="<= 1.1",
    )
    return out


def run_bench(
    server_url: str,
    *,
    items: int = 200,
    quote_slips: float = 0.1,
    fabricated: float = 0.05,
    seed: int = 7,
) -> C.Result:
    res = C.Result("b07", f"sloppy quoting: --quote-slips {quote_slips}, ~8 evidence items")
    t0 = time.perf_counter()
    for fab in (0.0, fabricated):
        for repair in (1, 0):
            label = f"slips {quote_slips}" + (f" + {fab:.0%} fabricated" if fab else "")
            label += f", repair_calls={repair}"
            res.details[label] = _one_config(
                server_url,
                res,
                label=label,
                items=items,
                quote_slips=quote_slips,
                fabricated=fab,
                repair_calls=repair,
                seed=seed,
            )
    res.seconds = time.perf_counter() - t0
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p)
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--quote-slips", type=float, default=0.1)
    p.add_argument("--fabricated", type=float, default=0.05)
    a = p.parse_args()
    with C.server(a.database_url) as srv:
        res = run_bench(
            srv, items=a.items, quote_slips=a.quote_slips, fabricated=a.fabricated, seed=a.seed
        )
    C.print_result(res)


if __name__ == "__main__":
    main()
