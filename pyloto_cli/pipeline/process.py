"""One task, end to end: dedupe, session, responder, Graph body, send, session save, done.

The order of the side effects is the at-least-once contract:

1. claim the wamid in the deduper (a live claim elsewhere -> retry later; done -> skip);
2. load the session (at the same time as the claim: one round trip instead of two, one
   transaction on SQLite); if it already records a reply sent for this wamid (a crash between
   the session save and the done marker), only mark it done: the reply did leave;
2b. apply the conversation's mode rules (`pipeline/conversation.py`): an opt-out / opt-in
   keyword's confirmation replaces the responder; a conversation a person handles (or that
   opted out) gets its messages stored and marked done, nothing sent;
3. ask the responder, build the body, send it from the number that received the message; when
   the send or the save fails, the reply and each part Meta accepted are kept in the task memo
   first (pipeline/delivery.py; a long reply's parts as they go): a retry sends what is left of
   the same reply, and asks the LLM nothing;
4. append the user's turn and the reply (with the sent wamid) to the session, and mark the
   wamid done, at once: either record alone keeps a redelivery from being answered again.

A crash anywhere before step 4 makes the queue hand the task out again: the reply is sent again
only if the crash came between Meta's answer and the memo's record of it (or, without a durable
memo store, between the send and both records of step 4), and it is never skipped. Failures are
outcomes, not exceptions: a Deferral (pyloto's own wait) -> defer, TransientError -> retry
(honouring its delay, until the retry horizon), PermanentError -> dead letter with the reason.
Anything else the worker treats as a retry that spends an attempt.

A burst (`process_batch`, burst coalescing) follows the same steps once for all its messages:
every wamid is claimed; one reply answers the last message that needs one, from all the users'
words; the session gets each user turn and that reply in one append; every wamid is marked
done. A message whose user turn is already in the session counts as answered, so a burst
retried one message at a time after a crash before step 4 is not answered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from pyloto_cli.domain import ids
from pyloto_cli.domain.conversation import (
    REENGAGED_WINDOW_KEY,
    ConversationState,
    Mode,
)
from pyloto_cli.domain.errors import (
    AmbiguousSendError,
    Deferral,
    InvalidTask,
    PermanentError,
    TransientError,
)
from pyloto_cli.domain.long_reply import DEFAULT_MAX_PARTS, reply_bodies
from pyloto_cli.domain.reply import Reply
from pyloto_cli.domain.session import Role, Session, Turn
from pyloto_cli.domain.task import FailureKind, JsonObject, Task, TaskKind
from pyloto_cli.domain.webhook import InboundMessage, inbound_message, needs_reply, status_update
from pyloto_cli.logs import get_logger, log_event, mask_phone
from pyloto_cli.pipeline import conversation as modes
from pyloto_cli.pipeline import window
from pyloto_cli.pipeline.delivery import Delivery, Gate, Memo
from pyloto_cli.pipeline.media import MediaReader, read_media
from pyloto_cli.ports import (
    NO_METRICS,
    ClaimResult,
    Deduper,
    DeliveryStatus,
    Metrics,
    Responder,
    ResponderRequest,
    Sender,
    SessionStore,
    StatusStore,
    TaskMemos,
)

_log = get_logger("pipeline")


class Outcome(StrEnum):
    """What became of a task."""

    DONE = "done"
    SKIPPED = "skipped"  # a duplicate: already answered
    RETRY = "retry"
    DEFER = "defer"  # sending is paused (token rejected): wait without spending an attempt
    DEAD = "dead"
    REPLY_EXPIRED = "reply_expired"  # the 24-hour window closed before the reply could go


@dataclass(frozen=True, slots=True)
class TaskResult:
    """The outcome of one attempt, with the reason, delay and failure kind the queue needs."""

    outcome: Outcome
    reason: str | None = None
    delay_s: float | None = None
    sent_id: str | None = None
    reply: Reply | None = None
    failure: FailureKind | None = None  # stored with a retry, for the next attempt
    # a known transient failure's clock: the message's own timestamp (settlement's deadline)
    since: float | None = None
    sent_ids: tuple[str, ...] = ()  # every part of the reply, in order


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The knobs the pipeline reads (from Settings, at the edge)."""

    history_turns: int = 50
    dedupe_ttl_s: float = 7 * 24 * 3600.0
    claim_ttl_s: float = 60.0
    in_progress_retry_s: float = 5.0
    mark_read: bool = False
    typing_indicator: bool = False
    # A pull queue (SQLite, memory, Redis Streams) hands a task to one worker at a time and
    # re-leases it only after the holder stopped renewing: its lease, not the dedupe claim, says
    # who owns the task. A claim left by a killed worker must not block the retry then.
    exclusive_queue: bool = True
    # who answers: keywords, confirmations, the handoff timeout (pipeline/conversation.py)
    conversation: modes.ConversationRules = field(default_factory=modes.ConversationRules)
    # The stale limit and the 24-hour window's checks before every send (pipeline/window.py):
    # every runtime built from settings has them; None leaves them out, for tests of the
    # other rules on recorded timestamps.
    window_rules: window.WindowRules | None = None
    max_reply_parts: int = DEFAULT_MAX_PARTS
    # what attempts paid for is kept this long at most: past the 24-hour window no retry sends
    memo_ttl_s: float = 26 * 3600.0


