"""Batch API backlog mode: a backlog run's items through the provider's Batch API.

Half the price of the synchronous calls, results within 24 hours. Every decision is a
``parecer.`` SQL function (db/api/75_batches.sql); this module moves a batch along:

1. ``open_batch`` claims the run's claimable items into a batch row (status
   ``preparing``), each leased for ``batch_lease_seconds``: the row exists before
   anything is uploaded;
2. each item's prompt (``prompt_for``) becomes one line of a JSONL file, the same
   request the runner sends (``runner.request_body``); the file is uploaded (Files API,
   purpose ``batch``) and its id recorded (``batch_uploaded``);
3. the provider's batch is created (endpoint ``/v1/responses``, window ``24h``) with
   the batch row's id in its metadata, and its id recorded (``batch_submitted``);
4. polls record what the provider says (``batch_progress``); once it has ended, every
   output line goes through the runner's own path (``Runner.settle``: the checks of
   ``mark_done``, the repair call, ``mark_failed``), and ``finish_batch`` releases the
   items that got no result (an expired, failed or cancelled batch).

A process killed at any point loses nothing: the next ``poll`` resumes each open batch
from its recorded status. Killed after the upload and before step 2's record: the file is
uploaded again (the first is an orphan of a few kilobytes). Killed between creating the
provider batch and recording it: the provider's batch list is searched for the one whose
metadata names this batch row and whose input file is the recorded one. Killed while
storing results: the items already stored are no longer the batch's (``batch_items``
leaves them out) and the rest are stored by the next poll. Logs carry ids, counts and the
input file's sha256, never prompt text.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx2  # the SDK's HTTP layer: its public exceptions take an httpx2.Response
import openai
import psycopg
from openai.types.responses import Response
from psycopg.rows import class_row

from . import errors
from .config import RunnerConfig
from .logs import LOGGER, event
from .runner import (
    PROMPT_TOO_LARGE,
    ClaimedItem,
    ItemFailure,
    Prompt,
    ProviderPause,
    Runner,
    RunnerStats,
    Usage,
    _usage,
    classify,
    provider_client,
    request_body,
)

log = logging.getLogger(LOGGER + ".batch")

ENDPOINT = "/v1/responses"
METADATA_KEY = "parecer_batch_id"  # the batch row's id, in the provider batch's metadata
OPEN = ("preparing", "uploaded", "submitted", "ingesting")
# Error lines that are not the item's fault: the batch ended before running them.
NOT_RUN = ("batch_expired", "batch_cancelled")
# A test seam, not a setting: called with the name of each step just recorded
# ("after_upload", "after_upload_recorded", "after_create", "mid_ingest:<n stored>").
# None in production; the crash tests set it in a subprocess (tests/crash_cli.py) to
# kill the process there with SIGKILL, so a real process dies mid-way.
checkpoint_hook: Callable[[str], None] | None = None
# One process works on a batch at a time (two polls from an overlapping cron, a poll
# beside a submit): a session advisory lock (LOCK_CLASS, batch_id), held by the batch
# driver's connection, so a killed process lets go of it at once. The other skips it.
LOCK_CLASS = 7_040_118


class BatchBusy(Exception):
    """Another process holds the batch (its advisory lock)."""


class BatchDone(Exception):
    """The batch has ended (or its results wait for a poll): nothing to cancel."""


def _checkpoint(name: str) -> None:
    if checkpoint_hook is not None:
        checkpoint_hook(name)


# The SDK's exception class for each HTTP status, as its clients map a status error
# (openai's public exception classes; the mapping itself is private in the SDK).
_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def status_error(status: int, body: dict[str, Any], url: str) -> openai.APIStatusError:
    """The exception the SDK raises for a call answered with this status and body, built
    with its public constructors. httpx2 only because APIStatusError takes the HTTP response
    it came with: a response built here, with the line's status and body."""
    response = httpx2.Response(status, json=body, request=httpx2.Request("POST", url))
    error = body.get("error", body)
    message = error.get("message") if isinstance(error, dict) else None
    text = f"Error code: {status}" + (
        f" - {message}" if isinstance(message, str) and message else ""
    )
    cls = _STATUS_ERRORS.get(status) or (
        openai.InternalServerError if status >= 500 else openai.APIStatusError
    )
    return cls(text, response=response, body=error)


