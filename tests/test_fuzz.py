"""Property-based fuzzing of every public parecer.* function (hypothesis).

The property, for every call with hostile or random arguments:

* it either succeeds or raises a *documented* SQLSTATE: one of the ``PRxxx`` codes
  of ``parecer.errors.CODES``, and moreover one that the function's own
  ``COMMENT ON FUNCTION`` ("Errors: ...") lists;
* never an undocumented SQLSTATE, never ``P0001`` (a RAISE without a code), never
  ``XX000`` (internal error);
* a failing call changes nothing (``tests.helpers.table_checksum`` before/after);
* a succeeding call leaves the database usable and consistent (per-function
  oracles below: a stored setting can be read back, an accepted report really is
  grounded, counts add up...).

One narrow exception, decided on purpose: SQLSTATE class 22 ("data exception")
is accepted when, and only when, it is a *type-level* error the caller caused
while its arguments were being converted to the declared parameter types, e.g.
``2147483648`` for an ``integer`` parameter (22003), ``'abc'`` for a ``uuid``
(22P02), ``'{"a":"\\u0000"}'`` for a ``jsonb`` (22P05), or a ragged array literal.
PostgreSQL raises these before the function body runs, exactly as it would for
``SELECT 2147483648::integer``; parecer cannot intercept them and callers get
the same error from any typed API. The test does not take this on trust: when a
call raises class 22, it evaluates the bare argument casts
(``SELECT $1::integer, $2::uuid, ...``) with the same values, and accepts the
error only if that alone raises the same SQLSTATE. A class-22 error raised from
*inside* a function (a cast, a LIKE pattern, an array operation on a value that
passed type conversion) is a bug.

Text parameters never carry NUL (PostgreSQL text cannot hold it; psycopg refuses
it client-side with a DataError before anything reaches the server — see
``test_nul_in_text_is_refused_client_side``). NUL *inside JSON* (``\\u0000``) is
fuzzed: the server refuses it at jsonb input (22P05, type-level).

Each test function gets its own cloned database, seeds a little data (clients,
scripts, sessions, a run, items done / failed / in flight) so calls reach deep
code paths, and lets hypothesis run many examples on one connection, mixing
real ids, tokens, slugs and keys with random and hostile ones. Examples are
derandomized (the same examples every run, so CI is reproducible); set
``PARECER_FUZZ_RANDOM=1`` to explore with fresh random examples, and
``PARECER_FUZZ_EXAMPLES=N`` to change the number per function.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from parecer import errors

from .factories import Session, make_client, make_script, make_session, report_for
from .helpers import table_checksum

EXAMPLES = int(os.environ.get("PARECER_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("PARECER_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

#: Every public function the SQL API documents (docs/sql-api.md section 3-5).
PUBLIC = [
    "set_setting",
    "create_script_version",
    "list_scripts",
    "resolve_script",
    "activate_script",
    "eligible_sessions",
    "enqueue",
    "start_run",
    "run_summary",
    "retry_failed",
    "claim",
    "extend_lease",
    "mark_done",
    "mark_failed",
    "release",
    "next_due",
    "session_transcript",
    "prompt_for",
]

Conn = psycopg.Connection[dict[str, Any]]


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class Arg:
    name: str
    type: str  # format_type(), used as the cast: text, text[], integer, jsonb...
    has_default: bool


@dataclass(frozen=True)
class Func:
    name: str
    args: tuple[Arg, ...]
    documented: frozenset[str]  # PRxxx codes its COMMENT lists


def catalog(conn: Conn) -> dict[str, Func]:
    """The public functions' input arguments and documented errors, from pg_proc."""
    rows = conn.execute(
        """SELECT p.proname, p.pronargs, p.pronargdefaults, p.proargnames, p.proargmodes,
                  ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) t) AS types,
                  obj_description(p.oid, 'pg_proc') AS comment
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = 'parecer' AND p.proname = ANY(%s)""",
        (PUBLIC,),
    ).fetchall()
    out: dict[str, Func] = {}
    for r in rows:
        assert r["proname"] not in out, (
            f"parecer.{r['proname']} is overloaded; the fuzzer expects one signature"
        )
        modes = r["proargmodes"] or ["i"] * r["pronargs"]
        names = [n for n, m in zip(r["proargnames"], modes) if m in ("i", "b")]
        assert len(names) == r["pronargs"] == len(r["types"])
        first_default = r["pronargs"] - r["pronargdefaults"]
        args = tuple(
            Arg(n, t, i >= first_default) for i, (n, t) in enumerate(zip(names, r["types"]))
        )
        out[r["proname"]] = Func(
            r["proname"], args, frozenset(re.findall(r"PR\d{3}", r["comment"] or ""))
        )
    assert sorted(out) == sorted(PUBLIC), "a public function is missing from the catalog"
    return out


# --------------------------------------------------------------------------- seed data


@dataclass
class Pool:
    """Real values to mix with random ones (lists grow as the fuzzer creates things)."""

    slugs: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    script_ids: list[int] = field(default_factory=list)
    run_ids: list[int] = field(default_factory=list)
    sessions: dict[str, Session] = field(default_factory=dict)
    texts: dict[str, tuple[str | None, str | None]] = field(
        default_factory=dict
    )  # message_id -> body, transcription
    analysis_ids: list[uuid.UUID] = field(default_factory=list)
    tokens: list[uuid.UUID] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # The item in flight the current example works on (None: no live item this time).
    item: dict[str, Any] | None = None
    item_topics: list[str] = field(default_factory=list)


def seed(conn: Conn) -> Pool:
    p = Pool()
    qa = make_script(conn, "acme", "qa")  # active, topics cancelamento/internet
    make_script(conn, "acme", "qa", topics=["só um"], activate=False)  # v2, inactive
    make_script(conn, "acme", "dormant", activate=False)  # no active version: PR003
    beta = make_script(conn, "beta", "qa", topics=[])  # another client, no topics
    make_client(conn, "gamma")  # a client without scripts
    for _ in range(6):
        s = make_session(conn, "acme")
        p.sessions[s.session_id] = s
    for s in (
        make_session(conn, "acme", tags=["vip", "O'Brien"]),
        make_session(conn, "acme", messages=3),
        make_session(conn, "acme", ended_at=None),
        make_session(conn, "beta"),
    ):
        p.sessions[s.session_id] = s
    # An audio message with a transcription and one without text, for the transcript and grounding.
    audio_sid = next(iter(p.sessions))
    for mid, media, body, tr in (
        (f"{audio_sid}-audio", "audio", None, "quero cancelar o plano"),
        (f"{audio_sid}-empty", "text", None, None),
    ):
        conn.execute(
            "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, transcription, created_at)"
            " VALUES (%s, %s, false, %s, %s, %s, now() - interval '3 days')",
            (mid, audio_sid, media, body, tr),
        )
        p.sessions[audio_sid].message_ids.append(mid)
    for r in conn.execute(
        "SELECT message_id, body, transcription FROM parecer.source_messages"
    ).fetchall():
        p.texts[r["message_id"]] = (r["body"], r["transcription"])

    run = conn.execute(
        "SELECT * FROM parecer.start_run('acme', 'qa', max_sessions => 3)"
    ).fetchone()
    assert run is not None and run["enqueued"] == 3
    acme = [s.session_id for s in p.sessions.values() if s.client_slug == "acme"]
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", (acme, qa["script_id"]))
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s, 'v2')", (acme[:2], qa["script_id"]))
    conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s)",
        ([s.session_id for s in p.sessions.values() if s.client_slug == "beta"], beta["script_id"]),
    )

    items = conn.execute("SELECT * FROM parecer.claim('seed', 4, client_slug => 'acme')").fetchall()
    done, failed, released, live = items
    conn.execute(
        "SELECT * FROM parecer.mark_done(%s, %s, %s::jsonb, 'gpt-x', %s)",
        (
            done["analysis_id"],
            done["lease_token"],
            json.dumps(report_for(p.sessions[done["session_id"]])),
            "0" * 64,
        ),
    )
    conn.execute(
        "SELECT * FROM parecer.mark_failed(%s, %s, 'provider said 400: bad request\\', false)",
        (failed["analysis_id"], failed["lease_token"]),
    )
    conn.execute(
        "SELECT * FROM parecer.release(%s, %s, 30)",
        (released["analysis_id"], released["lease_token"]),
    )
    assert live["lease_token"] is not None

    p.slugs = ["acme", "beta", "gamma"]
    p.keys = ["qa", "dormant"]
    p.script_ids = [
        r["script_id"] for r in conn.execute("SELECT script_id FROM parecer.scripts").fetchall()
    ]
    p.run_ids = [run["run_id"]]
    p.analysis_ids = [
        r["analysis_id"]
        for r in conn.execute("SELECT analysis_id FROM parecer.analyses").fetchall()
    ]
    p.tokens = [i["lease_token"] for i in items]
    p.settings = [r["name"] for r in conn.execute("SELECT name FROM parecer.settings").fetchall()]
    p.topics = ["cancelamento", "internet", "só um"]
    p.tags = ["vip", "O'Brien"]
    p.errors = ["provider said 400: bad request\\", "100% _done_ \\\\ 'quoted'", "timeout"]
    return p


