"""Delivery statuses in a dict: for tests and single-process runs (lost on exit)."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Self

from pyloto_cli.logs import get_logger
from pyloto_cli.ports import DeliveryStatus

from .common import log_status


class MemoryStatusStore:
    """`StatusStore` in memory, keyed by (wamid, status); the first record of a key wins."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._by_key: dict[tuple[str, str], DeliveryStatus] = {}
        self._order: list[tuple[str, str]] = []
        self._log = logger or get_logger("statuses.memory")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def record(self, status: DeliveryStatus) -> bool:
        """Store `status`; False if this (wamid, status) was already recorded."""
        key = (status.message_id, status.status)
        if key in self._by_key:
            return False
        self._by_key[key] = status
        self._order.append(key)
        log_status(self._log, status)
        return True

    async def get(self, message_id: str) -> list[DeliveryStatus]:
        """Every status of `message_id`, oldest first (by timestamp, then arrival)."""
        found = [self._by_key[k] for k in self._order if k[0] == message_id]
        return sorted(found, key=lambda s: s.timestamp)

    async def failed(self, limit: int = 100) -> list[DeliveryStatus]:
        """The newest `failed` statuses first."""
        failed = [self._by_key[k] for k in reversed(self._order) if k[1] == "failed"]
        return sorted(failed, key=lambda s: s.timestamp, reverse=True)[:limit]
