"""Real models, real chats, through the runner (issue 12): oversized sessions end
without stalling anyone, ungrounded citations get one repair call, a wrong key
stops ``runner --once`` at once, and honest quoting slips are accepted."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from parecer import db
from parecer import runner as runner_mod
from parecer.devkit.standin import Standin, StandinConfig
from parecer.devkit.standin.report import SLIPS
from parecer.runner import EXIT_PROVIDER_FATAL, Runner, RunnerConfig, run

from .factories import make_script, make_session
from .helpers import one, runner_config, running, until

Conn = psycopg.Connection[Any]
KEY = "sk" + "-test-resilience-0123456789"  # fake


def cfg(db_url: str, s: Standin, **kw: Any) -> RunnerConfig:
    return runner_config(
        db_url,
        s,
        KEY,
        **({"concurrency": 4, "once": True, "request_timeout": 20.0, "key_label": "t"} | kw),
    )


def add_messages(conn: Conn, session_id: str, n: int, body: str, start: int = 0) -> None:
    conn.execute(
        "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, created_at, created_at_external)"
        " SELECT %(s)s || '-x' || lpad(g::text, 5, '0'), %(s)s, g %% 2 = 1, 'text', %(b)s || ' ' || g,"
        "        now() - interval '3 days' + make_interval(secs => g),"
        "        now() - interval '3 days' + make_interval(secs => g)"
        " FROM generate_series(%(a)s, %(a)s + %(n)s - 1) g",
        {"s": session_id, "n": n, "b": body, "a": start},
    )


def start_run(conn: Conn) -> None:
    """Queue every session of acme (min_messages => 1: the one-message sessions too)."""
    r = one(
        conn,
        "SELECT * FROM parecer.start_run('acme', 'qa', max_sessions => 500, min_messages => 1)",
    )
    assert r["enqueued"] > 0


def items(conn: Conn) -> dict[str, dict[str, Any]]:
    return {
        r["session_id"]: dict(r)
        for r in conn.execute(
            "SELECT session_id, status, retry_count, releases, error, omitted_messages, claims, usage"
            " FROM parecer.analyses"
        ).fetchall()
    }


def no_pause(conn: Conn) -> None:
    paused = conn.execute(
        "SELECT limit_key, paused_until, pause_reason, throttled FROM parecer.rate_limits"
    ).fetchall()
    assert all(
        p["paused_until"] is None and p["pause_reason"] is None and p["throttled"] == 0
        for p in paused
    ), paused
    released = conn.execute("SELECT * FROM parecer.attempts WHERE outcome = 'released'").fetchall()
    assert released == []


def test_oversized_sessions_end_and_stall_no_one(db_url: str) -> None:
    with db.connect(db_url) as c:
        make_script(c)
        ordinary = [make_session(c).session_id for _ in range(50)]
        alone = make_session(c, messages=0).session_id  # one 600k-character message
        add_messages(c, alone, 1, "a" * 600_000)
        framed = make_session(c, messages=2).session_id  # 600k characters between two
        add_messages(c, framed, 1, "b" * 600_000)
        add_messages(c, framed, 1, "obrigado, resolveu", start=10)
        long = make_session(c, messages=0).session_id  # 5,000 messages
        add_messages(c, long, 5000, "Minha internet caiu de novo e ninguém resolve, " * 2)
        start_run(c)
    with Standin(StandinConfig(latency_ms=(1, 5))) as s:
        stats = run(cfg(db_url, s))
    with db.connect(db_url) as c:
        got = items(c)
        assert all(got[o]["status"] == "done" for o in ordinary)
        assert all(got[o]["omitted_messages"] == 0 for o in ordinary)
        assert got[alone]["status"] == "failed"
        assert got[alone]["error"].startswith("prompt too large")
        assert got[alone]["retry_count"] == 1, "failed at once: retryable => false"
        assert got[framed]["status"] == "done" and got[framed]["omitted_messages"] == 1
        assert got[long]["status"] == "done" and got[long]["omitted_messages"] > 1000
        assert all(i["releases"] == 0 for i in got.values())
        no_pause(c)
    assert stats.outcomes["done"] == 52 and stats.outcomes["failed"] == 1


def test_too_large_for_the_tokens_per_minute_fails_the_item_not_the_key(db_url: str) -> None:
    """Above parecer's tpm for the key: PR016 from acquire_rate. Above the provider's
    (a 429 "Request too large"): the item's failure too, and no pause reported."""
    with db.connect(db_url) as c:
        make_script(c)
        ordinary = [make_session(c).session_id for _ in range(10)]
        big = make_session(c, messages=0).session_id
        add_messages(c, big, 400, "Mensagem comprida do cliente sobre a cobrança " * 4)
        start_run(c)
        c.execute(
            "SELECT * FROM parecer.set_rate_limit('t:gpt-5-mini', rpm => 10000, tpm => 30000)"
        )
    with Standin(StandinConfig(latency_ms=(1, 5))) as s:
        stats = run(cfg(db_url, s))
    with db.connect(db_url) as c:
        got = items(c)
        assert all(got[o]["status"] == "done" for o in ordinary)
        assert got[big]["status"] == "failed"
        assert (
            got[big]["error"].startswith("prompt too large: ")
            and "t:gpt-5-mini" in got[big]["error"]
        )
        no_pause(c)
        # the provider's own limit: parecer lets it through, the provider answers 429
        c.execute(
            "SELECT * FROM parecer.set_rate_limit('t:gpt-5-mini', rpm => 10000, tpm => 10000000)"
        )
        c.execute("SELECT parecer.retry_failed(client_slug => 'acme')")
    with Standin(StandinConfig(latency_ms=(1, 5), tpm_limit=20000)) as s:
        stats = run(cfg(db_url, s))
        assert s.stats()["rate_limited"] == 1
    with db.connect(db_url) as c:
        got = items(c)
        assert got[big]["status"] == "failed"
        assert got[big]["error"].startswith("prompt too large: the provider says")
        no_pause(c)
    assert stats.outcomes == {"failed": 1}


