#!/usr/bin/env python3
"""Chaos harness: runner processes under faults, kills, stops and cut connections.

It proves the queue's promise end to end, with real processes, a real PostgreSQL
and the real ``openai`` SDK against the stand-in: every queued analysis ends
``done`` or terminally ``failed`` with a reason, none is completed twice, none is
left stuck, a 429 never spends an attempt, and no log line carries transcript text
or the API key.

    python bench/chaos.py --items 3000 --minutes 5 --runners 4 --concurrency 8 \\
        --fault-rate 0.2 --seed 1 [--database-url postgresql://postgres@127.0.0.1/postgres]

What it does:

1. creates a database on the server (``--database-url``, else $PARECER_DATABASE_URL,
   else an embedded throwaway PostgreSQL), migrates it, installs the reference chat
   schema and its adapter, loads sample sessions (``parecer.devkit.sample.load_sample``),
   creates one script per sample client and queues ``--items`` analyses
   (``start_run``, with ``max_sessions_cap`` raised); backoff is shortened to
   1 s / 2 s / 3 s and leases to ``--lease-seconds`` so recovery happens within the run;
2. starts a stand-in with a fault mix (rate_limit with Retry-After, server_error,
   timeout, malformed, ungrounded, refusal) and 50-300 ms latency, and
   ``--runners`` runner processes (``python -m parecer.cli runner``);
3. during ``--minutes`` (or until the queue settles): SIGKILLs runners at random
   moments and restarts them, SIGSTOPs one runner past its lease and SIGCONTs it
   later (a stale worker finishing late), and terminates a random runner database
   connection (``pg_terminate_backend``);
4. lets the runners run clean for a bounded settle phase, SIGTERMs them, and checks
   the invariants; exits 1 if one breaks.

``tests/test_chaos.py`` imports this module and runs a short form of the same
harness in ``make test``. docs/reliability.md reports a long run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .. import db, paths
from .sample import load_sample
from .standin import Standin, StandinConfig

DEFAULT_FAULTS = ("rate_limit", "server_error", "timeout", "malformed", "ungrounded", "refusal")
SCRIPT_KEY = "chaos"
RUNNER_APP = "parecer-runner"  # application_name of the runner's pooled connections

Log = Callable[[str], None]


# ----------------------------------------------------------------------------- config
@dataclass
class ChaosConfig:
    items: int = 3000
    minutes: float = 5.0  # chaos window (the run stops earlier once settled)
    runners: int = 4
    concurrency: int = 8
    fault_rate: float = 0.2
    faults: tuple[str, ...] = DEFAULT_FAULTS
    latency_ms: tuple[int, int] = (50, 300)
    seed: int = 1
    lease_seconds: int = 8
    request_timeout: float = 2.0  # runner --timeout; the stand-in's `timeout` fault stalls longer
    timeout_delay_s: float = 3.0
    poll_seconds: float = 5.0
    shutdown_grace: float = 2.0
    claim_ahead: int = 0  # runner --claim-ahead
    ack_window_ms: int = 20  # runner --ack-window-ms
    backoff_schedule: str = "{1 second,2 seconds,3 seconds}"
    # chaos actions: explicit counts, or one per *_every seconds of the window
    kills: int | None = None
    stops: int | None = None
    cuts: int | None = None
    kill_every: float = 20.0
    stop_every: float = 60.0
    cut_every: float = 10.0
    chaos_start_s: float = 2.5  # no action before the runners are up and holding leases
    restart_delay_s: tuple[float, float] = (0.5, 2.0)
    stop_extra_s: tuple[float, float] = (2.0, 4.0)  # a SIGSTOP lasts lease_seconds + this
    settle_seconds: float = 120.0  # bounded clean phase after the chaos
    log_dir: Path | None = None  # runner logs (default: a temporary directory, removed)
    progress_every_s: float = 10.0

    @property
    def window_s(self) -> float:
        return self.minutes * 60.0

    def count(self, explicit: int | None, every: float) -> int:
        if explicit is not None:
            return explicit
        return max(1, int((self.window_s - self.chaos_start_s) // every))


@dataclass
class ChaosResult:
    config: ChaosConfig
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def format(self) -> str:
        return format_figures(self.figures, self.violations)


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> dict[str, Any]:
    """The single row a query returns (dict_row connections)."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return dict(row)


def _tally(conn: psycopg.Connection[Any], query: str) -> dict[Any, int]:
    """A query of (key, count) rows as a dict, in the query's order."""
    return {key: int(n) for key, n in (tuple(r.values()) for r in conn.execute(query).fetchall())}


# ----------------------------------------------------------------------------- database
def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextmanager
def fresh_database(
    server_url: str | None, *, keep: bool = False, log: Log = print
) -> Iterator[str]:
    """A new database on the server (or on an embedded PostgreSQL), migrated, with the
    reference chat schema and its adapter; dropped afterwards unless ``keep``."""
    embedded = None
    if not server_url:
        from .embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres().start()
        server_url = embedded.url
        log("no --database-url: using an embedded PostgreSQL")
    name = f"parecer_chaos_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        with psycopg.connect(server_url, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {_quote_ident(name)}")
        url = make_conninfo(server_url, dbname=name)
        try:
            db.migrate(url)
            db.install_sql(url, paths.host_chat_schema())
            db.install_adapter(url, "reference")
            yield url
        finally:
            if keep:
                log(f"kept database {name}")
            else:
                with psycopg.connect(server_url, autocommit=True) as c:
                    c.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
    finally:
        if embedded is not None:
            embedded.stop()


