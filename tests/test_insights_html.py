"""The insights HTML report, opened in a real headless Chromium (tests/browser.py).

Rendered from reports made through the real API (tests/test_insights.py's
helpers); checks: no console error, every chart an SVG with a non-zero size, a
drill-down quote from the database on the page with its speaker, and chat text
that contains markup shown as text, never run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from parecer.insights_html import language_for, write_report

from .browser import CHROMIUM, Page
from .factories import Session
from .test_insights import TEXTS, done_reports, ev

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="no chromium (apt-get install chromium; .ci/run does)"
)

HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'


def hostile_report(s: Session) -> dict[str, Any]:
    return {
        "schema_version": "parecer.report.v1",
        "summary": "Resumo com " + HOSTILE,
        "outcome": {"evidence": ev(s, 4, "Voltou a funcionar"), "status": "resolved"},
        "sentiment": {"evidence": [], "start": "negative", "end": "positive"},
        "topics": [
            {
                "topic": "cancelamento",
                "evidence": ev(s, 2, HOSTILE),
                "present": True,
                "confidence": 0.9,
            },
            {
                "topic": "internet",
                "evidence": ev(s, 0, "minha internet caiu"),
                "present": True,
                "confidence": 0.8,
            },
            {"topic": "cobrança", "evidence": [], "present": False, "confidence": 0.7},
        ],
        "flags": [{"evidence": ev(s, 2, "window.__pwned = 1"), "flag": "churn_risk"}],
        "insufficient_context": False,
        "next_action": None,
    }


def test_report_in_a_real_browser(
    conn: psycopg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tests.test_insights as ti

    monkeypatch.setattr(
        ti, "TEXTS", [TEXTS[0], TEXTS[1], TEXTS[2] + " " + HOSTILE, TEXTS[3], TEXTS[4], TEXTS[5]]
    )
    done_reports(conn, 6)  # varied, grounded reports
    hostile = done_reports(
        conn, 1, key="qa2", report=hostile_report
    )  # one whose quotes carry markup
    quote_row = conn.execute(
        "SELECT evidence FROM parecer.insight_sessions('acme', topic => 'internet', max_rows => 1)"
    ).fetchone()
    assert quote_row is not None
    quote = next(
        q for q in quote_row["evidence"] if q["about"] == "topic" and q["name"] == "internet"
    )

    out = write_report(conn, "acme", tmp_path / "insights.html")
    text = out.read_text(encoding="utf-8")
    assert "<script" not in text.lower()  # escaped, never emitted as a tag
    assert "&lt;script&gt;" in text
    assert language_for("pt-BR") == "pt" and 'lang="pt-BR"' in text

    with Page() as page:
        page.open(out)
        assert page.errors() == []
        assert page.eval("window.__pwned === undefined")
        assert page.eval("document.querySelectorAll('script').length") == 0
        body = page.eval("document.body.innerText")
        assert "<script>window.__pwned = 1</script>" in body  # shown as text
        charts = page.eval(
            "Array.from(document.querySelectorAll('svg.chart')).map(s => {"
            " const r = s.getBoundingClientRect(); return [s.id, r.width, r.height]; })"
        )
        ids = {c[0] for c in charts}
        assert {
            "chart-outcomes",
            "chart-sentiment",
            "chart-topics",
            "chart-flags",
            "chart-weeks-sessions",
            "chart-weeks-shares",
            "chart-weeks-cost",
        } <= ids
        assert all(w > 0 and h > 0 for _, w, h in charts), charts
        assert page.eval("document.querySelectorAll('details.fallback table').length") >= 5
        assert page.eval("Array.from(document.querySelectorAll('h2')).length") >= 5
        # the drill-down quote from the database, with its speaker's role (PT-BR labels)
        quotes = page.eval(
            "Array.from(document.querySelectorAll('.quotes li')).map(li => li.innerText)"
        )
        assert any(
            quote["excerpt"] in q and "Cliente" in q and quote["message_id"] in q for q in quotes
        ), quotes
        assert any(
            hostile[0]["session_id"] in q
            for q in page.eval(
                "Array.from(document.querySelectorAll('.example h5')).map(h => h.innerText)"
            )
        )
        page.screenshot(tmp_path / "shot.png")
        assert (tmp_path / "shot.png").stat().st_size > 10_000


def test_english_labels_on_override(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    done_reports(conn, 2)
    text = write_report(conn, "acme", tmp_path / "en.html", lang="en").read_text(encoding="utf-8")
    assert 'lang="en"' in text and "Outcome distribution" in text and "Customer" in text


def test_empty_window_renders(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    from tests.factories import make_script

    make_script(conn)
    out = write_report(conn, "acme", tmp_path / "empty.html")
    with Page() as page:
        page.open(out)
        assert page.errors() == []
        assert "Nenhum relatório" in page.eval("document.body.innerText")


def test_the_browser_driver_sees_console_errors(tmp_path: Path) -> None:
    """So that an empty error list above means something."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><p>x</p><script>console.error('boom'); throw new Error('bang')</script>"
    )
    with Page() as page:
        page.open(bad)
        errs = page.errors()
    assert any("boom" in x for x in errs) and any("bang" in x for x in errs), errs