def parse_response(body: dict[str, Any]) -> Response | None:
    """A batch line's body as the SDK's Response: ``model_construct`` (the SDK models' public,
    lenient constructor: fields a newer API adds are kept, nested objects are built), as
    lenient as the SDK is with a synchronous answer. None unless it has an output list."""
    if not isinstance(body.get("output"), list):
        return None
    return Response.model_construct(**body)


@dataclass(frozen=True)
class BatchRow:
    """A row of the ``parecer.batches`` view (what every batch function returns)."""

    batch_id: int
    run_id: int
    client_slug: str
    status: str
    provider_status: str | None
    provider_batch_id: str | None
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    items: int
    in_flight: int
    done: int
    failed: int
    released: int
    request_total: int | None
    request_completed: int | None
    request_failed: int | None
    cost_usd: Decimal
    worker: str
    created_by: str
    error: str | None
    created_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    def outcome(self) -> dict[str, Any]:
        """What a log line says of a finished batch: status, item outcomes and cost."""
        return {
            "status": self.status,
            "done": self.done,
            "failed": self.failed,
            "released": self.released,
            "cost_usd": str(self.cost_usd),
        }


@dataclass(frozen=True)
class BatchItem(ClaimedItem):
    """A row of ``parecer.batch_items``: a claimed item and the prompt it was sent."""

    prompt_hash: str | None  # what prompt_for gave under this lease (what the line was built from)


def _batch_usage(resp: Response, model: str) -> Usage:
    """A batch line's usage: all of it billed at the Batch API price."""
    usage = _usage(resp, 0, model)
    usage.batch = {
        "input_tokens": usage.input_tokens or 0,
        "cached_input_tokens": usage.cached_input_tokens or 0,
        "output_tokens": usage.output_tokens or 0,
    }
    return usage