def _set(conn: psycopg.Connection[Any], name: str, value: str) -> None:
    conn.execute("SELECT parecer.set_setting(%s, %s)", (name, value))


def setup_data(url: str, cfg: ChaosConfig, log: Log) -> dict[str, Any]:
    """Settings, sample sessions, one script per client, and runs queuing cfg.items analyses."""
    t0 = time.monotonic()
    with db.connect(url) as c:
        _set(c, "max_sessions_cap", str(max(cfg.items, 500)))
        _set(c, "backoff_schedule", cfg.backoff_schedule)
        _set(c, "lease_seconds", str(cfg.lease_seconds))
        names = {r["name"] for r in c.execute("SELECT name FROM parecer.settings").fetchall()}
        lifted = []
        # A shared rate limiter, if this install has one, must not be the bottleneck here:
        # the stand-in's 429s are the rate limits under test.
        for name, value in (("default_rpm", "1000000"), ("default_tpm", "1000000000")):
            if name in names:
                _set(c, name, value)
                lifted.append(name)
    # Ended sessions are ~90% of the sample; load with margin, more if still short.
    sessions = int(cfg.items * 1.2) + 60
    eligible: dict[str, int] = {}
    for _ in range(4):
        with psycopg.connect(url, autocommit=True) as plain:  # load_sample wants tuple rows
            load_sample(plain, sessions=sessions, seed=cfg.seed)
        with db.connect(url) as c:
            eligible = _tally(
                c,
                "SELECT sc.slug, count(*) AS n FROM parecer.source_sessions s "
                "JOIN parecer.source_clients sc ON sc.client_id = s.client_id "
                "WHERE s.ended_at IS NOT NULL GROUP BY sc.slug ORDER BY sc.slug",
            )
        if sum(eligible.values()) >= cfg.items:
            break
        sessions = int(sessions * 1.5)
    if sum(eligible.values()) < cfg.items:
        raise RuntimeError(f"only {sum(eligible.values())} ended sessions for {cfg.items} items")
    marker = f"CHAOS-PROMPT-{secrets.token_hex(6)}"
    run_ids: list[int] = []
    left = cfg.items
    with db.connect(url) as c:
        slugs = sorted(eligible, key=lambda s: -eligible[s])
        for i, slug in enumerate(slugs):
            share = (
                left
                if i == len(slugs) - 1
                else min(eligible[slug], round(cfg.items * eligible[slug] / sum(eligible.values())))
            )
            share = min(share, eligible[slug])
            if share <= 0:
                continue
            c.execute(
                "SELECT * FROM parecer.create_script_version(%s, %s, %s, topics => %s, activate => true)",
                (
                    slug,
                    SCRIPT_KEY,
                    f"Avalie a qualidade do atendimento e o desfecho da conversa. {marker}",
                    ["cancelamento", "cobrança", "internet", "agendamento"],
                ),
            )
            r = _one(
                c,
                "SELECT * FROM parecer.start_run(%s, %s, min_messages => 1, tag_filter => %s, "
                "max_sessions => %s)",
                (slug, SCRIPT_KEY, '{"mode":"ignore"}', share),
            )
            assert r is not None
            run_ids.append(int(r["run_id"]))
            left -= int(r["enqueued"])
        total = _one(c, "SELECT count(*) AS n FROM parecer.analyses")["n"]
    if total != cfg.items:
        raise RuntimeError(f"queued {total} items, wanted {cfg.items}")
    log(
        f"setup: {sessions} sample sessions, {total} items queued in {len(run_ids)} run(s) "
        f"in {time.monotonic() - t0:.1f}s" + (f"; lifted {', '.join(lifted)}" if lifted else "")
    )
    return {
        "run_ids": run_ids,
        "prompt_marker": marker,
        "sample_sessions": sessions,
        "lifted_settings": lifted,
    }


QUEUE_SQL = """
SELECT count(*) AS total,
       count(*) FILTER (WHERE status = 'done') AS done,
       count(*) FILTER (WHERE status = 'failed' AND next_retry_at IS NULL) AS failed,
       count(*) FILTER (WHERE status = 'failed' AND next_retry_at IS NOT NULL) AS retrying,
       count(*) FILTER (WHERE status = 'processing') AS processing,
       count(*) FILTER (WHERE status = 'pending') AS pending
FROM parecer.analyses
"""


# ----------------------------------------------------------------------------- processes
@dataclass
class RunnerProc:
    slot: int
    gen: int
    worker: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    started: float
    stopped_until: float | None = None
    fate: str = "running"  # running | killed | terminated | died | hung
    stop_windows: list[list[Any]] = field(
        default_factory=list
    )  # [SIGSTOP, SIGCONT] in database time

    def alive(self) -> bool:
        return self.popen.poll() is None


