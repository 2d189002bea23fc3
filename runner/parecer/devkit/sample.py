"""Deterministic sample data: Brazilian-Portuguese support chats in the reference schema.

``load_sample`` fills the ``chat`` schema (db/reference/host_chat_schema.sql) with realistic
customer-support sessions for two kinds of business: an internet/phone provider and
a health clinic. Everything is derived from ``(seed, client slug, ordinal)``, so the
same arguments always give the same ids and the same text, and a larger ``sessions``
later only adds the new sessions. Timestamps are placed relative to ``now``.

Rows are generated per batch, streamed with COPY into TEMP staging tables and moved
with ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, one committed transaction per
batch. A background thread generates the next batch while the server inserts the
current one.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import json
import queue
import random
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from .. import paths

__all__ = ["DEFAULT_CLIENTS", "SampleStats", "load_sample"]

DEFAULT_CLIENTS: tuple[tuple[str, str], ...] = (
    ("acme-telecom", "Acme Telecom"),
    ("clinica-bem-estar", "Clínica Bem-Estar"),
)

BATCH_SESSIONS = 2_000  # sessions generated, copied and committed together
TAG_VOCABULARY = ("vip", "lead", "inadimplente", "teste", "parceiro", "cliente-antigo")

_DAY = 86_400
_WINDOW = 30 * _DAY  # sessions start within the last 30 days


@dataclass(frozen=True)
class SampleStats:
    """Size of the requested sample and what this call actually added."""

    clients: int
    contacts: int  # distinct contacts referenced by the sample's sessions
    sessions: int
    messages: int
    inserted_sessions: int
    inserted_messages: int
    seconds: float


# --------------------------------------------------------------------------- text

# The dialogue text lives in data/sample_chats.json. A line of dialogue is
# (from_me, alternatives); templates are kept escaped for COPY text format (slot
# values never contain tabs, newlines or backslashes).
Line = tuple[bool, tuple[str, ...]]
Step = tuple[Line, ...]


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _alts(alts: Sequence[str]) -> tuple[str, ...]:
    return tuple(_esc(a) for a in alts)


@dataclass(frozen=True)
class _Scenario:
    name: str
    opening: tuple[str, ...]  # the customer's first description of the problem
    steps: tuple[Step, ...]  # steps[0] usually comes first, the rest in random order
    resolved: tuple[str, ...]
    escalated: tuple[str, ...]


@dataclass(frozen=True)
class _Family:
    name: str
    agents: tuple[tuple[str, str], ...]  # (name, article)
    scenarios: tuple[_Scenario, ...]
    weights: tuple[float, ...]  # cumulative scenario weights
    filler_steps: tuple[Step, ...]
    client_image: tuple[str, ...]
    client_doc: tuple[str, ...]
    agent_image: tuple[str, ...]
    agent_doc: tuple[str, ...]


def _cumulative(ws: Sequence[float]) -> tuple[float, ...]:
    total, acc, out = sum(ws), 0.0, []
    for w in ws:
        acc += w
        out.append(acc / total)
    return tuple(out)


def _step(raw: list[dict[str, list[str]]]) -> Step:
    """``[{"agent": [alternatives]}, {"customer": [...]}]`` -> a Step."""
    lines: list[Line] = []
    for entry in raw:
        [(who, alts)] = entry.items()
        if who not in ("agent", "customer"):
            raise ValueError(f"sample data: a line is spoken by 'agent' or 'customer', not {who!r}")
        lines.append((who == "agent", _alts(alts)))
    return tuple(lines)


def _family(name: str, raw: dict[str, Any], shared_filler: tuple[Step, ...]) -> _Family:
    scenarios = tuple(
        _Scenario(
            sc["name"],
            _alts(sc["opening"]),
            tuple(_step(st) for st in sc["steps"]),
            _alts(sc["resolved"]),
            _alts(sc["escalated"]),
        )
        for sc in raw["scenarios"]
    )
    captions = raw["captions"]
    return _Family(
        name,
        tuple((agent, article) for agent, article in raw["agents"]),
        scenarios,
        _cumulative([sc["weight"] for sc in raw["scenarios"]]),
        shared_filler + tuple(_step(st) for st in raw["filler_steps"]),
        _alts(captions["customer_image"]),
        _alts(captions["customer_document"]),
        _alts(captions["agent_image"]),
        _alts(captions["agent_document"]),
    )


def _read_data() -> dict[str, Any]:
    ref = importlib.resources.files("parecer.devkit") / "data" / "sample_chats.json"
    data: dict[str, Any] = json.loads(ref.read_text(encoding="utf-8"))
    return data


_DATA = _read_data()
_LINES: dict[str, tuple[str, ...]] = {k: _alts(v) for k, v in _DATA["lines"].items()}

_SHARED_FILLER_STEPS = tuple(_step(st) for st in _DATA["shared_filler_steps"])
_TELECOM = _family("telecom", _DATA["families"]["telecom"], _SHARED_FILLER_STEPS)
_CLINIC = _family("clinic", _DATA["families"]["clinic"], _SHARED_FILLER_STEPS)

_NAMES = _DATA["names"]
_FEMALE: tuple[str, ...] = tuple(_NAMES["female"])
_MALE: tuple[str, ...] = tuple(_NAMES["male"])
_SURNAMES: tuple[str, ...] = tuple(_NAMES["surnames"])

_VALUES = _DATA["slot_values"]
_DDDS: tuple[str, ...] = tuple(_VALUES["ddds"])
_PLANS: tuple[tuple[str, str], ...] = tuple(
    (a, b) for a, b in _VALUES["plans"]
)  # (plan, its upgrade)
_SPEEDS: tuple[str, ...] = tuple(_VALUES["speeds"])
_SERVICES: tuple[str, ...] = tuple(_VALUES["services"])
_CARRIERS: tuple[str, ...] = tuple(_VALUES["carriers"])
_DEADLINES: tuple[str, ...] = tuple(_VALUES["deadlines"])
_STREETS: tuple[str, ...] = tuple(_VALUES["streets"])
_DOCTORS: tuple[tuple[str, str], ...] = tuple(
    (a, b) for a, b in _VALUES["doctors"]
)  # (doctor, specialty)
_EXAMS: tuple[str, ...] = tuple(_VALUES["exams"])
_INSURERS: tuple[str, ...] = tuple(_VALUES["insurers"])
_INSURANCE_PLANS: tuple[str, ...] = tuple(_VALUES["insurance_plans"])
_UNITS: tuple[str, ...] = tuple(_VALUES["units"])


def _family_for(slug: str, position: int) -> _Family:
    s = slug.lower()
    if any(w in s for w in ("clinic", "saude", "saúde", "medic", "odonto", "hospital")):
        return _CLINIC
    if any(w in s for w in ("telecom", "fibra", "internet", "net")):
        return _TELECOM
    return (_TELECOM, _CLINIC)[position % 2]


# ------------------------------------------------------------------------ generation

Rnd = Callable[[], float]

_LENGTH_NO_AGENT = 0.02  # no agent reply at all (counted as short)
_LENGTH_SHORT = 0.30  # 3-15 messages
_LENGTH_MEDIUM = 0.90  # 20-40; the rest long, 40-90
_OPEN = 0.08  # still open: ended_at NULL
_RECENT = 0.18  # the next 10%: ended within the last 24 hours
_RESOLVED, _ESCALATED = 0.65, 0.85  # the rest: the customer went silent
_BACKFILL = 0.03  # closed sessions ingested late: created_at is the sync time
_EXTERNAL = 0.90  # messages with created_at_external
# One draw per message picks its kind: audio / image-or-document / edited text / plain.
_AUDIO_C, _AUDIO_A = 0.10, 0.04  # customer / agent: ~7% overall
_MEDIA_C, _MEDIA_A = 0.135, 0.065  # + image/document: ~3% overall
_EDITED = 0.89  # draws above this are edited (updated_at_external), when external

# The closing lines after the agent's: the customer's answer, the agent's last word.
_CLOSING_LINES = {
    "resolved": ("client_thanks", "agent_farewell"),
    "escalated": ("client_escalation_reaction", "agent_after_escalation"),
}


@dataclass(frozen=True)
class _Client:
    slug: str
    name: str
    family: _Family
    weight: int


@dataclass
class _Plan:
    """The cheap, leading part of a session's random draws (enough for the stats)."""

    client: _Client
    ordinal: int
    contact: int
    n: int
    no_agent: bool
    rng: random.Random


