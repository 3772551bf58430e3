"""Delivery statuses in Firestore, beside Firestore sessions: every instance sees them.

`{collection}/{sha256(wamid|status)}` holds the status, `recorded_at`, and `expires_at` (for a
TTL policy, as the dedupe markers: `gcloud firestore fields ttls update expires_at
--collection-group=<collection>`). A `failed` status is also written, in the same batch, to
`{collection}_failed`, so that `failed()` is a query on one field (`timestamp`), which needs no
composite index; `get()` is an equality query on `message_id`, sorted here.

`record` creates its documents (`create()` fails if one exists), so a status Meta delivers
twice, or to two instances, is stored once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from pyloto_cli.adapters.attached import Attached
from pyloto_cli.adapters.firestore_db import FirestoreAttachment, doc_id
from pyloto_cli.logs import get_logger
from pyloto_cli.ports import DeliveryStatus

from .common import log_status

DEFAULT_TTL_S = 30 * 24 * 3600.0
_FIELDS = tuple(DeliveryStatus.__dataclass_fields__)


def _status(data: dict[str, Any]) -> DeliveryStatus:
    fields: dict[str, Any] = {name: data[name] for name in _FIELDS if name in data}
    return DeliveryStatus(**fields)


class FirestoreStatusStore(Attached):
    """`StatusStore` on Firestore (or its emulator, via FIRESTORE_EMULATOR_HOST)."""

    def __init__(
        self,
        project: str | None = None,
        *,
        client: firestore.AsyncClient | None = None,
        collection: str = "pyloto_statuses",
        ttl_s: float = DEFAULT_TTL_S,
        logger: logging.Logger | None = None,
    ) -> None:
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.collection = collection
        self._fs = FirestoreAttachment(project, collection, client, role="FirestoreStatusStore")
        super().__init__(self._fs)
        self._ttl_s = ttl_s
        self._log = logger or get_logger("statuses.firestore")

    async def record(self, status: DeliveryStatus) -> bool:
        """Store `status`; False if this (wamid, status) was already recorded."""
        client = self._fs.client
        now = time.time()
        fields: dict[str, Any] = {
            **asdict(status),
            "recorded_at": now,
            "expires_at": datetime.fromtimestamp(now + self._ttl_s, UTC),
        }
        key = doc_id(f"{status.message_id}|{status.status}")
        batch = client.batch()
        batch.create(client.collection(self.collection).document(key), fields)
        if status.status == "failed":
            batch.create(client.collection(f"{self.collection}_failed").document(key), fields)
        try:
            await batch.commit()
        except gexc.AlreadyExists:
            return False
        log_status(self._log, status)
        return True

    async def get(self, message_id: str) -> list[DeliveryStatus]:
        """Every status of `message_id`, oldest first (Meta's timestamp, then arrival)."""
        query = self._fs.client.collection(self.collection).where(
            filter=FieldFilter("message_id", "==", message_id)
        )
        found = [snap.to_dict() or {} async for snap in query.stream()]
        found.sort(key=lambda data: (data.get("timestamp", 0), data.get("recorded_at", 0.0)))
        return [_status(data) for data in found]

    async def failed(self, limit: int = 100) -> list[DeliveryStatus]:
        """The newest `failed` statuses first."""
        if limit <= 0:
            return []
        query = (
            self._fs.client.collection(f"{self.collection}_failed")
            .order_by("timestamp", direction=firestore.Query.DESCENDING)
            .limit(limit)
        )
        return [_status(snap.to_dict() or {}) async for snap in query.stream()]
