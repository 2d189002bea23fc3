"""The docs' SQL is executable and exact.

- The SQL API docs (docs/sql-api.md, the entry page with the error codes, and
  the tutorial, reference and concepts it links to): every ```sql block runs,
  in order (tutorial, reference, concepts, entry page), on a fresh database
  with the bundled sample (120 sessions, seed 42); every ```sql-error block
  raises the SQLSTATE named in its ``-- raises PR0nn`` comment, with a hint,
  and changes no parecer table. The reference's catalogue blocks (signature,
  result columns, COMMENT, roles) are what tests/docs_reference.py generates
  from the database, it gives every public function's exact signature and
  every view's columns, and the settings table in concepts.md every default.
- docs/adapters.md: its blocks build the example uuid host and its adapter in a
  rolled-back transaction, and parecer reads that host correctly through it.
- docs/report-schema.md: the example prompt input and English instructions are
  what parecer.prompt_for returns, and the example report is stored by
  parecer.mark_done (valid and grounded).

Fences: ```sql and ```sql-error run; ```psql (meta-commands, commands that need
a superuser or placeholders) and every other fence are not run.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from parecer.devkit.sample import load_sample

from . import docs_reference
from .helpers import table_checksum

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```([A-Za-z0-9_-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
RAISES = re.compile(r"--\s*raises\s+([0-9A-Z]{5})\b")


def blocks(name: str) -> list[tuple[str, str, int]]:
    """(fence language, code, line number) of every fenced block of a doc."""
    text = (DOCS / name).read_text(encoding="utf-8")
    return [
        (m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)
    ]


def one_block(name: str, lang: str) -> str:
    found = [code for lg, code, _ in blocks(name) if lg == lang]
    assert len(found) == 1, f"{name}: expected exactly one ```{lang} block"
    return found[0].rstrip("\n")


def run(conn: psycopg.Connection[Any], sql: str) -> None:
    conn.execute(sql.encode("utf-8"))  # bytes: sent as is, no placeholder parsing


def expected_error(sql: str, where: str) -> str:
    codes: list[str] = RAISES.findall(sql)
    assert len(codes) == 1, f"{where}: a sql-error block needs exactly one '-- raises XXXXX'"
    return codes[0]


# ---- docs/sql-api.md, sql-tutorial.md, sql-reference.md, concepts.md -------

#: The SQL API docs, in the order their blocks run (the tutorial first: it builds the state).
SQL_API_DOCS = ("sql-tutorial.md", "sql-reference.md", "concepts.md", "sql-api.md")
TUTORIAL, REFERENCE, CONCEPTS = "sql-tutorial.md", "sql-reference.md", "concepts.md"


def test_sql_api_docs_link_their_parts() -> None:
    entry = (DOCS / "sql-api.md").read_text(encoding="utf-8")
    for part in (TUTORIAL, REFERENCE, CONCEPTS):
        assert f"]({part})" in entry, f"docs/sql-api.md does not link {part}"
        assert "](sql-api.md)" in (DOCS / part).read_text(encoding="utf-8"), (
            f"{part} does not link back"
        )
    # every relative link between the parts points at a heading that exists
    anchors = {
        name: {
            re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", (DOCS / name).read_text(encoding="utf-8"), re.M)
        }
        for name in SQL_API_DOCS
    }
    for name in SQL_API_DOCS:
        for target, anchor in re.findall(
            r"\]\(((?:sql-api|sql-tutorial|sql-reference|concepts)\.md)?#([^)]+)\)",
            (DOCS / name).read_text(encoding="utf-8"),
        ):
            assert anchor in anchors[target or name], f"docs/{name}: broken link {target}#{anchor}"


def test_sql_api_blocks_run_in_order_on_the_sample(conn: psycopg.Connection[Any]) -> None:
    load_sample(conn, sessions=120, seed=42)
    todo = [
        (name, *b) for name in SQL_API_DOCS for b in blocks(name) if b[0] in ("sql", "sql-error")
    ]
    assert len([t for t in todo if t[0] == TUTORIAL]) >= 20, "the walkthrough lost its SQL blocks"
    for name, lang, sql, line in todo:
        where = f"docs/{name}:{line}"
        if lang == "sql":
            try:
                run(conn, sql)
            except psycopg.Error as exc:
                pytest.fail(f"{where}: {exc.diag.sqlstate} {exc}")
            continue
        code = expected_error(sql, where)
        before = table_checksum(conn)
        with pytest.raises(psycopg.Error) as err:
            run(conn, sql)
        assert err.value.diag.sqlstate == code, f"{where}: {err.value}"
        assert err.value.diag.message_hint, f"{where}: no hint"
        assert table_checksum(conn) == before, f"{where}: a failing call wrote something"
    # the walkthrough ends with its three items reset to pending by force_reprocess
    q = conn.execute(
        "SELECT sum(pending) AS pending, sum(done) AS done FROM parecer.queue_status"
    ).fetchone()
    assert q == {"pending": 3, "done": 0}
    att = conn.execute(
        "SELECT outcome, count(*) AS n FROM parecer.attempts GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert att == [
        {"outcome": "done", "n": 1},
        {"outcome": "failed", "n": 2},
        {"outcome": "released", "n": 1},
    ]


_as_documented = docs_reference.as_documented


def test_reference_blocks_are_generated_from_the_catalogue(conn: psycopg.Connection[Any]) -> None:
    text = (DOCS / REFERENCE).read_text(encoding="utf-8")
    generated = docs_reference.render(conn)
    found = docs_reference.blocks_in(text)
    assert sorted(found) == sorted(generated), "catalogue blocks and public objects differ"
    stale = [name for name in generated if found[name] != generated[name]]
    assert stale == [], (
        f"docs/{REFERENCE}: stale catalogue blocks {stale}; regenerate with "
        "`.venv/bin/python -m tests.docs_reference <url of a migrated database>`"
    )
    for name in generated:  # each block opens its object's section
        assert re.search(
            rf"^### {re.escape(name)}\n\n<!-- catalogue: {re.escape(name)} -->$", text, re.M
        ), name


def test_reference_matches_the_catalogue(conn: psycopg.Connection[Any]) -> None:
    raw = (DOCS / REFERENCE).read_text(encoding="utf-8")
    flat = " ".join(raw.split())
    funcs = conn.execute(
        "SELECT p.proname, pg_get_function_arguments(p.oid) AS args, pg_get_function_result(p.oid) AS res "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'parecer' AND p.proname !~ '^_' ORDER BY 1"
    ).fetchall()
    assert len(funcs) >= 18
    for f in funcs:
        sig = f"parecer.{f['proname']}({_as_documented(f['args'])})"
        assert sig in flat, f"docs/{REFERENCE} lacks the signature {sig}"
        ret = f"RETURNS {_as_documented(f['res'])}"
        assert f"{sig} {ret}" in flat, f"docs/{REFERENCE} lacks {sig} {ret}"
        assert f"\n### parecer.{f['proname']}\n" in raw, f"no reference section for {f['proname']}"
    views = conn.execute(
        "SELECT c.relname, array_agg(a.attname::text ORDER BY a.attnum) AS cols "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
        "WHERE n.nspname = 'parecer' AND c.relkind = 'v' AND c.relname !~ '^_' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert len(views) >= 9
    for v in views:
        head = f"\n### parecer.{v['relname']}\n"
        assert head in raw, f"no reference section for view {v['relname']}"
        section = raw.split(head, 1)[1].split("\n### ", 1)[0]
        missing = [c for c in v["cols"] if not re.search(rf"`{re.escape(c)}[` ]", section)]
        assert missing == [], f"view {v['relname']}: columns not documented: {missing}"


def test_settings_table_matches_the_defaults(conn: psycopg.Connection[Any]) -> None:
    text = (DOCS / CONCEPTS).read_text(encoding="utf-8")
    for s in conn.execute('SELECT name, "default" FROM parecer.settings').fetchall():
        row = rf"^\| `{re.escape(s['name'])}` \| `{re.escape(s['default'])}` \|"
        assert re.search(row, text, re.MULTILINE), f"settings table: {s}"


# ---- docs/adapters.md ------------------------------------------------------

CONVERSATION = "00000000-0000-0000-0000-0000000000f1"
# Rows for the hypothetical host of docs/adapters.md (its tables come from the doc).
HOST_DATA = f"""
INSERT INTO helpdesk.tenants VALUES ('00000000-0000-0000-0000-0000000000a1', 'uuid-host', 'UUID Host');
INSERT INTO helpdesk.customers
VALUES ('00000000-0000-0000-0000-0000000000c1', '00000000-0000-0000-0000-0000000000a1');
INSERT INTO helpdesk.conversations
VALUES ('{CONVERSATION}', '00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-0000000000c1',
        now() - interval '2 days');
