"""A local stand-in for the OpenAI Responses API (``POST /v1/responses``).

Used by the tests, the benchmarks and the demo when no real API key is set. It is
a real HTTP server speaking the wire format the ``openai`` SDK parses, with
realistic headers, rate limits (RPM/TPM sliding windows), simulated prompt
caching, latency and injectable faults. The report it writes is synthetic
(keyword heuristics, deterministic per transcript), schema-valid and grounded in
the transcript, and says so in its ``summary``.

    with Standin(StandinConfig(latency_ms=(50, 200))) as s:
        client = OpenAI(base_url=s.url, api_key="x", max_retries=0)

A request can force a fault with the header ``x-standin-fault: <kind>`` (or
``none``), e.g. ``extra_headers={"x-standin-fault": "timeout"}``. The fault
``ungrounded_once`` breaks a citation only in a first answer: a repair request (an
input that holds the model's earlier answer) gets a grounded one. ``quote_slips``
makes that fraction of evidence excerpts slip as real models do (report.SLIPS).

Stdlib only. Request bodies are never logged (they contain transcripts).
"""

from __future__ import annotations

import email.policy
import hashlib
import json
import math
import random
import secrets
import signal
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, cast

from .limits import Windows, count_tokens
from .report import apply_slips, build_report, ungrounded

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs 3.11


STANDIN_MODEL = "parecer-standin"
FAULT_HEADER = "x-standin-fault"
FAULT_KINDS: tuple[str, ...] = (
    "rate_limit",
    "quota",
    "server_error",
    "timeout",
    "malformed",
    "ungrounded",
    "refusal",
    "incomplete",
    "context_length",
    "auth",
    "ungrounded_once",
)
_MAX_BODY = 32 * 1024 * 1024
_CACHE_SLOTS = 256
_KEYS_URL = "https://platform.openai.com/account/api-keys"


