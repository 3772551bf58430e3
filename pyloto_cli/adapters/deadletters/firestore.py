"""Dead letters in Firestore: one document per task, `{collection}/{sha256(task_id)}`.

A document holds the task as its stored JSON, the error (cut to 8 KiB), the attempts and
`dead_at` (epoch seconds, for ordering; `dead_at_ts` is the same instant as a timestamp for the
console). Dead letters are rare, so `purge` simply deletes them in batches of 500.
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.firestore_db import FirestoreAttachment, doc_id
from pyloto_cli.domain.task import DeadLetter, Task

_MAX_ERROR_CHARS = 8192
_BATCH_LIMIT = 500


class FirestoreDeadLetterStore(Attached):
    """`DeadLetterStore` on Firestore (or its emulator, via FIRESTORE_EMULATOR_HOST)."""

    def __init__(
        self,
        project: str | None = None,
        *,
        client: firestore.AsyncClient | None = None,
        collection: str = "pyloto_dead_letters",
    ) -> None:
        self.project = project
        self.collection = collection
        self._fs = FirestoreAttachment(project, collection, client, role="FirestoreDeadLetterStore")
        super().__init__(self._fs)

    async def record(self, dead: DeadLetter) -> None:
        """Store `dead`, replacing an entry for the same task id."""
        await self._ref(dead.task.task_id).set(_to_doc(dead))

    async def list(self, limit: int = 100) -> builtins.list[DeadLetter]:
        """Up to `limit` dead letters, oldest first."""
        if limit <= 0:
            return []
        query = self._coll().order_by("dead_at").limit(limit)
        return [_from_doc(snap.to_dict() or {}) async for snap in query.stream()]

    async def get(self, task_id: str) -> DeadLetter | None:
        """The dead letter of `task_id`, or None."""
        snap = await self._ref(task_id).get()
        return _from_doc(snap.to_dict() or {}) if snap.exists else None

    async def delete(self, task_id: str) -> bool:
        """Delete one; True if it existed."""
        ref = self._ref(task_id)
        existed = bool((await ref.get()).exists)
        await ref.delete()
        return existed

    async def purge(self) -> int:
        """Delete every dead letter; returns the count."""
        refs = [snap.reference async for snap in self._coll().select([]).stream()]
        for start in range(0, len(refs), _BATCH_LIMIT):
            batch = self._db.batch()
            for ref in refs[start : start + _BATCH_LIMIT]:
                batch.delete(ref)
            await batch.commit()
        return len(refs)

    @property
    def _db(self) -> firestore.AsyncClient:
        return self._fs.client

    def _coll(self) -> Any:
        return self._db.collection(self.collection)

    def _ref(self, task_id: str) -> Any:
        return self._coll().document(doc_id(task_id))


def _to_doc(dead: DeadLetter) -> dict[str, Any]:
    return {
        "task_id": dead.task.task_id,
        "task": dead.task.to_json().decode(),
        "error": dead.error[:_MAX_ERROR_CHARS],
        "attempts": dead.attempts,
        "dead_at": dead.dead_at,
        "dead_at_ts": datetime.fromtimestamp(dead.dead_at, UTC),
    }


def _from_doc(data: dict[str, Any]) -> DeadLetter:
    return DeadLetter(
        task=Task.from_json(data["task"]),
        error=str(data.get("error", "")),
        attempts=int(data.get("attempts", 0)),
        dead_at=float(data.get("dead_at", 0.0)),
    )
