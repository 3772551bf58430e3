"""Real servers for integration tests: Redis and the Firestore, Cloud Tasks and Pub/Sub emulators.

A pytest plugin (registered in tests/conftest.py). Each session fixture uses the server its
environment variable named when the session began (`REDIS_URL`, `FIRESTORE_EMULATOR_HOST`,
`CLOUD_TASKS_EMULATOR_HOST`, `PUBSUB_EMULATOR_HOST`, e.g. from `scripts/test-services.sh start`),
if that address is on loopback and the server answers; otherwise it starts the server itself on a
free 127.0.0.1 port, polls it to a deadline and stops it after the session. A server that cannot
be found or started fails the test with its log tail and the install hint; nothing is skipped.

Those variables are read once, at start-up (`pytest_configure`): tests run with them cleared
(`hermetic_env` in tests/conftest.py) and get an address only from these fixtures.

Function-scoped helpers isolate tests on shared servers: a unique Redis key prefix (its keys are
deleted afterwards by SCAN, never FLUSHDB), a unique Firestore project (its documents are wiped
afterwards), a unique Cloud Tasks queue (deleted afterwards) and a unique Pub/Sub project.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.emulators import firestore_jar, pubsub_jar, redis_args
from tests.waiting import poll_until

if TYPE_CHECKING:
    import redis.asyncio

ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = "install the test servers with: scripts/install-test-deps.sh"
REDIS_HINT = f"redis-server not found on PATH; {INSTALL_HINT} (apt-get install -y redis-server)"
TASKS_HINT = (
    "Cloud Tasks emulator venv missing (.services/tasks-venv); "
    f"{INSTALL_HINT} (python3 -m venv .services/tasks-venv && "
    ".services/tasks-venv/bin/pip install 'gcloud-tasks-emulator==0.6.2')"
)
FIRESTORE_HINT = (
    "Firestore emulator not available: it needs java (17+) and cloud-firestore-emulator.jar, from "
    "the google-cloud-cli-firestore-emulator package of Google's Cloud SDK apt repository; "
    "or set FIRESTORE_EMULATOR_JAR to a copy of the jar; see scripts/install-test-deps.sh"
)
PUBSUB_HINT = (
    "Pub/Sub emulator not available: it needs java (17+) and cloud-pubsub-emulator-*-all.jar, "
    "from the google-cloud-cli-pubsub-emulator package of Google's Cloud SDK apt repository (or "
    "'gcloud components install pubsub-emulator'); or set PUBSUB_EMULATOR_JAR to a copy of the "
    "jar; see scripts/install-test-deps.sh"
)
START_ATTEMPTS = 3
_SERVER_VARIABLES = (
    "REDIS_URL",
    "FIRESTORE_EMULATOR_HOST",
    "CLOUD_TASKS_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
)
_CONFIGURED = pytest.StashKey[dict[str, str]]()
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def pytest_configure(config: pytest.Config) -> None:
    """Remember the servers the shell points at before any test clears the environment."""
    config.stash[_CONFIGURED] = {
        name: os.environ[name] for name in _SERVER_VARIABLES if os.environ.get(name)
    }


def _configured(config: pytest.Config, name: str) -> str | None:
    """The address `name` held at start-up, if it is on loopback (tests never leave the host)."""
    value = config.stash[_CONFIGURED].get(name)
    if value is None:
        return None
    host = urllib.parse.urlsplit(value if "://" in value else f"//{value}").hostname
    return value if host in _LOOPBACK else None


# --- probes ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _split_host(host: str) -> tuple[str, int]:
    name, _, port = host.rpartition(":")
    return name.strip("[]") or "127.0.0.1", int(port)


def _tcp_open(host: str) -> bool:
    try:
        with socket.create_connection(_split_host(host), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False


def _redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1.0)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False
    finally:
        client.close()


def _firestore_answers(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=1.0) as response:
            return bytes(response.read()).strip() == b"Ok"
    except (OSError, ValueError):
        return False


# --- starting and stopping ------------------------------------------------------------------


@dataclass
class _Started:
    """A server process this plugin started, with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _up_or_exited(
    process: subprocess.Popen[bytes], ready: Callable[[int], bool], port: int
) -> bool:
    return process.poll() is not None or ready(port)


