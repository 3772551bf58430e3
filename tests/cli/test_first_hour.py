"""What a new user runs into in the first hour: each mistake is one line naming what to fix,
exit 2, and nothing written or started on the way."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pyloto_cli.cli import app
from pyloto_cli.firstrun import EXAMPLE_FILE
from tests.conftest import FIXTURES


def _one_line_error(result: object, *said: str) -> None:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert result.exit_code == 2, stderr  # type: ignore[attr-defined]
    assert stderr.startswith("error: ")
    assert stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    for word in said:
        assert word in stderr


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"PYLOTO_LOG_LEVEL": "loud"}, ["PYLOTO_LOG_LEVEL", "'loud'", "DEBUG, INFO"]),
        ({"PYLOTO_LOG_FORMAT": "xml"}, ["PYLOTO_LOG_FORMAT", "console, json"]),
        ({"QUEUE_BACKEND": "redis", "REDIS_URL": "localhost:6379"}, ["REDIS_URL", "redis://"]),
        ({"REDIS_URL": "redis://127.0.0.1:port/0"}, ["REDIS_URL"]),
        ({"PORT": "99999"}, ["PORT", "65535"]),
    ],
)
def test_a_setting_that_cannot_work_is_one_line_naming_it(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], said: list[str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _one_line_error(runner.invoke(app, ["queue", "stats", "--json"]), *said)


def test_a_known_level_and_format_are_taken_in_any_case(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYLOTO_LOG_LEVEL", "debug")
    monkeypatch.setenv("PYLOTO_LOG_FORMAT", "JSON")
    result = runner.invoke(app, ["queue", "stats", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["backend"] == "sqlite"


_WITHOUT_EXTRAS = (
    "import sys; sys.modules.update(dict.fromkeys(['redis', 'google'], None)); "
    "from pyloto_cli.cli import main; sys.argv = ['pyloto', *sys.argv[1:]]; main()"
)


@pytest.mark.parametrize(
    ("env", "command", "extra"),
    [
        (
            {"QUEUE_BACKEND": "redis", "REDIS_URL": "redis://127.0.0.1:1/0"},
            ["queue", "stats"],
            "redis",
        ),
        ({"QUEUE_BACKEND": "cloud_tasks"}, ["queue", "stats"], "gcp"),
        ({"SESSION_STORE_BACKEND": "firestore"}, ["worker"], "gcp"),
        ({"DEDUPE_BACKEND": "redis", "REDIS_URL": "redis://127.0.0.1:1/0"}, ["worker"], "redis"),
    ],
)
def test_a_backend_without_its_extra_says_what_to_install(
    tmp_path: Path, env: dict[str, str], command: list[str], extra: str
) -> None:
    """The SDKs are installed in the test venv: they are made unimportable in a subprocess."""
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS, *command],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"pip install 'pyloto[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr
    # `worker` logs its runtime closing at INFO; the error itself is one line
    assert result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr
    assert result.stderr.count("error") == 1, result.stderr


def test_serve_refuses_a_port_out_of_range(runner: CliRunner) -> None:
    result = runner.invoke(app, ["serve", "--port", "99999"])
    assert result.exit_code == 2
    assert "--port" in result.output


def test_a_second_serve_on_a_taken_port_writes_nothing(runner: CliRunner, cli_env: Path) -> None:
    """The first server's curl line points at the example file: it must stay as it is."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--port", str(port)])
    _one_line_error(result, f"port {port} is in use; choose another with --port")
    assert not (cli_env / EXAMPLE_FILE).exists()
    assert not cli_env.exists()


def test_a_data_dir_that_is_a_file_names_the_setting(runner: CliRunner, cli_env: Path) -> None:
    cli_env.write_text("not a directory")
    _one_line_error(runner.invoke(app, ["queue", "stats"]), f"PYLOTO_DATA_DIR={cli_env}")


def test_a_data_dir_under_a_file_stops_serve_before_it_starts(
    runner: CliRunner, cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first-run files are written in the data dir: that failure is the same one line."""
    cli_env.write_text("not a directory")
    monkeypatch.setenv("PYLOTO_DATA_DIR", str(cli_env / "inner"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = runner.invoke(app, ["serve", "--port", str(port)])
    _one_line_error(result, "PYLOTO_DATA_DIR=", "Not a directory")


def test_a_data_dir_that_cannot_be_created_names_the_setting(
    runner: CliRunner, cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests run as root here, where a read-only parent does not stop mkdir: the refusal is
    made by hand."""

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    _one_line_error(runner.invoke(app, ["queue", "stats"]), "PYLOTO_DATA_DIR=", "Permission denied")


def test_queue_commands_say_which_data_dir_and_warn_when_it_is_new(
    runner: CliRunner, cli_env: Path
) -> None:
    first = runner.invoke(app, ["queue", "stats", "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["depth"] == 0  # stdout stays one JSON object
    assert "warning: no queue in" in first.stderr
    assert str(cli_env.resolve()) in first.stderr.replace("\n", "")
    again = runner.invoke(app, ["queue", "stats", "--json"])
    assert again.exit_code == 0, again.output
    assert "warning" not in again.stderr
    assert f"data dir: {cli_env.resolve()}" in again.stderr.replace("\n", "")


def test_enqueue_on_the_memory_queue_is_refused(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It would report "1 enqueued" and lose the task when the command exits."""
    monkeypatch.setenv("QUEUE_BACKEND", "memory")
    webhook = next((FIXTURES / "webhooks").glob("*.json"))
    result = runner.invoke(app, ["enqueue", str(webhook)])
    _one_line_error(result, "QUEUE_BACKEND=memory")
    assert "enqueued" not in result.stdout


def test_replay_checks_its_record_path_before_replaying(runner: CliRunner, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    target = blocker / "transcript.jsonl"
    conversation = FIXTURES / "conversations" / "pricing"
    result = runner.invoke(app, ["replay", str(conversation), "--record", str(target)])
    _one_line_error(result, f"--record {target}")
    assert result.stdout == ""  # refused before any item was replayed