@dataclass(frozen=True)
class StandinConfig:
    """How the stand-in behaves. All limits are shared by every request."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    latency_ms: tuple[int, int] = (0, 0)  # uniform per request, for model-stage answers
    fault_rate: float = 0.0  # probability that a request draws a fault
    faults: tuple[str, ...] = FAULT_KINDS  # the faults the dice may pick (uniformly)
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    require_key: str | None = None  # bearer token required, when set
    seed: int | None = None  # for the fault/latency dice; None: random
    timeout_delay_s: float = 30.0  # how long the `timeout` fault stalls
    quote_slips: float = 0.0  # fraction of evidence excerpts given a realistic slip
    # Batch API (Files + Batches endpoints): a batch answers in_progress until it has been
    # retrieved batch_polls times, then ends as batch_outcome (completed, failed: the whole
    # batch refused, expired: the window ran out after batch_expired_done of its lines ran,
    # the rest are error-file lines batch_expired, as the real API returns them);
    # batch_line_fault_rate of its lines draw a fault
    # from batch_line_faults (server_error, timeout, rate_limit, quota, auth, context_length:
    # an error line with the status and body the endpoint would answer; ungrounded_once,
    # malformed, ...: a 200 line whose answer has that fault).
    batch_polls: int = 1
    batch_outcome: str = "completed"
    batch_expired_done: float = 0.0  # fraction of an expired batch's lines run before expiry
    batch_line_fault_rate: float = 0.0
    batch_line_faults: tuple[str, ...] = ("server_error",)
    log: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        lo, hi = self.latency_ms
        if not 0 <= lo <= hi:
            raise ValueError(f"latency_ms must be 0 <= lo <= hi, got {self.latency_ms}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be within [0, 1], got {self.fault_rate}")
        unknown = [f for f in self.faults if f not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {list(FAULT_KINDS)}")
        if self.fault_rate > 0 and not self.faults:
            raise ValueError("fault_rate > 0 needs at least one fault kind")
        for name in ("rpm_limit", "tpm_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")
        if self.timeout_delay_s < 0:
            raise ValueError("timeout_delay_s must be >= 0")
        if not 0.0 <= self.quote_slips <= 1.0:
            raise ValueError(f"quote_slips must be within [0, 1], got {self.quote_slips}")
        if self.batch_polls < 1:
            raise ValueError("batch_polls must be >= 1")
        if self.batch_outcome not in ("completed", "failed", "expired"):
            raise ValueError("batch_outcome must be completed, failed or expired")
        if not 0.0 <= self.batch_expired_done <= 1.0:
            raise ValueError("batch_expired_done must be within [0, 1]")
        if not 0.0 <= self.batch_line_fault_rate <= 1.0:
            raise ValueError("batch_line_fault_rate must be within [0, 1]")
        unknown = [f for f in self.batch_line_faults if f not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown batch line faults {unknown}")


# ----------------------------------------------------------------------- server state


class _State:
    """Everything the handler threads share."""

    def __init__(self, config: StandinConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        # Separate dice for faults and for the rest (latencies, answer variants): the n-th
        # request to arrive draws the n-th fault whatever the timing of the others, so a
        # seeded run injects the same faults in the same order.
        self.dice = random.Random(config.seed)
        self.other_dice = random.Random(None if config.seed is None else f"other:{config.seed}")
        self.windows = Windows(STANDIN_MODEL)
        self.prompt_cache: OrderedDict[str, None] = OrderedDict()
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.in_flight = 0
        self.counters: dict[str, int] = {}
        self.faults: dict[str, int] = {}
        # Files API and Batch API objects (kept across reset()).
        self.files: dict[str, dict[str, Any]] = {}
        self.file_data: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}  # insertion order: oldest first
        self.batch_retrievals: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.counters = dict.fromkeys(
                (
                    "requests",
                    "completed",
                    "incomplete",
                    "rate_limited",
                    "unauthorized",
                    "model_probes",
                    "invalid_requests",
                    "max_concurrent",
                    "input_tokens",
                    "cached_tokens",
                    "output_tokens",
                    "repair_requests",
                    "slipped_excerpts",
                    "files_uploaded",
                    "batches_created",
                    "batch_lines",
                    "batch_line_errors",
                ),
                0,
            )
            self.counters["max_concurrent"] = self.in_flight
            self.faults = dict.fromkeys(FAULT_KINDS, 0)
            self.windows.clear()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {**self.counters, "in_flight": self.in_flight, "faults": dict(self.faults)}

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counters[key] += n

    def draw_fault(self) -> str | None:
        cfg = self.config
        with self.lock:
            if cfg.fault_rate > 0 and self.dice.random() < cfg.fault_rate:
                return self.dice.choice(cfg.faults)
        return None

    def uniform(self, lo: float, hi: float) -> float:
        with self.lock:
            return self.other_dice.uniform(lo, hi)

    def seen_instructions(self, instructions: str) -> bool:
        """Simulated prompt cache: True when these instructions were seen recently."""
        key = hashlib.sha256(instructions.encode("utf-8")).hexdigest()
        with self.lock:
            hit = key in self.prompt_cache
            self.prompt_cache[key] = None
            self.prompt_cache.move_to_end(key)
            while len(self.prompt_cache) > _CACHE_SLOTS:
                self.prompt_cache.popitem(last=False)
            return hit

    # -- the Batch API's objects (Files, Batches)

    def add_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = "file-" + secrets.token_hex(12)
        obj: dict[str, Any] = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        with self.lock:
            self.files[file_id] = obj
            self.file_data[file_id] = data
        return obj

    def add_batch(self, input_file_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
        now = int(time.time())
        batch_id = "batch_" + secrets.token_hex(12)
        batch: dict[str, Any] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": "/v1/responses",
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": {str(k): str(v) for k, v in metadata.items()},
        }
        with self.lock:
            self.batches[batch_id] = batch
            self.batch_retrievals[batch_id] = 0
        return dict(batch)

    def _batch(self, batch_id: str) -> dict[str, Any]:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise _ApiError(
                404, f"No batch found with id '{batch_id}'.", "invalid_request_error", "batch_id"
            )
        return batch

    def list_batches(self, limit: int, after: str | None) -> dict[str, Any]:
        with self.lock:
            ids = list(reversed(self.batches))  # newest first, as the API lists them
            start = ids.index(after) + 1 if after in ids else 0
            page = [dict(self.batches[i]) for i in ids[start : start + max(1, min(limit, 100))]]
            more = start + len(page) < len(ids)
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": more,
        }

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            batch = self._batch(batch_id)
            if batch["status"] in ("validating", "in_progress", "finalizing"):
                batch["status"], batch["cancelling_at"] = "cancelling", int(time.time())
            return dict(batch)

    def retrieve_batch(self, batch_id: str) -> dict[str, Any]:
        """The batch; the batch_polls-th retrieval of a running batch runs it to its end."""
        with self.lock:
            batch = self._batch(batch_id)
            if batch["status"] in ("validating", "in_progress"):
                self.batch_retrievals[batch_id] += 1
                batch["in_progress_at"] = batch["in_progress_at"] or int(time.time())
                if self.batch_retrievals[batch_id] < self.config.batch_polls:
                    batch["status"] = "in_progress"
                    return dict(batch)
                end = self.config.batch_outcome
            elif batch["status"] == "cancelling":
                end = "cancelled"
            else:  # finished, or finalizing in another request
                return dict(batch)
            batch["status"] = "finalizing"
            data = self.file_data[batch["input_file_id"]]
        self._finish_batch(batch, end, data)
        with self.lock:
            return dict(batch)

    def _finish_batch(self, batch: dict[str, Any], end: str, data: bytes) -> None:
        """Run (or not) every line of the input file and write the output and error files."""
        now = int(time.time())
        lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
        if end == "failed":
            with self.lock:
                batch.update(
                    status="failed",
                    failed_at=now,
                    errors={
                        "object": "list",
                        "data": [
                            {
                                "code": "stand_in_failed",
                                "message": "The stand-in was told to fail this batch (batch_outcome).",
                                "param": None,
                                "line": None,
                            }
                        ],
                    },
                )
            return
        out: list[str] = []
        err: list[str] = []
        # An expired batch ran its first lines before the window closed: their results are
        # in the output (and error) file like a completed batch's, the rest batch_expired.
        ran = round(len(lines) * self.config.batch_expired_done) if end == "expired" else 0
        for n, line in enumerate(lines, 1):
            row = self._batch_line(line, n, "completed" if n <= ran else end)
            (
                out
                if row["response"] is not None and row["response"]["status_code"] == 200
                else err
            ).append(json.dumps(row, ensure_ascii=False))
        self.count("batch_lines", len(lines))
        self.count("batch_line_errors", len(err))
        out_id = (
            self.add_file(("\n".join(out) + "\n").encode(), "batch_output.jsonl", "batch_output")[
                "id"
            ]
            if out
            else None
        )
        err_id = (
            self.add_file(("\n".join(err) + "\n").encode(), "batch_errors.jsonl", "batch_output")[
                "id"
            ]
            if err
            else None
        )
        with self.lock:
            batch.update(
                status=end,
                output_file_id=out_id,
                error_file_id=err_id,
                request_counts={"total": len(lines), "completed": len(out), "failed": len(err)},
                in_progress_at=batch["in_progress_at"] or now,
                finalizing_at=now if end == "completed" else None,
                completed_at=now if end == "completed" else None,
                expired_at=now if end == "expired" else None,
                cancelled_at=now if end == "cancelled" else None,
            )

    def _batch_line(self, line: str, n: int, end: str) -> dict[str, Any]:
        """One output line in the Batch API's format."""
        row_id = "batch_req_" + secrets.token_hex(12)
        request_id = "req_" + secrets.token_hex(16)
        try:
            item = json.loads(line)
            custom_id = str(item["custom_id"])
            body = item["body"]
        except (ValueError, KeyError, TypeError):
            return {
                "id": row_id,
                "custom_id": None,
                "response": None,
                "error": {
                    "code": "invalid_json_line",
                    "message": f"Line {n} is not a request object.",
                },
            }
        if end in ("expired", "cancelled"):
            return {
                "id": row_id,
                "custom_id": custom_id,
                "response": None,
                "error": {
                    "code": f"batch_{end}",
                    "message": "This request could not be executed before the completion window expired."
                    if end == "expired"
                    else "This request was not executed because the batch was cancelled.",
                },
            }
        fault: str | None = None
        cfg = self.config
        with self.lock:
            if cfg.batch_line_fault_rate > 0 and self.dice.random() < cfg.batch_line_fault_rate:
                fault = self.dice.choice(cfg.batch_line_faults)
                self.faults[fault] += 1
        try:
            if item.get("url") != "/v1/responses" or item.get("method") != "POST":
                raise _invalid("Each line must POST to /v1/responses.", "url", "invalid_value")
            body, transcript, full_input, repair, max_out = _validate(body)
            _raise_early_fault(fault, {"x-ratelimit-limit-requests": "-"})  # as the endpoint would
            if fault in ("server_error", "timeout"):
                raise _ApiError(
                    500,
                    "The server had an error while processing your request. Sorry about that!",
                    "server_error",
                )
            answer = _answer(
                self, body, _draft(body, transcript, full_input), transcript, repair, max_out, fault
            )
        except _ApiError as e:
            return {
                "id": row_id,
                "custom_id": custom_id,
                "response": {"status_code": e.status, "request_id": request_id, "body": e.body},
                "error": None,
            }
        return {
            "id": row_id,
            "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": request_id, "body": answer},
            "error": None,
        }

    def variant_rng(self) -> random.Random:
        """A generator for one answer's variations (slips, malformed halves)."""
        with self.lock:
            return random.Random(self.other_dice.getrandbits(64))

    def sleep(self, seconds: float) -> bool:
        """Sleep in small steps; False if the server began stopping meanwhile."""
        return not self.stopping.wait(seconds) if seconds > 0 else not self.stopping.is_set()


