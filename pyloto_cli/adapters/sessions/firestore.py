"""Sessions in Firestore: a head document per conversation, one document per turn beneath it.

Layout: `{collection}/{sha256(key)}` holds `key`, `updated_at`, `meta` and the last `max_turns`;
its subcollection `turns/{seq}` holds one turn each, where `seq` is a sortable id (nanosecond
clock, index within the append, random suffix).

Why not one document rewritten in a transaction: Firestore allows about one write per second
per document, and concurrent read-modify-write transactions on one document abort and retry,
so a burst of appends to one conversation would crawl, then fail once the client's retries
ran out. An append here is a blind batch (the head merged, the new turn documents created)
that never conflicts, so concurrent appends all land, in one round trip. The history is then
trimmed to the newest `max_turns` (deletes are idempotent, so concurrent trims agree), and
reads order by `seq` and stop at `max_turns`, so a read never sees more than the bound even
before a trim.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from google.cloud import firestore

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.firestore_db import FirestoreAttachment, doc_id
from pyloto_cli.domain.session import Session, Turn
from pyloto_cli.ports import SessionHead

_TURNS = "turns"
_BATCH_LIMIT = 500  # Firestore's writes per commit


class FirestoreSessionStore(Attached):
    """`SessionStore` on Firestore (or its emulator, via FIRESTORE_EMULATOR_HOST)."""

    def __init__(
        self,
        project: str | None = None,
        *,
        client: firestore.AsyncClient | None = None,
        collection: str = "pyloto_sessions",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.project = project
        self.collection = collection
        self._fs = FirestoreAttachment(project, collection, client, role="FirestoreSessionStore")
        super().__init__(self._fs)
        self._clock = clock
        self._last_ns = 0

    # --- SessionStore -------------------------------------------------------------------------

    async def load(self, key: str) -> Session | None:
        """The session, or None if there is none."""
        head = await self._head(key).get()
        if not head.exists:
            return None
        return await self._session(head)

    async def save(self, session: Session) -> None:
        """Replace the stored session (its turns too)."""
        head = self._head(session.key)
        old = [ref async for ref in head.collection(_TURNS).list_documents()]
        writes: list[tuple[str, Any, dict[str, Any]]] = [("delete", r, {}) for r in old]
        for seq, turn in zip(self._seqs(len(session.turns)), session.turns, strict=True):
            writes.append(("set", head.collection(_TURNS).document(seq), _turn_doc(seq, turn)))
        writes.append(
            (
                "set",
                head,
                {"key": session.key, "updated_at": session.updated_at, "meta": dict(session.meta)},
            )
        )
        await self._commit(writes)

    async def append(
        self, key: str, turns: Sequence[Turn], max_turns: int, meta: dict[str, str] | None = None
    ) -> Session:
        """Append `turns` in one blind batch (creating the session), then trim to `max_turns`."""
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, not {max_turns}")
        head = self._head(key)
        fields: dict[str, Any] = {"key": key, "updated_at": self._clock(), "max_turns": max_turns}
        if meta:
            fields["meta"] = dict(meta)
        batch = self._db.batch()
        batch.set(head, fields, merge=True)
        for seq, turn in zip(self._seqs(len(turns)), turns, strict=True):
            batch.create(head.collection(_TURNS).document(seq), _turn_doc(seq, turn))
        await batch.commit()
        await self._trim(head, max_turns)
        session = await self.load(key)
        if session is None:  # deleted concurrently, right after our write
            return Session(key=key, updated_at=fields["updated_at"], meta=dict(meta or {}))
        return session

    async def delete(self, key: str) -> bool:
        """Delete the head and every turn; True if the session existed."""
        head = self._head(key)
        existed = (await head.get()).exists
        refs = [ref async for ref in head.collection(_TURNS).list_documents()]
        await self._commit([("delete", ref, {}) for ref in [*refs, head]])
        return bool(existed)

    async def exists(self, key: str) -> bool:
        """True if a session is stored under `key`."""
        return bool((await self._head(key).get()).exists)

    # --- helpers --------------------------------------------------------------------------------

    @property
    def _db(self) -> firestore.AsyncClient:
        return self._fs.client

    def _head(self, key: str) -> Any:
        return self._db.collection(self.collection).document(doc_id(key))

    def _seqs(self, count: int) -> list[str]:
        """Sortable, unique ids: nanoseconds (never going back in this process), index, random."""
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        salt = uuid.uuid4().hex[:12]
        return [f"{self._last_ns:020d}-{i:05d}-{salt}" for i in range(count)]

    async def _session(self, head: Any) -> Session:
        data: dict[str, Any] = head.to_dict() or {}
        query = head.reference.collection(_TURNS).order_by(
            "seq", direction=firestore.Query.DESCENDING
        )
        if data.get("max_turns"):
            query = query.limit(int(data["max_turns"]))
        newest_first = [Turn.from_dict(snap.to_dict() or {}) async for snap in query.stream()]
        return Session(
            key=str(data.get("key", "")),
            turns=tuple(reversed(newest_first)),
            updated_at=float(data.get("updated_at", 0.0)),
            meta={str(k): str(v) for k, v in (data.get("meta") or {}).items()},
        )

    async def _trim(self, head: Any, max_turns: int) -> None:
        query = (
            head.collection(_TURNS)
            .order_by("seq", direction=firestore.Query.DESCENDING)
            .offset(max_turns)
            .select([])
        )
        stale = [snap.reference async for snap in query.stream()]
        if stale:
            await self._commit([("delete", ref, {}) for ref in stale])

    async def _commit(self, writes: list[tuple[str, Any, dict[str, Any]]]) -> None:
        """Commit in batches of at most 500 writes (one batch for any normal history)."""
        for start in range(0, len(writes), _BATCH_LIMIT):
            batch = self._db.batch()
            for op, ref, data in writes[start : start + _BATCH_LIMIT]:
                if op == "delete":
                    batch.delete(ref)
                else:
                    batch.set(ref, data)
            await batch.commit()

    async def head(self, key: str) -> SessionHead | None:
        """The head document alone (one read; the turns subcollection is not queried)."""
        snap = await self._head(key).get()
        if not snap.exists:
            return None
        return _session_head(snap.to_dict() or {})

    async def list(self, limit: int = 10_000) -> Sequence[SessionHead]:
        """Up to `limit` sessions without turns, most recently updated first: one query on
        the head documents (their turn subcollections are never read)."""
        query = (
            self._db.collection(self.collection)
            .select(["key", "updated_at", "meta"])
            .order_by("updated_at", direction=firestore.Query.DESCENDING)
            .limit(limit)
        )
        return [_session_head(snap.to_dict() or {}) async for snap in query.stream()]


def _session_head(data: dict[str, Any]) -> SessionHead:
    meta = {str(k): str(v) for k, v in (data.get("meta") or {}).items()}
    return SessionHead(str(data.get("key", "")), float(data.get("updated_at", 0.0)), meta)


def _turn_doc(seq: str, turn: Turn) -> dict[str, Any]:
    return {**turn.to_dict(), "seq": seq}
