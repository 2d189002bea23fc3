"""A local stand-in for the OpenAI Responses API (``POST /v1/responses``).

Used by the tests, the benchmarks and the demo when no real API key is set. It is
a real HTTP server speaking the wire format the ``openai`` SDK parses, with
realistic headers, rate limits (RPM/TPM sliding windows), simulated prompt
caching, latency and injectable faults. The report it writes is synthetic
(keyword heuristics, deterministic per transcript), schema-valid and grounded in
the transcript, and says so in its ``summary``.

    with Standin(StandinConfig(latency_ms=(50, 200))) as s:
        client = OpenAI(base_url=s.url, api_key="x", max_retries=0)

A request can force a fault with the header ``x-standin-fault: <kind>`` (or
``none``), e.g. ``extra_headers={"x-standin-fault": "timeout"}``.

Stdlib only. Request bodies are never logged (they contain transcripts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import secrets
import signal
import socket
import threading
import time
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs 3.11

__all__ = [
    "FAULT_HEADER",
    "FAULT_KINDS",
    "STANDIN_MODEL",
    "Standin",
    "StandinConfig",
    "build_report",
    "parse_transcript",
    "serve_forever",
]

STANDIN_MODEL = "parecer-standin"
FAULT_HEADER = "x-standin-fault"
FAULT_KINDS: tuple[str, ...] = (
    "rate_limit",
    "quota",
    "server_error",
    "timeout",
    "malformed",
    "ungrounded",
    "refusal",
    "incomplete",
    "context_length",
    "auth",
)
_VERSION = "parecer.report.v1"
_WINDOW_S = 60.0
_NOMINAL_RPM = 10_000  # advertised in headers when no limit is configured
_NOMINAL_TPM = 30_000_000
_MAX_BODY = 32 * 1024 * 1024
_CACHE_SLOTS = 256
_EXCERPT_MAX = 80
_KEYS_URL = "https://platform.openai.com/account/api-keys"


@dataclass(frozen=True)
class StandinConfig:
    """How the stand-in behaves. All limits are shared by every request."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    latency_ms: tuple[int, int] = (0, 0)  # uniform per request, for model-stage answers
    fault_rate: float = 0.0  # probability that a request draws a fault
    faults: tuple[str, ...] = FAULT_KINDS  # the faults the dice may pick (uniformly)
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    require_key: str | None = None  # bearer token required, when set
    seed: int | None = None  # for the fault/latency dice; None: random
    timeout_delay_s: float = 30.0  # how long the `timeout` fault stalls
    log: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        lo, hi = self.latency_ms
        if not 0 <= lo <= hi:
            raise ValueError(f"latency_ms must be 0 <= lo <= hi, got {self.latency_ms}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be within [0, 1], got {self.fault_rate}")
        unknown = [f for f in self.faults if f not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {list(FAULT_KINDS)}")
        if self.fault_rate > 0 and not self.faults:
            raise ValueError("fault_rate > 0 needs at least one fault kind")
        for name in ("rpm_limit", "tpm_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")
        if self.timeout_delay_s < 0:
            raise ValueError("timeout_delay_s must be >= 0")


# --------------------------------------------------------------------------- transcript

_LINE_RE = re.compile(r"^\[msg (?P<id>[^\]]+)\] (?P<ts>\S+) (?P<role>[^:]+): (?P<content>.*)$")
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
            messages.append(Message(m["id"], role, [content], unusable))
        elif raw.startswith("    ") and messages:
            messages[-1].lines.append(raw[4:])
    return messages


def _fold(s: str) -> str:
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
            folded = _fold(line)
            hit = pattern.search(folded)
            if hit:
                offset = hit.start() if len(folded) == len(line) else 0
                return msg, i, offset
    return None


_STOPWORDS = {"para", "pelo", "pela", "como", "sobre", "with", "from", "that", "this", "outro"}


def _stems(label: str) -> list[str]:
    """Keyword stems of an enum label: significant words, cut to 6 letters."""
    words = [w for w in re.split(r"[\W_]+", _fold(label)) if len(w) >= 4 and w not in _STOPWORDS]
    return [w[:6] for w in words]


_NEGATIVE = ("caiu", "problema", "ruim", "pessim", "absurd", "reclam", "lento", "cancel",
             "indevid", "erro", "demora", "irritad", "horrivel", "nao funciona", "bad",
             "terrible", "broken", "angry", "refund")
_POSITIVE = ("obrigad", "otimo", "perfeito", "resolv", "funcionou", "excelente", "valeu",
             "agradec", "thank", "great", "perfect", "fixed")
_ESCALATED = ("transfer", "encaminh", "supervisor", "escalon", "ouvidoria", "escalat")
_RESOLVED = ("resolvid", "resolveu", "funcionou", "normalizad", "solucionad", "voltou",
             "resolved", "fixed")
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
    folded = _fold(msg.text)
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
        topics.append({
            "topic": topic,
            "evidence": [_evidence(hit[0], (hit[1], hit[2]))] if hit else [],
            "present": hit is not None,
            "confidence": round(confidence, 2),
        })

    # Flags: keyword match of the flag's words plus a few hints.
    flags: list[dict[str, Any]] = []
    for flag in flag_enum:
        folded_flag = _fold(str(flag))
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
    sentiment_ev = [_evidence(m) for i, m in enumerate(cited) if m.id not in {c.id for c in cited[:i]}]

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
    return {"string": "", "number": schema.get("minimum", 0), "integer": schema.get("minimum", 0),
            "boolean": False, "array": []}.get(kind)


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


# ----------------------------------------------------------------------- server state


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _fmt_duration(seconds: float) -> str:
    """OpenAI's reset format: "0s", "250ms", "1.5s", "6m0s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m" + f"{rest:.3f}".rstrip("0").rstrip(".") + "s"


@dataclass
class _Verdict:
    """Outcome of the rate-limit check, with the header values to send."""

    ok: bool
    kind: str = ""  # "requests" | "tokens" when rejected
    retry_s: float = 0.0
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class _Windows:
    """Sliding 60 s windows of admitted requests and their tokens (caller locks)."""

    def __init__(self) -> None:
        self.requests: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()
        self.token_sum = 0

    def clear(self) -> None:
        self.requests.clear()
        self.tokens.clear()
        self.token_sum = 0

    def _prune(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - _WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - _WINDOW_S:
            self.token_sum -= self.tokens.popleft()[1]

    def admit(self, now: float, charge: int, rpm: int | None, tpm: int | None) -> _Verdict:
        self._prune(now)
        verdict = _Verdict(ok=True)
        used_r, used_t = len(self.requests), self.token_sum
        if rpm is not None and used_r + 1 > rpm:
            retry = self.requests[0] + _WINDOW_S - now
            verdict = _Verdict(False, "requests", retry, (
                f"Rate limit reached for {STANDIN_MODEL} in organization org-standin on "
                f"requests per min (RPM): Limit {rpm}, Used {used_r}, Requested 1. "
                f"Please try again in {_fmt_duration(retry)}."))
        elif tpm is not None and used_t + charge > tpm:
            if charge > tpm:
                retry = _WINDOW_S
                text = (f"Request too large for {STANDIN_MODEL} in organization org-standin on "
                        f"tokens per min (TPM): Limit {tpm}, Requested {charge}.")
            else:
                freed, retry = 0, _WINDOW_S
                for stamp, tokens in self.tokens:
                    freed += tokens
                    if used_t - freed + charge <= tpm:
                        retry = stamp + _WINDOW_S - now
                        break
                text = (f"Rate limit reached for {STANDIN_MODEL} in organization org-standin on "
                        f"tokens per min (TPM): Limit {tpm}, Used {used_t}, Requested {charge}. "
                        f"Please try again in {_fmt_duration(retry)}.")
            verdict = _Verdict(False, "tokens", retry, text)
        else:
            self.requests.append(now)
            self.tokens.append((now, charge))
            self.token_sum += charge
        verdict.headers = self.headers(now, rpm, tpm, verdict)
        return verdict

    def headers(self, now: float, rpm: int | None, tpm: int | None,
                verdict: _Verdict | None = None) -> dict[str, str]:
        """The x-ratelimit-* headers for the windows' current state."""
        self._prune(now)
        limit_r, limit_t = rpm or _NOMINAL_RPM, tpm or _NOMINAL_TPM
        reset_r = self.requests[0] + _WINDOW_S - now if self.requests else 0.0
        reset_t = self.tokens[0][0] + _WINDOW_S - now if self.tokens else 0.0
        if verdict is not None and not verdict.ok:  # when the blocked resource frees up
            reset_r = verdict.retry_s if verdict.kind == "requests" else reset_r
            reset_t = verdict.retry_s if verdict.kind == "tokens" else reset_t
        return {
            "x-ratelimit-limit-requests": str(limit_r),
            "x-ratelimit-remaining-requests": str(max(0, limit_r - len(self.requests))),
            "x-ratelimit-reset-requests": _fmt_duration(reset_r),
            "x-ratelimit-limit-tokens": str(limit_t),
            "x-ratelimit-remaining-tokens": str(max(0, limit_t - self.token_sum)),
            "x-ratelimit-reset-tokens": _fmt_duration(reset_t),
        }


class _State:
    """Everything the handler threads share."""

    def __init__(self, config: StandinConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        # Separate dice for faults and for the rest (latencies, answer variants): the n-th
        # request to arrive draws the n-th fault whatever the timing of the others, so a
        # seeded run injects the same faults in the same order.
        self.dice = random.Random(config.seed)
        self.other_dice = random.Random(None if config.seed is None else f"other:{config.seed}")
        self.windows = _Windows()
        self.prompt_cache: OrderedDict[str, None] = OrderedDict()
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.in_flight = 0
        self.counters: dict[str, int] = {}
        self.faults: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.counters = dict.fromkeys(
                ("requests", "completed", "incomplete", "rate_limited", "unauthorized",
                 "invalid_requests", "max_concurrent", "input_tokens", "cached_tokens",
                 "output_tokens"), 0)
            self.counters["max_concurrent"] = self.in_flight
            self.faults = dict.fromkeys(FAULT_KINDS, 0)
            self.windows.clear()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {**self.counters, "in_flight": self.in_flight, "faults": dict(self.faults)}

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counters[key] += n

    def draw_fault(self) -> str | None:
        cfg = self.config
        with self.lock:
            if cfg.fault_rate > 0 and self.dice.random() < cfg.fault_rate:
                return self.dice.choice(cfg.faults)
        return None

    def uniform(self, lo: float, hi: float) -> float:
        with self.lock:
            return self.other_dice.uniform(lo, hi)

    def seen_instructions(self, instructions: str) -> bool:
        """Simulated prompt cache: True when these instructions were seen recently."""
        key = hashlib.sha256(instructions.encode("utf-8")).hexdigest()
        with self.lock:
            hit = key in self.prompt_cache
            self.prompt_cache[key] = None
            self.prompt_cache.move_to_end(key)
            while len(self.prompt_cache) > _CACHE_SLOTS:
                self.prompt_cache.popitem(last=False)
            return hit

    def sleep(self, seconds: float) -> bool:
        """Sleep in small steps; False if the server began stopping meanwhile."""
        return not self.stopping.wait(seconds) if seconds > 0 else not self.stopping.is_set()


# ---------------------------------------------------------------------------- handler


class _ApiError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, status: int, message: str, type_: str, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self.headers = headers or {}


def _auth_error(message: str) -> _ApiError:
    return _ApiError(401, message, "invalid_request_error", None, "invalid_api_key")


def _invalid(message: str, param: str | None, code: str | None = None) -> _ApiError:
    return _ApiError(400, message, "invalid_request_error", param, code)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # listen backlog: bursts of concurrent connections
    state: _State

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that went away (a killed runner) is no error worth a traceback
        import sys as _sys

        if isinstance(_sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    server_version = "parecer-standin/1"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are closed after this
    disable_nagle_algorithm = True  # headers and body go out as separate small writes

    @property
    def state(self) -> _State:
        return cast(_Server, self.server).state

    def setup(self) -> None:
        super().setup()
        with self.state.lock:
            self.state.connections.add(self.connection)

    def finish(self) -> None:
        with self.state.lock:
            self.state.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log: the hook in StandinConfig.log gets content-free lines

    # -- plumbing

    def _send(self, status: int, body: bytes, headers: dict[str, str],
              content_type: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if "x-request-id" not in headers:
                self.send_header("x-request-id", "req_" + secrets.token_hex(16))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:  # the client went away (e.g. it timed out first)
            self.close_connection = True

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self._send(status, body, headers or {})

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self.close_connection = True
            raise _ApiError(413, "Request body too large.", "invalid_request_error")
        return self.rfile.read(length) if length > 0 else b""

    # -- routes

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200, b"ok", {}, "text/plain; charset=utf-8")
        elif path == "/v1/standin/stats":
            self._json(200, self.state.snapshot())
        else:
            self._not_found("GET", path)

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/v1/responses":
            self._responses()
        elif path == "/v1/standin/reset":
            self._read_body()
            self.state.reset()
            self._json(200, {"ok": True})
        else:
            self._read_body()
            self._not_found("POST", path)

    def _not_found(self, method: str, path: str) -> None:
        self._json(404, {"error": {"message": f"Invalid URL ({method} {path})",
                                   "type": "invalid_request_error", "param": None, "code": None}})

    def _responses(self) -> None:
        state, cfg = self.state, self.state.config
        started = time.monotonic()
        request_id = "req_" + secrets.token_hex(16)
        with state.lock:
            state.in_flight += 1
            state.counters["requests"] += 1
            state.counters["max_concurrent"] = max(state.counters["max_concurrent"],
                                                   state.in_flight)
        self._fault: str | None = None  # set once drawn, for the stats and the log line
        status = 0
        try:
            try:
                status = self._handle_responses(started, request_id)
            except _ApiError as err:
                status = err.status
                if self._fault is None and status == 401:
                    state.count("unauthorized")
                elif self._fault is None and status in (400, 413):
                    state.count("invalid_requests")
                self._json(status, err.body, self._headers(started, request_id, err.headers))
            except Exception as exc:  # a stand-in bug: answer like the API would, no traceback
                status, self._fault = 500, f"internal:{type(exc).__name__}"
                self._json(500, _ApiError(500, "The server had an error while processing your "
                                          "request. Sorry about that!", "server_error").body,
                           self._headers(started, request_id, {}))
        finally:
            with state.lock:
                state.in_flight -= 1
            if cfg.log is not None:
                ms = round((time.monotonic() - started) * 1000)
                cfg.log(f"standin {request_id} POST /v1/responses {status or 'dropped'} "
                        f"fault={self._fault or '-'} {ms}ms")

    def _headers(self, started: float, request_id: str, extra: dict[str, str]) -> dict[str, str]:
        if "x-ratelimit-limit-requests" not in extra:  # early errors: current window state
            cfg = self.state.config
            with self.state.lock:
                rl = self.state.windows.headers(time.monotonic(), cfg.rpm_limit, cfg.tpm_limit)
            extra = {**rl, **extra}
        return {
            "x-request-id": request_id,
            "openai-version": "2020-10-01",
            "openai-processing-ms": str(round((time.monotonic() - started) * 1000)),
            **extra,
        }

    def _handle_responses(self, started: float, request_id: str) -> int:
        """Serve one /v1/responses call; returns the status (0: dropped unanswered)."""
        state, cfg = self.state, self.state.config
        raw = self._read_body()

        if cfg.require_key is not None:
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                raise _auth_error("You didn't provide an API key. You need to provide your API "
                                  "key in an Authorization header using Bearer auth.")
            if auth[len("Bearer "):].strip() != cfg.require_key:
                raise _auth_error(f"Incorrect API key provided. You can find your API key at "
                                  f"{_KEYS_URL}.")

        try:
            req = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _invalid("We could not parse the JSON body of your request. (HINT: This likely "
                           "means you aren't using your HTTP library correctly.)", None) from None
        if not isinstance(req, dict):
            raise _invalid("We could not parse the JSON body of your request.", None)
        if not isinstance(req.get("model"), str) or not req["model"]:
            raise _invalid("Missing required parameter: 'model'.", "model",
                           "missing_required_parameter")
        transcript = _input_text(req.get("input"))
        if transcript is None:
            raise _invalid("Missing required parameter: 'input'.", "input",
                           "missing_required_parameter")
        max_out = req.get("max_output_tokens")
        if max_out is not None and (not isinstance(max_out, int) or isinstance(max_out, bool)):
            raise _invalid("Invalid type for 'max_output_tokens': expected an integer.",
                           "max_output_tokens", "invalid_type")
        if isinstance(max_out, int) and max_out < 16:
            raise _invalid("Invalid 'max_output_tokens': integer below minimum value. Expected a "
                           f"value >= 16, but got {max_out} instead.", "max_output_tokens",
                           "integer_below_min_value")
        forced = self.headers.get(FAULT_HEADER)
        if forced is not None:
            forced = forced.strip().lower()
            if forced != "none" and forced not in FAULT_KINDS:
                raise _invalid(f"Unknown {FAULT_HEADER} '{forced}'; expected one of "
                               f"{', '.join(FAULT_KINDS)} or none.", None, "invalid_standin_fault")

        instructions: str = req["instructions"] if isinstance(req.get("instructions"), str) else ""
        text_param = req.get("text") if isinstance(req.get("text"), dict) else None
        fmt = (text_param or {}).get("format")
        schema = fmt.get("schema") if isinstance(fmt, dict) else None
        output = json.dumps(build_report(transcript, schema if isinstance(schema, dict) else None),
                            ensure_ascii=False, separators=(",", ":"))
        input_tokens = _tokens(instructions + transcript)

        # Rate limits, charged with the whole request's tokens.
        with state.lock:
            verdict = state.windows.admit(time.monotonic(), input_tokens + _tokens(output),
                                          cfg.rpm_limit, cfg.tpm_limit)
            if not verdict.ok:
                state.counters["rate_limited"] += 1
        if not verdict.ok:
            raise _ApiError(429, verdict.message, verdict.kind, None, "rate_limit_exceeded",
                            {**verdict.headers, **_retry_after(verdict.retry_s)})
        rl = verdict.headers

        fault = (None if forced == "none" else forced) if forced is not None else state.draw_fault()
        if fault is not None:
            self._fault = fault
            with state.lock:
                state.faults[fault] += 1
        try:
            _raise_early_fault(fault, rl)
        except _ApiError as err:
            err.headers = {**rl, **err.headers}
            raise
        lo, hi = cfg.latency_ms
        delay = cfg.timeout_delay_s if fault == "timeout" else state.uniform(lo, hi) / 1000
        if not state.sleep(delay):
            self.close_connection = True  # shutting down: drop the request unanswered
            return 0
        if fault == "server_error":
            raise _ApiError(500, "The server had an error while processing your request. Sorry "
                            "about that!", "server_error", None, None, rl)

        hit = bool(instructions) and state.seen_instructions(instructions)
        cached = _tokens(instructions) if hit else 0
        body = _response_body(req, output, fault, input_tokens, cached, max_out,
                              self._variant_rng(), transcript)
        usage = body["usage"]
        with state.lock:
            c = state.counters
            c["completed" if body["status"] == "completed" else "incomplete"] += 1
            c["input_tokens"] += usage["input_tokens"]
            c["cached_tokens"] += cached
            c["output_tokens"] += usage["output_tokens"]
        self._json(200, body, self._headers(started, request_id, rl))
        return 200

    def _variant_rng(self) -> random.Random:
        with self.state.lock:
            return random.Random(self.state.other_dice.getrandbits(64))


def _input_text(value: Any) -> str | None:
    """The transcript: a string, or the text parts of a list of input items."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        parts: list[str] = []
        for item in value:
            content = item.get("content") if isinstance(item, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [c["text"] for c in content
                          if isinstance(c, dict) and isinstance(c.get("text"), str)]
        return "\n".join(parts)
    return None


def _retry_after(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds))),
            "retry-after-ms": str(max(1, math.ceil(seconds * 1000)))}


def _raise_early_fault(fault: str | None, rl: dict[str, str]) -> None:
    """Faults that answer at once, before any 'model' latency."""
    if fault == "rate_limit":
        raise _ApiError(429, f"Rate limit reached for {STANDIN_MODEL} in organization "
                        "org-standin on requests per min (RPM): Limit "
                        f"{rl['x-ratelimit-limit-requests']}. Please try again in 1s.",
                        "requests", None, "rate_limit_exceeded", _retry_after(1))
    if fault == "quota":
        raise _ApiError(429, "You exceeded your current quota, please check your plan and billing "
                        "details. For more information on this error, read the docs: "
                        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                        "insufficient_quota", None, "insufficient_quota")
    if fault == "context_length":
        raise _ApiError(400, "Your input exceeds the context window of this model. Please adjust "
                        "your input and try again.", "invalid_request_error", "input",
                        "context_length_exceeded")
    if fault == "auth":
        raise _auth_error(f"Incorrect API key provided. You can find your API key at {_KEYS_URL}.")


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


def _ungrounded(output: str, transcript: str, rng: random.Random) -> str:
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
        text = " ".join(_fold(msgs[cited["message_id"]].text).split())
        excerpt = "o cliente confirmou que tudo foi resolvido e agradeceu"
        while excerpt in text:
            excerpt += " muito"
        cited["excerpt"] = excerpt
    return json.dumps(report, ensure_ascii=False, separators=(",", ":"))


def _response_body(req: dict[str, Any], output: str, fault: str | None, input_tokens: int,
                   cached: int, max_out: int | None, rng: random.Random,
                   transcript: str) -> dict[str, Any]:
    """The Responses API object; `output` is the valid report, altered per fault."""
    status, reason = "completed", None
    content: dict[str, Any]
    if fault == "malformed":
        output = (output[: len(output) // 2] if rng.random() < 0.5
                  else "```json\n" + output + "\n```")
    elif fault == "ungrounded":
        output = _ungrounded(output, transcript, rng)
    if fault == "incomplete":
        limit = len(output) // 2 if max_out is None else min(len(output) // 2, max_out * 4)
        output, status, reason = output[:limit], "incomplete", "max_output_tokens"
    elif max_out is not None and _tokens(output) > max_out:  # a genuine cut-off
        output, status, reason = output[: max_out * 4], "incomplete", "max_output_tokens"
    if fault == "refusal":
        refusal = "I'm sorry, I can't help with that."
        content, output_tokens = {"type": "refusal", "refusal": refusal}, _tokens(refusal)
    else:
        content = {"type": "output_text", "text": output, "annotations": [], "logprobs": []}
        output_tokens = max_out if reason and max_out is not None else _tokens(output)
    now = int(time.time())
    text_param = req["text"] if isinstance(req.get("text"), dict) else {"format": {"type": "text"}}
    return {
        "id": "resp_" + secrets.token_hex(24),
        "object": "response",
        "created_at": now,
        "status": status,
        "background": False,
        "completed_at": now if status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": reason} if reason else None,
        "instructions": req.get("instructions"),
        "max_output_tokens": max_out,
        "model": STANDIN_MODEL,
        "output": [{
            "type": "message",
            "id": "msg_" + secrets.token_hex(24),
            "status": status,
            "role": "assistant",
            "content": [content],
        }],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": False,
        "temperature": 1.0,
        "text": text_param,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": None,
        "metadata": req.get("metadata") if isinstance(req.get("metadata"), dict) else {},
    }


# -------------------------------------------------------------------------- public API


class Standin:
    """The stand-in server, run on a background thread.

    ``Standin(config).start()`` or ``with Standin(config) as s:``; ``s.url`` is the
    SDK's ``base_url`` (ends in ``/v1``).
    """

    def __init__(self, config: StandinConfig | None = None) -> None:
        self.config = config or StandinConfig()
        self._state = _State(self.config)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        if self._server is not None:
            return self
        server = _Server((self.config.host, self.config.port), _Handler)
        server.state = self._state
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="parecer-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; in-flight requests (e.g. a `timeout` stall) are dropped."""
        server, self._server = self._server, None
        if server is None:
            return
        self._state.stopping.set()
        server.shutdown()
        with self._state.lock:
            connections = list(self._state.connections)
        for conn in connections:  # wake handler threads blocked on idle keep-alive reads
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The SDK base URL, e.g. ``http://127.0.0.1:54321/v1``."""
        return f"http://{self.config.host}:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        """Counters: requests, completed, incomplete, faults{kind: n}, rate_limited,
        unauthorized, invalid_requests, in_flight, max_concurrent, token totals."""
        return self._state.snapshot()

    def reset(self) -> None:
        """Zero the counters and the rate-limit windows (the prompt cache stays)."""
        self._state.reset()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def serve_forever(config: StandinConfig | None = None, *,
                  on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until KeyboardInterrupt or SIGTERM/SIGINT, then stop cleanly.

    ``on_ready`` receives the base URL once the server is listening.
    """
    done = threading.Event()
    standin = Standin(config).start()
    previous: list[tuple[signal.Signals, Any]] = []

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous.append((sig, signal.signal(sig, _on_signal)))
    try:
        if on_ready is not None:
            on_ready(standin.url)
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()
        for sig, handler in previous:
            signal.signal(sig, handler)


def _iter_faults(value: str) -> Iterator[str]:
    yield from (f.strip() for f in value.split(",") if f.strip())


def _print_line(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m parecer.standin --port 8787 --fault-rate 0.1``"""
    p = argparse.ArgumentParser(prog="parecer.standin", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency-ms", default="0,0", help="LO,HI")
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--faults", default=",".join(FAULT_KINDS))
    p.add_argument("--rpm", type=int, default=None)
    p.add_argument("--tpm", type=int, default=None)
    p.add_argument("--require-key", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--log", action="store_true", help="one content-free line per request")
    a = p.parse_args(argv)
    lo, _, hi = a.latency_ms.partition(",")
    config = StandinConfig(host=a.host, port=a.port, latency_ms=(int(lo), int(hi or lo)),
                           fault_rate=a.fault_rate, faults=tuple(_iter_faults(a.faults)),
                           rpm_limit=a.rpm, tpm_limit=a.tpm, require_key=a.require_key,
                           seed=a.seed, log=_print_line if a.log else None)
    serve_forever(config, on_ready=lambda url: print(f"parecer-standin listening on {url}",
                                                     flush=True))


if __name__ == "__main__":
    main()
