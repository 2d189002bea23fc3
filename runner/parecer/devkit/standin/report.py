"""The stand-in's synthetic report: keyword heuristics over the transcript.

Deterministic per transcript, valid against the report schema the request sends,
and grounded (every excerpt is an exact substring of a cited message). Its
``summary`` says it is synthetic. ``ungrounded`` breaks one citation, for the
``ungrounded`` fault; ``apply_slips`` makes the honest quoting slips real models
make (curly quotes, ellipses, NFD, ...), each still grounded by the database's
rules (``parecer._match``).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

__all__ = [
    "SLIPS",
    "Message",
    "apply_slips",
    "build_report",
    "fold",
    "parse_transcript",
    "slip",
    "ungrounded",
]

_VERSION = "parecer.report.v1"
_EXCERPT_MAX = 80

# --------------------------------------------------------------------------- transcript

# An id is shown plain, or as a JSON string when it holds a space, a bracket or a quote.
_LINE_RE = re.compile(
    r'^\[msg (?P<id>"(?:[^"\\]|\\.)*"|[^\]]+)\] (?P<ts>\S+) (?P<role>[^:]+): (?P<content>.*)$'
)
_LINE_BREAK = " \u21b5 "  # how prompt_for shows a line break inside a message
_MARKER_RE = re.compile(r"^\[[^\]]*\](?: |$)")
_SEGMENT_RE = re.compile(r"\S+(?: \S+)*")  # runs of words separated by single spaces
_AGENT_ROLES = {"ATENDENTE", "AGENT", "AGENTE"}
_CUSTOMER_ROLES = {"CLIENTE", "CUSTOMER"}


@dataclass
class Message:
    """One transcript message; ``lines`` are its text lines, marker stripped."""

    id: str
    role: str  # "agent" | "customer" | "other"
    lines: list[str]
    unusable: bool = False  # audio without transcription

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def quotable(self) -> bool:
        return not self.unusable and bool(self.text.strip())


def parse_transcript(transcript: str) -> list[Message]:
    """Parse the runner's transcript format; unknown lines are ignored."""
    messages: list[Message] = []
    for raw in transcript.split("\n"):  # not splitlines(): \r, \x1c... stay inside a line
        m = _LINE_RE.match(raw)
        if m:
            content = m["content"]
            marker = _MARKER_RE.match(content)
            unusable = bool(marker and "audio_present" in marker.group(0))
            if marker:
                content = content[marker.end() :]
            role_name = m["role"].strip().upper()
            role = (
                "agent"
                if role_name in _AGENT_ROLES
                else "customer"
                if role_name in _CUSTOMER_ROLES
                else "other"
            )
            mid = json.loads(m["id"]) if m["id"].startswith('"') else m["id"]
            messages.append(Message(mid, role, content.split(_LINE_BREAK), unusable))
        elif raw.startswith("    ") and messages:
            messages[-1].lines.append(raw[4:])
    return messages


def fold(s: str) -> str:
    """Lowercase without accents, for naive keyword matching."""
    decomposed = unicodedata.normalize("NFKD", s)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def _excerpt(line: str, at: int = 0) -> str:
    """A short exact substring of ``line`` around ``at``, single-spaced, <= 80 chars.

    Staying inside one line and one single-spaced run keeps the excerpt a
    substring however the database joins lines or collapses whitespace.
    """
    segments = list(_SEGMENT_RE.finditer(line))
    if not segments:
        return ""
    seg = next((s for s in segments if s.start() <= at < s.end()), segments[0])
    words = list(re.finditer(r"\S+", seg.group(0)))
    rel = max(0, at - seg.start())
    hit = next((i for i, w in enumerate(words) if w.end() > rel), 0)
    first = words[max(0, hit - 2)]
    start = seg.start() + first.start()
    end = start + min(len(first.group(0)), _EXCERPT_MAX)
    for w in words[max(0, hit - 2) + 1 :]:
        w_end = seg.start() + w.end()
        if w_end - start > _EXCERPT_MAX:
            break
        end = w_end
    return line[start:end]


