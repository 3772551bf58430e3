"""`pyloto enqueue` (+ `queue drain`/`stats`) on the default SQLite queue, through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from pyloto_cli.cli import app
from tests.conftest import FIXTURES, stamped_copy

PRICING = FIXTURES / "conversations" / "pricing"


def invoke_json(runner: CliRunner, *args: str, code: int = 0, **kwargs: Any) -> Any:
    result = runner.invoke(app, [*args, "--json"], **kwargs)
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def test_enqueue_then_drain_round_trip_on_sqlite(
    runner: CliRunner, cli_env: Path, tmp_path: Path
) -> None:
    """A conversation directory is stored (its redelivered wamid once), then drained to empty."""
    report = invoke_json(runner, "enqueue", str(stamped_copy(PRICING, tmp_path / "inbox")))
    assert report == {"files": 8, "enqueued": 7, "duplicates": 1, "rejected": []}
    assert (cli_env / "queue.db").exists()

    stats = invoke_json(runner, "queue", "stats")
    assert stats["backend"] == "sqlite"
    assert (stats["depth"], stats["ready"], stats["dead_lettered"]) == (7, 7, 0)

    drained = invoke_json(runner, "queue", "drain")
    assert (drained["done"], drained["skipped"], drained["dead_lettered"]) == (7, 0, 0)
    assert drained["remaining"]["depth"] == 0
    assert invoke_json(runner, "queue", "stats")["depth"] == 0


def test_redelivered_webhooks_after_a_drain_are_not_answered_twice(runner: CliRunner) -> None:
    """Enqueued again after processing, the same wamids are skipped by the deduper."""
    invoke_json(runner, "enqueue", str(PRICING))
    invoke_json(runner, "queue", "drain")
    again = invoke_json(runner, "enqueue", str(PRICING / "001.json"))
    assert again["enqueued"] == 1
    drained = invoke_json(runner, "queue", "drain")
    assert (drained["done"], drained["skipped"]) == (0, 1)


def test_bad_files_are_rejected_with_their_reason_and_exit_1(
    runner: CliRunner, tmp_path: Path
) -> None:
    """Not JSON and not a webhook are rejected by name; the good file is still enqueued."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(FIXTURES / "webhooks" / "text.json", inbox / "a_good.json")
    (inbox / "b_not_json.json").write_text("{nope", encoding="utf-8")
    (inbox / "c_not_webhook.json").write_text('{"entry": "x"}', encoding="utf-8")
    (inbox / "notes.txt").write_text("ignored: not .json", encoding="utf-8")

    report = invoke_json(runner, "enqueue", str(inbox), code=1)
    assert report["files"] == 3
    assert report["enqueued"] == 1
    reasons = {r["file"]: r["reason"] for r in report["rejected"]}
    assert set(reasons) == {"inbox/b_not_json.json", "inbox/c_not_webhook.json"}
    assert reasons["inbox/b_not_json.json"].startswith("not JSON")
    assert "entry" in reasons["inbox/c_not_webhook.json"]


def test_rejected_file_is_named_in_the_human_output(runner: CliRunner, tmp_path: Path) -> None:
    """Without --json the rejected file and its reason are printed, and the exit code is 1."""
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]", encoding="utf-8")
    result = runner.invoke(app, ["enqueue", str(bad)])
    assert result.exit_code == 1
    assert "rejected bad.json: payload must be a JSON object" in result.stdout
    assert "0 enqueued, 0 duplicate, 1 rejected" in result.stdout


def test_stdin_body_is_enqueued(runner: CliRunner) -> None:
    """`-` reads one webhook body from standard input."""
    body = (FIXTURES / "webhooks" / "batch_multi.json").read_bytes()
    report = invoke_json(runner, "enqueue", "-", input=body)
    assert report == {"files": 1, "enqueued": 8, "duplicates": 0, "rejected": []}


def test_missing_path_is_a_usage_error(runner: CliRunner) -> None:
    """A path that does not exist exits 2 with one error line and enqueues nothing."""
    result = runner.invoke(app, ["enqueue", "no/such/file.json"])
    assert result.exit_code == 2
    assert "no such file or directory: no/such/file.json" in result.stderr
