"""`X-Hub-Signature-256`: HMAC-SHA256 of the exact request bytes with the app secret.

Always computed over the raw body before any parsing: Meta signs its escaped-unicode bytes, and
a re-serialized body no longer matches.
"""

from __future__ import annotations

import hashlib
import hmac

from pyloto_cli.domain.errors import SignatureError

PREFIX = "sha256="


def sign(secret: bytes, body: bytes) -> str:
    """The header value Meta would send for `body`."""
    return PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> None:
    """Raise SignatureError unless `header` is the HMAC of `body` (constant-time compare)."""
    if not header:
        raise SignatureError("missing X-Hub-Signature-256")
    if not header.startswith(PREFIX):
        raise SignatureError("X-Hub-Signature-256 is not sha256=<hex>")
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, header[len(PREFIX) :].strip().lower()):
        raise SignatureError("X-Hub-Signature-256 does not match the body")
