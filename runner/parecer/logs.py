"""Logging for the runner and CLI: one concise line per event, text or JSON.

Never log prompt text, transcript text or the API key: only ids, counts and the
prompt's sha256.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER = "parecer"


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = getattr(record, "fields", {}) or {}
        kv = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None)
        return f"{ts}Z {record.levelname.lower():<7} {record.getMessage()}" + (
            f" {kv}" if kv else ""
        )


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        out.update(
            {k: v for k, v in (getattr(record, "fields", {}) or {}).items() if v is not None}
        )
        return json.dumps(out, ensure_ascii=False, default=str)


def _fmt(v: Any) -> str:
    s = str(v)
    return json.dumps(s, ensure_ascii=False) if (" " in s or "=" in s or not s) else s


def setup(
    log_format: str = "text", level: int = logging.INFO, stream: Any = None
) -> logging.Logger:
    """Configure the ``parecer`` logger (idempotent)."""
    logger = logging.getLogger(LOGGER)
    logger.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with structured fields."""
    logger.log(level, name, extra={"fields": fields})
