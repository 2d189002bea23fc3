"""parecer's SQLSTATEs: the documented error interface of the SQL API.

Python branches on ``exc.diag.sqlstate``, never on message text.
"""

from __future__ import annotations

import psycopg

UNKNOWN_CLIENT = "PR001"
UNKNOWN_SCRIPT = "PR002"
NO_ACTIVE_SCRIPT = "PR003"
BAD_TAG_FILTER = "PR004"
MAX_SESSIONS_OUT_OF_RANGE = "PR005"
STALE_LEASE = "PR006"
INVALID_REPORT = "PR007"
UNGROUNDED_REPORT = "PR008"
BAD_SETTING = "PR009"
INVALID_ARGUMENT = "PR010"
UNKNOWN_ANALYSIS = "PR011"
UNKNOWN_RUN = "PR012"
INVALID_SCRIPT = "PR013"
UNKNOWN_SESSION = "PR014"
DUPLICATE_SESSION = "PR015"
PROMPT_TOO_LARGE = "PR016"
PROMPT_HASH_MISMATCH = "PR017"
UNKNOWN_ROLE = "PR018"
UNKNOWN_BATCH = "PR019"
BATCH_STATE = "PR020"
NOT_BACKLOG_RUN = "PR021"
RATE_KEY_NOT_BOUND = "PR025"
NO_EXCHANGE_RATE = "PR030"
BAD_METADATA_FILTER = "PR031"

#: Every code the SQL API raises on purpose, with its meaning (docs/sql-api.md mirrors this).
CODES: dict[str, str] = {
    UNKNOWN_CLIENT: "unknown client slug",
    UNKNOWN_SCRIPT: "unknown script, version or script_id",
    NO_ACTIVE_SCRIPT: "script has no active version",
    BAD_TAG_FILTER: "invalid tag filter",
    MAX_SESSIONS_OUT_OF_RANGE: "max_sessions outside 1..max_sessions_cap",
    STALE_LEASE: "wrong or expired lease token",
    INVALID_REPORT: "report does not follow the report schema",
    UNGROUNDED_REPORT: "report evidence not found in the session's messages",
    BAD_SETTING: "unknown setting or invalid value",
    INVALID_ARGUMENT: "invalid argument",
    UNKNOWN_ANALYSIS: "unknown analysis id",
    UNKNOWN_RUN: "unknown run",
    INVALID_SCRIPT: "invalid script (key, text, topics, language or model)",
    UNKNOWN_SESSION: "unknown session",
    DUPLICATE_SESSION: "session id duplicated in parecer.source_sessions",
    PROMPT_TOO_LARGE: "prompt too large: over max_input_tokens even truncated, or over the key's tokens per minute or max_request_tokens",
    PROMPT_HASH_MISMATCH: "prompt_hash is not the hash of the prompt given for this attempt",
    UNKNOWN_ROLE: "unknown role",
    UNKNOWN_BATCH: "unknown batch (or another client's)",
    BATCH_STATE: "the batch is not in a state this step may follow",
    NOT_BACKLOG_RUN: "the run is not a backlog run (batch mode is for backlog runs)",
    RATE_KEY_NOT_BOUND: "limit key not bound to a client you serve (isolation on)",
    NO_EXCHANGE_RATE: "no exchange rate for the currency (only USD and display_currency)",
    BAD_METADATA_FILTER: "invalid metadata filter",
}


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, if any."""
    if isinstance(exc, psycopg.Error) and exc.diag is not None:
        return exc.diag.sqlstate
    return None


def describe(exc: psycopg.Error) -> str:
    """One line for a user: message, SQLSTATE and hint."""
    diag = exc.diag
    msg = (diag.message_primary or str(exc)).strip()
    line = f"{msg} [{diag.sqlstate}]" if diag.sqlstate else msg
    if diag.message_hint:
        line += f" — hint: {diag.message_hint}"
    return line
