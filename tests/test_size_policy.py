"""No item outgrows the model or loops (issue 12, SQL side): the size policy of
prompt_for (max_input_tokens), PR016 for what can never be sent, and the release
counter (max_releases)."""

from __future__ import annotations

import math
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from parecer import errors

from .factories import make_client, make_script, make_session, report_for
from .helpers import one

Conn = psycopg.Connection[Any]


def queue(conn: Conn, session_id: str, script_id: int) -> str:
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", ([session_id], script_id))
    return str(
        one(conn, "SELECT analysis_id FROM parecer.analyses WHERE session_id = %s", (session_id,))[
            "analysis_id"
        ]
    )


def add_messages(conn: Conn, session_id: str, n: int, body: str) -> None:
    """n more messages at the end of a session (one statement)."""
    conn.execute(
        "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, created_at, created_at_external)"
        " SELECT %(s)s || '-x' || lpad(g::text, 5, '0'), %(s)s, g %% 2 = 1, 'text', %(b)s || ' ' || g,"
        "        now() + make_interval(secs => g), now() + make_interval(secs => g)"
        " FROM generate_series(1, %(n)s) g",
        {"s": session_id, "n": n, "b": body},
    )


def test_a_session_within_budget_goes_whole_with_its_estimate(conn: Conn) -> None:
    script = make_script(conn)
    s = make_session(conn)
    aid = queue(conn, s.session_id, script["script_id"])
    p = one(conn, "SELECT * FROM parecer.prompt_for(%s)", (aid,))
    assert p["omitted_messages"] == 0 and p["repair_calls"] == 1
    assert len(p["input"].split("\n")) == 25
    chars = one(
        conn,
        "SELECT length(p.instructions) + length(p.report_schema::text) + length(p.input) AS n"
        " FROM parecer.prompt_for(%s) p",
        (aid,),
    )["n"]
    assert p["input_tokens"] == math.ceil(chars / 3)


@pytest.mark.parametrize(
    ("language", "label"),
    [("pt-BR", "mensagens omitidas"), ("en", "messages omitted"), ("es", "mensajes omitidos")],
)
def test_a_long_session_keeps_its_start_and_end_around_a_visible_line(
    conn: Conn, language: str, label: str
) -> None:
    make_client(conn)
    conn.execute(
        "SELECT * FROM parecer.create_script_version('acme', 'long', 'Avalie.', topics => '{internet}',"
        " language => %s)",
        (language,),
    )
    script = one(conn, "SELECT script_id FROM parecer.scripts WHERE script_key = 'long'")
    s = make_session(conn, messages=10)
    add_messages(conn, s.session_id, 1990, "Mensagem longa do cliente sobre a internet que caiu")
    aid = queue(conn, s.session_id, script["script_id"])
    whole = one(conn, "SELECT * FROM parecer.prompt_for(%s)", (aid,))["input"].split("\n")
    assert len(whole) == 2000  # under the default budget: whole

    conn.execute("SELECT parecer.set_setting('max_input_tokens', '5000')")
    p = one(conn, "SELECT * FROM parecer.prompt_for(%s)", (aid,))
    lines = p["input"].split("\n")
    marker = [i for i, ln in enumerate(lines) if not ln.startswith("[msg ")]
    assert len(marker) == 1, "exactly one line stands for the omitted messages"
    m = marker[0]
    assert lines[m] == f"[… {p['omitted_messages']} {label} …]"
    # whole messages from the start, then from the end, in order, nothing cut
    assert lines[:m] == whole[:m]
    assert lines[m + 1 :] == whole[len(whole) - (len(lines) - m - 1) :]
    assert m >= 1 and len(lines) - m - 1 >= 1
    assert p["omitted_messages"] == len(whole) - (len(lines) - 1)
    assert p["input_tokens"] <= 5000
    assert p["input_tokens"] > 4000, "the budget is used, not wasted"


def test_mark_done_records_what_the_size_policy_left_out(conn: Conn) -> None:
    script = make_script(conn)
    s = make_session(conn, messages=4)
    add_messages(conn, s.session_id, 600, "Outra mensagem do cliente sobre a internet que caiu")
    aid = queue(conn, s.session_id, script["script_id"])
    conn.execute("SELECT parecer.set_setting('max_input_tokens', '3000')")
    c = one(conn, "SELECT * FROM parecer.claim('w')")
    p = one(conn, "SELECT * FROM parecer.prompt_for(%s)", (aid,))
    assert p["omitted_messages"] > 0
    conn.execute(
        "SELECT * FROM parecer.mark_done(%s, %s, %s, 'm', %s)",
        (
            c["analysis_id"],
            c["lease_token"],
            Jsonb(report_for(s)),
            p["prompt_hash"],
        ),
    )
    r = one(conn, "SELECT omitted_messages FROM parecer.reports WHERE analysis_id = %s", (aid,))
    assert r["omitted_messages"] == p["omitted_messages"]


