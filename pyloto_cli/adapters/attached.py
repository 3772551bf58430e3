"""Adapters that live exactly as long as the connection they hold.

The SQLite, Redis and Firestore stores each hold one attachment (`SqliteAttachment`,
`RedisConnection`, `FirestoreAttachment`): owned (opened and closed with the adapter) or shared
(the composition root closes it). Their `async with` only opens and closes it; `Attached` is
that, written once.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self


class Attachment(Protocol):
    """A connection an adapter opens on enter and closes on exit."""

    async def open(self) -> None:
        """Open it (or check the shared one)."""

    async def close(self) -> None:
        """Close it if it is the adapter's own."""


class Attached:
    """Base of an adapter whose `async with` opens and closes one `Attachment`."""

    def __init__(self, attachment: Attachment) -> None:
        self._attachment = attachment

    async def __aenter__(self) -> Self:
        await self._attachment.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._attachment.close()
