"""parecer.insights and parecer.insight_sessions (db/api/65_insights.sql).

Reports are made through the real API (create_script_version, enqueue, claim,
mark_done with grounded evidence); the expected figures are computed here in
Python from the stored reports, not by calling the same SQL.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from parecer import errors as E

from .factories import Session, make_script, make_session

TOPICS = ["cancelamento", "internet", "cobrança"]
OUTCOMES = ["resolved", "unresolved", "escalated", "abandoned", "unknown"]
SENTIMENTS = ["negative", "neutral", "positive", "unknown"]
FLAGS = [
    "churn_risk",
    "complaint",
    "legal_threat",
    "agent_error",
    "slow_response",
    "sensitive_data",
    "abusive_language",
    "human_requested",
]
RANK = {"negative": 0, "neutral": 1, "positive": 2}
TEXTS = [
    "Oi, minha internet caiu de novo desde ontem",
    "Sinto muito! Vou verificar a sua conexão.",
    "se não resolver hoje eu vou cancelar",
    "Fiz um reset remoto, pode testar?",
    "Voltou a funcionar, obrigada!",
    "Disponha.",
]


def ev(s: Session, i: int, excerpt: str) -> list[dict[str, str]]:
    return [{"message_id": s.message_ids[i], "excerpt": excerpt}]


def make_report(s: Session, rnd: random.Random, *, topics: list[str] = TOPICS) -> dict[str, Any]:
    flags = rnd.sample(FLAGS[:5], rnd.choice([0, 0, 1, 2]))
    return {
        "schema_version": "parecer.report.v1",
        "summary": "Cliente relatou queda; atendente fez reset.",
        "outcome": {"evidence": ev(s, 4, "Voltou a funcionar"), "status": rnd.choice(OUTCOMES)},
        "sentiment": {
            "evidence": ev(s, 0, "internet caiu"),
            "start": rnd.choice(SENTIMENTS),
            "end": rnd.choice(SENTIMENTS),
        },
        "topics": [
            {
                "topic": t,
                "evidence": ev(s, 2, "vou cancelar") if p else [],
                "present": p,
                "confidence": rnd.choice([0.5, 0.7, 0.9, 1]),
            }
            for t in topics
            for p in [rnd.random() < 0.5]
        ],
        "flags": [{"evidence": ev(s, 2, "eu vou cancelar"), "flag": f} for f in flags],
        "insufficient_context": rnd.random() < 0.2,
        "next_action": None,
    }


def done_reports(
    conn: psycopg.Connection[Any],
    n: int,
    *,
    client: str = "acme",
    key: str = "qa",
    seed: int = 1,
    report: Any = None,
    usage: bool = True,
) -> list[dict[str, Any]]:
    """n done analyses through enqueue / claim / mark_done; returns the stored rows."""
    script = make_script(conn, client=client, key=key, topics=TOPICS)
    conn.execute("SELECT * FROM parecer.set_model_price('m', 1.25, 0.125, 10)")
    rnd = random.Random(seed)
    sessions = [make_session(conn, client, messages=6, texts=TEXTS) for _ in range(n)]
    conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s)",
        ([s.session_id for s in sessions], script["script_id"]),
    )
    by_id = {s.session_id: s for s in sessions}
    for _ in range(n):
        item = conn.execute(
            "SELECT * FROM parecer.claim('w', client_slug => %s)", (client,)
        ).fetchone()
        assert item is not None
        p = conn.execute(
            "SELECT prompt_hash FROM parecer.prompt_for(%s)", (item["analysis_id"],)
        ).fetchone()
        assert p is not None
        s = by_id[item["session_id"]]
        rep = report(s) if report else make_report(s, rnd)
        u = (
            Jsonb({"input_tokens": 1000 + rnd.randint(0, 500), "output_tokens": 200})
            if usage
            else None
        )
        conn.execute(
            "SELECT * FROM parecer.mark_done(%s, %s, %s, 'm', %s, %s)",
            (
                item["analysis_id"],
                item["lease_token"],
                Jsonb(rep),
                p["prompt_hash"],
                u,
            ),
        )
    return conn.execute(
        "SELECT analysis_id, session_id, report, processed_at, cost_usd FROM parecer.reports"
        " WHERE client_slug = %s AND script_key = %s ORDER BY processed_at",
        (client, key),
    ).fetchall()


def spread_over_weeks(
    conn: psycopg.Connection[Any], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Test data: move processed_at back 0-3 weeks so the weekly trend has several weeks."""
    base = datetime(2026, 3, 11, 12, tzinfo=timezone.utc)  # a Wednesday
    for i, r in enumerate(rows):
        r["processed_at"] = base - timedelta(weeks=i % 4, hours=i)
        conn.execute(
            "UPDATE parecer.analyses SET processed_at = %s WHERE analysis_id = %s",
            (r["processed_at"], r["analysis_id"]),
        )
    return rows


