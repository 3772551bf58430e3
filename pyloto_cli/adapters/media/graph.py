"""Downloads a user's media from the Graph API into a file (the `MediaFetcher` port).

    async with open_media_client(settings) as client:
        fetcher = GraphMediaFetcher.from_settings(client, settings)
        media = await fetcher.fetch("4000007", sha256=..., max_bytes=16 * MB, directory=dir)

Two requests, both with the Bearer token: `GET /{version}/{media-id}` answers a download URL
(valid for five minutes) and the size; `GET <url>` answers the bytes. The bytes are streamed
into a file in chunks (never whole in memory), hashed on the way and counted against the cap:
an announced size, a Content-Length or the running count over the cap stops the download
before the rest is read. A download refused with 401/403/404 (the URL expired) asks the id for
a fresh URL once. The URL carries access parameters: it is never logged.

Failures: a 4xx from `GET /{media-id}` (an unknown or expired id, code 100, Meta's 131052)
and a refused download after the fresh URL are `MediaUnavailable` (asking again will not help);
5xx, 429, a rejected token and transport errors are `TransientError` (the queue retries).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import httpx
from httpx_aiohttp import HttpxAiohttpClient

from pyloto_cli.domain import json_codec
from pyloto_cli.domain.errors import TransientError
from pyloto_cli.domain.graph_errors import GraphError
from pyloto_cli.domain.media import MediaUnavailable, expected_digest, valid_media_id
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.ports import FetchedMedia
from pyloto_cli.private_files import private_dir
from pyloto_cli.settings import Settings

CHUNK_BYTES: Final = 64 * 1024
_EXPIRED: Final = frozenset({401, 403, 404})
_AUTH_CODES: Final = frozenset({190})


def media_timeout() -> httpx.Timeout:
    """Connect 5 s, a pooled connection 10 s, 30 s between two chunks of a download."""
    return httpx.Timeout(connect=5.0, read=30.0, write=10.0, pool=10.0)


@asynccontextmanager
async def open_media_client(
    settings: Settings, *, timeouts: httpx.Timeout | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The process's client for media downloads (on the aiohttp transport, as the sender's),
    closed on exit. Its own pool: a long download never holds up a send's connection."""
    size = max(8, settings.concurrency)
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    async with HttpxAiohttpClient(limits=limits, timeout=timeouts or media_timeout()) as client:
        yield client