def live_item(conn: Conn, pool: Pool) -> dict[str, Any]:
    """An item in flight with a valid lease (claiming or resetting one when needed)."""
    cols = "analysis_id, lease_token, session_id, script_id"
    row = conn.execute(
        f"SELECT {cols} FROM parecer.analyses WHERE status = 'processing'"
        " AND lease_expires_at > now() + interval '1 minute' ORDER BY random() LIMIT 1"
    ).fetchone()
    if row is None:
        row = conn.execute(
            f"SELECT {cols} FROM parecer.claim('fuzz', 1, client_slug => 'acme')"
        ).fetchone()
    if row is None:
        conn.execute(
            "SELECT * FROM parecer.enqueue(%s, %s, 'v1', true)",
            (list(pool.sessions)[:3], pool.script_ids[0]),
        )
        row = conn.execute(
            f"SELECT {cols} FROM parecer.claim('fuzz', 1, client_slug => 'acme')"
        ).fetchone()
    assert row is not None
    pool.tokens.append(row["lease_token"])
    if row["analysis_id"] not in pool.analysis_ids:
        pool.analysis_ids.append(row["analysis_id"])
    return row


def terminal_failure(conn: Conn, pool: Pool) -> None:
    """Make sure a terminal failure exists, so retry_failed's filters (ILIKE included) meet a row."""
    if conn.execute("SELECT FROM parecer.analyses WHERE status = 'failed' LIMIT 1").fetchone():
        return
    item = live_item(conn, pool)
    conn.execute(
        "SELECT * FROM parecer.mark_failed(%s, %s, %s, false)",
        (
            item["analysis_id"],
            item["lease_token"],
            pool.errors[len(pool.tokens) % len(pool.errors)],
        ),
    )


# --------------------------------------------------------------------------- strategies
#
# Strategies are built once per test and read the pool lazily (an index modulo the
# current length), so that the shape of what hypothesis draws never depends on the
# database state: hypothesis replays and shrinks examples, and must see the same
# draws each time.


class Omit:
    """Leave a defaulted argument out of the call."""


OMIT = Omit()


class JNull:
    """JSON null (as opposed to SQL NULL)."""


JNULL = JNull()


@dataclass(frozen=True)
class RawJson:
    """A JSON text passed as is (malformed on purpose)."""

    text: str


CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
HOSTILE = [
    "",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\u00a0",
    "\u2003",
    "'",
    "''",
    '"',
    "\\",
    "\\\\",
    "%",
    "_",
    "%_%",
    "a%",
    "a'b",
    'a"b',
    "a\\",
    "😀",
    "👨‍👩‍👧‍👦",
    "\u202eetisrever",
    "e\u0301",
    "ᄀᄀᄀ",
    "İ",
    "ß",
    "ação",
    "ACME",
    " acme",
    "acme ",
    "Acme",
    "NULL",
    "null",
    "true",
    "1",
    "-1",
    "$$",
    "$1",
    "%s",
    "%(x)s",
    "{}",
    "{a,b}",
    "[0:1]={a,b}",
    "'; DROP TABLE parecer.analyses; --",
    "a" * 64,
    "a" * 65,
    "a" * 201,
    "x" * 5000,
    "ñ" * 100_001,
    "qa",
    "v1",
    "v1 ",
    "V1",
    "pt-BR",
    "en",
    "es",
    "PT-BR",
    "gpt-4.1-mini",
    "-model",
    "model name",
    "x" * 100,
]
INT_EDGES = [
    0,
    1,
    -1,
    2,
    3,
    4,
    5,
    19,
    20,
    100,
    1000,
    1001,
    86400,
    86401,
    1_000_000,
    1_000_001,
    2**31 - 1,
    2**31,
    -(2**31),
    -(2**31) - 1,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    10**40,
]
BOOL = st.one_of(st.none(), st.booleans())
ANY_TEXT = st.one_of(st.none(), st.sampled_from(HOSTILE), st.text(CHARS, max_size=40))
ANY_INT = st.one_of(st.none(), st.sampled_from(INT_EDGES), st.integers(-10, 1100), st.integers())
TS = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(1, 1, 2), timezones=st.just(timezone.utc)),
    st.sampled_from(
        [
            "infinity",
            "-infinity",
            "epoch",
            "now",
            "today",
            "yesterday",
            "4713-01-01 BC",
            "294276-12-31",
            "not a date",
            "2026-02-30",
        ]
    ),
    st.integers(-5, 5).map(lambda d: datetime.now(timezone.utc) + timedelta(days=d)),
)
NEAR_TS = st.one_of(
    st.none(), st.integers(-10, 1).map(lambda d: datetime.now(timezone.utc) + timedelta(days=d))
)
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(CHARS, max_size=20),
    st.sampled_from(["\x00", "a\x00b"]),
)
JSON_ANY = st.recursive(
    JSON_LEAF,
    lambda c: st.one_of(
        st.lists(c, max_size=5), st.dictionaries(st.text(CHARS, max_size=10), c, max_size=5)
    ),
    max_leaves=25,
)
MALFORMED_JSON = st.sampled_from(
    [
        "",
        "{",
        "}",
        "{'mode': 'none'}",
        '{"mode":}',
        "[1,]",
        "NaN",
        "undefined",
        '{"mode":"none"',
        "'",
        "\\",
        '{"a": "\\ud800"}',
        "1e999999",
        '{"mode": "none", "mode": "ignore"}',
        '{"a": 1e400}',
        "[" * 10_000 + "]" * 10_000,
        '{"mode": ' + "[" * 5_000 + "]" * 5_000 + "}",
    ]
).map(RawJson)


def nested(depth: int, leaf: Any) -> Any:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"mode": leaf}
    return leaf


DEEP = st.builds(nested, st.integers(1, 400), JSON_ANY)
ANY_JSON = st.one_of(st.none(), st.just(JNULL), JSON_ANY, DEEP, MALFORMED_JSON)
ANY_UUID = st.one_of(
    st.none(),
    st.uuids(),
    st.just(uuid.UUID(int=0)),
    st.sampled_from(["abc", "", "00000000-0000-0000-0000-00000000000g"]),
)


