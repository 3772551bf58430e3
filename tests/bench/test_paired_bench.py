"""benchmarks/paired.py: each tree's own code runs, and the ratio is B over A."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.paired import Pair, bench_command, figures, run_pair, summary


def fake_tree(root: Path, cpu_ms: float, lost: int = 0) -> Path:
    """A tree whose `python -m pyloto_cli ...` prints a bench result with `cpu_ms`."""
    package = root / "pyloto_cli"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    result = {"server": {"cpu_ms_per_msg": cpu_ms}, "counts": {"lost": lost, "duplicated": 0}}
    (package / "__main__.py").write_text(f"print({json.dumps(json.dumps(result))})\n")
    return root


async def test_each_tree_runs_its_own_code(tmp_path: Path) -> None:
    a = fake_tree(tmp_path / "a", 5.0)
    b = fake_tree(tmp_path / "b", 4.5, lost=1)

    pair = await run_pair(a, b, bench_command(10, 5.0), b_first=True)

    assert (pair.a_ms, pair.b_ms, pair.faults) == (5.0, 4.5, 1)
    assert pair.ratio == pytest.approx(0.9)


async def test_a_failing_bench_is_an_error_not_a_figure(tmp_path: Path) -> None:
    a = fake_tree(tmp_path / "a", 5.0)
    broken = tmp_path / "b"
    (broken / "pyloto_cli").mkdir(parents=True)
    (broken / "pyloto_cli" / "__init__.py").write_text("")
    (broken / "pyloto_cli" / "__main__.py").write_text("raise SystemExit(3)\n")

    with pytest.raises(RuntimeError, match="exited with 3"):
        await run_pair(a, broken, bench_command(10, 5.0), b_first=False)


def test_the_command_is_pyloto_alone_at_the_given_load() -> None:
    command = bench_command(1000, 50.0)
    assert command[:4] == ["-m", "pyloto_cli", "bench", "--json"]
    assert command[command.index("-n") + 1] == "1000"
    assert command[command.index("--rate") + 1] == "50.0"


def test_figures_read_cpu_and_faults_from_the_bench_json() -> None:
    run = {"server": {"cpu_ms_per_msg": 4.2}, "counts": {"lost": 2, "duplicated": 1}}
    assert figures("progress\n" + json.dumps(run)) == (4.2, 3)


def test_summary_is_the_median_ratio_and_its_range() -> None:
    pairs = [Pair(5.0, 4.5, 0), Pair(6.0, 6.0, 0), Pair(4.0, 3.0, 0)]
    assert summary(pairs) == "B/A median 0.900 (pairs 0.750 to 1.000)"