class Fleet:
    """The runner processes, one per slot; a killed slot is restarted with a new worker id."""

    def __init__(
        self, cfg: ChaosConfig, url: str, base_url: str, api_key: str, log_dir: Path
    ) -> None:
        self.cfg, self.url, self.base_url, self.api_key, self.log_dir = (
            cfg,
            url,
            base_url,
            api_key,
            log_dir,
        )
        self.slots: list[RunnerProc | None] = [None] * cfg.runners
        self.all: list[RunnerProc] = []
        self.gens = Counter[int]()

    def start(self, slot: int) -> RunnerProc:
        gen = self.gens[slot]
        self.gens[slot] += 1
        worker = f"chaos-r{slot}.{gen}"
        log_path = self.log_dir / f"{worker}.log"
        f = open(log_path, "wb")  # noqa: SIM115 - closed in reap()
        env = {
            **os.environ,
            "PARECER_DATABASE_URL": self.url,
            "OPENAI_BASE_URL": self.base_url,
            "OPENAI_API_KEY": self.api_key,
            "PYTHONUNBUFFERED": "1",
        }
        for k in ("PARECER_CLIENT", "PARECER_ONCE", "PARECER_LOG_FORMAT"):  # options say the rest
            env.pop(k, None)
        c = self.cfg
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "parecer.cli",
                "runner",
                "--concurrency",
                str(c.concurrency),
                "--worker-id",
                worker,
                "--lease-seconds",
                str(c.lease_seconds),
                "--timeout",
                str(c.request_timeout),
                "--shutdown-grace",
                str(c.shutdown_grace),
                "--poll-seconds",
                str(c.poll_seconds),
                "--claim-ahead",
                str(c.claim_ahead),
                "--ack-window-ms",
                str(c.ack_window_ms),
            ],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        p = RunnerProc(slot, gen, worker, popen, log_path, f, time.monotonic())
        self.slots[slot] = p
        self.all.append(p)
        return p

    def running(self) -> list[RunnerProc]:
        return [p for p in self.slots if p is not None and p.alive() and p.stopped_until is None]

    def kill(self, p: RunnerProc) -> None:
        if p.stopped_until is not None:
            p.popen.send_signal(signal.SIGCONT)
        p.popen.send_signal(signal.SIGKILL)
        p.popen.wait()
        p.fate = "killed"
        self.slots[p.slot] = None
        p.log_file.close()

    def terminate_all(self, timeout: float) -> None:
        live = [p for p in self.slots if p is not None and p.alive()]
        for p in live:
            if p.stopped_until is not None:
                p.popen.send_signal(signal.SIGCONT)
                p.stopped_until = None
            p.popen.send_signal(signal.SIGTERM)
            p.fate = "terminated"
        deadline = time.monotonic() + timeout
        for p in live:
            try:
                p.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
                p.fate = "hung"
        for p in self.all:
            if not p.log_file.closed:
                p.log_file.close()

    def kill_everything(self) -> None:
        """Last resort (an exception in the harness): nothing may outlive it."""
        for p in self.all:
            if p.popen.poll() is None:
                with suppress(ProcessLookupError):
                    p.popen.send_signal(signal.SIGCONT)
                    p.popen.kill()
                p.popen.wait()
            if not p.log_file.closed:
                p.log_file.close()


# ----------------------------------------------------------------------------- the run
def _spread(rng: random.Random, n: int, lo: float, hi: float, *, tail: float = 0.0) -> list[float]:
    """n moments in [lo, hi - tail], one per equal segment, jittered within it."""
    if n <= 0:
        return []
    hi = max(hi - tail, lo + 0.1)
    seg = (hi - lo) / n
    return [lo + i * seg + rng.uniform(0, seg * 0.9) for i in range(n)]


