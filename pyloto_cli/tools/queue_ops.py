"""`pyloto queue ...`: stats, burst drain, dead letters and failed deliveries.

Every function opens the runtime the settings describe, does one thing and closes it. Only
`drain` sends (with the configured sender); the others open no network client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pyloto_cli.domain.task import DeadLetter, QueueStats
from pyloto_cli.logs import get_logger, log_event, mask_digits, mask_phone, mask_phone_fields
from pyloto_cli.pipeline.window import REPLY_EXPIRED
from pyloto_cli.ports import DeliveryStatus, QueueAdmin
from pyloto_cli.settings import Settings
from pyloto_cli.tools import RolesOpener, ToolRoles, ToolUsageError, admin_settings

_log = get_logger("tools.queue")
_SHOW_LIMIT = 1_000_000  # dead letters scanned by `show` and `requeue` (QueueAdmin has no get)
_EXPIRED_SCAN = 10_000  # the newest failed deliveries `stats` counts expired replies among


async def _admin(roles: ToolRoles) -> QueueAdmin:
    admin = await roles.admin()
    if admin is None:
        backend = roles.settings.queue_backend.value
        raise ToolUsageError(f"QUEUE_BACKEND={backend} has no admin interface here")
    return admin


def iso_time(epoch: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC string."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="seconds")


def stats_json(stats: QueueStats) -> dict[str, Any]:
    """A queue snapshot as one JSON object; counts the queue does not report are null, with a
    note saying so (Pub/Sub tells its clients no depth)."""
    if not stats.counts_reported:
        return {
            "backend": stats.backend,
            "depth": None,
            "ready": None,
            "leased": None,
            "retrying": None,
            "dead_lettered": stats.dead,
            "oldest_age_s": None,
            "note": f"{stats.backend} reports no depth; see its own monitoring",
        }
    return {
        "backend": stats.backend,
        "depth": stats.depth,
        "ready": stats.ready,
        "leased": stats.leased,
        "retrying": stats.retrying,
        "dead_lettered": stats.dead,
        "reply_expired": stats.reply_expired,
        "oldest_age_s": None if stats.oldest_age_s is None else round(stats.oldest_age_s, 3),
    }


# --- stats ----------------------------------------------------------------------------------


async def queue_stats(settings: Settings, open_roles: RolesOpener) -> QueueStats:
    """One snapshot of the configured queue."""
    async with open_roles(admin_settings(settings)) as roles:
        return await _snapshot(roles, await _admin(roles))


async def _snapshot(roles: ToolRoles, admin: QueueAdmin) -> QueueStats:
    """The queue's counts, with the replies that expired (kept as failed deliveries)."""
    stats = await admin.stats()
    failed = await (await roles.stores()).statuses.failed(_EXPIRED_SCAN)
    expired = sum(1 for status in failed if status.error_title == REPLY_EXPIRED)
    return dataclasses.replace(stats, reply_expired=expired)


async def watch_stats(
    settings: Settings,
    open_roles: RolesOpener,
    on_stats: Callable[[QueueStats], None],
    *,
    interval_s: float = 1.0,
    count: int | None = None,
) -> int:
    """Call `on_stats` every `interval_s` seconds, `count` times (forever when None)."""
    shown = 0
    async with open_roles(admin_settings(settings)) as roles:
        admin = await _admin(roles)
        while count is None or shown < count:
            if shown:
                await asyncio.sleep(interval_s)  # the refresh interval, not a readiness wait
            on_stats(await _snapshot(roles, admin))
            shown += 1
    return shown


# --- drain ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What one burst did, and what is left."""

    done: int
    skipped: int
    retried: int
    dead: int
    lease_lost: int
    seconds: float
    after: QueueStats

    def to_json(self) -> dict[str, Any]:
        """The summary as one JSON object (`--json`)."""
        return {
            "done": self.done,
            "skipped": self.skipped,
            "retried": self.retried,
            "dead_lettered": self.dead,
            "lease_lost": self.lease_lost,
            "seconds": round(self.seconds, 3),
            "remaining": stats_json(self.after),
        }


