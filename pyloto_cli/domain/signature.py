"""`X-Hub-Signature-256`: HMAC-SHA256 of the exact request bytes with the app secret.

Always computed over the raw body before any parsing: Meta signs its escaped-unicode bytes, and
a re-serialized body no longer matches. The header is checked as bytes, as it came off the
wire: any sender can put any byte in it, and a malformed value is a refusal (401), never an
error of ours.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from pyloto_cli.domain.errors import SignatureError

PREFIX = "sha256="
_PREFIX = PREFIX.encode()
_HEX_DIGEST = re.compile(rb"[0-9a-fA-F]{64}")


def sign(secret: bytes, body: bytes) -> str:
    """The header value Meta would send for `body`."""
    return PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: bytes | str | None) -> None:
    """Raise SignatureError unless `header` is `sha256=` and the 64 hex digits of the HMAC of
    `body` (either case; constant-time compare)."""
    if not header:
        raise SignatureError("missing X-Hub-Signature-256")
    raw = header.encode("utf-8", "surrogateescape") if isinstance(header, str) else header
    value = raw.strip()
    if not value.startswith(_PREFIX):
        raise SignatureError("X-Hub-Signature-256 is not sha256=<hex>")
    digest = value[len(_PREFIX) :].strip()
    if _HEX_DIGEST.fullmatch(digest) is None:
        raise SignatureError("X-Hub-Signature-256 is not sha256=<64 hex digits>")
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(expected, digest.lower()):
        raise SignatureError("X-Hub-Signature-256 does not match the body")