# ---------------------------------------------------------------------------- handler


class _ApiError(Exception):
    """An OpenAI-style error response."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self.headers = headers or {}


def _auth_error(message: str) -> _ApiError:
    return _ApiError(401, message, "invalid_request_error", None, "invalid_api_key")


def _invalid(message: str, param: str | None, code: str | None = None) -> _ApiError:
    return _ApiError(400, message, "invalid_request_error", param, code)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # listen backlog: bursts of concurrent connections
    state: _State

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that went away (a killed runner) is no error worth a traceback
        import sys as _sys

        if isinstance(_sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    server_version = "parecer-standin/1"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are closed after this
    disable_nagle_algorithm = True  # headers and body go out as separate small writes

    @property
    def state(self) -> _State:
        return cast(_Server, self.server).state

    def setup(self) -> None:
        super().setup()
        with self.state.lock:
            self.state.connections.add(self.connection)

    def finish(self) -> None:
        with self.state.lock:
            self.state.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log: the hook in StandinConfig.log gets content-free lines

    # -- plumbing

    def _send(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str],
        content_type: str = "application/json",
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if "x-request-id" not in headers:
                self.send_header("x-request-id", "req_" + secrets.token_hex(16))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:  # the client went away (e.g. it timed out first)
            self.close_connection = True

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self._send(status, body, headers or {})

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self.close_connection = True
            raise _ApiError(413, "Request body too large.", "invalid_request_error")
        return self.rfile.read(length) if length > 0 else b""

    # -- routes

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200, b"ok", {}, "text/plain; charset=utf-8")
        elif path == "/v1/standin/stats":
            self._json(200, self.state.snapshot())
        elif (
            path.startswith("/v1/files/")
            or path == "/v1/batches"
            or path.startswith("/v1/batches/")
        ):
            self._api(lambda: self._batch_api_get(path))
        elif path.startswith("/v1/models/"):  # models.retrieve: the runner's key probe
            self.state.count("model_probes")
            model = path[len("/v1/models/") :]
            self._api(
                lambda: (200, {"id": model, "object": "model", "created": 0, "owned_by": "standin"})
            )
        else:
            self._not_found("GET", path)

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/v1/responses":
            self._responses()
        elif path == "/v1/standin/reset":
            self._read_body()
            self.state.reset()
            self._json(200, {"ok": True})
        elif path == "/v1/files":
            self._api(self._upload_file)
        elif path == "/v1/batches":
            self._api(self._create_batch)
        elif path.startswith("/v1/batches/") and path.endswith("/cancel"):
            self._read_body()
            self._api(lambda: self._cancel_batch(path.split("/")[3]))
        else:
            self._read_body()
            self._not_found("POST", path)

    # -- Files and Batches (the Batch API)

    def _api(self, handler: Callable[[], tuple[int, Any]]) -> None:
        """Serve a Files / Batches call: JSON answers and OpenAI-style errors."""
        try:
            if self.state.config.require_key is not None:
                auth = self.headers.get("Authorization", "")
                if auth[len("Bearer ") :].strip() != self.state.config.require_key:
                    raise _auth_error(
                        f"Incorrect API key provided. You can find your API key at {_KEYS_URL}."
                    )
            status, payload = handler()
        except _ApiError as err:
            self._json(err.status, err.body, err.headers)
            return
        if isinstance(payload, bytes):
            self._send(status, payload, {}, "application/octet-stream")
        else:
            self._json(status, payload)

    def _upload_file(self) -> tuple[int, Any]:
        raw = self._read_body()
        ctype = self.headers.get("Content-Type", "")
        msg = BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + raw
        )
        fields: dict[str, tuple[str | None, bytes]] = {}
        if msg.is_multipart():
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                data = part.get_payload(decode=True)
                if isinstance(name, str) and isinstance(data, bytes):
                    fields[name] = (part.get_filename(), data)
        if "file" not in fields:
            raise _invalid(
                "Missing required parameter: 'file'.", "file", "missing_required_parameter"
            )
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
        if purpose not in ("batch", "assistants", "user_data", "fine-tune", "vision", "evals"):
            raise _invalid(f"Invalid value for 'purpose': {purpose!r}.", "purpose", "invalid_value")
        filename, data = fields["file"]
        obj = self.state.add_file(data, filename or "upload.jsonl", purpose)
        self.state.count("files_uploaded")
        return 200, obj

    def _batch_api_get(self, path: str) -> tuple[int, Any]:
        state = self.state
        parts = path.strip("/").split("/")  # v1, files|batches, id, [content]
        if parts[1] == "files" and len(parts) in (3, 4):
            with state.lock:
                obj, data = state.files.get(parts[2]), state.file_data.get(parts[2])
            if obj is None or data is None:
                raise _ApiError(
                    404, f"No such File object: {parts[2]}", "invalid_request_error", "id"
                )
            return 200, (data if len(parts) == 4 and parts[3] == "content" else obj)
        if parts[1] == "batches" and len(parts) == 2:
            query = dict(
                kv.split("=", 1)
                for kv in (self.path.split("?", 1) + [""])[1].split("&")
                if "=" in kv
            )
            return 200, state.list_batches(int(query.get("limit") or 20), query.get("after"))
        if parts[1] == "batches" and len(parts) == 3:
            return 200, state.retrieve_batch(parts[2])
        raise _ApiError(404, f"Invalid URL (GET {path})", "invalid_request_error")

    def _create_batch(self) -> tuple[int, Any]:
        try:
            req = json.loads(self._read_body() or b"null")
        except ValueError:
            raise _invalid("We could not parse the JSON body of your request.", None) from None
        if not isinstance(req, dict):
            raise _invalid("We could not parse the JSON body of your request.", None)
        if req.get("endpoint") != "/v1/responses":
            raise _invalid(
                "The stand-in runs batches for endpoint /v1/responses only.",
                "endpoint",
                "invalid_value",
            )
        if req.get("completion_window") != "24h":
            raise _invalid("completion_window must be '24h'.", "completion_window", "invalid_value")
        metadata = req.get("metadata") or {}
        if not isinstance(metadata, dict) or len(metadata) > 16:
            raise _invalid(
                "metadata must be an object of at most 16 keys.", "metadata", "invalid_value"
            )
        with self.state.lock:
            file = self.state.files.get(str(req.get("input_file_id")))
        if file is None or file["purpose"] != "batch":
            raise _invalid(
                f"Invalid 'input_file_id': {req.get('input_file_id')!r}: no file with purpose batch.",
                "input_file_id",
                "invalid_value",
            )
        self.state.count("batches_created")
        return 200, self.state.add_batch(file["id"], metadata)

    def _cancel_batch(self, batch_id: str) -> tuple[int, Any]:
        return 200, self.state.cancel_batch(batch_id)

    def _not_found(self, method: str, path: str) -> None:
        self._json(
            404,
            {
                "error": {
                    "message": f"Invalid URL ({method} {path})",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
        )

    def _responses(self) -> None:
        state, cfg = self.state, self.state.config
        started = time.monotonic()
        request_id = "req_" + secrets.token_hex(16)
        with state.lock:
            state.in_flight += 1
            state.counters["requests"] += 1
            state.counters["max_concurrent"] = max(
                state.counters["max_concurrent"], state.in_flight
            )
        self._fault: str | None = None  # set once drawn, for the stats and the log line
        status = 0
        try:
            try:
                status = self._handle_responses(started, request_id)
            except _ApiError as err:
                status = err.status
                if self._fault is None and status == 401:
                    state.count("unauthorized")
                elif self._fault is None and status in (400, 413):
                    state.count("invalid_requests")
                self._json(status, err.body, self._headers(started, request_id, err.headers))
            except Exception as exc:  # a stand-in bug: answer like the API would, no traceback
                status, self._fault = 500, f"internal:{type(exc).__name__}"
                self._json(
                    500,
                    _ApiError(
                        500,
                        "The server had an error while processing your request. Sorry about that!",
                        "server_error",
                    ).body,
                    self._headers(started, request_id, {}),
                )
        finally:
            with state.lock:
                state.in_flight -= 1
            if cfg.log is not None:
                ms = round((time.monotonic() - started) * 1000)
                cfg.log(
                    f"standin {request_id} POST /v1/responses {status or 'dropped'} "
                    f"fault={self._fault or '-'} {ms}ms"
                )

    def _headers(self, started: float, request_id: str, extra: dict[str, str]) -> dict[str, str]:
        if "x-ratelimit-limit-requests" not in extra:  # early errors: current window state
            cfg = self.state.config
            with self.state.lock:
                rl = self.state.windows.headers(time.monotonic(), cfg.rpm_limit, cfg.tpm_limit)
            extra = {**rl, **extra}
        return {
            "x-request-id": request_id,
            "openai-version": "2020-10-01",
            "openai-processing-ms": str(round((time.monotonic() - started) * 1000)),
            **extra,
        }

    def _handle_responses(self, started: float, request_id: str) -> int:
        """Serve one /v1/responses call; returns the status (0: dropped unanswered)."""
        state, cfg = self.state, self.state.config
        raw = self._read_body()

        if cfg.require_key is not None:
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                raise _auth_error(
                    "You didn't provide an API key. You need to provide your API "
                    "key in an Authorization header using Bearer auth."
                )
            if auth[len("Bearer ") :].strip() != cfg.require_key:
                raise _auth_error(
                    f"Incorrect API key provided. You can find your API key at {_KEYS_URL}."
                )

        try:
            req = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _invalid(
                "We could not parse the JSON body of your request. (HINT: This likely "
                "means you aren't using your HTTP library correctly.)",
                None,
            ) from None
        req, transcript, full_input, repair, max_out = _validate(req)
        forced = self.headers.get(FAULT_HEADER)
        if forced is not None:
            forced = forced.strip().lower()
            if forced != "none" and forced not in FAULT_KINDS:
                raise _invalid(
                    f"Unknown {FAULT_HEADER} '{forced}'; expected one of "
                    f"{', '.join(FAULT_KINDS)} or none.",
                    None,
                    "invalid_standin_fault",
                )

        output, instructions, input_tokens = _draft(req, transcript, full_input)
        # Rate limits, charged with the whole request's tokens.
        with state.lock:
            verdict = state.windows.admit(
                time.monotonic(), input_tokens + count_tokens(output), cfg.rpm_limit, cfg.tpm_limit
            )
            if not verdict.ok:
                state.counters["rate_limited"] += 1
        if not verdict.ok:
            raise _ApiError(
                429,
                verdict.message,
                verdict.kind,
                None,
                "rate_limit_exceeded",
                {**verdict.headers, **_retry_after(verdict.retry_s)},
            )
        rl = verdict.headers

        fault = (None if forced == "none" else forced) if forced is not None else state.draw_fault()
        if fault is not None:
            self._fault = fault
            with state.lock:
                state.faults[fault] += 1
        try:
            _raise_early_fault(fault, rl)
        except _ApiError as err:
            err.headers = {**rl, **err.headers}
            raise
        lo, hi = cfg.latency_ms
        delay = cfg.timeout_delay_s if fault == "timeout" else state.uniform(lo, hi) / 1000
        if not state.sleep(delay):
            self.close_connection = True  # shutting down: drop the request unanswered
            return 0
        if fault == "server_error":
            raise _ApiError(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
                rl,
            )

        body = _answer(
            state, req, (output, instructions, input_tokens), transcript, repair, max_out, fault
        )
        self._json(200, body, self._headers(started, request_id, rl))
        return 200

    def _variant_rng(self) -> random.Random:
        return self.state.variant_rng()


def _validate(req: Any) -> tuple[dict[str, Any], str, str | None, bool, int | None]:
    """A /v1/responses body (checked to be an object), its transcript, whole input, whether it is a repair request and
    max_output_tokens; _ApiError 400 as the API answers a bad request."""
    if not isinstance(req, dict):
        raise _invalid("We could not parse the JSON body of your request.", None)
    if not isinstance(req.get("model"), str) or not req["model"]:
        raise _invalid(
            "Missing required parameter: 'model'.", "model", "missing_required_parameter"
        )
    transcript = full_input = _input_text(req.get("input"))
    repair = _is_repair(req.get("input"))
    if repair:  # the transcript is the first input message; the rest is answer + request
        transcript = _input_text(req["input"][:1])
    if transcript is None:
        raise _invalid(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    max_out = req.get("max_output_tokens")
    if max_out is not None and (not isinstance(max_out, int) or isinstance(max_out, bool)):
        raise _invalid(
            "Invalid type for 'max_output_tokens': expected an integer.",
            "max_output_tokens",
            "invalid_type",
        )
    if isinstance(max_out, int) and max_out < 16:
        raise _invalid(
            "Invalid 'max_output_tokens': integer below minimum value. Expected a "
            f"value >= 16, but got {max_out} instead.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    return req, transcript, full_input, repair, max_out


def _draft(req: dict[str, Any], transcript: str, full_input: str | None) -> tuple[str, str, int]:
    """The valid report for a request (JSON text), its instructions and its input tokens."""
    instructions: str = req["instructions"] if isinstance(req.get("instructions"), str) else ""
    text_param = req.get("text") if isinstance(req.get("text"), dict) else None
    fmt = (text_param or {}).get("format")
    schema = fmt.get("schema") if isinstance(fmt, dict) else None
    output = json.dumps(
        build_report(transcript, schema if isinstance(schema, dict) else None),
        ensure_ascii=False,
        separators=(",", ":"),
    )
    input_tokens = count_tokens(instructions + (full_input or ""))

    return output, instructions, input_tokens


def _answer(
    state: _State,
    req: dict[str, Any],
    draft: tuple[str, str, int],
    transcript: str,
    repair: bool,
    max_out: int | None,
    fault: str | None,
) -> dict[str, Any]:
    """The Responses API object answering a valid request (after limits and early faults),
    counted in the stats: the synchronous endpoint's and each Batch API line's. ``draft``
    is what _draft gave for the request."""
    output, instructions, input_tokens = draft
    cfg = state.config
    hit = bool(instructions) and state.seen_instructions(instructions)
    cached = count_tokens(instructions) if hit else 0
    if repair:
        state.count("repair_requests")
    if fault == "ungrounded_once":
        fault = None if repair else "ungrounded"
    if cfg.quote_slips > 0:
        output, slipped = apply_slips(output, transcript, cfg.quote_slips, state.variant_rng())
        state.count("slipped_excerpts", slipped)
    body = _response_body(
        req, output, fault, input_tokens, cached, max_out, state.variant_rng(), transcript
    )
    usage = body["usage"]
    with state.lock:
        c = state.counters
        c["completed" if body["status"] == "completed" else "incomplete"] += 1
        c["input_tokens"] += usage["input_tokens"]
        c["cached_tokens"] += cached
        c["output_tokens"] += usage["output_tokens"]
    return body


def _input_text(value: Any) -> str | None:
    """The transcript: a string, or the text parts of a list of input items."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        parts: list[str] = []
        for item in value:
            content = item.get("content") if isinstance(item, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [
                    c["text"]
                    for c in content
                    if isinstance(c, dict) and isinstance(c.get("text"), str)
                ]
        return "\n".join(parts)
    return None


def _is_repair(value: Any) -> bool:
    """A repair request: a list input that holds an earlier answer of the model."""
    return (
        isinstance(value, list)
        and len(value) > 1
        and any(isinstance(i, dict) and i.get("role") == "assistant" for i in value)
    )


def _retry_after(seconds: float) -> dict[str, str]:
    return {
        "retry-after": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, math.ceil(seconds * 1000))),
    }


