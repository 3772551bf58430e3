"""X-Hub-Signature-256 over the raw bytes, constant-time compare."""

from __future__ import annotations

import json

import pytest

from pyloto_cli.domain.errors import SignatureError
from pyloto_cli.domain.signature import sign, verify_signature

SECRET = b"app-secret"
# Meta signs its escaped-unicode bytes: non-ASCII as \uXXXX with lowercase hex.
META_BODY = (
    b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",'
    b'"value":{"messages":[{"id":"wamid.U","text":{"body":"Ol\\u00e1, pre\\u00e7o? \\ud83d\\ude0a'
    b' \\u0645\\u0631\\u062d\\u0628\\u0627"}}]}}]}]}'
)


def test_valid_signature_is_accepted() -> None:
    """A signature computed over the exact bytes passes."""
    verify_signature(SECRET, META_BODY, sign(SECRET, META_BODY))


def test_uppercase_hex_is_accepted() -> None:
    """Hex case does not matter."""
    header = "sha256=" + sign(SECRET, META_BODY).removeprefix("sha256=").upper()
    verify_signature(SECRET, META_BODY, header)


def test_missing_signature_is_rejected() -> None:
    """No header, no entry."""
    with pytest.raises(SignatureError, match="missing"):
        verify_signature(SECRET, META_BODY, None)


def test_wrong_secret_is_rejected() -> None:
    """A signature made with another secret fails."""
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(SECRET, META_BODY, sign(b"other", META_BODY))


def test_sha1_header_shape_is_rejected() -> None:
    """The legacy sha1= form is not accepted as the SHA-256 signature."""
    with pytest.raises(SignatureError):
        verify_signature(SECRET, META_BODY, "sha1=" + "0" * 40)


def test_reserialized_unicode_body_fails() -> None:
    """Parsing and re-dumping changes the bytes, so the original signature no longer matches."""
    header = sign(SECRET, META_BODY)
    redumped = json.dumps(json.loads(META_BODY), ensure_ascii=False).encode()
    assert redumped != META_BODY
    with pytest.raises(SignatureError):
        verify_signature(SECRET, redumped, header)


def test_utf8_body_signed_as_received_passes() -> None:
    """A raw UTF-8 (unescaped) body is fine as long as the same bytes were signed."""
    body = '{"text":"Olá 😊 مرحبا"}'.encode()
    verify_signature(SECRET, body, sign(SECRET, body))


def test_one_flipped_byte_fails() -> None:
    """Any change to the body breaks the signature."""
    header = sign(SECRET, META_BODY)
    tampered = META_BODY.replace(b"wamid.U", b"wamid.V")
    with pytest.raises(SignatureError):
        verify_signature(SECRET, tampered, header)


@pytest.mark.parametrize(
    "header",
    [
        b"sha256=\xe9",
        "sha256=\xe9",  # as a server that decodes headers as Latin-1 hands it over
        "sha256=" + "é" * 64,
        b"sha256=" + b"0" * 63,
        b"sha256=" + b"0" * 65,
        b"sha256=" + b"z" * 64,
        b"sha256=" + b"0" * 32 + b" " + b"0" * 31,
    ],
)
def test_malformed_header_is_a_signature_error(header: bytes | str) -> None:
    """Anything but `sha256=` and 64 hex digits is refused the same way, never a TypeError."""
    with pytest.raises(SignatureError):
        verify_signature(SECRET, META_BODY, header)


def test_header_as_bytes_is_accepted() -> None:
    """The header as it came off the wire (bytes) checks like its text."""
    verify_signature(SECRET, META_BODY, sign(SECRET, META_BODY).encode())