def pick(get: Any) -> st.SearchStrategy[Any]:
    """One element of the list get() returns at draw time (None when empty)."""

    def choose(i: int) -> Any:
        lst = get()
        return lst[i % len(lst)] if lst else None

    return st.integers(0, 2**20).map(choose)


def picks(get: Any, max_size: int = 8) -> st.SearchStrategy[list[Any]]:
    return st.lists(pick(get), max_size=max_size)


def array_st(elem: st.SearchStrategy[Any], real: Any) -> st.SearchStrategy[Any]:
    """text[] arguments: NULL, empty, with NULLs, 2-D, ragged, huge, odd literals."""
    base = st.one_of(elem, pick(real))
    return st.one_of(
        st.none(),
        st.just([]),
        st.lists(base, max_size=8),
        st.lists(st.one_of(st.none(), base), max_size=5),
        st.lists(st.lists(base, min_size=2, max_size=2), min_size=1, max_size=3),  # 2-D
        st.lists(st.lists(base, max_size=3), min_size=2, max_size=3),  # ragged: type-level 22P02
        st.integers(1000, 5000).map(lambda n: [f"x{i}" for i in range(n)]),  # huge
        st.tuples(st.integers(1000, 3000), pick(real)).map(
            lambda t: [t[1]] * t[0]
        ),  # huge, one real id repeated
        st.sampled_from(["[0:1]={a,b}", "{{a}}", "{a,NULL}", '{"a\\"b"}', "{", "x"]),  # literals
    )


def tag_filter_st(pool: Pool) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    tag = st.one_of(pick(lambda: pool.tags), st.text(CHARS, min_size=1, max_size=10))
    valid = st.one_of(
        st.sampled_from([{"mode": "none"}, {"mode": "ignore"}]),
        st.builds(
            lambda m, t: {"mode": m, "tags": t},
            st.sampled_from(["any_of", "all_of", "none_of"]),
            st.lists(tag, min_size=1, max_size=4),
        ),
    )
    tags = st.one_of(st.sampled_from(HOSTILE), st.text(CHARS, max_size=30), pick(lambda: pool.tags))
    mode = st.sampled_from(
        ["none", "ignore", "any_of", "all_of", "none_of", "NONE", "", "all", None]
    )
    hostile = st.one_of(
        ANY_JSON,
        st.builds(lambda m: {"mode": m}, mode),
        st.builds(lambda m, t: {"mode": m, "tags": t}, mode, st.lists(tags, max_size=6)),
        st.builds(lambda m, t: {"mode": m, "tags": t}, mode, JSON_ANY),
        st.builds(
            lambda m, n: {"mode": m, "tags": [f"t{i}" for i in range(n)]},
            mode,
            st.sampled_from([999, 1000, 1001, 5000]),
        ),
        st.builds(lambda m, k, v: {"mode": m, k: v}, mode, st.text(CHARS, max_size=5), JSON_ANY),
    )
    return valid, hostile


EXCERPTS = [
    "\t",
    "\n",
    "\r\n \t",
    "\u2003",
    "\u00a0",
    " ",
    "",
    "internet caiu",
    "INTERNET   CAIU",
    "  internet caiu  ",
    "Olá",
    "OLÁ",
    "mensagem 1",
    "quero cancelar",
    "cancelar o plano",
    "x" * 501,
    "internet caiu de novo, mensagem 0" * 20,
    "Bom dia",
    "áudio",
    "[mensagem sem texto]",
    "[msg",
]


def report_st(
    pool: Pool,
) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    """Reports for pool.item: valid and grounded, mutated, fabricated evidence, random JSON."""

    def session() -> Session:
        if pool.item is not None and pool.item["session_id"] in pool.sessions:
            return pool.sessions[pool.item["session_id"]]
        return next(iter(pool.sessions.values()))

    def base() -> dict[str, Any]:
        return report_for(session(), pool.item_topics)

    def grounded(t: tuple[int, int, int]) -> dict[str, str]:
        """A real excerpt of a message of the session (a substring of its body or transcription)."""
        ids = [m for m in session().message_ids if any(pool.texts.get(m, (None, None)))]
        mid = ids[t[0] % len(ids)]
        text = next(x for x in pool.texts[mid] if x)
        i = t[1] % len(text)
        j = min(len(text), i + 1 + t[2] % 40)
        return {"message_id": mid, "excerpt": text[i:j] if text[i:j].strip() else text}

    def fabricated(t: tuple[int, int, Any, str]) -> Any:
        kind, i, x, odd = t
        own = session().message_ids
        others = [m for m in pool.texts if m not in own and any(pool.texts[m])]
        text = x if isinstance(x, str) else "internet caiu"
        if kind == 0:  # a message of this session, an odd or blank excerpt
            return {"message_id": own[i % len(own)], "excerpt": odd}
        if kind == 1:  # a message of this session, random text
            return {"message_id": own[i % len(own)], "excerpt": text}
        if kind == 2:  # a real excerpt of a message of *another* session
            mid = others[i % len(others)]
            return {"message_id": mid, "excerpt": next(x for x in pool.texts[mid] if x)[:30]}
        # an invented message id with a plausible excerpt
        return {"message_id": text, "excerpt": odd}

    good_ev = st.tuples(st.integers(0, 2**16), st.integers(0, 2**16), st.integers(0, 2**16)).map(
        grounded
    )
    fab_ev = st.tuples(
        st.sampled_from([0, 0, 1, 2, 3]),
        st.integers(0, 2**16),
        st.one_of(st.none(), st.text(CHARS, max_size=20)),
        st.sampled_from(EXCERPTS),
    ).map(fabricated)
    bad_ev = st.one_of(
        fab_ev,
        fab_ev,
        fab_ev,
        st.integers(0, 2**16).map(
            lambda i: {"message_id": session().message_ids[i % len(session().message_ids)]}
        ),
        st.tuples(good_ev, st.text(CHARS, min_size=1, max_size=5)).map(
            lambda t: {**t[0], t[1] + "_": 1}
        ),
        JSON_ANY,
    )
    # Where a grounded evidence list may go.
    ev_slots = [
        ("outcome", "evidence"),
        ("sentiment", "evidence"),
        ("topics", 0, "evidence"),
        ("topics", 1, "evidence"),
    ]

    def put(doc: Any, path: tuple[Any, ...], op: str, value: Any) -> Any:
        if not path:
            return value if op == "replace" else doc
        parent = doc
        try:
            for k in path[:-1]:
                parent = parent[k]
            last = path[-1]
            if op == "delete":
                del parent[last]
            elif op == "add" and isinstance(parent, dict):
                parent[f"{last}_extra"] = value
            else:
                parent[last] = value
        except (KeyError, IndexError, TypeError):
            pass
        return doc

    def with_evidence(t: tuple[list[tuple[int, list[Any]]], list[tuple[int, str]]]) -> Any:
        doc: Any = base()
        slots, flags = t
        for slot, evs in slots:
            doc = put(doc, ev_slots[slot % len(ev_slots)], "replace", evs)
        doc["flags"] = [{"flag": f, "evidence": []} for _, f in flags]
        return doc

    flag = st.sampled_from(
        [
            "churn_risk",
            "complaint",
            "legal_threat",
            "agent_error",
            "slow_response",
            "sensitive_data",
            "abusive_language",
            "human_requested",
        ]
    )
    valid = st.one_of(
        st.just(None).map(lambda _: base()),
        st.tuples(
            st.lists(st.tuples(st.integers(0, 3), st.lists(good_ev, max_size=3)), max_size=4),
            st.lists(st.tuples(st.just(0), flag), max_size=3),
        ).map(with_evidence),
    )

    paths: list[tuple[Any, ...]] = [
        (),
        ("schema_version",),
        ("summary",),
        ("outcome",),
        ("outcome", "status"),
        ("outcome", "evidence"),
        ("sentiment",),
        ("sentiment", "start"),
        ("sentiment", "end"),
        ("sentiment", "evidence"),
        ("topics",),
        ("topics", 0),
        ("topics", 0, "topic"),
        ("topics", 0, "confidence"),
        ("topics", 0, "present"),
        ("topics", 0, "evidence"),
        ("topics", 1, "evidence"),
        ("flags",),
        ("insufficient_context",),
        ("next_action",),
        ("flags", 0, "evidence"),
        ("flags", 0, "flag"),
    ]
    evidence = st.one_of(
        st.lists(st.one_of(bad_ev, good_ev), max_size=4),
        st.integers(200, 2000).map(
            lambda n: [{"message_id": session().message_ids[0], "excerpt": "internet caiu"}] * n
        ),
    )

    def topic_variants(k: int) -> Any:
        ts = pool.item_topics
        entries: list[dict[str, Any]] = [
            {"topic": t, "evidence": [], "present": False, "confidence": 0.5} for t in ts
        ]
        return [
            entries * 2,
            list(reversed(entries)),
            [{**e, "topic": e["topic"].upper()} for e in entries],
            entries[:-1],
            entries + [{"topic": "extra", "evidence": [], "present": True, "confidence": 1}],
            [{**e, "topic": " " + e["topic"]} for e in entries],
        ][k % 6]

    values: st.SearchStrategy[Any] = st.one_of(
        JSON_ANY,
        evidence,
        st.integers(0, 5).map(topic_variants),
        st.sampled_from(
            [
                -0.1,
                1.0000001,
                1e308,
                -0.0,
                0,
                1,
                10**40,
                "0.5",
                True,
                None,
                "resolved",
                "positive",
                "bogus",
                "parecer.report.v2",
                [],
                {},
                [{"evidence": [], "flag": "complaint"}],
                [{"evidence": [], "flag": "nope"}],
            ]
        ),
    )
    ops = st.lists(
        st.tuples(
            st.integers(0, len(paths) - 1), st.sampled_from(["replace", "delete", "add"]), values
        ),
        min_size=1,
        max_size=3,
    )

    def mutate(t: tuple[Any, list[tuple[int, str, Any]]]) -> Any:
        doc, opl = t
        for path_i, op, value in opl:
            doc = put(doc, paths[path_i], op, json.loads(json.dumps(value)))
        return doc

    def fabricate(t: tuple[Any, int, list[Any], Any, int]) -> Any:
        doc, slot, evs, fab, at = t
        evs.insert(at % (len(evs) + 1), fab)
        return put(doc, ev_slots[slot % len(ev_slots)], "replace", evs)

    # A well-formed report with exactly one fabricated (or malformed) evidence among grounded ones.
    fabricated_doc = st.tuples(
        valid,
        st.integers(0, 3),
        st.lists(good_ev, max_size=2),
        st.one_of(fab_ev, bad_ev),
        st.integers(0, 2),
    ).map(fabricate)
    hostile = st.one_of(
        fabricated_doc,
        fabricated_doc,
        st.tuples(valid, ops).map(mutate),
        st.tuples(valid, ops).map(mutate),
        ANY_JSON,
    )
    return valid, hostile, fabricated_doc


