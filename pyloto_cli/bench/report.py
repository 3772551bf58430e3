"""The bench's figures: percentiles, lost and doubled replies, CPU and memory of the server.

Pure functions over what the run recorded; `BenchReport.to_json()` is the `--json` object and
`BenchReport.rows()` the table the CLI prints. Latencies are in milliseconds.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pyloto_cli.bench.load import Ack


@dataclass(frozen=True, slots=True)
class Latency:
    """Percentiles of one latency, in milliseconds (None when nothing was measured)."""

    count: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None

    def show(self) -> str:
        """`p50 / p95 / p99 / max` for the table."""
        if self.p50 is None:
            return "-"
        values = (self.p50, self.p95, self.p99, self.max)
        return " / ".join(f"{v:,.1f}" for v in values if v is not None)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank `q`-th percentile (0 < q <= 100) of ascending `ordered` values."""
    if not ordered:
        raise ValueError("no values")
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def latency_ms(seconds: Sequence[float]) -> Latency:
    """Percentiles of durations given in seconds."""
    if not seconds:
        return Latency()
    ordered = sorted(s * 1000 for s in seconds)
    return Latency(
        count=len(ordered),
        p50=round(percentile(ordered, 50), 2),
        p95=round(percentile(ordered, 95), 2),
        p99=round(percentile(ordered, 99), 2),
        max=round(ordered[-1], 2),
    )


@dataclass(frozen=True, slots=True)
class Counts:
    """What happened to the webhooks and replies."""

    sent: int
    acked: int
    rejected: int
    failed: int
    answered: int
    lost: int
    duplicated: int
    replies: int
    dead_letters: int | None = None


@dataclass(frozen=True, slots=True)
class ServerUsage:
    """The server process's CPU over the run and its peak memory."""

    cpu_ms_per_msg: float | None  # per message acknowledged or answered
    cpu_s: float | None
    peak_rss_mb: float | None


@dataclass(frozen=True, slots=True)
class HostUsage:
    """CPU seconds of the other processes of the run, to tell a saturated host apart."""

    bench_cpu_s: float | None
    fake_llm_cpu_s: float | None
    cpus: int | None


@dataclass(frozen=True, slots=True)
class ReplyCacheUsage:
    """The server's reply cache (PYLOTO_REPLY_CACHE), read from its log: hits among the eligible
    lookups. `enabled` is None when the log says nothing (e.g. a level above INFO)."""

    enabled: bool | None
    hits: int = 0
    misses: int = 0

    @property
    def hit_rate(self) -> float | None:
        """Hits / eligible lookups, None without lookups."""
        lookups = self.hits + self.misses
        return round(self.hits / lookups, 4) if lookups else None

    def show(self) -> str:
        """`hits / lookups (rate)`, `off`, or `-` when unknown."""
        if not self.enabled:
            return "-" if self.enabled is None else "off"
        rate = "-" if self.hit_rate is None else f"{self.hit_rate:.1%}"
        return f"{self.hits} / {self.hits + self.misses} ({rate})"


def reply_cache_usage(log_lines: Iterable[str]) -> ReplyCacheUsage:
    """Count `reply_cache_hit`/`reply_cache_miss` in the server's JSON log; `runtime_opened`
    names the responder (`CachingResponder` when the cache is on)."""
    enabled: bool | None = None
    hits = misses = 0
    for line in log_lines:
        if "reply_cache_" not in line and "runtime_opened" not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        event = record.get("event") if isinstance(record, dict) else None
        if event == "runtime_opened":
            enabled = record.get("responder") == "CachingResponder"
        hits += event == "reply_cache_hit"
        misses += event == "reply_cache_miss"
    if enabled is None and hits + misses:
        enabled = True
    return ReplyCacheUsage(enabled, hits, misses)


@dataclass(frozen=True, slots=True)
class BenchReport:
    """Everything one run measured, with the options it ran with."""

    config: Mapping[str, Any]
    counts: Counts
    ack_ms: Latency
    e2e_ms: Latency
    offered_per_s: float | None
    replies_per_s: float | None
    server: ServerUsage
    host: HostUsage
    duration_s: float
    send_lag_ms_max: float | None
    reply_cache: ReplyCacheUsage = ReplyCacheUsage(None)
    ack_wire_ms: Latency | None = None  # the server's own, off the loopback wire (benchmarks/)
    # senders whose replies arrived in another order than their messages (None: not checked)
    out_of_order: int | None = None

    @property
    def clean(self) -> bool:
        """Nothing lost, nothing answered twice."""
        return self.counts.lost == 0 and self.counts.duplicated == 0

    def to_json(self) -> dict[str, Any]:
        """The `--json` object (plain types only)."""
        data = asdict(self)
        data["config"] = dict(self.config)
        data["reply_cache"]["hit_rate"] = self.reply_cache.hit_rate
        return data

    def rows(self) -> list[tuple[str, str]]:
        """(figure, value) pairs for a table, in reading order."""
        c, s, h = self.counts, self.server, self.host
        wire = (
            []
            if self.ack_wire_ms is None
            else [("ack ms on the wire p50 / p95 / p99 / max", self.ack_wire_ms.show())]
        )
        return [
            ("webhooks sent / acked 200", f"{c.sent} / {c.acked}"),
            ("rejected (non-200) / failed", f"{c.rejected} / {c.failed}"),
            ("ack ms p50 / p95 / p99 / max", self.ack_ms.show()),
            *wire,
            ("end-to-end ms p50 / p95 / p99 / max", self.e2e_ms.show()),
            ("offered webhooks/s", _num(self.offered_per_s)),
            ("replies/s", _num(self.replies_per_s)),
            ("server CPU ms per message", _num(s.cpu_ms_per_msg, 2)),
            ("server peak RSS MB", _num(s.peak_rss_mb)),
            ("answered / lost / duplicated", f"{c.answered} / {c.lost} / {c.duplicated}"),
            ("dead letters", _num(c.dead_letters, 0)),
            ("max send lag ms", _num(self.send_lag_ms_max)),
            ("reply cache hits / lookups (rate)", self.reply_cache.show()),
            ("CPU s: bench / fake LLM", f"{_num(h.bench_cpu_s)} / {_num(h.fake_llm_cpu_s)}"),
            ("wall time s", _num(self.duration_s)),
        ]


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """The raw record of a run, as the runner collected it (monotonic seconds)."""

    hooks: Sequence[str]  # wamid per webhook index
    acks: Sequence[Ack]
    replies: Mapping[str, Sequence[float]]  # callback data (inbound wamid) -> arrival times
    started: float
    finished: float
    cpu_s: float | None
    peak_rss: int | None
    dead_letters: int | None
    bench_cpu_s: float | None = None  # this process: load generator and fake Graph API
    fake_llm_cpu_s: float | None = None
    reply_cache: ReplyCacheUsage = ReplyCacheUsage(None)
    wire_acks_s: Sequence[float] | None = None  # the server's acks off the wire, if captured
    users: Sequence[int] | None = None  # the sender of each webhook, when the run chose them