@dataclass
class _Batch:
    done: int  # sessions covered so far (the progress figure)
    sessions: int  # new sessions in this batch
    messages: int
    contacts_text: str  # COPY text: contacts (+ tags), tickets, sessions, messages
    tickets_text: str
    sessions_text: str
    messages_text: str


def _pick(rnd: Rnd, seq: Sequence[str]) -> str:
    return seq[int(rnd() * len(seq))]


def _assign(i: int, clients: Sequence[_Client], total_weight: int) -> tuple[_Client, int]:
    """Global index -> (client, ordinal within that client): a fixed repeating pattern,
    so ordinals stay the same when ``sessions`` grows."""
    cycle, pos = divmod(i, total_weight)
    for c in clients:
        if pos < c.weight:
            return c, cycle * c.weight + pos
        pos -= c.weight
    raise AssertionError("unreachable")


def _plan(seed: int, client: _Client, ordinal: int) -> _Plan:
    rng = random.Random(f"{seed}:{client.slug}:{ordinal}")
    rnd = rng.random
    # Returning contacts: the newest contact (the "frontier") or any earlier one, so a
    # client has about one contact per 2.5-3 sessions and older contacts have more.
    frontier = int(ordinal / 2.5)
    contact = frontier if rnd() < 0.45 else int(rnd() * (frontier + 1))
    u = rnd()
    if u < _LENGTH_NO_AGENT:
        n = 3 + int(rnd() * 6)
    elif u < _LENGTH_SHORT:
        n = 3 + int(rnd() * 13)
    elif u < _LENGTH_MEDIUM:
        n = int(rng.triangular(20, 41, 22))
    else:
        n = int(rng.triangular(40, 91, 45))
    return _Plan(client, ordinal, contact, n, u < _LENGTH_NO_AGENT, rng)