@pytest.mark.parametrize("ack_window_ms", [0, 20])  # one mark_done per report, or batched
def test_an_ungrounded_citation_gets_one_repair_call_in_the_same_attempt(
    db_url: str, ack_window_ms: int
) -> None:
    with db.connect(db_url) as c:
        make_script(c)
        sid = make_session(c).session_id
        start_run(c)
    fault = {"x-standin-fault": "ungrounded_once"}
    with Standin(StandinConfig(latency_ms=(1, 5))) as s:
        stats = run(cfg(db_url, s, extra_headers=fault, ack_window_ms=ack_window_ms))
        st = s.stats()
    assert stats.outcomes["done"] == 1
    assert (st["completed"], st["repair_requests"], st["faults"]["ungrounded_once"]) == (2, 1, 2)
    with db.connect(db_url) as c:
        got = items(c)[sid]
        assert (got["status"], got["claims"], got["retry_count"]) == ("done", 1, 0)
        assert got["usage"]["calls"] == 2
        assert got["usage"]["input_tokens"] == st["input_tokens"], "both calls' usage, summed"
        assert got["usage"]["output_tokens"] == st["output_tokens"]
        assert c.execute("SELECT * FROM parecer.attempts WHERE outcome <> 'done'").fetchall() == []
        cost = one(c, "SELECT cost_usd FROM parecer.reports")["cost_usd"]
        assert cost is not None and cost > 0

        # repair_calls = 0: the ungrounded answer fails the attempt (paid for, counted)
        c.execute("SELECT parecer.set_setting('repair_calls', '0')")
        c.execute(
            "SELECT * FROM parecer.start_run('acme', 'qa', max_sessions => 1, force_reprocess => true)"
        )
    with Standin(StandinConfig(latency_ms=(1, 5))) as s:
        stats = run(cfg(db_url, s, extra_headers=fault, ack_window_ms=ack_window_ms))
        assert s.stats()["completed"] == 1 and s.stats()["repair_requests"] == 0
    with db.connect(db_url) as c:
        got = items(c)[sid]
        assert (got["status"], got["retry_count"]) == ("pending", 1)
        failed = one(c, "SELECT error, usage FROM parecer.attempts WHERE outcome = 'failed'")
        assert failed["error"].startswith("ungrounded evidence") and failed["usage"]["calls"] == 1


