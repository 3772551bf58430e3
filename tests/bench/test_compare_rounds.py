"""The comparison's rounds table: medians over rounds, ratios of medians, per-round spread."""

from __future__ import annotations

from rich.console import Console

from benchmarks.compare_table import rounds_table
from pyloto_cli.bench.load import Ack
from pyloto_cli.bench.report import BenchReport, RunRecord, summarize

CONFIG = {"messages": 4, "rate": 100.0, "mode": "open", "concurrency": None}
CONFIG |= {"llm_latency_ms": 500.0, "llm_jitter_ms": 0.0, "pinned": True}


def report(cpu_s: float, *, lost: int = 0, wire: list[float] | None = None) -> BenchReport:
    """Four webhooks acked, `4 - lost` answered once, `cpu_s` of server CPU, and the acks
    off the wire if `wire`."""
    hooks = [f"wamid.{i}" for i in range(4)]
    acks = [Ack(i, i * 0.01, i * 0.01, i * 0.01 + 0.002, 200) for i in range(4)]
    replies = {w: [1.0 + i * 0.01] for i, w in enumerate(hooks[lost:])}
    record = RunRecord(hooks, acks, replies, 0.0, 2.0, cpu_s, None, None, wire_acks_s=wire)
    return summarize(CONFIG, record)


def rendered(rounds: list[dict[str, BenchReport]]) -> list[str]:
    console = Console(width=200, record=True)
    console.print(rounds_table(rounds))
    return console.export_text().splitlines()


def row(lines: list[str], label: str) -> list[str]:
    line = next(line for line in lines if line.strip(" │┃").startswith(label))
    return [cell.strip() for cell in line.split("│")[1:-1]]


def test_cpu_is_the_median_of_the_rounds_and_the_ratio_is_of_the_medians() -> None:
    # inline 8, 12, 16 ms/msg (median 12); pyloto 6, 5, 7 (median 6): 0.50x, rounds 0.42 to 0.75
    rounds = [
        {"inline": report(0.032), "pyloto": report(0.024)},
        {"inline": report(0.048), "pyloto": report(0.020)},
        {"inline": report(0.064), "pyloto": report(0.028)},
    ]
    cells = row(rendered(rounds), "server CPU ms/msg")
    assert cells[1:] == ["12.0", "6.0", "0.50x", "0.42x to 0.75x"]


def test_losses_of_every_round_are_added_up() -> None:
    rounds = [
        {"inline": report(0.04), "pyloto": report(0.02, lost=1)},
        {"inline": report(0.04, lost=2), "pyloto": report(0.02)},
    ]
    assert row(rendered(rounds), "lost + doubled")[1:3] == ["2", "1"]


def test_the_wire_row_shows_the_servers_own_acks_where_they_were_captured() -> None:
    """pyloto's acks captured off the wire (p99 1.5 ms), the inline bot's not: `-` for it and
    for the ratio; the report's own rows name the wire figure only when it is there."""
    wire = [0.0005, 0.0007, 0.0009, 0.0015]
    rounds = [{"inline": report(0.04), "pyloto": report(0.02, wire=wire)}]
    cells = row(rendered(rounds), "ack ms p99, wire")
    assert cells[1:4] == ["-", "1.5", "-"]
    assert ("ack ms on the wire p50 / p95 / p99 / max", "0.7 / 1.5 / 1.5 / 1.5") in rounds[0][
        "pyloto"
    ].rows()
    assert not [r for r in rounds[0]["inline"].rows() if "wire" in r[0]]