@functools.cache
def _hms_table() -> tuple[str, ...]:
    return tuple(
        f"{h:02d}:{m:02d}:{s:02d}+00" for h in range(24) for m in range(60) for s in range(60)
    )


class _Clock:
    """Epoch seconds -> timestamptz text, from cached day and time-of-day strings."""

    def __init__(self) -> None:
        self.hms = _hms_table()
        self.days: dict[int, str] = {}

    def day(self, day: int) -> str:
        prefix = self.days.get(day)
        if prefix is None:
            prefix = self.days[day] = datetime.fromtimestamp(day * _DAY, timezone.utc).strftime(
                "%Y-%m-%d "
            )
        return prefix

    def __call__(self, ts: int) -> str:
        day, sec = divmod(ts, _DAY)
        return self.day(day) + self.hms[sec]


Identity = tuple[str, str, bool]  # first name, full name, female


def _contact_identity(seed: int, client: _Client, idx: int) -> tuple[Identity, random.Random]:
    """A contact's name (its first draws); the returned rng continues with the rest."""
    rng = random.Random(f"{seed}:{client.slug}:c{idx}")
    rnd = rng.random
    female = rnd() < 0.55
    first = _pick(rnd, _FEMALE if female else _MALE)
    name = f"{first} {_pick(rnd, _SURNAMES)}"
    if rnd() < 0.3:
        name += f" {_pick(rnd, _SURNAMES)}"
    return (first, name, female), rng


def _contact_row(seed: int, client: _Client, idx: int, now_ts: int, clock: _Clock) -> str:
    """COPY line for _sample_contacts: id, client_id, name, phone, created_at, tags."""
    (_, name, _), rng = _contact_identity(seed, client, idx)
    rnd = rng.random
    phone = f"55{_pick(rnd, _DDDS)}9{int(rnd() * 1e8):08d}"
    created = clock(now_ts - _WINDOW - _DAY - int(rnd() * 365 * _DAY))
    # Tagged iff a golden-ratio (Weyl) sequence over the index falls below 35%: any range
    # of contacts gets close to 35% tagged, even in a small sample.
    weyl = (idx * 0.6180339887498949 + random.Random(f"{seed}:{client.slug}:tags").random()) % 1
    tags = ",".join(rng.sample(TAG_VOCABULARY, 1 if rnd() < 0.6 else 2)) if weyl < 0.35 else ""
    stored_name = "\\N" if rnd() < 0.04 else name  # a few contacts were saved without a name
    return f"{client.slug}:c{idx:05d}\t{client.slug}\t{stored_name}\t{phone}\t{created}\t{tags}\n"


# Slot values are drawn lazily, when a template first needs them: a session only pays
# for the handful it uses. Makers may fill a paired slot too (plan and its upgrade...).
SlotMaker = Callable[[Rnd, dict[str, str]], str]


