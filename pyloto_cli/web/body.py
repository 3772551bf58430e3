"""Reading a request body with Meta's size limit and a deadline, chunked bodies included."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from pyloto_cli.domain.errors import PayloadTooLarge, RequestTimeout

MAX_BODY_BYTES = 3 * 1024 * 1024  # Meta's maximum webhook payload
# answers after which the rest of the body is not read: the connection cannot be reused
CLOSE = {"Connection": "close"}


async def read_body(request: Request, within_s: float, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body; PayloadTooLarge as soon as it passes `limit` (chunked bodies too), and
    RequestTimeout when all of it has not arrived `within_s` seconds after the headers did."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(within_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body is over {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RequestTimeout(f"body not received within {within_s:g} s") from exc
    return b"".join(chunks)
