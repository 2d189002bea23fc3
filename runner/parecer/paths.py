"""Where the SQL that ships with parecer lives (installed wheel or source checkout)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def sql_root() -> Path:
    """The ``db/`` directory: ``parecer/db`` inside a wheel, ``<repo>/db`` in a checkout."""
    packaged = Path(str(resources.files("parecer"))) / "db"
    if (packaged / "migrations").is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "db"


def sql_path(*parts: str) -> Path:
    """A file under ``db/``, e.g. ``sql_path("adapters", "reference.sql")``."""
    return sql_root().joinpath(*parts)


def host_chat_schema() -> Path:
    """The reference host's chat tables (schema ``chat``): what the demo, the sample,
    the tests and the benchmarks analyse; a real host plugs in through an adapter."""
    return sql_path("reference", "host_chat_schema.sql")


def migrations_dir() -> Path:
    return sql_path("migrations")


def adapters() -> dict[str, Path]:
    """Bundled adapters by name (file stem)."""
    return {p.stem: p for p in sorted(sql_path("adapters").glob("*.sql"))}
