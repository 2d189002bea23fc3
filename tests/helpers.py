"""Shared test helpers."""

from __future__ import annotations

from typing import Any

import psycopg


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
