"""The runner: claims work from PostgreSQL, calls the model, reports the outcome.

It owns no queue logic. Every decision about an item is a ``parecer.`` SQL function
(claim, prompt_for, extend_lease, mark_done, mark_failed, release); the runner keeps
the model busy, safely:

* wakes on ``NOTIFY parecer_work`` (a dedicated autocommit LISTEN connection) and
  polls as a backstop, at the latest when ``parecer.next_due()`` says a retry falls due;
* keeps up to ``concurrency`` items in flight and claims only as many as it has free
  slots; heartbeats extend leases; no transaction is open across a model call;
* provider trouble (429, quota, auth) pauses every slot and releases the item
  without spending an attempt; the item's own faults go to ``mark_failed``;
* SIGINT/SIGTERM: stop claiming, give in-flight calls a grace period, release the
  rest, exit 0. SIGKILL loses nothing: the lease expires and another runner recovers it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import openai
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from . import errors as E
from .logs import LOGGER, event

DEFAULT_MODEL = "gpt-5-mini"
NOTIFY_CHANNEL = "parecer_work"
BUDGET_CHANNEL = "parecer_budget"
MAX_LOCAL_RATE_WAIT = 10.0  # longer shared-limit waits release the item instead of holding it
log = logging.getLogger(LOGGER + ".runner")


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class RunnerConfig:
    database_url: str
    concurrency: int = 4
    client_slug: str | None = None
    once: bool = False
    run_id: int | None = None  # stop once this run has nothing left to do
    worker_id: str = field(default_factory=default_worker_id)
    poll_seconds: float = 30.0
    lease_seconds: int | None = None  # None: the database's lease_seconds setting
    model: str = field(default_factory=lambda: os.environ.get("OPENAI_MODEL") or DEFAULT_MODEL)
    api_key: str | None = field(default_factory=lambda: os.environ.get("OPENAI_API_KEY"))
    base_url: str | None = field(default_factory=lambda: os.environ.get("OPENAI_BASE_URL"))
    request_timeout: float = 120.0
    max_output_tokens: int = 4000
    shutdown_grace: float = 20.0
    auth_pause_seconds: float = 60.0
    extra_headers: dict[str, str] | None = None  # tests: force stand-in faults
    key_label: str | None = field(default_factory=lambda: os.environ.get("PARECER_KEY_LABEL"))
    expected_output_tokens: int = 600  # for the shared limiter's estimate
    rate_limit: bool = True  # consult parecer.acquire_rate before each call

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")


class ProviderPause(Exception):
    """The provider, not the item, is the problem: pause and release."""

    def __init__(self, reason: str, seconds: float, loud: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.seconds = seconds
        self.loud = loud


class ItemFailure(Exception):
    """The item's attempt failed: mark_failed with this short reason."""

    def __init__(
        self, reason: str, retryable: bool = True, usage: dict[str, Any] | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.usage = usage


@dataclass
class RunnerStats:
    outcomes: Counter[str] = field(default_factory=Counter)
    claimed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        secs = max(time.monotonic() - self.started, 1e-9)
        return {
            "claimed": self.claimed,
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


def classify(exc: Exception) -> ProviderPause | ItemFailure:
    """Whose fault is a model-call exception, and what happens next."""
    if isinstance(exc, openai.RateLimitError):
        if exc.code == "insufficient_quota":
            return ProviderPause(
                "insufficient_quota: the provider account has no quota left", 300.0, loud=True
            )
        return ProviderPause("rate limited (429)", _retry_after(exc, 5.0))
    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return ProviderPause(
            f"provider refused the credentials ({exc.status_code})", 60.0, loud=True
        )
    if isinstance(exc, openai.NotFoundError):
        return ProviderPause(f"model or endpoint not found ({exc.status_code})", 60.0, loud=True)
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


def _int_header(headers: Any, name: str) -> int | None:
    v = headers.get(name) if headers is not None else None
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _usage(resp: Any, latency_ms: int, requested_model: str) -> dict[str, Any]:
    u = getattr(resp, "usage", None)
    cached = 0
    if u is not None and getattr(u, "input_tokens_details", None) is not None:
        cached = int(getattr(u.input_tokens_details, "cached_tokens", 0) or 0)
    return {
        "input_tokens": int(getattr(u, "input_tokens", 0) or 0) if u else None,
        "cached_input_tokens": cached if u else None,
        "output_tokens": int(getattr(u, "output_tokens", 0) or 0) if u else None,
        "latency_ms": latency_ms,
        "response_id": getattr(resp, "id", None),
        "requested_model": requested_model,
        "model": getattr(resp, "model", None) or requested_model,
    }


def parse_report(resp: Any) -> dict[str, Any]:
    """The report from a Responses API answer; ItemFailure when there is none."""
    if getattr(resp, "status", None) == "incomplete":
        reason = getattr(getattr(resp, "incomplete_details", None), "reason", None) or "unknown"
        raise ItemFailure(f"incomplete output ({reason})", retryable=False)
    for item in getattr(resp, "output", None) or []:
        for part in getattr(item, "content", None) or []:
            if getattr(part, "type", None) == "refusal":
                raise ItemFailure("model refused", retryable=False)
    text = resp.output_text
    try:
        report = json.loads(text)
    except (TypeError, ValueError):
        raise ItemFailure("invalid JSON in model output") from None
    if not isinstance(report, dict):
        raise ItemFailure("model output is not a JSON object")
    return report


class Runner:
    """One runner process: up to ``concurrency`` items in flight."""

    def __init__(self, config: RunnerConfig, client: openai.AsyncOpenAI | None = None) -> None:
        self.cfg = config
        self._owns_client = client is None
        if client is None:
            if not (config.api_key or config.base_url):
                raise RuntimeError(
                    "OPENAI_API_KEY is not set (or give OPENAI_BASE_URL for an OpenAI-compatible endpoint)"
                )
            client = openai.AsyncOpenAI(
                api_key=config.api_key or "not-needed",
                base_url=config.base_url,
                max_retries=0,
                timeout=config.request_timeout,
            )
        self.client = client
        self.stats = RunnerStats()
        self.pool: AsyncConnectionPool[Any] | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], Any] = {}
        self._pause_until = 0.0
        self._slots = config.concurrency  # ramps back up after a pause
        self._db_failures = 0

    # ---- control -------------------------------------------------------
    def stop(self) -> None:
        """Stop claiming; in-flight items get the grace period, then are released."""
        if not self._stopping.is_set():
            event(log, "stopping", worker=self.cfg.worker_id, in_flight=len(self._inflight))
        self._stopping.set()
        self._wake.set()

    def _pause(self, p: ProviderPause) -> None:
        until = time.monotonic() + p.seconds
        if until > self._pause_until:
            self._pause_until = until
            self._slots = 1
            event(
                log,
                "provider pause",
                logging.ERROR if p.loud else logging.WARNING,
                reason=p.reason,
                seconds=round(p.seconds, 2),
                worker=self.cfg.worker_id,
            )

    # ---- database ------------------------------------------------------
    async def _db(
        self, sql: str, params: tuple[Any, ...] = (), *, attempts: int = 5
    ) -> list[dict[str, Any]]:
        """One parecer.* call on a pooled autocommit connection; retries only when the database is unreachable."""
        assert self.pool is not None
        delay = 0.2
        for i in range(attempts):
            try:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(sql, params)
                    return await cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                if i == attempts - 1:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def _listen(self) -> None:
        """Dedicated LISTEN connection; reconnects with capped backoff."""
        delay = 0.5
        while not self._stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.cfg.database_url, autocommit=True, application_name="parecer-listen"
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    await conn.execute(f"LISTEN {BUDGET_CHANNEL}")
                    delay = 0.5
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
                event(
                    log,
                    "listen connection lost",
                    logging.WARNING,
                    error=type(exc).__name__,
                    retry_in=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    # ---- the loop ------------------------------------------------------
    async def run(self) -> RunnerStats:
        cfg = self.cfg
        self.pool = AsyncConnectionPool(
            cfg.database_url,
            min_size=1,
            max_size=min(cfg.concurrency, 8) + 2,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "application_name": "parecer-runner",
            },
            open=False,
            reconnect_timeout=0,
        )
        await self.pool.open()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests): stop() is called directly
        listener = asyncio.create_task(self._listen())
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
            await self.pool.close()
            if self._owns_client:
                await self.client.close()
            event(log, "runner summary", worker=cfg.worker_id, **self.stats.as_dict())
        return self.stats

    async def _loop(self) -> None:
        cfg = self.cfg
        while not self._stopping.is_set():
            now = time.monotonic()
            if now < self._pause_until:
                await self._sleep(self._pause_until - now)
                continue
            free = min(self._slots, cfg.concurrency) - len(self._inflight)
            claimed = 0
            if free > 0:
                try:
                    items = await self._db(
                        "SELECT c.*, clock_timestamp() AS db_now FROM parecer.claim(worker => %s, max_items => %s,"
                        " lease_seconds => %s, client_slug => %s, sync_commit => false) c",
                        (cfg.worker_id, free, cfg.lease_seconds, cfg.client_slug),
                        attempts=1,
                    )
                    self._db_failures = 0
                except psycopg.OperationalError as exc:
                    self._db_failures += 1
                    backoff = min(0.5 * 2**self._db_failures, 30.0)
                    event(
                        log,
                        "database unreachable",
                        logging.WARNING,
                        error=type(exc).__name__,
                        retry_in=backoff,
                    )
                    await self._sleep(backoff)
                    continue
                claimed = len(items)
                self.stats.claimed += claimed
                for item in items:
                    task = asyncio.create_task(self._process(item))
                    self._inflight[task] = item
                if claimed == free:
                    continue  # there may be more: fill the free slots first
            if not self._inflight and claimed == 0:
                if cfg.once:
                    return
                if cfg.run_id is not None and await self._run_settled():
                    return
            await self._sleep(await self._poll_timeout())

    async def _run_settled(self) -> bool:
        rows = await self._db("SELECT remaining FROM parecer.run_summary(%s)", (self.cfg.run_id,))
        return bool(rows) and rows[0]["remaining"] == 0

    async def _poll_timeout(self) -> float:
        """Sleep until the poll interval, or earlier when a retry falls due."""
        timeout = self.cfg.poll_seconds
        try:
            rows = await self._db(
                "SELECT extract(epoch FROM parecer.next_due(%s) - clock_timestamp())::float8 AS due",
                (self.cfg.client_slug,),
                attempts=1,
            )
        except psycopg.Error:
            return min(timeout, 5.0)
        due = rows[0]["due"] if rows else None
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
            return
        done, pending = await asyncio.wait(set(self._inflight), timeout=self.cfg.shutdown_grace)
        for t in pending:
            t.cancel()  # _process releases the item
        await asyncio.gather(*pending, return_exceptions=True)
        self._inflight.clear()

    # ---- one item ------------------------------------------------------
    async def _heartbeat(self, item: dict[str, Any]) -> None:
        # Lease time left by the database's clock, counted down on ours (monotonic):
        # a runner whose wall clock is off still heartbeats in time.
        left = (item["lease_expires_at"] - item["db_now"]).total_seconds()
        while True:
            await asyncio.sleep(max(left / 3, 0.5))
            try:
                rows = await self._db(
                    "SELECT parecer.extend_lease(%s, %s, %s) AS e, clock_timestamp() AS n",
                    (item["analysis_id"], item["lease_token"], self.cfg.lease_seconds),
                )
                left = (rows[0]["e"] - rows[0]["n"]).total_seconds()
            except psycopg.Error as exc:
                if E.sqlstate(exc) == E.STALE_LEASE:
                    if not item.get("_reporting"):
                        event(log, "lease lost", logging.WARNING, analysis=str(item["analysis_id"]))
                    return
                left = max(left * 2 / 3, 1.5)  # database trouble: keep trying while the lease lasts

    async def _process(self, item: dict[str, Any]) -> None:
        aid = item["analysis_id"]
        fields: dict[str, Any] = {
            "analysis": str(aid),
            "client": item["client_slug"],
            "attempt": item["attempt"],
        }
        heartbeat = asyncio.create_task(self._heartbeat(item))
        t0 = time.monotonic()
        try:
            try:
                await self._attempt(item, fields, t0)
            except asyncio.CancelledError:
                await self._finish_release(item, fields, "shutdown: runner stopped", 0)
                raise
            except ProviderPause as p:
                self._pause(p)
                await self._finish_release(item, fields, p.reason, int(p.seconds + 0.999))
            except ItemFailure as f:
                await self._finish_failed(item, fields, f, t0)
            except Exception as exc:  # never leave an item in processing
                log.debug("unexpected error", exc_info=True)
                await self._finish_failed(
                    item, fields, ItemFailure(f"runner error: {type(exc).__name__}"), t0
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
                sqlstate=E.sqlstate(exc),
            )
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)

    async def _attempt(self, item: dict[str, Any], fields: dict[str, Any], t0: float) -> None:
        cfg = self.cfg
        [prompt] = await self._db("SELECT * FROM parecer.prompt_for(%s)", (item["analysis_id"],))
        model = item["model"] or prompt["model"] or cfg.model
        fields["prompt"] = prompt["prompt_hash"][:16]
        limit_key = f"{limit_label(cfg)}:{model}"
        estimate = (
            math.ceil((len(prompt["instructions"]) + len(prompt["input"])) / 4)
            + cfg.expected_output_tokens
        )
        if cfg.rate_limit:
            await self._acquire(limit_key, estimate)
        t0 = time.monotonic()
        try:
            raw = await self.client.responses.with_raw_response.create(
                model=model,
                instructions=prompt["instructions"],
                input=prompt["input"],
                text={
                    "format": {
                        "type": "json_schema",
                        "name": "parecer_report",
                        "schema": prompt["report_schema"],
                        "strict": True,
                    }
                },
                store=False,
                metadata={"analysis_id": str(item["analysis_id"])},
                max_output_tokens=cfg.max_output_tokens,
                timeout=cfg.request_timeout,
                extra_headers=cfg.extra_headers,
            )
            resp = raw.parse()
        except openai.OpenAIError as exc:
            verdict = classify(exc)
            if isinstance(verdict, ProviderPause) and cfg.rate_limit:
                await self._db(
                    "SELECT parecer.report_rate(%s, retry_after_seconds => %s, reason => %s)",
                    (limit_key, min(verdict.seconds, 86400.0), verdict.reason),
                )
            raise verdict from None
        latency_ms = int((time.monotonic() - t0) * 1000)
        usage = _usage(resp, latency_ms, model)
        if cfg.rate_limit:
            await self._feedback(limit_key, raw.headers, estimate, usage)
        if self._slots < cfg.concurrency:
            self._slots += 1  # ramp back after a pause
        try:
            report = parse_report(resp)
        except ItemFailure as f:
            f.usage = usage
            raise
        used_model = getattr(resp, "model", None) or model
        item["_reporting"] = True
        try:
            await self._db(
                "SELECT * FROM parecer.mark_done(%s, %s, %s, %s, %s, %s)",
                (
                    item["analysis_id"],
                    item["lease_token"],
                    json.dumps(report),
                    used_model,
                    prompt["prompt_hash"],
                    json.dumps(usage),
                ),
            )
        except psycopg.Error as exc:
            code = E.sqlstate(exc)
            if code in (E.INVALID_REPORT, E.UNGROUNDED_REPORT):
                raise ItemFailure(exc.diag.message_primary or code, usage=usage) from None
            if code == E.STALE_LEASE:
                self.stats.outcomes["stale"] += 1
                event(
                    log,
                    "item stale",
                    logging.WARNING,
                    **fields,
                    reason="lease lost before reporting; result dropped",
                )
                return
            raise
        self.stats.outcomes["done"] += 1
        self.stats.input_tokens += usage["input_tokens"] or 0
        self.stats.output_tokens += usage["output_tokens"] or 0
        event(
            log,
            "item done",
            **fields,
            model=used_model,
            latency_ms=latency_ms,
            tokens_in=usage["input_tokens"],
            tokens_cached=usage["cached_input_tokens"],
            tokens_out=usage["output_tokens"],
        )

    async def _feedback(
        self, limit_key: str, headers: Any, estimate: int, usage: dict[str, Any]
    ) -> None:
        """Tell the shared limiter what the provider said, when it matters: a window used up, or an
        estimate far off (one round trip saved per call otherwise)."""
        remaining_requests = _int_header(headers, "x-ratelimit-remaining-requests")
        remaining_tokens = _int_header(headers, "x-ratelimit-remaining-tokens")
        actual = (
            (usage["input_tokens"] or 0) + (usage["output_tokens"] or 0)
            if usage["input_tokens"] is not None
            else None
        )
        off = actual is not None and abs(estimate - actual) > estimate / 2
        if remaining_requests == 0 or remaining_tokens == 0 or off:
            await self._db(
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
        """Wait for the shared limiter; a long wait gives the item back instead of holding it."""
        while True:
            [g] = await self._db("SELECT * FROM parecer.acquire_rate(%s, %s)", (limit_key, tokens))
            if g["granted"]:
                return
            wait = float(g["wait_seconds"])
            if wait > MAX_LOCAL_RATE_WAIT:
                raise ProviderPause(f"shared rate limit {limit_key}: capacity in {wait:.0f}s", wait)
            await asyncio.sleep(wait)

    async def _finish_failed(
        self, item: dict[str, Any], fields: dict[str, Any], f: ItemFailure, t0: float
    ) -> None:
        item["_reporting"] = True
        try:
            [out] = await self._db(
                "SELECT * FROM parecer.mark_failed(%s, %s, %s, %s, %s)",
                (
                    item["analysis_id"],
                    item["lease_token"],
                    f.reason,
                    f.retryable,
                    json.dumps(f.usage) if f.usage else None,
                ),
            )
        except psycopg.Error as exc:
            if E.sqlstate(exc) == E.STALE_LEASE:
                self.stats.outcomes["stale"] += 1
                event(log, "item stale", logging.WARNING, **fields, reason=f.reason)
                return
            raise
        terminal = out["next_retry_at"] is None
        self.stats.outcomes["failed" if terminal else "retrying"] += 1
        event(
            log,
            "item failed" if terminal else "item retrying",
            logging.WARNING,
            **fields,
            reason=f.reason,
            retry_count=out["retry_count"],
            next_retry_at=out["next_retry_at"].isoformat() if out["next_retry_at"] else None,
            latency_ms=int((time.monotonic() - t0) * 1000),
        )

    async def _finish_release(
        self, item: dict[str, Any], fields: dict[str, Any], reason: str, delay: int
    ) -> None:
        item["_reporting"] = True
        try:
            await self._db(
                "SELECT * FROM parecer.release(%s, %s, %s, %s)",
                (item["analysis_id"], item["lease_token"], min(delay, 86400), reason),
            )
        except psycopg.Error as exc:
            if E.sqlstate(exc) == E.STALE_LEASE:
                self.stats.outcomes["stale"] += 1
                event(
                    log,
                    "item stale",
                    logging.WARNING,
                    **fields,
                    reason=f"lease lost before release ({reason})",
                )
                return
            raise
        self.stats.outcomes["released"] += 1
        event(log, "item released", **fields, reason=reason, delay_s=delay or None)


def run(config: RunnerConfig, client: openai.AsyncOpenAI | None = None) -> RunnerStats:
    """Run a runner to completion (``--once``, a settled run, or a stop signal)."""
    return asyncio.run(Runner(config, client).run())
