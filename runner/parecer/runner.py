"""The runner: claims work from PostgreSQL, calls the model, reports the outcome.

It owns no queue logic. Every decision about an item is a ``parecer.`` SQL function
(claim_with_prompts / prompt_for, extend_lease, mark_done_many / mark_done, mark_failed,
release); the runner keeps the model busy, safely:

* wakes on ``NOTIFY parecer_work`` (a dedicated autocommit LISTEN connection) and
  polls as a backstop, at the latest when ``parecer.next_due()`` says a retry falls due;
* keeps up to ``concurrency`` items in flight and claims only as many as it has free
  slots (with ``claim_ahead``, up to that many more, which wait in the runner for a
  slot, so that claims come in batches); heartbeats extend leases; no transaction is
  open across a model call;
* provider trouble (429, quota, auth) pauses every slot and releases the item
  without spending an attempt; the item's own faults go to ``mark_failed``;
* a prompt too large for the model or for the key's tokens per minute (PR016, or a
  provider 429 "Request too large") is the item's terminal failure, never a pause;
* fatal provider errors (401/403, insufficient_quota, unknown model) are logged once
  per runner with the fix; ``--once`` releases its items and exits with
  ``EXIT_PROVIDER_FATAL`` (6), otherwise the runner pauses with a growing backoff and,
  before it claims again, asks the provider (``models.retrieve``) whether it takes the key;
* a report refused for ungrounded evidence (PR008) gets up to ``repair_calls``
  corrective calls within the same attempt (the setting comes from prompt_for);
* SIGINT/SIGTERM: stop claiming, give in-flight calls a grace period, release the
  rest, exit 0. SIGKILL loses nothing: the lease expires and another runner recovers it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import openai
import psycopg
from openai.types.responses import (
    Response,
    ResponseInputParam,
    ResponseOutputMessage,
    ResponseOutputRefusal,
)
from psycopg.rows import BaseRowFactory, class_row, dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool

from . import errors, metrics
from .config import DEFAULT_MODEL, RunnerConfig, default_worker_id
from .logs import LOGGER, event

NOTIFY_CHANNEL = "parecer_work"
EXIT_PROVIDER_FATAL = 6  # `parecer runner --once` stopped by a fatal provider error
FATAL_PAUSE_SECONDS = (60.0, 120.0, 300.0, 600.0, 900.0)  # consecutive fatal pauses (last repeats)
BUDGET_CHANNEL = "parecer_budget"
MAX_LOCAL_RATE_WAIT = 10.0  # longer shared-limit waits release the item instead of holding it
ONCE_MAX_PAUSE_SECONDS = (
    60.0  # --once does not sit out a longer pause (a daily limit, say): it stops
)
QUOTA_REASON = "insufficient_quota"  # its pause is probed with a call (Runner._credentials_refused)
# An item claimed ahead (claim_ahead) waits out a pause this long at most; a longer one
# (a fatal provider error, a daily limit) releases it for another runner to take.
AHEAD_MAX_PAUSE_WAIT = 30.0
log = logging.getLogger(LOGGER + ".runner")


# ---- rows: one dataclass per parecer.* result, mapped by column name (class_row)
@dataclass(frozen=True)
class ClaimedItem:
    """A row of ``parecer.claim`` (type ``parecer.claimed_item``) plus the database's clock."""

    analysis_id: UUID
    lease_token: UUID
    attempt: int
    client_slug: str
    session_id: str
    script_id: int
    script_key: str
    script_version: int
    model: str | None
    lease_expires_at: datetime
    retry_count: int
    db_now: datetime  # clock_timestamp() when claimed: lease time left by the database's clock


@dataclass(frozen=True)
class Prompt:
    """The row of ``parecer.prompt_for``: exactly what the model gets."""

    instructions: str
    input: str
    report_schema: dict[str, Any]
    prompt_hash: str
    model: str | None
    omitted_messages: int  # messages the size policy left out (max_input_tokens)
    input_tokens: int  # the database's estimate of the input: ceil(characters / 3)
    repair_calls: int  # corrective calls allowed after PR008 (setting repair_calls)


@dataclass(frozen=True)
class ClaimedPrompt(ClaimedItem):
    """A row of ``parecer.claim_with_prompts``: a claimed item with its prompt, or
    (``sqlstate``) the error ``prompt_for`` raises for it."""

    instructions: str | None
    input: str | None
    report_schema: dict[str, Any] | None
    prompt_hash: str | None
    omitted_messages: int | None
    input_tokens: int | None
    repair_calls: int | None
    sqlstate: str | None
    message: str | None

    def prompt(self) -> Prompt | None:
        """The prompt, None when prompt_for would raise (the item asks it on its own)."""
        if (
            self.sqlstate is not None
            or self.instructions is None
            or self.input is None
            or self.report_schema is None
            or self.prompt_hash is None
            or self.omitted_messages is None
            or self.input_tokens is None
            or self.repair_calls is None
        ):
            return None
        return Prompt(
            self.instructions,
            self.input,
            self.report_schema,
            self.prompt_hash,
            self.model,
            self.omitted_messages,
            self.input_tokens,
            self.repair_calls,
        )


@dataclass(frozen=True)
class ItemOutcome:
    """A row of ``parecer.mark_done`` / ``mark_failed`` / ``release`` (``parecer.item_outcome``)."""

    status: str
    retry_count: int
    next_retry_at: datetime | None


@dataclass(frozen=True)
class AckRow:
    """A row of ``parecer.mark_done_many``: one item's outcome (done / stale / invalid)."""

    analysis_id: UUID | None
    outcome: str
    sqlstate: str | None
    message: str | None


class Refused(Exception):
    """mark_done refused the report (PR007 invalid, PR008 ungrounded, PR017 not the prompt given):
    the attempt may repair a PR008; the others fail the attempt."""

    def __init__(self, code: str, reason: str, detail: str | None) -> None:
        super().__init__(reason)
        self.code, self.reason, self.detail = code, reason, detail


@dataclass(frozen=True)
class RateGrant:
    """The row of ``parecer.acquire_rate`` (``parecer.rate_grant``)."""

    granted: bool
    wait_seconds: float


@dataclass(frozen=True)
class Lease:
    """``parecer.extend_lease``'s new expiry, with the database's clock."""

    expires_at: datetime
    db_now: datetime


@dataclass(frozen=True)
class Remaining:
    remaining: int


@dataclass(frozen=True)
class Due:
    due: float | None  # seconds until parecer.next_due(), by the database's clock


