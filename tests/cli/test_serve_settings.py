"""`pyloto serve` and `pyloto worker` with a setting they cannot use: one red line, exit 2,
nothing started (no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pyloto_cli.cli import app
from pyloto_cli.settings import Settings


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("PYLOTO_WORKERS", "abc", "PYLOTO_WORKERS"),
        ("PYLOTO_CONCURRENCY", "0", "PYLOTO_CONCURRENCY"),
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


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PYLOTO_WORKER_THREAD", "maybe"),
        ("PYLOTO_WORKER_NICE", "abc"),
        ("PYLOTO_GC_THRESHOLDS", "100,10,1000"),
    ],
)
def test_a_removed_setting_left_in_the_environment_does_not_stop_start_up(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """The README's "Removed settings": ignored, whatever the value."""
    monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    assert not hasattr(settings, name.removeprefix("PYLOTO_").lower())


@pytest.mark.parametrize("queue", ["sqlite", "memory"])
def test_serve_on_cloud_run_refuses_a_queue_on_the_instance(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, queue: str
) -> None:
    """One red line naming the setting, exit 2, and nothing written (no local secrets)."""
    monkeypatch.setenv("K_SERVICE", "pyloto")
    monkeypatch.setenv("QUEUE_BACKEND", queue)
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"QUEUE_BACKEND={queue}" in result.stderr
    assert not (tmp_path / "data").exists()