class Pipeline:
    """Runs tasks through the ports it is given: for the worker, /tasks/process and replay."""

    def __init__(
        self,
        *,
        sessions: SessionStore,
        deduper: Deduper,
        responder: Responder,
        sender: Sender,
        statuses: StatusStore,
        config: PipelineConfig | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics = NO_METRICS,
        memos: TaskMemos | None = None,
        media: MediaReader | None = None,
    ) -> None:
        self.memos = memos
        self.media = media  # reads a turn's voice notes, images and documents (pipeline/media.py)
        self.sessions = sessions
        self.metrics = metrics
        self.deduper = deduper
        self.responder = responder
        self.sender = sender
        self.statuses = statuses
        self.config = config or PipelineConfig()
        self._clock = clock
        self.delivery = Delivery(
            memos,  # None: what attempts paid for is held in this process only
            ttl_s=self.config.memo_ttl_s,
            metrics=metrics,
        )

    async def process(
        self, task: Task, attempt: int = 1, previous: FailureKind | None = None
    ) -> TaskResult:
        """Run one attempt of `task`; never raises for transient or permanent failures.

        `previous` is what the previous attempt failed with (the queue keeps it): an ambiguous
        send (the reply may have reached Meta) is retried once, never twice.
        """
        try:
            if task.kind is TaskKind.MESSAGE:
                return await self._message(task)
            if task.kind is TaskKind.STATUS:
                return await self._status(task)
            if modes.is_conversation_event(task):
                sessions, turns = self.sessions, self.config.history_turns
                await modes.apply_conversation_event(task, sessions, turns, self._clock())
                return TaskResult(Outcome.DONE)
            log_event(_log, "webhook_event", field=task.field, task_id=task.task_id)
            return TaskResult(Outcome.DONE)
        except (TransientError, PermanentError) as exc:
            return _failed(exc, previous, _since(task))

    async def process_batch(
        self, tasks: Sequence[Task], attempt: int = 1, previous: FailureKind | None = None
    ) -> TaskResult:
        """Answer a burst of one conversation's MESSAGE tasks as one turn with one reply.

        The responder sees the last message with the users' texts joined by newlines; the reply
        answers the last message (its wamid is the callback data); the session gets every
        user turn, then the one reply; every wamid is marked done. The result is the outcome
        of the whole burst, for every task of it. One task is simply `process`.
        """
        if len(tasks) == 1:
            return await self.process(tasks[0], attempt, previous)
        try:
            return await self._burst([inbound_message(task) for task in tasks])
        except (TransientError, PermanentError) as exc:
            return _failed(exc, previous, _since(tasks[-1]))

    async def _status(self, task: Task) -> TaskResult:
        update = status_update(task)
        first_error = update.errors[0] if update.errors else None
        recipient = update.recipient_id or update.recipient_user_id
        status = DeliveryStatus(
            message_id=update.id,
            status=update.raw_status,
            timestamp=update.timestamp,
            phone_number_id=update.phone_number_id,
            recipient=mask_phone(recipient),
            error_code=first_error.code if first_error else None,
            error_title=first_error.title if first_error else None,
            callback_data=update.biz_opaque_callback_data,
        )
        if not await self.statuses.record(status):  # new statuses are logged by the store
            log_event(_log, "message_status", message_id=update.id, duplicate=True)
        return TaskResult(Outcome.DONE)

    async def _message(self, task: Task) -> TaskResult:
        return await self._burst([inbound_message(task)])

    async def _burst(self, msgs: list[InboundMessage]) -> TaskResult:
        """Claim every wamid (done ones are skipped), then answer what is left as one turn.

        The session is loaded while the claims are made: no one else writes it meanwhile (the
        queue hands a conversation's messages out one at a time, and a live claim defers us).
        """
        claimed: list[InboundMessage] = []
        try:
            # the memo too: on SQLite all three share one trip to the writer thread
            claims, loaded, memo = await asyncio.gather(
                self._claim_all(msgs, claimed),
                self.sessions.load(msgs[-1].conversation_key),
                self.delivery.recall(msgs[-1].id),
                return_exceptions=True,
            )
            if isinstance(claims, BaseException):
                raise claims
            if isinstance(loaded, BaseException):
                raise loaded
            if claims is not None:
                await self._release(claimed)  # only ours: the other worker keeps its claim
                return claims
            if not claimed:
                return TaskResult(Outcome.SKIPPED)
            fetched = None if isinstance(memo, BaseException) else (msgs[-1].id, memo)
            return await self._answer(claimed, loaded, fetched)
        except BaseException:
            await self._release(claimed)
            raise

    async def _claim_all(
        self, msgs: list[InboundMessage], claimed: list[InboundMessage]
    ) -> TaskResult | None:
        """Claim each wamid into `claimed`; a DEFER result when another worker holds one."""
        for msg in msgs:
            claim = await self.deduper.claim(msg.id, self.config.claim_ttl_s)
            if claim is ClaimResult.DONE:
                log_event(_log, "duplicate_skipped", message_id=msg.id)
                self.metrics.duplicates_skipped("dedupe")
                continue
            if claim is ClaimResult.IN_PROGRESS and not self.config.exclusive_queue:
                return TaskResult(  # another instance is on it: wait, spending no attempt
                    Outcome.DEFER,
                    reason="claimed by another worker",
                    delay_s=self.config.in_progress_retry_s,
                )
            claimed.append(msg)
        return None

    async def _release(self, msgs: list[InboundMessage]) -> None:
        for msg in msgs:
            await self.deduper.release(msg.id)

    async def _answer(
        self,
        msgs: list[InboundMessage],
        session: Session | None,
        fetched: tuple[str, Memo] | None = None,
    ) -> TaskResult:
        fresh: list[InboundMessage] = []
        for msg in msgs:
            if session is not None and _already_answered(session, msg.id):
                await self.deduper.mark_done(msg.id, self.config.dedupe_ttl_s)
                log_event(_log, "duplicate_skipped", message_id=msg.id, reason="session")
                self.metrics.duplicates_skipped("session")
            else:
                fresh.append(msg)
        if not fresh:
            return TaskResult(Outcome.SKIPPED)
        tracker = modes.ConversationTracker.of(msgs[-1].conversation_key, session)
        verdict = modes.on_inbound(tracker, self.config.conversation, fresh, self._clock())
        replying = [m for m in fresh if needs_reply(m)]
        if verdict.keyword_message is not None:  # its confirmation, not the LLM's reply
            confirm = Reply(text=verdict.confirmation or "", event=verdict.event)
            keyword = verdict.keyword_message
            return await self._reply_once(fresh, keyword, session, tracker, confirm, fetched)
        stale = self._stale(replying) if verdict.answer else []  # mode rules come first
        replying = [m for m in replying if m not in stale]
        if not replying or not verdict.answer:  # reactions; stale; or a person handles it
            extra = tracker.meta()
            for msg in fresh:
                turn = _user_turn(msg, self._clock())
                await self._save(msg, (turn,), done=(msg,), extra=extra)
            tracker.log_changes()
            if stale:
                return TaskResult(Outcome.SKIPPED, reason=window.MESSAGE_STALE)
            return TaskResult(Outcome.DONE)
        return await self._reply_once(fresh, replying[-1], session, tracker, None, fetched)

    async def _reply_once(
        self,
        msgs: list[InboundMessage],
        last: InboundMessage,
        session: Session | None,
        tracker: modes.ConversationTracker,
        fixed: Reply | None = None,
        fetched: tuple[str, Memo] | None = None,
    ) -> TaskResult:
        """One reply to `last` for the words of every message in `msgs` (often just `last`);
        `fixed` is sent as it is, without the read receipt or the LLM (a confirmation).
        `fetched` is the memo read with the session, and the wamid it was read for."""
        ids.phone_number_id(last.phone_number_id)  # no number to reply from: dead, not asked
        now = self._clock()
        turn_number = _turn_number(session)
        if fetched is not None and fetched[0] == last.id:
            memo = fetched[1]
        else:
            memo = await self.delivery.recall(last.id)
        reply, bodies = memo.reply, memo.bodies
        if reply is None or bodies is None:  # not paid for yet: ask the responder
            composed = await self._compose(msgs, last, session, turn_number, fixed, memo)
            reply, bodies, msgs, last = composed
        elif memo.fully_sent:
            log_event(_log, "reply_already_sent", message_id=last.id, parts=len(bodies))
        leaving = tracker.before.mode if fixed else None
        try:
            sent_ids, stopped = await self.delivery.send_parts(
                last.id, memo, bodies, self._gate(last, leaving)
            )
        except BaseException:  # the retry sends this same reply, and no accepted part again
            await self.delivery.persist(last.id, memo)
            raise
        if stopped is not None:  # held back before a part went: the mode or the window
            result = await self._not_replied(msgs, last, reply, stopped, turn_number, tracker)
            await self.delivery.forget(last.id, memo)
            return result
        user_turns = tuple(_user_turn(m, now, reply.event if m is last else None) for m in msgs)
        bot_turn = Turn(
            Role.ASSISTANT,
            reply.text,
            sent_ids[0],
            self._clock(),
            message_type=reply.kind.value,
            reply_to=last.id,
        )
        modes.after_reply(tracker, reply.event, self._clock())
        try:
            await self._save(
                last,
                (*user_turns, bot_turn),
                done=msgs,
                turn_number=turn_number,
                extra=tracker.meta(),
            )
        except BaseException:  # sent: the retry saves the session and sends nothing
            await self.delivery.persist(last.id, memo)
            raise
        tracker.log_changes()
        await self.delivery.forget(last.id, memo)
        if len(msgs) > 1:
            log_event(_log, "burst_answered", message_id=last.id, messages=len(msgs))
        return TaskResult(Outcome.DONE, sent_id=sent_ids[0], reply=reply, sent_ids=tuple(sent_ids))

    async def _compose(
        self,
        msgs: list[InboundMessage],
        last: InboundMessage,
        session: Session | None,
        turn_number: int,
        fixed: Reply | None,
        memo: Memo,
    ) -> tuple[Reply, list[JsonObject], list[InboundMessage], InboundMessage]:
        """Read the turn's media, ask the responder (or take `fixed`, a confirmation, without
        the read receipt or the LLM), build the bodies, and keep them in the memo before any
        send. The messages come back with their media read (a voice note's transcript)."""
        async with contextlib.AsyncExitStack() as media_files:  # downloads go when it closes
            if fixed is not None:
                reply = fixed
            else:
                if self.config.mark_read or self.config.typing_indicator:
                    await self._mark_read(last)
                read = await read_media(self.media, msgs, last, media_files, self.memos)
                msgs, last = list(read.messages), read.last
                joined = "\n".join(m.text for m in msgs if m.text and needs_reply(m)) or None
                asked = last if joined == last.text else replace(last, text=joined)
                request = ResponderRequest(asked, session, turn_number, images=read.images)
                reply = read.reply or await self.responder.respond(request)
        for stage in reply.errors:
            log_event(_log, "reply_fallback", stage=stage, message_id=last.id)
        bodies = reply_bodies(
            reply, last.recipient, callback_data=last.id, max_parts=self.config.max_reply_parts
        )
        await self.delivery.remember_reply(last.id, memo, reply, bodies)
        return reply, bodies, msgs, last

    def _stale(self, msgs: list[InboundMessage]) -> list[InboundMessage]:
        """The messages too old to answer (logged `message_stale`); none without window rules."""
        rules = self.config.window_rules
        if rules is None:
            return []
        now = self._clock()
        stale = window.stale_messages(msgs, now, rules.stale_after_s)
        for msg in stale:
            age = round(now - msg.timestamp)
            log_event(_log, "message_stale", message_id=msg.id, age_s=age)
        return stale

    def _gate(self, msg: InboundMessage, leaving: Mode | None) -> Gate:
        """How each part of a reply is sent: through the checks just before a send (mode,
        window), when configured; `leaving` is the mode a keyword's confirmation takes the
        conversation out of."""
        rules = self.config.window_rules

        async def send(body: JsonObject) -> window.Gated:
            if rules is None:
                sent = await self.sender.send(msg.phone_number_id, body)
                return window.Gated(
                    sent, window.Decision(window.Verdict.SEND, "unchecked"), _NO_STATE
                )
            return await window.gated_send(
                self.sessions, self.sender, rules, msg, body, self._clock(), leaving
            )

        return send

    async def _not_replied(
        self,
        msgs: list[InboundMessage],
        last: InboundMessage,
        reply: Reply,
        gated: window.Gated,
        turn_number: int,
        tracker: modes.ConversationTracker,
    ) -> TaskResult:
        """The reply did not go: the conversation left the assistant (skipped), the window had
        closed (the template went instead, or `reply_expired`). The user's turns are kept."""
        now, decision = self._clock(), gated.decision
        turns = tuple(_user_turn(m, now) for m in msgs)
        if gated.sent is not None:  # the re-engagement template went, once for this window
            template = self.config.window_rules.template if self.config.window_rules else None
            bot = Turn(
                Role.ASSISTANT,
                f"[template {template.name if template else ''}]",
                gated.sent.message_id,
                now,
                message_type="template",
                reply_to=last.id,
            )
            self.metrics.graph_send("sent")
            window_at = gated.state.last_inbound_at
            meta = tracker.meta()
            if window_at is not None:
                meta[REENGAGED_WINDOW_KEY] = repr(window_at)
            await self._save(last, (*turns, bot), done=msgs, turn_number=turn_number, extra=meta)
            tracker.log_changes()
            log_event(_log, "reengage_template_sent", message_id=last.id)
            return TaskResult(
                Outcome.DONE, reason=decision.reason, sent_id=gated.sent.message_id, reply=reply
            )
        await self._save(last, turns, done=msgs, turn_number=turn_number, extra=tracker.meta())
        tracker.log_changes()
        if decision.verdict is window.Verdict.HOLD:
            log_event(_log, "reply_held", message_id=last.id, reason=decision.reason)
            return TaskResult(Outcome.SKIPPED, reason=decision.reason, reply=reply)
        await self.statuses.record(window.expired_status(last, now))
        log_event(_log, window.REPLY_EXPIRED, logging.WARNING, message_id=last.id)
        return TaskResult(Outcome.REPLY_EXPIRED, reason=decision.reason, reply=reply)

    async def _save(
        self,
        msg: InboundMessage,
        turns: tuple[Turn, ...],
        *,
        done: Sequence[InboundMessage],
        turn_number: int | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        """Append `turns` to `msg`'s session and mark every wamid of `done` handled, at once.

        Either record alone keeps a redelivery from being answered again (the claim finds the
        wamid done, or the session holds the reply), so neither waits for the other: one round
        trip (on SQLite, one transaction), and a failing session store after the send costs
        the exchange's history, not a second reply. Any failure is raised (a retry) after
        both have been tried.
        """
        meta = {"phone_number_id": msg.phone_number_id}
        if msg.wa_id:
            meta["wa_id"] = msg.wa_id
        if msg.user_id:
            meta["user_id"] = msg.user_id
        if turn_number is not None:
            meta["user_turns"] = str(turn_number)
        meta.update(extra or {})  # the conversation's state, changed with the turns
        ttl = self.config.dedupe_ttl_s
        appended, *marked = await asyncio.gather(
            self.sessions.append(msg.conversation_key, turns, self.config.history_turns, meta),
            *(self.deduper.mark_done(handled.id, ttl) for handled in done),
            return_exceptions=True,
        )
        if not isinstance(appended, BaseException):
            log_event(
                _log,
                "session_saved",
                message_id=msg.id,
                conversation=modes.masked_key(msg.conversation_key),
                turns_added=len(turns),
            )
        for outcome in (appended, *marked):
            if isinstance(outcome, BaseException):
                raise outcome

    async def _mark_read(self, msg: InboundMessage) -> None:
        try:
            await self.sender.mark_read(
                msg.phone_number_id, msg.id, typing=self.config.typing_indicator
            )
        except (TransientError, PermanentError) as exc:  # a receipt is never worth a retry
            log_event(_log, "mark_read_failed", message_id=msg.id, reason=_reason(exc))


_NO_STATE = ConversationState()


def _user_turn(msg: InboundMessage, at: float, event: str | None = None) -> Turn:
    """The user's turn of `msg`, recorded at `at` (with the event its reply detected)."""
    return Turn(Role.USER, msg.text or "", msg.id, at, event, msg.raw_type)


def _already_answered(session: Session, message_id: str) -> bool:
    """A reply to it was saved, or its user turn was (saved only after the reply, if any, was
    sent: a coalesced burst's earlier messages have no reply of their own)."""
    return any(
        (t.role is Role.ASSISTANT and t.reply_to == message_id)
        or (t.role is Role.USER and t.message_id == message_id)
        for t in session.turns
    )


def _failed(
    exc: TransientError | PermanentError, previous: FailureKind | None, since: float | None
) -> TaskResult:
    """The outcome of an attempt that raised `exc`, after one that failed with `previous`;
    a transient failure carries `since`, the clock its retries are bounded by."""
    if isinstance(exc, Deferral):
        return TaskResult(Outcome.DEFER, reason=_reason(exc), delay_s=exc.retry_after, since=since)
    if isinstance(exc, AmbiguousSendError):
        if previous is FailureKind.AMBIGUOUS_SEND:
            return TaskResult(Outcome.DEAD, reason=f"{_reason(exc)}; not retried twice")
        return TaskResult(
            Outcome.RETRY,
            reason=_reason(exc),
            delay_s=exc.retry_after,
            failure=FailureKind.AMBIGUOUS_SEND,
        )
    if isinstance(exc, TransientError):
        return TaskResult(Outcome.RETRY, reason=_reason(exc), delay_s=exc.retry_after, since=since)
    return TaskResult(Outcome.DEAD, reason=_reason(exc))


def _since(task: Task) -> float:
    """The clock of a task's retries: a message's own timestamp, else when it was received."""
    if task.kind is TaskKind.MESSAGE:
        try:
            return float(inbound_message(task).timestamp)
        except InvalidTask:
            pass
    return task.received_at


def _turn_number(session: Session | None) -> int:
    if session is None:
        return 1
    counted = session.meta.get("user_turns")
    if counted is not None and counted.isdigit():
        return int(counted) + 1
    return session.user_turns + 1


def _reason(exc: TransientError | PermanentError) -> str:
    code = f" (code {exc.code})" if exc.code is not None else ""
    return f"{type(exc).__name__}: {exc.reason}{code}"