def test_a_session_where_not_one_message_fits_is_pr015(conn: Conn) -> None:
    script = make_script(conn)
    s = make_session(conn, messages=0)
    add_messages(conn, s.session_id, 1, "x" * 600_000)
    aid = queue(conn, s.session_id, script["script_id"])
    with pytest.raises(psycopg.Error) as ei:
        conn.execute("SELECT * FROM parecer.prompt_for(%s)", (aid,))
    assert ei.value.diag.sqlstate == errors.PROMPT_TOO_LARGE
    assert ei.value.diag.message_hint


def test_a_giant_message_between_small_ones_is_the_one_left_out(conn: Conn) -> None:
    script = make_script(conn)
    s = make_session(conn, messages=2)
    add_messages(conn, s.session_id, 1, "y" * 600_000)
    conn.execute(
        "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, created_at, created_at_external)"
        " VALUES (%s || '-last', %s, false, 'text', 'obrigado, resolveu', now() + interval '1 hour',"
        " now() + interval '1 hour')",
        (s.session_id, s.session_id),
    )
    aid = queue(conn, s.session_id, script["script_id"])
    p = one(conn, "SELECT * FROM parecer.prompt_for(%s)", (aid,))
    assert p["omitted_messages"] == 1
    assert p["input"].split("\n")[-2:] == [
        "[… 1 mensagem omitida …]",
        p["input"].split("\n")[-1],
    ]
    assert p["input"].endswith("obrigado, resolveu") and "yyyy" not in p["input"]


def test_a_request_above_the_keys_tokens_per_minute_is_pr015_and_pauses_nothing(
    conn: Conn,
) -> None:
    conn.execute("SELECT * FROM parecer.set_rate_limit('k:m', rpm => 100, tpm => 10000)")
    with pytest.raises(psycopg.Error) as ei:
        conn.execute("SELECT * FROM parecer.acquire_rate('k:m', 10001)")
    assert ei.value.diag.sqlstate == errors.PROMPT_TOO_LARGE
    r = one(
        conn, "SELECT paused_until, pause_reason FROM parecer.rate_limits WHERE limit_key = 'k:m'"
    )
    assert r == {"paused_until": None, "pause_reason": None}
    assert one(conn, "SELECT granted FROM parecer.acquire_rate('k:m', 1000)")["granted"]


def test_an_item_released_more_than_max_releases_times_fails_terminally(conn: Conn) -> None:
    script = make_script(conn)
    s = make_session(conn)
    aid = queue(conn, s.session_id, script["script_id"])
    conn.execute("SELECT parecer.set_setting('max_releases', '3')")
    for n in range(1, 4):
        c = one(conn, "SELECT * FROM parecer.claim('w')")
        out = one(
            conn, "SELECT * FROM parecer.release(%s, %s)", (c["analysis_id"], c["lease_token"])
        )
        assert out["status"] == "pending", n
    c = one(conn, "SELECT * FROM parecer.claim('w')")
    out = one(
        conn,
        "SELECT * FROM parecer.release(%s, %s, reason => 'rate limited (429)')",
        (c["analysis_id"], c["lease_token"]),
    )
    assert (out["status"], out["next_retry_at"]) == ("failed", None)
    a = one(
        conn,
        "SELECT status, releases, retry_count, error FROM parecer.analyses WHERE analysis_id = %s",
        (aid,),
    )
    assert a["releases"] == 4 and a["retry_count"] == 0
    assert (
        a["error"]
        == "released 4 times without finishing (max_releases 3); last: rate limited (429)"
    )
    assert conn.execute("SELECT * FROM parecer.claim('w')").fetchone() is None

    assert one(conn, "SELECT parecer.retry_failed(client_slug => 'acme') AS n")["n"] == 1
    assert (
        one(conn, "SELECT releases FROM parecer.analyses WHERE analysis_id = %s", (aid,))[
            "releases"
        ]
        == 0
    )
    c = one(conn, "SELECT * FROM parecer.claim('w')")
    conn.execute("SELECT * FROM parecer.release(%s, %s)", (c["analysis_id"], c["lease_token"]))
    conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s, force_reprocess => true)",
        ([s.session_id], script["script_id"]),
    )
    assert (
        one(conn, "SELECT releases FROM parecer.analyses WHERE analysis_id = %s", (aid,))[
            "releases"
        ]
        == 0
    )
