"""Where the local servers the tests and benchmarks start are found, and how Redis is started.

No pytest here: `benchmarks/queues.py` starts the same servers outside a test run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def firestore_jar() -> Path | None:
    """The Firestore emulator's jar: FIRESTORE_EMULATOR_JAR, else the one beside gcloud."""
    configured = os.environ.get("FIRESTORE_EMULATOR_JAR")
    if configured:
        return Path(configured)
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    sdk_root = Path(gcloud).resolve().parent.parent
    return sdk_root / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar"


def pubsub_jar() -> Path | None:
    """The Pub/Sub emulator's jar: PUBSUB_EMULATOR_JAR, else the newest beside gcloud."""
    configured = os.environ.get("PUBSUB_EMULATOR_JAR")
    if configured:
        return Path(configured)
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    lib = Path(gcloud).resolve().parent.parent / "platform" / "pubsub-emulator" / "lib"
    jars = sorted(lib.glob("cloud-pubsub-emulator-*-all.jar"))
    return jars[-1] if jars else None


def redis_args(port: int) -> list[str]:
    """redis-server's arguments: loopback only, nothing written to disk."""
    return ["--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