def _evidence(msg: Message, at: tuple[int, int] | None = None) -> dict[str, str]:
    """Evidence for ``msg``; ``at`` = (line index, char offset) of a keyword hit."""
    if at is None:
        idx = next(i for i, ln in enumerate(msg.lines) if ln.strip())
        return {"message_id": msg.id, "excerpt": _excerpt(msg.lines[idx])}
    return {"message_id": msg.id, "excerpt": _excerpt(msg.lines[at[0]], at[1])}


def _find(msgs: Sequence[Message], stems: Sequence[str]) -> tuple[Message, int, int] | None:
    """The first quotable message with a word starting with one of ``stems``.

    Folding keeps string lengths for Latin text, so offsets map back to the line;
    if they do not, the excerpt falls back to the line start (still grounded).
    """
    if not stems:
        return None
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(s) for s in stems) + ")")
    for msg in msgs:
        if not msg.quotable:
            continue
        for i, line in enumerate(msg.lines):
            folded = fold(line)
            hit = pattern.search(folded)
            if hit:
                offset = hit.start() if len(folded) == len(line) else 0
                return msg, i, offset
    return None


_STOPWORDS = {"para", "pelo", "pela", "como", "sobre", "with", "from", "that", "this", "outro"}


def _stems(label: str) -> list[str]:
    """Keyword stems of an enum label: significant words, cut to 6 letters."""
    words = [w for w in re.split(r"[\W_]+", fold(label)) if len(w) >= 4 and w not in _STOPWORDS]
    return [w[:6] for w in words]


_NEGATIVE = (
    "caiu",
    "problema",
    "ruim",
    "pessim",
    "absurd",
    "reclam",
    "lento",
    "cancel",
    "indevid",
    "erro",
    "demora",
    "irritad",
    "horrivel",
    "nao funciona",
    "bad",
    "terrible",
    "broken",
    "angry",
    "refund",
)
_POSITIVE = (
    "obrigad",
    "otimo",
    "perfeito",
    "resolv",
    "funcionou",
    "excelente",
    "valeu",
    "agradec",
    "thank",
    "great",
    "perfect",
    "fixed",
)
_ESCALATED = ("transfer", "encaminh", "supervisor", "escalon", "ouvidoria", "escalat")
_RESOLVED = (
    "resolvid",
    "resolveu",
    "funcionou",
    "normalizad",
    "solucionad",
    "voltou",
    "resolved",
    "fixed",
)
_FLAG_HINTS: dict[str, tuple[str, ...]] = {
    "churn": ("cancel",),
    "cancel": ("cancel",),
    "legal": ("procon", "advogad", "processar", "justica", "lawyer"),
    "procon": ("procon",),
    "abus": ("idiota", "palhac", "lixo", "incompetent"),
    "profan": ("idiota", "palhac", "lixo"),
    "urgent": ("urgent",),
    "escalat": _ESCALATED,
    "refund": ("reembols", "estorn", "devoluc", "refund"),
    "reembols": ("reembols", "estorn", "devoluc"),
    "complain": ("reclam",),
    "slow": ("demor", "aguardand", "esperand"),
    "sensitive": ("cpf", "senha", "cartao"),
    "human": ("humano", "pessoa de verdade"),
    "error": ("errad", "errou"),
}


def _sentiment(msg: Message | None) -> str:
    if msg is None:
        return "unknown"
    folded = fold(msg.text)
    score = sum(k in folded for k in _POSITIVE) - sum(k in folded for k in _NEGATIVE)
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


def _pick(value: str, allowed: Sequence[Any]) -> str:
    """``value`` if the schema allows it, else "unknown" or the first allowed value."""
    if not allowed or value in allowed:
        return value
    return "unknown" if "unknown" in allowed else str(allowed[0])


def _prop(schema: Any, *path: str) -> Any:
    """schema["properties"][p0]["items"?]... tolerant lookup; {} when absent."""
    node = schema
    for key in path:
        if not isinstance(node, dict):
            return {}
        node = node.get(key, {})
    return node if isinstance(node, dict) else {}