def test_runner_once_with_a_wrong_key_exits_3_at_once_spending_nothing(db_url: str) -> None:
    with db.connect(db_url) as c:
        make_script(c)
        for _ in range(12):
            make_session(c)
        start_run(c)
    with Standin(StandinConfig(require_key="sk-the-right-one")) as s:
        env = {
            **os.environ,
            "PARECER_DATABASE_URL": db_url,
            "OPENAI_BASE_URL": s.url,
            "OPENAI_API_KEY": KEY,
        }
        p = subprocess.run(
            [sys.executable, "-m", "parecer.cli", "runner", "--once", "--concurrency", "4"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        # at once: the calls in flight when the first 401 came back, none after it
        assert 1 <= s.stats()["unauthorized"] <= 4
    assert p.returncode == EXIT_PROVIDER_FATAL, p.stderr
    logs = p.stdout + p.stderr
    assert logs.count("fatal provider error") == 1, logs
    assert "OPENAI_API_KEY" in logs  # names the fix
    assert KEY not in logs
    with db.connect(db_url) as c:
        assert c.execute("SELECT * FROM parecer.attempts WHERE outcome = 'failed'").fetchall() == []
        got = items(c)
        assert {i["status"] for i in got.values()} == {"pending"}
        assert all(i["retry_count"] == 0 for i in got.values())


def test_a_refused_call_gives_back_the_tokens_it_reserved(db_url: str) -> None:
    """A call the provider refuses (here 401) used none of the tokens it took from the
    shared limiter's bucket: the runner gives them back, so the key's next calls (once it
    is fixed) do not wait for the refused calls' window. The bucket ends as full as it
    began (the default tpm's 6-second burst: 16,000 tokens), not short of the refused
    call's estimate."""
    with db.connect(db_url) as c:
        make_script(c)
        for _ in range(6):
            make_session(c)
        start_run(c)
        c.execute("SELECT parecer.set_setting('default_tpm', '160000')")  # the tests' is unlimited
    with Standin(StandinConfig(require_key="sk-the-right-one")) as s:
        # one call at a time: --once stops at the refusal, and a call of a larger batch still
        # waiting for its answer then is cancelled (whether a provider processed such a
        # call is unknown: its tokens stay taken)
        stats = run(cfg(db_url, s, concurrency=1))
        assert stats.fatal is not None and s.stats()["unauthorized"] == 1
    with db.connect(db_url) as c:
        bucket = one(c, "SELECT tok_tokens, granted FROM parecer._rate_limits")
        assert bucket["granted"] == 1  # the refused call did take tokens
        assert bucket["tok_tokens"] >= 160000 * 6 / 60 - 1


@pytest.mark.parametrize("outage", ["key", "quota"])
def test_a_paused_runner_asks_the_provider_before_claiming_again(
    db_url: str, monkeypatch: pytest.MonkeyPatch, outage: str
) -> None:
    """A long-running runner whose key the provider refuses (401), or whose account has no
    quota left (insufficient_quota), pauses, and after each pause asks the provider before
    it claims: for the key models.retrieve, for the quota (which models.retrieve does not
    see) the smallest call of its own, no item. The items in flight at the first refusal
    are released once, none again however long the outage, so a key revoked or a quota
    used up over a weekend fails no item on max_releases. Once fixed, the work is done."""
    monkeypatch.setattr(runner_mod, "FATAL_PAUSE_SECONDS", (0.2,))
    with db.connect(db_url) as c:
        make_script(c)
        for _ in range(6):
            make_session(c)
        start_run(c)
        c.execute("SELECT parecer.set_setting('max_releases', '3')")
    outages: dict[str, tuple[StandinConfig, dict[str, Any]]] = {
        "key": (StandinConfig(require_key="sk-the-right-one"), {"require_key": KEY}),
        "quota": (StandinConfig(fault_rate=1.0, faults=("quota",)), {"fault_rate": 0.0}),
    }
    refused, fixed = outages[outage]
    with Standin(refused) as s:

        def probes() -> int:  # refused probes so far (ten pauses and more)
            st = s.stats()
            return int(st["model_probes"] if outage == "key" else st["faults"].get("quota", 0))

        # without the shared limiter: the 401 pauses the key for every runner for a minute
        # (the shared pause), which this test would sit out (the tokens the refused calls
        # reserved come back: test_a_refused_call_gives_back_the_tokens_it_reserved)
        r = Runner(cfg(db_url, s, once=False, concurrency=2, poll_seconds=0.5, rate_limit=False))
        with running(r) as t:
            until(lambda: probes() >= 12, t)
            if outage == "key":
                assert s.stats()["unauthorized"] <= 2  # the calls in flight at the first 401
            with db.connect(db_url) as c:
                assert max(i["releases"] for i in items(c).values()) <= 1
                assert {i["status"] for i in items(c).values()} == {"pending"}
            # fixed (the provider now takes the key / the account has credit): the next probe passes
            s._state.config = dataclasses.replace(s.config, **fixed)
            with db.connect(db_url) as c:
                until(lambda: one(c, "SELECT count(*) AS n FROM parecer.reports")["n"] >= 6, t)
    with db.connect(db_url) as c:
        got = items(c)
        assert {i["status"] for i in got.values()} == {"done"}
        assert all(i["retry_count"] == 0 and i["releases"] <= 1 for i in got.values())


MESSAGES = [
    "Olá! Meu pedido nº 123 chegou “quebrado” — quero o reembolso, por favor. 😡 Obrigada.",
    "Bom dia, a internet caiu de novo e o técnico não apareceu; já liguei três vezes hoje.",
    "Não consigo acessar o app desde ontem – aparece 'erro 500' e a fatura vence amanhã 🙏",
    "Entendo a situação, vou transferir o seu atendimento para o setor de cobrança agora.",
]


def test_every_quote_slip_of_the_standin_is_grounded_by_mark_done_rules(conn: Conn) -> None:
    rng = random.Random(12)
    checked: dict[str, int] = dict.fromkeys(SLIPS, 0)
    for text in MESSAGES:
        words = text.split(" ")
        for _ in range(40):
            i = rng.randrange(len(words))
            j = rng.randrange(i + 1, min(len(words), i + 10) + 1)
            excerpt = " ".join(words[i:j])
            for name, slip in SLIPS.items():
                slipped = slip(excerpt, text)
                if slipped is None or len(excerpt.strip(" .,;:!?-")) < 3:
                    continue
                match = one(conn, "SELECT parecer._match(%s, %s) AS m", (text, slipped))["m"]
                assert match is not None, (name, excerpt, slipped)
                checked[name] += 1
    assert all(n > 0 for n in checked.values()), checked


def test_sloppy_quotes_from_the_standin_are_done_on_the_first_call(db_url: str) -> None:
    with db.connect(db_url) as c:
        make_script(c)
        for i in range(20):
            make_session(c, texts=[MESSAGES[(i + k) % 4] for k in range(25)])
        start_run(c)
    with Standin(StandinConfig(latency_ms=(1, 5), quote_slips=1.0, seed=5)) as s:
        stats = run(cfg(db_url, s))
        st = s.stats()
    assert stats.outcomes["done"] == 20 and st["completed"] == 20
    assert st["slipped_excerpts"] > 40
    with db.connect(db_url) as c:
        matches = {
            r["m"]
            for r in c.execute(
                "SELECT g ->> 'match' AS m FROM parecer.reports, jsonb_array_elements(grounding) g"
            ).fetchall()
        }
        assert {"normalised", "fragments"} <= matches


def test_once_stops_at_a_daily_limit_instead_of_waiting_for_tomorrow(db_url: str) -> None:
    """requests per day reached: --once stores what it could, gives the rest back until the
    limiter's next day (without spending an attempt) and exits 0 at once, for cron."""
    with db.connect(db_url) as c:
        make_script(c)
        for _ in range(6):
            make_session(c)
        c.execute("SELECT * FROM parecer.set_rate_limit('t:gpt-5-mini', rpd => 3)")
        start_run(c)
    with Standin(StandinConfig(latency_ms=(1, 5))) as s:
        stats = run(cfg(db_url, s, concurrency=2))  # returns: does not wait for tomorrow
    with db.connect(db_url) as c:
        got = items(c)
        assert sorted(i["status"] for i in got.values()) == ["done"] * 3 + ["pending"] * 3
        waiting = [i for i in got.values() if i["status"] == "pending"]
        assert all(i["retry_count"] == 0 for i in waiting)  # no attempt spent
        released = one(
            c,
            "SELECT count(*) AS n, bool_and(next_retry_at > now() + interval '1 minute') AS later"
            " FROM parecer.analyses WHERE status = 'pending' AND claims > 0",
        )
        assert released["n"] >= 1 and released["later"] is True, released  # back until the next day
    assert stats.outcomes["done"] == 3


def test_a_session_whose_host_data_breaks_the_adapter_fails_alone(db_url: str) -> None:
    """The claim's prompts are built by one statement; one session whose data the host's
    adapter cannot read makes it fail. The runner still gets its items (each without a
    prompt), asks prompt_for per item, and only that session's item fails."""
    from .test_prompt_report import POISONED_ADAPTER

    with db.connect(db_url) as c:
        make_script(c)
        sessions = [make_session(c).session_id for _ in range(5)]
        bad = sessions[2]
        c.execute(
            "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, created_at,"
            " created_at_external) VALUES (%s, %s, false, 'text', 'n=doze',"
            " now() - interval '3 days', now() - interval '3 days')",  # an old session: eligible
            (bad + "-n", bad),
        )
        c.execute(POISONED_ADAPTER)
        start_run(c)
    with Standin(StandinConfig(latency_ms=(1, 5))) as s:
        run(cfg(db_url, s))
    with db.connect(db_url) as c:
        got = items(c)
    assert set(got) == set(sessions)
    assert all(got[sid]["status"] == "done" for sid in sessions if sid != bad)
    assert got[bad]["status"] != "done" and got[bad]["retry_count"] >= 1
    # the runner names the error's kind, not its message (it may quote the host's data)
    assert got[bad]["error"] == "runner error: InvalidTextRepresentation"