def _holders(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return _tally(
        conn,
        "SELECT worker, count(*) AS n FROM parecer.analyses WHERE status = 'processing' "
        "GROUP BY worker",
    )


def run_chaos(url: str, cfg: ChaosConfig, *, log: Log = print, setup: bool = True) -> ChaosResult:
    """Run the whole chaos experiment on a database that has parecer, the reference
    schema and its adapter installed (``fresh_database`` gives one)."""
    result = ChaosResult(cfg)
    fig = result.figures
    rng = random.Random(cfg.seed)
    info = setup_data(url, cfg, log) if setup else {"prompt_marker": None, "run_ids": []}
    fig["setup"] = info
    api_key = "sk-chaos-" + secrets.token_hex(16)
    tmp = None
    log_dir = cfg.log_dir
    if log_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="parecer-chaos-")
        log_dir = Path(tmp.name)
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("chaos-r*.log"):  # a reused --log-dir: scan this run's logs only
        old.unlink()
    with db.connect(url, application_name="parecer-chaos") as c:
        dbname = _one(c, "SELECT current_database() AS d")["d"]
        # per-function call counts (diagnostic only; needs a superuser)
        with suppress(psycopg.Error):
            c.execute(f"ALTER DATABASE {_quote_ident(dbname)} SET track_functions = 'all'")
            c.execute("SELECT pg_stat_reset()")
    actions = Counter[str]()
    events: list[tuple[float, str, Any]] = []
    n_kills, n_stops, n_cuts = (
        cfg.count(cfg.kills, cfg.kill_every),
        cfg.count(cfg.stops, cfg.stop_every),
        cfg.count(cfg.cuts, cfg.cut_every),
    )
    stop_len = cfg.lease_seconds + cfg.stop_extra_s[1]
    events += [(t, "kill", None) for t in _spread(rng, n_kills, cfg.chaos_start_s, cfg.window_s)]
    events += [
        (t, "stop", None)
        for t in _spread(rng, n_stops, cfg.chaos_start_s, cfg.window_s, tail=stop_len)
    ]
    events += [(t, "cut", None) for t in _spread(rng, n_cuts, cfg.chaos_start_s, cfg.window_s)]
    events.sort(key=lambda e: e[0])
    stopped_workers: set[str] = set()
    killed_workers: set[str] = set()
    unexpected: list[dict[str, Any]] = []
    cut_states = Counter[str]()
    conf = StandinConfig(
        latency_ms=cfg.latency_ms,
        fault_rate=cfg.fault_rate,
        faults=cfg.faults,
        seed=cfg.seed,
        timeout_delay_s=cfg.timeout_delay_s,
    )
    fleet: Fleet | None = None
    try:
        with Standin(conf) as standin, db.connect(url, application_name="parecer-chaos") as conn:
            fleet = Fleet(cfg, url, standin.url, api_key, log_dir)
            for slot in range(cfg.runners):
                fleet.start(slot)
            t0 = time.monotonic()
            log(
                f"chaos: {cfg.runners} runners x {cfg.concurrency}, fault rate {cfg.fault_rate}, lease "
                f"{cfg.lease_seconds}s, window {cfg.window_s:.0f}s; planned kills {n_kills}, stops {n_stops}, "
                f"cuts {n_cuts}; logs in {log_dir}"
            )
            pending: list[tuple[float, str, Any]] = list(events)  # chaos actions, then maintenance
            maintenance: list[tuple[float, str, Any]] = []
            chaos_over_at: float | None = None
            settled_at: float | None = None
            next_progress = cfg.progress_every_s
            q: dict[str, Any] = {}
            while True:
                now = time.monotonic() - t0
                # maintenance: SIGCONT and restarts always happen, chaos or not
                for ev in [e for e in maintenance if e[0] <= now]:
                    maintenance.remove(ev)
                    _, kind, p = ev
                    if kind == "cont" and p.alive():
                        _cont(p, conn)
                        actions["conts"] += 1
                    elif kind == "restart":
                        fleet.start(p)
                        actions["restarts"] += 1
                # runners that died on their own are a finding; keep the fleet complete
                for p in [p for p in fleet.slots if p is not None and not p.alive()]:
                    p.fate = "died"
                    p.log_file.close()
                    unexpected.append(
                        {
                            "worker": p.worker,
                            "returncode": p.popen.returncode,
                            "tail": p.log_path.read_text(errors="replace").splitlines()[-5:],
                        }
                    )
                    fleet.slots[p.slot] = None
                    fleet.start(p.slot)
                # chaos actions
                if chaos_over_at is None:
                    for ev in [e for e in pending if e[0] <= now]:
                        pending.remove(ev)
                        if (
                            not _do_action(
                                ev[1],
                                fleet,
                                conn,
                                rng,
                                cfg,
                                now,
                                maintenance,
                                actions,
                                stopped_workers,
                                killed_workers,
                                cut_states,
                                dbname,
                            )
                            and (ev[2] or 0) < 40
                        ):
                            pending.append(
                                (now + 0.5, ev[1], (ev[2] or 0) + 1)
                            )  # nobody to hit yet: retry soon
                q = _one(conn, QUEUE_SQL)
                settled = q["done"] + q["failed"] == q["total"]
                if chaos_over_at is None and (now >= cfg.window_s or settled):
                    chaos_over_at = now
                    pending.clear()
                    log(
                        f"chaos over at {now:.1f}s ({'queue settled' if settled else 'window ended'}); "
                        f"settling (at most {cfg.settle_seconds:.0f}s)"
                    )
                if settled and settled_at is None:
                    settled_at = now
                if now >= next_progress:
                    next_progress += cfg.progress_every_s
                    log(
                        f"  t={now:6.1f}s done {q['done']} failed {q['failed']} retrying {q['retrying']} "
                        f"processing {q['processing']} pending {q['pending']} | kills {actions['kills']} "
                        f"stops {actions['stops']} cuts {actions['cuts']}"
                    )
                if chaos_over_at is not None:
                    if settled and not maintenance:
                        break
                    if now - chaos_over_at >= cfg.settle_seconds:
                        log("settle phase timed out")
                        break
                time.sleep(0.2)
            # a stopped runner resumes in any case, and gets a moment to try its late writes
            late = [e for e in maintenance if e[1] == "cont"]
            for _, _, p in late:
                if p.alive():
                    _cont(p, conn)
                    actions["conts"] += 1
            time.sleep(1.5)
            t_end = time.monotonic() - t0
            fleet.terminate_all(timeout=cfg.shutdown_grace + 15)
            standin_stats = standin.stats()
        fig.update(
            _collect(
                url,
                fleet,
                cfg,
                info,
                standin_stats,
                actions,
                stopped_workers,
                killed_workers,
                unexpected,
                cut_states,
                t_end,
                settled_at,
                chaos_over_at,
                q,
                api_key,
                log_dir,
            )
        )
    finally:
        if fleet is not None:
            fleet.kill_everything()
        if tmp is not None:
            tmp.cleanup()
    result.violations = _check(fig, cfg)
    return result


def _db_now(conn: psycopg.Connection[Any]) -> Any:
    row = conn.execute("SELECT clock_timestamp() AS t").fetchone()
    assert row is not None
    return row["t"]


def _cont(p: RunnerProc, conn: psycopg.Connection[Any]) -> None:
    p.popen.send_signal(signal.SIGCONT)
    p.stopped_until = None
    if p.stop_windows and p.stop_windows[-1][1] is None:
        p.stop_windows[-1][1] = _db_now(conn)