USAGE_VALID = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 10**5)},
        optional={"cached_input_tokens": st.integers(0, 1000)},
    ),
)
USAGE_HOSTILE = st.one_of(
    ANY_JSON,
    st.fixed_dictionaries(
        {},
        optional={
            "input_tokens": st.one_of(
                st.integers(),
                st.floats(allow_nan=False, allow_infinity=False),
                st.text(max_size=5),
                st.none(),
                st.just([1]),
            ),
            "cached_input_tokens": st.one_of(st.integers(-10, 10**6), st.none(), st.just(2**70)),
            "output_tokens": st.one_of(
                st.integers(0, 10**6), st.sampled_from([-1, 2**63, "12", 1.5, 1e300])
            ),
            "model": st.text(CHARS, max_size=10),
        },
    ),
)

SETTING_VALID = st.sampled_from(
    [
        None,
        "1",
        "2",
        "4",
        "5",
        "10",
        "100",
        "300",
        "500",
        "1000",
        "60",
        "86400",
        "{1 minute}",
        '{"1 minute","5 minutes"}',
        "{00:00:30,00:02:00}",
        "{1 second,1 hour,2 days}",
    ]
)


def _interval_array(t: tuple[int, list[tuple[int, str]], int]) -> str:
    lower, elems, dims = t
    body = ",".join(f'"{n} {u}"' for n, u in elems)
    lit = "{" + body + "}"
    if dims == 2:
        lit = "{" + lit + "," + lit + "}"
    elif dims == 3:
        lit = "{" + lit + "}"
    if lower != 1 and elems and dims == 1:
        lit = f"[{lower}:{lower + len(elems) - 1}]=" + lit
    return lit


NUMBER_TEXT = st.tuples(
    st.integers(-5, 1_000_100),
    st.sampled_from(["{}", "{}.0", "{}.00", "{}e0", " {} ", "+{}", "{}.5", "{}E1", "0{}", "{}."]),
).map(lambda t: t[1].format(t[0]))
INTERVALS_TEXT = st.tuples(
    st.sampled_from([1, 1, 0, 2, -3]),
    st.lists(
        st.tuples(
            st.integers(-2, 40),
            st.sampled_from(["seconds", "minutes", "days", "mons", "microseconds"]),
        ),
        max_size=4,
    ),
    st.sampled_from([1, 1, 2, 3]),
).map(_interval_array)
SETTING_HOSTILE = st.one_of(
    NUMBER_TEXT,
    NUMBER_TEXT,
    INTERVALS_TEXT,
    INTERVALS_TEXT,
    ANY_TEXT,
    st.integers().map(str),
    st.sampled_from(
        [
            "0",
            "-1",
            "4.0",
            "4.00",
            "4.5",
            "1e1",
            "1E2",
            " 7 ",
            "+3",
            "0x10",
            "NaN",
            "Infinity",
            "-Infinity",
            "1e100000",
            "1000001",
            "86401",
            "2.5",
            "1e-5",
            "{{1 minute},{2 minutes}}",
            "{{1 minute}}",
            "[0:0]={1 minute}",
            "[2:3]={1 minute,2 minutes}",
            "[-5:-4]={1 s,2 s}",
            "{}",
            "{NULL}",
            "{-1 minute}",
            "{0 seconds}",
            "{31 days}",
            "{30 days}",
            "{infinity}",
            "{-infinity}",
            "{1 mon -29 days}",
            "{1 mon -30 days}",
            "{1 microsecond}",
            '{"1 minute",NULL}',
            "{1 minute",
            "1 minute",
            "{" + ",".join(["1 second"] * 101) + "}",
            "{" + ",".join(["1 second"] * 100) + "}",
            "UTC",
            "America/Sao_Paulo",
            "Mars/Olympus",
            "utc",
        ]
    ),
)

KEY = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True)
TAG = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True)
HEX64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
TOPIC = st.text(CHARS, min_size=1, max_size=20).filter(lambda t: t.strip() != "")


