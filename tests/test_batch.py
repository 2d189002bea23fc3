"""Batch API backlog mode end to end: PostgreSQL, the stand-in's Files and Batches
endpoints, the real openai SDK, `parecer batch submit` / `parecer batch poll`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from parecer import batch, db
from parecer.devkit.standin import Standin, StandinConfig
from parecer.runner import RunnerConfig, RunnerStats

from .factories import make_script, make_session
from .helpers import one, runner_config, table_checksum

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "sk" + "-test-batch-NEVER-LOG-0123456789"  # fake


def backlog_run(conn: psycopg.Connection[Any], n: int, *, backlog: bool = True) -> int:
    make_script(conn)
    texts = [f"Minha internet caiu de novo, mensagem {i}" for i in range(4)]
    for _ in range(n):
        make_session(conn, messages=4, texts=texts)
    r = one(
        conn,
        "SELECT * FROM parecer.start_run('acme', 'qa', min_messages => 1, max_sessions => %s,"
        " backlog => %s)",
        (n, backlog),
    )
    assert r["enqueued"] == n
    return int(r["run_id"])


def cfg(db_url: str, s: Standin, **kw: Any) -> RunnerConfig:
    return runner_config(
        db_url,
        s,
        KEY,
        **({"concurrency": 8, "request_timeout": 10.0, "worker_id": "batch-test"} | kw),
    )


def submit_and_poll(
    conn: psycopg.Connection[Any], db_url: str, s: Standin, n: int
) -> tuple[int, batch.BatchRow, RunnerStats]:
    """A backlog run of n sessions submitted as one batch and polled once: (run_id, the
    batch as the poll left it, the poll's stats)."""
    run_id = backlog_run(conn, n)
    asyncio.run(batch.submit(cfg(db_url, s), run_id, None))
    [b], stats = asyncio.run(batch.poll(cfg(db_url, s), run_id))
    return run_id, b, stats


@pytest.fixture
def standin() -> Iterator[Standin]:
    with Standin(StandinConfig(seed=5, batch_polls=2)) as s:
        yield s


def statuses(conn: psycopg.Connection[Any], run_id: int) -> dict[str, int]:
    rows = conn.execute(
        "SELECT a.status, count(*) AS n FROM parecer.analyses a"
        " JOIN parecer.run_items ri ON ri.analysis_id = a.analysis_id WHERE ri.run_id = %s"
        " GROUP BY 1",
        (run_id,),
    ).fetchall()
    return {r["status"]: r["n"] for r in rows}


def assert_done_once(conn: psycopg.Connection[Any], run_id: int, n: int) -> None:
    """Every item done, by exactly one attempt, reported once."""
    assert statuses(conn, run_id) == {"done": n}
    r = one(
        conn,
        "SELECT count(*) AS n, max(a.claims) AS claims, count(*) FILTER (WHERE a.usage ? 'batch') AS at_batch,"
        " (SELECT count(*) FROM parecer._attempts t JOIN parecer.run_items ri USING (analysis_id)"
        "   WHERE ri.run_id = %s) AS other_attempts"
        " FROM parecer.analyses a JOIN parecer.run_items ri ON ri.analysis_id = a.analysis_id"
        " WHERE ri.run_id = %s",
        (run_id, run_id),
    )
    assert (r["n"], r["claims"], r["at_batch"], r["other_attempts"]) == (n, 1, n, 0)


def test_backlog_run_of_500_sessions_through_the_batch_api(
    db_url: str, standin: Standin, capsys: pytest.CaptureFixture[str]
) -> None:
    with db.connect(db_url) as c:
        run_id = backlog_run(c, 500)
    t0 = time.monotonic()
    sent = asyncio.run(batch.submit(cfg(db_url, standin), run_id, None))
    assert [(b.status, b.items, b.in_flight) for b in sent] == [("submitted", 500, 500)]
    with db.connect(db_url) as c:
        assert statuses(c, run_id) == {"processing": 500}
        lease = one(
            c,
            "SELECT min(lease_expires_at - now()) AS left FROM parecer.analyses WHERE status = 'processing'",
        )
        assert lease["left"].total_seconds() > 25 * 3600  # the batch lease: window + margin
    rows, _ = asyncio.run(batch.poll(cfg(db_url, standin), run_id))  # the provider still runs it
    assert [r.status for r in rows] == ["submitted"]
    rows, stats = asyncio.run(batch.poll(cfg(db_url, standin), run_id))
    elapsed = time.monotonic() - t0
    [b] = rows
    assert (b.status, b.provider_status, b.items, b.done, b.failed, b.released, b.in_flight) == (
        "completed",
        "completed",
        500,
        500,
        0,
        0,
        0,
    )
    assert (b.request_total, b.request_completed, b.request_failed) == (500, 500, 0)
    assert stats.outcomes["done"] == 500
    st = standin.stats()
    assert (st["files_uploaded"], st["batches_created"], st["batch_lines"]) == (1, 1, 500)
    assert st["requests"] == 0  # no synchronous call
    with db.connect(db_url) as c:
        assert_done_once(c, run_id, 500)
        # Priced at the batch price: half of what the same usage costs synchronously.
        cost = one(
            c,
            "SELECT sum(a.cost_usd) AS batch, sum(parecer._cost(a.model, a.usage - 'batch')) AS sync,"
            " (SELECT sum(cost_usd) FROM parecer.spend_daily WHERE client_slug = 'acme') AS spent,"
            " (SELECT cost_usd FROM parecer.batches) AS batch_row"
            " FROM parecer.analyses a",
        )
        assert cost["batch"] > 0
        assert abs(cost["batch"] * 2 - cost["sync"]) < Decimal("0.00001")
        assert cost["spent"] == cost["batch"] == cost["batch_row"]
        report = one(c, "SELECT prompt_hash, usage FROM parecer.reports LIMIT 1")
        assert report["usage"]["batch"]["input_tokens"] == report["usage"]["input_tokens"] > 0
    with capsys.disabled():
        print(
            f"\n[batch] 500 sessions: submit + 2 polls in {elapsed:.1f}s;"
            f" cost {cost['batch']:.6f} USD at the batch price"
            f" ({cost['sync']:.6f} USD at the synchronous price)"
        )


def test_line_errors_fail_the_item_and_ungrounded_lines_get_the_repair_call(db_url: str) -> None:
    config = StandinConfig(
        seed=11,
        batch_line_fault_rate=0.5,
        batch_line_faults=("server_error", "ungrounded_once"),
    )
    with Standin(config) as s, db.connect(db_url) as c:
        run_id, b, stats = submit_and_poll(c, db_url, s, 30)
        faults = s.stats()["faults"]
        st = s.stats()
        assert faults["server_error"] > 0 and faults["ungrounded_once"] > 0
        # server_error lines: mark_failed (a retry later); ungrounded: one repair call, done.
        assert b.failed == faults["server_error"] == st["batch_line_errors"]
        assert b.done == 30 - faults["server_error"]
        assert st["repair_requests"] == st["requests"] == faults["ungrounded_once"]
        assert stats.outcomes["retrying"] == faults["server_error"]
        failed = c.execute(
            "SELECT error, retry_count, status FROM parecer.analyses WHERE status <> 'done'"
        ).fetchall()
        assert {(r["error"], r["retry_count"], r["status"]) for r in failed} == {
            ("batch line: provider error 500", 1, "pending")
        }
        # A repaired item's usage: the batch line at the batch price, the repair call at the standard price.
        mixed = one(
            c,
            "SELECT usage, cost_usd, parecer._cost(model, usage - 'batch') AS sync,"
            " parecer._cost(model, usage - 'batch') - parecer._cost(model, usage -> 'batch') / 2 AS expected"
            " FROM parecer.analyses WHERE (usage ->> 'calls')::int = 2 LIMIT 1",
        )
        assert mixed["usage"]["batch"]["input_tokens"] < mixed["usage"]["input_tokens"]
        assert abs(mixed["cost_usd"] - mixed["expected"]) < Decimal("0.0000001")


@pytest.mark.parametrize("outcome", ["expired", "failed"])
def test_a_batch_that_expires_or_fails_releases_its_items(db_url: str, outcome: str) -> None:
    with Standin(StandinConfig(batch_outcome=outcome)) as s, db.connect(db_url) as c:
        run_id, b, stats = submit_and_poll(c, db_url, s, 12)
        assert (b.status, b.released, b.done, b.failed, b.in_flight) == (outcome, 12, 0, 0, 0)
        rows = c.execute(
            "SELECT status, retry_count, releases, next_retry_at FROM parecer.analyses"
        ).fetchall()
        assert {tuple(r.values()) for r in rows} == {("pending", 0, 1, None)}
        claimed = c.execute("SELECT * FROM parecer.claim('w', 20)").fetchall()
        assert len(claimed) == 12  # claimable again, no attempt spent
        if outcome == "failed":
            assert b.error is not None and "stand_in_failed" in b.error


def test_a_batch_lease_that_runs_out_is_a_release_not_a_failure(db_url: str) -> None:
    with Standin(StandinConfig(batch_polls=5)) as s, db.connect(db_url) as c:
        run_id = backlog_run(c, 3)
        asyncio.run(batch.submit(cfg(db_url, s), run_id, None))
        c.execute("UPDATE parecer.analyses SET lease_expires_at = now() - interval '1 second'")
        c.execute("SELECT * FROM parecer.claim('w', 1)").fetchall()  # recovers expired leases first
        rows = c.execute(
            "SELECT t.outcome, t.error, a.retry_count, a.releases FROM parecer._attempts t"
            " JOIN parecer.analyses a USING (analysis_id)"
        ).fetchall()
        assert len(rows) == 3
        assert {(r["outcome"], r["retry_count"], r["releases"]) for r in rows} == {
            ("released", 0, 1)
        }
        assert all(r["error"].startswith("batch lease expired") for r in rows)
        # The batch, when it ends, stores nothing for items it no longer holds.
        [b] = c.execute("SELECT * FROM parecer.list_batches()").fetchall()
        assert b["in_flight"] == 0


# ---- crashes: the CLI killed at each step, then `parecer batch poll`


def cli(
    db_url: str, s: Standin, *args: str, crash: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": s.url,
        "PARECER_LOG_FORMAT": "json",
    }
    # Killed at a step: the CLI run by tests/crash_cli.py, which sets batch.checkpoint_hook.
    cmd = ["-m", "tests.crash_cli", crash] if crash else ["-m", "parecer.cli"]
    return subprocess.run(
        [sys.executable, *cmd, "--database-url", db_url, "batch", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("crash", "uploads"),
    [("after_upload", 2), ("after_upload_recorded", 1), ("after_create", 1)],
)
def test_submit_killed_at_each_step_loses_nothing(
    db_url: str, standin: Standin, crash: str, uploads: int
) -> None:
    with db.connect(db_url) as c:
        run_id = backlog_run(c, 40)
    p = cli(db_url, standin, "submit", str(run_id), crash=crash)
    assert p.returncode == -9, p.stderr
    assert KEY not in p.stderr + p.stdout
    with db.connect(db_url) as c:
        assert statuses(c, run_id) == {"processing": 40}  # held by the batch, not lost
    for _ in range(3):  # resume (re-upload / find the provider batch), then poll to the end
        p = cli(db_url, standin, "poll", str(run_id), "--json")
        assert p.returncode == 0, p.stderr
    st = standin.stats()
    assert (st["files_uploaded"], st["batches_created"], st["batch_lines"]) == (uploads, 1, 40)
    with db.connect(db_url) as c:
        assert_done_once(c, run_id, 40)
        b = one(c, "SELECT * FROM parecer.batches")
        assert (b["status"], b["done"]) == ("completed", 40)


def test_poll_killed_while_storing_results_loses_nothing_and_stores_nothing_twice(
    db_url: str,
) -> None:
    with Standin(StandinConfig(batch_polls=1)) as s:
        with db.connect(db_url) as c:
            run_id = backlog_run(c, 60)
        assert cli(db_url, s, "submit", str(run_id)).returncode == 0
        p = cli(db_url, s, "poll", str(run_id), crash="mid_ingest:20")
        assert p.returncode == -9, p.stderr
        with db.connect(db_url) as c:
            mid = statuses(c, run_id)
            assert 20 <= mid.get("done", 0) < 60 and sum(mid.values()) == 60
            b = one(c, "SELECT * FROM parecer.batches")
            assert b["status"] == "ingesting"
        p = cli(db_url, s, "poll", str(run_id), "--json")
        assert p.returncode == 0, p.stderr
        assert s.stats()["batch_lines"] == 60  # the provider ran each line once
        with db.connect(db_url) as c:
            assert_done_once(c, run_id, 60)


# ---- the SQL API's refusals


def test_batch_functions_refuse_with_their_codes_and_change_nothing(db_url: str) -> None:
    with db.connect(db_url) as c:
        fresh = backlog_run(c, 2, backlog=False)
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT * FROM parecer.open_batch(%s, 'w')", (fresh,))
        assert e.value.sqlstate == "PR021"
        backlog = one(
            c,
            "SELECT (parecer.start_run('acme', 'qa', min_messages => 1, backlog => true,"
            " force_reprocess => true)).run_id AS id",
        )["id"]
        cases = [
            ("SELECT * FROM parecer.open_batch(%s, 'w')", (999,), "PR012"),
            ("SELECT * FROM parecer.open_batch(%s, 'w', 0)", (backlog,), "PR010"),
            ("SELECT * FROM parecer.open_batch(%s, '')", (backlog,), "PR010"),
            ("SELECT * FROM parecer.batch_items(%s)", (42,), "PR019"),
            ("SELECT * FROM parecer.finish_batch(%s)", (42,), "PR019"),
        ]
        for sql, args, code in cases:
            before = table_checksum(c)
            with pytest.raises(psycopg.Error) as e:
                c.execute(sql, args)
            assert e.value.sqlstate == code, sql
            assert e.value.diag.message_hint
            assert table_checksum(c) == before
        b = one(c, "SELECT * FROM parecer.open_batch(%s, 'w', 1)", (backlog,))
        assert (b["status"], b["items"]) == ("preparing", 1)
        state_cases = [
            ("SELECT * FROM parecer.batch_submitted(%s, 'batch_x')", "PR020"),
            ("SELECT * FROM parecer.batch_progress(%s, 'completed')", "PR020"),
            ("SELECT * FROM parecer.batch_uploaded(%s, '')", "PR010"),
        ]
        for sql, code in state_cases:
            before = table_checksum(c)
            with pytest.raises(psycopg.Error) as e:
                c.execute(sql, (b["batch_id"],))
            assert e.value.sqlstate == code, sql
            assert table_checksum(c) == before
        one(c, "SELECT * FROM parecer.batch_uploaded(%s, 'file-1')", (b["batch_id"],))
        one(
            c,
            "SELECT * FROM parecer.batch_submitted(%s, 'batch_1', 'validating')",
            (b["batch_id"],),
        )
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT * FROM parecer.finish_batch(%s)", (b["batch_id"],))
        assert e.value.sqlstate == "PR020"  # still the provider's
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT * FROM parecer.batch_progress(%s, 'done')", (b["batch_id"],))
        assert e.value.sqlstate == "PR010"
        # The second backlog item is still claimable by a runner or another batch.
        assert len(c.execute("SELECT * FROM parecer.claim('w', 5)").fetchall()) == 1


def test_isolation_applies_to_batches(db_url: str) -> None:
    with db.connect(db_url) as c:
        run_id = backlog_run(c, 3)
        c.execute("SELECT parecer.set_setting('isolation', 'on')")
        b = one(c, "SELECT * FROM parecer.open_batch(%s, 'w', 1)", (run_id,))
        for role in ("batch_other", "batch_acme"):
            c.execute(f"DROP ROLE IF EXISTS {role}")
            c.execute(f"CREATE ROLE {role} IN ROLE parecer_runner")
        c.execute("SELECT parecer.grant_client('batch_acme', 'acme')")
        try:
            with c.transaction():
                c.execute("SET LOCAL ROLE batch_other")
                for sql, arg, code in [
                    ("SELECT * FROM parecer.open_batch(%s, 'w')", run_id, "PR012"),
                    ("SELECT * FROM parecer.batch_items(%s)", b["batch_id"], "PR019"),
                ]:
                    with pytest.raises(psycopg.Error) as e, c.transaction():
                        c.execute(sql, (arg,))
                    assert e.value.sqlstate == code
                assert c.execute("SELECT * FROM parecer.list_batches()").fetchall() == []
            with c.transaction():
                c.execute("SET LOCAL ROLE batch_acme")
                assert len(c.execute("SELECT * FROM parecer.list_batches()").fetchall()) == 1
                got = one(c, "SELECT * FROM parecer.open_batch(%s, 'w')", (run_id,))
                assert got["items"] == 2
        finally:
            for role in ("batch_other", "batch_acme"):
                c.execute("SELECT parecer.revoke_client(%s, 'acme')", (role,))
                c.execute(f"DROP ROLE IF EXISTS {role}")


def test_set_model_price_keeps_or_sets_the_batch_price_factor(db_url: str) -> None:
    with db.connect(db_url) as c:
        r = one(c, "SELECT * FROM parecer.set_model_price('m-test', 1, 0.1, 4)")
        assert r["batch_price_factor"] == Decimal("0.5")
        r = one(
            c,
            "SELECT * FROM parecer.set_model_price('m-test', 1, 0.1, 4, batch_price_factor => 0.6)",
        )
        assert r["batch_price_factor"] == Decimal("0.6")
        r = one(c, "SELECT * FROM parecer.set_model_price('m-test', 2, 0.1, 4)")
        assert (r["input_usd_per_mtok"], r["batch_price_factor"]) == (2, Decimal("0.6"))
        with pytest.raises(psycopg.Error) as e:
            c.execute(
                "SELECT * FROM parecer.set_model_price('m-test', 1, 0.1, 4, batch_price_factor => 2)"
            )
        assert e.value.sqlstate == "PR010"
        usage = '{"input_tokens": 1000000, "output_tokens": 1000000, "batch": {"input_tokens": 1000000, "output_tokens": 0}}'
        # 2 USD input at 0.6 + 4 USD output at the standard price
        assert one(c, "SELECT parecer._cost('m-test', %s::jsonb) AS usd", (usage,))[
            "usd"
        ] == Decimal("5.2")


def test_two_polls_at_once_work_on_a_batch_one_at_a_time(db_url: str) -> None:
    with Standin(StandinConfig(batch_polls=1)) as s, db.connect(db_url) as c:
        run_id = backlog_run(c, 20)
        one(c, "SELECT * FROM parecer.open_batch(%s, 'crashed-submit')", (run_id,))  # then killed

        async def both() -> list[Any]:
            return list(
                await asyncio.gather(
                    batch.poll(cfg(db_url, s), run_id), batch.poll(cfg(db_url, s), run_id)
                )
            )

        asyncio.run(both())
        asyncio.run(batch.poll(cfg(db_url, s), run_id))  # whatever the busy one skipped
        st = s.stats()
        assert (st["files_uploaded"], st["batches_created"], st["batch_lines"]) == (1, 1, 20)
        assert_done_once(c, run_id, 20)


def test_a_cancelled_batch_releases_its_items(db_url: str) -> None:
    import openai

    with Standin(StandinConfig(batch_polls=5)) as s, db.connect(db_url) as c:
        run_id = backlog_run(c, 5)
        [b] = asyncio.run(batch.submit(cfg(db_url, s), run_id, None))
        assert b.provider_batch_id is not None
        with openai.OpenAI(api_key=KEY, base_url=s.url) as client:
            assert client.batches.cancel(b.provider_batch_id).status == "cancelling"
        [done], _ = asyncio.run(batch.poll(cfg(db_url, s), run_id))
        assert (done.status, done.released, done.done) == ("cancelled", 5, 0)
        assert statuses(c, run_id) == {"pending": 5}


def test_a_session_that_changed_while_the_batch_ran_is_sent_again(db_url: str) -> None:
    with Standin(StandinConfig(batch_polls=1)) as s, db.connect(db_url) as c:
        run_id = backlog_run(c, 3)
        asyncio.run(batch.submit(cfg(db_url, s), run_id, None))
        sid = one(c, "SELECT session_id FROM parecer.analyses ORDER BY session_id LIMIT 1")[
            "session_id"
        ]
        c.execute(
            "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, created_at, created_at_external)"
            " SELECT %s || '-late', %s, false, 'text', 'Mais uma coisa', now() - interval '2 days', now() - interval '2 days'",
            (sid, sid),
        )
        [b], _ = asyncio.run(batch.poll(cfg(db_url, s), run_id))
        assert (b.status, b.done, b.failed) == ("completed", 2, 1)
        row = one(c, "SELECT status, error FROM parecer.analyses WHERE session_id = %s", (sid,))
        assert row == {
            "status": "pending",
            "error": "transcript changed while the batch ran; sent again later",
        }


def test_error_lines_are_judged_as_the_runner_judges_the_same_answer(db_url: str) -> None:
    config = StandinConfig(
        seed=2, batch_line_fault_rate=1.0, batch_line_faults=("context_length", "rate_limit")
    )
    with Standin(config) as s, db.connect(db_url) as c:
        run_id, b, _ = submit_and_poll(c, db_url, s, 12)
        faults = s.stats()["faults"]
        assert faults["context_length"] > 0 and faults["rate_limit"] > 0
        # context length: the item's terminal failure; a 429: not its fault, released.
        assert (b.failed, b.released, b.done) == (faults["context_length"], faults["rate_limit"], 0)
        rows = c.execute(
            "SELECT status, retry_count, releases, error, next_retry_at IS NOT NULL AS later"
            " FROM parecer.analyses"
        ).fetchall()
        assert {
            (r["status"], r["retry_count"], r["releases"], r["error"], r["later"]) for r in rows
        } == {
            ("failed", 1, 0, "batch line: context length exceeded", False),
            ("pending", 0, 1, None, True),
        }


def test_batch_cancel_at_the_provider_or_before_it_was_sent(db_url: str) -> None:
    with Standin(StandinConfig(batch_polls=5)) as s, db.connect(db_url) as c:
        run_id = backlog_run(c, 6)
        [sent] = asyncio.run(batch.submit(cfg(db_url, s), run_id, None))
        assert sent.items == 6
        p = cli(db_url, s, "cancel", str(sent.batch_id), "--json")
        assert p.returncode == 0, p.stderr
        assert '"provider_status": "cancelled"' in p.stdout or "cancell" in p.stdout
        [done], _ = asyncio.run(batch.poll(cfg(db_url, s), run_id))
        assert (done.status, done.released) == ("cancelled", 6)
        # A batch never sent: finished here, its items back at once.
        fresh = one(c, "SELECT * FROM parecer.open_batch(%s, 'w')", (run_id,))
        assert fresh["items"] == 6
        row = asyncio.run(batch.cancel(cfg(db_url, s), fresh["batch_id"]))
        assert (row.status, row.released) == ("cancelled", 6)
        assert statuses(c, run_id) == {"pending": 6}
        assert s.stats()["batches_created"] == 1
        p = cli(db_url, s, "cancel", str(fresh["batch_id"]))
        assert p.returncode == 1 and "has ended (cancelled)" in p.stderr
        p = cli(db_url, s, "cancel", "999")
        assert p.returncode == 1 and "[PR019]" in p.stderr


# ---- an expired batch's partial output; error-file lines


def test_an_expired_batch_stores_the_lines_it_ran_and_releases_the_rest(db_url: str) -> None:
    config = StandinConfig(
        seed=7,
        batch_outcome="expired",
        batch_expired_done=0.5,
        batch_line_fault_rate=0.4,
        batch_line_faults=("server_error", "ungrounded_once"),
    )
    with Standin(config) as s, db.connect(db_url) as c:
        run_id, b, stats = submit_and_poll(c, db_url, s, 40)
        faults = s.stats()["faults"]
        assert faults["server_error"] > 0 and faults["ungrounded_once"] > 0
        # Both files: the lines run before expiry (results, and a 500 per server_error)
        # and the 20 lines never run (batch_expired, in the error file).
        assert b.output_file_id is not None and b.error_file_id is not None
        assert (b.status, b.provider_status) == ("expired", "expired")
        assert (b.request_total, b.request_failed) == (40, 20 + faults["server_error"])
        # The 20 run lines through mark_done's checks: a 500 is mark_failed, an ungrounded
        # or malformed answer gets the repair call; the 20 not run are released.
        assert (b.done, b.failed, b.released, b.in_flight) == (
            20 - faults["server_error"],
            faults["server_error"],
            20,
            0,
        )
        assert s.stats()["repair_requests"] == faults["ungrounded_once"]
        assert stats.outcomes["done"] == b.done
        assert statuses(c, run_id) == {"done": b.done, "pending": 40 - b.done}
        rows = c.execute(
            "SELECT a.retry_count, a.releases, a.error FROM parecer.analyses a WHERE status = 'pending'"
        ).fetchall()
        assert sorted((r["retry_count"], r["releases"], r["error"]) for r in rows) == sorted(
            [(0, 1, None)] * 20
            + [(1, 0, "batch line: provider error 500")] * faults["server_error"]
        )
        # Only the completed lines are billed, at the batch price.
        cost = one(
            c,
            "SELECT count(*) FILTER (WHERE usage ? 'batch') AS billed, sum(cost_usd) AS usd"
            " FROM parecer.analyses",
        )
        assert cost["billed"] == b.done and cost["usd"] == b.cost_usd > 0


def test_poll_killed_while_storing_an_expired_batch_loses_nothing(db_url: str) -> None:
    config = StandinConfig(batch_outcome="expired", batch_expired_done=0.5)
    with Standin(config) as s:
        with db.connect(db_url) as c:
            run_id = backlog_run(c, 60)
        assert cli(db_url, s, "submit", str(run_id)).returncode == 0
        p = cli(db_url, s, "poll", str(run_id), crash="mid_ingest:10")
        assert p.returncode == -9, p.stderr
        with db.connect(db_url) as c:
            mid = statuses(c, run_id)
            assert 10 <= mid.get("done", 0) < 30 and mid.get("processing", 0) == 60 - mid["done"]
            assert one(c, "SELECT status FROM parecer.batches")["status"] == "ingesting"
        p = cli(db_url, s, "poll", str(run_id), "--json")
        assert p.returncode == 0, p.stderr
        assert s.stats()["batch_lines"] == 60  # the provider ran each line at most once
        with db.connect(db_url) as c:
            b = one(c, "SELECT * FROM parecer.batches")
            assert (b["status"], b["done"], b["released"], b["failed"]) == ("expired", 30, 30, 0)
            assert statuses(c, run_id) == {"done": 30, "pending": 30}
            r = one(
                c,
                "SELECT max(claims) AS claims, count(*) FILTER (WHERE status = 'done' AND claims = 1) AS once,"
                " (SELECT count(*) FROM parecer.reports) AS reports FROM parecer.analyses",
            )
            assert (r["claims"], r["once"], r["reports"]) == (1, 30, 30)


def test_an_error_file_alone_is_read(db_url: str) -> None:
    """Every line an error (no output file): each judged from the error file."""
    config = StandinConfig(seed=3, batch_line_fault_rate=1.0, batch_line_faults=("server_error",))
    with Standin(config) as s, db.connect(db_url) as c:
        run_id, b, _ = submit_and_poll(c, db_url, s, 5)
        assert b.output_file_id is None and b.error_file_id is not None
        assert (b.status, b.failed, b.done, b.released) == ("completed", 5, 0, 0)


# ---- the SDK surface batch.py relies on: fails loudly when an SDK upgrade changes it


@pytest.mark.parametrize(
    ("status", "cls", "code"),
    [
        (400, "BadRequestError", "context_length_exceeded"),
        (401, "AuthenticationError", "invalid_api_key"),
        (403, "PermissionDeniedError", None),
        (404, "NotFoundError", None),
        (429, "RateLimitError", "insufficient_quota"),
        (500, "InternalServerError", None),
        (503, "InternalServerError", None),
        (418, "APIStatusError", None),
    ],
)
def test_status_error_is_the_sdks_own_exception(status: int, cls: str, code: str | None) -> None:
    import httpx2
    import openai

    body = {"error": {"message": "m", "type": "t", "param": None, "code": code}}
    e = batch.status_error(status, body, "http://127.0.0.1:1/v1/responses")
    assert type(e) is getattr(openai, cls)
    assert (e.status_code, e.code, e.message, e.body) == (
        status,
        code,
        f"Error code: {status} - m",
        body["error"],
    )
    # What the SDK's client raises for the same answer (its private mapping): the same.
    client = openai.OpenAI(api_key=KEY, base_url="http://127.0.0.1:1/v1")
    response = httpx2.Response(
        status, json=body, request=httpx2.Request("POST", "http://127.0.0.1:1/v1/responses")
    )
    sdk = client._make_status_error_from_response(response)
    assert (type(sdk), sdk.code, sdk.message, sdk.body) == (type(e), e.code, e.message, e.body)
    client.close()


def test_parse_response_builds_the_sdk_models_leniently() -> None:
    from openai.types.responses import ResponseOutputMessage

    body = {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": "gpt-x",
        "status": "completed",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "{}", "annotations": []}],
            }
        ],
        "usage": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
        "a_field_from_a_newer_api": {"x": 1},
    }
    r = batch.parse_response(body)
    assert r is not None
    assert isinstance(r.output[0], ResponseOutputMessage)  # nested objects built
    assert (r.output_text, r.usage and r.usage.input_tokens) == ("{}", 7)
    assert batch.parse_response({"id": "resp_2", "output": None}) is None


