"""The comparison's table: one row per figure, one column per system, then ratios to the first."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence

from rich.table import Table

from pyloto_cli.bench.report import BenchReport

Figure = tuple[str, Callable[[BenchReport], float | None]]
FIGURES: tuple[Figure, ...] = (
    ("ack ms p50", lambda r: r.ack_ms.p50),
    ("ack ms p99", lambda r: r.ack_ms.p99),
    ("ack ms p99, wire", lambda r: r.ack_wire_ms.p99 if r.ack_wire_ms else None),
    ("reply ms p50", lambda r: r.e2e_ms.p50),
    ("reply ms p99", lambda r: r.e2e_ms.p99),
    ("replies/s", lambda r: r.replies_per_s),
    ("server CPU ms/msg", lambda r: r.server.cpu_ms_per_msg),
    ("server peak RSS MB", lambda r: r.server.peak_rss_mb),
)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def ratio(value: float | None, base: float | None) -> str:
    """`value / base` as `0.55x` (three decimals under 0.1), `-` when either is missing."""
    quotient = _quotient(value, base)
    return "-" if quotient is None else _times(quotient)


def _times(quotient: float) -> str:
    return f"{quotient:.3f}x" if quotient < 0.1 else f"{quotient:.2f}x"


def _title(first: BenchReport) -> str:
    cfg = first.config
    load = f"{cfg['rate']:g}/s open loop"
    if cfg["mode"] == "closed":
        load = f"closed loop, {cfg['concurrency']} in flight"
    pinned = "pinned to one CPU" if cfg.get("pinned") else "not pinned"
    return (
        f"{cfg['messages']} webhooks each, {load}, LLM {cfg['llm_latency_ms']:g}"
        f" ± {cfg['llm_jitter_ms']:g} ms per call; server {pinned}"
    )


def _caption(reports: Mapping[str, BenchReport], base: str) -> str:
    caption = f"reply ms: from the webhook's due time to the Graph send; ratios: system / {base}"
    pyloto = reports.get("pyloto")
    if pyloto is not None and pyloto.config.get("send_rate_per_number"):
        caption += (
            f"; pyloto's send limit {pyloto.config['send_rate_per_number']}/s per number"
            " (the bots have none)"
        )
    return caption


def comparison_table(reports: Mapping[str, BenchReport]) -> Table:
    """One row per figure, one column per system, then each system's ratio to the first."""
    names = list(reports)
    base = names[0]
    table = Table(
        title=_title(reports[base]),
        title_justify="left",
        caption=_caption(reports, base),
        caption_justify="left",
    )
    table.add_column("figure")
    for name in names:
        table.add_column(name, justify="right")
    for name in names[1:]:
        table.add_column(f"{name} / {base}", justify="right")
    for label, get in FIGURES:
        values = [get(reports[n]) for n in names]
        ratios = [ratio(v, values[0]) for v in values[1:]]
        table.add_row(label, *(_num(v) for v in values), *ratios)
    counts = [reports[n].counts for n in names]
    blanks = [""] * (len(names) - 1)
    table.add_row("acked / sent", *(f"{c.acked} / {c.sent}" for c in counts), *blanks)
    table.add_row(
        "answered/lost/doubled",
        *(f"{c.answered} / {c.lost} / {c.duplicated}" for c in counts),
        *blanks,
    )
    return table


def rounds_table(rounds: Sequence[Mapping[str, BenchReport]]) -> Table:
    """Several rounds of the same comparison: each figure's median over the rounds per system,
    the ratio of the medians to the first system, and the per-round ratios (min to max).

    One run of a system that is past its capacity (the inline bot at 100/s) moves a lot from
    run to run; the median of interleaved rounds is the figure to compare.
    """
    names = list(rounds[0])
    base = names[0]
    table = Table(
        title=f"{len(rounds)} rounds: {_title(rounds[0][base])}",
        title_justify="left",
        caption=f"medians over the rounds; ratios: system / {base} (median, then each round's"
        " min to max)",
        caption_justify="left",
    )
    table.add_column("figure")
    for name in names:
        table.add_column(f"{name} median", justify="right")
    for name in names[1:]:
        table.add_column(f"{name} / {base}", justify="right")
        table.add_column("rounds", justify="right")
    for label, get in FIGURES:
        per_round = [[get(r[n]) for r in rounds] for n in names]
        medians = [_median(values) for values in per_round]
        cells: list[str] = []
        for values, median in zip(per_round[1:], medians[1:], strict=True):
            spread = [_quotient(v, b) for v, b in zip(values, per_round[0], strict=True)]
            known = [q for q in spread if q is not None]
            cells.append(ratio(median, medians[0]))
            cells.append(f"{_times(min(known))} to {_times(max(known))}" if known else "-")
        table.add_row(label, *(_num(m) for m in medians), *cells)
    lost = [sum(r[n].counts.lost + r[n].counts.duplicated for r in rounds) for n in names]
    table.add_row(
        "lost + doubled, all rounds", *(str(v) for v in lost), *[""] * (2 * len(names) - 2)
    )
    return table


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _quotient(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base