def _money(r: Rnd, _: dict[str, str]) -> str:
    return f"R$ {39 + int(r() * 361)},{(90, 99, 0, 50, 80)[int(r() * 5)]:02d}"


def _date(r: Rnd, _: dict[str, str]) -> str:
    return f"{1 + int(r() * 28):02d}/{1 + int(r() * 12):02d}"


def _dates(r: Rnd, slots: dict[str, str]) -> str:
    """ "data" and "data2": two dates of the same month, 1-6 days apart."""
    day, month = 1 + int(r() * 22), 1 + int(r() * 12)
    slots["data"] = f"{day:02d}/{month:02d}"
    slots["data2"] = f"{day + 1 + int(r() * 6):02d}/{month:02d}"
    return slots["data"]  # __missing__ then returns whichever of the two was asked


def _hour(r: Rnd, _: dict[str, str]) -> str:
    h, m = 7 + int(r() * 12), (0, 15, 30, 45)[int(r() * 4)]
    return f"{h}h{m:02d}" if m else f"{h}h"


def _digits(r: Rnd, k: int) -> str:
    return f"{int(r() * 10**k):0{k}d}"


def _pair(
    pairs: Sequence[tuple[str, str]], first: str, second: str, want_second: bool
) -> SlotMaker:
    def make(r: Rnd, slots: dict[str, str]) -> str:
        a, b = pairs[int(r() * len(pairs))]
        slots[first], slots[second] = a, b
        return b if want_second else a

    return make


def _choice(pool: Sequence[str]) -> SlotMaker:
    return lambda r, _: pool[int(r() * len(pool))]


def _barcode(r: Rnd, _: dict[str, str]) -> str:
    d = "".join(_digits(r, 12) for _ in range(4))
    return f"{d[0:5]}.{d[5:10]} {d[10:15]}.{d[15:21]} {d[21:26]}.{d[26:32]} {d[32]} {d[33:47]}"


_SLOT_MAKERS: dict[str, SlotMaker] = {
    "protocolo": lambda r, _: str(10**11 + int(r() * 9 * 10**11)),
    "cpf": lambda r, _: f"{_digits(r, 3)}.{_digits(r, 3)}.{_digits(r, 3)}-{_digits(r, 2)}",
    "valor": _money,
    "valor2": _money,
    "data": _dates,
    "data2": _dates,
    "hora": _hour,
    "hora2": _hour,
    "dia": lambda r, _: str(1 + int(r() * 28)),
    "nascimento": lambda r, s: f"{_date(r, s)}/{1950 + int(r() * 62)}",
    "prazo": _choice(_DEADLINES),
    "ddd": _choice(_DDDS),
    "tel": lambda r, _: f"{_digits(r, 4)}-{_digits(r, 4)}",
    "plano": _pair(_PLANS, "plano", "plano_up", False),
    "plano_up": _pair(_PLANS, "plano", "plano_up", True),
    "velocidade": _choice(_SPEEDS),
    "servico": _choice(_SERVICES),
    "operadora": _choice(_CARRIERS),
    "endereco": lambda r, _: f"{_pick(r, _STREETS)}, {10 + int(r() * 2990)}",
    "cep": lambda r, _: f"{_digits(r, 5)}-{_digits(r, 3)}",
    "barcode": _barcode,
    "medico": _pair(_DOCTORS, "medico", "especialidade", False),
    "especialidade": _pair(_DOCTORS, "medico", "especialidade", True),
    "exame": _choice(_EXAMS),
    "convenio": _choice(_INSURERS),
    "plano_conv": _choice(_INSURANCE_PLANS),
    "unidade": _choice(_UNITS),
}

_GENDERED = {
    True: {
        "obg": "obrigada",
        "Obg": "Obrigada",
        "chateado": "chateada",
        "tranquilo": "tranquila",
        "atendido": "atendida",
        "mesmo": "mesma",
    },
    False: {
        "obg": "obrigado",
        "Obg": "Obrigado",
        "chateado": "chateado",
        "tranquilo": "tranquilo",
        "atendido": "atendido",
        "mesmo": "mesmo",
    },
}


