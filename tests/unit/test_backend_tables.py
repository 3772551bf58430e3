"""Backend selection is a table per port: every backend a setting can name has an opener."""

from __future__ import annotations

from pyloto_cli import backends
from pyloto_cli.settings import QueueBackend, StoreBackend


def test_every_queue_backend_has_an_opener() -> None:
    assert set(backends.QUEUES) == set(QueueBackend)


def test_every_store_backend_has_an_opener_for_every_store() -> None:
    tables = (
        backends.SESSIONS,
        backends.DEDUPERS,
        backends.STATUSES,
        backends.DEAD_LETTERS,
        backends.MEMOS,
    )
    for table in tables:
        assert set(table) == set(StoreBackend)
