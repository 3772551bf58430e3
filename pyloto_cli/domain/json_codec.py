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

`loads` is for JSON that pyloto wrote or that comes from the OpenAI and Graph APIs. orjson
reads an integer beyond 64 bits as a float, so a webhook body, which any sender shapes, and a
stored task, which holds one, are read by the standard library (`json.loads`).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of `value`."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def loads(data: bytes | str) -> Any:
    """The value of JSON that holds no integer beyond 64 bits; ValueError if it is not JSON."""
    return orjson.loads(data)
