"""Sending a reply at most once, and paying for it once: the task memo of one inbound message.

What an attempt has paid for is written to `ports.TaskMemos` under the wamid the reply
answers, whenever something after it can fail without taking it along:

- the computed reply and the Graph bodies that carry it (`reply`, `bodies`): a retry after a
  failed send sends the same bodies without asking the LLM again;
- each body's sent wamid (`sent.<n>`): a retry after a failed session save, or after part n was
  accepted, sends only what was not accepted yet.

A one-part reply whose send and session save succeed writes nothing: the session save records
the sent wamid itself, in the same step the memo would have, so a memo would only add a write
per message. The memo is written when the send or the save fails (before the failure is
raised), and before the second part of a long reply goes. A memo store that refuses a write (a
full disk, Redis down) does not fail the task: the memo is held in this process's memory, which
the retry (same worker, same process) reads first, so only a crash at that very moment can
still send a reply twice. Without a memo store the process's memory is the memo (nothing
survives a crash). The memo is forgotten once the task is done; otherwise it expires with its
TTL.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyloto_cli.domain.errors import (
    AmbiguousSendError,
    Deferral,
    PermanentError,
    SendPaused,
    TransientError,
)
from pyloto_cli.domain.reply import ListSection, Reply, ReplyKind, ReplyOption
from pyloto_cli.domain.task import JsonObject
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.pipeline.window import Gated, Verdict
from pyloto_cli.ports import NO_METRICS, Metrics, TaskMemos

_log = get_logger("pipeline")
REPLY_FIELD = "reply"
BODIES_FIELD = "bodies"
SENT_PREFIX = "sent."

# Sends one body through the checks just before a send (pipeline/window.py).
Gate = Callable[[JsonObject], Awaitable[Gated]]


@dataclass(slots=True)
class Memo:
    """What earlier attempts of one message recorded."""

    reply: Reply | None = None
    bodies: list[JsonObject] | None = None
    sent: dict[int, str] = field(default_factory=dict)
    stored: bool = False  # the store may hold fields of it: forget them once done

    @property
    def fully_sent(self) -> bool:
        """Every body of the reply was accepted by Meta."""
        return self.bodies is not None and all(i in self.sent for i in range(len(self.bodies)))


class Delivery:
    """Reads and writes task memos (falling back to process memory) and sends reply parts
    through the gate the pipeline gives it."""

    def __init__(
        self,
        memos: TaskMemos | None,
        *,
        ttl_s: float,
        metrics: Metrics = NO_METRICS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.memos = memos
        self.ttl_s = ttl_s
        self.metrics = metrics
        self._clock = clock
        self._held: dict[str, Memo] = {}  # no store, or what the store refused, by wamid
        self._held_at: dict[str, float] = {}  # when each was first held, oldest first

    async def recall(self, key: str) -> Memo:
        """The memo of `key`: the store's fields, overlaid with what is held in memory."""
        try:
            stored = {} if self.memos is None else await self.memos.get(key)
        except Exception as exc:  # a memo store that cannot answer: what we hold is all we know
            log_event(_log, "memo_read_failed", logging.WARNING, message_id=key, error=_name(exc))
            stored = {}
        memo = _decode(stored) if stored else Memo()
        memo.stored = bool(stored)
        held = self._held.get(key)
        if held is not None:
            if held.reply is not None:
                memo.reply, memo.bodies = held.reply, held.bodies
            memo.sent.update(held.sent)
        return memo

    async def remember_reply(
        self, key: str, memo: Memo, reply: Reply, bodies: Sequence[JsonObject]
    ) -> None:
        """Keep the computed reply and its bodies in `memo`; in the store too when it has more
        than one part (a part accepted must never be paid for or sent again)."""
        memo.reply, memo.bodies = reply, list(bodies)
        if len(bodies) > 1:
            await self.persist(key, memo)

    async def persist(self, key: str, memo: Memo) -> None:
        """Write what `memo` holds to the store (held in memory when it refuses), before a
        failure is raised: the retry neither pays for the reply nor sends an accepted part."""
        fields: dict[str, str] = {f"{SENT_PREFIX}{i}": wamid for i, wamid in memo.sent.items()}
        if memo.reply is not None and memo.bodies is not None:
            fields[REPLY_FIELD] = _encode_reply(memo.reply)
            fields[BODIES_FIELD] = json.dumps(memo.bodies)
        if not fields:
            return
        if self.memos is not None and await self._stored(self.memos, key, fields):
            memo.stored = True
            if key not in self._held:
                return
        held = self._hold(key)
        if memo.reply is not None:
            held.reply, held.bodies = memo.reply, memo.bodies
        held.sent.update(memo.sent)

    async def send_parts(
        self,
        key: str,
        memo: Memo,
        bodies: Sequence[JsonObject],
        gate: Gate,
    ) -> tuple[list[str], Gated | None]:
        """Send, one after another, the bodies not yet accepted; the wamid of every body.

        Each accepted body is recorded before the next is sent (and before the caller saves the
        session), so a failure anywhere later never sends it again. `gate` sends each body
        through the checks just before a send; when it holds one back (or sends a template
        instead), the parts stop there and what it did comes back second.
        """
        for index, body in enumerate(bodies):
            if index in memo.sent:
                continue
            try:
                gated = await gate(body)
                if gated.sent is None or gated.decision.verdict is not Verdict.SEND:
                    return [memo.sent[i] for i in sorted(memo.sent)], gated
                sent = gated.sent
            except (TransientError, PermanentError) as exc:
                self.metrics.graph_send(_send_outcome(exc), exc.code)
                raise
            self.metrics.graph_send("sent")
            memo.sent[index] = sent.message_id
            if len(bodies) > 1:  # recorded before the next part goes
                await self.persist(key, memo)
                log_event(
                    _log, "reply_part_sent", message_id=key, part=index + 1, parts=len(bodies)
                )
        return [memo.sent[i] for i in range(len(bodies))], None

    async def forget(self, key: str, memo: Memo | None = None) -> None:
        """The task is done: drop its memo (a failure leaves it to expire). Given the `memo`
        of this attempt, the store is asked only when it may hold something."""
        self._held.pop(key, None)
        self._held_at.pop(key, None)
        if self.memos is None or (memo is not None and not memo.stored):
            return
        try:
            await self.memos.forget(key)
        except Exception as exc:  # harmless: the memo expires, and the wamid is marked done
            log_event(_log, "memo_forget_failed", logging.WARNING, message_id=key, error=_name(exc))

    async def _stored(self, memos: TaskMemos, key: str, fields: Mapping[str, str]) -> bool:
        """Write `fields` to the memo store; False (logged) when it refused them."""
        try:
            await memos.put(key, fields, self.ttl_s)
        except Exception as exc:  # the store refused: the caller holds it here instead
            log_event(_log, "memo_write_failed", logging.WARNING, message_id=key, error=_name(exc))
            return False
        return True

    def _hold(self, key: str) -> Memo:
        """The memo held in memory for `key`; records older than the TTL go (a task never
        done, such as a dead letter, is not retried past it), so the memory stays bounded."""
        now = self._clock()
        while self._held_at:
            old, at = next(iter(self._held_at.items()))
            if now - at < self.ttl_s:
                break
            del self._held_at[old]
            self._held.pop(old, None)
        self._held_at.setdefault(key, now)
        return self._held.setdefault(key, Memo())


