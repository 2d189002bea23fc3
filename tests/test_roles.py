"""Least privilege: each role can do exactly what the documented matrix says."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from parecer import db

from .factories import make_script, make_session

U = str(uuid.uuid4())
CALLS: dict[str, str] = {
    "set_setting": "SELECT * FROM parecer.set_setting('max_attempts', '4')",
    "create_script_version": "SELECT * FROM parecer.create_script_version('acme', 'k2', 'texto')",
    "list_scripts": "SELECT * FROM parecer.list_scripts('acme')",
    "resolve_script": "SELECT * FROM parecer.resolve_script('acme', 'qa')",
    "activate_script": "SELECT * FROM parecer.activate_script('acme', 'qa', 1)",
    "eligible_sessions": "SELECT * FROM parecer.eligible_sessions('acme')",
    "enqueue": "SELECT * FROM parecer.enqueue('{}', 1)",
    "start_run": "SELECT * FROM parecer.start_run('acme', 'qa', dry_run => true)",
    "run_summary": "SELECT * FROM parecer.run_summary(1)",
    "claim": "SELECT * FROM parecer.claim('w', client_slug => 'nobody-here')",
    "claim_with_prompts": "SELECT * FROM parecer.claim_with_prompts('w', client_slug => 'nobody-here')",
    "extend_lease": f"SELECT * FROM parecer.extend_lease('{U}', '{U}')",
    "mark_done": f"SELECT * FROM parecer.mark_done('{U}', '{U}', '{{}}', 'm', 'h')",
    "mark_failed": f"SELECT * FROM parecer.mark_failed('{U}', '{U}', 'e')",
    "release": f"SELECT * FROM parecer.release('{U}', '{U}')",
    "prompt_for": f"SELECT * FROM parecer.prompt_for('{U}')",
    "prompts_for": f"SELECT * FROM parecer.prompts_for(ARRAY['{U}']::uuid[])",
    "session_transcript": "SELECT * FROM parecer.session_transcript('x')",
    "next_due": "SELECT * FROM parecer.next_due()",
    "retry_failed": "SELECT * FROM parecer.retry_failed(client_slug => 'acme')",
    "acquire_rate": "SELECT * FROM parecer.acquire_rate('k:m')",
    "report_rate": "SELECT * FROM parecer.report_rate('k:m')",
    "set_rate_limit": "SELECT * FROM parecer.set_rate_limit('k:m', 10)",
    "bind_rate_limit": "SELECT * FROM parecer.bind_rate_limit('k:m', '{acme}')",
    "set_model_price": "SELECT * FROM parecer.set_model_price('m', 1, 1, 1)",
    "set_budget": "SELECT * FROM parecer.set_budget('acme', 1)",
    "set_client_priority": "SELECT * FROM parecer.set_client_priority('acme', 2)",
    "set_run_backlog": "SELECT * FROM parecer.set_run_backlog(1)",
    "estimate_cost": "SELECT * FROM parecer.estimate_cost(1, 10)",
    "mark_done_many": "SELECT * FROM parecer.mark_done_many('[]')",
    "insights": "SELECT parecer.insights('acme')",
    "insight_sessions": "SELECT * FROM parecer.insight_sessions('acme')",
    "doctor": "SELECT * FROM parecer.doctor()",
    "purge": "SELECT * FROM parecer.purge('1000 years')",
    "check_adapter": "SELECT * FROM parecer.check_adapter()",
    "leased_transcript": f"SELECT * FROM parecer.leased_transcript('{U}', '{U}')",
    "grant_client": "SELECT * FROM parecer.grant_client('parecer_runner', 'acme')",
    "revoke_client": "SELECT * FROM parecer.revoke_client('parecer_runner', 'acme')",
    "set_global_budget": "SELECT * FROM parecer.set_global_budget(10, 200)",
    "exchange_rate": "SELECT parecer.exchange_rate('USD')",
    "spend_projection": "SELECT * FROM parecer.spend_projection()",
    "open_batch": "SELECT * FROM parecer.open_batch(1, 'w')",
    "batch_items": "SELECT * FROM parecer.batch_items(1)",
    "batch_uploaded": "SELECT * FROM parecer.batch_uploaded(1, 'file-1')",
    "batch_submitted": "SELECT * FROM parecer.batch_submitted(1, 'batch_1')",
    "batch_progress": "SELECT * FROM parecer.batch_progress(1, 'completed')",
    "finish_batch": "SELECT * FROM parecer.finish_batch(1)",
    "list_batches": "SELECT * FROM parecer.list_batches()",
}
RELATIONS = [
    "reports",
    "attempts",
    "queue_status",
    "runs_overview",
    "settings",
    "analyses",
    "scripts",
    "runs",
    "run_items",
    "_attempts",
    "_settings",
    "source_clients",
    "source_sessions",
    "source_messages",
    "source_contact_tags",
    "source_message_senders",
    "source_session_metadata",
    "rate_limits",
    "model_prices",
    "budgets",
    "spend_daily",
    "spend_monthly",
    "run_costs",
    "client_status",
    "_rate_limits",
    "_model_prices",
    "_spend",
    "_client_policy",
    "_budget_alerts",
    "metrics",
    "stale_reports",
    "client_grants",
    "_client_grants",
    "_caller_scope",
    "global_budget",
    "_global_budget",
    "batches",
    "_batches",
    "_batch_items",
]

READER_VIEWS = {
    "reports",
    "attempts",
    "queue_status",
    "runs_overview",
    "settings",
    "rate_limits",
    "model_prices",
    "budgets",
    "spend_daily",
    "spend_monthly",
    "run_costs",
    "client_status",
    "metrics",
    "stale_reports",
    "global_budget",
    "batches",
}
MATRIX: dict[str, set[str]] = {
    "parecer_admin": {
        "source_clients",
        "set_setting",
        "create_script_version",
        "list_scripts",
        "resolve_script",
        "activate_script",
        "eligible_sessions",
        "enqueue",
        "start_run",
        "run_summary",
        "prompt_for",
        "prompts_for",
        "retry_failed",
        "set_rate_limit",
        "bind_rate_limit",
        "set_model_price",
        "set_budget",
        "set_client_priority",
        "set_run_backlog",
        "estimate_cost",
        "session_transcript",
        "insights",
        "insight_sessions",
        "doctor",
        "purge",
        "check_adapter",
        "grant_client",
        "revoke_client",
        "client_grants",
        "set_global_budget",
        "exchange_rate",
        "spend_projection",
    }
    | READER_VIEWS,
    "parecer_runner": {
        "claim",
        "claim_with_prompts",
        "extend_lease",
        "mark_done",
        "mark_done_many",
        "mark_failed",
        "release",
        "prompt_for",
        "prompts_for",
        "leased_transcript",
        "next_due",
        "acquire_rate",
        "report_rate",
        "open_batch",
        "batch_items",
        "batch_uploaded",
        "batch_submitted",
        "batch_progress",
        "finish_batch",
        "list_batches",
    },
    "parecer_reader": {
        "run_summary",
        "insights",
        "insight_sessions",
        "exchange_rate",
        "spend_projection",
    }
    | READER_VIEWS,
    "parecer_test_nobody": set(),
}


def allowed(conn: psycopg.Connection[Any], role: str, sql: str) -> bool:
    conn.execute("BEGIN")
    try:
        conn.execute(f"SET LOCAL ROLE {role}")
        conn.execute(sql)
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False
    except psycopg.Error:
        return True  # got past the privilege check into the function's own errors
    finally:
        conn.execute("ROLLBACK")


def test_role_matrix_covers_every_public_function(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT DISTINCT proname FROM pg_proc WHERE pronamespace = 'parecer'::regnamespace AND left(proname, 1) <> '_'"
    ).fetchall()
    assert {r["proname"] for r in rows} == set(CALLS)


def test_role_matrix(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'parecer_test_nobody') "
        "THEN CREATE ROLE parecer_test_nobody NOLOGIN; END IF; END $$"
    )
    make_script(conn)
    make_session(conn)
    matrix: dict[str, set[str]] = {}
    for role in MATRIX:
        got = {name for name, sql in CALLS.items() if allowed(conn, role, sql)}
        got |= {
            rel for rel in RELATIONS if allowed(conn, role, f"SELECT * FROM parecer.{rel} LIMIT 1")
        }
        matrix[role] = got
    names = list(CALLS) + RELATIONS
    print("\n" + " " * 22 + " ".join(f"{r[8:]:>8}" for r in MATRIX))
    for n in names:
        print(f"{n:>22}" + " ".join(f"{'yes' if n in matrix[r] else '-':>8}" for r in MATRIX))
    assert matrix == MATRIX


def test_runner_role_works_end_to_end(conn: psycopg.Connection[Any]) -> None:
    """A runner role can do its whole job, and nothing it must not."""
    script = make_script(conn)
    s = make_session(conn)
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", ([s.session_id], script["script_id"]))
    conn.execute("SET ROLE parecer_runner")
    item = conn.execute("SELECT * FROM parecer.claim('w')").fetchone()
    assert item is not None
    p = conn.execute("SELECT * FROM parecer.prompt_for(%s)", (item["analysis_id"],)).fetchone()
    assert p is not None and s.message_ids[0] in p["input"]
    conn.execute(
        "SELECT parecer.mark_failed(%s, %s, 'x')", (item["analysis_id"], item["lease_token"])
    )
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM chat.messages")
    conn.execute("RESET ROLE")


def test_security_definer_cannot_be_hijacked_through_search_path(db_url: str) -> None:
    fixed = "00000000-0000-0000-0000-000000000001"
    with db.connect(db_url) as c:
        script = make_script(c)
        s = make_session(c)
        c.execute("SELECT * FROM parecer.enqueue(%s, %s)", ([s.session_id], script["script_id"]))
        c.execute("CREATE SCHEMA evil")
        c.execute(
            f"CREATE FUNCTION evil.gen_random_uuid() RETURNS uuid LANGUAGE sql AS $$ SELECT '{fixed}'::uuid $$"
        )
        c.execute(
            "CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'epoch'::timestamptz $$"
        )
        c.execute("CREATE TABLE evil.analyses (analysis_id uuid)")
        c.execute("GRANT USAGE ON SCHEMA evil TO PUBLIC")
        c.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA evil TO PUBLIC")
        c.execute("SET search_path = evil, public")
        c.execute("SET ROLE parecer_runner")
        c.execute("CREATE TEMP TABLE source_messages (x int)")
        item = c.execute("SELECT * FROM parecer.claim('w')").fetchone()
        assert item is not None
        assert str(item["lease_token"]) != fixed
        assert item["lease_expires_at"].year > 2000
        p = c.execute("SELECT input FROM parecer.prompt_for(%s)", (item["analysis_id"],)).fetchone()
        assert p is not None and s.message_ids[0] in p["input"]
        t = c.execute(
            "SELECT * FROM parecer.leased_transcript(%s, %s)",
            (item["analysis_id"], item["lease_token"]),
        ).fetchall()
        assert [r["message_id"] for r in t] == s.message_ids
        json.dumps(str(item))