# ---- operating it: doctor, metrics, status


def test_doctor_metrics_and_status_show_batches_left_behind(db_url: str) -> None:
    from parecer import metrics

    from .test_operations import cli as parecer_cli

    def check(c: psycopg.Connection[Any]) -> dict[str, Any]:
        return one(c, "SELECT * FROM parecer.doctor() WHERE check_name = 'batches'")

    with db.connect(db_url) as c:
        run_id = backlog_run(c, 6)
        assert check(c) == {
            "check_name": "batches",
            "status": "ok",
            "detail": "0 open batch(es)",
            "fix": None,
        }
        crashed = one(c, "SELECT * FROM parecer.open_batch(%s, 'killed-submit', 3)", (run_id,))
        sent = one(c, "SELECT * FROM parecer.open_batch(%s, 'w', 3)", (run_id,))
        one(c, "SELECT * FROM parecer.batch_uploaded(%s, 'file-1')", (sent["batch_id"],))
        one(c, "SELECT * FROM parecer.batch_submitted(%s, 'batch_1')", (sent["batch_id"],))
        assert check(c)["detail"] == "2 open batch(es)"  # fresh: a submit may still be at it
        c.execute(
            "UPDATE parecer._batches SET updated_at = now() - interval '20 minutes 5 seconds'"
            " WHERE batch_id = %s",
            (crashed["batch_id"],),
        )
        c.execute(
            "UPDATE parecer._batches SET submitted_at = now() - interval '25 hours'"
            " WHERE batch_id = %s",
            (sent["batch_id"],),
        )
        r = check(c)
        assert r["status"] == "warn"
        assert r["detail"] == (
            f"no process works on batch {crashed['batch_id']} preparing for 20 min;"
            f" past the 24-hour window: batch {sent['batch_id']} submitted 25 h ago"
        )
        assert "parecer batch poll" in r["fix"]
        # A process holding the batch (the driver's advisory lock) is working on it.
        with db.connect(db_url) as other:
            other.execute(
                "SELECT pg_advisory_lock(%s, %s)", (batch.LOCK_CLASS, crashed["batch_id"])
            )
            assert check(c)["detail"] == (
                f"past the 24-hour window: batch {sent['batch_id']} submitted 25 h ago"
            )
        # metrics: open batches by status; status: one line
        m = one(c, "SELECT open_batches FROM parecer.metrics")
        assert m["open_batches"] == {"preparing": 1, "uploaded": 0, "submitted": 1, "ingesting": 0}
        text = metrics.queue_text(m)
        assert 'parecer_queue_open_batches{status="submitted"} 1.0' in text
        assert 'parecer_queue_open_batches{status="ingesting"} 0.0' in text
        out = parecer_cli(db_url, "status").output
        assert "batches open: 1 preparing, 1 submitted (`parecer batch poll`)" in out
        one(c, "SELECT * FROM parecer.finish_batch(%s)", (crashed["batch_id"],))
        one(c, "SELECT * FROM parecer.batch_progress(%s, 'expired')", (sent["batch_id"],))
        one(c, "SELECT * FROM parecer.finish_batch(%s)", (sent["batch_id"],))
        assert (check(c)["status"], check(c)["detail"]) == ("ok", "0 open batch(es)")
        assert "batches open" not in parecer_cli(db_url, "status").output


