"""The insights report: one self-contained HTML file (inline CSS and SVG, no script).

``fetch`` reads the figures (``parecer.insights``) and example conversations
(``parecer.insight_sessions``) for each topic and flag; ``render`` turns them
into HTML. Every value from the database is HTML-escaped (chat text is hostile
input), and a Content-Security-Policy forbids scripts and network loads, so the
file shows the same thing offline, anywhere, and nothing in it can run.
"""

from __future__ import annotations

import html
import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

OUTCOMES = ["resolved", "unresolved", "escalated", "abandoned", "unknown"]
TREND = ["improved", "same", "worsened", "unknown"]
SENTIMENTS = ["negative", "neutral", "positive", "unknown"]

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Insights",
        "client": "Client",
        "window": "Window",
        "generated": "Generated",
        "sessions": "Sessions analysed",
        "resolved_share": "Resolved",
        "improved_share": "Mood improved",
        "cost_total": "Total cost",
        "cost_per": "Cost per session",
        "insufficient": "Insufficient context",
        "outcomes": "Outcome distribution",
        "sentiment": "Customer mood, start to end",
        "matrix": "Start (rows) to end (columns)",
        "topics": "Topics",
        "flags": "Flags",
        "weeks": "Weekly trend",
        "cost": "Cost",
        "examples": "Example conversations",
        "table": "Table",
        "count": "Count",
        "share": "Share",
        "topic": "Topic",
        "flag": "Flag",
        "present": "Present",
        "confidence": "Mean confidence",
        "outcome_mix": "Outcomes when present",
        "week": "ISO week",
        "session": "Session",
        "no_data": "No reports in this window.",
        "customer": "Customer",
        "agent": "Agent",
        "unknown_role": "Unknown speaker",
        "quotes": "Evidence",
        "summary": "Summary",
        "all": "all",
        "scripts": "Scripts",
        "none": "(none)",
        "resolved": "resolved",
        "unresolved": "unresolved",
        "escalated": "escalated",
        "abandoned": "abandoned",
        "unknown": "unknown",
        "improved": "improved",
        "same": "same",
        "worsened": "worsened",
        "negative": "negative",
        "neutral": "neutral",
        "positive": "positive",
        "outcome": "Outcome",
        "mood": "Mood",
        "message": "message",
        "churn_risk": "churn risk",
        "complaint": "complaint",
        "legal_threat": "legal threat",
        "agent_error": "agent error",
        "slow_response": "slow response",
        "sensitive_data": "sensitive data",
        "abusive_language": "abusive language",
        "human_requested": "human requested",
        "footer": "Made by parecer from the stored reports. Figures are counts of sessions; shares of "
        "improved / same / worsened exclude sessions whose start or end mood is unknown. "
        "Quotes are verbatim excerpts checked against the conversation when the report was stored.",
    },
    "pt": {
        "title": "Insights",
        "client": "Cliente",
        "window": "Período",
        "generated": "Gerado em",
        "sessions": "Sessões analisadas",
        "resolved_share": "Resolvidas",
        "improved_share": "Humor melhorou",
        "cost_total": "Custo total",
        "cost_per": "Custo por sessão",
        "insufficient": "Contexto insuficiente",
        "outcomes": "Distribuição de desfechos",
        "sentiment": "Humor do cliente, do início ao fim",
        "matrix": "Início (linhas) para fim (colunas)",
        "topics": "Tópicos",
        "flags": "Alertas",
        "weeks": "Tendência semanal",
        "cost": "Custo",
        "examples": "Conversas de exemplo",
        "table": "Tabela",
        "count": "Quantidade",
        "share": "Parcela",
        "topic": "Tópico",
        "flag": "Alerta",
        "present": "Presente",
        "confidence": "Confiança média",
        "outcome_mix": "Desfechos quando presente",
        "week": "Semana ISO",
        "session": "Sessão",
        "no_data": "Nenhum relatório neste período.",
        "customer": "Cliente",
        "agent": "Atendente",
        "unknown_role": "Autor desconhecido",
        "quotes": "Evidências",
        "summary": "Resumo",
        "all": "todos",
        "scripts": "Roteiros",
        "none": "(nenhum)",
        "resolved": "resolvido",
        "unresolved": "não resolvido",
        "escalated": "escalado",
        "abandoned": "abandonado",
        "unknown": "desconhecido",
        "improved": "melhorou",
        "same": "igual",
        "worsened": "piorou",
        "negative": "negativo",
        "neutral": "neutro",
        "positive": "positivo",
        "outcome": "Desfecho",
        "mood": "Humor",
        "message": "mensagem",
        "churn_risk": "risco de cancelamento",
        "complaint": "reclamação",
        "legal_threat": "ameaça legal",
        "agent_error": "erro do atendente",
        "slow_response": "resposta lenta",
        "sensitive_data": "dados sensíveis",
        "abusive_language": "linguagem abusiva",
        "human_requested": "pediu atendente humano",
        "footer": "Gerado pelo parecer a partir dos relatórios armazenados. Os números contam sessões; as "
        "parcelas de melhorou / igual / piorou excluem sessões com humor inicial ou final desconhecido. "
        "As citações são trechos literais conferidos com a conversa quando o relatório foi gravado.",
    },
}