def count(record: RunRecord) -> Counts:
    """Sent, acked, answered, lost (acked, never answered) and duplicated (answered twice+)."""
    acked = {record.hooks[a.index] for a in record.acks if a.ok}
    answered = {w for w in record.hooks if record.replies.get(w)}
    return Counts(
        sent=len(record.acks),
        acked=len(acked),
        rejected=sum(1 for a in record.acks if a.status is not None and not a.ok),
        failed=sum(1 for a in record.acks if a.status is None),
        answered=len(answered),
        lost=len(acked - answered),
        duplicated=sum(1 for w in record.hooks if len(record.replies.get(w, ())) > 1),
        replies=sum(len(v) for v in record.replies.values()),
        dead_letters=record.dead_letters,
    )


def _rates(record: RunRecord) -> tuple[float | None, float | None]:
    dues = [a.due for a in record.acks]
    firsts = [min(t) for t in record.replies.values() if t]
    offered = (len(dues) - 1) / (max(dues) - min(dues)) if len(dues) > 1 else None
    if not firsts or not dues or max(firsts) <= min(dues):
        return offered, None
    return offered, len(firsts) / (max(firsts) - min(dues))


def _handled(record: RunRecord) -> int:
    """Messages the server worked on: acknowledged or answered (a server that answers after
    the load generator gave up on the ack still spent the CPU on that message)."""
    acked = {record.hooks[a.index] for a in record.acks if a.ok}
    return len(acked | {w for w, times in record.replies.items() if times})


def summarize(config: Mapping[str, Any], record: RunRecord) -> BenchReport:
    """The report of one run."""
    counts = count(record)
    by_wamid = {record.hooks[a.index]: a for a in record.acks}
    e2e = [min(t) - by_wamid[w].due for w, t in record.replies.items() if t and w in by_wamid]
    offered, replies = _rates(record)
    cpu_per_msg = None
    handled = _handled(record)
    if record.cpu_s is not None and handled:
        cpu_per_msg = round(record.cpu_s * 1000 / handled, 3)
    lags = [a.started - a.due for a in record.acks]
    return BenchReport(
        config=config,
        counts=counts,
        ack_ms=latency_ms([a.latency_s for a in record.acks if a.ok]),
        e2e_ms=latency_ms(e2e),
        offered_per_s=None if offered is None else round(offered, 2),
        replies_per_s=None if replies is None else round(replies, 2),
        server=ServerUsage(
            cpu_ms_per_msg=cpu_per_msg,
            cpu_s=_round(record.cpu_s),
            peak_rss_mb=None if record.peak_rss is None else round(record.peak_rss / 2**20, 1),
        ),
        host=HostUsage(
            bench_cpu_s=_round(record.bench_cpu_s),
            fake_llm_cpu_s=_round(record.fake_llm_cpu_s),
            cpus=os.cpu_count(),
        ),
        duration_s=round(record.finished - record.started, 3),
        send_lag_ms_max=round(max(lags) * 1000, 2) if lags else None,
        reply_cache=record.reply_cache,
        ack_wire_ms=None if record.wire_acks_s is None else latency_ms(record.wire_acks_s),
        out_of_order=out_of_order(record),
    )


def out_of_order(record: RunRecord) -> int | None:
    """How many senders' first replies arrived in another order than their messages were sent
    (webhook index order); None when the run did not record the senders."""
    if record.users is None:
        return None
    firsts: dict[int, list[tuple[int, float]]] = {}
    for index, (wamid, user) in enumerate(zip(record.hooks, record.users, strict=True)):
        times = record.replies.get(wamid)
        if times:
            firsts.setdefault(user, []).append((index, min(times)))
    return sum(
        1
        for replies in firsts.values()
        if [i for i, _ in sorted(replies, key=lambda r: r[1])] != [i for i, _ in replies]
    )
