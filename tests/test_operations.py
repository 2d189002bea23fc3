"""Operating parecer: parecer.metrics / `parecer metrics`, the runner's /metrics,
`parecer doctor` finding planted problems, `parecer purge`, status and spend in 80 columns."""

from __future__ import annotations

import json
import socket
import urllib.request
from typing import Any

import psycopg
from click.testing import CliRunner

from parecer import db, metrics
from parecer.cli import main
from parecer.devkit.standin import Standin, StandinConfig
from parecer.runner import run

from .factories import make_client, make_session
from .helpers import one
from .test_runner import cfg, make_run


def cli(url: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, list(args), env={"PARECER_DATABASE_URL": url, **(env or {})})


def test_metrics_view_and_command(conn: psycopg.Connection[Any], db_url: str) -> None:
    make_run(conn, 5)
    items = conn.execute("SELECT * FROM parecer.claim('w1', max_items => 2)").fetchall()
    conn.execute(
        "SELECT parecer.mark_failed(%s, %s, 'boom', retryable => false)",
        (items[0]["analysis_id"], items[0]["lease_token"]),
    )
    m = one(conn, "SELECT * FROM parecer.metrics")
    assert (m["pending"], m["retrying"], m["processing"], m["failed_terminal"]) == (3, 0, 1, 1)
    assert m["workers_with_leases"] == 1 and m["done_last_hour"] == 0
    assert m["oldest_pending_age_seconds"] >= 0 and m["last_done_age_seconds"] is None
    r = cli(db_url, "metrics")
    assert r.exit_code == 0, r.output
    assert "parecer_queue_pending 3.0" in r.output
    assert "parecer_queue_failed_terminal 1.0" in r.output
    assert "# TYPE parecer_queue_oldest_pending_age_seconds gauge" in r.output
    assert json.loads(cli(db_url, "metrics", "--json").output)["processing"] == 1
    # readable by parecer_reader
    conn.execute("SET ROLE parecer_reader")
    assert one(conn, "SELECT pending FROM parecer.metrics")["pending"] == 3
    conn.execute("RESET ROLE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_runner_metrics_are_served(conn: psycopg.Connection[Any], db_url: str) -> None:
    make_run(conn, 12)

    def sample(name: str, **labels: str) -> float:
        from prometheus_client import REGISTRY

        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = sample("parecer_items_total", outcome="done")
    calls = sample("parecer_model_latency_seconds_count")
    acked = sample("parecer_ack_batch_items_sum")
    claimed = sample("parecer_claim_batch_items_sum")
    with Standin(StandinConfig(latency_ms=(5, 20), seed=2)) as s:
        stats = run(cfg(db_url, s, concurrency=4, metrics=True, pool_max=2))
    assert stats.outcomes["done"] == 12
    assert sample("parecer_items_total", outcome="done") - before == 12
    assert sample("parecer_model_latency_seconds_count") - calls == 12
    # every report went through mark_done_many
    assert sample("parecer_ack_batch_items_sum") - acked == 12
    assert sample("parecer_claim_batch_items_sum") - claimed == 12  # every item, in its claim
    assert sample("parecer_tokens_total", kind="input") > 0
    port = _free_port()
    metrics.serve(port, addr="127.0.0.1")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in (
        'parecer_items_total{outcome="done"}',
        "parecer_model_latency_seconds_bucket",
        "parecer_tokens_total",
        "parecer_in_flight",
        "parecer_lease_extensions_total",
        "parecer_ack_batch_items_count",  # the runner's reports went through mark_done_many
        "parecer_claim_batch_items_count",
        "parecer_db_errors_total",
        "parecer_rate_limit_waits_total",
        "parecer_queue_pending",  # refreshed from parecer.metrics by the runner
    ):
        assert name in text, name
    queue = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("parecer_queue_")
    }
    # read through the runner's pool while it ran: 12 items, none failed
    assert queue["parecer_queue_pending"] + queue["parecer_queue_processing"] <= 12
    assert queue["parecer_queue_failed_terminal"] == 0


