"""json_codec: the standard library's bytes, faster; nothing that encoded before fails now."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from pyloto_cli.domain import json_codec
from pyloto_cli.domain.task import Task, TaskKind


def _stdlib(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "value",
    [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Olá, tudo bem? 😀"}]},
        {"text": 'aspas " barra \\ nova\nlinha\ttab \u0000 \u2028', "n": [1, -2, 0.5, 1.25]},
        {"received_at": 1795677862.217123, "ok": True, "none": None, "empty": {}, "list": []},
        ["ação", {"ü": "ß"}, 2**63 - 1, -(2**63)],
    ],
)
def test_dumps_writes_the_standard_librarys_bytes(value: Any) -> None:
    assert json_codec.dumps(value) == _stdlib(value)
    assert json_codec.loads(json_codec.dumps(value)) == value


def test_a_float_in_exponent_form_reads_back_the_same() -> None:
    values = [1e-7, 1e16, 2.5e-300, 1.7976931348623157e308, 0.1 + 0.2]
    assert json_codec.dumps(values) != _stdlib(values)  # 1e-7 where it wrote 1e-07
    assert json_codec.loads(json_codec.dumps(values)) == json.loads(_stdlib(values)) == values


@pytest.mark.parametrize("value", [{"big": 2**70}, {1: "non-string key"}, [-(2**64)]])
def test_what_orjson_refuses_is_written_by_the_standard_library(value: Any) -> None:
    assert json_codec.dumps(value) == _stdlib(value)


def test_a_type_json_has_none_for_is_still_refused() -> None:
    with pytest.raises(TypeError):
        json_codec.dumps({"when": object()})


@pytest.mark.parametrize("raw", [b"<html>bad gateway</html>", b"", b'{"a": ', "{'a': 1}"])
def test_loads_refuses_what_is_not_json_with_a_value_error(raw: bytes | str) -> None:
    with pytest.raises(json.JSONDecodeError):  # a ValueError, as the callers catch
        json_codec.loads(raw)


def test_a_task_keeps_an_integer_beyond_64_bits_exactly() -> None:
    """A webhook's item is stored as it came: json_codec.loads would read 2**70 as a float."""
    item = {"id": "wamid.X", "type": "text", "text": {"body": "oi"}, "huge": 2**70 + 1}
    task = Task(
        task_id="wamid.X",
        kind=TaskKind.MESSAGE,
        conversation_key="123:5511",
        phone_number_id="123",
        received_at=time.time(),
        item=item,
        value={"messages": [item]},
    )
    again = Task.from_json(task.to_json())
    assert again == task
    assert again.item["huge"] == 2**70 + 1
    assert isinstance(again.item["huge"], int)
