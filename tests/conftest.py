"""Test fixtures: a real PostgreSQL, a migrated template database cloned per test.

The server is $PARECER_TEST_DATABASE_URL (or $DATABASE_URL) when set, otherwise an
embedded throwaway PostgreSQL (pgserver). NOTIFY is delivered only at commit and
SKIP LOCKED needs two sessions, so tests use real databases, not rollbacks.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql.janitor import DatabaseJanitor

from parecer import db, paths
from parecer.devkit.embedded import EmbeddedPostgres

_counter = itertools.count()


def _url_for(base: str, dbname: str) -> str:
    return make_conninfo(base, dbname=dbname)


def _janitor(base: str, dbname: str, **kw: Any) -> DatabaseJanitor:
    p = conninfo_to_dict(base)
    return DatabaseJanitor(
        user=str(p.get("user") or "postgres"),
        host=str(p.get("host") or "localhost"),
        port=str(p.get("port") or 5432),
        password=p.get("password"),  # type: ignore[arg-type]
        dbname=dbname,
        maintenance_dbname=str(p.get("dbname") or "postgres"),
        **kw,
    )


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """The server's maintenance URL."""
    url = os.environ.get("PARECER_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    with EmbeddedPostgres() as srv:
        yield srv.url


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """A migrated database with the reference chat schema and its adapter."""
    name = f"parecer_tpl_{os.getpid()}"
    janitor = _janitor(pg_server_url, name, as_template=True)
    janitor.init()
    url = _url_for(pg_server_url, name)
    db.migrate(url)
    db.install_sql(url, paths.host_chat_schema())
    db.install_adapter(url, "reference")
    # The stand-in is no provider to protect: tests that exercise the shared
    # limiter set their own limits (tests/test_limits.py).
    with db.connect(url) as c:
        c.execute("SELECT parecer.set_setting('default_rpm', '1000000')")
        c.execute("SELECT parecer.set_setting('default_tpm', '1000000000')")
    try:
        yield name
    finally:
        janitor.drop()


@pytest.fixture
def db_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """A fresh database cloned from the template, dropped after the test."""
    name = f"parecer_t_{os.getpid()}_{next(_counter)}"
    janitor = _janitor(pg_server_url, name, template_dbname=template_db)
    janitor.init()
    try:
        yield _url_for(pg_server_url, name)
    finally:
        janitor.drop()


@pytest.fixture
def empty_db_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database (for migration tests)."""
    name = f"parecer_e_{os.getpid()}_{next(_counter)}"
    janitor = _janitor(pg_server_url, name)
    janitor.init()
    try:
        yield _url_for(pg_server_url, name)
    finally:
        janitor.drop()


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """An autocommit connection (dict rows) to the test database."""
    with db.connect(db_url) as c:
        yield c
