"""Replay transcripts: JSON lines, one object per inbound item, and how two are compared.

An item (see `pyloto_cli.tools.replay`) holds what the pipeline saw and did: the source file,
the task, the parsed message, the detected event, the reply, the Graph bodies sent (phone
numbers masked), the outcome and the stage timings. Two transcripts are compared after
`normalize`: timings are dropped and generated ids (the sent wamids, `wamid.dryrun.<n>`
offline) are replaced by a placeholder, so a golden transcript recorded yesterday matches a
replay today.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from pyloto_cli.tools import ToolUsageError

JsonObject = dict[str, Any]

VOLATILE: Final = frozenset({"timings_ms"})
GENERATED: Final = "<generated>"


def dumps_item(item: JsonObject) -> str:
    """One transcript line: compact JSON, keys sorted, non-ASCII kept."""
    return json.dumps(item, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def check_writable(path: Path) -> None:
    """Refuse a transcript path that cannot be written, leaving no file behind."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with path.open("a", encoding="utf-8"):
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ToolUsageError(f"--record {path}: cannot write there ({reason})") from exc


def write_transcript(path: Path, items: Iterable[JsonObject]) -> int:
    """Write `items` as JSON lines (parents created); returns how many."""
    lines = [dumps_item(item) for item in items]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def read_transcript(path: Path) -> list[JsonObject]:
    """The items of a transcript file (blank lines ignored); ValueError on a bad line."""
    items: list[JsonObject] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        value = json.loads(line)
        if not isinstance(value, dict):
            raise ValueError(f"{path}:{number}: a transcript line must be a JSON object")
        items.append(value)
    return items


def normalize(item: JsonObject) -> JsonObject:
    """`item` without what varies between runs: its timings and the generated ids.

    Generated ids are the outcome's `sent_id` and each `sent` record's `message_id` (the ids
    the sender returned); ids from the input (the inbound wamid, a body's `context`) stay.
    """
    clean = {key: copy.deepcopy(value) for key, value in item.items() if key not in VOLATILE}
    if isinstance(clean.get("sent_id"), str):
        clean["sent_id"] = GENERATED
    for record in clean.get("sent") or ():
        if isinstance(record, dict) and isinstance(record.get("message_id"), str):
            record["message_id"] = GENERATED
    return clean


def _lines(items: Sequence[JsonObject]) -> list[str]:
    lines: list[str] = []
    for item in items:
        text = json.dumps(normalize(item), ensure_ascii=False, sort_keys=True, indent=2)
        lines.extend(line + "\n" for line in text.splitlines())
    return lines


def diff_transcripts(
    expected: Sequence[JsonObject],
    actual: Sequence[JsonObject],
    *,
    expected_name: str = "expected",
    actual_name: str = "replay",
) -> str:
    """A unified diff of the normalized transcripts; empty when they match."""
    return "".join(
        difflib.unified_diff(
            _lines(expected), _lines(actual), fromfile=expected_name, tofile=actual_name, n=3
        )
    )