@dataclass
class Usage:
    """What one model call used; stored with the attempt (mark_done / mark_failed)."""

    input_tokens: int | None
    cached_input_tokens: int | None
    output_tokens: int | None
    latency_ms: int
    response_id: str | None
    requested_model: str
    model: str
    calls: int = 1  # paid model calls in this attempt (1 + repair calls)
    # The part of the tokens above billed at the Batch API price (input_tokens,
    # cached_input_tokens, output_tokens); None: all at the standard price. The
    # database prices it (parecer._cost, model_prices.batch_price_factor).
    batch: dict[str, int] | None = None

    def json(self) -> str:
        d = asdict(self)
        if d["batch"] is None:
            del d["batch"]
        return json.dumps(d)

    def plus(self, other: Usage) -> Usage:
        """This attempt's usage with another call's added (a repair call): tokens,
        latency and calls summed; the later call's response id and model."""

        def add(a: int | None, b: int | None) -> int | None:
            return None if a is None and b is None else (a or 0) + (b or 0)

        return Usage(
            input_tokens=add(self.input_tokens, other.input_tokens),
            cached_input_tokens=add(self.cached_input_tokens, other.cached_input_tokens),
            output_tokens=add(self.output_tokens, other.output_tokens),
            latency_ms=self.latency_ms + other.latency_ms,
            response_id=other.response_id,
            requested_model=other.requested_model,
            model=other.model,
            calls=self.calls + other.calls,
            batch=(
                None
                if self.batch is None and other.batch is None
                else {
                    k: (self.batch or {}).get(k, 0) + (other.batch or {}).get(k, 0)
                    for k in ("input_tokens", "cached_input_tokens", "output_tokens")
                }
            ),
        )


@dataclass
class InFlight:
    """An item being worked on; ``reporting`` is set once its outcome is being reported."""

    item: ClaimedItem
    reporting: bool = False
    prompt: Prompt | None = None  # from parecer.claim_with_prompts
    slot: bool = False  # holds one of the runner's slots (a model call may run)


Row = TypeVar("Row")
# Where an item's first answer comes from when not from a call the runner makes
# (Runner.settle): given the prompt and model, the response and its usage.
Answer = Callable[["Prompt", str], Awaitable[tuple[Response, "Usage"]]]

__all__ = [
    "DEFAULT_MODEL",
    "ClaimedItem",
    "ItemFailure",
    "ItemOutcome",
    "Prompt",
    "ProviderPause",
    "Runner",
    "RunnerConfig",
    "RunnerStats",
    "Usage",
    "classify",
    "default_worker_id",
    "parse_report",
    "request_body",
    "run",
]


