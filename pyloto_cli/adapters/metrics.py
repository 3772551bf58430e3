"""`Metrics` on prometheus-client: what `GET /metrics` shows, every name prefixed `pyloto_`.

One instance per process, built by the composition root. With `multiprocess_dir` the values go
to the library's shared files there (`PROMETHEUS_MULTIPROC_DIR` must have been set before
prometheus_client was first imported, which the composition root does), and `render` adds up
every process's files: that is how the web process shows the counters of `serve --workers N`'s
children. Without it the values live in this instance's own registry.

Children of labelled metrics whose label values are known in advance are bound once here, so a
message costs a few dictionary lookups and increments, not a `labels()` call each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from pyloto_cli.domain.task import QueueStats

# what an attempt, an LLM stage and a Graph send can end with (other values are bound lazily)
_OUTCOMES: Final = ("done", "skipped", "retry", "defer", "dead", "reply_expired")
_STAGES: Final = ("event", "response", "message_type")
_SEND_OUTCOMES: Final = ("sent", "transient", "ambiguous", "paused", "deferred", "permanent")
_TASK_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LLM_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 30)

# every metric's name, for the README and the test that makes each one move
NAMES: Final = (
    "pyloto_webhooks_received_total",
    "pyloto_webhooks_rejected_total",
    "pyloto_tasks_enqueued_total",
    "pyloto_tasks_processed_total",
    "pyloto_tasks_retried_total",
    "pyloto_tasks_dead_lettered_total",
    "pyloto_duplicates_skipped_total",
    "pyloto_task_processing_seconds",
    "pyloto_llm_stage_seconds",
    "pyloto_llm_errors_total",
    "pyloto_llm_breaker_open",
    "pyloto_graph_sends_total",
    "pyloto_queue_depth",
    "pyloto_queue_oldest_age_seconds",
)


class PrometheusMetrics:
    """`Metrics` kept by prometheus-client (shared between processes under
    `multiprocess_dir`)."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self._dir = multiprocess_dir
        self._registry = CollectorRegistry(auto_describe=True)
        r = self._registry
        self._received = Counter(
            "pyloto_webhooks_received", "Signed, well-formed webhooks read.", registry=r
        )
        self._rejected = Counter(
            "pyloto_webhooks_rejected",
            "Webhook and verify requests refused, by reason.",
            ["reason"],
            registry=r,
        )
        self._enqueued = Counter("pyloto_tasks_enqueued", "New tasks stored.", registry=r)
        self._duplicates = Counter(
            "pyloto_duplicates_skipped",
            "Duplicates left alone: already queued (enqueue) or already answered (dedupe, "
            "session).",
            ["where"],
            registry=r,
        )
        processed = Counter(
            "pyloto_tasks_processed", "Attempts settled, by outcome.", ["outcome"], registry=r
        )
        self._processed = {o: processed.labels(o) for o in _OUTCOMES}
        self._processed_family = processed
        self._retried = Counter(
            "pyloto_tasks_retried", "Tasks put back for another attempt.", registry=r
        )
        self._dead = Counter("pyloto_tasks_dead_lettered", "Tasks dead-lettered.", registry=r)
        self._latency = Histogram(
            "pyloto_task_processing_seconds",
            "Time to process one attempt, from lease to settlement.",
            buckets=_TASK_BUCKETS,
            registry=r,
        )
        stage = Histogram(
            "pyloto_llm_stage_seconds",
            "Time of one LLM stage, by stage.",
            ["stage"],
            buckets=_LLM_BUCKETS,
            registry=r,
        )
        self._stage_family = stage
        self._stages = {s: stage.labels(s) for s in _STAGES}
        self._llm_errors = Counter(
            "pyloto_llm_errors",
            "LLM stages that fell back, by stage and reason.",
            ["stage", "reason"],
            registry=r,
        )
        self._breaker = Gauge(
            "pyloto_llm_breaker_open",
            "1 while the LLM circuit breaker is open (the highest of the processes).",
            registry=r,
            multiprocess_mode="max",
        )
        sends = Counter(
            "pyloto_graph_sends",
            "Graph API sends, by outcome and Meta's error code ('' when none).",
            ["outcome", "code"],
            registry=r,
        )
        self._sends_family = sends
        self._sent = sends.labels("sent", "")
        self._depth = Gauge(
            "pyloto_queue_depth",
            "Tasks not yet done (ready, leased or waiting for a retry).",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self._oldest = Gauge(
            "pyloto_queue_oldest_age_seconds",
            "Age of the oldest task not yet done (0 when none).",
            registry=r,
            multiprocess_mode="mostrecent",
        )

    def webhook_received(self) -> None:
        """Count one."""
        self._received.inc()

    def webhook_rejected(self, reason: str) -> None:
        """Count one, by reason."""
        self._rejected.labels(reason).inc()

    def tasks_enqueued(self, count: int) -> None:
        """Count `count`."""
        if count:
            self._enqueued.inc(count)

    def duplicates_skipped(self, where: str, count: int = 1) -> None:
        """Count `count`, by where."""
        if count:
            self._duplicates.labels(where).inc(count)

    def task_processed(self, outcome: str, seconds: float) -> None:
        """Count one by outcome and observe its time."""
        child = self._processed.get(outcome) or self._processed_family.labels(outcome)
        child.inc()
        self._latency.observe(seconds)

    def task_retried(self) -> None:
        """Count one."""
        self._retried.inc()

    def task_dead_lettered(self) -> None:
        """Count one."""
        self._dead.inc()

    def llm_stage(self, stage: str, seconds: float, reason: str | None) -> None:
        """Observe the stage's time; count its failure, if any."""
        child = self._stages.get(stage) or self._stage_family.labels(stage)
        child.observe(seconds)
        if reason is not None:
            self._llm_errors.labels(stage, reason).inc()

    def llm_error(self, stage: str, reason: str) -> None:
        """Count one, by stage and reason."""
        self._llm_errors.labels(stage, reason).inc()

    def breaker_open(self, is_open: bool) -> None:
        """Set the gauge to 1 or 0."""
        self._breaker.set(1 if is_open else 0)

    def graph_send(self, outcome: str, code: int | None = None) -> None:
        """Count one, by outcome and code."""
        if outcome == "sent" and code is None:
            self._sent.inc()
            return
        self._sends_family.labels(outcome, "" if code is None else str(code)).inc()

    def queue_stats(self, stats: QueueStats) -> None:
        """Set the queue gauges (a depth the queue does not report is left unset)."""
        if stats.counts_reported:
            self._depth.set(stats.depth)
        self._oldest.set(stats.oldest_age_s or 0.0)

    def render(self) -> tuple[bytes, str]:
        """This registry's metrics, or every process's under the shared directory."""
        if self._dir is None:
            return generate_latest(self._registry), CONTENT_TYPE_LATEST
        shared = CollectorRegistry()
        MultiProcessCollector(shared, str(self._dir))  # type: ignore[no-untyped-call]  # untyped upstream
        return generate_latest(shared), CONTENT_TYPE_LATEST