def _do_action(
    kind: str,
    fleet: Fleet,
    conn: psycopg.Connection[Any],
    rng: random.Random,
    cfg: ChaosConfig,
    now: float,
    maintenance: list[tuple[float, str, Any]],
    actions: Counter[str],
    stopped_workers: set[str],
    killed_workers: set[str],
    cut_states: Counter[str],
    dbname: str,
) -> bool:
    """Perform one chaos action; False when there was nothing worth hitting (the caller retries soon)."""
    if kind == "cut":
        rows = conn.execute(
            "SELECT pid, state FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
            (RUNNER_APP, dbname),
        ).fetchall()
        if not rows:
            return False
        # half the time, prefer a backend that is running a statement right now
        active = [r for r in rows if r["state"] == "active"]
        r = rng.choice(active if active and rng.random() < 0.5 else rows)
        conn.execute("SELECT pg_terminate_backend(%s)", (r["pid"],))
        actions["cuts"] += 1
        cut_states[r["state"] or "?"] += 1
        return True
    running = fleet.running()
    holders = _holders(conn)
    busy = [p for p in running if holders.get(p.worker, 0) > 0]
    if not busy:
        return False  # kill or freeze a runner while it holds leases
    p = rng.choice(busy)
    if kind == "kill":
        fleet.kill(p)
        killed_workers.add(p.worker)
        actions["kills"] += 1
        actions["items_held_by_killed"] += holders.get(p.worker, 0)
        maintenance.append((now + rng.uniform(*cfg.restart_delay_s), "restart", p.slot))
    elif kind == "stop":
        if any(q.stopped_until is not None for q in fleet.slots if q is not None):
            return False  # one stopped runner at a time: try again a little later
        p.popen.send_signal(signal.SIGSTOP)
        # The leases were counted before the signal: a runner that finished its last
        # item in between holds nothing to lose. Thaw it and try again a little later.
        live = _one(
            conn,
            "SELECT count(*) AS n FROM parecer.analyses WHERE status = 'processing' "
            "AND worker = %s AND lease_expires_at > now()",
            (p.worker,),
        )
        if live["n"] == 0:
            p.popen.send_signal(signal.SIGCONT)
            return False
        p.stop_windows.append([_db_now(conn), None])
        until = now + cfg.lease_seconds + rng.uniform(*cfg.stop_extra_s)
        p.stopped_until = until
        stopped_workers.add(p.worker)
        actions["stops"] += 1
        actions["items_held_by_stopped"] += holders.get(p.worker, 0)
        maintenance.append((until, "cont", p))
    return True


# ----------------------------------------------------------------------------- checks
def _distinctive_texts(conn: psycopg.Connection[Any], n: int = 300) -> list[str]:
    """Message bodies of queued sessions (long ones), and their long lines, to look for in logs."""
    rows = conn.execute(
        "SELECT DISTINCT m.body FROM parecer.source_messages m "
        "WHERE m.session_id IN (SELECT session_id FROM parecer.analyses) AND length(m.body) >= 30 "
        "ORDER BY 1 LIMIT 5000"
    ).fetchall()
    bodies = [r["body"] for r in rows]
    random.Random(7).shuffle(bodies)
    out: set[str] = set()
    for b in bodies[:n]:
        out.add(b)
        out.update(line.strip() for line in b.splitlines() if len(line.strip()) >= 25)
    return sorted(out)


def _scan_logs(
    log_dir: Path, needles: dict[str, list[str]]
) -> tuple[dict[str, int], Counter[str], int]:
    """Hits per needle kind; and counts of some runner events (text log format)."""
    hits = {k: 0 for k in needles}
    events = Counter[str]()
    nbytes = 0
    forms: dict[str, list[str]] = {
        k: sorted(
            {
                f
                for v in vs
                for f in (v, json.dumps(v, ensure_ascii=False)[1:-1], json.dumps(v)[1:-1])
            }
        )
        for k, vs in needles.items()
    }
    for path in sorted(log_dir.glob("chaos-r*.log")):
        text = path.read_text(errors="replace")
        nbytes += len(text.encode())
        for kind, vs in forms.items():
            hits[kind] += sum(1 for v in vs if v and v in text)
        for line in text.splitlines():
            m = re.match(r"\S+Z \w+\s+(.+?)(?: \w+=|$)", line)
            if m:
                events[m.group(1)] += 1
    return hits, events, nbytes