class GraphMediaFetcher:
    """`MediaFetcher` on the Graph API; it does not own `client` (see `open_media_client`)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        access_token: str,
        api_version: str,
        base_url: str = "https://graph.facebook.com",
        logger: logging.Logger | None = None,
    ) -> None:
        self._client = client
        self._base = f"{base_url.rstrip('/')}/{api_version.strip('/')}"
        self._auth = {"Authorization": f"Bearer {access_token}"}
        self._log = logger or get_logger("media.graph")

    @classmethod
    def from_settings(cls, client: httpx.AsyncClient, settings: Settings) -> GraphMediaFetcher:
        """A fetcher for `settings`' Graph URL, version and token."""
        if settings.whatsapp_access_token is None:
            raise ValueError("WHATSAPP_ACCESS_TOKEN is required to download media")
        return cls(
            client,
            access_token=settings.whatsapp_access_token.get_secret_value(),
            api_version=settings.graph_api_version,
            base_url=settings.graph_api_url,
        )

    def __repr__(self) -> str:
        return f"GraphMediaFetcher(base={self._base!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def fetch(
        self, media_id: str, *, sha256: str | None, max_bytes: int, directory: Path
    ) -> FetchedMedia:
        """Download `media_id` into a new file under `directory` (see the module docstring)."""
        if not valid_media_id(media_id):
            raise self._unavailable(media_id, "bad_media_id")
        started = time.perf_counter()
        private_dir(directory)
        for attempt in (1, 2):
            url, mime_type = await self._locate(media_id, max_bytes)
            try:
                path, size = await self._download(url, media_id, sha256, max_bytes, directory)
            except _Expired as exc:
                if attempt == 2:
                    raise self._unavailable(media_id, f"download_http_{exc.status}") from None
                log_event(self._log, "media_url_expired", media_id=media_id, status=exc.status)
                continue
            log_event(
                self._log,
                "media_fetched",
                media_id=media_id,
                mime_type=mime_type,
                bytes=size,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
            return FetchedMedia(path=path, mime_type=mime_type, size=size)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _locate(self, media_id: str, max_bytes: int) -> tuple[str, str]:
        """The download URL and MIME type from `GET /{media-id}`; refuses an announced size
        over the cap before anything is downloaded."""
        try:
            response = await self._client.get(f"{self._base}/{media_id}", headers=self._auth)
        except httpx.TransportError as exc:
            raise self._transient(media_id, f"graph_unreachable: {type(exc).__name__}") from exc
        data = _json(response)
        if not response.is_success:
            error = GraphError.from_body(data)
            code = error.code if error is not None else None
            reason = f"graph_http_{response.status_code}" + (f"_code_{code}" if code else "")
            if response.status_code >= 500 or response.status_code == 429:
                raise self._transient(media_id, reason)
            if code in _AUTH_CODES:
                raise self._transient(media_id, reason)  # the token, not this media
            raise self._unavailable(media_id, reason)
        url = data.get("url") if isinstance(data, dict) else None
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise self._unavailable(media_id, "no_download_url")
        size = _int(data.get("file_size"))
        if size is not None and size > max_bytes:
            raise self._unavailable(media_id, "too_large")
        mime = data.get("mime_type")
        return url, mime if isinstance(mime, str) and mime else "application/octet-stream"

    async def _download(
        self, url: str, media_id: str, sha256: str | None, max_bytes: int, directory: Path
    ) -> tuple[Path, int]:
        path = directory / f"{media_id}-{uuid.uuid4().hex}"
        try:
            async with self._client.stream("GET", url, headers=self._auth) as response:
                if response.status_code in _EXPIRED:
                    raise _Expired(response.status_code)
                if response.status_code >= 500 or response.status_code == 429:
                    raise self._transient(media_id, f"download_http_{response.status_code}")
                if not response.is_success:
                    raise self._unavailable(media_id, f"download_http_{response.status_code}")
                declared = _int(response.headers.get("content-length"))
                if declared is not None and declared > max_bytes:
                    raise self._unavailable(media_id, "too_large")
                digest, size = await _stream_to(path, response, max_bytes)
        except httpx.TransportError as exc:
            path.unlink(missing_ok=True)
            raise self._transient(media_id, f"download_failed: {type(exc).__name__}") from exc
        except _TooLarge:
            path.unlink(missing_ok=True)
            raise self._unavailable(media_id, "too_large") from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        expected = expected_digest(sha256)
        if expected is not None and expected != digest:
            path.unlink(missing_ok=True)
            raise self._unavailable(media_id, "sha256_mismatch")
        return path, size

    def _unavailable(self, media_id: str, reason: str) -> MediaUnavailable:
        log_event(
            self._log, "media_fetch_failed", logging.WARNING, media_id=media_id, reason=reason
        )
        return MediaUnavailable(reason)

    def _transient(self, media_id: str, reason: str) -> TransientError:
        log_event(
            self._log,
            "media_fetch_failed",
            logging.WARNING,
            media_id=media_id,
            reason=reason,
            retry=True,
        )
        return TransientError(f"media {reason}")


class _Expired(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _TooLarge(Exception):
    pass


async def _stream_to(path: Path, response: httpx.Response, max_bytes: int) -> tuple[bytes, int]:
    """Write the body to `path` chunk by chunk (hashing and counting), stopping past the cap."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        async for chunk in response.aiter_bytes(CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise _TooLarge
            digest.update(chunk)
            out.write(chunk)
    return digest.digest(), size


def _json(response: httpx.Response) -> Any:
    try:
        return json_codec.loads(response.content)
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None