# Fills readable without colour: each category has its own pattern as well as its colour.
PATTERNS = ["solid", "diag", "dots", "cross", "hlines", "vlines", "grid", "none"]
COLOURS = ["#2b6cb0", "#c05621", "#6b46c1", "#b7791f", "#718096", "#2f855a", "#c53030", "#4a5568"]


def language_for(script_language: str | None, override: str | None = None) -> str:
    """'pt' when the script is in Portuguese, else 'en'; ``override`` ('pt'/'en') wins."""
    if override:
        return override
    return "pt" if (script_language or "").lower().startswith("pt") else "en"


def fetch(
    conn: psycopg.Connection[Any],
    client: str,
    *,
    script_key: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    examples: int = 3,
) -> dict[str, Any]:
    """The insights document plus example sessions for each topic and flag that occurs."""
    window = {"script_key": script_key, "since": since, "until": until}
    doc = conn.execute(
        "SELECT parecer.insights(%(client)s, script_key => %(script_key)s, since => %(since)s,"
        " until => %(until)s) AS doc",
        {"client": client, **window},
    ).fetchone()["doc"]  # type: ignore[index]
    sql = (
        "SELECT * FROM parecer.insight_sessions(%(client)s, topic => %(topic)s, flag => %(flag)s,"
        " script_key => %(script_key)s, since => %(since)s, until => %(until)s, max_rows => %(n)s)"
    )
    ex_topics = {
        t["topic"]: conn.execute(
            sql, {"client": client, "topic": t["topic"], "flag": None, "n": examples, **window}
        ).fetchall()
        for t in doc["topics"]
        if t["present"]
    }
    ex_flags = {
        f["flag"]: conn.execute(
            sql, {"client": client, "topic": None, "flag": f["flag"], "n": examples, **window}
        ).fetchall()
        for f in doc["flags"]
        if f["sessions"]
    }
    return {"insights": doc, "examples": {"topics": ex_topics, "flags": ex_flags}}


# ---- small formatting helpers ------------------------------------------------------------
def e(v: Any) -> str:
    """HTML-escape any value (quotes included, so it is safe in attributes too)."""
    return html.escape("" if v is None else str(v), quote=True)


def pct(v: Any) -> str:
    return "–" if v is None else f"{float(v) * 100:.1f}%"


def usd(v: Any, places: int = 4) -> str:
    return "–" if v is None else f"US$ {float(v):,.{places}f}"


