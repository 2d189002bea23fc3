"""Shared test helpers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from parecer.devkit.standin import Standin
from parecer.runner import Runner, RunnerConfig


def table_checksum(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """md5 of every parecer table's full content: proves a call changed nothing."""
    tables = [
        r["relname"]
        for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'parecer' AND c.relkind = 'r' ORDER BY 1"
        ).fetchall()
    ]
    out = {}
    for t in tables:
        row = conn.execute(
            f"SELECT count(*) AS n, md5(COALESCE(string_agg(x::text, ',' ORDER BY x::text), '')) AS h "
            f"FROM parecer.{t} x"
        ).fetchone()
        assert row is not None
        out[t] = f"{row['n']}:{row['h']}"
    return out


def one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> dict[str, Any]:
    """The single row a query returns (dict_row connections)."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return dict(row)


def runner_config(db_url: str, s: Standin, api_key: str, **kw: Any) -> RunnerConfig:
    """A runner's configuration against the stand-in ``s`` (a test module's defaults and the
    test's own values in ``kw``)."""
    return RunnerConfig(database_url=db_url, api_key=api_key, base_url=s.url, **kw)


@contextmanager
def running(runner: Runner) -> Iterator[threading.Thread]:
    """A long-running Runner in a thread of its own for the ``with`` block (the thread is
    yielded, to check it is alive); stopped at the end, as SIGTERM stops one."""
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=lambda: loop.run_until_complete(runner.run()), daemon=True)
    t.start()
    try:
        yield t
    finally:
        loop.call_soon_threadsafe(runner.stop)
        t.join(timeout=30)
        if not t.is_alive():
            loop.close()
    assert not t.is_alive(), "the runner did not stop"


def until(cond: Callable[[], bool], runner: threading.Thread, seconds: float = 20.0) -> None:
    """Wait for ``cond`` while the runner's thread (helpers.running) lives, at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        assert runner.is_alive(), "the runner stopped"
        time.sleep(0.02)