def build_report(transcript: str, schema: dict[str, Any] | None) -> dict[str, Any]:
    """The synthetic, grounded report for ``transcript`` (deterministic per input)."""
    schema = schema if isinstance(schema, dict) else {}
    rng = random.Random(hashlib.sha256(transcript.encode("utf-8")).digest())
    msgs = parse_transcript(transcript)
    quotable = [m for m in msgs if m.quotable]
    customer = [m for m in quotable if m.role == "customer"]
    agent = [m for m in quotable if m.role == "agent"]
    insufficient = not quotable

    items = ("items", "properties")
    topic_enum = _prop(schema, "properties", "topics", *items, "topic").get("enum", [])
    flag_enum = _prop(schema, "properties", "flags", *items, "flag").get("enum", [])
    status_enum = _prop(schema, "properties", "outcome", "properties", "status").get("enum", [])
    sent_enum = _prop(schema, "properties", "sentiment", "properties", "start").get("enum", [])
    version_schema = _prop(schema, "properties", "schema_version")
    version = version_schema.get("const") or (version_schema.get("enum") or [_VERSION])[0]

    # Topics: a naive keyword match of the topic's words; cite the matching message.
    topics: list[dict[str, Any]] = []
    for topic in topic_enum:
        hit = _find(quotable, _stems(str(topic)))
        confidence = rng.uniform(0.62, 0.95) if hit else rng.uniform(0.03, 0.25)
        topics.append(
            {
                "topic": topic,
                "evidence": [_evidence(hit[0], (hit[1], hit[2]))] if hit else [],
                "present": hit is not None,
                "confidence": round(confidence, 2),
            }
        )

    # Flags: keyword match of the flag's words plus a few hints.
    flags: list[dict[str, Any]] = []
    for flag in flag_enum:
        folded_flag = fold(str(flag))
        hints = [s for k, v in _FLAG_HINTS.items() if k in folded_flag for s in v]
        stems = _stems(str(flag)) + hints
        hit = _find(customer or quotable, stems)
        if hit:
            flags.append({"evidence": [_evidence(hit[0], (hit[1], hit[2]))], "flag": flag})

    # Outcome: escalation / resolution keywords, else who spoke last.
    outcome_ev: list[dict[str, str]] = []
    if insufficient:
        status = "unknown"
    elif esc := _find(agent, _ESCALATED):
        status, outcome_ev = "escalated", [_evidence(esc[0], (esc[1], esc[2]))]
    elif res := _find(quotable[-4:], _RESOLVED):
        status, outcome_ev = "resolved", [_evidence(res[0], (res[1], res[2]))]
    elif quotable[-1].role == "agent" and len(quotable) >= 3:
        status = "abandoned"
    else:
        status = "unresolved"
    if quotable and all(e["message_id"] != quotable[-1].id for e in outcome_ev):
        outcome_ev.append(_evidence(quotable[-1]))

    # Sentiment: the customer's first and last messages.
    first = customer[0] if customer else (quotable[0] if quotable else None)
    last = customer[-1] if customer else (quotable[-1] if quotable else None)
    cited = [m for m in (first, last) if m is not None]
    sentiment_ev = [
        _evidence(m) for i, m in enumerate(cited) if m.id not in {c.id for c in cited[:i]}
    ]

    present = [t["topic"] for t in topics if t["present"]]
    summary = (
        "[parecer-standin] Synthetic report from the local stand-in server, not a real "
        f"model. {len(msgs)} messages ({len(customer)} customer, {len(agent)} agent, "
        f"{len(msgs) - len(quotable)} without usable text); keyword-matched topics: "
        f"{', '.join(map(str, present)) or 'none'}; outcome guessed as {status}."
    )
    next_actions = {  # resolved / unknown: none
        "unresolved": "Retomar o contato com o cliente para concluir o atendimento (sintético).",
        "abandoned": "Tentar um novo contato, o cliente parou de responder (sintético).",
        "escalated": "Acompanhar o encaminhamento até a resposta ao cliente (sintético).",
    }
    report: dict[str, Any] = {
        "schema_version": version,
        "summary": summary,
        "outcome": {"evidence": outcome_ev, "status": _pick(status, status_enum)},
        "sentiment": {
            "evidence": sentiment_ev,
            "start": _pick(_sentiment(first), sent_enum),
            "end": _pick(_sentiment(last), sent_enum),
        },
        "topics": topics,
        "flags": flags,
        "insufficient_context": insufficient,
        "next_action": None if insufficient else next_actions.get(status),
    }
    return cast(dict[str, Any], _conform(report, schema)) if schema else report