class _Slots(dict[str, str]):
    """Template slot values of one session (str.format_map calls __missing__)."""

    def __init__(self, rnd: Rnd, base: dict[str, str]) -> None:
        super().__init__(base)
        self.rnd = rnd

    def __missing__(self, key: str) -> str:
        value = _SLOT_MAKERS[key](self.rnd, self)
        return self.setdefault(key, value)  # a pair maker may have set key already


def _shuffled(rnd: Rnd, seq: Sequence[Step]) -> list[Step]:
    out = list(seq)
    for i in range(len(out) - 1, 0, -1):
        j = int(rnd() * (i + 1))
        out[i], out[j] = out[j], out[i]
    return out


def _script(
    rnd: Rnd, fam: _Family, n: int, no_agent: bool, is_open: bool
) -> tuple[list[tuple[bool, str]], str]:
    """The session's dialogue as (from_me, escaped template) lines, and the ticket status."""
    u = rnd()
    scenario = fam.scenarios[-1]
    for sc, w in zip(fam.scenarios, fam.weights):
        if u < w:
            scenario = sc
            break
    opening = _pick(rnd, scenario.opening)
    if no_agent:
        lines = [(False, _pick(rnd, _LINES["client_greetings"])), (False, opening)]
        lines += [(False, _pick(rnd, _LINES["client_no_reply"])) for _ in range(n - 2)]
        return lines, "open" if is_open else "closed"

    long_form = n >= 8
    if long_form:
        head = [
            (False, _pick(rnd, _LINES["client_greetings"])),
            (True, _pick(rnd, _LINES["agent_greetings"])),
            (False, opening),
        ]
    else:  # short sessions: greeting and problem in one message
        head = [(False, f"{_pick(rnd, _LINES['client_greetings'])}! {opening}")]

    closing: list[tuple[bool, str]] = []
    v = rnd()
    if is_open:
        status = "open"  # still going: no closing lines yet
    elif v < _ESCALATED:
        # the agent's resolution or hand-over, the customer's answer, in a long
        # session the agent's last word
        status = "resolved" if v < _RESOLVED else "escalated"
        agent_line = scenario.resolved if status == "resolved" else scenario.escalated
        answer, last_word = _CLOSING_LINES[status]
        closing = [(True, _pick(rnd, agent_line)), (False, _pick(rnd, _LINES[answer]))]
        if long_form:
            closing.append((True, _pick(rnd, _LINES[last_word])))
    else:
        status = "closed"  # the customer went silent
        closing = [
            (True, _pick(rnd, _LINES["agent_still_there"])),
            (True, _pick(rnd, _LINES["agent_close_silent"])),
        ]
        if long_form:
            closing.insert(0, (True, _pick(rnd, _LINES["agent_pending_question"])))

    # Middle: the scenario's steps (the first one first, the others shuffled), then
    # generic steps, each added whole while it fits; single filler lines pad the rest.
    room = n - len(head) - len(closing)
    middle: list[tuple[bool, str]] = []
    steps = [scenario.steps[0], *_shuffled(rnd, scenario.steps[1:])]
    rounds = 0
    while room >= 2 and rounds < 4:
        for step in steps:
            if len(step) <= room:
                for from_me, alts in step:
                    middle.append((from_me, alts[int(rnd() * len(alts))]))
                room -= len(step)
                if room < 2:
                    break
        steps, rounds = _shuffled(rnd, fam.filler_steps), rounds + 1
    last_me = middle[-1][0] if middle else head[-1][0]
    for _ in range(room):
        me = not last_me if rnd() < 0.85 else last_me
        middle.append((me, _pick(rnd, _LINES["agent_filler"] if me else _LINES["client_filler"])))
        last_me = me
    return head + middle + closing, status


