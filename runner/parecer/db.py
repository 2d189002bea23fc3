"""Database plumbing: URLs, connections, migrations (yoyo) and adapters."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from . import paths

ENV_URL = "PARECER_DATABASE_URL"


def database_url(explicit: str | None = None) -> str | None:
    """The database URL: explicit, else $PARECER_DATABASE_URL, else None."""
    return explicit or os.environ.get(ENV_URL) or None


def connect(
    url: str, *, autocommit: bool = True, **kwargs: Any
) -> psycopg.Connection[dict[str, Any]]:
    """A connection returning rows as dicts (map by column name, never by position)."""
    return psycopg.connect(
        url,
        autocommit=autocommit,
        row_factory=dict_row,
        application_name=kwargs.pop("application_name", "parecer"),
        **kwargs,
    )


def yoyo_uri(url: str) -> str:
    """Turn a libpq URL or conninfo into yoyo's ``postgresql+psycopg://`` URI."""
    params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    dbname = quote(params.pop("dbname", ""), safe="")
    host = params.pop("host", "")
    port = params.pop("port", None)
    auth = user + (":" + quote(password, safe="") if password else "")
    netloc = ""
    if host and not host.startswith("/"):
        netloc = host + (f":{port}" if port else "")
    else:
        if host:
            params["host"] = host
        if port:
            params["port"] = port
    query = ("?" + urlencode(params)) if params else ""
    return f"postgresql+psycopg://{auth}{'@' if auth else ''}{netloc}/{dbname}{query}"


@dataclass(frozen=True)
class MigrationState:
    id: str
    applied: bool


def _backend_and_migrations(url: str) -> tuple[Any, Any]:
    from yoyo import get_backend, read_migrations

    return get_backend(yoyo_uri(url)), read_migrations(str(paths.migrations_dir()))


@contextmanager
def _yoyo(url: str) -> Iterator[tuple[Any, Any]]:
    backend, migrations = _backend_and_migrations(url)
    try:
        yield backend, migrations
    finally:
        backend.connection.close()


def migrate(url: str) -> list[str]:
    """Apply pending migrations, then the SQL API; returns the migration ids applied.

    Migrations change tables; the API files (``db/api/*.sql``: every function,
    view, trigger, comment and grant, each defined once) are applied after them
    every time, in one transaction, still under yoyo's migration lock, so a
    migrate is also how a changed function reaches the database. yoyo runs its
    ``post-apply`` hooks only when a migration was pending, hence this.
    """
    with _yoyo(url) as (backend, migrations), backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
        apply_api(url)
    return [m.id for m in pending]


def api_files() -> list[Path]:
    """The SQL API files in the order they are applied (by file name)."""
    return sorted(paths.sql_path("api").glob("*.sql"))


def apply_api(url: str) -> None:
    """Apply every API file in one transaction (idempotent: CREATE OR REPLACE, grants)."""
    with psycopg.connect(url, autocommit=False) as conn:
        apply_api_in(conn)


GRANTS_FILE = "99_grants.sql"  # the role matrix, applied last (it touches every function)


def apply_api_in(
    conn: psycopg.Connection[Any],
    before_grants: Callable[[psycopg.Connection[Any]], None] | None = None,
) -> None:
    """Apply every API file inside ``conn``'s open transaction (the caller commits or rolls back);
    ``before_grants`` is called once every object is defined, before GRANTS_FILE."""
    # As pg_dump does: SQL function bodies may name objects of a later file.
    conn.execute("SET LOCAL check_function_bodies = off")
    conn.execute("SET LOCAL client_min_messages = warning")
    # The settings catalogue is data (db/api/settings.json): 10_settings.sql reads it from here.
    catalogue = paths.sql_path("api", "settings.json").read_text(encoding="utf-8")
    conn.execute(
        "SELECT pg_catalog.set_config('parecer.settings_catalogue', %s, true)", [catalogue]
    )
    files = api_files()
    if before_grants is not None and GRANTS_FILE not in {p.name for p in files}:
        raise RuntimeError(f"db/api has no {GRANTS_FILE}")
    for path in files:
        if before_grants is not None and path.name == GRANTS_FILE:
            before_grants(conn)
        conn.execute(path.read_bytes())  # bytes: no client-side placeholders


class ApiDiff(NamedTuple):
    """How an installation's SQL API compares with this copy's db/api files."""

    drift: list[str]  # objects whose installed definition differs ('function: parecer.x(...)')
    leftovers: list[str]  # functions of schema parecer that no db/api file defines (regprocedure)


def api_diff(url: str, lock_timeout: str = "2s") -> ApiDiff:
    """The objects whose installed definition differs from what this copy's db/api files make,
    and the functions no db/api file defines (left by an older release whose migration did not
    drop them, or added by hand).

    Applies the API files inside a transaction, compares the ``parecer.schema`` snapshot
    before and after, and rolls back: nothing changes. Every function of the API is
    CREATE OR REPLACEd by the files, which rewrites its catalog row in this transaction:
    a function whose row the transaction has not written when the definitions are done
    (before the grants, which touch every function) is defined by no file. Replacing a
    view locks it for the transaction (well under a second), hence the lock timeout.
    """
    from .schema import snapshot

    leftovers: list[str] = []

    def not_rewritten(conn: psycopg.Connection[Any]) -> None:
        leftovers.extend(
            r["fn"]
            for r in conn.execute(
                "SELECT p.oid::pg_catalog.regprocedure::text AS fn FROM pg_catalog.pg_proc p"
                " WHERE p.pronamespace = 'parecer'::pg_catalog.regnamespace"
                " AND p.xmin <> pg_catalog.xid(pg_catalog.pg_current_xact_id()) ORDER BY 1"
            )
        )

    with psycopg.connect(url, autocommit=False, row_factory=dict_row) as conn:
        try:
            conn.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
            before = _blocks(snapshot(conn))
            apply_api_in(conn, before_grants=not_rewritten)
            after = _blocks(snapshot(conn))
        finally:
            conn.rollback()
    drift = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return ApiDiff(drift, leftovers)


def _blocks(text: str) -> dict[str, str]:
    """A snapshot as {'kind: name': definition}."""
    out: dict[str, str] = {}
    for block in text.split("\n-- ")[1:]:
        head, _, body = block.partition("\n")
        out[head] = body
    return out


def rollback(url: str, *, count: int | None = None) -> list[str]:
    """Roll back the last ``count`` applied migrations (all when None)."""
    with _yoyo(url) as (backend, migrations), backend.lock():
        todo = backend.to_rollback(migrations)
        if count is not None:
            todo = todo[:count]
        backend.rollback_migrations(todo)
    return [m.id for m in todo]


def status(url: str) -> list[MigrationState]:
    """Every bundled migration and whether it is applied."""
    with _yoyo(url) as (backend, migrations):
        applied = backend.get_applied_migration_hashes()
        return [MigrationState(m.id, m.hash in applied) for m in migrations]


def install_sql(url: str, path: Path) -> None:
    """Run a SQL file (an adapter, the reference schema) in one transaction."""
    sql = path.read_text(encoding="utf-8")
    with psycopg.connect(url, autocommit=False) as conn:
        conn.execute(sql.encode("utf-8"))  # bytes: no client-side placeholders


def install_adapter(url: str, name_or_path: str) -> Path:
    """Install a bundled adapter by name (``reference``, ``prisma``...) or a file path."""
    bundled = paths.adapters()
    path = bundled.get(name_or_path) or Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"no adapter {name_or_path!r}; bundled: {', '.join(bundled)}")
    install_sql(url, path)
    return path