def share(n: int, d: int) -> float | None:
    return None if d == 0 else round(n / d, 4)


def expected(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures, computed independently from the stored reports."""
    reps = [r["report"] for r in rows]
    n = len(reps)
    sent = Counter((r["sentiment"]["start"], r["sentiment"]["end"]) for r in reps)
    known = [
        (RANK[a], RANK[b])
        for a, b in ((r["sentiment"]["start"], r["sentiment"]["end"]) for r in reps)
        if a in RANK and b in RANK
    ]
    improved = sum(1 for a, b in known if b > a)
    same = sum(1 for a, b in known if b == a)
    worsened = sum(1 for a, b in known if b < a)
    topics = []
    names = sorted({t["topic"] for r in reps for t in r["topics"]})
    for name in names:
        entries = [(t, r) for r in reps for t in r["topics"] if t["topic"] == name]
        present = [(t, r) for t, r in entries if t["present"]]
        topics.append(
            {
                "topic": name,
                "assessed": len(entries),
                "present": len(present),
                "present_share": share(len(present), len(entries)),
                "mean_confidence": round(
                    sum(t["confidence"] for t, _ in entries) / len(entries), 4
                ),
                "mean_confidence_present": (
                    round(sum(t["confidence"] for t, _ in present) / len(present), 4)
                    if present
                    else None
                ),
                "outcomes_when_present": {
                    o: sum(1 for _, r in present if r["outcome"]["status"] == o) for o in OUTCOMES
                },
            }
        )
    topics.sort(key=lambda t: (-t["present"], t["topic"]))
    costs = [r["cost_usd"] for r in rows if r["cost_usd"] is not None]
    total = sum(costs, Decimal(0))
    flag_n = {f: sum(1 for r in reps if f in {x["flag"] for x in r["flags"]}) for f in FLAGS}
    insuff = sum(1 for r in reps if r["insufficient_context"])
    return {
        "sessions": n,
        "outcomes": {o: sum(1 for r in reps if r["outcome"]["status"] == o) for o in OUTCOMES},
        "sentiment": {
            "matrix": {a: {b: sent[(a, b)] for b in SENTIMENTS} for a in SENTIMENTS},
            "improved": improved,
            "same": same,
            "worsened": worsened,
            "unknown": n - len(known),
            "improved_share": share(improved, len(known)),
            "same_share": share(same, len(known)),
            "worsened_share": share(worsened, len(known)),
            "unknown_share": share(n - len(known), n),
        },
        "topics": topics,
        "flags": [{"flag": f, "sessions": flag_n[f], "share": share(flag_n[f], n)} for f in FLAGS],
        "insufficient_context": {"sessions": insuff, "share": share(insuff, n)},
        "cost_usd": {
            "total": float(total),
            "priced_sessions": len(costs),
            "per_session": round(float(total) / len(costs), 6) if costs else None,
        },
    }


def iso_week(d: datetime) -> str:
    y, w, _ = d.astimezone(timezone.utc).isocalendar()
    return f"{y}-W{w:02d}"


def normalise(doc: dict[str, Any]) -> dict[str, Any]:
    """The figure keys of a document (or week entry), numbers as floats for comparison."""
    keys = [
        "sessions",
        "outcomes",
        "sentiment",
        "topics",
        "flags",
        "insufficient_context",
        "cost_usd",
    ]

    def num(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: num(x) for k, x in v.items()}
        if isinstance(v, list):
            return [num(x) for x in v]
        if isinstance(v, (int, float, Decimal)) and not isinstance(v, bool):
            return float(v)
        return v

    figures: dict[str, Any] = num({k: doc[k] for k in keys})
    return figures


def insights(conn: psycopg.Connection[Any], *args: Any, **kw: Any) -> dict[str, Any]:
    named = ", ".join(f"{k} => %({k})s" for k in kw)
    sql = "SELECT parecer.insights(%(c)s" + (", " + named if named else "") + ") AS doc"
    row = conn.execute(sql, {"c": args[0] if args else "acme", **kw}).fetchone()
    assert row is not None
    return row["doc"]  # type: ignore[no-any-return]


def test_figures_match_an_independent_computation(conn: psycopg.Connection[Any]) -> None:
    rows = spread_over_weeks(conn, done_reports(conn, 24))
    make_script(conn, client="other")
    done_reports(conn, 3, client="other", seed=9)  # another client's reports never count
    doc = insights(conn)
    assert doc["schema_version"] == "parecer.insights.v1" and doc["client_slug"] == "acme"
    assert normalise(doc) == normalise(expected(rows))
    assert doc["first_processed_at"] is not None
    assert [s["script_key"] for s in doc["scripts"]] == ["qa"] and doc["language"] == "pt-BR"
    weeks = sorted({iso_week(r["processed_at"]) for r in rows})
    assert [w["week"] for w in doc["weeks"]] == weeks
    for w in doc["weeks"]:
        in_week = [r for r in rows if iso_week(r["processed_at"]) == w["week"]]
        assert normalise(w) == normalise(expected(in_week)), w["week"]
    assert sum(w["sessions"] for w in doc["weeks"]) == 24


def test_window_and_script_filters(conn: psycopg.Connection[Any]) -> None:
    rows = spread_over_weeks(conn, done_reports(conn, 12))
    since = datetime(2026, 3, 2, tzinfo=timezone.utc)
    until = datetime(2026, 3, 10, tzinfo=timezone.utc)
    inside = [r for r in rows if since <= r["processed_at"] < until]
    assert 0 < len(inside) < len(rows)
    doc = insights(conn, since=since, until=until)
    assert normalise(doc) == normalise(expected(inside))
    assert insights(conn, script_key="qa", script_version=1)["sessions"] == 12
    assert insights(conn, analysis_version_tag="no-such-tag")["sessions"] == 0


def test_empty_window(conn: psycopg.Connection[Any]) -> None:
    make_script(conn)
    doc = insights(conn)
    assert doc["sessions"] == 0 and doc["weeks"] == [] and doc["topics"] == []
    assert doc["outcomes"] == dict.fromkeys(OUTCOMES, 0)
    assert (
        doc["sentiment"]["improved_share"] is None and doc["insufficient_context"]["share"] is None
    )
    assert doc["cost_usd"] == {"total": 0, "priced_sessions": 0, "per_session": None}
    assert [f["sessions"] for f in doc["flags"]] == [0] * 8
    assert doc["language"] == "pt-BR"  # from the client's script, without reports


def test_one_report(conn: psycopg.Connection[Any]) -> None:
    rows = done_reports(conn, 1)
    doc = insights(conn)
    assert normalise(doc) == normalise(expected(rows))
    assert len(doc["weeks"]) == 1 and doc["weeks"][0]["sessions"] == 1


def test_unpriced_reports_do_not_dilute_the_cost_per_session(conn: psycopg.Connection[Any]) -> None:
    rows = done_reports(conn, 4, usage=False)
    assert all(r["cost_usd"] is None for r in rows)
    assert insights(conn)["cost_usd"] == {"total": 0, "priced_sessions": 0, "per_session": None}


@pytest.mark.parametrize(
    "call, code",
    [
        ("SELECT parecer.insights('nope')", E.UNKNOWN_CLIENT),
        ("SELECT * FROM parecer.insight_sessions('nope')", E.UNKNOWN_CLIENT),
        ("SELECT parecer.insights('acme', script_key => 'missing')", E.UNKNOWN_SCRIPT),
        ("SELECT parecer.insights('acme', 'qa', script_version => 7)", E.UNKNOWN_SCRIPT),
        (
            "SELECT parecer.insights('acme', since => '2026-03-02', until => '2026-03-01')",
            E.INVALID_ARGUMENT,
        ),
        ("SELECT * FROM parecer.insight_sessions('acme', outcome => 'great')", E.INVALID_ARGUMENT),
        (
            "SELECT * FROM parecer.insight_sessions('acme', sentiment_end => 'happy')",
            E.INVALID_ARGUMENT,
        ),
        ("SELECT * FROM parecer.insight_sessions('acme', flag => 'nope')", E.INVALID_ARGUMENT),
        ("SELECT * FROM parecer.insight_sessions('acme', max_rows => 0)", E.INVALID_ARGUMENT),
        (
            "SELECT * FROM parecer.insight_sessions('acme', before_processed_at => now())",
            E.INVALID_ARGUMENT,
        ),
    ],
)
def test_errors(conn: psycopg.Connection[Any], call: str, code: str) -> None:
    make_script(conn)
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(call)
    assert exc.value.diag.sqlstate == code
    assert exc.value.diag.message_hint


def test_reader_may_call_runner_may_not(conn: psycopg.Connection[Any]) -> None:
    done_reports(conn, 2)
    for role in ("parecer_reader", "parecer_admin"):
        conn.execute(f"SET ROLE {role}")
        assert insights(conn)["sessions"] == 2
        assert len(conn.execute("SELECT * FROM parecer.insight_sessions('acme')").fetchall()) == 2
        conn.execute("RESET ROLE")
    conn.execute("SET ROLE parecer_runner")
    for sql in (
        "SELECT parecer.insights('acme')",
        "SELECT * FROM parecer.insight_sessions('acme')",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql)
    conn.execute("RESET ROLE")


def test_drill_down_filters_order_pages_and_quotes(conn: psycopg.Connection[Any]) -> None:
    rows = spread_over_weeks(conn, done_reports(conn, 15))
    newest_first = sorted(
        rows, key=lambda r: (r["processed_at"], str(r["analysis_id"])), reverse=True
    )

    def ids(sql: str, **kw: Any) -> list[str]:
        return [str(r["analysis_id"]) for r in conn.execute(sql, kw).fetchall()]

    cases: list[tuple[dict[str, Any], Any]] = [
        (
            {"topic": "internet"},
            lambda r: any(t["topic"] == "internet" and t["present"] for t in r["topics"]),
        ),
        ({"flag": "churn_risk"}, lambda r: "churn_risk" in {f["flag"] for f in r["flags"]}),
        ({"outcome": "resolved"}, lambda r: r["outcome"]["status"] == "resolved"),
        ({"sentiment_end": "negative"}, lambda r: r["sentiment"]["end"] == "negative"),
        (
            {"topic": "cancelamento", "outcome": "abandoned"},
            lambda r: (
                r["outcome"]["status"] == "abandoned"
                and any(t["topic"] == "cancelamento" and t["present"] for t in r["topics"])
            ),
        ),
    ]
    for kw, pred in cases:
        want = [str(r["analysis_id"]) for r in newest_first if pred(r["report"])]
        named = ", ".join(f"{k} => %({k})s" for k in kw)
        got = ids(f"SELECT * FROM parecer.insight_sessions('acme', {named}, max_rows => 500)", **kw)
        assert got == want, kw
    # keyset pages of 4 walk the whole list exactly once
    pages: list[str] = []
    last: dict[str, Any] | None = None
    for _ in range(10):
        page = conn.execute(
            "SELECT * FROM parecer.insight_sessions('acme', max_rows => 4,"
            " before_processed_at => %s, before_analysis_id => %s)",
            (last and last["processed_at"], last and last["analysis_id"]),
        ).fetchall()
        if not page:
            break
        pages += [str(r["analysis_id"]) for r in page]
        last = page[-1]
    assert pages == [str(r["analysis_id"]) for r in newest_first]

    row = conn.execute("SELECT * FROM parecer.insight_sessions('acme', max_rows => 1)").fetchone()
    assert row is not None
    rep = newest_first[0]["report"]
    assert (
        row["outcome"] == rep["outcome"]["status"]
        and row["sentiment_end"] == rep["sentiment"]["end"]
    )
    assert sorted(row["flags"]) == sorted({f["flag"] for f in rep["flags"]})
    assert [t["topic"] for t in row["topics_present"]] == [
        t["topic"] for t in rep["topics"] if t["present"]
    ]
    # every evidence item, in report order, with the speaker's role from source_messages
    want_ev = (
        [("outcome", None, e) for e in rep["outcome"]["evidence"]]
        + [("sentiment", None, e) for e in rep["sentiment"]["evidence"]]
        + [("topic", t["topic"], e) for t in rep["topics"] for e in t["evidence"]]
        + [("flag", f["flag"], e) for f in rep["flags"] for e in f["evidence"]]
    )
    assert [(e["about"], e["name"], e["message_id"], e["excerpt"]) for e in row["evidence"]] == [
        (a, n, e["message_id"], e["excerpt"]) for a, n, e in want_ev
    ]
    from_me = {
        r["message_id"]: r["from_me"]
        for r in conn.execute(
            "SELECT message_id, from_me FROM parecer.source_messages WHERE session_id = %s",
            (row["session_id"],),
        )
    }
    for e in row["evidence"]:
        assert e["role"] == ("agent" if from_me[e["message_id"]] else "customer")
    roles = {e["about"]: e["role"] for e in row["evidence"]}
    assert roles["outcome"] == "customer"  # "Voltou a funcionar" is message 4, the customer's


def test_drill_down_prefers_the_role_stored_with_the_evidence(
    conn: psycopg.Connection[Any],
) -> None:
    rows = done_reports(conn, 1)
    # mark_done will soon annotate each evidence item with role and match: simulate a stored one.
    conn.execute(
        "UPDATE parecer.analyses SET report = jsonb_set(report, '{outcome,evidence,0}',"
        ' report #> \'{outcome,evidence,0}\' || \'{"role": "agent", "match": "exact"}\')'
        " WHERE analysis_id = %s",
        (rows[0]["analysis_id"],),
    )
    ev0 = conn.execute("SELECT evidence FROM parecer.insight_sessions('acme')").fetchone()[
        "evidence"
    ][0]  # type: ignore[index]
    assert ev0["about"] == "outcome" and ev0["role"] == "agent" and ev0["match"] == "exact"
