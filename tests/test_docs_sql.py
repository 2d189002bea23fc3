"""The SQL in the docs runs: docs/sql-api.md top to bottom on the sample data,
docs/adapters.md against a scratch copy of the contract, and every public
function's signature in docs/sql-api.md matches the catalogue.

Fences: ```sql blocks run in order, each as one statement batch; ```sql-error
blocks must fail with the SQLSTATE named in their ``-- raises PR0nn`` comment and
change nothing; ```psql blocks (meta-commands) and plain ``` blocks are not run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from parecer import db
from parecer.sample import load_sample

from .helpers import table_checksum

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```([A-Za-z0-9_-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
RAISES = re.compile(r"--\s*raises\s+([0-9A-Z]{5})\b")


def blocks(name: str) -> list[tuple[str, str, int]]:
    """(language, code, line number) of every fenced block of a doc."""
    text = (DOCS / name).read_text(encoding="utf-8")
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def run(conn: psycopg.Connection[Any], sql: str) -> None:
    conn.execute(sql.encode("utf-8"))  # bytes: no client-side placeholder parsing


def test_sql_api_walkthrough_runs_in_order(db_url: str, conn: psycopg.Connection[Any]) -> None:
    with psycopg.connect(db_url, autocommit=True) as plain:  # load_sample wants tuple rows
        load_sample(plain, sessions=120, seed=42)
    todo = [b for b in blocks("sql-api.md") if b[0] in ("sql", "sql-error")]
    assert len(todo) >= 15, "the walkthrough lost its SQL blocks"
    for lang, sql, line in todo:
        where = f"docs/sql-api.md:{line}"
        if lang == "sql":
            try:
                run(conn, sql)
            except psycopg.Error as exc:
                pytest.fail(f"{where}: {exc.diag.sqlstate} {exc}")
            continue
        codes = RAISES.findall(sql)
        assert len(codes) == 1, f"{where}: a sql-error block needs exactly one '-- raises PR0nn'"
        before = table_checksum(conn)
        with pytest.raises(psycopg.Error) as err:
            run(conn, sql)
        assert err.value.diag.sqlstate == codes[0], f"{where}: {err.value}"
        assert err.value.diag.message_hint, f"{where}: no hint"
        assert table_checksum(conn) == before, f"{where}: a failing call wrote something"
    # the walkthrough ends with the two reset items pending again and the run still known
    row = conn.execute("SELECT sum(pending) AS p, sum(done) AS d FROM parecer.queue_status").fetchone()
    assert row == {"p": 3, "d": 0}


def _norm_sig(s: str) -> str:
    """pg_get_function_arguments/result as the docs write them."""
    s = s.replace("timestamp with time zone", "timestamptz")
    s = re.sub(r"::[a-z_]+(\[\])?", "", s)  # DEFAULT NULL::text -> DEFAULT NULL
    return " ".join(s.split())


def test_reference_signatures_match_the_catalogue(conn: psycopg.Connection[Any]) -> None:
    text = " ".join((DOCS / "sql-api.md").read_text(encoding="utf-8").split())
    funcs = conn.execute(
        "SELECT p.proname, pg_get_function_arguments(p.oid) AS args, pg_get_function_result(p.oid) AS res "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'parecer' AND p.proname !~ '^_' ORDER BY 1").fetchall()
    assert len(funcs) >= 18
    for f in funcs:
        sig = f"parecer.{f['proname']}({_norm_sig(f['args'])})"
        assert sig in text, f"docs/sql-api.md lacks the signature {sig}"
        assert f"RETURNS {_norm_sig(f['res'])}" in text, f"docs/sql-api.md lacks {f['proname']}'s RETURNS {f['res']}"
        assert f"### parecer.{f['proname']}" in text, f"no reference heading for {f['proname']}"
    views = conn.execute(
        "SELECT c.relname, array_agg(a.attname::text ORDER BY a.attnum) AS cols "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
        "WHERE n.nspname = 'parecer' AND c.relkind = 'v' GROUP BY 1 ORDER BY 1").fetchall()
    assert len(views) == 9
    raw = (DOCS / "sql-api.md").read_text(encoding="utf-8")
    for v in views:
        assert f"### parecer.{v['relname']}" in raw, f"no reference heading for view {v['relname']}"
        section = raw.split(f"### parecer.{v['relname']}", 1)[1].split("\n### ", 1)[0]
        missing = [c for c in v["cols"] if not re.search(rf"`{re.escape(c)}[` ]", section)]
        assert missing == [], f"view {v['relname']}: columns not documented: {missing}"


def test_settings_table_matches_defaults(conn: psycopg.Connection[Any]) -> None:
    text = (DOCS / "sql-api.md").read_text(encoding="utf-8")
    for s in conn.execute("SELECT name, \"default\" FROM parecer.settings").fetchall():
        assert re.search(rf"^\| `{s['name']}` \|[^\n]*`{re.escape(s['default'])}`", text, re.M), s


def test_adapters_doc_sql_runs_and_example_adapter_works(conn: psycopg.Connection[Any]) -> None:
    text = (DOCS / "adapters.md").read_text(encoding="utf-8")
    for name in ("reference", "prisma"):
        assert f"db/adapters/{name}.sql" in text and f"parecer db adapter {name}" in text
    todo = [b for b in blocks("adapters.md") if b[0] in ("sql", "sql-error")]
    assert len(todo) >= 3
    # The blocks build the hypothetical uuid host and its adapter; all of it is
    # rolled back, so the reference adapter of the test database is back afterwards.
    conn.execute("BEGIN")
    try:
        for lang, sql, line in todo:
            where = f"docs/adapters.md:{line}"
            conn.execute("SAVEPOINT block")
            if lang == "sql":
                try:
                    run(conn, sql)
                except psycopg.Error as exc:
                    pytest.fail(f"{where}: {exc.diag.sqlstate} {exc}")
                conn.execute("RELEASE SAVEPOINT block")
                continue
            codes = RAISES.findall(sql)
            assert len(codes) == 1, f"{where}: a sql-error block needs exactly one '-- raises XXXXX'"
            with pytest.raises(psycopg.Error) as err:
                run(conn, sql)
            assert err.value.diag.sqlstate == codes[0], f"{where}: {err.value}"
            conn.execute("ROLLBACK TO SAVEPOINT block")
        run(conn, HOST_DATA)
        # parecer reads the host through the example adapter
        rows = conn.execute("SELECT * FROM parecer.eligible_sessions('uuid-host', min_messages => 2)").fetchall()
        assert [(r["session_id"], r["message_count"]) for r in rows] == [(CONVERSATION, 3)]
        t = conn.execute("SELECT * FROM parecer.session_transcript(%s)", (CONVERSATION,)).fetchall()
        assert [(r["position"], r["from_me"], r["body"]) for r in t] == [
            (1, False, "message 0"), (2, True, "message 1"), (3, False, "message 2")]
        assert t[0]["sent_at"].utcoffset() is not None
        # sent_at does not depend on the session time zone (AT TIME ZONE 'UTC', not ::timestamptz)
        conn.execute("SET LOCAL TimeZone = 'America/Sao_Paulo'")
        again = conn.execute("SELECT sent_at FROM parecer.session_transcript(%s)", (CONVERSATION,)).fetchall()
        assert [r["sent_at"] for r in again] == [r["sent_at"] for r in t]
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r["QUERY PLAN"] for r in conn.execute(
            "EXPLAIN (COSTS OFF) SELECT * FROM parecer.source_messages "
            f"WHERE session_id = '{CONVERSATION}'").fetchall())
        assert "messages_conversation_text_idx" in plan, plan
    finally:
        conn.execute("ROLLBACK")


CONVERSATION = "00000000-0000-0000-0000-0000000000f1"
# Rows for the hypothetical host of docs/adapters.md (its tables come from the doc).
HOST_DATA = f"""
INSERT INTO helpdesk.tenants VALUES ('00000000-0000-0000-0000-0000000000a1', 'uuid-host', 'UUID Host');
INSERT INTO helpdesk.customers VALUES ('00000000-0000-0000-0000-0000000000c1', '00000000-0000-0000-0000-0000000000a1');
INSERT INTO helpdesk.conversations VALUES ('{CONVERSATION}', '00000000-0000-0000-0000-0000000000a1',
                                           '00000000-0000-0000-0000-0000000000c1', now() - interval '2 days');
INSERT INTO helpdesk.messages (conversation_id, direction, text_content, sent_at)
SELECT '{CONVERSATION}', CASE WHEN i % 2 = 0 THEN 'in' ELSE 'out' END, 'message ' || i,
       TIMESTAMP '2026-01-02 10:00' + i * interval '1 minute'
FROM generate_series(0, 2) i;
"""
