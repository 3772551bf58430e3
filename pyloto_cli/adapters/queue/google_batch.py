"""What the Google-backed sinks (Cloud Tasks, Pub/Sub) share when they store one webhook's tasks:
each task once, and one error for a batch that Google did not take whole."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NoReturn

from google.api_core import exceptions as gexc

from pyloto_cli.domain.errors import TransientError
from pyloto_cli.domain.task import Task
from pyloto_cli.logs import log_event


def once_each(tasks: Sequence[Task]) -> tuple[dict[str, Task], list[str]]:
    """The tasks by id, each once (one POST may repeat an item), and the ids repeated."""
    unique: dict[str, Task] = {}
    repeated: list[str] = []
    for task in tasks:
        if task.task_id in unique:
            repeated.append(task.task_id)
        else:
            unique[task.task_id] = task
    return unique, repeated


def raise_batch_failure(
    log: logging.Logger,
    errors: Sequence[BaseException],
    total: int,
    *,
    event: str,
    summary: str,
    **fields: Any,
) -> NoReturn:
    """Log `event` on `log` and raise one TransientError (the webhook answers 503: Meta
    retries) for a batch of `total` of which `errors` failed; cancellation and the like pass
    through. `summary` is formatted with `ok` and `total`."""
    for error in errors:
        if not isinstance(error, Exception):
            raise error
    first = errors[0]
    reason = first.message if isinstance(first, gexc.GoogleAPICallError) else str(first)
    detail = f"{type(first).__name__}: {reason}"
    log_event(log, event, logging.WARNING, failed=len(errors), total=total, **fields, error=detail)
    ok = total - len(errors)
    raise TransientError(f"{summary.format(ok=ok, total=total)} ({detail})") from first
