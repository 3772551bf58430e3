"""Settings the README lists as removed are read by nothing, and one left set breaks nothing.

A deployment upgraded in place keeps its old environment and `.env`: start-up must not fail
on a variable pyloto stopped reading.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pyloto_cli.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def removed_settings() -> list[str]:
    """The names in the first column of the README's "Removed settings" table."""
    section = README.read_text(encoding="utf-8").split("## Removed settings", 1)[1]
    section = section.split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Z0-9_]+)` \|", section, flags=re.MULTILINE)


def read_names() -> set[str]:
    """Every environment name some settings field reads."""
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        choices = getattr(alias, "choices", [alias])
        names.update(choice for choice in choices if isinstance(choice, str))
    return names


def test_the_readme_lists_removed_settings() -> None:
    assert "PYLOTO_HTTP_TRANSPORT" in removed_settings()


@pytest.mark.parametrize("name", removed_settings())
def test_a_removed_setting_is_read_by_no_field(name: str) -> None:
    assert name not in read_names()


@pytest.mark.parametrize("name", removed_settings())
def test_a_removed_setting_left_set_is_ignored(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Set in the environment and in `.env` (with a value no field would accept): start-up
    reads the same settings as without it."""
    env_file = tmp_path / ".env"
    env_file.write_text(f"{name}=not-a-value-of-anything\n", encoding="utf-8")
    baseline = Settings(_env_file=None)
    monkeypatch.setenv(name, "not-a-value-of-anything")
    assert Settings(_env_file=env_file) == baseline