def test_a_batch_is_sized_to_the_budget_left(db_url: str) -> None:
    """A batch's cost is spent only when its results are stored, hours later: under a budget,
    open_batch takes no more items than the money left (less what the open batches' items
    are expected to cost) pays for at the past cost per analysis; at least one."""
    from .test_daily_limits_spend import _done_with_usage

    with db.connect(db_url) as c:
        run_id = backlog_run(c, 30)
        for _ in range(2):  # history: two analyses of acme at 1 USD each (gpt-5-mini output)
            _done_with_usage(c, "acme", 500_000)
        assert one(c, "SELECT parecer.estimate_cost(%s, 1) AS e", (script_of(c, run_id),))[
            "e"
        ] == Decimal("1.0000")
        c.execute("SELECT parecer.set_budget('acme', daily_usd => 12.5)")  # 2 spent: 10.5 left
        assert one(c, "SELECT * FROM parecer.open_batch(%s, 'w')", (run_id,))["items"] == 10
        # those ten are expected to cost 10 of the 10.5 left: the next batch gets one
        assert one(c, "SELECT * FROM parecer.open_batch(%s, 'w')", (run_id,))["items"] == 1
        c.execute("SELECT parecer.set_global_budget(daily_usd => 14)")  # 14 - 2 - 11 held: 1
        c.execute("SELECT parecer.set_budget('acme')")  # no client budget any more
        assert one(c, "SELECT * FROM parecer.open_batch(%s, 'w', 5)", (run_id,))["items"] == 1
        c.execute("SELECT parecer.set_global_budget()")  # no budget at all: what the run has
        assert one(c, "SELECT * FROM parecer.open_batch(%s, 'w')", (run_id,))["items"] == 30 - 12


def script_of(conn: psycopg.Connection[Any], run_id: int) -> int:
    return int(
        one(conn, "SELECT script_id FROM parecer.runs WHERE run_id = %s", (run_id,))["script_id"]
    )
