"""What the README and the docs say about the commands and settings matches the code."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from pyloto_cli.cli import app
from pyloto_cli.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _commands(group: object, prefix: str = "") -> dict[str, object]:
    """Every leaf command of the app by its full name (`queue dead-letter list`)."""
    found: dict[str, object] = {}
    for name, command in getattr(group, "commands", {}).items():
        full = f"{prefix} {name}".strip()
        if getattr(command, "commands", None):
            found.update(_commands(command, full))
        else:
            found[full] = command
    return found


def test_every_command_but_serve_and_worker_takes_json() -> None:
    commands = _commands(typer.main.get_command(app))
    without = {
        name
        for name, command in commands.items()
        if not any("--json" in p.opts for p in command.params)  # type: ignore[attr-defined]
    }
    assert without == {"serve", "worker"}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "Every command but `serve` and `worker` takes `--json`" in readme


def test_the_concurrency_default_the_docs_give_is_the_code_s() -> None:
    default = Settings.model_fields["concurrency"].default
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"| `PYLOTO_CONCURRENCY` | `{default}` |" in readme
    bench = (ROOT / "docs" / "bench.md").read_text(encoding="utf-8")
    said = [int(n) for n in re.findall(r"default (\d+)\)", bench)]
    assert said == [default]
