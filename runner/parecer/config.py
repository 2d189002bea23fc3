"""The runner's configuration: one plain dataclass and the default model.

The CLI builds it from its options (each also read from an environment variable it
names); the demo and the tests pass values. Nothing here reads the environment.
Kept apart from ``runner`` so the CLI can name the defaults without importing openai.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

DEFAULT_MODEL = "gpt-5-mini"  # the one place the default model is named


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class RunnerConfig:
    """Everything a runner is told. Built by the CLI from its options (and their
    environment variables) or by a caller; nothing here reads the environment."""

    database_url: str
    concurrency: int = 4
    client_slug: str | None = None
    once: bool = False
    run_id: int | None = None  # stop once this run has nothing left to do
    worker_id: str = field(default_factory=default_worker_id)
    poll_seconds: float = 30.0
    lease_seconds: int | None = None  # None: the database's lease_seconds setting
    model: str = DEFAULT_MODEL  # when the script version names none
    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None  # an OpenAI-compatible endpoint (the stand-in, a proxy)
    request_timeout: float = 120.0
    max_output_tokens: int = 4000
    shutdown_grace: float = 20.0
    extra_headers: dict[str, str] | None = None  # tests: force stand-in faults
    key_label: str | None = None  # names the key in shared rate-limit state (default: a hash)
    expected_output_tokens: int = 600  # for the shared limiter's estimate
    rate_limit: bool = True  # consult parecer.acquire_rate before each call
    pool_max: int = 3  # database connections for calls, whatever the concurrency (+1 to LISTEN)
    listen: bool = True  # False: poll only (PgBouncer in transaction mode cannot LISTEN)
    metrics: bool = False  # refresh the parecer.metrics queue gauges for a /metrics endpoint
    # Acknowledgements: reports wait at most ack_window_ms (or until ack_batch are waiting)
    # and go to the database together in one parecer.mark_done_many call, one commit.
    # 0: each report is its own parecer.mark_done call (docs/reliability.md, the trade-off).
    ack_window_ms: int = 20
    ack_batch: int = 10
    # Claims ahead of the free slots: up to claim_ahead more items are claimed (their
    # prompts with them) and wait in the runner, leases heartbeated, for a slot to free;
    # the runner claims again once half of them have started. Claims then come in
    # batches instead of one item per finished item. 0: claim only for free slots.
    claim_ahead: int = 0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.pool_max < 1:
            raise ValueError("pool_max must be at least 1")
        if not 0 <= self.ack_window_ms <= 10_000:
            raise ValueError("ack_window_ms must be between 0 and 10000")
        if not 1 <= self.ack_batch <= 1000:
            raise ValueError("ack_batch must be between 1 and 1000")
        if not 0 <= self.claim_ahead <= 1000:
            raise ValueError("claim_ahead must be between 0 and 1000")


@dataclass(frozen=True)
class ModelEndpoint:
    """Where a runner sends its model calls: the options every runner-starting command shares."""

    model: str
    base_url: str | None
    api_key: str | None = field(repr=False)
    key_label: str | None