def _doctor(url: str, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    r = cli(url, "doctor", "--json", *args)
    doc = json.loads(r.output)
    return r.exit_code, {c["check"]: c for c in doc["checks"]}


def test_doctor_finds_each_planted_problem(conn: psycopg.Connection[Any], db_url: str) -> None:
    make_client(conn, "acme")
    make_session(conn)
    code, checks = _doctor(db_url)
    assert code == 0, checks
    for name in ("connection", "migrations", "api files", "adapter", "settings", "runners"):
        assert checks[name]["status"] == "ok", checks[name]
    assert {"role parecer_admin", "role parecer_runner", "role parecer_reader"} <= set(checks)

    # the API files: a changed comment is drift
    conn.execute("COMMENT ON VIEW parecer.metrics IS 'changed by hand'")
    code, checks = _doctor(db_url)
    assert code == 5 and checks["api files"]["status"] == "fail"
    assert "view parecer.metrics" in checks["api files"]["detail"]
    assert checks["api files"]["fix"] == "run `parecer db migrate`"
    db.apply_api(db_url)

    # a function no db/api file defines (a helper an older release renamed, say): warned
    # about, not dropped (it may be the operator's own)
    conn.execute(
        "CREATE FUNCTION parecer._left_over(integer) RETURNS integer LANGUAGE sql AS 'SELECT 1'"
    )
    db.apply_api(db_url)  # as an older release's migrate left it: executable by its owner only
    code, checks = _doctor(db_url)
    assert code == 0 and checks["api files"]["status"] == "warn", checks["api files"]
    assert "parecer._left_over(integer)" in checks["api files"]["detail"]
    assert "DROP FUNCTION" in checks["api files"]["fix"]
    db.migrate(db_url)
    assert one(conn, "SELECT to_regprocedure('parecer._left_over(integer)') IS NOT NULL AS kept")[
        "kept"
    ]
    conn.execute("DROP FUNCTION parecer._left_over(integer)")
    assert _doctor(db_url)[1]["api files"]["status"] == "ok"

    # a migration not applied
    row = one(
        conn,
        "SELECT migration_hash, migration_id FROM _yoyo_migration ORDER BY applied_at_utc DESC LIMIT 1",
    )
    conn.execute("DELETE FROM _yoyo_migration WHERE migration_hash = %s", (row["migration_hash"],))
    code, checks = _doctor(db_url)
    assert code == 5 and checks["migrations"]["status"] == "fail"
    assert row["migration_id"] in checks["migrations"]["detail"]
    conn.execute(
        "INSERT INTO _yoyo_migration (migration_hash, migration_id, applied_at_utc) VALUES (%s, %s, now())",
        (row["migration_hash"], row["migration_id"]),
    )

    # an invalid setting
    conn.execute("UPDATE parecer._settings SET value = '0' WHERE name = 'max_attempts'")
    code, checks = _doctor(db_url)
    assert code == 5 and checks["settings"]["status"] == "fail"
    assert "max_attempts" in checks["settings"]["detail"]
    conn.execute("UPDATE parecer._settings SET value = NULL WHERE name = 'max_attempts'")

    # an unpriced model
    code, checks = _doctor(db_url, "--model", "acme-llm-9")
    assert code == 0 and checks["price acme-llm-9"]["status"] == "warn"
    assert "parecer prices set acme-llm-9" in checks["price acme-llm-9"]["fix"]

    # work due and no runner
    make_run(conn, 3)
    code, checks = _doctor(db_url)
    assert code == 5 and checks["runners"]["status"] == "fail"
    assert "parecer runner" in checks["runners"]["fix"]
    conn.execute("SELECT * FROM parecer.claim('w1', max_items => 1)")
    code, checks = _doctor(db_url)
    assert checks["runners"]["status"] == "ok"

    # the adapter replaced by the empty defaults
    conn.execute(
        "CREATE OR REPLACE VIEW parecer.source_sessions AS SELECT NULL::text AS session_id,"
        " NULL::text AS client_id, NULL::text AS contact_id, NULL::timestamptz AS ended_at WHERE false"
    )
    code, checks = _doctor(db_url)
    assert code == 5 and checks["adapter"]["status"] == "fail"
    assert "parecer db adapter" in checks["adapter"]["fix"]

    # text output: one line per check, the fix under it
    r = cli(db_url, "doctor")
    assert (
        r.exit_code == 5
        and "FAIL  adapter:" in r.output
        and "      fix: install an adapter" in r.output
    )


def test_purge_keeps_what_budgets_and_the_newest_generation_need(
    conn: psycopg.Connection[Any], db_url: str
) -> None:
    make_run(conn, 4)  # tag v1
    conn.execute(
        "SELECT * FROM parecer.start_run('acme', 'qa', analysis_version_tag => 'v2', max_sessions => 4)"
    )
    # plant history: every item done, v1 long ago, v2 recently; old attempts, spend, alerts
    conn.execute(
        "UPDATE parecer.analyses SET status = 'done', report = '{}', processed_at ="
        " CASE analysis_version_tag WHEN 'v1' THEN now() - interval '400 days' ELSE now() END"
    )
    conn.execute(
        "INSERT INTO parecer._attempts (analysis_id, attempt, worker, claimed_at, finished_at, outcome)"
        " SELECT analysis_id, 1, 'w', now() - interval '400 days', now() - interval '400 days', 'failed'"
        " FROM parecer.analyses WHERE analysis_version_tag = 'v2'"
    )
    cid = one(conn, "SELECT client_id FROM parecer.analyses LIMIT 1")["client_id"]
    conn.execute(
        "INSERT INTO parecer._spend (client_id, client_slug, day, cost_usd) VALUES"
        " (%s, 'acme', current_date - 400, 1), (%s, 'acme', current_date - 399, 1), (%s, 'acme', current_date, 2)",
        (cid, cid, cid),
    )
    conn.execute(
        "INSERT INTO parecer._budget_alerts (client_id, period, period_start, threshold, spent_usd, budget_usd)"
        " VALUES (%s, 'day', current_date - 400, 80, 1, 1), (%s, 'day', current_date, 80, 1, 1)",
        (cid, cid),
    )
    expected = {
        "attempts": 4,
        "analyses of past generations": 4,
        "spend days": 2,
        "budget alerts": 1,
    }
    r = cli(db_url, "purge", "--older-than", "180d", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["deleted"] == expected
    assert (
        one(conn, "SELECT count(*) AS n FROM parecer.analyses")["n"] == 8
    )  # dry run: nothing gone
    r = cli(db_url, "purge", "--older-than", "180d", "--batch-size", "1")
    assert r.exit_code == 0, r.output
    assert r.output.startswith(
        "deleted (older than 180 days): 4 attempts, 4 analyses of past generations"
    )
    tags = conn.execute(
        "SELECT DISTINCT analysis_version_tag AS t FROM parecer.analyses"
    ).fetchall()
    assert tags == [{"t": "v2"}]
    assert one(conn, "SELECT count(*) AS n FROM parecer._attempts")["n"] == 0
    assert one(conn, "SELECT sum(cost_usd) AS c FROM parecer._spend")["c"] == 2  # this month kept
    assert one(conn, "SELECT count(*) AS n FROM parecer._budget_alerts")["n"] == 1
    again = json.loads(cli(db_url, "purge", "--older-than", "180d", "--json").output)
    assert set(again["deleted"].values()) == {0}
    r = cli(db_url, "purge", "--older-than", "1h")
    assert r.exit_code == 1 and "[PR010]" in r.output


def test_status_and_spend_fit_80_columns(conn: psycopg.Connection[Any], db_url: str) -> None:
    slug = "cliente-com-um-nome-bem-comprido-para-testar-colunas"
    make_client(conn, slug)
    key = "roteiro-de-qualidade-com-uma-chave-muito-longa-mesmo-x"
    conn.execute("SELECT parecer.create_script_version(%s, %s, 'x', activate => true)", (slug, key))
    for _ in range(3):
        make_session(conn, client=slug)
    conn.execute(
        "SELECT parecer.start_run(%s, %s, min_messages => 1, max_sessions => 3)", (slug, key)
    )
    cid = one(conn, "SELECT client_id FROM parecer.analyses LIMIT 1")["client_id"]
    conn.execute(
        "INSERT INTO parecer._spend (client_id, client_slug, day, attempts, input_tokens, cached_input_tokens,"
        " output_tokens, cost_usd) VALUES (%s, %s, current_date, 987654321, 123456789012, 23456789012,"
        " 3456789012, 123456.789)",
        (cid, slug),
    )
    conn.execute("SELECT parecer.set_budget(%s, 250000, 9999999)", (slug,))
    for args in (["status"], ["spend"], ["spend", "--monthly"]):
        r = cli(db_url, *args, env={"COLUMNS": "80"})
        assert r.exit_code == 0, r.output
        lines = r.output.splitlines()
        assert all(len(x) <= 80 for x in lines), [x for x in lines if len(x) > 80]
        assert "…" not in r.output
        assert slug in r.output
    st = cli(db_url, "status", env={"COLUMNS": "80"}).output
    assert key in st and "123456.7890" in st and "250000.0000" in st
    sp = cli(db_url, "spend", env={"COLUMNS": "80"}).output
    assert "123456789012" in sp and "3456789012" in sp and "123456.7890" in sp
