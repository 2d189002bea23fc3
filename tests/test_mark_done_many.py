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
