"""A webhook body's bytes -> JSON, or MalformedPayload: never RecursionError or a decode error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyloto_cli.domain.errors import MalformedPayload
from pyloto_cli.domain.webhook_json import MAX_DEPTH, parse_webhook_body


def arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_nesting_up_to_the_limit_parses() -> None:
    value = parse_webhook_body(arrays(MAX_DEPTH))
    assert isinstance(value, list)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 990, 100_000])
def test_nesting_past_the_limit_is_malformed(depth: int) -> None:
    with pytest.raises(MalformedPayload, match="nested deeper"):
        parse_webhook_body(arrays(depth))


def test_many_shallow_containers_are_not_deep() -> None:
    """Counting brackets only decides whether to walk: 1000 flat objects are 2 levels."""
    body = b"[" + b",".join(b'{"a":[1]}' for _ in range(1000)) + b"]"
    assert len(parse_webhook_body(body)) == 1000


def test_large_integer_stays_an_integer() -> None:
    """An order price of 10^400 is JSON: it reaches the pipeline whole, not as a float."""
    assert parse_webhook_body(b'{"p": 1%s}' % (b"0" * 400)) == {"p": 10**400}


def test_fixture_payloads_parse() -> None:
    """Every payload the project keeps from Meta's shapes is within the limits, read as sent."""
    paths = sorted((Path(__file__).parents[2] / "fixtures").rglob("*.json"))
    assert len(paths) > 40
    for path in paths:
        assert parse_webhook_body(path.read_bytes()) == json.loads(path.read_bytes()), path
