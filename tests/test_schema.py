"""db/ reads top to bottom: migrations hold tables, db/api/ holds every function,
view, trigger, comment and grant exactly once, and tests/snapshots/schema.sql is what a fresh
install looks like."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from parecer import db, paths, schema

ROOT = Path(__file__).resolve().parents[1]
_DEFINES = re.compile(
    r"(?im)^\s*create\s+(?:or\s+replace\s+)?(function|procedure|view|trigger)\s+(?:parecer\.)?(\w+)"
)


def _sql(path: Path) -> str:
    """SQL text without -- comments."""
    return re.sub(r"--[^\n]*", "", path.read_text(encoding="utf-8"))


def test_migrations_after_the_baseline_define_no_function_view_or_trigger() -> None:
    later = [
        p
        for p in sorted(paths.migrations_dir().glob("*.sql"))
        if not p.name.startswith("0001_") and not p.name.endswith(".rollback.sql")
    ]
    for p in later:
        # the one exception: an optional source contract view, created empty for
        # the adapters to define (0009: source_message_senders)
        found = [(k, n) for k, n in _DEFINES.findall(_sql(p)) if not n.startswith("source_")]
        assert found == [], f"{p.name}: functions, views and triggers belong in db/api/"


def test_the_baseline_defines_only_the_source_contract_views() -> None:
    found = _DEFINES.findall(_sql(paths.migrations_dir() / "0001_baseline.sql"))
    assert {name for _, name in found} == {
        "source_clients",
        "source_sessions",
        "source_messages",
        "source_contact_tags",
    }


def test_each_function_view_and_trigger_is_defined_once_in_db_api() -> None:
    defs: Counter[tuple[str, str]] = Counter()
    for p in db.api_files():
        for kind, name in _DEFINES.findall(_sql(p)):
            defs[(kind.lower(), name)] += 1
    assert defs, "no definitions in db/api"
    assert [k for k, n in defs.items() if n > 1] == []
    # adapters own the source views; the API never redefines them
    assert not [k for k in defs if k[1].startswith("source_")]


def test_api_files_are_applied_in_name_order_and_named_by_concern() -> None:
    names = [p.name for p in db.api_files()]
    assert names == sorted(names)
    assert all(re.fullmatch(r"\d\d_[a-z_]+\.sql", n) for n in names), names
    assert names[-1] == "99_grants.sql"
    grants = [p.name for p in db.api_files() if re.search(r"(?im)^\s*(grant|revoke)\s", _sql(p))]
    assert grants == ["99_grants.sql"], "grants live in 99_grants.sql only"


def test_applying_the_api_again_changes_nothing(db_url: str) -> None:
    with db.connect(db_url) as conn:
        before = schema.snapshot(conn)
    db.apply_api(db_url)
    assert db.migrate(db_url) == []
    with db.connect(db_url) as conn:
        assert schema.snapshot(conn) == before


def test_migrate_keeps_the_adapter_views(db_url: str) -> None:
    """The template database has the reference adapter installed; a migrate leaves it."""
    with db.connect(db_url) as conn:
        before = conn.execute(
            "SELECT pg_get_viewdef('parecer.source_sessions'::regclass) AS d"
        ).fetchone()
    db.migrate(db_url)
    with db.connect(db_url) as conn:
        after = conn.execute(
            "SELECT pg_get_viewdef('parecer.source_sessions'::regclass) AS d"
        ).fetchone()
    assert after == before and "WHERE false" not in str(after)


def test_db_schema_sql_is_current(empty_db_url: str) -> None:
    checked_in = (ROOT / "tests" / "snapshots" / "schema.sql").read_text(encoding="utf-8")
    db.migrate(empty_db_url)
    with db.connect(empty_db_url) as conn:
        fresh = schema.snapshot(conn)
        major = conn.info.server_version // 10000
    made_on = re.search(r"PostgreSQL (\d+)", checked_in)
    if made_on is None or int(made_on.group(1)) != major:
        pytest.skip(
            f"tests/snapshots/schema.sql was generated on PostgreSQL {made_on and made_on.group(1)}, this is {major}"
        )
    assert fresh == checked_in, "tests/snapshots/schema.sql is stale: run `make schema`"


def test_fresh_install_equals_rollback_and_reinstall(empty_db_url: str) -> None:
    db.migrate(empty_db_url)
    with db.connect(empty_db_url) as conn:
        first = schema.snapshot(conn)
    db.rollback(empty_db_url)
    db.migrate(empty_db_url)
    with db.connect(empty_db_url) as conn:
        assert schema.snapshot(conn) == first