def _collect(
    url: str,
    fleet: Fleet,
    cfg: ChaosConfig,
    info: dict[str, Any],
    standin_stats: dict[str, Any],
    actions: Counter[str],
    stopped_workers: set[str],
    killed_workers: set[str],
    unexpected: list[dict[str, Any]],
    cut_states: Counter[str],
    t_end: float,
    settled_at: float | None,
    chaos_over_at: float | None,
    last_q: dict[str, Any],
    api_key: str,
    log_dir: Path,
) -> dict[str, Any]:
    f: dict[str, Any] = {}
    with db.connect(url, application_name="parecer-chaos") as c:
        q = c.execute(QUEUE_SQL).fetchone()
        assert q is not None
        f["items"] = {
            "total": q["total"],
            "done": q["done"],
            "failed_terminal": q["failed"],
            "stuck": q["total"] - q["done"] - q["failed"],
            "stuck_detail": {k: q[k] for k in ("retrying", "processing", "pending")},
        }
        f["completed_more_than_once"] = _one(
            c,
            "SELECT count(*) AS n FROM (SELECT analysis_id FROM parecer.attempts WHERE outcome = 'done' "
            "GROUP BY 1 HAVING count(*) > 1) x",
        )["n"]
        f["done_without_done_attempt"] = _one(
            c,
            "SELECT count(*) AS n FROM parecer.analyses a WHERE a.status = 'done' AND NOT EXISTS "
            "(SELECT FROM parecer.attempts t WHERE t.analysis_id = a.analysis_id AND t.outcome = 'done')",
        )["n"]
        f["reports"] = _one(c, "SELECT count(*) AS n FROM parecer.reports")["n"]
        f["attempts_per_item"] = _tally(
            c,
            "SELECT n, count(*) AS items FROM (SELECT a.analysis_id, count(t.analysis_id) AS n "
            "FROM parecer.analyses a LEFT JOIN parecer.attempts t ON t.analysis_id = a.analysis_id "
            "GROUP BY 1) x GROUP BY n ORDER BY n",
        )
        f["spent_attempts_per_item"] = _tally(
            c,
            "SELECT n, count(*) AS items FROM (SELECT a.analysis_id, count(t.analysis_id) FILTER "
            "(WHERE t.outcome IN ('done', 'failed', 'expired')) AS n "
            "FROM parecer.analyses a LEFT JOIN parecer.attempts t ON t.analysis_id = a.analysis_id "
            "GROUP BY 1) x GROUP BY n ORDER BY n",
        )
        f["attempt_outcomes"] = _tally(
            c,
            "SELECT outcome, count(*) AS n FROM parecer.attempts GROUP BY 1 ORDER BY 2 DESC",
        )
        f["open_attempts"] = f["attempt_outcomes"].get("processing", 0)
        f["releases_by_reason"] = _tally(
            c,
            "SELECT error, count(*) AS n FROM parecer.attempts WHERE outcome = 'released' "
            "GROUP BY 1 ORDER BY 2 DESC",
        )
        f["releases_429"] = sum(n for k, n in f["releases_by_reason"].items() if k and "429" in k)
        f["failed_attempts_blaming_429"] = _one(
            c,
            "SELECT count(*) AS n FROM parecer.attempts WHERE outcome IN ('failed', 'expired') "
            "AND error ~* 'rate limit|\\m429\\M'",
        )["n"]
        f["retry_count_mismatches"] = _one(
            c,
            "SELECT count(*) AS n FROM parecer.analyses a WHERE a.retry_count <> "
            "(SELECT count(*) FROM parecer.attempts t WHERE t.analysis_id = a.analysis_id "
            " AND t.outcome IN ('failed', 'expired'))",
        )["n"]
        f["terminal_without_reason"] = _one(
            c,
            "SELECT count(*) AS n FROM parecer.analyses WHERE status = 'failed' AND next_retry_at IS NULL "
            "AND COALESCE(btrim(error), '') = ''",
        )["n"]
        f["terminal_reasons"] = _tally(
            c,
            "SELECT regexp_replace(regexp_replace(error, 'worker \\S+', 'worker W'), "
            "'(ungrounded evidence|report does not follow|invalid report)[^\\n]*', '\\1 ...') AS reason, "
            "count(*) AS n FROM parecer.analyses WHERE status = 'failed' AND next_retry_at IS NULL "
            "GROUP BY 1 ORDER BY 2 DESC",
        )
        # whose lease ran out: a frozen runner's (claimed before a SIGSTOP, expired after it), a killed
        # runner's, or anybody else's (that would be a live runner losing its lease: a finding)
        windows = {p.worker: p.stop_windows for p in fleet.all}
        exp = Counter[str]()
        for r in c.execute(
            "SELECT worker, claimed_at, finished_at FROM parecer.attempts WHERE outcome = 'expired'"
        ).fetchall():
            if any(
                r["claimed_at"] < t_stop < r["finished_at"]
                for t_stop, _ in windows.get(r["worker"], [])
            ):
                exp["of_stopped_runners"] += 1
            elif r["worker"] in killed_workers:
                exp["of_killed_runners"] += 1
            else:
                exp["of_live_runners"] += 1
        f["expired_attempts"] = {
            k: exp[k] for k in ("of_killed_runners", "of_stopped_runners", "of_live_runners")
        }
        # a result is accepted only from the current lease holder: the done attempt is the item's last claim
        f["done_not_last_claim"] = _one(
            c,
            "SELECT count(*) AS n FROM parecer.analyses a JOIN parecer.attempts t ON t.analysis_id = a.analysis_id "
            "AND t.outcome = 'done' WHERE EXISTS (SELECT FROM parecer.attempts l WHERE l.analysis_id = a.analysis_id "
            "AND l.attempt > t.attempt)",
        )["n"]
        # a runner frozen longer than its lease must not get the results of its frozen claims accepted
        frozen_done = frozen_lost = 0
        for p in fleet.all:
            for t_stop, t_cont in p.stop_windows:
                r = _one(
                    c,
                    "SELECT count(*) FILTER (WHERE outcome = 'done' AND finished_at > %(c)s) AS done, "
                    "count(*) FILTER (WHERE outcome = 'expired' AND finished_at > %(s)s) AS lost "
                    "FROM parecer.attempts WHERE worker = %(w)s AND claimed_at < %(s)s",
                    {"w": p.worker, "s": t_stop, "c": t_cont or t_stop},
                )
                assert r is not None
                frozen_done += r["done"]
                frozen_lost += r["lost"]
        f["stopped_runner_late_results_accepted"] = frozen_done
        f["stopped_runner_claims_lost"] = frozen_lost
        with suppress(psycopg.Error):
            f["db_function_calls"] = _tally(
                c,
                "SELECT funcname, sum(calls) AS calls FROM pg_stat_user_functions WHERE schemaname = 'parecer' "
                "AND funcname IN ('claim', 'next_due', 'prompt_for', 'extend_lease', 'mark_done', 'mark_failed', "
                "'release', '_expire_leases') GROUP BY 1 ORDER BY 2 DESC",
            )
        needles = {"transcript_text": _distinctive_texts(c), "api_key": [api_key]}
        if info.get("prompt_marker"):
            needles["prompt_text"] = [info["prompt_marker"]]
    hits, log_events, nbytes = _scan_logs(log_dir, needles)
    f["log_scan"] = {
        "files": len(list(log_dir.glob("chaos-r*.log"))),
        "bytes": nbytes,
        "needles": {k: len(v) for k, v in needles.items()},
        "hits": hits,
    }
    f["runner_log_events"] = dict(sorted(log_events.items(), key=lambda kv: -kv[1]))
    f["standin"] = {
        k: standin_stats.get(k)
        for k in ("requests", "completed", "incomplete", "rate_limited", "max_concurrent")
    }
    f["faults_injected"] = {k: v for k, v in standin_stats.get("faults", {}).items() if v}
    f["chaos"] = {
        "kills": actions["kills"],
        "restarts": actions["restarts"],
        "stops": actions["stops"],
        "conts": actions["conts"],
        "connection_cuts": actions["cuts"],
        "cut_backend_states": dict(cut_states),
        "items_held_by_killed": actions["items_held_by_killed"],
        "items_held_by_stopped": actions["items_held_by_stopped"],
        "unexpected_runner_exits": unexpected,
        "runner_processes": len(fleet.all),
        "killed_workers": sorted(killed_workers),
        "stopped_workers": sorted(stopped_workers),
    }
    f["sigterm_exit_codes"] = {
        p.worker: p.popen.returncode for p in fleet.all if p.fate in ("terminated", "hung")
    }
    f["hung_on_sigterm"] = [p.worker for p in fleet.all if p.fate == "hung"]
    busy_s = settled_at if settled_at is not None else t_end
    f["timing"] = {
        "chaos_s": round(chaos_over_at or t_end, 1),
        "settled_at_s": round(settled_at, 1) if settled_at is not None else None,
        "total_s": round(t_end, 1),
    }
    f["throughput_done_per_min"] = round(f["items"]["done"] * 60 / max(busy_s, 1e-9), 1)
    f["machine"] = _machine(url)
    f["config"] = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in vars(cfg).items()
        if k not in ("log_dir",)
    }
    return f


