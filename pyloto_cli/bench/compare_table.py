"""The comparison's table: one row per figure, one column per system, then ratios to the first."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from rich.table import Table

from pyloto_cli.bench.report import BenchReport

Figure = tuple[str, Callable[[BenchReport], float | None]]
FIGURES: tuple[Figure, ...] = (
    ("ack ms p50", lambda r: r.ack_ms.p50),
    ("ack ms p99", lambda r: r.ack_ms.p99),
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
    if value is None or base is None or base == 0:
        return "-"
    quotient = value / base
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
