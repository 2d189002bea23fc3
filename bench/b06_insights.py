#!/usr/bin/env python3
"""Benchmark 6 - insights over 100k done reports of one client.

Loads ``--reports`` (default 100 000) synthetic done reports for acme-telecom and
a fifth as many for another client, straight into ``parecer.analyses`` with one
``INSERT ... SELECT`` (synthetic data: mark_done would check grounding against
sessions we do not load; what is measured here is reading, not writing). The
reports follow ``parecer.report.v1`` with the demo's five topics: summary,
evidence quotes for the outcome, the sentiment, every present topic and every
flag (about 1.5 KiB of jsonb each, so most are compressed in line or TOASTed as
real ones are), processed over the last 26 weeks, with a cost each.

Then, after VACUUM ANALYZE, it times (median of ``--repeat`` runs, default 7,
after one warm-up):

* ``insights``: ``SELECT parecer.insights('acme-telecom')`` over every report;
* ``insights, last 4 weeks``: the same with ``since => now() - 28 days``;
* ``insight_sessions``: the first page (20 rows) for a common topic and for a
  rare flag (``legal_threat``, ~1%), newest first.

It prints EXPLAIN (ANALYZE, BUFFERS) of the insights query (the body of
``parecer._insights`` with the client's id) so the plan can be checked.

    python bench/b06_insights.py                    # 100k reports
    python bench/b06_insights.py --reports 20000    # quicker
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import common as C

TOPICS = [
    "cancelamento",
    "cobrança indevida",
    "internet lenta ou sem conexão",
    "portabilidade",
    "cordialidade do atendente",
]
OTHER_CLIENT_SHARE = 0.2

LOAD_SQL = """
INSERT INTO parecer.analyses (client_id, client_slug, session_id, script_id, analysis_version_tag, status, claims,
                              worker, report, model, prompt_hash, usage, cost_usd, started_at, processed_at,
                              created_at, updated_at)
SELECT %(client_id)s, %(slug)s, %(slug)s || ':b06-' || g.i, %(script_id)s, 'v1', 'done', 1, 'bench',
       jsonb_build_object(
         'schema_version', 'parecer.report.v1',
         'summary', 'Cliente relatou ' || (ARRAY['queda de internet', 'cobrança em duplicidade', 'lentidão à noite',
                    'pedido de portabilidade'])[1 + (g.i %% 4)] || ' e o atendente ' ||
                    (ARRAY['resolveu na hora.', 'abriu um chamado técnico.', 'transferiu para o financeiro.',
                           'não respondeu a tempo.'])[1 + (g.i / 4 %% 4)] ||
                    ' Sessão sintética número ' || g.i || ' do benchmark b06, com texto suficiente para um resumo real.',
         'outcome', jsonb_build_object('evidence', jsonb_build_array(
                        jsonb_build_object('message_id', 'b06-' || g.i || '-m011', 'excerpt', 'Fiz um reset remoto na sua porta, pode testar de novo?'),
                        jsonb_build_object('message_id', 'b06-' || g.i || '-m012', 'excerpt', 'Voltou a funcionar, obrigada!')),
                    'status', (ARRAY['resolved', 'resolved', 'resolved', 'unresolved', 'escalated', 'abandoned', 'unknown'])[1 + floor(g.r1 * 7)::int]),
         'sentiment', jsonb_build_object('evidence', jsonb_build_array(
                        jsonb_build_object('message_id', 'b06-' || g.i || '-m000', 'excerpt', 'minha internet caiu de novo desde ontem'),
                        jsonb_build_object('message_id', 'b06-' || g.i || '-m012', 'excerpt', 'obrigada!')),
                    'start', (ARRAY['negative', 'negative', 'neutral', 'positive', 'unknown'])[1 + floor(g.r2 * 5)::int],
                    'end', (ARRAY['negative', 'neutral', 'positive', 'positive', 'unknown'])[1 + floor(g.r3 * 5)::int]),
         'topics', (SELECT jsonb_agg(jsonb_build_object(
                        'topic', t.name,
                        'evidence', CASE WHEN t.present THEN jsonb_build_array(jsonb_build_object(
                                        'message_id', 'b06-' || g.i || '-m00' || t.n, 'excerpt', 'trecho citado sobre ' || t.name))
                                    ELSE '[]'::jsonb END,
                        'present', t.present, 'confidence', round((0.5 + g.r4 / 2)::numeric, 2)) ORDER BY t.n)
                    FROM (SELECT u.name, u.n, ((g.i * 7919 + u.n * 104729) %% 100) < (ARRAY[15, 20, 45, 8, 30])[u.n] AS present
                          FROM unnest(%(topics)s::text[]) WITH ORDINALITY u(name, n)) t),
         'flags', (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                        'evidence', jsonb_build_array(jsonb_build_object('message_id', 'b06-' || g.i || '-m004',
                                                                         'excerpt', 'se não resolver hoje eu vou cancelar')),
                        'flag', f.flag)), '[]'::jsonb)
                   FROM (VALUES ('churn_risk', 12), ('complaint', 6), ('legal_threat', 1), ('slow_response', 20),
                                ('human_requested', 4)) f(flag, pct)
                   WHERE ((g.i * 31 + length(f.flag) * 977) %% 100) < f.pct),
         'insufficient_context', g.r5 < 0.05,
         'next_action', CASE WHEN g.r5 < 0.5 THEN 'Acompanhar o cliente nos próximos dias.' END),
       'gpt-5-mini', md5(g.i::text) || md5(g.i::text || 'x'),
       '{"input_tokens": 2400, "cached_input_tokens": 1024, "output_tokens": 420}'::jsonb,
       round((0.0008 + g.r4 * 0.0004)::numeric, 6),
       g.t - interval '20 seconds', g.t, g.t - interval '1 minute', g.t