INSERT INTO helpdesk.messages (conversation_id, direction, text_content, sent_at)
SELECT '{CONVERSATION}', CASE WHEN i % 2 = 0 THEN 'in' ELSE 'out' END, 'message ' || i,
       TIMESTAMP '2026-01-02 10:00' + i * interval '1 minute'
FROM generate_series(0, 2) i;
"""


def test_adapters_doc_builds_a_working_adapter(conn: psycopg.Connection[Any]) -> None:
    text = (DOCS / "adapters.md").read_text(encoding="utf-8")
    for name in ("reference", "prisma"):
        assert f"db/adapters/{name}.sql" in text and f"parecer db adapter {name}" in text
    todo = [b for b in blocks("adapters.md") if b[0] in ("sql", "sql-error")]
    assert len(todo) >= 4
    # Everything is rolled back: the test database keeps its reference adapter.
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
            code = expected_error(sql, where)
            with pytest.raises(psycopg.Error) as err:
                run(conn, sql)
            assert err.value.diag.sqlstate == code, f"{where}: {err.value}"
            conn.execute("ROLLBACK TO SAVEPOINT block")

        run(conn, HOST_DATA)
        rows = conn.execute(
            "SELECT * FROM parecer.eligible_sessions('uuid-host', min_messages => 2)"
        ).fetchall()
        assert [(r["session_id"], r["message_count"]) for r in rows] == [(CONVERSATION, 3)]
        t = conn.execute("SELECT * FROM parecer.session_transcript(%s)", (CONVERSATION,)).fetchall()
        assert [(r["position"], r["from_me"], r["body"]) for r in t] == [
            (1, False, "message 0"),
            (2, True, "message 1"),
            (3, False, "message 2"),
        ]
        # AT TIME ZONE 'UTC' (not ::timestamptz): sent_at does not depend on the session's TimeZone
        conn.execute("SET LOCAL TimeZone = 'America/Sao_Paulo'")
        again = conn.execute(
            "SELECT sent_at FROM parecer.session_transcript(%s)", (CONVERSATION,)
        ).fetchall()
        assert [r["sent_at"] for r in again] == [r["sent_at"] for r in t]
        # the expression index serves the cast id
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            r["QUERY PLAN"]
            for r in conn.execute(
                "EXPLAIN (COSTS OFF) SELECT * FROM parecer.source_messages "
                f"WHERE session_id = '{CONVERSATION}'"
            ).fetchall()
        )
        assert "messages_conversation_text_idx" in plan, plan
    finally:
        conn.execute("ROLLBACK")


# ---- docs/report-schema.md -------------------------------------------------

EXAMPLE_SESSION = r"""
INSERT INTO chat.clients (id, slug, name) VALUES ('acme-telecom', 'acme-telecom', 'Acme Telecom');
INSERT INTO chat.contacts (id, client_id, name) VALUES ('ct-demo', 'acme-telecom', 'Aline');
INSERT INTO chat.tickets (id, client_id, contact_id) VALUES ('tk-demo', 'acme-telecom', 'ct-demo');
INSERT INTO chat.sessions (id, ticket_id, started_at, ended_at)
VALUES ('demo-s1', 'tk-demo', '2026-03-10 13:00Z', '2026-03-10 13:30Z');
INSERT INTO chat.messages (id, session_id, from_me, media_type, body, transcription, created_at) VALUES
 ('demo-s1-m1', 'demo-s1', false, 'text', 'Oi, minha internet caiu de novo desde ontem', NULL,
  '2026-03-10 13:02:05Z'),
 ('demo-s1-m2', 'demo-s1', true, 'text', 'Sinto muito, Aline! Vou verificar a sua conexão.', NULL,
  '2026-03-10 13:03:40Z'),
 ('demo-s1-m3', 'demo-s1', false, 'image', 'foto do modem', NULL, '2026-03-10 13:04:12Z'),
 ('demo-s1-m4', 'demo-s1', false, 'audio', NULL, 'se não resolver hoje eu vou cancelar',
  '2026-03-10 13:04:50Z'),
 ('demo-s1-m5', 'demo-s1', true, 'text', E'Fiz um reset remoto na sua porta.\nPode testar de novo, por favor?',
  NULL, '2026-03-10 13:09:31Z'),
 ('demo-s1-m6', 'demo-s1', false, 'audio', NULL, NULL, '2026-03-10 13:12:02Z'),
 ('demo-s1-m7', 'demo-s1', false, 'text', 'Voltou a funcionar, obrigada!', NULL, '2026-03-10 13:15:47Z');