def _raise_early_fault(fault: str | None, rl: dict[str, str]) -> None:
    """Faults that answer at once, before any 'model' latency."""
    if fault == "rate_limit":
        raise _ApiError(
            429,
            f"Rate limit reached for {STANDIN_MODEL} in organization "
            "org-standin on requests per min (RPM): Limit "
            f"{rl['x-ratelimit-limit-requests']}. Please try again in 1s.",
            "requests",
            None,
            "rate_limit_exceeded",
            _retry_after(1),
        )
    if fault == "quota":
        raise _ApiError(
            429,
            "You exceeded your current quota, please check your plan and billing "
            "details. For more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            None,
            "insufficient_quota",
        )
    if fault == "context_length":
        raise _ApiError(
            400,
            "Your input exceeds the context window of this model. Please adjust "
            "your input and try again.",
            "invalid_request_error",
            "input",
            "context_length_exceeded",
        )
    if fault == "auth":
        raise _auth_error(f"Incorrect API key provided. You can find your API key at {_KEYS_URL}.")


def _response_body(
    req: dict[str, Any],
    output: str,
    fault: str | None,
    input_tokens: int,
    cached: int,
    max_out: int | None,
    rng: random.Random,
    transcript: str,
) -> dict[str, Any]:
    """The Responses API object; `output` is the valid report, altered per fault."""
    status, reason = "completed", None
    content: dict[str, Any]
    if fault == "malformed":
        output = (
            output[: len(output) // 2] if rng.random() < 0.5 else "```json\n" + output + "\n```"
        )
    elif fault == "ungrounded":
        output = ungrounded(output, transcript, rng)
    if fault == "incomplete":
        limit = len(output) // 2 if max_out is None else min(len(output) // 2, max_out * 4)
        output, status, reason = output[:limit], "incomplete", "max_output_tokens"
    elif max_out is not None and count_tokens(output) > max_out:  # a genuine cut-off
        output, status, reason = output[: max_out * 4], "incomplete", "max_output_tokens"
    if fault == "refusal":
        refusal = "I'm sorry, I can't help with that."
        content, output_tokens = {"type": "refusal", "refusal": refusal}, count_tokens(refusal)
    else:
        content = {"type": "output_text", "text": output, "annotations": [], "logprobs": []}
        output_tokens = max_out if reason and max_out is not None else count_tokens(output)
    now = int(time.time())
    text_param = req["text"] if isinstance(req.get("text"), dict) else {"format": {"type": "text"}}
    return {
        "id": "resp_" + secrets.token_hex(24),
        "object": "response",
        "created_at": now,
        "status": status,
        "background": False,
        "completed_at": now if status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": reason} if reason else None,
        "instructions": req.get("instructions"),
        "max_output_tokens": max_out,
        "model": STANDIN_MODEL,
        "output": [
            {
                "type": "message",
                "id": "msg_" + secrets.token_hex(24),
                "status": status,
                "role": "assistant",
                "content": [content],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": False,
        "temperature": 1.0,
        "text": text_param,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": None,
        "metadata": req.get("metadata") if isinstance(req.get("metadata"), dict) else {},
    }


# -------------------------------------------------------------------------- public API


class Standin:
    """The stand-in server, run on a background thread.

    ``Standin(config).start()`` or ``with Standin(config) as s:``; ``s.url`` is the
    SDK's ``base_url`` (ends in ``/v1``).
    """

    def __init__(self, config: StandinConfig | None = None) -> None:
        self.config = config or StandinConfig()
        self._state = _State(self.config)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        if self._server is not None:
            return self
        server = _Server((self.config.host, self.config.port), _Handler)
        server.state = self._state
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="parecer-standin",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; in-flight requests (e.g. a `timeout` stall) are dropped."""
        server, self._server = self._server, None
        if server is None:
            return
        self._state.stopping.set()
        server.shutdown()
        with self._state.lock:
            connections = list(self._state.connections)
        for conn in connections:  # wake handler threads blocked on idle keep-alive reads
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The SDK base URL, e.g. ``http://127.0.0.1:54321/v1``."""
        return f"http://{self.config.host}:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        """Counters: requests, completed, incomplete, faults{kind: n}, rate_limited,
        unauthorized, model_probes (models.retrieve calls), invalid_requests, in_flight,
        max_concurrent, token totals."""
        return self._state.snapshot()

    def reset(self) -> None:
        """Zero the counters and the rate-limit windows (the prompt cache stays)."""
        self._state.reset()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_forever(
    config: StandinConfig | None = None, *, on_ready: Callable[[str], None] | None = None
) -> None:
    """Serve until KeyboardInterrupt or SIGTERM/SIGINT, then stop cleanly.

    ``on_ready`` receives the base URL once the server is listening.
    """
    done = threading.Event()
    standin = Standin(config).start()
    previous: list[tuple[signal.Signals, Any]] = []

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous.append((sig, signal.signal(sig, _on_signal)))
    try:
        if on_ready is not None:
            on_ready(standin.url)
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()
        for sig, handler in previous:
            signal.signal(sig, handler)