# Figures that must be 0 after a run, and what a count above 0 means.
MUST_BE_ZERO: tuple[tuple[str, str], ...] = (
    ("completed_more_than_once", "item(s) completed more than once"),
    ("done_without_done_attempt", "done item(s) without a done attempt"),
    (
        "retry_count_mismatches",
        "item(s) whose retry_count differs from their failed+expired attempts",
    ),
    ("failed_attempts_blaming_429", "attempt(s) spent on a 429"),
    ("open_attempts", "attempt(s) still open after the run"),
    ("terminal_without_reason", "terminal failure(s) without a reason"),
    (
        "stopped_runner_late_results_accepted",
        "result(s) of a runner frozen past its lease were accepted",
    ),
    ("done_not_last_claim", "item(s) whose accepted result is not from their last claim"),
)


def _check(f: dict[str, Any], cfg: ChaosConfig) -> list[str]:
    v: list[str] = []
    it = f["items"]

    def need(cond: bool, msg: str) -> None:
        if not cond:
            v.append(msg)

    need(
        it["stuck"] == 0,
        f"{it['stuck']} item(s) stuck (neither done nor terminally failed): {it['stuck_detail']}",
    )
    need(f["reports"] == it["done"], f"{f['reports']} reports for {it['done']} done items")
    need(
        f["releases_429"]
        <= f["faults_injected"].get("rate_limit", 0) + f["standin"]["rate_limited"],
        f"{f['releases_429']} releases for 429 but only {f['faults_injected'].get('rate_limit', 0)} injected",
    )
    for figure, what in MUST_BE_ZERO:
        need(f[figure] == 0, f"{f[figure]} {what}")
    for kind, n in f["log_scan"]["hits"].items():
        need(n == 0, f"runner logs contain {kind} ({n} hit(s))")
    bad = {w: rc for w, rc in f["sigterm_exit_codes"].items() if rc != 0}
    need(not bad, f"runner(s) did not exit 0 on SIGTERM: {bad}")
    need(
        not f["chaos"]["unexpected_runner_exits"],
        f"runner(s) exited on their own: {f['chaos']['unexpected_runner_exits']}",
    )
    return v


def _machine(url: str) -> dict[str, Any]:
    mem = None
    with suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    cpu = None
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with db.connect(url, application_name="parecer-chaos") as c:
        ver = _one(c, "SHOW server_version")["server_version"]
        maxc = _one(c, "SHOW max_connections")["max_connections"]
    host = conninfo_to_dict(url).get("host") or "local socket"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "postgresql": ver,
        "max_connections": maxc,
        "db_host": "embedded (unix socket)" if str(host).startswith("/") else host,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


