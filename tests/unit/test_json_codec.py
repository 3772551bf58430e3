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


# A lone surrogate is what json.loads makes of a JSON "\ud800" escape (or of CESU-8 bytes).
LONE = json.loads('"a\\ud800b\\udfffc"')


def test_a_lone_surrogate_is_written_as_the_replacement_character() -> None:
    """orjson refuses it and the standard library writes it raw (no UTF-8 can hold it): both
    paths write U+FFFD, so the bytes are valid UTF-8 and read back as U+FFFD."""
    for value in ({"text": LONE}, {LONE: [LONE]}, {"text": LONE, "big": 2**70}):
        written = json_codec.dumps(value)
        assert "\ud800" not in (text := written.decode("utf-8"))
        assert "a\ufffdb\ufffdc" in text


def test_clean_replaces_lone_surrogates_in_keys_and_strings_and_else_returns_the_value() -> None:
    payload = {"entry": [{"text": LONE, LONE: {"n": 2**70}}], "ok": "olá 😀"}
    cleaned = json_codec.clean(payload)
    assert cleaned == {
        "entry": [{"text": "a\ufffdb\ufffdc", "a\ufffdb\ufffdc": {"n": 2**70}}],
        "ok": "olá 😀",
    }
    valid = {"ok": "olá 😀", "n": 2**70}
    assert json_codec.clean(valid) is valid  # nothing to replace: no copy


def test_a_task_with_lone_surrogates_is_valid_utf8_json_for_every_backend() -> None:
    """What a Cloud Tasks body, a SQLite row and a Redis field hold: UTF-8, read back whole."""
    item = {"id": "wamid.X", "type": "text", "text": {"body": LONE}}
    task = Task(
        task_id=f"wamid.{LONE}",
        kind=TaskKind.MESSAGE,
        conversation_key=f"123:{LONE}",
        phone_number_id="123",
        received_at=1.0,
        item=item,
        value={"messages": [item]},
    )
    body = task.to_json()
    body.decode("utf-8")  # strict: raises on anything that is not UTF-8
    assert Task.from_json(body) == task
    assert (task.task_id, task.conversation_key) == ("wamid.a\ufffdb\ufffdc", "123:a\ufffdb\ufffdc")
    assert task.item["text"]["body"] == "a\ufffdb\ufffdc"