def _start_server(
    name: str,
    command: Callable[[int], list[str]],
    ready: Callable[[int], bool],
    log_dir: Path,
    hint: str,
    timeout_s: float,
) -> tuple[_Started, int]:
    """Start `command(port)` on a free port until `ready(port)`; retries a lost port race."""
    failure = ""
    for attempt in range(1, START_ATTEMPTS + 1):
        port = _free_port()
        log = log_dir / f"{name}-{attempt}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command(port), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        started = _Started(name, process, log)
        try:
            poll_until(
                functools.partial(_up_or_exited, process, ready, port),
                within=timeout_s,
                interval=0.05,
                what=f"{name} ready",
            )
        except AssertionError:
            failure = f"{name} not ready on 127.0.0.1:{port} after {timeout_s:.0f}s"
        else:
            if process.poll() is None:
                return started, port
            failure = f"{name} exited with code {process.returncode}"
        started.stop()
        failure += f"; last lines of {log}:\n{started.tail()}"
    pytest.fail(f"{failure}\n{hint}", pytrace=False)


def _host_port(port: int) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port)]


def _tasks_args(port: int) -> list[str]:
    return ["--port", str(port), "--max-retries", "3", "-q"]


@pytest.fixture(scope="session")
def _server_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


# --- session fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(pytestconfig: pytest.Config, _server_logs: Path) -> Iterator[str]:
    """`redis://127.0.0.1:PORT/0` of a live Redis: `REDIS_URL` if it answers, else our own."""
    configured = _configured(pytestconfig, "REDIS_URL")
    if configured and _redis_answers(configured):
        yield configured
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(REDIS_HINT, pytrace=False)
    started, port = _start_server(
        "redis",
        lambda port: [binary, *redis_args(port)],
        lambda port: _redis_answers(f"redis://127.0.0.1:{port}/0"),
        _server_logs,
        REDIS_HINT,
        timeout_s=10.0,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        started.stop()


@pytest.fixture(scope="session")
def firestore_emulator_host(pytestconfig: pytest.Config, _server_logs: Path) -> Iterator[str]:
    """`127.0.0.1:PORT` of a Firestore emulator: `FIRESTORE_EMULATOR_HOST` if it answers, else
    our own. `firestore_project` hands it to the Google client."""
    configured = _configured(pytestconfig, "FIRESTORE_EMULATOR_HOST")
    if configured and _firestore_answers(configured):
        yield configured
        return
    java, jar = shutil.which("java"), firestore_jar()
    if java is None or jar is None or not jar.is_file():
        pytest.fail(f"{FIRESTORE_HINT}\n(java: {java}, jar: {jar})", pytrace=False)
    main = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
    started, port = _start_server(
        "firestore",
        lambda port: [java, "-Duser.language=en", "-cp", str(jar), main, *_host_port(port)],
        lambda port: _firestore_answers(f"127.0.0.1:{port}"),
        _server_logs,
        FIRESTORE_HINT,
        timeout_s=60.0,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        started.stop()


@pytest.fixture(scope="session")
def cloud_tasks_emulator_host(pytestconfig: pytest.Config, _server_logs: Path) -> Iterator[str]:
    """`127.0.0.1:PORT` of the Cloud Tasks emulator (gRPC): `CLOUD_TASKS_EMULATOR_HOST` if it
    answers, else one started from `.services/tasks-venv` with `--max-retries 3`."""
    configured = _configured(pytestconfig, "CLOUD_TASKS_EMULATOR_HOST")
    if configured and _tcp_open(configured):
        yield configured
        return
    python = ROOT / ".services" / "tasks-venv" / "bin" / "python"
    if not python.is_file():
        pytest.fail(TASKS_HINT, pytrace=False)
    script = str(ROOT / "scripts" / "tasks_emulator.py")
    started, port = _start_server(
        "cloud-tasks",
        lambda port: [str(python), "-W", "ignore", script, "start", *_tasks_args(port)],
        lambda port: _tcp_open(f"127.0.0.1:{port}"),
        _server_logs,
        TASKS_HINT,
        timeout_s=20.0,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        started.stop()


@pytest.fixture(scope="session")
def pubsub_emulator_host(pytestconfig: pytest.Config, _server_logs: Path) -> Iterator[str]:
    """`127.0.0.1:PORT` of a Pub/Sub emulator: `PUBSUB_EMULATOR_HOST` if it answers, else the
    SDK's jar started with java directly (one process to stop, unlike `gcloud beta emulators
    pubsub start`)."""
    configured = _configured(pytestconfig, "PUBSUB_EMULATOR_HOST")
    if configured and _firestore_answers(configured):  # both answer `GET /` with "Ok"
        yield configured
        return
    java, jar = shutil.which("java"), pubsub_jar()
    if java is None or jar is None or not jar.is_file():
        pytest.fail(f"{PUBSUB_HINT}\n(java: {java}, jar: {jar})", pytrace=False)
    started, port = _start_server(
        "pubsub",
        lambda port: [java, "-jar", str(jar), "--host=127.0.0.1", f"--port={port}"],
        lambda port: _firestore_answers(f"127.0.0.1:{port}"),
        _server_logs,
        PUBSUB_HINT,
        timeout_s=60.0,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        started.stop()


# --- per-test isolation ---------------------------------------------------------------------


def _unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own (`pyloto-test-<hex>:`); its keys are deleted afterwards."""
    import redis

    prefix = f"{_unique('pyloto-test')}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A `redis.asyncio.Redis` on this test's event loop, closed afterwards."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def firestore_project(
    firestore_emulator_host: str, hermetic_env: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A Firestore project id of this test's own, with `FIRESTORE_EMULATOR_HOST` set to the
    emulator for this test (the Google client reads only that variable); its documents are
    wiped afterwards."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator_host)
    project = _unique("pyloto-test")
    yield project
    base = f"http://{firestore_emulator_host}/emulator/v1/projects/{project}"
    url = f"{base}/databases/(default)/documents"
    request = urllib.request.Request(url, method="DELETE")  # noqa: S310
    with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5.0):  # noqa: S310
        pass


@pytest.fixture
def firestore_prefix() -> str:
    """A collection-name prefix of this test's own, for tests sharing one project."""
    return f"{_unique('t')}-"


@pytest.fixture
def pubsub_project(pubsub_emulator_host: str) -> str:
    """A Pub/Sub project id of this test's own on the emulator (its topics die with it)."""
    return _unique("pyloto-test")


@dataclass(frozen=True, slots=True)
class CloudTasksQueueRef:
    """A Cloud Tasks queue of this test's own on the emulator (created by the test)."""

    host: str
    project: str
    location: str
    queue: str

    @property
    def parent(self) -> str:
        """`projects/P/locations/L`, where the queue is created."""
        return f"projects/{self.project}/locations/{self.location}"

    @property
    def name(self) -> str:
        """The queue's full resource name."""
        return f"{self.parent}/queues/{self.queue}"


@pytest.fixture
def cloud_tasks_queue(cloud_tasks_emulator_host: str) -> Iterator[CloudTasksQueueRef]:
    """A unique queue name on the emulator; the queue is deleted afterwards if it was created."""
    ref = CloudTasksQueueRef(cloud_tasks_emulator_host, "pyloto-test", "us-central1", _unique("q"))
    yield ref
    import grpc
    from google.api_core import exceptions
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    channel = grpc.insecure_channel(cloud_tasks_emulator_host)
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    try:
        with contextlib.suppress(exceptions.GoogleAPICallError):
            client.delete_queue(name=ref.name, timeout=5.0)
    finally:
        channel.close()
