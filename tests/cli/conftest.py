"""CLI tests: a clean environment per test (no `.env`, no credentials, data in tmp_path)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pyloto_cli.logs import LOGGER_NAME

_LEAKY_ENV = (
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_APP_SECRET",
    "WHATSAPP_VERIFY_TOKEN",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "QUEUE_BACKEND",
    "SESSION_STORE_BACKEND",
    "DEDUPE_BACKEND",
    "GRAPH_API_URL",
    "PYLOTO_MAX_ATTEMPTS",
    "PYLOTO_LOG_LEVEL",
    "PYLOTO_LOG_FORMAT",
    "PYLOTO_MARK_READ",
)


@pytest.fixture(autouse=True)
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path (so no `.env` is read) with PYLOTO_DATA_DIR there; returns the data dir."""
    for name in _LEAKY_ENV:
        monkeypatch.delenv(name, raising=False)
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
