"""An optional reply cache in front of any responder, for short context-free turns.

    responder = CachingResponder.from_settings(inner, settings)  # PYLOTO_REPLY_CACHE=true
    reply = await responder.respond(request)

Greetings and thanks ("Hi!", "olá", "thanks 🙏") make up much of a WhatsApp bot's traffic and
cost three LLM calls each. A turn is looked up before any LLM call; on a hit the stored reply is
returned at once (`timings_ms == {"cache": ...}`), logged as `reply_cache_hit`; on a miss
(`reply_cache_miss`) the wrapped responder answers and its reply may be stored.

Eligible turns (by shape: the event is not known before LLM#1): a `text` message that quotes no
earlier message (no `context`), at most `max_words` words and `MAX_CHARS` characters once
normalized, and no question mark (`?`, `¿`, fullwidth `?`), digit, link, e-mail or `@` mention.
Everything else goes straight to the wrapped responder and is neither counted nor logged.

Key: (business number, point of the conversation, normalized text). Normalized: NFKC,
casefolded, punctuation, emoji variation selectors and skin-tone modifiers dropped, spaces
collapsed ("Hi!!", " hi ", "HI." are one key; "👋🏽" and "👋" too). The point is `first` on a
conversation's first turn, whose reply the LLM writes with no history. On a later turn the
reply is written with the history in view, so the point is the previous assistant message
(a digest of its text): a reply to "thanks" given after "Your order is on its way" is reused
only after that same message, not after any later turn.

Stored: only replies with no fallen-back stage (`errors`), not overridden (handoff, opt-out),
and whose event is in `CACHEABLE_EVENTS` (LLM#1's `greeting` and `other`, where thanks and small
talk land): a short "cancel it" or "stop" classified as such is never reused. Entries live
`ttl_s` seconds (from when stored), at most `max_entries` (least recently used dropped first).

Limits: the cache is per process (each worker has its own, nothing shared, lost on restart).
The reuse is exact: a turn the LLM once misclassified as `other` is answered alike for the TTL,
and a later-turn reply that mentions earlier history (a name) is reused after the same previous
message. Keep the TTL short. Under asyncio a lookup and a store never interleave; two concurrent
misses for one key both call the wrapped responder (the later store wins). `pyloto bench`
counts the hit and miss events in the server's log (`CachingResponder.stats()` has them too).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Final, Self

from pyloto_cli.domain.reply import Reply
from pyloto_cli.domain.session import Role, Session
from pyloto_cli.domain.webhook import MessageType
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.ports import Responder, ResponderRequest
from pyloto_cli.settings import Settings

CACHEABLE_EVENTS: Final = frozenset({"greeting", "other"})
MAX_CHARS: Final = 64
MAX_ENTRIES: Final = 10_000
FIRST_TURN: Final = "first"

_logger = get_logger("llm")
_QUESTION_MARKS: Final = frozenset("?¿\uff1f")
_LINK: Final = re.compile(r"@|://|\bwww\.|\w\.(?:[a-z]{2,})\b", re.IGNORECASE)
_EMOJI_MODIFIERS: Final = frozenset(
    [chr(c) for c in range(0xFE00, 0xFE10)] + [chr(c) for c in range(0x1F3FB, 0x1F400)]
)


def normalize(text: str) -> str:
    """The text a cache key is made of: NFKC, casefolded, no punctuation or emoji variation."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = (
        " " if unicodedata.category(ch).startswith("P") else ch
        for ch in folded
        if ch not in _EMOJI_MODIFIERS
    )
    return " ".join("".join(kept).split())


def cacheable_text(text: str | None, max_words: int) -> str | None:
    """The normalized text of an eligible turn, or None (see the module docstring)."""
    if not text or len(text) > MAX_CHARS * 4:
        return None
    if any(ch in _QUESTION_MARKS or ch.isdigit() for ch in text) or _LINK.search(text):
        return None
    key = normalize(text)
    if not key or len(key) > MAX_CHARS or len(key.split()) > max_words:
        return None
    return key