FROM (SELECT i, now() - random() * interval '182 days' AS t,
             random() AS r1, random() AS r2, random() AS r3, random() AS r4, random() AS r5
      FROM generate_series(1, %(n)s) i) g
"""


def load_reports(c: Any, slug: str, n: int) -> None:
    script = C.make_script(c, client=slug, key="b06", topics=TOPICS)
    client_id = c.execute(
        "SELECT client_id FROM parecer.source_clients WHERE slug = %s", (slug,)
    ).fetchone()["client_id"]
    c.execute("SELECT setseed(0.42)")
    c.execute(
        LOAD_SQL,
        {
            "client_id": client_id,
            "slug": slug,
            "script_id": script["script_id"],
            "n": n,
            "topics": TOPICS,
        },
    )


def timed(c: Any, sql: str, params: tuple[Any, ...], repeat: int) -> tuple[float, list[float], Any]:
    c.execute(sql, params).fetchall()  # warm-up
    ts: list[float] = []
    rows: Any = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows = c.execute(sql, params).fetchall()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts, rows


def run(
    server_url: str,
    *,
    reports: int = 100_000,
    repeat: int = 7,
    seed: int = 7,
    keep: bool = False,
    show_plan: bool = True,
) -> C.Result:
    res = C.Result("b06", f"insights over {reports // 1000}k done reports of one client")
    t_start = time.perf_counter()
    with C.bench_database(server_url, "insights", keep=keep) as url:
        C.load(url, 200, seed, analyze=False)  # the clients (and a few sessions) of the sample
        with C.connect(url) as c:
            other = c.execute(  # type: ignore[index]
                "SELECT slug FROM parecer.source_clients WHERE slug <> %s ORDER BY slug LIMIT 1",
                (C.CLIENT,),
            ).fetchone()["slug"]
            t0 = time.perf_counter()
            load_reports(c, C.CLIENT, reports)
            load_reports(c, other, int(reports * OTHER_CLIENT_SHARE))
            load_s = time.perf_counter() - t0
        C.vacuum_analyze(url, ["parecer.analyses", "parecer.scripts"])
        with C.connect(url) as c:
            size = c.execute(
                "SELECT pg_size_pretty(pg_total_relation_size('parecer.analyses')) AS s, "
                "avg(pg_column_size(report))::int AS avg_report FROM parecer.analyses"
            ).fetchone()
            C.say(
                f"   b06 loaded {reports} + {int(reports * OTHER_CLIENT_SHARE)} reports in {load_s:.0f}s; "
                f"parecer.analyses {size['s']}, report column {size['avg_report']} B on average (stored)"  # type: ignore[index]
            )
            t_all, ts_all, rows = timed(
                c, "SELECT parecer.insights(%s) AS doc", (C.CLIENT,), repeat
            )
            doc = rows[0]["doc"]
            assert doc["sessions"] == reports, doc["sessions"]
            t_4w, ts_4w, rows4 = timed(
                c,
                "SELECT parecer.insights(%s, since => now() - interval '28 days') AS doc",
                (C.CLIENT,),
                repeat,
            )
            t_topic, ts_topic, page = timed(
                c,
                "SELECT * FROM parecer.insight_sessions(%s, topic => %s)",
                (C.CLIENT, TOPICS[2]),
                repeat,
            )
            assert len(page) == 20
            t_flag, ts_flag, page_f = timed(
                c,
                "SELECT * FROM parecer.insight_sessions(%s, flag => 'legal_threat')",
                (C.CLIENT,),
                repeat,
            )
            plan = ""
            if show_plan:
                body = c.execute(  # type: ignore[index]
                    "SELECT prosrc FROM pg_proc WHERE proname = '_insights'"
                ).fetchone()["prosrc"]
                cid = c.execute(  # type: ignore[index]
                    "SELECT client_id FROM parecer.source_clients WHERE slug = %s", (C.CLIENT,)
                ).fetchone()["client_id"]
                q = (
                    body.replace("p_client_id", "%s")
                    .replace("p_script_key", "NULL::text")
                    .replace("p_since", "NULL::timestamptz")
                    .replace("p_until", "NULL::timestamptz")
                    .replace("p_version", "NULL::int")
                    .replace("p_tag", "NULL::text")
                    .replace("%%", "%%%%")
                )
                c.execute("SET jit = off")  # as parecer._insights runs (SET jit = off)
                plan = "\n".join(
                    r["QUERY PLAN"] for r in c.execute("EXPLAIN (ANALYZE, BUFFERS) " + q, (cid,))
                )
    res.add(
        f"parecer.insights, all {reports // 1000}k reports ({len(doc['weeks'])} weeks)",
        t_all,
        "s",
        target="< 1 s",
        note="runs " + ", ".join(f"{t:.3f}" for t in ts_all),
    )
    res.add(
        f"parecer.insights, last 4 weeks ({rows4[0]['doc']['sessions']} reports)",
        t_4w,
        "s",
        note="runs " + ", ".join(f"{t:.3f}" for t in ts_4w),
    )
    res.add(f"parecer.insight_sessions, topic '{TOPICS[2]}' (first page of 20)", t_topic, "s")
    res.add(
        f"parecer.insight_sessions, flag legal_threat (~1%, first page of {len(page_f)})",
        t_flag,
        "s",
    )
    res.details = {
        "reports": reports,
        "load_s": load_s,
        "plan_text": plan,
        "runs": {"all": ts_all, "4w": ts_4w, "topic": ts_topic, "flag": ts_flag},
    }
    if show_plan and plan:
        C.say("   EXPLAIN (ANALYZE, BUFFERS) of the insights query (whole window):")
        for line in plan.splitlines():
            C.say("      " + line)
    res.seconds = time.perf_counter() - t_start
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p)
    p.add_argument("--reports", type=int, default=100_000, help="done reports of acme-telecom")
    p.add_argument(
        "--repeat", type=int, default=7, help="timed runs per figure (the median is reported)"
    )
    p.add_argument("--no-plan", action="store_true", help="do not print the EXPLAIN ANALYZE")
    a = p.parse_args(argv)
    with C.server(a.database_url) as url:
        C.print_machine(C.machine_info(url))
        res = run(
            url,
            reports=a.reports,
            repeat=a.repeat,
            seed=a.seed,
            keep=a.keep,
            show_plan=not a.no_plan,
        )
    C.print_result(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
