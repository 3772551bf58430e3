"""The bench's own webhooks: one signed text message each, with a distinct wamid.

Senders are fictional `1555…` numbers; message `i` comes from user `i % users`, so with fewer
users than messages each conversation gets several turns (answered in order, one at a time).
It is addressed to business number `i % numbers`: pyloto paces sends per business number
(`PYLOTO_SEND_RATE_PER_NUMBER`, Meta's 80/s by default), so more numbers lift that cap.
Bodies and signatures are built before the run so that sending costs no more than a POST.
A `greetings` share of the messages (spread evenly) are short greetings and thanks instead of
numbered questions: the turns the optional reply cache (PYLOTO_REPLY_CACHE) can answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyloto_cli.domain.signature import sign

WABA_ID = "209000000000001"
QUESTIONS = (
    "Hi! What are your opening hours on Sunday?",
    "Do you deliver to the city centre?",
    "How much is the large pizza?",
    "Can I change my order from yesterday? 🙂",
    "Olá, vocês aceitam cartão de crédito?",
)
GREETINGS = ("Hi!", "Hello", "Olá", "Thanks!", "obrigado 🙏")


@dataclass(frozen=True, slots=True)
class Webhook:
    """One ready-to-send webhook: its inbound wamid, raw body and signature header."""

    wamid: str
    body: bytes
    signature: str


def user_number(user: int) -> str:
    """A fictional wa_id for user `user`."""
    return f"1555{user:07d}"


def business_number(number: int) -> tuple[str, str]:
    """(phone_number_id, display_phone_number) of fictional business number `number`."""
    return f"10900000{number:07d}", f"1555010{number:04d}"


def message_payload(
    wamid: str, user: int, text: str, timestamp: int, number: int = 0
) -> dict[str, Any]:
    """A `messages` webhook with one inbound text message, shaped like Meta's."""
    wa_id = user_number(user)
    phone_number_id, display = business_number(number)
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display, "phone_number_id": phone_number_id},
        "contacts": [{"profile": {"name": f"Bench User {user}"}, "wa_id": wa_id}],
        "messages": [
            {
                "from": wa_id,
                "id": wamid,
                "timestamp": str(timestamp),
                "type": "text",
                "text": {"body": text},
            }
        ],
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": [{"field": "messages", "value": value}]}],
    }


def message_text(index: int, greetings: float = 0.0) -> str:
    """Message `index`'s text: a greeting for a `greetings` share of indexes, else a question."""
    nth = int((index + 1) * greetings)
    if nth > int(index * greetings):
        return GREETINGS[(nth - 1) % len(GREETINGS)]
    return f"{QUESTIONS[index % len(QUESTIONS)]} (#{index})"


def build_webhooks(
    count: int,
    users: int,
    secret: bytes,
    run_id: str,
    numbers: int = 1,
    greetings: float = 0.0,
    user_of: Sequence[int] | None = None,
) -> list[Webhook]:
    """`count` signed webhooks from `users` senders to `numbers` business numbers (both round
    robin, or the sender of webhook i is `user_of[i]`), wamids unique to `run_id`; a `greetings`
    share (0..1) are greetings."""
    now = int(time.time())
    hooks: list[Webhook] = []
    for index in range(count):
        wamid = f"wamid.bench.{run_id}.{index:07d}"
        text = message_text(index, greetings)
        user = user_of[index] if user_of is not None else index % max(users, 1)
        payload = message_payload(wamid, user, text, now, index % max(numbers, 1))
        body = json.dumps(payload).encode()
        hooks.append(Webhook(wamid=wamid, body=body, signature=sign(secret, body)))
    return hooks