# ----------------------------------------------------------------------------- output
def format_figures(f: dict[str, Any], violations: list[str]) -> str:
    it, ch = f["items"], f["chaos"]
    lines = [
        "== parecer chaos run ==",
        (
            f"items: total {it['total']}  done {it['done']}  failed (terminal) {it['failed_terminal']}  "
            f"stuck {it['stuck']}"
        ),
        (
            f"completed more than once: {f['completed_more_than_once']}   reports: {f['reports']}   "
            f"open attempts: {f['open_attempts']}"
        ),
        f"attempts per item (claims): {_dist(f['attempts_per_item'])}",
        f"spent attempts per item (done/failed/expired): {_dist(f['spent_attempts_per_item'])}",
        f"attempt outcomes: {f['attempt_outcomes']}",
        f"releases: {f['releases_by_reason']}",
        (
            f"429: releases {f['releases_429']}, attempts spent on a 429 {f['failed_attempts_blaming_429']}, "
            f"items with retry_count != failed+expired {f['retry_count_mismatches']}"
        ),
        f"terminal failure reasons: {f['terminal_reasons']}",
        (
            f"faults injected (stand-in): {f['faults_injected']}  requests {f['standin']['requests']}  "
            f"max concurrent {f['standin']['max_concurrent']}"
        ),
        (
            f"chaos: kills {ch['kills']} (items held {ch['items_held_by_killed']}), restarts {ch['restarts']}, "
            f"SIGSTOPs {ch['stops']} (items held {ch['items_held_by_stopped']}), SIGCONTs {ch['conts']}, "
            f"connection cuts {ch['connection_cuts']} {ch['cut_backend_states']}, runner processes {ch['runner_processes']}"
        ),
        (
            f"expired attempts: {f['expired_attempts']}   claims lost by SIGSTOPped runners: "
            f"{f['stopped_runner_claims_lost']}, their late results accepted: {f['stopped_runner_late_results_accepted']}; "
            f"'item stale' log lines: {f['runner_log_events'].get('item stale', 0)}; "
            f"results not from the last claim: {f['done_not_last_claim']}"
        ),
        (
            f"unexpected runner exits: {len(ch['unexpected_runner_exits'])}   SIGTERM exit codes: "
            f"{sorted(set(f['sigterm_exit_codes'].values()))}"
        ),
        (
            f"log scan: {f['log_scan']['files']} files, {f['log_scan']['bytes']} bytes, needles "
            f"{f['log_scan']['needles']}, hits {f['log_scan']['hits']}"
        ),
        f"runner log events: {f['runner_log_events']}",
        f"db function calls: {f.get('db_function_calls')}",
        f"timing: {f['timing']}   throughput: {f['throughput_done_per_min']} done/min",
        f"machine: {f['machine']}",
    ]
    if violations:
        lines.append("INVARIANTS BROKEN:")
        lines += [f"  - {v}" for v in violations]
    else:
        lines.append("all invariants hold")
    return "\n".join(lines)


def _dist(d: dict[int, int]) -> str:
    return "  ".join(f"{k}:{v}" for k, v in sorted(d.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--database-url",
        default=os.environ.get("PARECER_DATABASE_URL"),
        help="a server to create the chaos database on (default $PARECER_DATABASE_URL, else embedded)",
    )
    p.add_argument("--items", type=int, default=3000)
    p.add_argument(
        "--minutes", type=float, default=5.0, help="chaos window (ends earlier once settled)"
    )
    p.add_argument("--runners", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--fault-rate", type=float, default=0.2)
    p.add_argument("--faults", default=",".join(DEFAULT_FAULTS))
    p.add_argument("--latency-ms", default="50,300")
    p.add_argument("--lease-seconds", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kills", type=int, default=None, help="default: one per --kill-every seconds")
    p.add_argument("--stops", type=int, default=None)
    p.add_argument("--cuts", type=int, default=None)
    p.add_argument("--kill-every", type=float, default=20.0)
    p.add_argument("--stop-every", type=float, default=60.0)
    p.add_argument("--cut-every", type=float, default=10.0)
    p.add_argument("--settle-seconds", type=float, default=120.0)
    p.add_argument("--claim-ahead", type=int, default=0, help="the runners' --claim-ahead")
    p.add_argument("--ack-window-ms", type=int, default=20, help="the runners' --ack-window-ms")
    p.add_argument("--log-dir", type=Path, default=None, help="keep the runner logs here")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument("--keep-database", action="store_true")
    a = p.parse_args(argv)
    lo, _, hi = a.latency_ms.partition(",")
    # every option named as a ChaosConfig field is that field; two need parsing
    given = {f.name: getattr(a, f.name) for f in fields(ChaosConfig) if f.name in vars(a)}
    given["faults"] = tuple(x.strip() for x in a.faults.split(",") if x.strip())
    given["latency_ms"] = (int(lo), int(hi or lo))
    cfg = ChaosConfig(**given)

    def log(msg: str) -> None:
        print(msg, flush=True)

    with fresh_database(a.database_url, keep=a.keep_database, log=log) as url:
        res = run_chaos(url, cfg, log=log)
    print(res.format())
    if a.json:
        a.json.write_text(
            json.dumps(
                {"figures": res.figures, "violations": res.violations},
                indent=2,
                ensure_ascii=False,
                default=str,
            )
        )
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
