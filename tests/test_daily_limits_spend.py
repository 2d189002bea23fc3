"""Seed 003's limits and spend: requests per day, the installation's budgets, a
display currency, and the month's projection."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from parecer import db, errors
from parecer.cli import main

from .factories import make_script, make_session, report_for
from .helpers import one


def _done_with_usage(conn: psycopg.Connection[Any], client: str, output_tokens: int) -> None:
    """One done item of client costing output_tokens * 2 USD / 1M (gpt-5-mini)."""
    script = make_script(conn, client=client)
    s = make_session(conn, client)
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", ([s.session_id], script["script_id"]))
    item = one(conn, "SELECT * FROM parecer.claim('w', client_slug => %s)", (client,))
    conn.execute(
        "SELECT parecer.mark_done(%s, %s, %s, 'gpt-5-mini', %s, %s)",
        (
            item["analysis_id"],
            item["lease_token"],
            json.dumps(report_for(s)),
            "a" * 64,
            json.dumps({"input_tokens": 0, "output_tokens": output_tokens}),
        ),
    )


def test_requests_per_day_are_counted_and_refused_until_the_next_day(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute("SELECT parecer.set_setting('budget_timezone', 'America/Sao_Paulo')")
    row = one(conn, "SELECT * FROM parecer.set_rate_limit('k:m', 1000, 1000000, rpd => 2)")
    assert (row["rpd"], row["requests_today"], row["is_default"]) == (2, 0, False)
    for _ in range(2):
        assert one(conn, "SELECT * FROM parecer.acquire_rate('k:m', 10)")["granted"] is True
    g = one(conn, "SELECT * FROM parecer.acquire_rate('k:m', 10)")
    # refused until the next day begins in the budget time zone (the runner pauses the key)
    until = one(
        conn,
        "SELECT extract(epoch FROM (((clock_timestamp() AT TIME ZONE 'America/Sao_Paulo')::date + 1)"
        "::timestamp AT TIME ZONE 'America/Sao_Paulo') - clock_timestamp())::float8 AS s",
    )["s"]
    assert g["granted"] is False and abs(g["wait_seconds"] - until) < 5
    assert one(conn, "SELECT requests_today, granted FROM parecer.rate_limits") == {
        "requests_today": 2,
        "granted": 2,
    }
    # a new day: the counter starts again
    conn.execute("UPDATE parecer._rate_limits SET day = day - 1")
    assert one(conn, "SELECT * FROM parecer.acquire_rate('k:m', 10)")["granted"] is True
    assert one(conn, "SELECT requests_today FROM parecer.rate_limits")["requests_today"] == 1


def test_default_rpd_applies_to_keys_without_their_own_and_zero_means_none(
    conn: psycopg.Connection[Any],
) -> None:
    for _ in range(3):  # default 0: no daily limit
        assert one(conn, "SELECT * FROM parecer.acquire_rate('k:m', 10)")["granted"] is True
    assert one(conn, "SELECT rpd, requests_today FROM parecer.rate_limits") == {
        "rpd": 0,
        "requests_today": 3,
    }
    conn.execute("SELECT parecer.set_setting('default_rpd', '3')")
    g = one(conn, "SELECT * FROM parecer.acquire_rate('k:m', 10)")
    assert g["granted"] is False and g["wait_seconds"] > 1
    with pytest.raises(psycopg.Error) as e:
        conn.execute("SELECT * FROM parecer.set_rate_limit('k:m', rpd => 0)")
    assert errors.sqlstate(e.value) == errors.INVALID_ARGUMENT


def test_a_refused_minute_request_does_not_count_for_the_day(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute("SELECT * FROM parecer.set_rate_limit('k:m', rpm => 1, tpm => 1000000, rpd => 5)")
    assert one(conn, "SELECT * FROM parecer.acquire_rate('k:m', 10)")["granted"] is True
    assert one(conn, "SELECT * FROM parecer.acquire_rate('k:m', 10)")["granted"] is False
    assert one(conn, "SELECT requests_today FROM parecer.rate_limits")["requests_today"] == 1


def test_global_budget_is_fail_closed_for_every_client_and_alerts_once(db_url: str) -> None:
    with db.connect(db_url) as listener, db.connect(db_url) as c:
        listener.execute("LISTEN parecer_budget")
        b = one(c, "SELECT * FROM parecer.set_global_budget(daily_usd => 0.12)")
        assert (float(b["daily_budget_usd"]), b["monthly_budget_usd"], b["blocked_reason"]) == (
            0.12,
            None,
            None,
        )
        _done_with_usage(c, "acme", 50_000)  # 0.10 USD
        _done_with_usage(c, "beta", 10_000)  # 0.02: the installation is at 0.12
        g = one(c, "SELECT * FROM parecer.global_budget")
        assert float(g["spent_today_usd"]) == pytest.approx(0.12)
        assert g["blocked_reason"].startswith("installation daily budget reached")
        # neither client has a budget of its own, and neither gets work
        for client in ("acme", "beta"):
            sid = one(c, "SELECT script_id FROM parecer.resolve_script(%s, 'qa')", (client,))
            c.execute(
                "SELECT * FROM parecer.enqueue(%s, %s)",
                ([make_session(c, client).session_id], sid["script_id"]),
            )
        assert c.execute("SELECT * FROM parecer.claim('w', 10)").fetchall() == []
        assert one(c, "SELECT parecer.next_due() AS d")["d"] is None
        reasons = c.execute("SELECT blocked_reason FROM parecer.budgets").fetchall()
        assert all(r["blocked_reason"].startswith("installation daily") for r in reasons)
        # lifting it hands the work out again
        c.execute("SELECT * FROM parecer.set_global_budget(daily_usd => NULL)")
        assert len(c.execute("SELECT * FROM parecer.claim('w', 10)").fetchall()) == 2
        alerts = [json.loads(n.payload) for n in listener.notifies(timeout=0.5, stop_after=10)]
    assert [(a["client"], a["scope"], a["period"], a["threshold"]) for a in alerts] == [
        (None, "installation", "day", 80),
        (None, "installation", "day", 100),
    ]


def test_global_monthly_budget_and_invalid_amounts(conn: psycopg.Connection[Any]) -> None:
    _done_with_usage(conn, "acme", 50_000)
    conn.execute("SELECT * FROM parecer.set_global_budget(daily_usd => 5, monthly_usd => 0.1)")
    assert one(conn, "SELECT blocked_reason FROM parecer.global_budget")["blocked_reason"] == (
        "installation monthly budget reached: 0.1000 of 0.1 USD"
    )
    with pytest.raises(psycopg.Error) as e:
        conn.execute("SELECT * FROM parecer.set_global_budget(daily_usd => -1)")
    assert errors.sqlstate(e.value) == errors.INVALID_ARGUMENT


def test_exchange_rate_is_usd_or_the_display_currency(conn: psycopg.Connection[Any]) -> None:
    assert one(conn, "SELECT parecer.exchange_rate() AS r")["r"] == 1
    with pytest.raises(psycopg.Error) as e:
        conn.execute("SELECT parecer.exchange_rate('BRL')")
    assert errors.sqlstate(e.value) == errors.NO_EXCHANGE_RATE
    assert e.value.diag.message_hint and "display_currency" in e.value.diag.message_hint
    conn.execute("SELECT parecer.set_setting('display_currency', 'BRL')")
    conn.execute("SELECT parecer.set_setting('usd_exchange_rate', '5.5')")
    assert float(one(conn, "SELECT parecer.exchange_rate() AS r")["r"]) == 5.5
    assert float(one(conn, "SELECT parecer.exchange_rate('brl') AS r")["r"]) == 5.5
    assert one(conn, "SELECT parecer.exchange_rate('USD') AS r")["r"] == 1
    for name, bad in (("display_currency", "real"), ("usd_exchange_rate", "0")):
        with pytest.raises(psycopg.Error) as e:
            conn.execute("SELECT parecer.set_setting(%s, %s)", (name, bad))
        assert errors.sqlstate(e.value) == errors.BAD_SETTING


def test_projection_extrapolates_the_month_per_client_and_in_total(
    conn: psycopg.Connection[Any],
) -> None:
    empty = conn.execute("SELECT * FROM parecer.spend_projection()").fetchall()
    assert [(r["client_slug"], r["spent_month_usd"]) for r in empty] == [(None, 0)]
    _done_with_usage(conn, "acme", 50_000)  # 0.10
    _done_with_usage(conn, "beta", 25_000)  # 0.05
    conn.execute("SELECT parecer.set_setting('display_currency', 'BRL')")
    conn.execute("SELECT parecer.set_setting('usd_exchange_rate', '5')")
    rows = conn.execute("SELECT * FROM parecer.spend_projection()").fetchall()
    assert [r["client_slug"] for r in rows] == [None, "acme", "beta"]
    assert [float(r["spent_month_usd"]) for r in rows] == [0.15, 0.10, 0.05]
    for r in rows:
        exact = float(r["spent_month_usd"]) / float(r["days_elapsed"]) * r["days_in_month"]
        assert float(r["projected_month_usd"]) == pytest.approx(exact, rel=1e-3)
        assert float(r["projected_month_usd"]) >= float(r["spent_month_usd"])
        assert float(r["projected_today_usd"]) >= float(r["spent_today_usd"])
        assert r["currency_code"] == "BRL"
        assert float(r["spent_month"]) == pytest.approx(5 * float(r["spent_month_usd"]))
        assert float(r["projected_month"]) == pytest.approx(
            5 * float(r["projected_month_usd"]), abs=1e-3
        )
    usd = one(conn, "SELECT * FROM parecer.spend_projection('USD') WHERE client_slug IS NULL")
    assert usd["currency_code"] == "USD" and usd["spent_month"] == usd["spent_month_usd"]


def test_cli_spend_in_reais_projection_and_global_budget(db_url: str) -> None:
    with db.connect(db_url) as c:
        _done_with_usage(c, "acme", 50_000)  # 0.10 USD
        c.execute("SELECT parecer.set_setting('usd_exchange_rate', '5')")
        c.execute("SELECT parecer.set_setting('display_currency', 'BRL')")
    run = CliRunner()
    env = {"PARECER_DATABASE_URL": db_url}
    r = run.invoke(main, ["spend"], env=env)
    assert r.exit_code == 0, r.output
    assert "(BRL at 5 per USD" in r.output and "0.5000" in r.output
    r = run.invoke(main, ["spend", "--currency", "USD"], env=env)
    assert r.exit_code == 0 and "0.1000" in r.output and "(USD)" in r.output
    r = run.invoke(main, ["spend", "--currency", "EUR"], env=env)
    assert r.exit_code != 0 and "PR030" in r.output
    r = run.invoke(main, ["spend", "--projection"], env=env)
    assert r.exit_code == 0, r.output
    assert (
        "(all clients)" in r.output and "acme" in r.output and "spend projection (BRL)" in r.output
    )
    r = run.invoke(main, ["spend", "--projection", "--json"], env=env)
    assert [x["client_slug"] for x in json.loads(r.output)] == [None, "acme"]
    r = run.invoke(main, ["budgets", "global", "--daily", "1.85", "--monthly", "37.04"], env=env)
    assert r.exit_code == 0 and "37.04" in r.output, r.output
    r = run.invoke(main, ["budgets", "global", "--show", "--json"], env=env)
    assert float(json.loads(r.output)["daily_budget_usd"]) == 1.85
    r = run.invoke(main, ["limits", "set", "default:gpt-5-mini", "--rpd", "1000"], env=env)
    assert r.exit_code == 0 and "1000 rpd" in r.output, r.output
