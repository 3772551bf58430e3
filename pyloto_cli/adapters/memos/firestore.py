"""Task memos in Firestore: one small document per key, its fields in a map, with its expiry.

`{collection}/{sha256(key)}` holds `key`, `fields` (a map of the memo's fields) and
`expires_at`, a timestamp a Firestore TTL policy can delete on (`gcloud firestore fields ttls
update expires_at --collection-group=<collection>`). TTL deletion runs up to a day late and the
emulator runs none, so a document past `expires_at` counts as absent when read.

`put` is `set(merge=True)` of the new fields (as field paths inside `fields`) and the new
`expires_at`: the server merges them, so concurrent puts of different fields all keep theirs.
A put first reads the document: one found past its expiry is overwritten whole instead, with a
precondition on the update time it was read at (a put racing it re-reads and merges), so an
expired record's fields never come back.

Each call retries Firestore's transient errors for at most `call_timeout_s` (10 s): left to
its defaults, the client retries an unreachable server for as long as it stays unreachable,
and a worker would wait on it instead of retrying its task later.

Errors: a call Firestore refuses, or cannot be reached for within `call_timeout_s`
(`google.api_core.exceptions.GoogleAPICallError`, `RetryError`), raises `TransientError`
(reason `task_memos_unavailable: ...`), which the pipeline already turns into a retry; a call
before enter or after exit raises `BackendUnavailable`; a `ttl_s` that is not positive raises
`ValueError`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.api_core import retry_async
from google.cloud import firestore

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.firestore_db import FirestoreAttachment, doc_id
from pyloto_cli.domain.errors import TransientError

T = TypeVar("T")

_MAX_ROUNDS = 5  # overwrite races on an expired document; each lost round is another's write


def _unavailable(exc: gexc.GoogleAPICallError | gexc.RetryError) -> TransientError:
    return TransientError(f"task_memos_unavailable: firestore: {exc.message or exc}")


async def _guarded(call: Awaitable[T]) -> T:
    """`call`'s result; what Firestore refuses becomes a `TransientError` for the pipeline."""
    try:
        return await call
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise _unavailable(exc) from exc


class FirestoreTaskMemos(Attached):
    """A `TaskMemos` on Firestore (or its emulator, via FIRESTORE_EMULATOR_HOST)."""

    def __init__(
        self,
        project: str | None = None,
        *,
        client: firestore.AsyncClient | None = None,
        collection: str = "pyloto_memos",
        clock: Callable[[], float] = time.time,
        call_timeout_s: float = 10.0,
    ) -> None:
        self.project = project
        self.collection = collection
        self._fs = FirestoreAttachment(project, collection, client, role="FirestoreTaskMemos")
        super().__init__(self._fs)
        self._clock = clock
        retry = retry_async.AsyncRetry(
            predicate=retry_async.if_transient_error,
            initial=0.1,
            maximum=min(2.0, call_timeout_s),
            multiplier=2.0,
            timeout=call_timeout_s,
        )
        self._bounded: dict[str, Any] = {"retry": retry, "timeout": call_timeout_s}

    async def get(self, key: str) -> dict[str, str]:
        """The fields stored for `key` (empty when there are none or they expired)."""
        snap = await _guarded(self._ref(key).get(**self._bounded))
        return self._live_fields(snap) or {}

    async def put(self, key: str, fields: Mapping[str, str], ttl_s: float) -> None:
        """Merge `fields` into `key`'s document and push its expiry to `ttl_s` from now."""
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        ref = self._ref(key)
        for _ in range(_MAX_ROUNDS):
            snap = await _guarded(ref.get(**self._bounded))
            expires = datetime.fromtimestamp(self._clock() + ttl_s, UTC)
            if not snap.exists or self._live_fields(snap) is not None:
                data: dict[str, Any] = {"key": key, "expires_at": expires}
                if fields:  # an empty map would replace the stored one, not merge into it
                    data["fields"] = dict(fields)
                await _guarded(ref.set(data, merge=True, **self._bounded))
                return
            if await self._overwrite(ref, snap, key, fields, expires):
                return
        raise TransientError(f"task_memos_unavailable: firestore: {_MAX_ROUNDS} writes raced")

    async def forget(self, key: str) -> None:
        """Drop `key`'s document."""
        await _guarded(self._ref(key).delete(**self._bounded))

    # --- helpers --------------------------------------------------------------------------------

    def _ref(self, key: str) -> Any:
        return self._fs.client.collection(self.collection).document(doc_id(key))

    def _live_fields(self, snap: Any) -> dict[str, str] | None:
        """The stored fields, or None when there is no document or it has expired."""
        if not snap.exists:
            return None
        data: dict[str, Any] = snap.to_dict() or {}
        expires = data.get("expires_at")
        if not isinstance(expires, datetime) or expires.timestamp() <= self._clock():
            return None
        stored = data.get("fields") or {}
        return {str(name): str(value) for name, value in stored.items()}

    async def _overwrite(
        self, ref: Any, snap: Any, key: str, fields: Mapping[str, str], expires: datetime
    ) -> bool:
        """Replace an expired document unless someone wrote it since we read it."""
        option = self._fs.client.write_option(last_update_time=snap.update_time)
        data = {"key": key, "fields": dict(fields), "expires_at": expires}
        try:
            await ref.update(data, option=option, **self._bounded)
        except (gexc.FailedPrecondition, gexc.NotFound):
            return False
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise _unavailable(exc) from exc
        return True
