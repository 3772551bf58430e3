"""`pyloto enqueue`: captured webhook bodies onto the configured queue, as the webhook would.

Each source is one webhook body (a JSON object as Meta posts it). It is split into tasks with
`split_webhook` and stored with the runtime's `TaskSink`: task ids already queued (a
redelivered wamid) are counted as duplicates and not stored twice. A source that is not JSON,
or JSON that is not a webhook body (`MalformedPayload`), is rejected with its reason and
nothing of it is stored. No signature is checked: these are bodies you captured yourself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyloto_cli.domain.errors import MalformedPayload
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.ports import TaskSink
from pyloto_cli.settings import Settings
from pyloto_cli.tools import RolesOpener, admin_settings
from pyloto_cli.tools.sources import Source

_log = get_logger("tools.enqueue")

ENQUEUE_SUFFIXES = (".json",)


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """What became of one source: task counts, or why it was rejected."""

    name: str
    enqueued: int = 0
    duplicates: int = 0
    rejected: str | None = None


@dataclass(slots=True)
class EnqueueReport:
    """Every source's outcome, in order."""

    files: list[FileOutcome] = field(default_factory=list)

    @property
    def enqueued(self) -> int:
        """New tasks stored."""
        return sum(f.enqueued for f in self.files)

    @property
    def duplicates(self) -> int:
        """Tasks whose id was already queued."""
        return sum(f.duplicates for f in self.files)

    @property
    def rejected(self) -> list[FileOutcome]:
        """Sources that were not webhook bodies."""
        return [f for f in self.files if f.rejected is not None]

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON object (`--json`)."""
        return {
            "files": len(self.files),
            "enqueued": self.enqueued,
            "duplicates": self.duplicates,
            "rejected": [{"file": f.name, "reason": f.rejected} for f in self.rejected],
        }


def parse_body(raw: bytes) -> Any:
    """The JSON value of a body; MalformedPayload when it is not JSON."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPayload(f"not JSON: {exc}") from exc


async def enqueue_source(sink: TaskSink, source: Source) -> FileOutcome:
    """Split one source into tasks and store them; a bad source is rejected, not raised."""
    try:
        tasks = split_webhook(parse_body(source.read()), time.time())
    except MalformedPayload as exc:
        return FileOutcome(source.name, rejected=str(exc))
    except OSError as exc:
        return FileOutcome(source.name, rejected=f"cannot read: {exc.strerror or exc}")
    result = await sink.enqueue(tasks)
    return FileOutcome(source.name, len(result.enqueued), len(result.duplicates))


async def run_enqueue(
    settings: Settings,
    open_roles: RolesOpener,
    sources: Sequence[Source],
    on_file: Callable[[FileOutcome], None] | None = None,
) -> EnqueueReport:
    """Enqueue every source on the queue `settings` name; `on_file` follows the progress."""
    report = EnqueueReport()
    async with open_roles(admin_settings(settings)) as roles:
        sink = await roles.sink()
        for source in sources:
            outcome = await enqueue_source(sink, source)
            report.files.append(outcome)
            if on_file is not None:
                on_file(outcome)
    log_event(
        _log,
        "cli_enqueued",
        files=len(report.files),
        enqueued=report.enqueued,
        duplicates=report.duplicates,
        rejected=len(report.rejected),
    )
    return report
