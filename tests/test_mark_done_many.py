"""parecer.mark_done_many: several reports in one call, each through mark_done on its own."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from parecer import errors

from .factories import make_script, make_session, report_for
from .helpers import table_checksum

Conn = psycopg.Connection[Any]


def test_each_item_is_stored_or_refused_on_its_own(conn: Conn) -> None:
    script = make_script(conn)
    sessions = [make_session(conn) for _ in range(4)]
    conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s)",
        ([s.session_id for s in sessions], script["script_id"]),
    )
    items = conn.execute("SELECT * FROM parecer.claim('w', 4)").fetchall()
    by_session = {s.session_id: s for s in sessions}
    good, stale, ungrounded, invalid = items
    bad_report = report_for(by_session[ungrounded["session_id"]], excerpt="nada disso foi dito")
    batch = [
        {
            "analysis_id": str(good["analysis_id"]),
            "lease_token": str(good["lease_token"]),
            "report": report_for(by_session[good["session_id"]]),
            "model": "m",
            "prompt_hash": "0" * 64,
            "usage": {"input_tokens": 100, "output_tokens": 10},
        },
        {
            "analysis_id": str(stale["analysis_id"]),
            "lease_token": str(good["lease_token"]),
            "report": report_for(by_session[stale["session_id"]]),
            "model": "m",
            "prompt_hash": "0" * 64,
        },
        {
            "analysis_id": str(ungrounded["analysis_id"]),
            "lease_token": str(ungrounded["lease_token"]),
            "report": bad_report,
            "model": "m",
            "prompt_hash": "0" * 64,
        },
        {
            "analysis_id": str(invalid["analysis_id"]),
            "lease_token": str(invalid["lease_token"]),
            "report": {"schema_version": "nope"},
            "model": "m",
            "prompt_hash": "0" * 64,
            "usage": None,
        },
        {"analysis_id": "not-a-uuid"},
    ]
    rows = conn.execute("SELECT * FROM parecer.mark_done_many(%s)", (json.dumps(batch),)).fetchall()
    assert [(r["outcome"], r["sqlstate"]) for r in rows] == [
        ("done", None),
        ("stale", "PR006"),
        ("invalid", "PR008"),
        ("invalid", "PR007"),
        ("invalid", "22P02"),
    ]
    assert [r["analysis_id"] for r in rows[:4]] == [i["analysis_id"] for i in items]
    status = {
        r["analysis_id"]: r["status"]
        for r in conn.execute("SELECT analysis_id, status FROM parecer.analyses")
    }
    assert status[good["analysis_id"]] == "done"
    assert [status[i["analysis_id"]] for i in (stale, ungrounded, invalid)] == ["processing"] * 3
    spent = conn.execute("SELECT sum(input_tokens) AS t FROM parecer.spend_daily").fetchone()
    assert spent == {"t": 100}


def test_not_an_array_is_refused_and_changes_nothing(conn: Conn) -> None:
    before = table_checksum(conn)
    for bad in ('{"analysis_id": 1}', "null", json.dumps([{}] * 1001)):
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("SELECT * FROM parecer.mark_done_many(%s)", (bad,))
        assert errors.sqlstate(exc.value) == errors.INVALID_ARGUMENT
        assert exc.value.diag.message_hint
    assert table_checksum(conn) == before
    assert conn.execute("SELECT * FROM parecer.mark_done_many('[]')").fetchall() == []


def _claimed(
    conn: Conn, n: int, client: str = "acme"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    script = make_script(conn, client=client)
    sessions = {s.session_id: s for s in (make_session(conn, client) for _ in range(n))}
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", (list(sessions), script["script_id"]))
    return conn.execute("SELECT * FROM parecer.claim('w', %s)", (n,)).fetchall(), sessions


def _item(row: dict[str, Any], report: Any, **kw: Any) -> dict[str, Any]:
    return {
        "analysis_id": str(row["analysis_id"]),
        "lease_token": str(row["lease_token"]),
        "report": report,
        "model": "m",
        "prompt_hash": "0" * 64,
        **kw,
    }


def test_a_batch_refuses_each_item_as_mark_done_would(conn: Conn) -> None:
    """Every kind of refusal, side by side: mark_done_many's row carries the SQLSTATE and
    the message mark_done raises for that item alone (tried first under a savepoint)."""
    items, sessions = _claimed(conn, 9)
    s = [sessions[i["session_id"]] for i in items]
    conn.execute("SELECT * FROM parecer.prompt_for(%s)", (items[6]["analysis_id"],))
    batch = [
        _item(items[0], report_for(s[0]), usage={"input_tokens": 100, "output_tokens": 10}),
        _item(items[1], report_for(s[1]), lease_token=str(items[0]["lease_token"])),
        _item(items[2], report_for(s[2]), usage={"input_tokens": -1}),
        _item(items[3], report_for(s[3]), prompt_hash="nope"),
        _item(items[4], report_for(s[4]), model=" "),
        _item(items[5], {"schema_version": "parecer.report.v1"}),
        _item(items[6], report_for(s[6])),  # prompt_for gave another hash: PR017
        _item(items[7], report_for(s[7], excerpt="nada disso foi dito")),
        _item(items[8], None),
        {
            "analysis_id": "00000000-0000-0000-0000-000000000000",
            "lease_token": str(items[0]["lease_token"]),
        },
    ]
    alone: list[tuple[str | None, str | None]] = []
    for it in batch:
        try:
            with conn.transaction(force_rollback=True):
                conn.execute(
                    "SELECT * FROM parecer.mark_done(%s, %s, %s, %s, %s, %s)",
                    (
                        it["analysis_id"],
                        it["lease_token"],
                        json.dumps(it.get("report")),
                        it.get("model"),
                        it.get("prompt_hash"),
                        json.dumps(it["usage"]) if "usage" in it else None,
                    ),
                )
            alone.append((None, None))
        except psycopg.Error as exc:
            alone.append((errors.sqlstate(exc), exc.diag.message_primary))
    rows = conn.execute("SELECT * FROM parecer.mark_done_many(%s)", (json.dumps(batch),)).fetchall()
    assert [(r["sqlstate"], r["message"]) for r in rows] == alone
    assert [r["sqlstate"] for r in rows] == [
        None,
        "PR006",
        "PR010",
        "PR010",
        "PR010",
        "PR007",
        "PR017",
        "PR008",
        "PR007",
        "PR011",
    ]
    assert [r["outcome"] for r in rows] == ["done", "stale"] + ["invalid"] * 7 + ["stale"]
    spent = conn.execute(
        "SELECT sum(attempts) AS n, sum(input_tokens) AS t FROM parecer.spend_daily"
    ).fetchone()
    assert spent == {"n": 1, "t": 100}


def test_an_analysis_twice_and_an_unparsable_item_go_one_by_one(conn: Conn) -> None:
    items, sessions = _claimed(conn, 2)
    s = [sessions[i["session_id"]] for i in items]
    twice = [
        _item(items[0], {"schema_version": "nope"}),
        _item(items[0], report_for(s[0])),
        _item(items[0], report_for(s[0])),
        {"analysis_id": "not-a-uuid"},
        _item(items[1], report_for(s[1]), usage={"input_tokens": 5}),
    ]
    rows = conn.execute("SELECT * FROM parecer.mark_done_many(%s)", (json.dumps(twice),)).fetchall()
    assert [(r["outcome"], r["sqlstate"]) for r in rows] == [
        ("invalid", "PR007"),
        ("done", None),
        ("stale", "PR006"),
        ("invalid", "22P02"),
        ("done", None),
    ]
    spent = conn.execute(
        "SELECT sum(attempts) AS n, sum(input_tokens) AS t FROM parecer.spend_daily"
    ).fetchone()
    assert spent == {"n": 1, "t": 5}


def test_a_batch_adds_each_clients_spend_once_per_item(conn: Conn) -> None:
    a, sa = _claimed(conn, 3, "acme")
    b, sb = _claimed(conn, 2, "beta")
    usage = {"input_tokens": 1000, "cached_input_tokens": 200, "output_tokens": 50}
    batch = [
        _item(r, report_for({**sa, **sb}[r["session_id"]]), usage=usage, model="parecer-standin")
        for r in b + a
    ]
    rows = conn.execute("SELECT * FROM parecer.mark_done_many(%s)", (json.dumps(batch),)).fetchall()
    assert [r["outcome"] for r in rows] == ["done"] * 5
    spend = conn.execute(
        "SELECT client_slug, attempts, input_tokens, cached_input_tokens, output_tokens, cost_usd"
        " FROM parecer.spend_daily ORDER BY client_slug"
    ).fetchall()
    costs = {
        r["client_slug"]: r["c"]
        for r in conn.execute(
            "SELECT client_slug, sum(cost_usd) AS c FROM parecer.reports GROUP BY client_slug"
        )
    }
    assert [
        (
            r["client_slug"],
            r["attempts"],
            r["input_tokens"],
            r["cached_input_tokens"],
            r["output_tokens"],
        )
        for r in spend
    ] == [
        ("acme", 3, 3000, 600, 150),
        ("beta", 2, 2000, 400, 100),
    ]
    assert {r["client_slug"]: r["cost_usd"] for r in spend} == costs
    assert costs["acme"] > 0