# ------------------------------------------------------------------ schema conformance


def _types(schema: dict[str, Any]) -> list[str]:
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _matches(value: Any, schema: dict[str, Any]) -> bool:
    checks: dict[str, Callable[[Any], bool]] = {
        "string": lambda v: isinstance(v, str),
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "null": lambda v: v is None,
    }
    types = _types(schema)
    return not types or any(checks.get(t, lambda v: False)(value) for t in types)


def _default(schema: Any) -> Any:
    """A minimal valid value for a required key the report lacks."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return _pick("unknown", schema["enum"])
    if "anyOf" in schema:
        branches = [b for b in schema["anyOf"] if isinstance(b, dict)]
        nullable = [b for b in branches if "null" in _types(b)]
        return _default((nullable or branches or [{}])[0])
    types = _types(schema)
    if "null" in types:
        return None
    kind = types[0] if types else "null"
    if kind == "object":
        return _conform({}, schema)
    return {
        "string": "",
        "number": schema.get("minimum", 0),
        "integer": schema.get("minimum", 0),
        "boolean": False,
        "array": [],
    }.get(kind)


def _conform(value: Any, schema: Any) -> Any:
    """Order keys as the schema lists them, fill missing required keys, drop keys a
    closed object forbids, respect enums, maxLength and numeric bounds."""
    if not isinstance(schema, dict):
        return value
    if "anyOf" in schema:
        for branch in schema["anyOf"]:
            if isinstance(branch, dict) and _matches(value, branch):
                return _conform(value, branch)
        return value
    if "const" in schema:
        return schema["const"]
    props = schema.get("properties")
    if isinstance(value, dict) and isinstance(props, dict):
        required = set(schema.get("required", props))
        out: dict[str, Any] = {}
        for key, sub in props.items():
            if key in value:
                out[key] = _conform(value[key], sub)
            elif key in required:
                out[key] = _default(sub)
        if schema.get("additionalProperties", True) is not False:
            out.update((k, v) for k, v in value.items() if k not in props)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = [_conform(v, schema["items"]) for v in value]
        return items[: schema["maxItems"]] if "maxItems" in schema else items
    if isinstance(value, str):
        if schema.get("enum"):
            value = _pick(value, schema["enum"])
        if isinstance(schema.get("maxLength"), int):
            value = value[: schema["maxLength"]].rstrip()  # a prefix stays a substring
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema:
            value = max(value, schema["minimum"])
        if "maximum" in schema:
            value = min(value, schema["maximum"])
    return value


# ------------------------------------------------------------------ faults


def _evidence_lists(node: Any) -> Iterator[list[Any]]:
    """Every "evidence" list in the report, in document order."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "evidence" and isinstance(value, list):
                yield value
            else:
                yield from _evidence_lists(value)
    elif isinstance(node, list):
        for item in node:
            yield from _evidence_lists(item)


def ungrounded(output: str, transcript: str, rng: random.Random) -> str:
    """Same report, one citation broken: a fabricated id or a fabricated excerpt."""
    report = json.loads(output)
    msgs = {m.id: m for m in parse_transcript(transcript)}
    lists = list(_evidence_lists(report))
    if not lists:
        return output
    evidence = next((ev for ev in lists if ev), lists[0])
    if not evidence:  # nothing cited (insufficient context): cite something anyway
        evidence.append({"message_id": "", "excerpt": "o cliente confirmou a solução"})
    cited = evidence[0]
    if rng.random() < 0.5 or cited["message_id"] not in msgs:
        fake = "msg-" + secrets.token_hex(6)
        while fake in msgs:
            fake = "msg-" + secrets.token_hex(6)
        cited["message_id"] = fake
    else:
        text = " ".join(fold(msgs[cited["message_id"]].text).split())
        excerpt = "o cliente confirmou que tudo foi resolvido e agradeceu"
        while excerpt in text:
            excerpt += " muito"
        cited["excerpt"] = excerpt
    return json.dumps(report, ensure_ascii=False, separators=(",", ":"))


# ------------------------------------------------------------------ quoting slips

