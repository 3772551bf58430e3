"""A webhook body's bytes -> its JSON value, or MalformedPayload (400) for anything else.

Meta sends UTF-8 JSON nested about a dozen levels deep (entry > changes > value > messages >
content); a signed body that is not that is refused here, before anything walks it:
- bytes that are not UTF-8, text that is not JSON (truncated, `NaN`, an integer of more digits
  than Python converts);
- nesting deeper than `MAX_DEPTH`: every later step (the event hash, the stored task's JSON,
  the worker's model) walks the value recursively, and a few hundred levels would make one of
  them fail where the sender can no longer be told. The standard library's parser itself
  stops at the interpreter's recursion limit, which is caught here as the same refusal.

The standard library parses (not orjson): an integer beyond 64 bits stays an integer.
"""

from __future__ import annotations

import json
from typing import Any, Final, NoReturn

from pyloto_cli.domain.errors import MalformedPayload

MAX_DEPTH: Final = 64  # Meta's deepest payloads nest about 12 levels


def parse_webhook_body(body: bytes) -> Any:
    """The JSON value of `body`, or MalformedPayload saying why it is not a webhook's JSON."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPayload(f"body is not UTF-8 (byte {exc.start})") from exc
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise MalformedPayload(f"body is nested deeper than {MAX_DEPTH} levels") from exc
    except ValueError as exc:
        raise MalformedPayload(f"body is not JSON: {exc}") from exc
    # a value cannot nest deeper than it has containers: most bodies skip the walk
    if text.count("{") + text.count("[") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise MalformedPayload(f"body is nested deeper than {MAX_DEPTH} levels")
    return value


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests containers more than `limit` levels (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
