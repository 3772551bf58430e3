"""benchmarks/compare.py: the reference bot, this checkout's pyloto and a baseline checkout's
pyloto, each a real process answering the same signed webhooks over loopback."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import compare
from benchmarks.compare_table import ratio_pairs
from benchmarks.systems import Baseline, source_root
from benchmarks.wire import may_capture

FAST = ("-n", "10", "--rate", "20", "--llm-latency-ms", "20", "--llm-jitter-ms", "5")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    compare.main([*args, "--no-pin", "--json"])
    reports: dict[str, Any] = json.loads(capsys.readouterr().out)
    return reports


def files_of(tree: Path) -> set[Path]:
    return {path.relative_to(tree) for path in tree.rglob("*")}


def copy_of_this_checkout(tmp_path: Path) -> Path:
    """A checkout holding this checkout's pyloto_cli/, without bytecode or a venv."""
    tree = tmp_path / "before"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(source_root() / "pyloto_cli", tree / "pyloto_cli", ignore=skip)
    return tree


def test_the_inline_bot_and_pyloto_answer_the_same_webhooks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The inline bot and pyloto each answer all 10 webhooks once, with all three LLM stages
    per message; with --keep, each system's directory (its server log) stays under
    --data-dir; with --wire as root, each server's acks are also taken off the wire."""
    reports = run(
        capsys,
        *("--systems", "inline,pyloto", *FAST),
        *("--keep", "--data-dir", str(tmp_path), "--wire"),
    )
    assert list(reports) == ["inline", "pyloto"]
    for kind, report in reports.items():
        counts = report["counts"]
        assert (counts["acked"], counts["answered"], counts["replies"]) == (10, 10, 10), kind
        assert report["config"]["system"] == kind
        assert report["config"]["llm_calls"] == {"event": 10, "text": 10, "message_type": 10}
        assert report["server"]["cpu_ms_per_msg"] > 0
    # the inline bot answers the webhook only after its three LLM calls (>= 15 ms each)
    assert reports["inline"]["ack_ms"]["p50"] >= 45
    # as root (CI) each server's acks are also taken off the wire; the inline bot holds each
    # webhook for its three calls there too, and no wire ack is longer than the client's
    for kind, report in reports.items():
        wire = report["ack_wire_ms"]
        if not may_capture():
            assert wire is None, kind
            continue
        assert wire["count"] == 10, kind
        assert wire["max"] <= report["ack_ms"]["max"], kind
    if may_capture():
        assert reports["inline"]["ack_wire_ms"]["p50"] >= 45
    pyloto = reports["pyloto"]["config"]
    assert (pyloto["send_rate_per_number"], pyloto["reply_cache"]) == ("1000", "false")
    assert pyloto["coalesce_window_seconds"] == "0"
    for kind, report in reports.items():
        kept = Path(report["config"]["workdir"])
        assert kept.parent == tmp_path
        assert kept.name.startswith(f"pyloto-compare-{kind}-")
        log = "serve.log" if kind == "pyloto" else f"{kind}.log"
        assert (kept / log).stat().st_size > 0


def test_a_baseline_checkout_runs_its_own_code_and_is_left_as_it_was(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`--baseline DIR`: DIR's pyloto serve answers every webhook, run from DIR's own
    pyloto_cli (a copy here); DIR gets no file (no data, no bytecode); the table puts pyloto
    over the baseline."""
    tree = copy_of_this_checkout(tmp_path)
    before = files_of(tree)
    baseline = Baseline.at(tree)
    assert baseline.imported().is_relative_to(tree)
    reports = run(capsys, "--baseline", str(tree), "--systems", "baseline,pyloto", *FAST)
    assert list(reports) == ["baseline", "pyloto"]
    for kind, report in reports.items():
        counts = report["counts"]
        assert (counts["acked"], counts["answered"], counts["duplicated"]) == (10, 10, 0), kind
    described = reports["baseline"]["config"]["baseline"]
    assert described["root"] == str(tree)
    assert reports["baseline"]["config"]["send_rate_per_number"] == "1000"
    assert files_of(tree) == before


def test_the_table_gives_pyloto_over_the_baseline_and_over_the_first() -> None:
    """With inline first and both pylotos, the ratios are each over inline, then pyloto over
    baseline."""
    assert ratio_pairs(["inline", "baseline", "pyloto"]) == [
        ("baseline", "inline"),
        ("pyloto", "inline"),
        ("pyloto", "baseline"),
    ]
    assert ratio_pairs(["baseline", "pyloto"]) == [("pyloto", "baseline")]


def test_a_baseline_whose_python_imports_another_pyloto_is_refused(tmp_path: Path) -> None:
    """A venv whose python ignores PYTHONPATH would run some other pyloto_cli (an editable
    install pointing elsewhere): refused before anything starts, naming both."""
    tree = copy_of_this_checkout(tmp_path)
    python = tree / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec env -u PYTHONPATH {sys.executable} "$@"\n')
    python.chmod(0o755)
    baseline = Baseline.at(tree)
    assert baseline.python == python
    problem = baseline.problem()
    assert problem is not None
    assert f"not from {tree}" in problem
    with pytest.raises(SystemExit, match="not from"):
        compare.main(["--baseline", str(tree), "--systems", "baseline", "-n", "1"])


def test_refuses_an_unknown_system_and_a_baseline_without_a_checkout(tmp_path: Path) -> None:
    """A typo in --systems, a baseline system without --baseline and a --baseline that is not
    a checkout are usage errors before anything starts."""
    with pytest.raises(SystemExit, match="choose from inline, background, baseline, pyloto"):
        compare.main(["--systems", "inline,flask", "-n", "1"])
    with pytest.raises(SystemExit, match="needs --baseline"):
        compare.main(["--systems", "baseline,pyloto", "-n", "1"])
    with pytest.raises(SystemExit, match="no pyloto_cli"):
        compare.main(["--baseline", str(tmp_path), "-n", "1"])
