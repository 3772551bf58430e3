"""Dedupe markers in Firestore: one small document per key, claimed with `create()`.

`{collection}/{sha256(key)}` holds `state` ("claimed" or "done") and `expires_at`, a timestamp a
Firestore TTL policy can delete on (`gcloud firestore fields ttls update expires_at
--collection-group=<collection>`). TTL deletion runs up to a day late and the emulator runs none,
so every read treats a document past `expires_at` as absent.

A claim is `create()` (atomic: exactly one concurrent creator wins). If the document exists but
has expired, it is overwritten with a precondition on the update time it was read at, so of
two workers reclaiming the same expired key only one succeeds; the loser re-reads and sees the
winner's live claim.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.firestore_db import FirestoreAttachment, doc_id
from pyloto_cli.ports import ClaimResult

_CLAIMED = "claimed"
_DONE = "done"
_MAX_ROUNDS = 5  # create / reclaim races; each lost round means someone else made progress


class FirestoreDeduper(Attached):
    """`Deduper` on Firestore (or its emulator, via FIRESTORE_EMULATOR_HOST)."""

    def __init__(
        self,
        project: str | None = None,
        *,
        client: firestore.AsyncClient | None = None,
        collection: str = "pyloto_dedupe",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.project = project
        self.collection = collection
        self._fs = FirestoreAttachment(project, collection, client, role="FirestoreDeduper")
        super().__init__(self._fs)
        self._clock = clock

    # --- Deduper --------------------------------------------------------------------------------

    async def claim(self, key: str, ttl_s: float) -> ClaimResult:
        """Atomically claim `key` for `ttl_s` seconds unless done or claimed by someone else."""
        ref = self._ref(key)
        for _ in range(_MAX_ROUNDS):
            try:
                await ref.create(self._fields(key, _CLAIMED, ttl_s))
                return ClaimResult.CLAIMED
            except gexc.AlreadyExists:
                pass
            snap = await ref.get()
            if not snap.exists:
                continue  # released or deleted between our create and get
            live = self._live_state(snap)
            if live is not None:
                return ClaimResult.DONE if live == _DONE else ClaimResult.IN_PROGRESS
            if await self._reclaim(ref, snap, key, ttl_s):
                return ClaimResult.CLAIMED
        # Every round lost a race to another claimer: it holds the key now.
        return ClaimResult.IN_PROGRESS

    async def mark_done(self, key: str, ttl_s: float) -> None:
        """Record `key` as processed for `ttl_s` seconds."""
        await self._ref(key).set(self._fields(key, _DONE, ttl_s))

    async def release(self, key: str) -> None:
        """Drop a live or expired claim; a done marker stays."""
        ref = self._ref(key)
        snap = await ref.get()
        if not snap.exists or (snap.to_dict() or {}).get("state") == _DONE:
            return
        try:
            await ref.delete(option=self._db.write_option(last_update_time=snap.update_time))
        except (gexc.FailedPrecondition, gexc.NotFound):
            return  # changed meanwhile (e.g. marked done): leave it

    # --- helpers --------------------------------------------------------------------------------

    @property
    def _db(self) -> firestore.AsyncClient:
        return self._fs.client

    def _ref(self, key: str) -> Any:
        return self._db.collection(self.collection).document(doc_id(key))

    def _fields(self, key: str, state: str, ttl_s: float) -> dict[str, Any]:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, not {ttl_s}")
        expires = datetime.fromtimestamp(self._clock() + ttl_s, UTC)
        return {"key": key, "state": state, "expires_at": expires}

    def _live_state(self, snap: Any) -> str | None:
        """The stored state, or None once `expires_at` has passed."""
        data: dict[str, Any] = snap.to_dict() or {}
        expires = data.get("expires_at")
        if not isinstance(expires, datetime) or expires.timestamp() <= self._clock():
            return None
        return str(data.get("state", _CLAIMED))

    async def _reclaim(self, ref: Any, snap: Any, key: str, ttl_s: float) -> bool:
        """Overwrite an expired document unless someone changed it since we read it."""
        option = self._db.write_option(last_update_time=snap.update_time)
        try:
            await ref.update(self._fields(key, _CLAIMED, ttl_s), option=option)
        except (gexc.FailedPrecondition, gexc.NotFound):
            return False
        return True