def _pattern_defs() -> str:
    out = []
    for i, c in enumerate(COLOURS):
        kind = PATTERNS[i]
        body = {
            "solid": f'<rect width="8" height="8" fill="{c}"/>',
            "diag": f'<rect width="8" height="8" fill="#fff"/><path d="M-2,2 l4,-4 M0,8 l8,-8 M6,10 l4,-4" stroke="{c}" stroke-width="2.2"/>',
            "dots": f'<rect width="8" height="8" fill="#fff"/><circle cx="4" cy="4" r="2.2" fill="{c}"/>',
            "cross": f'<rect width="8" height="8" fill="#fff"/><path d="M0,0 l8,8 M8,0 l-8,8" stroke="{c}" stroke-width="1.6"/>',
            "hlines": f'<rect width="8" height="8" fill="#fff"/><path d="M0,2 h8 M0,6 h8" stroke="{c}" stroke-width="2"/>',
            "vlines": f'<rect width="8" height="8" fill="#fff"/><path d="M2,0 v8 M6,0 v8" stroke="{c}" stroke-width="2"/>',
            "grid": f'<rect width="8" height="8" fill="#fff"/><path d="M0,4 h8 M4,0 v8" stroke="{c}" stroke-width="1.5"/>',
            "none": f'<rect width="8" height="8" fill="#fff"/><rect x="1" y="1" width="6" height="6" fill="none" stroke="{c}"/>',
        }[kind]
        out.append(
            f'<pattern id="p{i}" width="8" height="8" patternUnits="userSpaceOnUse">{body}</pattern>'
        )
    return (
        '<svg width="0" height="0" aria-hidden="true" style="position:absolute"><defs>'
        + "".join(out)
        + "</defs></svg>"
    )


def _fill(i: int) -> str:
    return f'fill="url(#p{i % len(COLOURS)})" stroke="{COLOURS[i % len(COLOURS)]}"'


def _legend(names: list[str], L: dict[str, str]) -> str:
    items = "".join(
        f'<li><svg width="14" height="14" aria-hidden="true"><rect width="14" height="14" {_fill(i)}/></svg> '
        f"{e(L.get(n, n))}</li>"
        for i, n in enumerate(names)
    )
    return f'<ul class="legend">{items}</ul>'


def bar_chart(cid: str, title: str, rows: list[tuple[str, float, str]], width: int = 640) -> str:
    """Horizontal bars: (label, value 0..1 of the longest bar, text shown after the bar)."""
    h, label_w = 26, 200
    top = max((v for _, v, _ in rows), default=0) or 1
    parts = []
    for i, (label, v, text) in enumerate(rows):
        y = i * h
        w = max(0.0, (width - label_w - 120) * v / top)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 17}" text-anchor="end">{e(label)}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{h - 8}" {_fill(i)}/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 17}">{e(text)}</text>'
        )
    height = max(h, h * len(rows))
    return (
        f'<svg class="chart" id="{e(cid)}" role="img" aria-labelledby="{e(cid)}-t" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}"><title id="{e(cid)}-t">{e(title)}</title>{"".join(parts)}</svg>'
    )


def stacked_bar(
    cid: str, title: str, parts_in: list[tuple[str, int]], L: dict[str, str], width: int = 640
) -> str:
    total = sum(n for _, n in parts_in) or 1
    x, parts = 0.0, []
    for i, (name, n) in enumerate(parts_in):
        w = width * n / total
        if n:
            parts.append(
                f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="28" {_fill(i)}><title>{e(L.get(name, name))}: {n}</title></rect>'
            )
            if w > 60:
                parts.append(
                    f'<text x="{x + 4:.1f}" y="19" class="onbar">{e(L.get(name, name))} {n}</text>'
                )
        x += w
    return (
        f'<svg class="chart" id="{e(cid)}" role="img" aria-labelledby="{e(cid)}-t" viewBox="0 0 {width} 28" '
        f'width="{width}" height="28"><title id="{e(cid)}-t">{e(title)}</title>{"".join(parts)}</svg>'
    )