_EMOJI = re.compile("[\u2600-\u27bf\U0001f000-\U0001faff\ufe0f\u200d]")
_EDGE = " .,;:!?'\"-\u2026"


def _wrap(e: str, m: str) -> str | None:
    return f'"{e}"'


def _wrap_curly(e: str, m: str) -> str | None:
    return f"\u201c{e}\u201d"


def _curly_quotes(e: str, m: str) -> str | None:
    if "'" not in e and '"' not in e:
        return None
    out, double_open = [], True
    for ch in e:
        if ch == "'":
            out.append("\u2019")
        elif ch == '"':
            out.append("\u201c" if double_open else "\u201d")
            double_open = not double_open
        else:
            out.append(ch)
    return "".join(out)


def _ellipsis_join(e: str, m: str) -> str | None:
    """Two parts of the excerpt, its middle left out: "a b ... y z" (or with "…")."""
    words = e.split(" ")
    if len(words) < 5:
        return None
    head, tail = " ".join(words[:2]), " ".join(words[-2:])
    if min(len(fold(head).strip(_EDGE)), len(fold(tail).strip(_EDGE))) < 3:
        return None
    return head + (" ... " if len(e) % 2 else "\u2026") + tail


def _leading_ellipsis(e: str, m: str) -> str | None:
    return "..." + e


def _trailing_ellipsis(e: str, m: str) -> str | None:
    return e + "\u2026"


def _final_period(e: str, m: str) -> str | None:
    return None if e.endswith(".") else e + "."


def _nfd(e: str, m: str) -> str | None:
    out = unicodedata.normalize("NFD", e)
    return out if out != e else None


def _nbsp(e: str, m: str) -> str | None:
    return e.replace(" ", "\u00a0") if " " in e else None


def _hyphen_for_dash(e: str, m: str) -> str | None:
    out = e.replace("\u2014", "-").replace("\u2013", "-")
    return out if out != e else None


def _emoji_removed(e: str, m: str) -> str | None:
    out = " ".join(_EMOJI.sub("", e).split())
    return out if out != e and out else None


def _accent_dropped(e: str, m: str) -> str | None:
    for i, ch in enumerate(e):
        base = unicodedata.normalize("NFD", ch)
        if len(base) > 1 and base[0].isalpha():
            return e[:i] + base[0] + e[i + 1 :]
    return None


#: The slips, by name: each takes (excerpt, message text) and returns the slipped
#: excerpt, or None when it does not apply (no quote to curl, no accent to drop).
SLIPS: dict[str, Callable[[str, str], str | None]] = {
    "curly_quotes": _curly_quotes,
    "wrapped_in_quotes": _wrap,
    "wrapped_in_curly_quotes": _wrap_curly,
    "ellipsis_join": _ellipsis_join,
    "leading_ellipsis": _leading_ellipsis,
    "trailing_ellipsis": _trailing_ellipsis,
    "final_period": _final_period,
    "nfd": _nfd,
    "no_break_space": _nbsp,
    "hyphen_for_dash": _hyphen_for_dash,
    "emoji_removed": _emoji_removed,
    "accent_dropped": _accent_dropped,
}


def slip(excerpt: str, message_text: str, rng: random.Random) -> str:
    """One realistic slip of ``excerpt``, picked at random among those that apply."""
    names = list(SLIPS)
    rng.shuffle(names)
    for name in names:
        out = SLIPS[name](excerpt, message_text)
        if out is not None and out != excerpt:
            return out
    return excerpt


def apply_slips(output: str, transcript: str, rate: float, rng: random.Random) -> tuple[str, int]:
    """The report with each evidence excerpt slipped with probability ``rate``; also
    returns how many were."""
    if rate <= 0:
        return output, 0
    report = json.loads(output)
    msgs = {m.id: m for m in parse_transcript(transcript)}
    n = 0
    for evidence in _evidence_lists(report):
        for item in evidence:
            if (
                isinstance(item, dict)
                and isinstance(item.get("excerpt"), str)
                and rng.random() < rate
            ):
                cited = msgs.get(item.get("message_id", ""))
                item["excerpt"] = slip(item["excerpt"], cited.text if cited else "", rng)
                n += 1
    return json.dumps(report, ensure_ascii=False, separators=(",", ":")), n