def _session_rows(
    p: _Plan, identity: Identity, now_ts: int, clock: _Clock, msgs: list[str]
) -> tuple[str, str]:
    """Append the session's message COPY lines to ``msgs``; return its tickets and
    sessions lines."""
    client, rnd = p.client, p.rng.random
    fam = client.family
    first, full, female = identity
    u = rnd()
    is_open = u < _OPEN
    agent, article = fam.agents[int(rnd() * len(fam.agents))]
    slots = _Slots(rnd, _GENDERED[female])
    slots.update(
        nome=first,
        nome_completo=full,
        agente=agent,
        art=article,
        empresa=client.name,
        Obg_at="Obrigada" if article == "a" else "Obrigado",
    )
    lines, status = _script(rnd, fam, p.n, p.no_agent, is_open)
    n = len(lines)

    # Timing: gaps of 10 s to 10 min (log-uniform), placed relative to now.
    gaps = [int(10 * 60 ** rnd()) for _ in range(n - 1)]
    gaps.append(60)  # room after the last message for an edit, before ended_at
    duration = sum(gaps) - 60
    tail = 60 + int(rnd() * 1741)  # last message -> ended_at: 1-30 min
    if is_open:
        ended = 0
        last = now_ts - 60 - int(rnd() * 3 * 3600)
    elif u < _RECENT:
        ended = now_ts - int(rnd() * (_DAY - 60))
        last = ended - tail
    else:
        earliest = now_ts - _WINDOW
        latest = now_ts - _DAY - 60 - tail - duration
        last = earliest + int(rnd() * (latest - earliest)) + duration
        ended = last + tail
    t = started = last - duration
    backfill = min(ended + 60 + int(rnd() * 7200), now_ts) if ended and rnd() < _BACKFILL else 0
    backfill_text = clock(backfill) if backfill else ""

    sid = f"{client.slug}:s{p.ordinal:06d}"
    prefix = f"{client.slug}:m{p.ordinal:06d}-"
    out = msgs.append
    nul = "\\N"
    # Timestamps as text: the session's first day inline, the rare rest via clock().
    hms = clock.hms
    day0 = started - started % _DAY
    day_text = clock.day(started // _DAY)
    day_end = _DAY - 4  # room for created_at's 1-3 s ingestion delay
    for j in range(n):
        from_me, tpl = lines[j]
        text = tpl.format_map(slots) if "{" in tpl else tpl
        body, transcription, media, upd = text, nul, "text", nul
        r = rnd()
        if from_me:
            flag, p_audio, p_media = "t", _AUDIO_A, _MEDIA_A
        else:
            flag, p_audio, p_media = "f", _AUDIO_C, _MEDIA_C
        if r < p_media:
            if r < p_audio:  # ~60% transcribed (body NULL), the rest has neither
                media, body = "audio", nul
                if r < p_audio * 0.6:
                    transcription = text
            else:  # image / document: a short caption or nothing
                if rnd() < 0.5:
                    media, pool = "image", fam.agent_image if from_me else fam.client_image
                else:
                    media, pool = "document", fam.agent_doc if from_me else fam.client_doc
                body = _pick(rnd, pool) if rnd() < 0.6 else nul
        gap = gaps[j]
        v = rnd()
        rel = t - day0
        if backfill or v < _EXTERNAL:
            ext = day_text + hms[rel] if rel < day_end else clock(t)
            if backfill_text:
                created = backfill_text
            elif v < 0.6:
                created = ext
            else:  # ingested 1-3 s later
                created = clock(t + 1 + int(v * 10) % 3)
            if r > _EDITED:  # edited: after the original, before the next message
                upd = clock(t + 1 + int((r - _EDITED) / (1 - _EDITED) * (gap - 2)))
        else:
            ext = nul
            created = day_text + hms[rel] if rel < day_end else clock(t)
        out(
            f"{prefix}{j:03d}\t{sid}\t{flag}\t{media}\t{body}\t{transcription}\t{created}\t"
            f"{ext}\t{upd}\n"
        )
        t += gap
    tid = f"{client.slug}:t{p.ordinal:06d}"
    start_text = clock(started)
    ticket = f"{tid}\t{client.slug}\t{client.slug}:c{p.contact:05d}\t{status}\t{start_text}\n"
    session = f"{sid}\t{tid}\t{start_text}\t{clock(ended) if ended else nul}\n"
    return ticket, session


# --------------------------------------------------------------------------- loading

_CONTACTS_COLS = "id, client_id, name, phone, created_at"
_TICKETS_COLS = "id, client_id, contact_id, status, created_at"
_SESSIONS_COLS = "id, ticket_id, started_at, ended_at"
_MESSAGES_COLS = (
    "id, session_id, from_me, media_type, body, transcription, created_at, "
    "created_at_external, updated_at_external"
)

_STAGE_CONTACTS = """
CREATE TEMP TABLE _sample_contacts (
    id text, client_id text, name text, phone text, created_at timestamptz, tags text
) ON COMMIT DROP
"""
_STAGE_REST = """
CREATE TEMP TABLE _sample_tickets (
    id text, client_id text, contact_id text, status text, created_at timestamptz
) ON COMMIT DROP;
CREATE TEMP TABLE _sample_sessions (
    id text, ticket_id text, started_at timestamptz, ended_at timestamptz
) ON COMMIT DROP;
CREATE TEMP TABLE _sample_messages (
    id text, session_id text, from_me boolean, media_type text, body text,
    transcription text, created_at timestamptz, created_at_external timestamptz,
    updated_at_external timestamptz
) ON COMMIT DROP;
"""
_MOVE_TAGS = """
INSERT INTO chat.contact_tags (contact_id, tag)
SELECT id, unnest(string_to_array(tags, ',')) FROM _sample_contacts WHERE tags <> ''
ON CONFLICT DO NOTHING
"""


def _move(table: str, cols: str) -> str:
    return (
        f"INSERT INTO chat.{table} ({cols}) SELECT {cols} FROM _sample_{table} "
        "ON CONFLICT DO NOTHING"
    )


def _commit(conn: psycopg.Connection) -> None:
    if not conn.autocommit:
        conn.commit()


def _ensure_schema(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT to_regclass('chat.messages') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        conn.execute(paths.host_chat_schema().read_text(encoding="utf-8"))
    _commit(conn)


def _existing_sessions(conn: psycopg.Connection, slugs: list[str]) -> set[str]:
    rows = conn.execute(
        "SELECT s.id FROM chat.sessions s JOIN chat.tickets t ON t.id = s.ticket_id "
        "WHERE t.client_id = ANY(%s)",
        (slugs,),
    ).fetchall()
    _commit(conn)
    return {r[0] for r in rows}


class _Generator:
    """Builds the batches; also tallies the sample's size (for every session, new or not)."""

    def __init__(
        self, seed: int, sessions: int, clients: list[_Client], now_ts: int, existing: set[str]
    ) -> None:
        self.seed, self.sessions, self.clients, self.now_ts = seed, sessions, clients, now_ts
        self.existing = existing
        self.total_weight = sum(c.weight for c in clients)
        self.contacts_seen: set[tuple[str, int]] = set()  # every contact of the sample
        self.messages = 0

    def batches(self) -> Iterator[_Batch]:
        seed, now_ts, clock = self.seed, self.now_ts, _Clock()
        staged: set[tuple[str, int]] = set()  # contacts already sent by this call
        identities: dict[tuple[str, int], Identity] = {}
        for b0 in range(0, self.sessions, BATCH_SESSIONS):
            b1 = min(b0 + BATCH_SESSIONS, self.sessions)
            contacts: list[str] = []
            tickets: list[str] = []
            sessions: list[str] = []
            msgs: list[str] = []
            for i in range(b0, b1):
                client, ordinal = _assign(i, self.clients, self.total_weight)
                p = _plan(seed, client, ordinal)
                key = (client.slug, p.contact)
                self.contacts_seen.add(key)
                self.messages += p.n
                if f"{client.slug}:s{ordinal:06d}" in self.existing:
                    continue
                if key not in staged:
                    staged.add(key)
                    contacts.append(_contact_row(seed, client, p.contact, now_ts, clock))
                identity = identities.get(key)
                if identity is None:
                    identity = identities[key] = _contact_identity(seed, client, p.contact)[0]
                ticket, session = _session_rows(p, identity, now_ts, clock, msgs)
                tickets.append(ticket)
                sessions.append(session)
            if len(identities) > 200_000:
                identities.clear()
            yield _Batch(
                b1,
                len(sessions),
                len(msgs),
                "".join(contacts),
                "".join(tickets),
                "".join(sessions),
                "".join(msgs),
            )


def _copy(cur: psycopg.Cursor[object], target: str, cols: str, data: str) -> None:
    if data:
        with cur.copy(f"COPY {target} ({cols}) FROM STDIN") as copy:
            copy.write(data)


def _load_batch(conn: psycopg.Connection, batch: _Batch) -> tuple[int, int]:
    """One transaction: contacts and tags through staging + ON CONFLICT DO NOTHING; then
    tickets, sessions and messages (all new when the batch was planned) COPYed straight
    into place under a savepoint, falling back to staging + ON CONFLICT DO NOTHING if any
    row turns out to exist already (e.g. a concurrent load)."""
    if not batch.sessions:
        return 0, 0
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit = off")  # sample data: no fsync wait
        cur.execute(_STAGE_CONTACTS)
        _copy(cur, "_sample_contacts", f"{_CONTACTS_COLS}, tags", batch.contacts_text)
        cur.execute(_move("contacts", _CONTACTS_COLS))
        cur.execute(_MOVE_TAGS)
        try:
            with conn.transaction():
                _copy(cur, "chat.tickets", _TICKETS_COLS, batch.tickets_text)
                _copy(cur, "chat.sessions", _SESSIONS_COLS, batch.sessions_text)
                _copy(cur, "chat.messages", _MESSAGES_COLS, batch.messages_text)
            inserted = batch.sessions, batch.messages
        except psycopg.errors.UniqueViolation:
            cur.execute(_STAGE_REST)
            _copy(cur, "_sample_tickets", _TICKETS_COLS, batch.tickets_text)
            _copy(cur, "_sample_sessions", _SESSIONS_COLS, batch.sessions_text)
            _copy(cur, "_sample_messages", _MESSAGES_COLS, batch.messages_text)
            cur.execute(_move("tickets", _TICKETS_COLS))
            cur.execute(_move("sessions", _SESSIONS_COLS))
            sessions = cur.rowcount
            cur.execute(_move("messages", _MESSAGES_COLS))
            inserted = sessions, cur.rowcount
    _commit(conn)
    return inserted


def load_sample(
    conn: psycopg.Connection[Any],
    *,
    sessions: int = 300,
    seed: int = 42,
    clients: Sequence[tuple[str, str]] = DEFAULT_CLIENTS,
    now: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SampleStats:
    """Load ``sessions`` deterministic support chats for ``clients`` (slug, display name).

    Creates the ``chat`` schema if it is missing, commits once per batch and is
    idempotent: sessions already present are skipped (not regenerated) and anything
    that may exist is inserted with ``ON CONFLICT DO NOTHING``. ``now`` (default: this
    hour, UTC; a naive value is taken as UTC) anchors the timestamps; the text never
    depends on it. ``progress(done, total)`` is called after each batch (sessions).
    """
    t0 = time.perf_counter()
    if sessions < 0:
        raise ValueError("sessions must be >= 0")
    if not clients:
        raise ValueError("at least one client is required")
    if now is None:
        now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    now_ts = int(now.timestamp())
    specs = [
        _Client(slug, name, _family_for(slug, i), 3 if i == 0 else 2)
        for i, (slug, name) in enumerate(clients)
    ]  # 60/40 for two clients

    # this module reads rows by position: work on tuples whatever the caller's row factory
    saved_factory = conn.row_factory
    conn.row_factory = tuple_row
    try:
        return _load(conn, sessions, seed, specs, now_ts, progress, t0)
    finally:
        conn.row_factory = saved_factory


def _load(
    conn: psycopg.Connection[Any],
    sessions: int,
    seed: int,
    specs: list[_Client],
    now_ts: int,
    progress: Callable[[int, int], None] | None,
    t0: float,
) -> SampleStats:
    _ensure_schema(conn)
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO chat.clients (id, slug, name) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            [(c.slug, c.slug, c.name) for c in specs],
        )
    _commit(conn)
    existing = _existing_sessions(conn, [c.slug for c in specs]) if sessions else set()

    gen = _Generator(seed, sessions, specs, now_ts, existing)
    inserted_sessions = inserted_messages = 0
    with contextlib.closing(_prefetch(gen.batches())) as batches:
        for batch in batches:
            s, m = _load_batch(conn, batch)
            inserted_sessions += s
            inserted_messages += m
            if progress is not None:
                progress(batch.done, sessions)
    return SampleStats(
        clients=len(specs),
        contacts=len(gen.contacts_seen),
        sessions=sessions,
        messages=gen.messages,
        inserted_sessions=inserted_sessions,
        inserted_messages=inserted_messages,
        seconds=time.perf_counter() - t0,
    )


def _prefetch(batches: Iterator[_Batch], depth: int = 1) -> Generator[_Batch, None, None]:
    """Run the generator in a thread so the next batch is built while the server works
    on the current one (psycopg releases the GIL while it waits)."""
    q: queue.Queue[_Batch | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: _Batch | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer is gone

    def work() -> None:
        try:
            for b in batches:
                if not put(b):
                    return
            put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised
            put(exc)

    th = threading.Thread(target=work, name="parecer-sample", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        th.join()