def conversation_point(request: ResponderRequest) -> str:
    """`first` on a first turn, else a digest of the previous assistant message."""
    if request.turn_number <= 1:
        return FIRST_TURN
    previous = _last_assistant_text(request.session)
    digest = hashlib.sha256(normalize(previous).encode()).hexdigest()[:16]
    return f"after:{digest}"


def _last_assistant_text(session: Session | None) -> str:
    if session is not None:
        for turn in reversed(session.turns):
            if turn.role is Role.ASSISTANT:
                return turn.text
    return ""


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters of one cache since it was built (eligible lookups only)."""

    hits: int
    misses: int
    stored: int
    size: int


@dataclass(frozen=True, slots=True)
class _Entry:
    reply: Reply
    expires_at: float


class ReplyCache:
    """A TTL + LRU map from cache keys to replies; `clock` is monotonic seconds."""

    def __init__(
        self,
        ttl_s: float,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or max_entries < 1:
            raise ValueError("ttl_s must be > 0 and max_entries >= 1")
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, ...], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, ...]) -> Reply | None:
        """The live reply under `key` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.reply

    def put(self, key: tuple[str, ...], reply: Reply) -> None:
        """Store `reply` for the TTL, dropping the least recently used beyond the bound."""
        self._entries[key] = _Entry(reply, self._clock() + self._ttl_s)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


class CachingResponder:
    """`Responder` that answers eligible short turns from a `ReplyCache`, else asks `inner`.

    It does not own `inner` (the caller enters and closes it).
    """

    def __init__(
        self,
        inner: Responder,
        cache: ReplyCache,
        *,
        max_words: int = 4,
        events: frozenset[str] = CACHEABLE_EVENTS,
    ) -> None:
        self.inner = inner
        self._cache = cache
        self._max_words = max_words
        self._events = events
        self._hits = self._misses = self._stored = 0

    @classmethod
    def from_settings(cls, inner: Responder, settings: Settings) -> CachingResponder:
        """With PYLOTO_REPLY_CACHE_TTL_SECONDS and PYLOTO_REPLY_CACHE_MAX_WORDS."""
        cache = ReplyCache(settings.reply_cache_ttl_seconds)
        return cls(inner, cache, max_words=settings.reply_cache_max_words)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def stats(self) -> CacheStats:
        """Hits, misses and stores so far, and the live size (expired entries included)."""
        return CacheStats(self._hits, self._misses, self._stored, len(self._cache))

    def key(self, request: ResponderRequest) -> tuple[str, ...] | None:
        """The cache key of `request`, or None when the turn is not eligible."""
        message = request.message
        if message.type is not MessageType.TEXT or message.context_id or request.images:
            return None
        text = cacheable_text(message.text, self._max_words)
        if text is None:
            return None
        return (message.phone_number_id, conversation_point(request), text)

    async def respond(self, request: ResponderRequest) -> Reply:
        """The cached reply on a hit, else the wrapped responder's (stored when cacheable)."""
        start = time.perf_counter()
        key = self.key(request)
        if key is None:
            return await self.inner.respond(request)
        point = "first" if key[1] == FIRST_TURN else "later"
        cached = self._cache.get(key)
        if cached is not None:
            self._hits += 1
            elapsed = round((time.perf_counter() - start) * 1000.0, 3)
            log_event(_logger, "reply_cache_hit", point=point, detected=cached.event)
            return replace(cached, timings_ms={"cache": elapsed})
        self._misses += 1
        log_event(_logger, "reply_cache_miss", point=point)
        reply = await self.inner.respond(request)
        if self._storable(reply):
            self._cache.put(key, replace(reply, timings_ms={}))
            self._stored += 1
            log_event(
                _logger, "reply_cache_stored", logging.DEBUG, point=point, detected=reply.event
            )
        return reply

    def _storable(self, reply: Reply) -> bool:
        return not reply.errors and not reply.overridden and reply.event in self._events