class ProviderPause(Exception):
    """The provider, not the item, is the problem: pause and release."""

    def __init__(
        self, reason: str, seconds: float, loud: bool = False, fix: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.seconds = seconds
        self.loud = loud
        self.fix = fix  # set: fatal (credentials, quota, model): no retry helps until fixed

    @property
    def fatal(self) -> bool:
        return self.fix is not None


class NotStarted(Exception):
    """An item claimed ahead that will not start here (shutdown, a long pause): release it,
    no attempt spent, claimable again after ``delay`` seconds."""

    def __init__(self, reason: str, delay: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class ItemFailure(Exception):
    """The item's attempt failed: mark_failed with this short reason."""

    def __init__(self, reason: str, retryable: bool = True, usage: Usage | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.usage = usage


@dataclass
class RunnerStats:
    outcomes: Counter[str] = field(default_factory=metrics.OutcomeCounter)
    claimed: int = 0
    claims: int = 0  # claim calls that gave items (claimed / claims: items per claim)
    input_tokens: int = 0
    output_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    fatal: str | None = None  # the fatal provider error that stopped a --once runner

    def line(self) -> str:
        """The summary as one readable line."""
        d = self.as_dict()
        items = ", ".join(f"{k} {v}" for k, v in d.items() if k not in ("seconds", "per_minute"))
        return f"{items} in {d['seconds']}s ({d['per_minute']} done/min)"

    def as_dict(self) -> dict[str, Any]:
        secs = max(time.monotonic() - self.started, 1e-9)
        return {
            "claimed": self.claimed,
            "claims": self.claims,
            **dict(self.outcomes),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "seconds": round(secs, 1),
            "per_minute": round(self.outcomes["done"] * 60 / secs, 1),
        }


def _retry_after(exc: openai.APIStatusError, default: float) -> float:
    headers = exc.response.headers if exc.response is not None else {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(float(value) * scale, 0.05)
            except ValueError:
                pass
    return default


# The calls that end an attempt without a report (the item's id and lease token first).
_MARK_FAILED = "SELECT * FROM parecer.mark_failed(%s, %s, %s, %s, %s)"
_RELEASE = "SELECT * FROM parecer.release(%s, %s, %s, %s)"


def _db_lost(what: str, exc: psycopg.OperationalError, failures: int) -> float:
    """Log that the database went away (the error's kind, never its text) and return how
    long to wait before the next try: 1, 2, 4 ... up to 30 seconds for the failures in a row."""
    delay = min(0.5 * 2.0**failures, 30.0)
    event(log, what, logging.WARNING, error=type(exc).__name__, retry_in=delay)
    return delay


PROMPT_TOO_LARGE = "prompt too large"  # the reason of an item that can never be sent

# Provider answers that say this runner is set up wrong: every call would get the
# same, so the runner pauses loudly (what, and the fix) instead of failing items.
_SETUP_ERRORS: tuple[
    tuple[type[openai.APIStatusError] | tuple[type[openai.APIStatusError], ...], str, str], ...
] = (
    (
        (openai.AuthenticationError, openai.PermissionDeniedError),
        "provider refused the credentials",
        "set a valid OPENAI_API_KEY with access to the model (and OPENAI_BASE_URL, if any)",
    ),
    (
        openai.NotFoundError,
        "model or endpoint not found",
        "check the model name (--model / the script's model) and OPENAI_BASE_URL",
    ),
)


def classify(exc: Exception) -> ProviderPause | ItemFailure:
    """Whose fault is a model-call exception, and what happens next."""
    if isinstance(exc, openai.RateLimitError):
        if exc.code == "insufficient_quota":
            return ProviderPause(
                f"{QUOTA_REASON}: the provider account has no quota left",
                300.0,
                loud=True,
                fix="add credit or raise the usage limit of the provider account (billing)",
            )
        # OpenAI answers a request bigger than the whole tokens-per-minute limit with
        # code rate_limit_exceeded too; only the message tells it apart. Waiting cannot
        # help that request, and it must not pause the key for everyone else.
        if "request too large" in str(exc.message).lower():
            return ItemFailure(
                f"{PROMPT_TOO_LARGE}: the provider says the request exceeds its tokens per minute",
                retryable=False,
            )
        return ProviderPause("rate limited (429)", _retry_after(exc, 5.0))
    for kinds, what, fix in _SETUP_ERRORS:
        if isinstance(exc, kinds):
            return ProviderPause(f"{what} ({exc.status_code})", 60.0, loud=True, fix=fix)
    if isinstance(exc, openai.BadRequestError):
        if exc.code == "context_length_exceeded":
            return ItemFailure("context length exceeded", retryable=False)
        return ItemFailure(f"bad request ({exc.code or 400})", retryable=False)
    if isinstance(exc, openai.APITimeoutError):
        return ItemFailure("model call timed out")
    if isinstance(exc, openai.APIConnectionError):
        return ItemFailure("connection error calling the model")
    if isinstance(exc, openai.InternalServerError):
        return ItemFailure(f"provider error {exc.status_code}")
    if isinstance(exc, openai.APIStatusError):
        return ItemFailure(f"provider error {exc.status_code}", retryable=exc.status_code >= 500)
    return ItemFailure(f"runner error: {type(exc).__name__}")


def _refused_unprocessed(status: int) -> bool:
    """Whether an HTTP status says the provider refused the request without processing it
    (no tokens used): any 4xx but 408 (request timeout)."""
    return 400 <= status < 500 and status != 408


REPAIR_MESSAGE_TOKENS = 300  # the limiter's allowance for the repair request's own text
_REPAIR_LISTED = 20  # failing citations named in a repair request, at most


def repair_request(detail: str | None) -> str:
    """The corrective message after PR008: the failing citations (path, message_id,
    problem) from mark_done's DIAG detail, and what a corrected answer must do. No line
    of it can pass for a transcript line."""
    try:
        problems = json.loads(detail or "[]")
    except ValueError:
        problems = []
    if not isinstance(problems, list):
        problems = []
    lines = [
        "Your report was refused: some of its evidence is not grounded in the transcript.",
    ]
    for p in problems[:_REPAIR_LISTED]:
        if not isinstance(p, dict):
            continue
        cited = (
            f" (message_id {json.dumps(p['message_id'], ensure_ascii=False)})"
            if "message_id" in p
            else ""
        )
        lines.append(f"- {p.get('path', '?')}{cited}: {p.get('problem', 'not grounded')}")
    if len(problems) > _REPAIR_LISTED:
        lines.append(f"- and {len(problems) - _REPAIR_LISTED} more")
    lines.append(
        "Each excerpt must be copied from the message whose id it cites (ids as the transcript"
        " shows them after msg), and every verdict needs evidence. Answer with the corrected,"
        " complete JSON report."
    )
    return "\n".join(lines)


def limit_label(cfg: RunnerConfig) -> str:
    """A label for the provider key in shared rate-limit state: never the key itself."""
    if cfg.key_label:
        return cfg.key_label
    if cfg.api_key:
        return "key-" + hashlib.sha256(cfg.api_key.encode()).hexdigest()[:8]
    return "default"


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(value: str | None) -> float | None:
    """OpenAI's x-ratelimit-reset-* values: '1s', '250ms', '6m0s'."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = _DURATION.findall(value)
    return sum(float(n) * scale[u] for n, u in parts) if parts else None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    v = headers.get(name)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _usage(resp: Response, latency_ms: int, requested_model: str) -> Usage:
    u = resp.usage
    return Usage(
        input_tokens=u.input_tokens if u else None,
        cached_input_tokens=u.input_tokens_details.cached_tokens if u else None,
        output_tokens=u.output_tokens if u else None,
        latency_ms=latency_ms,
        response_id=resp.id,
        requested_model=requested_model,
        model=resp.model or requested_model,
    )


def request_body(
    analysis_id: UUID,
    prompt: Prompt,
    model: str,
    model_input: str | ResponseInputParam,
    max_output_tokens: int,
) -> dict[str, Any]:
    """The Responses API request for an item: the one place it is built, for the runner's
    calls and for the lines of a Batch API input file (runner/parecer/batch.py)."""
    return {
        "model": model,
        "instructions": prompt.instructions,
        "input": model_input,
        "text": {
            "format": {
                "type": "json_schema",
                "name": "parecer_report",
                "schema": prompt.report_schema,
                "strict": True,
            }
        },
        "store": False,
        "metadata": {"analysis_id": str(analysis_id)},
        "max_output_tokens": max_output_tokens,
    }


def parse_report(resp: Response) -> dict[str, Any]:
    """The report from a Responses API answer; ItemFailure when there is none."""
    if resp.status == "incomplete":
        reason = (resp.incomplete_details.reason if resp.incomplete_details else None) or "unknown"
        raise ItemFailure(f"incomplete output ({reason})", retryable=False)
    for item in resp.output:
        if isinstance(item, ResponseOutputMessage) and any(
            isinstance(part, ResponseOutputRefusal) for part in item.content
        ):
            raise ItemFailure("model refused", retryable=False)
    try:
        report = json.loads(resp.output_text)
    except (TypeError, ValueError):
        raise ItemFailure("invalid JSON in model output") from None
    if not isinstance(report, dict):
        raise ItemFailure("model output is not a JSON object")
    return report


def provider_client(config: RunnerConfig, max_retries: int) -> openai.AsyncOpenAI:
    """The SDK client for the configured key or endpoint; RuntimeError when there is neither."""
    if not (config.api_key or config.base_url):
        raise RuntimeError(
            "OPENAI_API_KEY is not set (or give OPENAI_BASE_URL for an OpenAI-compatible endpoint)"
        )
    return openai.AsyncOpenAI(
        api_key=config.api_key or "not-needed",
        base_url=config.base_url,
        max_retries=max_retries,
        timeout=config.request_timeout,
    )


class Runner:
    """One runner process: up to ``concurrency`` items in flight."""

    def __init__(self, config: RunnerConfig, client: openai.AsyncOpenAI | None = None) -> None:
        self.cfg = config
        self._owns_client = client is None
        # The runner retries through the queue (backoff decided in the database), not in the SDK.
        self.client = client or provider_client(config, max_retries=0)
        self.stats = RunnerStats()
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], InFlight] = {}
        self._pause_until = 0.0
        self._slots = config.concurrency  # ramps back up after a pause
        self._working = 0  # items holding a slot (the rest of _inflight waits for one)
        self._storing = 0  # claim_ahead: items whose report waits to be stored, slot given back
        self._slot_freed = asyncio.Event()  # a slot freed, a pause or a stop: waiters look again
        self._db_failures = 0
        self._rate_logged = 0.0
        self._fatal_pauses = 0  # consecutive fatal provider pauses (the backoff's index)
        # after a fatal pause: ask the provider whether it takes the key before claiming
        self._probe_due = False
        self._probe_quota = False  # the fatal pause was insufficient_quota: probe with a call
        self._abort = False  # a fatal error under --once: in-flight calls get no grace
        # Reports waiting to be stored together (ack_window_ms > 0): (mark_done_many item, its
        # outcome's future); the timer sends them when the window closes, the sends are tracked.
        self._acks: list[tuple[dict[str, Any], asyncio.Future[AckRow]]] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_sends: set[asyncio.Task[None]] = set()
        # What a refused call tells the shared limiter (its pause, its tokens back): it
        # lands even when the call's task is cancelled meanwhile (--once stopping at a
        # fatal error); awaited before the pool closes, as the acknowledgements are.
        self._rate_reports: set[asyncio.Task[Any]] = set()

    # ---- control -------------------------------------------------------
    def stop(self) -> None:
        """Stop claiming; in-flight items get the grace period, then are released."""
        if not self._stopping.is_set():
            event(log, "stopping", worker=self.cfg.worker_id, in_flight=len(self._inflight))
        self._stopping.set()
        self._wake.set()
        self._slot_freed.set()

    def _pause(self, p: ProviderPause) -> int:
        """Pause every slot of this runner (said once per pause, not once per slot); returns
        the delay in seconds the item is released with. A fatal error under ``--once``
        stops the runner instead: in-flight items are released at once and the exit code
        is EXIT_PROVIDER_FATAL."""
        now = time.monotonic()
        if p.fatal and self.cfg.once:
            if self.stats.fatal is None:
                self.stats.fatal = p.reason
                event(
                    log,
                    "fatal provider error: stopping",
                    logging.ERROR,
                    reason=p.reason,
                    fix=p.fix,
                    exit_code=EXIT_PROVIDER_FATAL,
                    worker=self.cfg.worker_id,
                )
            self._abort = True
            self.stop()
            return 0
        if now < self._pause_until:  # already paused: extend quietly
            if not p.fatal:
                self._pause_until = max(self._pause_until, now + p.seconds)
            return max(int(self._pause_until - now + 0.999), 0)
        seconds = p.seconds
        if p.fatal:
            seconds = FATAL_PAUSE_SECONDS[min(self._fatal_pauses, len(FATAL_PAUSE_SECONDS) - 1)]
            self._fatal_pauses += 1
            self._probe_due = True
            self._probe_quota = p.reason.startswith(QUOTA_REASON)
        self._pause_until = now + seconds
        self._slots = 1
        self._slot_freed.set()  # items claimed ahead decide whether to wait it out
        metrics.pause(p.reason)
        event(
            log,
            "provider pause",
            logging.ERROR if p.loud else logging.WARNING,
            reason=p.reason,
            fix=p.fix,
            seconds=round(seconds, 2),
            worker=self.cfg.worker_id,
        )
        if self.cfg.once and seconds > ONCE_MAX_PAUSE_SECONDS:
            # Drain what is claimable now, not what becomes claimable tomorrow: the items go
            # back with the pause as their delay, and cron's next run takes them.
            event(
                log,
                "--once stops: pause longer than it waits",
                seconds=round(seconds, 2),
                limit=ONCE_MAX_PAUSE_SECONDS,
                worker=self.cfg.worker_id,
            )
            self.stop()
        return int(seconds + 0.999)

    # ---- database ------------------------------------------------------
    async def _fetch(
        self, factory: BaseRowFactory[Row], sql: str, params: tuple[Any, ...], attempts: int
    ) -> list[Row]:
        """One parecer.* call on a pooled autocommit connection; retries only when the database
        is unreachable."""
        assert self.pool is not None
        delay = 0.2
        for i in range(attempts):
            try:
                async with self.pool.connection() as conn:
                    cur = conn.cursor(row_factory=factory)
                    await cur.execute(sql, params)
                    return await cur.fetchall()
            except psycopg.OperationalError:
                metrics.DB_ERRORS.inc()
                if i == attempts - 1:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def _rows(
        self, row: type[Row], sql: str, params: tuple[Any, ...] = (), *, attempts: int = 5
    ) -> list[Row]:
        """The call's rows as ``row`` dataclasses, mapped by column name."""
        return await self._fetch(class_row(row), sql, params, attempts)

    async def _one(self, row: type[Row], sql: str, params: tuple[Any, ...] = ()) -> Row:
        [one] = await self._rows(row, sql, params)
        return one

    async def _call(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        """A parecer.* call whose result is not needed."""
        await self._fetch(tuple_row, sql, params, 5)

    async def _listen(self) -> None:
        """Dedicated LISTEN connection; reconnects with capped backoff."""
        failures = 0
        while not self._stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.cfg.database_url, autocommit=True, application_name="parecer-listen"
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    await conn.execute(f"LISTEN {BUDGET_CHANNEL}")
                    failures = 0
                    self._wake.set()  # we may have missed notifications while away
                    async for n in conn.notifies():
                        if n.channel == BUDGET_CHANNEL:
                            try:
                                alert = json.loads(n.payload)
                            except ValueError:
                                alert = {}
                            event(
                                log,
                                "budget alert",
                                logging.ERROR if alert.get("threshold") == 100 else logging.WARNING,
                                **{
                                    k: alert.get(k)
                                    for k in (
                                        "client",
                                        "scope",
                                        "period",
                                        "threshold",
                                        "spent_usd",
                                        "budget_usd",
                                    )
                                },
                            )
                        else:
                            self._wake.set()
            except psycopg.OperationalError as exc:
                failures += 1
                await asyncio.sleep(_db_lost("listen connection lost", exc, failures))

    async def _refresh_queue_metrics(self) -> None:
        """Queue gauges for /metrics from parecer.metrics, through the pool (a scrape opens no connection)."""
        while not self._stopping.is_set():
            try:
                rows = await self._fetch(dict_row, "SELECT * FROM parecer.metrics", (), 1)
                metrics.QUEUE.row = rows[0] if rows else None
            except psycopg.Error:
                metrics.DB_ERRORS.inc()
            await asyncio.sleep(15)

    # ---- the loop ------------------------------------------------------
    async def open(self) -> None:
        """Open the connection pool (``run`` does; batch ingestion calls it itself)."""
        cfg = self.cfg
        self.pool = AsyncConnectionPool(
            cfg.database_url,
            min_size=1,
            max_size=cfg.pool_max,  # the connection budget: independent of concurrency
            kwargs={
                "autocommit": True,
                "application_name": "parecer-runner",
            },
            open=False,
            reconnect_timeout=0,
        )
        await self.pool.open()

    async def close(self) -> None:
        """Store the buffered reports, close the pool and the client (when owned)."""
        self._send_acks()
        await asyncio.gather(*self._ack_sends, *self._rate_reports, return_exceptions=True)
        if self.pool is not None:
            await self.pool.close()
        if self._owns_client:
            await self.client.close()

    async def settle(self, item: ClaimedItem, answer: Answer) -> None:
        """Finish an item whose first answer comes from elsewhere (a Batch API output
        line): the same checks, repair call, mark_done / mark_failed / release as an item
        the runner called the model for. ``answer(prompt, model)`` gives the response and
        its usage, or raises ItemFailure / ProviderPause."""
        self.stats.claimed += 1
        await self._process(InFlight(item), answer)

    async def run(self) -> RunnerStats:
        cfg = self.cfg
        await self.open()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests): stop() is called directly
        listener: asyncio.Future[Any] = asyncio.ensure_future(
            self._listen() if cfg.listen else self._stopping.wait()
        )
        metrics.IN_FLIGHT.set_function(lambda: len(self._inflight))
        if cfg.metrics:
            listener = asyncio.gather(listener, self._refresh_queue_metrics())
        event(
            log,
            "runner started",
            worker=cfg.worker_id,
            concurrency=cfg.concurrency,
            client=cfg.client_slug,
            model=cfg.model,
            once=cfg.once or None,
            run_id=cfg.run_id,
        )
        try:
            await self._loop()
        finally:
            await self._shutdown()
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
            await self.close()
            event(log, "runner summary", worker=cfg.worker_id, **self.stats.as_dict())
        return self.stats

    async def _loop(self) -> None:
        cfg = self.cfg
        while not self._stopping.is_set():
            now = time.monotonic()
            if now < self._pause_until:
                await self._sleep(self._pause_until - now)
                continue
            if self._probe_due:
                if await self._credentials_refused():
                    continue  # paused again, no item claimed
                self._probe_due = False
            free = self._claimable()
            claimed = 0
            if free > 0:
                try:
                    # the items and their prompts in one call (the hashes recorded as
                    # prompt_for records them)
                    items = await self._rows(
                        ClaimedPrompt,
                        "SELECT c.*, clock_timestamp() AS db_now FROM parecer.claim_with_prompts(worker => %s,"
                        " max_items => %s, lease_seconds => %s, client_slug => %s, sync_commit => false) c",
                        (cfg.worker_id, free, cfg.lease_seconds, cfg.client_slug),
                        attempts=1,
                    )
                    self._db_failures = 0
                except psycopg.OperationalError as exc:
                    self._db_failures += 1
                    await self._sleep(_db_lost("database unreachable", exc, self._db_failures))
                    continue
                claimed = len(items)
                self.stats.claimed += claimed
                if claimed:
                    self.stats.claims += 1
                    metrics.CLAIM_BATCHES.observe(claimed)
                for item in items:
                    # no prompt (prompt_for would raise for it): the item asks prompt_for
                    # on its own, which raises what it raises
                    flight = InFlight(item, prompt=item.prompt())
                    task = asyncio.create_task(self._process(flight))
                    self._inflight[task] = flight
                if claimed == free:
                    continue  # there may be more: fill the free slots first
            if not self._inflight and claimed == 0:
                if cfg.once:
                    return
                if cfg.run_id is not None and await self._run_settled():
                    return
            await self._sleep(await self._poll_timeout())

    def _claimable(self) -> int:
        """How many items to claim now: the free slots; with claim_ahead, once no more than
        half of the items claimed ahead are still waiting, enough to fill the free slots and
        claim_ahead waiting items again (so that claims come in batches)."""
        cap = min(self._slots, self.cfg.concurrency)
        ahead = self.cfg.claim_ahead
        if not ahead:
            return cap - len(self._inflight)
        waiting = len(self._inflight) - self._working - self._storing
        return cap + ahead - len(self._inflight) if waiting <= ahead // 2 else 0

    async def _take_slot(self, flight: InFlight, starting: bool = True) -> None:
        """Wait for a slot: an item claimed ahead before its first call (``starting``; it
        raises NotStarted when the item should go back instead: the runner stops, or pauses
        for longer than AHEAD_MAX_PAUSE_WAIT), or an item whose report came back refused
        before its repair call. Without claim_ahead every item is claimed for a free slot
        and keeps it to the end: it takes it at once."""
        cfg = self.cfg
        if flight.slot:
            return  # kept it (its report was stored without the buffer)
        while cfg.claim_ahead:
            pause = self._pause_until - time.monotonic()
            if starting and self._stopping.is_set():  # back, after the pause if one runs
                raise NotStarted(
                    "shutdown: runner stopped before the item started", max(int(pause + 0.999), 0)
                )
            if starting and pause > AHEAD_MAX_PAUSE_WAIT:
                raise NotStarted("runner paused before the item started", int(pause + 0.999))
            if (pause <= 0 or not starting) and self._working < min(self._slots, cfg.concurrency):
                break
            self._slot_freed.clear()
            try:
                await asyncio.wait_for(self._slot_freed.wait(), pause if pause > 0 else None)
            except TimeoutError:
                pass
        flight.slot = True
        self._working += 1

    def _give_slot(self, flight: InFlight) -> None:
        if flight.slot:
            flight.slot = False
            self._working -= 1
            self._slot_freed.set()

    async def _credentials_refused(self) -> bool:
        """After a fatal pause, whether the provider still refuses this runner's key or
        account, asked before claiming: an item claimed only to be released again counts
        against its max_releases, so probing with items would end a long outage (a key
        revoked, a quota used up, over a weekend) with items failed. For a key,
        models.retrieve (free); for insufficient_quota, which models.retrieve does not
        see, the smallest call of the runner's own (16 output tokens, nothing stored, no
        item; its few tokens are no item's, so no spend records them). Only the fatal
        answer again keeps the runner paused (it pauses again, with the growing backoff).
        Any other answer, a server without that endpoint included, lets a real call decide."""
        cfg = self.cfg
        try:
            if self._probe_quota:
                await self.client.responses.create(
                    model=cfg.model,
                    input="ping",
                    max_output_tokens=16,
                    store=False,
                    timeout=cfg.request_timeout,
                    extra_headers=cfg.extra_headers,
                )
            else:
                await self.client.models.retrieve(cfg.model)
        except (
            openai.AuthenticationError,
            openai.PermissionDeniedError,
            openai.RateLimitError,
        ) as exc:
            verdict = classify(exc)
            if isinstance(verdict, ProviderPause) and verdict.fatal:
                self._pause(verdict)
                return True
        except openai.APIError:
            pass
        return False

    async def _run_settled(self) -> bool:
        rows = await self._rows(
            Remaining, "SELECT remaining FROM parecer.run_summary(%s)", (self.cfg.run_id,)
        )
        return bool(rows) and rows[0].remaining == 0

    async def _poll_timeout(self) -> float:
        """Sleep until the poll interval, or earlier when a retry falls due."""
        timeout = self.cfg.poll_seconds
        try:
            rows = await self._rows(
                Due,
                "SELECT extract(epoch FROM parecer.next_due(%s) - clock_timestamp())::float8 AS due",
                (self.cfg.client_slug,),
                attempts=1,
            )
        except psycopg.Error:
            return min(timeout, 5.0)
        due = rows[0].due if rows else None
        if due is not None:
            # seconds by the database's clock; a floor, so that an item claim cannot take
            # (locked by a claim elsewhere) makes no busy loop
            timeout = min(timeout, max(float(due), 0.25))
        return timeout

    async def _sleep(self, seconds: float) -> None:
        """Wait for a NOTIFY, a finished item, the stop signal or the timeout."""
        self._wake.clear()
        if self._stopping.is_set():
            return
        # the stop event too: a stop() that landed while we were busy must not wait out the timeout
        waiters: set[asyncio.Future[Any]] = {
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        }
        waiters |= set(self._inflight)
        done, pending = await asyncio.wait(
            waiters, timeout=max(seconds, 0.0), return_when=asyncio.FIRST_COMPLETED
        )
        for w in pending:
            if w not in self._inflight:
                w.cancel()
        for t in done:
            if t in self._inflight:
                self._inflight.pop(t)
        # reap any other finished tasks
        for t in [t for t in self._inflight if t.done()]:
            self._inflight.pop(t)

    async def _shutdown(self) -> None:
        if not self._inflight:
            self._send_acks()
            await asyncio.gather(*self._ack_sends, return_exceptions=True)
            return
        grace = 0.0 if self._abort else self.cfg.shutdown_grace
        done, pending = await asyncio.wait(set(self._inflight), timeout=grace)
        for t in pending:
            if self._abort and self._inflight[t].reporting:
                continue  # already reporting its outcome (a release): let it finish
            t.cancel()  # _process releases the item
        await asyncio.gather(*pending, return_exceptions=True)
        self._inflight.clear()
        await asyncio.gather(*self._ack_sends, return_exceptions=True)  # before the pool closes

    # ---- one item ------------------------------------------------------
    async def _heartbeat(self, flight: InFlight) -> None:
        item = flight.item
        # Lease time left by the database's clock, counted down on ours (monotonic):
        # a runner whose wall clock is off still heartbeats in time.
        left = (item.lease_expires_at - item.db_now).total_seconds()
        while True:
            await asyncio.sleep(max(left / 3, 0.5))
            try:
                lease = await self._one(
                    Lease,
                    "SELECT parecer.extend_lease(%s, %s, %s) AS expires_at,"
                    " clock_timestamp() AS db_now",
                    (item.analysis_id, item.lease_token, self.cfg.lease_seconds),
                )
                left = (lease.expires_at - lease.db_now).total_seconds()
                metrics.LEASE_EXTENSIONS.inc()
            except psycopg.Error as exc:
                if errors.sqlstate(exc) in (errors.STALE_LEASE, errors.UNKNOWN_ANALYSIS):
                    if not flight.reporting:
                        event(log, "lease lost", logging.WARNING, analysis=str(item.analysis_id))
                    return
                left = max(left * 2 / 3, 1.5)  # database trouble: keep trying while the lease lasts

    async def _process(self, flight: InFlight, answer: Answer | None = None) -> None:
        item = flight.item
        fields: dict[str, Any] = {
            "analysis": str(item.analysis_id),
            "client": item.client_slug,
            "attempt": item.attempt,
        }
        heartbeat = asyncio.create_task(self._heartbeat(flight))
        t0 = time.monotonic()
        try:
            try:
                await self._take_slot(flight)
                t0 = time.monotonic()
                if heartbeat.done() and not heartbeat.cancelled() and heartbeat.exception() is None:
                    # claimed ahead, and its lease was lost while it waited (taken over, reset)
                    self._stale(fields, "lease lost while waiting for a slot; not started")
                    return
                await self._attempt(flight, fields, answer)
            except NotStarted as n:
                await self._finish_release(flight, fields, n.reason, n.delay)
            except asyncio.CancelledError:
                await self._finish_release(flight, fields, "shutdown: runner stopped", 0)
                raise
            except ProviderPause as p:
                delay = self._pause(p)
                await self._finish_release(flight, fields, p.reason, delay)
            except ItemFailure as f:
                await self._finish_failed(flight, fields, f, t0)
            except Exception as exc:  # never leave an item in processing
                log.debug("unexpected error", exc_info=True)
                await self._finish_failed(
                    flight, fields, ItemFailure(f"runner error: {type(exc).__name__}"), t0
                )
        except psycopg.Error as exc:
            # could not even report: the lease will expire and another runner recovers the item
            self.stats.outcomes["unreported"] += 1
            event(
                log,
                "item unreported",
                logging.ERROR,
                **fields,
                error=type(exc).__name__,
                sqlstate=errors.sqlstate(exc),
            )
        finally:
            self._give_slot(flight)  # when the item is done with, reported or not
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)

    async def _attempt(
        self, flight: InFlight, fields: dict[str, Any], answer: Answer | None = None
    ) -> None:
        cfg, item = self.cfg, flight.item
        try:
            prompt = flight.prompt
            if prompt is None:
                prompt = await self._one(
                    Prompt, "SELECT * FROM parecer.prompt_for(%s)", (item.analysis_id,)
                )
        except psycopg.Error as exc:
            if errors.sqlstate(exc) == errors.PROMPT_TOO_LARGE:
                raise ItemFailure(
                    f"{PROMPT_TOO_LARGE}: not one message fits in max_input_tokens",
                    retryable=False,
                ) from None
            raise
        model = item.model or prompt.model or cfg.model
        fields["prompt"] = prompt.prompt_hash[:16]
        if prompt.omitted_messages:
            fields["omitted_messages"] = prompt.omitted_messages
        limit_key = f"{limit_label(cfg)}:{model}"
        estimate = prompt.input_tokens + cfg.expected_output_tokens
        if answer is not None:
            resp, usage = await answer(prompt, model)
        else:
            resp, usage = await self._call_model(
                item.analysis_id, prompt, model, limit_key, estimate, prompt.input
            )
        repairs_left = prompt.repair_calls
        reason, detail = "", None  # type: tuple[str, str | None]
        while True:
            try:
                report = parse_report(resp)
            except ItemFailure as f:
                f.usage = usage
                raise
            used_model = resp.model or model
            try:
                done = await self._report_done(
                    flight, fields, report, used_model, prompt.prompt_hash, usage, repairs_left > 0
                )
                break
            except Refused as r:
                reason, detail = r.reason, r.detail
                if r.code != errors.UNGROUNDED_REPORT or repairs_left <= 0:
                    raise ItemFailure(reason, usage=usage) from None
                flight.reporting = False  # the attempt goes on
            # One corrective call within this attempt: the original input, the answer and
            # the failing citations; its usage joins the attempt's (docs/report-schema.md).
            repairs_left -= 1
            fields["repair"] = prompt.repair_calls - repairs_left
            event(log, "repair call", **fields, reason=reason)
            messages: ResponseInputParam = [
                {"role": "user", "content": prompt.input},
                {"role": "assistant", "content": resp.output_text},
                {"role": "user", "content": repair_request(detail)},
            ]
            repair_estimate = (
                prompt.input_tokens
                + (usage.output_tokens or cfg.expected_output_tokens)
                + REPAIR_MESSAGE_TOKENS
                + cfg.expected_output_tokens
            )
            await self._take_slot(flight, starting=False)  # given back while the report was stored
            try:
                resp, more = await self._call_model(
                    item.analysis_id, prompt, model, limit_key, repair_estimate, messages
                )
            except ProviderPause as p:
                # The provider's state (429, quota, credentials) stops the repair: the
                # attempt ends as it would with repair off, on its ungrounded answer
                # (paid for, so its usage is recorded); the runner pauses as for any 429.
                self._pause(p)
                raise ItemFailure(f"{reason}; repair call not made", usage=usage) from None
            except ItemFailure as f:
                raise ItemFailure(
                    f"{reason}; repair call failed: {f.reason}", usage=usage
                ) from None
            usage = usage.plus(more)
        if done is None:
            return
        self.stats.outcomes["done"] += 1
        self.stats.input_tokens += usage.input_tokens or 0
        self.stats.output_tokens += usage.output_tokens or 0
        event(
            log,
            "item done",
            **fields,
            model=used_model,
            latency_ms=usage.latency_ms,
            calls=usage.calls,
            tokens_in=usage.input_tokens,
            tokens_cached=usage.cached_input_tokens,
            tokens_out=usage.output_tokens,
        )

    async def _call_model(
        self,
        analysis_id: UUID,
        prompt: Prompt,
        model: str,
        limit_key: str,
        estimate: int,
        model_input: str | ResponseInputParam,
    ) -> tuple[Response, Usage]:
        """One paid model call under the shared limiter; provider errors become
        ProviderPause / ItemFailure (classify)."""
        cfg = self.cfg
        if cfg.rate_limit:
            await self._acquire(limit_key, estimate)
        t0 = time.monotonic()
        try:
            raw = await self.client.responses.with_raw_response.create(
                **request_body(analysis_id, prompt, model, model_input, cfg.max_output_tokens),
                timeout=cfg.request_timeout,
                extra_headers=cfg.extra_headers,
            )
            resp = raw.parse()
        except openai.OpenAIError as exc:
            verdict = classify(exc)
            pause = verdict if isinstance(verdict, ProviderPause) else None
            # A request the provider refused (a 4xx answer other than 408: bad key, no
            # quota, 429, bad request) used none of the tokens it reserved: they go back to
            # the shared bucket, or a fixed key's first calls would wait for the refused
            # calls' window (up to a minute). A timeout or a 5xx may have been processed.
            refused = isinstance(exc, openai.APIStatusError) and _refused_unprocessed(
                exc.status_code
            )
            if cfg.rate_limit and (pause is not None or refused):
                report = asyncio.ensure_future(
                    self._call(
                        "SELECT parecer.report_rate(%s, retry_after_seconds => %s, reason => %s,"
                        " estimated_tokens => %s, actual_tokens => %s)",
                        (
                            limit_key,
                            min(pause.seconds, 86400.0) if pause else None,
                            pause.reason if pause else None,
                            estimate if refused else None,
                            0 if refused else None,
                        ),
                    )
                )
                self._rate_reports.add(report)
                report.add_done_callback(self._rate_reports.discard)
                await asyncio.shield(report)
            raise verdict from None
        latency_ms = int((time.monotonic() - t0) * 1000)
        usage = _usage(resp, latency_ms, model)
        metrics.observe_call(
            latency_ms, usage.input_tokens, usage.cached_input_tokens, usage.output_tokens
        )
        if cfg.rate_limit:
            await self._feedback(limit_key, raw.headers, estimate, usage)
        self._fatal_pauses = 0  # the provider answered: a later fatal pause starts short
        if self._slots < cfg.concurrency:
            self._slots += 1  # ramp back after a pause
            self._slot_freed.set()  # an item claimed ahead may start
        return resp, usage

    async def _report_done(
        self,
        flight: InFlight,
        fields: dict[str, Any],
        report: dict[str, Any],
        model: str,
        prompt_hash: str,
        usage: Usage,
        may_repair: bool,
    ) -> bool | None:
        """Store the report: through the acknowledgement buffer (one mark_done_many for
        several items) or, with ack_window_ms 0, its own mark_done. True when stored, None
        when the lease was lost (the result is dropped); Refused on PR007 / PR008 / PR017."""
        stale_reason = "lease lost before reporting; result dropped"
        if self.cfg.ack_window_ms > 0:
            flight.reporting = True
            # With claim_ahead, a report waiting to be stored gives its slot to the next
            # item (a repair call takes one back): the window costs no model time.
            ahead = self.cfg.claim_ahead > 0
            if ahead:
                self._give_slot(flight)
                self._storing += 1
            try:
                row = await self._ack(
                    {
                        "analysis_id": str(flight.item.analysis_id),
                        "lease_token": str(flight.item.lease_token),
                        "report": report,
                        "model": model,
                        "prompt_hash": prompt_hash,
                        "usage": json.loads(usage.json()),
                    }
                )
            finally:
                if ahead:
                    self._storing -= 1
            if row.outcome == "done":
                return True
            if row.outcome == "stale":
                self._stale(fields, stale_reason)
                return None
            code = row.sqlstate or ""
            # PR017 (prompt hash not the one given) is the item's failure, as PR007: the
            # retry asks prompt_for again.
            if code in (errors.INVALID_REPORT, errors.PROMPT_HASH_MISMATCH) or (
                code == errors.UNGROUNDED_REPORT and not may_repair
            ):
                raise Refused(code, row.message or code, None)  # what mark_done's error says
            # Anything else goes through mark_done itself, so that it ends exactly as it
            # would without the buffer: a repair call needs the failing citations (the PR008
            # error's DETAIL), which the batch row does not carry; any other error (a
            # deadlock between two batches, say) is mark_done's own to raise or not.
        try:
            out = await self._settle(
                flight,
                fields,
                stale_reason,
                "SELECT * FROM parecer.mark_done(%s, %s, %s, %s, %s, %s)",
                (json.dumps(report), model, prompt_hash, usage.json()),
            )
        except psycopg.Error as exc:
            code = errors.sqlstate(exc) or ""
            if code not in (
                errors.INVALID_REPORT,
                errors.UNGROUNDED_REPORT,
                errors.PROMPT_HASH_MISMATCH,
            ):
                raise
            raise Refused(code, exc.diag.message_primary or code, exc.diag.message_detail) from None
        return None if out is None else True

    async def _ack(self, item: dict[str, Any]) -> AckRow:
        """Buffer one mark_done_many item; its row once the batch is stored. The buffer goes
        when ack_batch items wait or ack_window_ms has passed since the first of them."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[AckRow] = loop.create_future()
        entry = (item, fut)
        self._acks.append(entry)
        if len(self._acks) >= self.cfg.ack_batch:
            self._send_acks()
        elif self._ack_timer is None:
            self._ack_timer = loop.call_later(self.cfg.ack_window_ms / 1000, self._send_acks)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if entry in self._acks:  # not sent yet: it never will be (the item is released)
                self._acks.remove(entry)
                fut.cancel()
            else:  # sent: its outcome arrives without us
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise

    def _send_acks(self) -> None:
        """Send the buffered acknowledgements now, as one parecer.mark_done_many call."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        batch, self._acks = self._acks, []
        if batch:
            task = asyncio.create_task(self._store_acks(batch))
            self._ack_sends.add(task)
            task.add_done_callback(self._ack_sends.discard)

    async def _store_acks(self, batch: list[tuple[dict[str, Any], asyncio.Future[AckRow]]]) -> None:
        try:
            rows = await self._rows(
                AckRow,
                "SELECT * FROM parecer.mark_done_many(%s)",
                (json.dumps([item for item, _ in batch]),),
            )
            metrics.ACK_BATCHES.observe(len(batch))
            if len(rows) != len(batch):
                raise RuntimeError(f"mark_done_many returned {len(rows)} rows for {len(batch)}")
        except (
            BaseException
        ) as exc:  # each item goes the way of an unreported one (its lease expires)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), row in zip(batch, rows):
            if not fut.done():
                fut.set_result(row)

    def _stale(self, fields: dict[str, Any], reason: str) -> None:
        self.stats.outcomes["stale"] += 1
        event(log, "item stale", logging.WARNING, **fields, reason=reason)

    async def _settle(
        self,
        flight: InFlight,
        fields: dict[str, Any],
        stale_reason: str,
        sql: str,
        args: tuple[Any, ...],
    ) -> ItemOutcome | None:
        """Report the item's outcome (mark_done, mark_failed, release: ``sql`` takes the
        analysis id and lease token first, then ``args``). None when the lease was lost
        (PR006): another runner owns the item now, and this result is dropped."""
        flight.reporting = True
        item = flight.item
        try:
            return await self._one(ItemOutcome, sql, (item.analysis_id, item.lease_token, *args))
        except psycopg.Error as exc:
            # PR011: the item is not (or no longer) one of this role's clients' (revoked)
            if errors.sqlstate(exc) not in (errors.STALE_LEASE, errors.UNKNOWN_ANALYSIS):
                raise
        self._stale(fields, stale_reason)
        return None

    async def _feedback(
        self, limit_key: str, headers: Mapping[str, str], estimate: int, usage: Usage
    ) -> None:
        """Tell the shared limiter what the provider said, when it matters: a window used up, or an
        estimate far off (one round trip saved per call otherwise)."""
        remaining_requests = _int_header(headers, "x-ratelimit-remaining-requests")
        remaining_tokens = _int_header(headers, "x-ratelimit-remaining-tokens")
        actual = (
            usage.input_tokens + (usage.output_tokens or 0)
            if usage.input_tokens is not None
            else None
        )
        off = actual is not None and abs(estimate - actual) > estimate / 2
        if remaining_requests == 0 or remaining_tokens == 0 or off:
            await self._call(
                "SELECT parecer.report_rate(%s, remaining_requests => %s, remaining_tokens => %s,"
                " reset_seconds => %s, estimated_tokens => %s, actual_tokens => %s)",
                (
                    limit_key,
                    remaining_requests,
                    remaining_tokens,
                    parse_duration(
                        headers.get("x-ratelimit-reset-requests")
                        if remaining_requests == 0
                        else headers.get("x-ratelimit-reset-tokens")
                    ),
                    estimate,
                    actual,
                ),
            )

    async def _acquire(self, limit_key: str, tokens: int) -> None:
        """Wait for the shared limiter; a long wait gives the item back instead of holding it.
        A request above the key's tokens per minute (PR016) is the item's terminal failure."""
        while True:
            try:
                g = await self._one(
                    RateGrant, "SELECT * FROM parecer.acquire_rate(%s, %s)", (limit_key, tokens)
                )
            except psycopg.Error as exc:
                if errors.sqlstate(exc) == errors.PROMPT_TOO_LARGE:
                    raise ItemFailure(
                        f"{PROMPT_TOO_LARGE}: {tokens} tokens exceed the tokens per minute of {limit_key}"
                        " or the max_request_tokens setting",
                        retryable=False,
                    ) from None
                if (
                    errors.sqlstate(exc) == errors.RATE_KEY_NOT_BOUND
                ):  # isolation on: not the item's fault
                    raise ProviderPause(
                        f"limit key {limit_key} is not bound to a client this role serves",
                        60.0,
                        loud=True,
                        fix=f"an admin runs `parecer limits bind {limit_key} CLIENT...`",
                    ) from None
                raise
            if g.granted:
                return
            wait = float(g.wait_seconds)
            metrics.rate_wait(wait)
            now = time.monotonic()
            if now - self._rate_logged >= 30:  # rate-limited: one line per 30 s
                self._rate_logged = now
                event(log, "rate limited", limit_key=limit_key, wait_s=round(wait, 2))
            if wait > MAX_LOCAL_RATE_WAIT:
                raise ProviderPause(f"shared rate limit {limit_key}: capacity in {wait:.0f}s", wait)
            await asyncio.sleep(wait)

    async def _finish_failed(
        self, flight: InFlight, fields: dict[str, Any], f: ItemFailure, t0: float
    ) -> None:
        args = (f.reason, f.retryable, f.usage.json() if f.usage else None)
        out = await self._settle(flight, fields, f.reason, _MARK_FAILED, args)
        if out is None:
            return
        terminal = out.next_retry_at is None
        self.stats.outcomes["failed" if terminal else "retrying"] += 1
        event(
            log,
            "item failed" if terminal else "item retrying",
            logging.WARNING,
            **fields,
            reason=f.reason,
            retry_count=out.retry_count,
            next_retry_at=out.next_retry_at.isoformat() if out.next_retry_at else None,
            latency_ms=int((time.monotonic() - t0) * 1000),
        )

    async def _finish_release(
        self, flight: InFlight, fields: dict[str, Any], reason: str, delay: int
    ) -> None:
        lost = f"lease lost before release ({reason})"
        out = await self._settle(flight, fields, lost, _RELEASE, (min(delay, 86400), reason))
        if out is None:
            return
        self.stats.outcomes["released"] += 1
        event(log, "item released", **fields, reason=reason, delay_s=delay or None)


def run(config: RunnerConfig, client: openai.AsyncOpenAI | None = None) -> RunnerStats:
    """Run a runner to completion (``--once``, a settled run, or a stop signal)."""
    return asyncio.run(Runner(config, client).run())