def strategies(
    f: Func, pool: Pool
) -> dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]:
    """(valid, hostile) strategies for each argument of f."""
    item_id = pick(lambda: [pool.item["analysis_id"]] if pool.item else pool.analysis_ids)
    item_token = pick(lambda: [pool.item["lease_token"]] if pool.item else pool.tokens)
    sessions = lambda: list(pool.sessions)  # noqa: E731
    named: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
        "client_slug": (st.sampled_from(["acme", "acme", "acme", "beta", "gamma"]), ANY_TEXT),
        "script_key": (st.one_of(st.sampled_from(["qa", "qa", "dormant"]), KEY), ANY_TEXT),
        "script_text": (
            st.text(CHARS, min_size=1, max_size=200).filter(lambda t: t.strip() != ""),
            st.one_of(ANY_TEXT, st.sampled_from(["z" * 100_000, "z" * 100_001])),
        ),
        "topics": (
            st.one_of(
                st.none(),
                st.lists(TOPIC, max_size=5, unique_by=str.strip),
                picks(lambda: pool.topics, 3),
            ),
            st.one_of(
                array_st(st.one_of(st.sampled_from(HOSTILE), TOPIC), lambda: pool.topics),
                st.integers(45, 55).map(lambda n: [f"t{i}" for i in range(n)]),
                st.lists(st.sampled_from(["a", " a", "a ", "b"]), min_size=2, max_size=4),
            ),
        ),
        "language": (st.sampled_from(["pt-BR", "en", "es"]), ANY_TEXT),
        "script_version": (st.integers(1, 3), ANY_INT),
        "script_id": (pick(lambda: pool.script_ids), ANY_INT),
        "run_id": (st.one_of(st.none(), pick(lambda: pool.run_ids)), ANY_INT),
        "tag_filter": tag_filter_st(pool),
        "session_ids": (
            st.lists(pick(sessions), max_size=8),
            array_st(st.one_of(st.sampled_from(HOSTILE), st.text(CHARS, max_size=10)), sessions),
        ),
        "session_id": (pick(sessions), ANY_TEXT),
        "analysis_version_tag": (
            st.one_of(st.sampled_from(["v1", "v1", "v2"]), TAG),
            st.one_of(ANY_TEXT, st.sampled_from(["a" * 32, "a" * 33, "-v", "v 1"])),
        ),
        "analysis_id": (item_id, st.one_of(ANY_UUID, pick(lambda: pool.analysis_ids))),
        "lease_token": (item_token, st.one_of(ANY_UUID, pick(lambda: pool.tokens))),
        "report": report_st(pool)[:2],
        "usage": (USAGE_VALID, USAGE_HOSTILE),
        "prompt_hash": (
            HEX64,
            st.one_of(ANY_TEXT, st.sampled_from(["A" * 64, "0" * 63, "0" * 65, "g" * 64])),
        ),
        "error_like": (
            st.one_of(
                st.none(),
                st.sampled_from(["%", "%bad%", "%400%", "\\%", "%\\\\", "_%", "PROVIDER%"]),
            ),
            st.one_of(ANY_TEXT, st.sampled_from(["%\\", "\\", "abc\\", "%\\\\\\", "_\\"])),
        ),
        "name": (pick(lambda: pool.settings), ANY_TEXT),
        "value": (SETTING_VALID, SETTING_HOSTILE),
        "worker": (
            st.sampled_from(["runner-1", "host:4242", "w" * 200]),
            st.one_of(ANY_TEXT, st.just("w" * 201)),
        ),
        "error": (st.text(CHARS, max_size=50), ANY_TEXT),
        "reason": (st.one_of(st.none(), st.text(CHARS, max_size=50)), ANY_TEXT),
        "min_messages": (st.integers(1, 30), ANY_INT),
        "max_items": (st.integers(1, 10), ANY_INT),
        "max_sessions": (st.integers(1, 20), ANY_INT),
        "lease_seconds": (st.one_of(st.none(), st.integers(5, 86400)), ANY_INT),
        "delay_seconds": (st.one_of(st.none(), st.integers(0, 600)), ANY_INT),
        "ended_after": (NEAR_TS, TS),
        "ended_before": (NEAR_TS, TS),
    }
    if f.name == "create_script_version":
        named["model"] = (
            st.sampled_from([None, "gpt-4.1-mini", "o4:mini/2025-01", "A" * 100]),
            st.one_of(ANY_TEXT, st.just("A" * 101)),
        )
    else:
        named["model"] = (st.sampled_from(["gpt-4.1-mini", "m"]), ANY_TEXT)
    by_type: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
        "boolean": (st.booleans(), BOOL),
        "integer": (st.integers(0, 100), ANY_INT),
        "bigint": (st.integers(0, 100), ANY_INT),
        "timestamp with time zone": (NEAR_TS, TS),
        "jsonb": (JSON_ANY, ANY_JSON),
        "uuid": (pick(lambda: pool.analysis_ids), ANY_UUID),
        "text[]": (
            st.lists(st.text(CHARS, max_size=10), max_size=5),
            array_st(st.text(CHARS, max_size=10), lambda: []),
        ),
        "text": (st.text(CHARS, max_size=20), ANY_TEXT),
    }
    out = {}
    for a in f.args:
        out[a.name] = named.get(a.name) or by_type.get(a.type) or (ANY_TEXT, ANY_TEXT)
    return out


def to_param(t: str, v: Any) -> Any:
    if v is None:
        return None
    if t in ("jsonb", "json"):
        if v is JNULL:
            return "null"
        if isinstance(v, RawJson):
            return v.text
        return json.dumps(v, ensure_ascii=False)
    return v


# --------------------------------------------------------------------------- the property


@dataclass
class Outcome:
    ok: bool
    rows: list[dict[str, Any]]
    sqlstate: str | None = None


def call(conn: Conn, f: Func, values: dict[str, Any]) -> Outcome:
    """Call f with named arguments, each cast to its declared type; check the error contract."""
    types = {a.name: a.type for a in f.args}
    names = [n for n in values if not isinstance(values[n], Omit)]
    params = {n: to_param(types[n], values[n]) for n in names}
    sql = (
        f"SELECT * FROM parecer.{f.name}("
        + ", ".join(f'"{n}" => %({n})s::{types[n]}' for n in names)
        + ")"
    )
    note(f"{f.name}({ {n: _short(params[n]) for n in names} })")
    before = table_checksum(conn)
    try:
        rows = conn.execute(sql, params).fetchall()
    except psycopg.Error as exc:
        code = errors.sqlstate(exc)
        msg = f"{f.name} raised {code}: {exc} (args { ({n: _short(params[n]) for n in names}) })"
        assert code is not None, "client-side error: " + msg
        assert table_checksum(conn) == before, "a failing call changed parecer's tables: " + msg
        if code in errors.CODES:
            assert code in f.documented, (
                f"{code} is not in {f.name}'s documented errors {sorted(f.documented)}: {msg}"
            )
        elif code.startswith("22"):
            assert type_level_error(conn, names, types, params) == code, (
                "class 22 raised inside the function: " + msg
            )
        else:
            raise AssertionError("undocumented SQLSTATE: " + msg) from exc
        return Outcome(False, [], code)
    return Outcome(True, rows)


def type_level_error(
    conn: Conn, names: list[str], types: dict[str, str], params: dict[str, Any]
) -> str | None:
    """The SQLSTATE the bare argument casts raise, if any."""
    if not names:
        return None
    try:
        conn.execute(
            "SELECT " + ", ".join(f"%({n})s::{types[n]}" for n in names), params
        ).fetchall()
    except psycopg.Error as exc:
        return errors.sqlstate(exc)
    return None