def _name(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _send_outcome(exc: TransientError | PermanentError) -> str:
    """The `pyloto_graph_sends_total` outcome of a failed send."""
    if isinstance(exc, SendPaused):
        return "paused"
    if isinstance(exc, Deferral):
        return "deferred"
    if isinstance(exc, AmbiguousSendError):
        return "ambiguous"
    return "transient" if isinstance(exc, TransientError) else "permanent"


def _encode_reply(reply: Reply) -> str:
    def option(o: ReplyOption) -> dict[str, Any]:
        return {"id": o.id, "title": o.title, "description": o.description}

    return json.dumps(
        {
            "text": reply.text,
            "kind": reply.kind.value,
            "buttons": [option(b) for b in reply.buttons],
            "sections": [
                {"title": s.title, "rows": [option(r) for r in s.rows]} for s in reply.sections
            ],
            "list_button": reply.list_button,
            "event": reply.event,
            "overridden": reply.overridden,
            "errors": list(reply.errors),
            "timings_ms": reply.timings_ms,
        }
    )


def _decode(fields: Mapping[str, str]) -> Memo:
    """The memo of stored fields; a field that does not decode counts as never written."""
    memo = Memo()
    for name, value in fields.items():
        if name.startswith(SENT_PREFIX) and name[len(SENT_PREFIX) :].isdigit():
            memo.sent[int(name[len(SENT_PREFIX) :])] = value
    try:
        if REPLY_FIELD in fields and BODIES_FIELD in fields:
            bodies = json.loads(fields[BODIES_FIELD])
            if isinstance(bodies, list) and all(isinstance(b, dict) for b in bodies):
                memo.reply = _reply_of(json.loads(fields[REPLY_FIELD]))
                memo.bodies = bodies
    except (ValueError, TypeError, KeyError) as exc:
        log_event(_log, "memo_unreadable", logging.WARNING, error=_name(exc))
        memo.reply = memo.bodies = None
    return memo


def _reply_of(data: dict[str, Any]) -> Reply:
    def option(raw: dict[str, Any]) -> ReplyOption:
        return ReplyOption(str(raw["id"]), str(raw["title"]), raw.get("description"))

    return Reply(
        text=str(data["text"]),
        kind=ReplyKind(data["kind"]),
        buttons=tuple(option(b) for b in data["buttons"]),
        sections=tuple(
            ListSection(str(s["title"]), tuple(option(r) for r in s["rows"]))
            for s in data["sections"]
        ),
        list_button=str(data["list_button"]),
        event=str(data["event"]),
        overridden=bool(data["overridden"]),
        errors=tuple(str(e) for e in data["errors"]),
        timings_ms={str(k): float(v) for k, v in data["timings_ms"].items()},
    )