def line_chart(
    cid: str,
    title: str,
    xs: list[str],
    series: list[tuple[str, list[float | None]]],
    fmt: Any = str,
    width: int = 640,
    height: int = 200,
) -> str:
    """Lines over the weeks; each series has its own marker shape and dash, and labelled points."""
    left, right, top, bottom = 60, 20, 14, 36
    vals = [v for _, s in series for v in s if v is not None]
    vmax = max(vals, default=0) or 1
    n = len(xs)

    def px(i: int) -> float:
        return left + (
            (width - left - right) * (i / (n - 1)) if n > 1 else (width - left - right) / 2
        )

    def py(v: float) -> float:
        return top + (height - top - bottom) * (1 - v / vmax)

    parts = [
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" class="axis"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{e(fmt(vmax))}</text>',
        f'<text x="{left - 6}" y="{height - bottom}" text-anchor="end">0</text>',
    ]
    step = max(1, n // 8)
    for i, week in enumerate(xs):
        if i % step == 0 or i == n - 1:
            parts.append(
                f'<text x="{px(i):.1f}" y="{height - bottom + 16}" text-anchor="middle">{e(week)}</text>'
            )
    dashes = ["", ' stroke-dasharray="6 4"', ' stroke-dasharray="2 3"']
    for k, (name, s) in enumerate(series):
        pts = [(px(i), py(v)) for i, v in enumerate(s) if v is not None]
        c = COLOURS[k]
        if len(pts) > 1:
            parts.append(
                f'<polyline fill="none" stroke="{c}" stroke-width="2"{dashes[k % 3]} points="'
                + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                + '"/>'
            )
        for x, y in pts:
            parts.append(
                f'<rect x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" fill="{c}"/>'
                if k % 2
                else f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{c}"/>'
            )
        if pts:
            parts.append(
                f'<text x="{pts[-1][0] - 4:.1f}" y="{pts[-1][1] - 8:.1f}" text-anchor="end" fill="{c}">{e(name)}</text>'
            )
    return (
        f'<svg class="chart" id="{e(cid)}" role="img" aria-labelledby="{e(cid)}-t" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}"><title id="{e(cid)}-t">{e(title)}</title>{"".join(parts)}</svg>'
    )


def table(caption: str, head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f'<th scope="col">{e(h)}</th>' for h in head)
    body = "".join(
        "<tr>"
        + "".join(
            (f'<th scope="row">{e(c)}</th>' if j == 0 else f"<td>{e(c)}</td>")
            for j, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return (
        f'<details class="fallback"><summary>{e(caption)}</summary><table><caption>{e(caption)}</caption>'
        f"<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></details>"
    )


def _examples(rows: list[dict[str, Any]], about: str, name: str, L: dict[str, str]) -> str:
    if not rows:
        return ""
    items = []
    for r in rows:
        quotes = [
            q
            for q in r["evidence"]
            if (q["about"] == about and q["name"] == name) or q["about"] == "outcome"
        ]
        qs = "".join(
            f'<li><blockquote><p>{e(q["excerpt"])}</p></blockquote><p class="who">— '
            f'<span class="role role-{e(q.get("role") or "unknown")}">{e(L.get(q.get("role") or "", L["unknown_role"]))}</span>, '
            f"{e(L['message'])} <code>{e(q['message_id'])}</code>"
            f"{' (' + e(L['outcome'].lower()) + ')' if q['about'] == 'outcome' else ''}</p></li>"
            for q in quotes
        )
        flags = ", ".join(L.get(f, f) for f in r["flags"]) or L["none"]
        when = (
            r["processed_at"].strftime("%Y-%m-%d %H:%M")
            if isinstance(r["processed_at"], datetime)
            else r["processed_at"]
        )
        items.append(
            f'<article class="example"><h5>{e(L["session"])} <code>{e(r["session_id"])}</code> · {e(when)}</h5>'
            f"<dl><dt>{e(L['outcome'])}</dt><dd>{e(L.get(r['outcome'], r['outcome']))}</dd>"
            f"<dt>{e(L['mood'])}</dt><dd>{e(L.get(r['sentiment_start'], r['sentiment_start']))} → "
            f"{e(L.get(r['sentiment_end'], r['sentiment_end']))}</dd>"
            f"<dt>{e(L['flags'])}</dt><dd>{e(flags)}</dd>"
            f"<dt>{e(L['summary'])}</dt><dd>{e(r['summary'])}</dd></dl>"
            f'<h6>{e(L["quotes"])}</h6><ul class="quotes">{qs}</ul></article>'
        )
    return f'<div class="examples"><h4>{e(L["examples"])}</h4>{"".join(items)}</div>'


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1a202c;max-width:980px;margin:0 auto;padding:1.5rem}
h1{margin:.2rem 0}h2{border-bottom:2px solid #cbd5e0;padding-bottom:.2rem;margin-top:2.2rem}
.meta{color:#4a5568}.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}
.card{border:1px solid #cbd5e0;border-radius:6px;padding:.6rem .9rem;min-width:9rem}
.card .v{font-size:1.5rem;font-weight:700}.card .k{color:#4a5568;font-size:.85rem}
svg.chart{max-width:100%;height:auto;font-size:12px;display:block;margin:.5rem 0}
svg.chart text{fill:#1a202c}svg.chart text.onbar{fill:#fff;paint-order:stroke;stroke:#1a202c;stroke-width:3px;font-weight:600}
.axis{stroke:#718096}.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:1rem;margin:.2rem 0}
.legend li{display:flex;align-items:center;gap:.3rem}
table{border-collapse:collapse;margin:.4rem 0}th,td{border:1px solid #cbd5e0;padding:.2rem .5rem;text-align:left}
td{font-variant-numeric:tabular-nums}caption{text-align:left;font-weight:600}
details.fallback summary{cursor:pointer;color:#2c5282}
.topic,.flagsec{border-left:4px solid #cbd5e0;padding-left:.8rem;margin:1.2rem 0}
.example{border:1px solid #e2e8f0;border-radius:6px;padding:.5rem .8rem;margin:.6rem 0}
.example h5{margin:.1rem 0 .4rem;font-size:.95rem}.example h6{margin:.4rem 0 .2rem;font-size:.85rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.1rem .8rem;margin:0}dt{font-weight:600}dd{margin:0}
ul.quotes{list-style:none;padding:0;margin:0}blockquote{margin:.3rem 0 0;padding:.2rem .6rem;border-left:3px solid #2b6cb0;background:#f7fafc;white-space:pre-wrap;word-break:break-word}
blockquote p{margin:0}.who{margin:.1rem 0 .4rem .6rem;font-size:.85rem;color:#4a5568}
.role{font-weight:700}.role-agent::before{content:"▣ "}.role-customer::before{content:"● "}
code{font-size:.85em;word-break:break-all}footer{margin-top:2.5rem;color:#4a5568;font-size:.85rem}
"""


def render(data: dict[str, Any], lang: str) -> str:
    """The whole HTML document. ``lang`` is 'pt' or 'en'."""
    L = LABELS[lang]
    d = data["insights"]
    n = int(d["sessions"])
    f = d["filters"]
    window = f"{f['since'] or '…'} → {f['until'] or '…'}"
    if d["first_processed_at"]:
        window += f" ({str(d['first_processed_at'])[:10]} – {str(d['last_processed_at'])[:10]})"
    scripts = (
        ", ".join(f"{s['script_key']} v{s['version']} ({s['sessions']})" for s in d["scripts"])
        or L["none"]
    )
    out: list[str] = []
    cards = [
        (L["sessions"], str(n)),
        (L["resolved_share"], pct(d["outcomes"]["resolved"] / n if n else None)),
        (L["improved_share"], pct(d["sentiment"]["improved_share"])),
        (L["insufficient"], pct(d["insufficient_context"]["share"])),
        (L["cost_total"], usd(d["cost_usd"]["total"])),
        (L["cost_per"], usd(d["cost_usd"]["per_session"], 5)),
    ]
    out.append(
        '<section aria-label="headline"><div class="cards">'
        + "".join(
            f'<div class="card"><div class="v">{e(v)}</div><div class="k">{e(k)}</div></div>'
            for k, v in cards
        )
        + "</div></section>"
    )
    if n == 0:
        out.append(f"<p>{e(L['no_data'])}</p>")
    # outcomes
    oc = d["outcomes"]
    out.append(
        f'<section><h2 id="outcomes">{e(L["outcomes"])}</h2>'
        + bar_chart(
            "chart-outcomes",
            L["outcomes"],
            [(L[o], oc[o], f"{oc[o]} ({pct(oc[o] / n if n else None)})") for o in OUTCOMES],
        )
        + table(
            L["table"] + ": " + L["outcomes"],
            [L["outcome"], L["count"], L["share"]],
            [[L[o], oc[o], pct(oc[o] / n if n else None)] for o in OUTCOMES],
        )
        + "</section>"
    )
    # sentiment
    s = d["sentiment"]
    out.append(
        f'<section><h2 id="sentiment">{e(L["sentiment"])}</h2>'
        + stacked_bar("chart-sentiment", L["sentiment"], [(t, int(s[t])) for t in TREND], L)
        + _legend(TREND, L)
        + table(
            L["table"] + ": " + L["sentiment"],
            [L["mood"], L["count"], L["share"]],
            [[L[t], s[t], pct(s.get(f"{t}_share"))] for t in TREND],
        )
        + table(
            L["matrix"],
            [L["mood"]] + [L[x] for x in SENTIMENTS],
            [[L[a]] + [s["matrix"][a][b] for b in SENTIMENTS] for a in SENTIMENTS],
        )
        + "</section>"
    )
    # topics
    out.append(f'<section><h2 id="topics">{e(L["topics"])}</h2>')
    out.append(
        bar_chart(
            "chart-topics",
            L["topics"],
            [
                (
                    t["topic"],
                    float(t["present_share"] or 0),
                    f"{t['present']}/{t['assessed']} ({pct(t['present_share'])})",
                )
                for t in d["topics"]
            ],
        )
    )
    out.append(
        table(
            L["table"] + ": " + L["topics"],
            [L["topic"], L["present"], L["share"], L["confidence"]] + [L[o] for o in OUTCOMES],
            [
                [t["topic"], t["present"], pct(t["present_share"]), t["mean_confidence"]]
                + [t["outcomes_when_present"][o] for o in OUTCOMES]
                for t in d["topics"]
            ],
        )
    )
    for i, t in enumerate(d["topics"]):
        mix = [(o, int(t["outcomes_when_present"][o])) for o in OUTCOMES]
        out.append(
            f'<div class="topic"><h3>{e(t["topic"])}</h3><p>{e(L["present"])}: {t["present"]}/{t["assessed"]} '
            f"({pct(t['present_share'])}) · {e(L['confidence'])}: {e(t['mean_confidence'])}</p>"
            f"<h4>{e(L['outcome_mix'])}</h4>"
            + stacked_bar(f"chart-topic-{i}", f"{t['topic']}: {L['outcome_mix']}", mix, L)
            + _legend(OUTCOMES, L)
            + _examples(data["examples"]["topics"].get(t["topic"], []), "topic", t["topic"], L)
            + "</div>"
        )
    out.append("</section>")
    # flags
    fl = d["flags"]
    out.append(
        f'<section><h2 id="flags">{e(L["flags"])}</h2>'
        + bar_chart(
            "chart-flags",
            L["flags"],
            [(L[x["flag"]], x["sessions"], f"{x['sessions']} ({pct(x['share'])})") for x in fl],
        )
        + table(
            L["table"] + ": " + L["flags"],
            [L["flag"], L["count"], L["share"]],
            [[L[x["flag"]], x["sessions"], pct(x["share"])] for x in fl],
        )
    )
    for x in fl:
        if x["sessions"]:
            out.append(
                f'<div class="flagsec"><h3>{e(L[x["flag"]])}</h3><p>{x["sessions"]} ({pct(x["share"])})</p>'
                + _examples(data["examples"]["flags"].get(x["flag"], []), "flag", x["flag"], L)
                + "</div>"
            )
    out.append("</section>")
    # weeks and cost
    wk = d["weeks"]
    xs = [w["week"] for w in wk]
    out.append(
        f'<section><h2 id="weeks">{e(L["weeks"])}</h2>'
        + line_chart(
            "chart-weeks-sessions",
            L["sessions"],
            xs,
            [(L["sessions"], [w["sessions"] for w in wk])],
        )
        + line_chart(
            "chart-weeks-shares",
            f"{L['resolved_share']} / {L['improved_share']}",
            xs,
            [
                (L["resolved_share"], [w["outcomes"]["resolved"] / w["sessions"] for w in wk]),
                (
                    L["improved_share"],
                    [
                        None
                        if w["sentiment"]["improved_share"] is None
                        else float(w["sentiment"]["improved_share"])
                        for w in wk
                    ],
                ),
            ],
            fmt=pct,
        )
        + table(
            L["table"] + ": " + L["weeks"],
            [
                L["week"],
                L["sessions"],
                L["resolved_share"],
                L["improved_share"],
                L["insufficient"],
                L["cost_total"],
            ],
            [
                [
                    w["week"],
                    w["sessions"],
                    pct(w["outcomes"]["resolved"] / w["sessions"]),
                    pct(w["sentiment"]["improved_share"]),
                    pct(w["insufficient_context"]["share"]),
                    usd(w["cost_usd"]["total"]),
                ]
                for w in wk
            ],
        )
        + "</section>"
    )
    out.append(
        f'<section><h2 id="cost">{e(L["cost"])}</h2><p>{e(L["cost_total"])}: {e(usd(d["cost_usd"]["total"]))} · '
        f"{e(L['cost_per'])}: {e(usd(d['cost_usd']['per_session'], 5))} "
        f"({d['cost_usd']['priced_sessions']}/{n})</p>"
        + line_chart(
            "chart-weeks-cost",
            L["cost_total"],
            xs,
            [(L["cost_total"], [float(w["cost_usd"]["total"]) for w in wk])],
            fmt=lambda v: usd(v, 3),
        )
        + "</section>"
    )
    head = (
        f'<header><h1>{e(L["title"])}: {e(d["client_slug"])}</h1><p class="meta">{e(L["window"])}: {e(window)} · '
        f"{e(L['scripts'])}: {e(scripts)} · {e(L['generated'])}: {e(str(d['generated_at'])[:19])}</p></header>"
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="{"pt-BR" if lang == "pt" else "en"}"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(L['title'])}: {e(d['client_slug'])}</title><style>{CSS}</style></head><body>"
        + _pattern_defs()
        + head
        + "<main>"
        + "".join(out)
        + "</main>"
        + f"<footer><p>{e(L['footer'])}</p></footer></body></html>\n"
    )


def _json_default(o: Any) -> Any:
    if isinstance(o, (datetime, date)):
        return o.isoformat()
    if isinstance(o, Decimal):
        return float(o)
    return str(o)


def write_report(
    conn: psycopg.Connection[Any],
    client: str,
    path: Path | str,
    *,
    script_key: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    lang: str | None = None,
    examples: int = 3,
) -> Path:
    """Fetch, render and write the HTML report; returns the file's path."""
    data = fetch(conn, client, script_key=script_key, since=since, until=until, examples=examples)
    # round-trip through JSON: the same values the --json output shows
    data = json.loads(json.dumps(data, default=_json_default))
    for group in data["examples"].values():
        for rows in group.values():
            for r in rows:
                r["processed_at"] = datetime.fromisoformat(r["processed_at"])
    out = Path(path)
    out.write_text(
        render(data, language_for(data["insights"].get("language"), lang)), encoding="utf-8"
    )
    return out


def write_demo_report(url: str, client: str, path: Path | str = "parecer-insights.html") -> Path:
    """For ``parecer demo``: write the client's report next to where it runs and return the path."""
    from . import db

    with db.connect(url) as conn:
        return write_report(conn, client, path).resolve()