class BatchDriver:
    """Moves a run's batches along: ``submit`` opens and sends them, ``poll`` resumes and
    finishes them. One database connection for the batch steps; the results go through a
    ``Runner`` (its own pool) exactly as a runner's items do."""

    def __init__(self, config: RunnerConfig, client: openai.AsyncOpenAI | None = None) -> None:
        self.cfg = config
        self._owns_client = client is None
        self.client = client or provider_client(config, max_retries=2)
        self.stats = RunnerStats()
        self._conn: psycopg.AsyncConnection[Any] | None = None

    # ---- database ----------------------------------------------------------
    async def _rows(self, row: type[Any], sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.cfg.database_url, autocommit=True, application_name="parecer-batch"
            )
        cur = self._conn.cursor(row_factory=class_row(row))
        await cur.execute(sql, params)
        return await cur.fetchall()

    async def _batch(self, sql: str, params: tuple[Any, ...]) -> BatchRow | None:
        rows = await self._rows(BatchRow, sql, params)
        return rows[0] if rows else None

    async def _lock(self, batch_id: int, lock: bool = True) -> bool:
        """Take (or give back) this process's hold on a batch; False: another process has it."""
        fn = "pg_try_advisory_lock" if lock else "pg_advisory_unlock"
        [row] = await self._rows(dict, f"SELECT {fn}(%s, %s) AS ok", (LOCK_CLASS, batch_id % 2**31))
        return bool(row["ok"])

    async def _open(self, run_id: int, max_items: int | None) -> BatchRow | None:
        """open_batch and the hold on the new batch in one transaction: no other process can
        see the batch before this one holds it."""
        await self._rows(dict, "SELECT 1 AS ok")  # connected
        assert self._conn is not None
        async with self._conn.transaction():
            b = await self._batch(
                "SELECT * FROM parecer.open_batch(%s, %s, %s)",
                (run_id, self.cfg.worker_id, max_items),
            )
            if b is not None:
                await self._lock(b.batch_id)
        return b

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        if self._owns_client:
            await self.client.close()

    # ---- commands ----------------------------------------------------------
    async def submit(self, run_id: int, max_items: int | None = None) -> list[BatchRow]:
        """Claim the run's claimable items into batches of at most ``max_items`` and send
        each; the batches as they stand once submitted."""
        sent: list[BatchRow] = []
        while True:
            b = await self._open(run_id, max_items)
            if b is None:
                break
            event(log, "batch opened", batch=b.batch_id, run=run_id, items=b.items)
            try:
                sent.append(await self.advance(b, stop_at="submitted"))
            finally:
                await self._lock(b.batch_id, lock=False)
        return sent

    async def poll(self, run_id: int | None = None) -> list[BatchRow]:
        """One pass over the open batches (of a run, or all the caller may see): resume what
        a crash interrupted, ask the provider, store the results of those that ended."""
        out = []
        for b in await self._rows(
            BatchRow, "SELECT * FROM parecer.list_batches(%s, true)", (run_id,)
        ):
            if not await self._lock(b.batch_id):
                event(log, "batch busy", batch=b.batch_id)  # another process works on it
                out.append(b)
                continue
            try:
                # Read again under the hold: the other process may have moved it meanwhile.
                [b] = await self._rows(
                    BatchRow,
                    "SELECT * FROM parecer.list_batches(%s, false) WHERE batch_id = %s",
                    (b.run_id, b.batch_id),
                )
                out.append(await self.advance(b))
            finally:
                await self._lock(b.batch_id, lock=False)
        return out

    async def cancel(self, batch_id: int) -> BatchRow:
        """Cancel a batch: one the provider has is cancelled there (the next poll stores what
        it finished and releases the rest); one never sent is finished here, its items
        released. BatchBusy when another process holds it, BatchDone when it has ended."""
        # The function's own error (PR019) for an unknown batch or another client's.
        await self._rows(dict, "SELECT count(*) AS n FROM parecer.batch_items(%s)", (batch_id,))
        if not await self._lock(batch_id):
            raise BatchBusy(f"batch {batch_id} is being worked on by another process; try again")
        try:
            [b] = await self._rows(  # read under the hold
                BatchRow,
                "SELECT * FROM parecer.list_batches(NULL, false) WHERE batch_id = %s",
                (batch_id,),
            )
            if b.status not in OPEN:
                raise BatchDone(f"batch {batch_id} has ended ({b.status})")
            if b.status == "ingesting":
                raise BatchDone(
                    f"batch {batch_id} has ended at the provider: `parecer batch poll` stores it"
                )
            if b.status == "uploaded":  # the provider may have it (a crash before it was recorded)
                pb = await self._find(b)
                if pb is not None:
                    b = await self._record(b, pb)
            if b.status == "submitted":
                assert b.provider_batch_id is not None
                pb = await self.client.batches.cancel(b.provider_batch_id)
                event(log, "batch cancelling", batch=batch_id, provider_status=pb.status)
                return await self._check(b)
            done = await self._batch(
                "SELECT * FROM parecer.finish_batch(%s, %s)",
                (batch_id, "cancelled before it was sent"),
            )
            assert done is not None
            return done
        finally:
            await self._lock(batch_id, lock=False)

    # ---- one batch ---------------------------------------------------------
    async def advance(self, b: BatchRow, stop_at: str | None = None) -> BatchRow:
        """Take a batch as far as it can go now (a batch the provider is still running
        stops at submitted), or until it reaches ``stop_at``."""
        while b.status in OPEN and b.status != stop_at:
            before = b.status
            if b.status == "preparing":
                b = await self._upload(b)
            elif b.status == "uploaded":
                b = await self._create(b)
            elif b.status == "submitted":
                b = await self._check(b)
                if b.status == "submitted":
                    break
            else:
                b = await self._ingest(b)
            if b.status == before:  # pragma: no cover - every step moves or breaks
                break
        return b

    async def _items(self, batch_id: int) -> list[BatchItem]:
        rows: list[BatchItem] = await self._rows(
            BatchItem,
            "SELECT *, clock_timestamp() AS db_now FROM parecer.batch_items(%s)",
            (batch_id,),
        )
        return rows

    async def _upload(self, b: BatchRow) -> BatchRow:
        cfg = self.cfg
        lines: list[str] = []
        for it in await self._items(b.batch_id):
            try:
                [prompt] = await self._rows(
                    Prompt, "SELECT * FROM parecer.prompt_for(%s)", (it.analysis_id,)
                )
            except psycopg.Error as exc:
                if errors.sqlstate(exc) != errors.PROMPT_TOO_LARGE:
                    raise
                await self._rows(
                    dict,
                    "SELECT status FROM parecer.mark_failed(%s, %s, %s, false)",
                    (
                        it.analysis_id,
                        it.lease_token,
                        f"{PROMPT_TOO_LARGE}: not one message fits in max_input_tokens",
                    ),
                )
                continue
            model = it.model or prompt.model or cfg.model
            body = request_body(it.analysis_id, prompt, model, prompt.input, cfg.max_output_tokens)
            lines.append(
                json.dumps(
                    {
                        "custom_id": str(it.analysis_id),
                        "method": "POST",
                        "url": ENDPOINT,
                        "body": body,
                    },
                    ensure_ascii=False,
                )
            )
        if not lines:
            done = await self._batch(
                "SELECT * FROM parecer.finish_batch(%s, %s)",
                (b.batch_id, "nothing left to send"),
            )
            assert done is not None
            return done
        data = ("\n".join(lines) + "\n").encode("utf-8")
        file = await self.client.files.create(
            file=(f"parecer-batch-{b.batch_id}.jsonl", data), purpose="batch"
        )
        event(
            log,
            "batch uploaded",
            batch=b.batch_id,
            lines=len(lines),
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            file=file.id,
        )
        _checkpoint("after_upload")
        up = await self._batch(
            "SELECT * FROM parecer.batch_uploaded(%s, %s)", (b.batch_id, file.id)
        )
        assert up is not None
        _checkpoint("after_upload_recorded")
        return up

    async def _find(self, b: BatchRow) -> Any:
        """The provider batch created for this row before a crash kept its id from being
        recorded: metadata names the row and its input file is the recorded one."""
        since = int(b.created_at.timestamp()) - 3600
        async for pb in self.client.batches.list(limit=100):
            if (pb.metadata or {}).get(METADATA_KEY) == str(b.batch_id) and (
                pb.input_file_id == b.input_file_id
            ):
                return pb
            if pb.created_at < since:  # listed newest first: nothing older can be ours
                break
        return None

    async def _create(self, b: BatchRow) -> BatchRow:
        assert b.input_file_id is not None
        pb = await self._find(b)
        if pb is not None:
            event(log, "batch found", batch=b.batch_id, provider_batch=pb.id)
        else:
            pb = await self.client.batches.create(
                input_file_id=b.input_file_id,
                endpoint="/v1/responses",
                completion_window="24h",
                metadata={METADATA_KEY: str(b.batch_id), "parecer_run_id": str(b.run_id)},
            )
            event(log, "batch created", batch=b.batch_id, provider_batch=pb.id)
        _checkpoint("after_create")
        return await self._record(b, pb)

    async def _record(self, b: BatchRow, pb: Any) -> BatchRow:
        sub = await self._batch(
            "SELECT * FROM parecer.batch_submitted(%s, %s, %s)", (b.batch_id, pb.id, pb.status)
        )
        assert sub is not None
        return sub

    async def _check(self, b: BatchRow) -> BatchRow:
        assert b.provider_batch_id is not None
        pb = await self.client.batches.retrieve(b.provider_batch_id)
        counts = pb.request_counts
        problem = None
        if pb.errors is not None and pb.errors.data:
            problem = "; ".join(
                f"{e.code}: {e.message}" for e in pb.errors.data[:3] if e.code or e.message
            )
        row = await self._batch(
            "SELECT * FROM parecer.batch_progress(%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                b.batch_id,
                pb.status,
                counts.total if counts else None,
                counts.completed if counts else None,
                counts.failed if counts else None,
                pb.output_file_id,
                pb.error_file_id,
                problem,
            ),
        )
        assert row is not None
        if row.status != "submitted":
            event(log, "batch ended", batch=b.batch_id, provider_status=pb.status)
        return row

    async def _lines(self, file_id: str | None) -> dict[str, dict[str, Any]]:
        """A batch output (or error) file's lines by custom_id."""
        if file_id is None:
            return {}
        content = await self.client.files.content(file_id)
        out: dict[str, dict[str, Any]] = {}
        for line in content.text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("custom_id"), str):
                out[row["custom_id"]] = row
        return out

    async def _ingest(self, b: BatchRow) -> BatchRow:
        results = await self._lines(b.error_file_id)
        results.update(await self._lines(b.output_file_id))  # a result beats an error line
        items = await self._items(b.batch_id)
        runner = Runner(self.cfg, self.client)  # a client it does not own: not closed with it
        await runner.open()
        limit = asyncio.Semaphore(self.cfg.concurrency)
        settled = 0

        async def one(it: BatchItem) -> None:
            nonlocal settled
            line = results.get(str(it.analysis_id))
            err = (line or {}).get("error") or {}
            if line is None or (line.get("response") is None and err.get("code") in NOT_RUN):
                return  # not run: finish_batch releases it
            async with limit:
                await runner.settle(it, self._answer(it, line))
            settled += 1
            _checkpoint(f"mid_ingest:{settled}")

        try:
            await asyncio.gather(*(one(it) for it in items))
        finally:
            await runner.close()
        for k, v in runner.stats.outcomes.items():
            self.stats.outcomes[k] += v
        self.stats.input_tokens += runner.stats.input_tokens
        self.stats.output_tokens += runner.stats.output_tokens
        row = await self._batch("SELECT * FROM parecer.finish_batch(%s)", (b.batch_id,))
        assert row is not None
        event(log, "batch finished", batch=b.batch_id, **row.outcome())
        return row

    def _line_error(self, status: int, body: dict[str, Any]) -> ProviderPause | ItemFailure:
        """An error line, judged as the runner judges the same answer to a synchronous call:
        the SDK's exception for that status and body, through runner.classify (a 429 or a
        refused key releases the item; context length is terminal; a 5xx is a retry)."""
        verdict = classify(status_error(status, body, f"{self.client.base_url}responses"))
        if isinstance(verdict, ItemFailure):
            verdict.reason = f"batch line: {verdict.reason}"
        return verdict

    def _answer(self, it: BatchItem, line: dict[str, Any]) -> Any:
        """The Runner.settle answer for one output line: its response (usage at the batch
        price), or the item's failure."""

        async def answer(prompt: Prompt, model: str) -> tuple[Response, Usage]:
            if it.prompt_hash is not None and prompt.prompt_hash != it.prompt_hash:
                raise ItemFailure("transcript changed while the batch ran; sent again later")
            response = line.get("response") or {}
            status = response.get("status_code")
            body = response.get("body")
            if isinstance(status, int) and status != 200 and isinstance(body, dict):
                raise self._line_error(status, body)
            if status != 200 or not isinstance(body, dict):
                err = line.get("error") or {}
                raise ItemFailure(f"batch line: {err.get('code') or 'no response'}")
            resp = parse_response(body)
            if resp is None:
                raise ItemFailure("batch output line is not a Responses API object")
            return resp, _batch_usage(resp, model)

        return answer


async def submit(
    config: RunnerConfig,
    run_id: int,
    max_items: int | None,
    client: openai.AsyncOpenAI | None = None,
) -> list[BatchRow]:
    driver = BatchDriver(config, client)
    try:
        return await driver.submit(run_id, max_items)
    finally:
        await driver.close()


async def cancel(
    config: RunnerConfig, batch_id: int, client: openai.AsyncOpenAI | None = None
) -> BatchRow:
    driver = BatchDriver(config, client)
    try:
        return await driver.cancel(batch_id)
    finally:
        await driver.close()


async def poll(
    config: RunnerConfig,
    run_id: int | None,
    wait: bool = False,
    interval: float = 60.0,
    client: openai.AsyncOpenAI | None = None,
) -> tuple[list[BatchRow], RunnerStats]:
    """Poll the open batches once, or with ``wait`` until none is open."""
    driver = BatchDriver(config, client)
    try:
        while True:
            rows = await driver.poll(run_id)
            if not wait or all(r.status not in OPEN for r in rows):
                return rows, driver.stats
            await asyncio.sleep(interval)
    finally:
        await driver.close()