def _short(v: Any) -> Any:
    if isinstance(v, str) and len(v) > 80:
        return v[:60] + f"...<{len(v)} chars>"
    if isinstance(v, list) and len(v) > 8:
        return v[:4] + [f"...<{len(v)} items>"]
    return v


RICH = {"report", "value", "tag_filter", "topics", "session_ids", "usage", "error_like"}


def draw_args(
    data: st.DataObject,
    f: Func,
    strats: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]],
) -> dict[str, Any]:
    """Arguments for one call: all valid (20%), exactly one hostile (50%), or each valid or hostile at random.

    Mostly-valid calls get past the early checks, so the one hostile argument
    reaches the check (or the absence of one) deep in the function.
    """
    mode = data.draw(st.integers(0, 9), label="mode")
    # Arguments with a rich structure of their own are the hostile one more often.
    weighted = [i for i, a in enumerate(f.args) for _ in range(4 if a.name in RICH else 1)]
    hostile_at = data.draw(st.sampled_from(weighted), label="hostile argument") if f.args else -1
    values: dict[str, Any] = {}
    for i, a in enumerate(f.args):
        valid, hostile = strats[a.name]
        bad = (
            data.draw(st.booleans(), label=f"{a.name} hostile")
            if mode >= 7
            else (mode >= 2 and i == hostile_at)
        )
        if (
            a.has_default
            and not bad
            and data.draw(st.integers(0, 6), label=f"{a.name} omitted") == 0
        ):
            values[a.name] = OMIT
        else:
            values[a.name] = data.draw(hostile if bad else valid, label=a.name)
    return values


# --------------------------------------------------------------------------- oracles for successful calls


def _norm(s: str | None) -> str | None:
    return None if s is None else " ".join(s.split()).lower()


def grounded_py(conn: Conn, report: Any, session_id: str) -> None:
    """An accepted report: every evidence cites a message of the session and a non-blank excerpt found in it."""
    msgs = {
        r["message_id"]: r
        for r in conn.execute(
            "SELECT message_id, body, transcription FROM parecer.session_transcript(%s)",
            (session_id,),
        ).fetchall()
    }
    evs = list(report["outcome"]["evidence"]) + list(report["sentiment"]["evidence"])
    for t in report["topics"]:
        evs += t["evidence"]
    for fl in report["flags"]:
        evs += fl["evidence"]
    for ev in evs:
        m = msgs.get(ev["message_id"])
        assert m is not None, f"accepted evidence cites a message not in the session: {ev}"
        ex = _norm(ev["excerpt"])
        assert ex, f"accepted evidence with a blank excerpt: {ev!r}"
        assert any(ex in (_norm(m[c]) or "") for c in ("body", "transcription")), (
            f"accepted ungrounded evidence {ev!r}"
        )


def settings_usable(conn: Conn) -> None:
    """Whatever set_setting accepted, every reader of the settings still works."""
    for r in conn.execute("SELECT name FROM parecer._settings WHERE kind = 'integer'").fetchall():
        conn.execute("SELECT parecer._setting_int(%s)", (r["name"],))
    for k in range(1, 8):
        b = conn.execute("SELECT parecer._backoff(%s) AS b", (k,)).fetchone()
        assert b is not None and b["b"] is not None and b["b"] > timedelta(0), (
            f"_backoff({k}) = {b}"
        )
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT * FROM parecer.claim('settings-oracle', 5)").fetchall()
        row = conn.execute(
            "SELECT analysis_id, lease_token FROM parecer.analyses WHERE status = 'processing'"
            " AND lease_expires_at > now() LIMIT 1"
        ).fetchone()
        if row:
            out = conn.execute(
                "SELECT * FROM parecer.mark_failed(%s, %s, 'oracle')",
                (row["analysis_id"], row["lease_token"]),
            ).fetchone()
            mx = conn.execute("SELECT parecer._setting_int('max_attempts') AS m").fetchone()
            assert out is not None and mx is not None
            assert (out["next_retry_at"] is None) == (out["retry_count"] >= mx["m"]), out


def check_success(
    conn: Conn, fname: str, values: dict[str, Any], out: Outcome, before: dict[str, Any]
) -> None:
    v = {k: (None if isinstance(x, Omit) else x) for k, x in values.items()}
    if fname == "set_setting":
        settings_usable(conn)
    elif fname == "create_script_version":
        [row] = out.rows
        assert row["version"] == before.get("max_version", 0) + 1
        if v["activate"]:
            act = conn.execute(
                "SELECT version FROM parecer.scripts WHERE client_slug = %s AND script_key = %s"
                " AND is_active",
                (row["client_slug"], row["script_key"]),
            ).fetchall()
            assert [a["version"] for a in act] == [row["version"]]
    elif fname == "enqueue":
        [row] = out.rows
        assert row["enqueued"] + row["reset"] + row["skipped"] == len(set(v["session_ids"] or []))
    elif fname == "claim":
        for r in out.rows:
            a = conn.execute(
                "SELECT status, lease_token, claims FROM parecer.analyses WHERE analysis_id = %s",
                (r["analysis_id"],),
            ).fetchone()
            assert a == {
                "status": "processing",
                "lease_token": r["lease_token"],
                "claims": r["attempt"],
            }
    elif fname == "mark_done":
        a = conn.execute(
            "SELECT status, session_id, report FROM parecer.analyses WHERE analysis_id = %s",
            (v["analysis_id"],),
        ).fetchone()
        assert a is not None and a["status"] == "done"
        grounded_py(conn, a["report"], a["session_id"])
    elif fname == "mark_failed":
        [row] = out.rows
        assert row["retry_count"] == before["retry_count"] + 1
        mx = conn.execute("SELECT parecer._setting_int('max_attempts') AS m").fetchone()
        assert mx is not None
        terminal = v["retryable"] is False or row["retry_count"] >= mx["m"]
        assert row["status"] == ("failed" if terminal else "pending"), row
        assert (row["next_retry_at"] is None) == terminal, row
    elif fname == "release":
        [row] = out.rows
        assert row["retry_count"] == before["retry_count"]
        mx = conn.execute("SELECT parecer._setting_int('max_attempts') AS m").fetchone()
        assert mx is not None
        assert row["status"] == ("failed" if row["retry_count"] >= mx["m"] else "pending")
    elif fname == "start_run":
        [row] = out.rows
        assert row["would_enqueue"] <= row["eligible"]
        if row["dry_run"]:
            assert row["run_id"] is None and table_checksum(conn) == before["checksum"]
        else:
            assert row["enqueued"] + row["reset"] <= row["would_enqueue"]
    elif fname == "retry_failed":
        assert out.rows[0]["retry_failed"] >= 0


def state_before(conn: Conn, fname: str, values: dict[str, Any]) -> dict[str, Any]:
    v = {k: (None if isinstance(x, Omit) else x) for k, x in values.items()}
    if (
        fname == "create_script_version"
        and isinstance(v.get("client_slug"), str)
        and isinstance(v.get("script_key"), str)
    ):
        r = conn.execute(
            "SELECT COALESCE(max(s.version), 0) AS m FROM parecer.scripts s JOIN parecer.source_clients c"
            " ON c.client_id = s.client_id WHERE c.slug = %s AND s.script_key = %s",
            (v["client_slug"], v["script_key"]),
        ).fetchone()
        return {"max_version": r["m"] if r else 0}
    if fname in ("mark_failed", "release") and isinstance(v.get("analysis_id"), uuid.UUID):
        r = conn.execute(
            "SELECT retry_count FROM parecer.analyses WHERE analysis_id = %s", (v["analysis_id"],)
        ).fetchone()
        return {"retry_count": r["retry_count"] if r else None}
    if fname == "start_run":
        return {"checksum": table_checksum(conn)}
    return {}


