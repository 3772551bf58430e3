"""`pyloto serve` and `pyloto worker` with a setting they cannot use: one red line, exit 2,
nothing started (no traceback)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pyloto_cli.cli import app


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("PYLOTO_WORKER_NICE", "abc", "PYLOTO_WORKER_NICE"),
        ("PYLOTO_GC_THRESHOLDS", "[0, 10, 10]", "PYLOTO_GC_THRESHOLDS"),
        ("PYLOTO_GC_THRESHOLDS", "100,10,1000", "gc_thresholds"),
    ],
)
def test_a_bad_setting_is_one_clear_error(
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    name: str,
    value: str,
    said: str,
) -> None:
    monkeypatch.setenv(name, value)
    result = runner.invoke(app, [command])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert said in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
