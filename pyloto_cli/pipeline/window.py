"""The 24-hour window and stale messages: what may still be sent, judged when the task runs.

WhatsApp lets a business send free-form messages only within 24 hours of the user's last
message; after that only an approved template goes through (Graph answers 131047 otherwise).
A task that waited through an outage must therefore look at the clock again:

- a message older than the stale limit (`PYLOTO_STALE_AFTER_SECONDS`, at most the window) is
  stored but not answered: an answer days late confuses more than it helps;
- just before every send, the conversation is read again (a person may have taken it over
  while the LLM ran) and the window checked: closed, the re-engagement template is sent
  instead (once per closed window, never to a user who opted out of marketing), or the task
  ends as `reply_expired`, which no retry can mend. Graph's 131047 takes the same path.

`check_before_send` is the pure rule; `gated_send` is what the send path calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from pyloto_cli.domain.conversation import ConversationState, Mode
from pyloto_cli.domain.errors import PermanentError
from pyloto_cli.domain.outbound import template_body
from pyloto_cli.domain.task import JsonObject
from pyloto_cli.domain.webhook import InboundMessage
from pyloto_cli.logs import mask_phone
from pyloto_cli.ports import DeliveryStatus, Sender, SendResult, SessionStore

OUTSIDE_WINDOW_CODE = 131047  # Graph: free-form message outside the 24-hour window
REPLY_EXPIRED = "reply_expired"
MESSAGE_STALE = "message_stale"
MAX_STALE_AFTER_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class ReengageTemplate:
    """The approved template sent when the window has closed before the reply could go."""

    name: str
    language: str

    def body(self, msg: InboundMessage) -> JsonObject:
        """The Graph body sent to `msg`'s user (no parameters: the template must need none),
        with the inbound wamid as callback data, as every reply carries it."""
        return template_body(msg.recipient, self.name, self.language, callback_data=msg.id)


@dataclass(frozen=True, slots=True)
class WindowRules:
    """The stale limit and the optional re-engagement template (from settings, at the edge)."""

    stale_after_s: float = MAX_STALE_AFTER_S
    template: ReengageTemplate | None = None


class Verdict(StrEnum):
    """What the send path may do."""

    SEND = "send"  # the free-form reply goes
    HOLD = "hold"  # the conversation is no longer the assistant's: nothing is sent
    TEMPLATE = "template"  # the window has closed: the re-engagement template goes instead
    EXPIRED = "expired"  # the window has closed and nothing may go: `reply_expired`


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict and why."""

    verdict: Verdict
    reason: str


def is_stale(msg: InboundMessage, now: float, stale_after_s: float) -> bool:
    """True when the message's own timestamp is more than `stale_after_s` before `now` (a
    message without one is judged fresh: its age is unknown, not old)."""
    return msg.timestamp > 0 and now - msg.timestamp > stale_after_s


def stale_messages(
    msgs: Sequence[InboundMessage], now: float, stale_after_s: float
) -> list[InboundMessage]:
    """The messages of `msgs` that are too old to answer."""
    return [m for m in msgs if is_stale(m, now, stale_after_s)]


def with_inbound(state: ConversationState, msg: InboundMessage, now: float) -> ConversationState:
    """`state` with the message being answered counted as the user's latest (a message without
    a timestamp counts as received now)."""
    at = float(msg.timestamp) if msg.timestamp > 0 else now
    if state.last_inbound_at is not None and state.last_inbound_at >= at:
        return state
    return state.with_last_inbound(at)


def check_before_send(
    state: ConversationState, now: float, template: ReengageTemplate | None = None
) -> Decision:
    """May a free-form message go to this conversation now, and if not, what instead."""
    if state.mode is not Mode.ASSISTANT:
        return Decision(Verdict.HOLD, f"conversation is {state.mode.value}")
    if state.window_open(now):
        return Decision(Verdict.SEND, "window open")
    return window_closed(state, template)


def window_closed(state: ConversationState, template: ReengageTemplate | None) -> Decision:
    """What to send once the window has closed: the template, at most once per window."""
    if template is None:
        return Decision(Verdict.EXPIRED, REPLY_EXPIRED)
    if state.marketing_opt_out:
        return Decision(Verdict.EXPIRED, f"{REPLY_EXPIRED}: the user opted out of marketing")
    if state.last_inbound_at is not None and state.reengaged_window == state.last_inbound_at:
        return Decision(Verdict.EXPIRED, f"{REPLY_EXPIRED}: the template already went")
    return Decision(Verdict.TEMPLATE, "reengage_template")


@dataclass(frozen=True, slots=True)
class Gated:
    """What `gated_send` did: what Graph accepted (None when nothing went), the decision, and
    the state it was taken on (its `last_inbound_at` names the window)."""

    sent: SendResult | None
    decision: Decision
    state: ConversationState


async def gated_send(
    sessions: SessionStore,
    sender: Sender,
    rules: WindowRules,
    msg: InboundMessage,
    body: JsonObject,
    now: float,
    leaving: Mode | None = None,
) -> Gated:
    """Read the conversation again, check it (`check_before_send`), and send `body`, the
    template, or nothing. Graph's 131047 (the window closed after all) is handled as a closed
    window; every other failure is raised as the sender raised it.

    `leaving` is set for a keyword's confirmation: the mode its own task is moving the
    conversation out of does not hold it back (an opt-in is confirmed while still stored as
    `opted_out`), and a closed window sends nothing instead of the template.
    """
    head = await sessions.head(msg.conversation_key)
    stored = ConversationState.from_meta(head.meta if head else {})
    if leaving is not None and stored.mode is leaving:
        stored = replace(stored, mode=Mode.ASSISTANT)
    state = with_inbound(stored, msg, now)
    template = rules.template if leaving is None else None
    decision = check_before_send(state, now, template)
    if decision.verdict is Verdict.SEND:
        try:
            return Gated(await sender.send(msg.phone_number_id, body), decision, state)
        except PermanentError as exc:
            if exc.code != OUTSIDE_WINDOW_CODE:
                raise
            decision = window_closed(state, template)
    if decision.verdict is Verdict.TEMPLATE and template is not None:
        sent = await sender.send(msg.phone_number_id, template.body(msg))
        return Gated(sent, decision, state)
    return Gated(None, decision, state)


def expired_status(msg: InboundMessage, now: float) -> DeliveryStatus:
    """The `failed` delivery a `reply_expired` task leaves, under the inbound wamid, so that
    the failed-deliveries list and `queue stats` show it beside Graph's own failures."""
    return DeliveryStatus(
        message_id=msg.id,
        status="failed",
        timestamp=int(now),
        phone_number_id=msg.phone_number_id,
        recipient=mask_phone(msg.wa_id or msg.user_id),
        error_code=OUTSIDE_WINDOW_CODE,
        error_title=REPLY_EXPIRED,
        callback_data=msg.id,
    )
