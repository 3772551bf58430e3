"""benchmarks/ tests: the servers they start get the bench's settings, not the developer's."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

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
    "PYLOTO_SEND_RATE_PER_NUMBER",
    "PYLOTO_REPLY_CACHE",
    "PYLOTO_COALESCE_WINDOW_SECONDS",
)


@pytest.fixture(autouse=True)
def bench_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in tmp_path (so no `.env` is read), without the variables the bench sets itself."""
    for name in _LEAKY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`benchmarks.compare.main` configures the `pyloto` logger on the test's captured stderr:
    undo it after, so no later test logs to a closed stream."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
