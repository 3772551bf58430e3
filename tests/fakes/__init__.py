"""Test doubles shared across suites: a fake OpenAI-compatible server and message builders."""

from __future__ import annotations

from pyloto_cli.domain.session import Role, Session, Turn
from pyloto_cli.domain.webhook import InboundMessage, MessageType
from pyloto_cli.ports import ResponderRequest


def inbound(
    text: str | None,
    *,
    message_id: str = "wamid.TEST1",
    msg_type: MessageType = MessageType.TEXT,
    key: str = "15550001111:US.1234",
) -> InboundMessage:
    """An inbound message as the parser would produce it (no real numbers)."""
    return InboundMessage(
        id=message_id,
        type=msg_type,
        raw_type=msg_type.value,
        timestamp=1_700_000_000,
        phone_number_id="15550001111",
        wa_id="15550009999",
        user_id="US.1234",
        profile_name="Test User",
        text=text,
        context_id=None,
        conversation_key=key,
        item={},
    )


def request(
    text: str | None,
    turn: int = 1,
    *,
    history: tuple[tuple[str, str], ...] = (),
    msg_type: MessageType = MessageType.TEXT,
) -> ResponderRequest:
    """A responder request; `history` is (role, text) pairs, oldest first."""
    message = inbound(text, msg_type=msg_type)
    session = None
    if history:
        turns = tuple(
            Turn(role=Role(role), text=said, message_id=f"wamid.H{i}", at=float(i))
            for i, (role, said) in enumerate(history)
        )
        session = Session(key=message.conversation_key, turns=turns)
    return ResponderRequest(message=message, session=session, turn_number=turn)
