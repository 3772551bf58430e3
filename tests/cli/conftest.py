"""CLI tests: a clean environment per test (no `.env`, no credentials, data in tmp_path)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pyloto_cli.logs import LOGGER_NAME


@pytest.fixture(autouse=True)
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hermetic_env: None) -> Path:
    """Run in tmp_path with PYLOTO_DATA_DIR there (on top of `hermetic_env` in tests/conftest.py,
    which clears every setting's variable); returns the data dir."""
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("PYLOTO_DATA_DIR", str(data_dir))
    return data_dir


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The commands configure the `pyloto` logger on the runner's streams: undo it after."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.fixture
def runner() -> CliRunner:
    """A Typer CliRunner (stdout and stderr kept apart)."""
    return CliRunner()
