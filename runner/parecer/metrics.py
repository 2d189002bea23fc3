"""Prometheus metrics: the runner's own counters and the queue-wide gauges of ``parecer.metrics``.

The runner calls a few hooks (``observe_call``, ``rate_wait``, ...); ``parecer runner
--metrics-port N`` serves them with prometheus_client's HTTP server, and the runner
refreshes the queue gauges from the ``parecer.metrics`` view through its own pool, so
a scrape opens no database connection. ``parecer metrics`` prints the same queue
gauges once. docs/operations.md lists every name and example alert rules.
"""

from __future__ import annotations

from collections import Counter as _Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: parecer.metrics columns, exported as parecer_queue_<column> gauges.
QUEUE_GAUGES: dict[str, str] = {
    "pending": "Items waiting for their first attempt.",
    "retrying": "Items waiting for a retry after a failed attempt.",
    "processing": "Items leased to a runner now.",
    "failed_terminal": "Items that failed terminally (retry with `parecer retry`).",
    "oldest_pending_age_seconds": "Age of the oldest pending item (0 when none).",
    "done_last_hour": "Items done in the last hour.",
    "spend_today_usd": "Spend of all clients today (budget_timezone day), USD.",
    "workers_with_leases": "Distinct workers holding a live lease.",
    "last_done_age_seconds": "Seconds since the last item was done (absent before the first).",
}

ITEMS = Counter("parecer_items", "Items finished by this runner, by outcome.", ["outcome"])
MODEL_LATENCY = Histogram(
    "parecer_model_latency_seconds",
    "Model call latency (successful calls).",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)
TOKENS = Counter("parecer_tokens", "Tokens used by this runner's model calls.", ["kind"])
PAUSES = Counter("parecer_pauses", "Provider pauses started by this runner, by cause.", ["cause"])
RATE_WAITS = Counter(
    "parecer_rate_limit_waits", "Times the shared rate limiter made this runner wait."
)
RATE_WAIT_SECONDS = Counter(
    "parecer_rate_limit_wait_seconds", "Seconds the shared rate limiter asked this runner to wait."
)
IN_FLIGHT = Gauge("parecer_in_flight", "Items this runner has in flight.")
ACK_BATCHES = Histogram(
    "parecer_ack_batch_items",
    "Reports stored per parecer.mark_done_many call (the runner's acknowledgement batches).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 1000),
)
CLAIM_BATCHES = Histogram(
    "parecer_claim_batch_items",
    "Items per parecer.claim_with_prompts call that gave any (the runner's claims; --claim-ahead).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 1000),
)
LEASE_EXTENSIONS = Counter("parecer_lease_extensions", "Leases extended by heartbeats.")
DB_ERRORS = Counter(
    "parecer_db_errors", "Database calls that failed (unreachable, or an unexpected error)."
)

_PAUSE_CAUSES = (
    ("rate limited", "rate_limit"),
    ("shared rate limit", "shared_limit"),
    ("insufficient_quota", "quota"),
    ("provider refused", "auth"),
    ("model or endpoint not found", "not_found"),
)


class OutcomeCounter(_Counter[str]):
    """The runner's per-outcome tally that also counts ``parecer_items_total{outcome}``."""

    def __setitem__(self, key: str, value: int) -> None:
        delta = value - self.get(key, 0)
        if delta > 0:
            ITEMS.labels(key).inc(delta)
        super().__setitem__(key, value)


def pause(reason: str) -> None:
    cause = next((c for prefix, c in _PAUSE_CAUSES if reason.startswith(prefix)), "other")
    PAUSES.labels(cause).inc()


def observe_call(
    latency_ms: int, input_tokens: int | None, cached: int | None, output: int | None
) -> None:
    MODEL_LATENCY.observe(latency_ms / 1000)
    for kind, n in (("input", input_tokens), ("cached_input", cached), ("output", output)):
        if n:
            TOKENS.labels(kind).inc(n)


def rate_wait(seconds: float) -> None:
    RATE_WAITS.inc()
    RATE_WAIT_SECONDS.inc(max(seconds, 0.0))


class QueueCollector(Collector):
    """The latest ``parecer.metrics`` row as gauges (set by whoever reads the view)."""

    def __init__(self) -> None:
        self.row: Mapping[str, Any] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from queue_families(self.row)


#: parecer.metrics.open_batches: Batch API batches not finished, by status.
BATCH_STATUSES = ("preparing", "uploaded", "submitted", "ingesting")


def queue_families(row: Mapping[str, Any] | None) -> Iterable[GaugeMetricFamily]:
    for column, help_text in QUEUE_GAUGES.items():
        family = GaugeMetricFamily(f"parecer_queue_{column}", help_text)
        value = None if row is None else row.get(column)
        if value is not None:
            family.add_metric([], float(value))
        yield family
    batches = GaugeMetricFamily(
        "parecer_queue_open_batches",
        "Batch API batches not finished, by status (`parecer batch poll` moves them along).",
        labels=["status"],
    )
    counts = None if row is None else row.get("open_batches")
    if isinstance(counts, Mapping):
        for status in BATCH_STATUSES:
            batches.add_metric([status], float(counts.get(status) or 0))
    yield batches


QUEUE = QueueCollector()
REGISTRY.register(QUEUE)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve the default registry (runner metrics and queue gauges) on http://addr:port/metrics."""
    start_http_server(port, addr=addr)


def queue_text(row: Mapping[str, Any]) -> str:
    """The queue gauges of one ``parecer.metrics`` row in the Prometheus text format."""
    registry = CollectorRegistry()
    collector = QueueCollector()
    collector.row = row
    registry.register(collector)
    return generate_latest(registry).decode("utf-8")