async def run_drain(
    settings: Settings,
    open_roles: RolesOpener,
    on_progress: Callable[[int, int], None] | None = None,
    *,
    refresh_s: float = 0.1,
) -> DrainReport:
    """Process until nothing is leasable (the worker's burst mode); `on_progress(handled, total)`.

    `total` is the depth before the drain; retries raise `handled` above it.
    """
    async with open_roles(settings) as roles:
        admin = await _admin(roles)
        if not await roles.pulls():
            raise ToolUsageError(
                "this queue backend pushes or streams its tasks to workers; there is nothing to"
                " drain"
            )
        worker = await roles.worker()
        total = (await admin.stats()).depth
        started = time.perf_counter()
        burst = asyncio.create_task(worker.drain(), name="pyloto-drain")
        try:
            while not burst.done():
                await asyncio.wait({burst}, timeout=refresh_s)
                if on_progress is not None:
                    on_progress(worker.stats.handled, total)
        finally:
            burst.cancel()  # a no-op once it is done; on Ctrl-C the leases simply expire
        stats = burst.result()
        seconds = time.perf_counter() - started
        after = await admin.stats()
    report = DrainReport(
        stats.done, stats.skipped, stats.retried, stats.dead, stats.lease_lost, seconds, after
    )
    log_event(_log, "queue_drained", **report.to_json())
    return report


# --- dead letters ---------------------------------------------------------------------------


def dead_letter_json(dead: DeadLetter, *, full: bool = False) -> dict[str, Any]:
    """A dead letter as JSON: its id (whole: `show` and `requeue` take it), kind, masked
    conversation, error; the item when `full`, its phone numbers masked like the logs'."""
    number, _, peer = dead.task.conversation_key.partition(":")
    data: dict[str, Any] = {
        "task_id": dead.task.task_id,
        "kind": dead.task.kind.value,
        "conversation": f"{number}:{mask_phone(peer)}" if peer else number,
        "attempts": dead.attempts,
        "error": mask_digits(dead.error, wamids=False),
        "dead_at": iso_time(dead.dead_at),
    }
    if full:
        data["field"] = dead.task.field
        data["phone_number_id"] = dead.task.phone_number_id
        data["received_at"] = iso_time(dead.task.received_at)
        data["item"] = mask_phone_fields(dead.task.item)
    return data


async def list_dead(
    settings: Settings, open_roles: RolesOpener, limit: int = 100
) -> list[DeadLetter]:
    """Dead letters, oldest first."""
    async with open_roles(admin_settings(settings)) as roles:
        return await (await _admin(roles)).dead_letters(limit)


async def show_dead(settings: Settings, open_roles: RolesOpener, task_id: str) -> DeadLetter | None:
    """The dead letter of `task_id`, or None."""
    for dead in await list_dead(settings, open_roles, _SHOW_LIMIT):
        if dead.task.task_id == task_id:
            return dead
    return None


@dataclass(frozen=True, slots=True)
class RequeueReport:
    """How many dead letters went back to the queue; ids asked for that were not dead."""

    requeued: int
    missing: tuple[str, ...] = ()


async def requeue_dead(
    settings: Settings, open_roles: RolesOpener, task_ids: Sequence[str] | None
) -> RequeueReport:
    """Queue dead letters again (every one when `task_ids` is None)."""
    async with open_roles(admin_settings(settings)) as roles:
        admin = await _admin(roles)
        if task_ids is None:
            return RequeueReport(await admin.requeue_dead(None))
        dead_ids = {d.task.task_id for d in await admin.dead_letters(_SHOW_LIMIT)}
        wanted = list(dict.fromkeys(task_ids))
        missing = tuple(i for i in wanted if i not in dead_ids)
        present = [i for i in wanted if i in dead_ids]
        count = await admin.requeue_dead(present) if present else 0
        return RequeueReport(count, missing)


async def purge_dead(settings: Settings, open_roles: RolesOpener) -> int:
    """Delete every dead letter; the count."""
    async with open_roles(admin_settings(settings)) as roles:
        return await (await _admin(roles)).purge_dead()


# --- failed deliveries ----------------------------------------------------------------------


def delivery_json(status: DeliveryStatus) -> dict[str, Any]:
    """A failed delivery as JSON (the recipient is stored masked already)."""
    return {
        "message_id": status.message_id,
        "status": status.status,
        "error_code": status.error_code,
        "error_title": status.error_title,
        "recipient": status.recipient,
        "phone_number_id": status.phone_number_id,
        "timestamp": iso_time(status.timestamp),
        "inbound_message_id": status.callback_data,
    }


async def failed_deliveries(
    settings: Settings, open_roles: RolesOpener, limit: int = 100
) -> list[DeliveryStatus]:
    """The most recent `failed` delivery statuses, newest first, with their error codes."""
    async with open_roles(admin_settings(settings)) as roles:
        return await (await roles.stores()).statuses.failed(limit)
