"""The report check's fast path agrees with the step-by-step check, for every input.

``parecer._report_problem`` recognises a valid report in a few expressions and hands any
other report to ``parecer._report_first_problem``, which decides and words the problem.
The fast path states the rules a second time, so this test holds it to the one property
that keeps the two from drifting apart: whatever it lets through, the step-by-step check
lets through too (then every answer is the same: any other report gets that check's
words). The inputs are valid reports and every one-node mutation of them: each key
removed, renamed or added, each value replaced by other types and edge values (blank,
unicode spaces, 500 and 501 characters, ...), lists shortened, reordered and extended,
custom fields, and odd topic arguments. ``tests/test_fuzz.py`` checks the same property
on its random reports.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import psycopg

Conn = psycopg.Connection[Any]

TOPICS = ["cancelamento", "internet"]


def _ev(mid: str, excerpt: str) -> dict[str, str]:
    return {"message_id": mid, "excerpt": excerpt}


BASES: list[dict[str, Any]] = [
    {
        "schema_version": "parecer.report.v1",
        "summary": "Cliente quer cancelar.",
        "outcome": {"status": "escalated", "evidence": [_ev("m1", "quero cancelar")]},
        "sentiment": {"start": "negative", "end": "neutral", "evidence": [_ev("m1", "ruim")]},
        "topics": [
            {
                "topic": "internet",
                "present": True,
                "confidence": 1,
                "evidence": [_ev("m3", "caiu")],
            },
            {"topic": "cancelamento", "present": False, "confidence": 0, "evidence": []},
        ],
        "flags": [
            {"flag": "churn_risk", "evidence": [_ev("m1", "cancelar")]},
            {"flag": "complaint", "evidence": []},
        ],
        "insufficient_context": True,
        "next_action": "ligar de volta",
    },
]
BASES.append(
    {
        **copy.deepcopy(BASES[0]),
        "extra": {
            "priority": "alta",
            "internet_problem": {"evidence": [_ev("m3", "caiu")], "value": True},
            "other": {"evidence": "not a list", "value": 1},
        },
    }
)

SCALARS: list[Any] = [
    None, True, False, 0, 1, 0.5, -1, 2, "", " ", "x", "parecer.report.v1", "resolved",
    "neutral", "churn_risk", "internet", [], {}, [None], [{}], {"evidence": []},
    _ev("m", "e"), [_ev("m", "e")],
]  # fmt: skip
STRINGS = [
    "", " ", "\t\n", "\u00a0", "\u2003", "\u200b", "\u0085", "\u2028", "a", " a ",
    "x" * 500, "x" * 501, "é" * 501, "😀" * 500, "😀" * 501, " " * 500 + "a", "Resolved", "unknown",
]  # fmt: skip
KEYS = ["x", "", "Evidence", "extra", "message_id", "excerpt", "topic", "flag", "status"]


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _nodes(v, (*path, i))


def _replaced(root: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return copy.deepcopy(value)
    out = copy.deepcopy(root)
    parent = out
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = copy.deepcopy(value)
    return out


def mutations(root: Any) -> Iterator[Any]:
    """Every one-node mutation of ``root``."""
    for path, node in list(_nodes(root)):
        for v in [*SCALARS, [node], {"v": node}]:
            yield _replaced(root, path, v)
        if isinstance(node, str):
            for s in STRINGS:
                yield _replaced(root, path, s)
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            for n in (1.0000001, -0.0000001, 1e-300, 10):
                yield _replaced(root, path, n)
        if isinstance(node, dict):
            for k in node:
                rest = {kk: vv for kk, vv in node.items() if kk != k}
                yield _replaced(root, path, rest)
                for nk in KEYS:
                    if nk not in node:
                        yield _replaced(root, path, {**rest, nk: node[k]})
            for nk in KEYS:
                if nk not in node:
                    yield _replaced(root, path, {**node, nk: None})
        if isinstance(node, list):
            yield _replaced(root, path, [])
            if node:
                yield _replaced(root, path, node[1:])
                yield _replaced(root, path, [*node, node[0]])
                yield _replaced(root, path, list(reversed(node)))
            for extra in (None, "x", {}, _ev("m", "e"), {"flag": "nope", "evidence": []}):
                yield _replaced(root, path, [*node, extra])


def test_the_fast_check_lets_through_only_what_the_full_check_accepts(conn: Conn) -> None:
    rows: list[tuple[str, list[str] | None]] = []
    for base in BASES:
        rows.append((json.dumps(base), TOPICS))
        rows.extend((json.dumps(m), TOPICS) for m in mutations(base))
    odd_topics: list[list[str] | None] = [
        list(reversed(TOPICS)), ["internet"], [*TOPICS, "fatura"], [], ["internet", "internet"], None,
    ]  # fmt: skip
    rows.extend((json.dumps(BASES[0]), t) for t in odd_topics)
    conn.execute("CREATE TEMP TABLE report_inputs (report jsonb, topics text[])")
    with conn.cursor().copy("COPY report_inputs FROM STDIN") as cp:
        for r in rows:
            cp.write_row(r)
    out = conn.execute(
        "SELECT count(*) AS n,"
        " count(*) FILTER (WHERE parecer._report_problem(report, topics) IS NULL) AS valid,"
        " count(*) FILTER (WHERE parecer._report_problem(report, topics)"
        "   IS DISTINCT FROM parecer._report_first_problem(report, topics)) AS differ,"
        " array_agg(report::text) FILTER (WHERE parecer._report_problem(report, topics)"
        "   IS DISTINCT FROM parecer._report_first_problem(report, topics)) AS examples"
        " FROM report_inputs"
    ).fetchone()
    assert out is not None
    assert out["n"] > 3000, out["n"]
    assert out["valid"] > 100, out["valid"]  # the fast path is exercised, not only refusals
    assert out["differ"] == 0, (out["examples"] or [])[:3]
