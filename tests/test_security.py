"""Injection attempts do nothing but their literal meaning; logs leak nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from parecer import db, errors
from parecer.devkit.standin import Standin, StandinConfig

from .factories import make_client, make_script, make_session, report_for
from .helpers import table_checksum

EVIL = [
    "x'; DROP TABLE parecer.analyses; --",
    "acme' OR '1'='1",
    "$$; DROP SCHEMA parecer CASCADE; $$",
    "'); SELECT pg_sleep(10); --",
    "\\'; TRUNCATE parecer.scripts; --",
    "%_\\%",
]


@pytest.mark.parametrize("evil", EVIL)
def test_injection_through_text_arguments_is_literal(
    conn: psycopg.Connection[Any], evil: str
) -> None:
    make_client(conn, "acme")
    make_client(conn, evil)  # a client whose slug is the hostile text
    script = make_script(conn)
    s = make_session(conn, tags=[evil])
    before = table_checksum(conn)
    for sql, args in [
        ("SELECT * FROM parecer.eligible_sessions(%s)", (evil + "-nope",)),
        ("SELECT * FROM parecer.list_scripts(%s)", (evil + "-nope",)),
        ("SELECT * FROM parecer.resolve_script('acme', %s)", (evil,)),
        ("SELECT * FROM parecer.create_script_version('acme', %s, 'texto')", (evil,)),
        ("SELECT * FROM parecer.set_setting(%s, '1')", (evil,)),
        ("SELECT * FROM parecer.session_transcript(%s)", (evil,)),
        ("SELECT * FROM parecer.claim(%s, client_slug => %s)", ("w", evil)),
        ("SELECT * FROM parecer.grant_client(%s, 'acme')", (evil,)),
        ("SELECT * FROM parecer.grant_client('parecer_runner', %s)", (evil + "-nope",)),
        ("SELECT * FROM parecer.revoke_client(%s, %s)", (evil, evil)),
        ("SELECT * FROM parecer.insights(%s)", (evil + "-nope",)),
        ("SELECT * FROM parecer.bind_rate_limit(%s, '{acme}')", (evil,)),
        ("SELECT * FROM parecer.bind_rate_limit('k:m', %s)", ([evil + "-nope"],)),
        ("SELECT * FROM parecer.acquire_rate(%s)", (evil,)),
        ("SELECT * FROM parecer.report_rate(%s, retry_after_seconds => 1)", (evil,)),
    ]:
        try:
            conn.execute(sql, args)
        except psycopg.Error as exc:
            assert errors.sqlstate(exc) in errors.CODES, (sql, exc)
    assert table_checksum(conn) == before
    # the hostile slug is an ordinary client: a script under it works, literally
    row = conn.execute(
        "SELECT * FROM parecer.create_script_version(%s, 'qa', %s, topics => %s)",
        (evil, evil, [evil]),
    ).fetchone()
    assert row is not None and row["client_slug"] == evil and row["topics"] == [evil]
    # a tag named with the hostile text selects exactly the contact that has it
    got = conn.execute(
        "SELECT session_id FROM parecer.eligible_sessions('acme', tag_filter => %s)",
        (json.dumps({"mode": "any_of", "tags": [evil]}),),
    ).fetchall()
    assert got == [{"session_id": s.session_id}]
    # error text and report content are stored as given
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", ([s.session_id], script["script_id"]))
    item = conn.execute("SELECT * FROM parecer.claim('w')").fetchone()
    assert item is not None
    conn.execute(
        "SELECT parecer.mark_failed(%s, %s, %s)", (item["analysis_id"], item["lease_token"], evil)
    )
    assert conn.execute("SELECT error FROM parecer.attempts").fetchone() == {"error": evil.strip()}
    conn.execute("UPDATE parecer.analyses SET next_retry_at = now()")
    item = conn.execute("SELECT * FROM parecer.claim('w')").fetchone()
    assert item is not None
    r = report_for(s)
    r["summary"] = evil
    conn.execute(
        "SELECT parecer.mark_done(%s, %s, %s, 'm', %s)",
        (item["analysis_id"], item["lease_token"], json.dumps(r), "a" * 64),
    )
    assert conn.execute("SELECT report ->> 'summary' AS s FROM parecer.reports").fetchone() == {
        "s": evil
    }
    assert conn.execute("SELECT count(*) AS n FROM parecer.scripts").fetchone() == {"n": 2}


@pytest.mark.slow
def test_demo_logs_contain_no_transcript_prompt_or_key(db_url: str) -> None:
    """A full demo run (key set, pointed at the stand-in): stderr holds logs only, and they leak nothing."""
    key = "sk" + "-test-DEMO-SECRET-4f1c2e9a7b"  # fake; split so no scanner mistakes it for a key
    with db.connect(db_url) as c:  # retries after faults fall due within the test
        c.execute("SELECT parecer.set_setting('backoff_schedule', '{1 second}')")
    with Standin(
        StandinConfig(
            latency_ms=(5, 30),
            fault_rate=0.2,
            faults=("malformed", "ungrounded", "rate_limit"),
            seed=9,
        )
    ) as s:
        env = {
            **os.environ,
            "PARECER_DATABASE_URL": db_url,
            "OPENAI_API_KEY": key,
            "OPENAI_BASE_URL": s.url,
        }
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "parecer.cli",
                "demo",
                "--sessions",
                "80",
                "--max-sessions",
                "30",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "item done" in p.stderr and "run_summary" in p.stdout
    with db.connect(db_url) as c:
        bodies = [
            r["body"]
            for r in c.execute(
                "SELECT body FROM chat.messages WHERE length(body) > 25 ORDER BY id LIMIT 2000"
            ).fetchall()
        ]
        instructions = [
            r["instructions"]
            for r in c.execute("SELECT instructions FROM parecer.scripts").fetchall()
        ]
    assert key not in p.stdout + p.stderr
    leaked = [b for b in bodies if b in p.stderr]
    assert leaked == []
    assert all(
        line not in p.stderr
        for text in instructions
        for line in text.splitlines()
        if len(line) > 30
    )


@pytest.mark.slow
def test_demo_is_idempotent_on_a_kept_database(db_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PARECER_DATABASE_URL"] = db_url
    runs = [
        subprocess.run(
            [
                sys.executable,
                "-m",
                "parecer.cli",
                "demo",
                "--sessions",
                "60",
                "--max-sessions",
                "10",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[1].stderr[-2000:]
    assert "stand-in" in runs[0].stdout and "SYNTHETIC" in runs[0].stdout
    with db.connect(db_url) as c:
        assert c.execute("SELECT count(*) AS n FROM parecer.scripts").fetchone() == {"n": 1}
        assert c.execute("SELECT count(*) AS n FROM chat.sessions").fetchone() == {"n": 60}
        assert c.execute("SELECT count(*) AS n FROM parecer.reports").fetchone() == {"n": 20}


@pytest.mark.slow
def test_demo_on_the_embedded_default() -> None:
    """`parecer demo` with no database URL and no key: embedded PostgreSQL and the stand-in, two commands' worth."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "PARECER_DATABASE_URL", "OPENAI_BASE_URL")
    }
    p = subprocess.run(
        [sys.executable, "-m", "parecer.cli", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "embedded throwaway PostgreSQL" in p.stdout and "stand-in" in p.stdout
    summary = p.stdout[p.stdout.index("parecer.run_summary") :]
    assert "processed  60" in summary and "remaining  0" in summary
    report = json.loads(
        p.stdout[p.stdout.index("{", p.stdout.index("one report")) : p.stdout.rindex("}") + 1]
    )
    assert report["schema_version"] == "parecer.report.v1" and report["summary"].startswith(
        "[parecer-standin]"
    )