# --------------------------------------------------------------------------- the tests

LEASED = {"extend_lease", "mark_done", "mark_failed", "release", "prompt_for"}


@pytest.mark.parametrize("fname", PUBLIC)
def test_fuzz_public_function(conn: Conn, fname: str) -> None:
    f = catalog(conn)[fname]
    pool = seed(conn)
    strats = strategies(f, pool)
    seen: dict[str, int] = {}

    @FUZZ
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        pool.item, pool.item_topics = None, ["cancelamento", "internet"]
        if fname in LEASED and data.draw(st.integers(0, 9), label="live item") < 8:
            pool.item = live_item(conn, pool)
            r = conn.execute(
                "SELECT topics FROM parecer.scripts WHERE script_id = %s", (pool.item["script_id"],)
            ).fetchone()
            pool.item_topics = r["topics"] if r else pool.item_topics
        if fname == "retry_failed":
            terminal_failure(conn, pool)
        values = draw_args(data, f, strats)
        before = state_before(conn, fname, values)
        out = call(conn, f, values)
        key = "ok" if out.ok else str(out.sqlstate)
        seen[key] = seen.get(key, 0) + 1
        if out.ok:
            check_success(conn, fname, values, out, before)
            remember(conn, pool, fname, out)

    run()
    print(f"\n{fname}: outcomes {dict(sorted(seen.items()))}")
    # The fuzzer must reach past argument checking: most functions succeed some of the time.
    assert seen.get("ok", 0) > 0 or fname in NEVER_OK, f"{fname} never succeeded: {seen}"


NEVER_OK: set[str] = set()


def remember(conn: Conn, pool: Pool, fname: str, out: Outcome) -> None:
    """Feed what successful calls created back into the pool."""
    if fname == "create_script_version":
        pool.script_ids.append(out.rows[0]["script_id"])
        pool.keys.append(out.rows[0]["script_key"])
    elif fname == "start_run" and out.rows[0]["run_id"] is not None:
        pool.run_ids.append(out.rows[0]["run_id"])
    elif fname == "claim":
        for r in out.rows:
            pool.tokens.append(r["lease_token"])
            pool.analysis_ids.append(r["analysis_id"])


def test_fuzz_mark_done_reports(conn: Conn) -> None:
    """mark_done on a live lease with only the report hostile: schema checks and grounding, in depth."""
    f = catalog(conn)["mark_done"]
    pool = seed(conn)
    valid, hostile, fabricated = report_st(pool)
    seen: dict[str, int] = {}

    @settings(FUZZ, max_examples=3 * EXAMPLES)  # cheap, and the grounding check is worth it
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        pool.item = live_item(conn, pool)
        r = conn.execute(
            "SELECT topics FROM parecer.scripts WHERE script_id = %s", (pool.item["script_id"],)
        ).fetchone()
        pool.item_topics = r["topics"] if r else []
        report = data.draw(
            st.one_of(fabricated, fabricated, hostile, valid), label="report"
        )  # built for pool.item
        check_never_raises(conn, report, pool.item_topics, pool.item["session_id"])
        values = {
            "analysis_id": pool.item["analysis_id"],
            "lease_token": pool.item["lease_token"],
            "report": report,
            "model": "gpt-4.1-mini",
            "prompt_hash": "0" * 64,
            "usage": OMIT,
        }
        out = call(conn, f, values)
        key = "ok" if out.ok else str(out.sqlstate)
        seen[key] = seen.get(key, 0) + 1
        if out.ok:
            check_success(conn, "mark_done", values, out, {})

    run()
    print(f"\nmark_done reports: outcomes {dict(sorted(seen.items()))}")
    assert {"ok", "PR007"} <= set(seen), seen
    # How many draws reach the grounding check depends on the items live_item picks (ORDER BY random(),
    # among the scripts earlier tests left), so one ungrounded report is checked outright as well: a
    # well-formed report whose outcome cites another session's message, with that message's own text.
    pool.item = live_item(conn, pool)
    r = conn.execute(
        "SELECT topics FROM parecer.scripts WHERE script_id = %s", (pool.item["script_id"],)
    ).fetchone()
    pool.item_topics = r["topics"] if r else []
    own = (
        pool.sessions[pool.item["session_id"]]
        if pool.item["session_id"] in pool.sessions
        else next(iter(pool.sessions.values()))
    )
    other = next(m for m in pool.texts if m not in own.message_ids and any(pool.texts[m]))
    doc = report_for(own, pool.item_topics)
    doc["outcome"]["evidence"] = [
        {"message_id": other, "excerpt": next(x for x in pool.texts[other] if x)[:30]}
    ]
    bad = conn.execute(
        "SELECT jsonb_path_query_array((SELECT g.grounding FROM parecer._grounding_set(%s::jsonb, %s) g), '$[*] ? (exists(@.problem))') AS bad",
        (json.dumps(doc), pool.item["session_id"]),
    ).fetchone()
    assert bad is not None and [b["message_id"] for b in bad["bad"]] == [other]
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(
            "SELECT parecer.mark_done(%s, %s, %s, 'gpt-4.1-mini', %s)",
            (pool.item["analysis_id"], pool.item["lease_token"], json.dumps(doc), "0" * 64),
        )
    assert errors.sqlstate(exc.value) == "PR008", exc.value


def check_never_raises(conn: Conn, report: Any, topics: list[str], session_id: str) -> None:
    """mark_done's one report check (_report_problem, then _grounding_set) never raises on any input:
    whatever a model sends, the answer is a problem text (PR007), a list of ungrounded evidence
    (PR008), or neither; and _report_problem's fast path answers as the step-by-step check
    (_report_first_problem) does."""
    try:
        doc = json.dumps(report, allow_nan=False)
    except (TypeError, ValueError):
        return
    try:
        row = conn.execute(
            "SELECT parecer._report_problem(%s::jsonb, %s::text[]) AS p,"
            " parecer._report_first_problem(%s::jsonb, %s::text[]) AS full_check",
            (doc, topics, doc, topics),
        ).fetchone()
        assert row is not None
        problem = row["p"]
    except (
        psycopg.DataError
    ):  # not storable as jsonb (e.g. \u0000): refused at input, before any check
        return
    # the fast path lets through only what the step-by-step check accepts (test_report_check.py)
    assert problem == row["full_check"], (problem, row["full_check"])
    if problem is None:
        bad = conn.execute(
            "SELECT (SELECT g.grounding FROM parecer._grounding_set(%s::jsonb, %s) g) AS b",
            (doc, session_id),
        ).fetchone()
        assert bad is not None and isinstance(bad["b"], list)
    note(f"problem={problem}")


def test_absurdly_deep_json_is_refused_at_input(conn: Conn) -> None:
    """JSON nested 100000 deep: the server's jsonb input refuses it (54001, stack depth) while converting
    the argument, before any parecer code runs, as for any jsonb value; nothing changes. The one
    type-level error outside class 22 we know of; the fuzzer stays at depths PostgreSQL accepts."""
    seed(conn)
    before = table_checksum(conn)
    with pytest.raises(psycopg.Error) as ei:
        conn.execute(
            "SELECT * FROM parecer.eligible_sessions('acme', tag_filter => %s::jsonb)",
            ("[" * 100_000 + "]" * 100_000,),
        )
    assert errors.sqlstate(ei.value) == "54001"
    with pytest.raises(psycopg.Error):
        conn.execute("SELECT %s::jsonb", ("[" * 100_000 + "]" * 100_000,))
    assert table_checksum(conn) == before


