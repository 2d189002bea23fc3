"""An embedded, throwaway PostgreSQL (the ``pgserver`` package) for the demo
and the tests when no database URL is given. Works as root."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any


class EmbeddedPostgres:
    """Start a private PostgreSQL in a temporary directory; stop and delete it on exit."""

    def __init__(self, datadir: str | Path | None = None, *, keep: bool = False) -> None:
        self._own_dir = datadir is None
        self.datadir = Path(datadir) if datadir else Path(tempfile.mkdtemp(prefix="parecer-pg-"))
        self.keep = keep
        self._server: Any = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return str(self._server.get_uri())

    def start(self) -> EmbeddedPostgres:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            try:
                import pgserver
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise RuntimeError(
                    "no database URL given and the embedded PostgreSQL is not installed: "
                    "set PARECER_DATABASE_URL or pip install 'parecer[embedded]'"
                ) from exc
            get_server = getattr(pgserver, "get_server")  # noqa: B009 (pgserver does not re-export it for mypy)
            self._server = get_server(self.datadir, cleanup_mode="stop" if self.keep else "delete")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if self._own_dir and not self.keep:
            shutil.rmtree(self.datadir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
