"""JSON in and out of pyloto's own records, by orjson.

The LLM request bodies (the prompts and the conversation so far), the Graph API payloads, the
sessions and the stored tasks are written once or more per message, and orjson writes the same
bytes as the standard library's encoder with `ensure_ascii=False` at a small fraction of its
cost. The log lines keep the standard library's spacing (`"event": "..."`), which users'
searches may rely on.

`dumps` writes what `json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()`
writes, but for a float in exponent form (`1e-7` for `1e-07`: the same number); what orjson
refuses (an integer beyond 64 bits, a key that is not a string) goes to the standard library,
so nothing that encoded before fails now (a type neither knows is still a TypeError). One
difference: orjson writes NaN and infinities as null (the standard library writes `NaN`,
which is not JSON).

Text that cannot be UTF-8 (a lone surrogate, which a JSON `"\\ud800"` escape or a CESU-8 byte
sequence decodes to) is replaced by U+FFFD, never escaped: a lone surrogate is no character,
so it cannot be shown to a user, sent to the LLM or the Graph API, or written to a store, and
U+FFFD is what every UTF-8 decoder puts where it could not decode. Replaced once, everything
downstream (queues, sessions, logs, request bodies) holds valid UTF-8 and needs no escaping
rule of its own. `dumps` replaces on its slow path only; `clean` does it to a parsed value.

`loads` is for JSON that pyloto wrote or that comes from the OpenAI and Graph APIs. orjson
reads an integer beyond 64 bits as a float, so a webhook body, which any sender shapes, and a
stored task, which holds one, are read by the standard library (`json.loads`).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import orjson

REPLACEMENT: Final = "\ufffd"
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of `value`."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is one
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return clean_text(text).encode()


def clean_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (itself when there is none)."""
    if text.isascii():
        return text
    return _SURROGATE.sub(REPLACEMENT, text)


def clean(value: Any) -> Any:
    """`value` (parsed JSON) with every lone surrogate in its keys and strings replaced by
    U+FFFD; `value` itself, not a copy, when it has none (the common case costs one orjson
    encode)."""
    try:
        orjson.dumps(value)
    except TypeError:  # a surrogate, or only an integer beyond 64 bits: look closer
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if _SURROGATE.search(text) is not None:
            return json.loads(_SURROGATE.sub(REPLACEMENT, text))
    return value


def loads(data: bytes | str) -> Any:
    """The value of JSON that holds no integer beyond 64 bits; ValueError if it is not JSON."""
    return orjson.loads(data)
