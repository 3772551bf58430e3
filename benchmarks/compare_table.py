"""The comparison's output: one row per figure, one column per system, then the ratios; and the
same figures as plain lines, one per system, for notes and logs.

Ratios are of each system to the first, and of `pyloto` to `baseline` when both ran (the code
before and after a change, side by side).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence

from rich.table import Table

from pyloto_cli.bench.report import BenchReport

Figure = tuple[str, Callable[[BenchReport], float | None]]


def llm_calls_per_answer(report: BenchReport) -> float | None:
    """Chat completions the system made per webhook it answered (3 when every stage ran)."""
    calls = report.config.get("llm_calls")
    answered = report.counts.answered
    if not isinstance(calls, Mapping) or not answered:
        return None
    return sum(int(v) for v in calls.values()) / answered


FIGURES: tuple[Figure, ...] = (
    ("ack ms p50", lambda r: r.ack_ms.p50),
    ("ack ms p99", lambda r: r.ack_ms.p99),
    ("ack ms p99, wire", lambda r: r.ack_wire_ms.p99 if r.ack_wire_ms else None),
    ("reply ms p50", lambda r: r.e2e_ms.p50),
    ("reply ms p99", lambda r: r.e2e_ms.p99),
    ("replies/s", lambda r: r.replies_per_s),
    ("server CPU ms/msg", lambda r: r.server.cpu_ms_per_msg),
    ("server peak RSS MB", lambda r: r.server.peak_rss_mb),
    ("LLM calls per answer", llm_calls_per_answer),
)


def ratio_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """(system, base) for every ratio shown: each system over the first, then pyloto over
    baseline when both ran and baseline is not already the first."""
    pairs = [(name, names[0]) for name in names[1:]]
    if "pyloto" in names and "baseline" in names and names[0] != "baseline":
        pairs.append(("pyloto", "baseline"))
    return pairs


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


def _caption(reports: Mapping[str, BenchReport]) -> str:
    caption = "reply ms: from the webhook's due time to the Graph send; ratios: system / base"
    pyloto = reports.get("pyloto") or reports.get("baseline")
    if pyloto is not None and pyloto.config.get("send_rate_per_number"):
        caption += (
            f"; pyloto's send limit {pyloto.config['send_rate_per_number']}/s per number"
            " (the bots have none)"
        )
    return caption


def comparison_table(reports: Mapping[str, BenchReport]) -> Table:
    """One row per figure, one column per system, then the ratios of `ratio_pairs`."""
    names = list(reports)
    pairs = ratio_pairs(names)
    table = Table(
        title=_title(reports[names[0]]),
        title_justify="left",
        caption=_caption(reports),
        caption_justify="left",
    )
    table.add_column("figure")
    for name in names:
        table.add_column(name, justify="right")
    for name, base in pairs:
        table.add_column(f"{name} / {base}", justify="right")
    for label, get in FIGURES:
        values = {n: get(reports[n]) for n in names}
        ratios = [ratio(values[name], values[base]) for name, base in pairs]
        table.add_row(label, *(_num(values[n]) for n in names), *ratios)
    add_count_rows(table, [reports[n] for n in names], len(pairs))
    return table


def add_count_rows(table: Table, reports: Sequence[BenchReport], ratio_columns: int) -> None:
    """The acked / sent and answered / lost / doubled rows, blank under the ratio columns."""
    counts = [report.counts for report in reports]
    blanks = [""] * ratio_columns
    table.add_row("acked / sent", *(f"{c.acked} / {c.sent}" for c in counts), *blanks)
    table.add_row(
        "answered/lost/doubled",
        *(f"{c.answered} / {c.lost} / {c.duplicated}" for c in counts),
        *blanks,
    )


def summary_lines(reports: Mapping[str, BenchReport]) -> list[str]:
    """The figures as plain text: one line per system, then one per ratio."""
    lines = []
    for name, report in reports.items():
        c = report.counts
        lines.append(
            f"{name}: ack p99 {_num(report.ack_ms.p99)} ms"
            + (f" (wire {_num(report.ack_wire_ms.p99)} ms)" if report.ack_wire_ms else "")
            + f", reply p50 {_num(report.e2e_ms.p50)} ms"
            f", replies/s {_num(report.replies_per_s)}"
            f", CPU {_num(report.server.cpu_ms_per_msg)} ms/msg"
            f", peak RSS {_num(report.server.peak_rss_mb)} MB"
            f", LLM calls/answer {_num(llm_calls_per_answer(report))}"
            f"; sent {c.sent}, acked {c.acked}, answered {c.answered}, lost {c.lost},"
            f" doubled {c.duplicated}"
        )
    for name, base in ratio_pairs(list(reports)):
        a, b = reports[name], reports[base]
        lines.append(
            f"{name} / {base}: CPU per message"
            f" {ratio(a.server.cpu_ms_per_msg, b.server.cpu_ms_per_msg)},"
            f" replies/s {ratio(a.replies_per_s, b.replies_per_s)},"
            f" ack p99 {ratio(a.ack_ms.p99, b.ack_ms.p99)},"
            f" reply p50 {ratio(a.e2e_ms.p50, b.e2e_ms.p50)}"
        )
    return lines


def rounds_table(rounds: Sequence[Mapping[str, BenchReport]]) -> Table:
    """Several rounds of the same comparison: each figure's median over the rounds per system,
    the ratio of the medians for each pair of `ratio_pairs`, and the per-round ratios (min to
    max).

    One run of a system that is past its capacity (the inline bot at 100/s) moves a lot from
    run to run; the median of interleaved rounds is the figure to compare.
    """
    names = list(rounds[0])
    pairs = ratio_pairs(names)
    table = Table(
        title=f"{len(rounds)} rounds: {_title(rounds[0][names[0]])}",
        title_justify="left",
        caption="medians over the rounds; ratios: system / base (median, then each round's"
        " min to max)",
        caption_justify="left",
    )
    table.add_column("figure")
    for name in names:
        table.add_column(f"{name} median", justify="right")
    for name, base in pairs:
        table.add_column(f"{name} / {base}", justify="right")
        table.add_column("rounds", justify="right")
    for label, get in FIGURES:
        per_round = {n: [get(r[n]) for r in rounds] for n in names}
        medians = {n: _median(values) for n, values in per_round.items()}
        cells: list[str] = []
        for name, base in pairs:
            spread = [
                _quotient(v, b) for v, b in zip(per_round[name], per_round[base], strict=True)
            ]
            known = [q for q in spread if q is not None]
            cells.append(ratio(medians[name], medians[base]))
            cells.append(f"{_times(min(known))} to {_times(max(known))}" if known else "-")
        table.add_row(label, *(_num(medians[n]) for n in names), *cells)
    lost = [sum(r[n].counts.lost + r[n].counts.duplicated for r in rounds) for n in names]
    table.add_row("lost + doubled, all rounds", *(str(v) for v in lost), *[""] * (2 * len(pairs)))
    return table


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _quotient(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base
