"""One Firestore `AsyncClient`, opened inside the running loop and closed with its gRPC channel.

The Firestore adapters (sessions, dedupe, dead letters) take either a shared client (the
composition root opens one `FirestoreDatabase` and hands out `.client`) or a project, in which
case they open and close their own. `FIRESTORE_EMULATOR_HOST` is read by the client library
itself when the client is built.

grpc.aio channels belong to the event loop they first ran on, so a client is built in
`__aenter__` (inside the loop) and never at import time or in `__init__`.
"""

from __future__ import annotations

import hashlib
import os
from types import TracebackType
from typing import Self

from google.api_core import exceptions as gexc
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import firestore

from pyloto_cli.domain.errors import BackendUnavailable

_PING_TIMEOUT_S = 5.0
DEFAULT_ADDRESS = "firestore.googleapis.com"


def doc_id(key: str) -> str:
    """A Firestore-safe document id for any key: its sha256, in hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def library_address() -> str:
    """Where the client library points a new client: it reads FIRESTORE_EMULATOR_HOST itself
    when the client is built, so an adapter that opens its own client names the same place."""
    return os.environ.get("FIRESTORE_EMULATOR_HOST") or DEFAULT_ADDRESS


async def close_client(client: firestore.AsyncClient) -> None:
    """Close the client (its public `close()`; the library keeps its gRPC channel to itself)."""
    client.close()  # type: ignore[no-untyped-call]


async def ping(
    client: firestore.AsyncClient, collection: str, *, address: str = DEFAULT_ADDRESS
) -> None:
    """One cheap read; raises BackendUnavailable naming `address` when it fails."""
    try:
        await (
            client.collection(collection).document("_ping").get(retry=None, timeout=_PING_TIMEOUT_S)
        )
    except gexc.GoogleAPICallError as exc:
        raise BackendUnavailable(
            f"Firestore at {address} (project {client.project}) cannot be "
            f"reached: {exc.message or exc}"
        ) from exc


async def open_client(
    project: str | None,
    collection: str,
    *,
    database: str | None = None,
    address: str | None = None,
) -> firestore.AsyncClient:
    """A new client, checked with one read of `collection`; one BackendUnavailable if not."""
    try:
        client = firestore.AsyncClient(project=project, database=database)
    except DefaultCredentialsError as exc:
        raise BackendUnavailable(
            f"Firestore needs GOOGLE_CLOUD_PROJECT (or Application Default Credentials): {exc}"
        ) from exc
    try:
        await ping(client, collection, address=address or library_address())
    except BaseException:
        await close_client(client)
        raise
    return client


class FirestoreDatabase:
    """An async context manager owning one `AsyncClient` for `project` (checked on enter)."""

    def __init__(
        self, project: str | None, *, database: str | None = None, address: str | None = None
    ) -> None:
        self.project = project
        self.database = database
        # where the client library was pointed (FIRESTORE_EMULATOR_HOST), for error messages
        self.address = address
        self._client: firestore.AsyncClient | None = None
        self._closed = False

    @property
    def client(self) -> firestore.AsyncClient:
        """The open client; raises if the database is not entered."""
        if self._client is None:
            raise BackendUnavailable("FirestoreDatabase is not open")
        return self._client

    async def __aenter__(self) -> Self:
        if self._closed:
            raise RuntimeError("FirestoreDatabase cannot be reopened once closed")
        self._client = await open_client(
            self.project, "pyloto_ping", database=self.database, address=self.address
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        if self._client is not None:
            client, self._client = self._client, None
            await close_client(client)


class FirestoreAttachment:
    """One adapter's use of a Firestore client: its own (opened and closed here) or shared.

    Given a client, it only uses it (the caller closes it); without one it opens a client on
    `open()` (checked with one read of `collection`) and closes it on `close()`. Once closed it
    cannot be reopened, and `client` fails loudly outside open/close.
    """

    def __init__(
        self,
        project: str | None,
        collection: str,
        client: firestore.AsyncClient | None,
        *,
        role: str,
    ) -> None:
        self._project = project
        self._collection = collection
        self._shared = client
        self._client: firestore.AsyncClient | None = None
        self._role = role
        self._closed = False

    async def open(self) -> None:
        """Use the shared client, or open one."""
        if self._closed:
            raise RuntimeError(f"{self._role} cannot be reopened once closed")
        self._client = self._shared or await open_client(self._project, self._collection)

    async def close(self) -> None:
        """Stop; close the client if it is this adapter's own."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None and self._shared is None:
            await close_client(client)

    @property
    def client(self) -> firestore.AsyncClient:
        """The open client."""
        if self._client is None:
            raise BackendUnavailable(f"{self._role} is not open")
        return self._client
