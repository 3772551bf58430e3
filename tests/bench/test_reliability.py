"""benchmarks/reliability.py at a test's sizes: real `pyloto serve` processes against the fakes,
faults injected, every acknowledged message accounted for, the row's figures filled in."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reliability import COLUMNS, SCENARIOS, Config, parse_args, run, smoke, table

pytestmark = pytest.mark.e2e


async def test_graph_errors_are_injected_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    row = await run(smoke(Config("graph-errors")), tmp_path)
    assert row.acked == 24
    assert row.graph_faults > 0  # 20 % of the sends, and of their retries
    assert (row.llm_faults, row.crashes, row.lost) == (0, 0, 0)
    assert row.llm_stages == 3
    assert row.llm_calls >= 3 * 24  # each message's three stages at least once
    assert row.recovery_s is None  # no timed fault to recover from


async def test_a_killed_serve_is_restarted_and_what_it_held_answered(tmp_path: Path) -> None:
    row = await run(smoke(Config("kill-serve")), tmp_path)
    assert (row.acked, row.crashes, row.lost, row.dead) == (24, 1, 0, 0)
    assert row.recovery_s is not None
    assert row.recovery_s < 2.0  # from the restarted serve's readiness
    rendered = table([row])
    assert rendered.splitlines()[0] == "| " + " | ".join(COLUMNS) + " |"
    assert rendered.splitlines()[2].startswith("| kill-serve | 24 at 30/s | ")


def test_the_command_line_gives_each_scenario_its_sizes() -> None:
    configs, as_json = parse_args(["--scenario", "all"])
    assert [c.scenario for c in configs] == list(SCENARIOS)
    sizes = {c.scenario: (c.messages, c.rate, c.outage) for c in configs}
    assert sizes["drain"] == (4000, 400.0, 0.0)
    assert sizes["llm-outage"] == (600, 10.0, 60.0)
    assert sizes["graph-outage"] == (600, 10.0, 30.0)
    [tiny], _ = parse_args(["--scenario", "sigterm", "--smoke"])
    assert (tiny.messages, tiny.settle_s) == (24, 60.0)
    [custom], as_json = parse_args(["--scenario", "graph-outage", "--outage", "5", "--json"])
    assert (custom.outage, as_json) == (5.0, True)