"""


def _claim_for(
    conn: psycopg.Connection[Any], script_id: int, force: bool = False
) -> dict[str, Any]:
    conn.execute(
        "SELECT * FROM parecer.enqueue(ARRAY['demo-s1'], %s, force_reprocess => %s)",
        (script_id, force),
    )
    item: dict[str, Any] | None = conn.execute("SELECT * FROM parecer.claim('docs')").fetchone()
    assert item is not None
    return item


def test_report_schema_example_is_exact_valid_and_grounded(conn: psycopg.Connection[Any]) -> None:
    run(conn, EXAMPLE_SESSION)
    script = conn.execute(
        "SELECT * FROM parecer.create_script_version('acme-telecom', 'exemplo',"
        " 'Avalie se o atendente resolveu o problema.', topics => ARRAY['internet', 'cancelamento', 'cobrança'],"
        " language => 'pt-BR', activate => true)"
    ).fetchone()
    assert script is not None
    item = _claim_for(conn, script["script_id"])
    prompt = conn.execute("SELECT * FROM parecer.prompt_for(%s)", (item["analysis_id"],)).fetchone()
    assert prompt is not None
    assert prompt["input"] == one_block("report-schema.md", "prompt-input")

    report = json.loads(one_block("report-schema.md", "json"))
    out = conn.execute(
        "SELECT * FROM parecer.mark_done(%s, %s, %s, 'gpt-5-mini', %s)",
        (item["analysis_id"], item["lease_token"], json.dumps(report), prompt["prompt_hash"]),
    ).fetchone()
    assert out is not None and out["status"] == "done"
    stored = conn.execute("SELECT report FROM parecer.reports").fetchone()
    assert stored is not None and stored["report"] == report

    # citing the audio message without transcription is refused, as the doc says
    again = _claim_for(conn, script["script_id"], force=True)
    bad = copy.deepcopy(report)
    bad["flags"][0]["evidence"] = [{"message_id": "demo-s1-m6", "excerpt": "cancelar"}]
    with pytest.raises(psycopg.Error) as err:
        conn.execute(
            "SELECT * FROM parecer.mark_done(%s, %s, %s, 'm', %s)",
            (again["analysis_id"], again["lease_token"], json.dumps(bad), prompt["prompt_hash"]),
        )
    assert err.value.diag.sqlstate == "PR008"
    conn.execute(
        "SELECT parecer.mark_done(%s, %s, %s, 'gpt-5-mini', %s)",
        (again["analysis_id"], again["lease_token"], json.dumps(report), prompt["prompt_hash"]),
    )

    # the doc's SQL: json keeps the key order, jsonb does not; prompt_hash recomputes
    sql = [code for lg, code, _ in blocks("report-schema.md") if lg == "sql"]
    assert len(sql) == 2
    assert conn.execute(sql[0]).fetchone() == {
        "as_json": '{"evidence": [], "status": "resolved"}',
        "as_jsonb": '{"status": "resolved", "evidence": []}',
    }
    assert conn.execute(sql[1]).fetchall() == [{"same": True}]

    # the English instructions shown are what an 'en' script version gets
    en = conn.execute(
        "SELECT * FROM parecer.create_script_version('acme-telecom', 'quality',"
        " 'Check whether the agent understood and solved the customer''s problem.',"
        " topics => ARRAY['internet', 'cancellation', 'billing'], language => 'en')"
    ).fetchone()
    assert en is not None and en["version"] == 1
    en_item = _claim_for(conn, en["script_id"])
    p_en = conn.execute(
        "SELECT instructions FROM parecer.prompt_for(%s)", (en_item["analysis_id"],)
    ).fetchone()
    assert p_en is not None
    assert p_en["instructions"] == one_block("report-schema.md", "prompt-instructions")