def test_nul_in_text_is_refused_client_side(conn: Conn) -> None:
    """PostgreSQL text cannot hold NUL: psycopg refuses it before sending, and nothing changes."""
    seed(conn)
    before = table_checksum(conn)
    for sql, args in [
        ("SELECT * FROM parecer.list_scripts(%s)", ("ac\x00me",)),
        ("SELECT * FROM parecer.create_script_version('acme', 'qa', %s)", ("a\x00b",)),
        ("SELECT * FROM parecer.claim(%s)", ("w\x00",)),
    ]:
        with pytest.raises(psycopg.DataError) as ei:
            conn.execute(sql, args)
        assert errors.sqlstate(ei.value) is None
    assert table_checksum(conn) == before


# --------------------------------------------------------------------------- regressions found by the fuzzer
#
# Each was a property failure above; kept here as a concrete example.


def _raises(conn: Conn, code: str, sql: str, args: Any = ()) -> None:
    before = table_checksum(conn)
    with pytest.raises(psycopg.Error) as ei:
        conn.execute(sql, args)
    assert errors.sqlstate(ei.value) == code, ei.value
    assert table_checksum(conn) == before


def test_regression_integer_setting_with_zero_fraction(conn: Conn) -> None:
    """set_setting('max_attempts', '4.0') was stored as '4.0'; every reader then failed with 22P02."""
    seed(conn)
    [row] = conn.execute("SELECT * FROM parecer.set_setting('max_attempts', '4.0')").fetchall()
    assert row["value"] == "4"
    [row] = conn.execute("SELECT * FROM parecer.set_setting('lease_seconds', ' 6e1 ')").fetchall()
    assert row["value"] == "60"
    _raises(conn, "PR009", "SELECT * FROM parecer.set_setting('max_attempts', '4.5')")
    settings_usable(conn)


def test_regression_backoff_schedule_2d_array(conn: Conn) -> None:
    """A 2-D interval array raised 0A000 (array_position) instead of PR009."""
    for v in ("{{1 minute},{2 minutes}}", "{{1 minute}}", "{{{1 minute}}}"):
        _raises(conn, "PR009", "SELECT * FROM parecer.set_setting('backoff_schedule', %s)", (v,))


def test_regression_backoff_schedule_lower_bound(conn: Conn) -> None:
    """'[0:0]={1 minute}' was accepted as is; _backoff(n) indexed past it and returned NULL, so every
    retryable failure silently became terminal. The schedule is now stored 1-based."""
    seed(conn)
    for v, stored in (
        ("[0:0]={1 minute}", "{00:01:00}"),
        ("[-5:-4]={1 s,2 hours}", "{00:00:01,02:00:00}"),
        ("[3:4]={1 minute,5 minutes}", "{00:01:00,00:05:00}"),
    ):
        [row] = conn.execute(
            "SELECT * FROM parecer.set_setting('backoff_schedule', %s)", (v,)
        ).fetchall()
        assert row["value"] == stored
        settings_usable(conn)  # _backoff(1..7) positive; a retryable mark_failed schedules a retry


def test_regression_create_script_version_2d_topics(conn: Conn) -> None:
    """2-D topics raised 0A000 (array_position) instead of PR013."""
    make_client(conn, "acme")
    _raises(
        conn,
        "PR013",
        "SELECT * FROM parecer.create_script_version('acme', 'qa', 'x', topics => %s::text[])",
        ([["a", "b"], ["c", "d"]],),
    )


def test_regression_enqueue_2d_session_ids(conn: Conn) -> None:
    """2-D session_ids raised 0A000 (array_position) instead of PR010."""
    script = make_script(conn)
    s = make_session(conn)
    _raises(
        conn,
        "PR010",
        "SELECT * FROM parecer.enqueue(%s::text[], %s)",
        ([[s.session_id, s.session_id]], script["script_id"]),
    )


def test_regression_retry_failed_pattern_ending_in_backslash(conn: Conn) -> None:
    """error_like ending in an escape character raised 22025 from ILIKE, once a terminal failure reached it."""
    seed(conn)  # holds a terminal failure whose error ends in a backslash
    for pattern in ("%\\", "provider said 400: bad request\\", "\\", "%\\\\\\"):
        _raises(conn, "PR010", "SELECT parecer.retry_failed(error_like => %s)", (pattern,))
    # An escaped backslash is a literal one, and matches.
    assert conn.execute(
        "SELECT parecer.retry_failed(error_like => %s) AS n", ("%request\\\\",)
    ).fetchone() == {"n": 1}


def test_regression_usage_with_non_integer_token_counts(conn: Conn) -> None:
    """usage {"input_tokens": 0.0} (or 1e30, "12", -1) made mark_done / mark_failed fail with 22P02 / 22003
    in the spend accounting. mark_done now refuses such usage with PR010; mark_failed drops it, as it
    drops any usage that is not an object (a failure report must not fail)."""
    pool = seed(conn)
    usage: dict[str, Any]
    for usage in (
        {"input_tokens": 0.0},
        {"output_tokens": 1e30},
        {"cached_input_tokens": "12"},
        {"input_tokens": -1},
        {"input_tokens": 10**13},
        {"output_tokens": [1]},
    ):
        item = live_item(conn, pool)
        s = pool.sessions[item["session_id"]]
        _raises(
            conn,
            "PR010",
            "SELECT * FROM parecer.mark_done(%s, %s, %s::jsonb, 'm', %s, %s::jsonb)",
            (
                item["analysis_id"],
                item["lease_token"],
                json.dumps(report_for(s)),
                "0" * 64,
                json.dumps(usage),
            ),
        )
        out = conn.execute(
            "SELECT * FROM parecer.mark_failed(%s, %s, 'x', usage => %s::jsonb)",
            (item["analysis_id"], item["lease_token"], json.dumps(usage)),
        ).fetchone()
        assert out is not None and out["status"] in ("pending", "failed")
        att = conn.execute(
            "SELECT usage FROM parecer._attempts WHERE analysis_id = %s ORDER BY attempt DESC LIMIT 1",
            (item["analysis_id"],),
        ).fetchone()
        assert att == {"usage": None}
    # Integer counts, and null ones, are fine.
    item = live_item(conn, pool)
    usage = {"input_tokens": 12, "cached_input_tokens": None, "output_tokens": 0, "model": "m"}
    conn.execute(
        "SELECT * FROM parecer.mark_done(%s, %s, %s::jsonb, 'm', %s, %s::jsonb)",
        (
            item["analysis_id"],
            item["lease_token"],
            json.dumps(report_for(pool.sessions[item["session_id"]])),
            "0" * 64,
            json.dumps(usage),
        ),
    )


@pytest.mark.parametrize("excerpt", ["\t", "\n", "\r\n \t "])
def test_regression_blank_excerpt_is_not_grounded(conn: Conn, excerpt: str) -> None:
    """An excerpt of whitespace other than spaces passed the non-empty check (btrim trims spaces only) and
    normalised to '', which strpos finds in every message: evidence quoting nothing was accepted."""
    pool = seed(conn)
    item = live_item(conn, pool)
    s = pool.sessions[item["session_id"]]
    report = report_for(s)
    report["outcome"]["evidence"] = [{"message_id": s.message_ids[0], "excerpt": excerpt}]
    _raises(
        conn,
        "PR007",
        "SELECT * FROM parecer.mark_done(%s, %s, %s::jsonb, 'm', %s)",
        (item["analysis_id"], item["lease_token"], json.dumps(report), "0" * 64),
    )
