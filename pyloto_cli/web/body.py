"""Reading a request body with Meta's size limit, chunked bodies included."""

from __future__ import annotations

from starlette.requests import Request

from pyloto_cli.domain.errors import PayloadTooLarge

MAX_BODY_BYTES = 3 * 1024 * 1024  # Meta's maximum webhook payload


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, or PayloadTooLarge as soon as it passes `limit` (chunked bodies too)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
