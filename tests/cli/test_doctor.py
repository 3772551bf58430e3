"""`pyloto doctor` and `pyloto --version`: a good configuration passes, each broken one fails
with exit 1 and one line naming the setting to fix, and no secret is ever printed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from typer.testing import CliRunner

from pyloto_cli.bootstrap import open_roles
from pyloto_cli.cli import app
from pyloto_cli.cli.doctor import open_openai
from pyloto_cli.fakes.graph_server import FakeGraphServer
from pyloto_cli.fakes.openai_server import FakeOpenAIServer
from pyloto_cli.settings import Settings
from pyloto_cli.tools import doctor as doctor_module
from pyloto_cli.tools.doctor import CheckResult, Openers, run_doctor
from pyloto_cli.web.app import create_app
from tests.servers import CloudTasksQueueRef

GRAPH_TOKEN = "graph-token-SECRET-1"
OPENAI_KEY = "sk-openai-SECRET-2"
APP_SECRET = "app-secret-SECRET-3"
VERIFY_TOKEN = "verify-token-SECRET-4"
PHONE_NUMBER_ID = "106540352242922"
SECRETS = (GRAPH_TOKEN, OPENAI_KEY, APP_SECRET, VERIFY_TOKEN)


@dataclass(frozen=True, slots=True)
class Fakes:
    graph: FakeGraphServer
    openai: FakeOpenAIServer


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def fakes(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Fakes]:
    """A fake Graph that knows one token and one number, a fake OpenAI that knows one key, and
    the environment of a good configuration pointing at them."""
    async with FakeGraphServer() as graph, FakeOpenAIServer(api_key=OPENAI_KEY) as llm:
        graph.require_token(GRAPH_TOKEN)
        graph.own_numbers(PHONE_NUMBER_ID)
        for name, value in {
            "WHATSAPP_APP_SECRET": APP_SECRET,
            "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
            "WHATSAPP_ACCESS_TOKEN": GRAPH_TOKEN,
            "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
            "GRAPH_API_URL": graph.url,
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_BASE_URL": llm.base_url,
        }.items():
            monkeypatch.setenv(name, value)
        yield Fakes(graph, llm)


async def doctor(runner: CliRunner, *args: str) -> tuple[int, dict[str, Any]]:
    """`pyloto doctor --json` in a thread (the fakes serve on this loop)."""
    result = await asyncio.to_thread(runner.invoke, app, ["doctor", *args, "--json"])
    assert result.exit_code in (0, 1), result.output
    for secret in SECRETS:
        assert secret not in result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return result.exit_code, report


def failures(report: dict[str, Any]) -> list[str]:
    return [f"{c['name']}: {c['detail']}" for c in report["checks"] if not c["ok"]]


def test_version_prints_the_package_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"pyloto {version('pyloto')}\n"


async def test_a_good_configuration_passes_every_check(runner: CliRunner, fakes: Fakes) -> None:
    code, report = await doctor(runner)
    assert code == 0, report
    assert report["ok"] is True
    names = [c["name"] for c in report["checks"]]
    assert names == ["settings", "extras", "data dir", "graph", "openai"]
    assert all(c["ok"] for c in report["checks"])
    assert PHONE_NUMBER_ID in report["checks"][3]["detail"]


async def test_the_text_report_is_one_line_per_check_without_secrets(
    runner: CliRunner, fakes: Fakes
) -> None:
    fakes.graph.require_token("another-token")
    result = await asyncio.to_thread(runner.invoke, app, ["doctor"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "ok   settings",
        "ok   extras",
        "ok   data dir",
        "FAIL graph",
        "ok   openai",
    ]
    assert lines[-1] == "1 of 5 checks failed"
    assert not any(secret in result.output for secret in SECRETS)


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"WHATSAPP_APP_SECRET": None}, "WHATSAPP_APP_SECRET"),
        ({"QUEUE_BACKEND": "redis"}, "REDIS_URL"),
        ({"QUEUE_BACKEND": "bogus"}, "QUEUE_BACKEND"),
        ({"QUEUE_BACKEND": "memory"}, "QUEUE_BACKEND"),
        ({"K_SERVICE": "pyloto"}, "QUEUE_BACKEND"),  # Cloud Run with the SQLite queue
        ({"SESSION_STORE_BACKEND": "firestore"}, "GOOGLE_CLOUD_PROJECT"),
        ({"QUEUE_BACKEND": "redis", "REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        (
            {
                "QUEUE_BACKEND": "cloud_tasks",
                "CLOUDTASKS_PROJECT": "p",
                "PYLOTO_TASKS_TOKEN": "a-long-enough-shared-token",
            },
            "CLOUDTASKS_HANDLER_URL",
        ),
        ({"OPENAI_API_KEY": None}, "OPENAI_API_KEY"),
        ({"WHATSAPP_ACCESS_TOKEN": "expired-token"}, "WHATSAPP_ACCESS_TOKEN"),
        ({"WHATSAPP_PHONE_NUMBER_ID": "999"}, "WHATSAPP_PHONE_NUMBER_ID"),
        ({"OPENAI_API_KEY": "sk-wrong"}, "OPENAI_API_KEY"),
        ({"OPENAI_BASE_URL": "closed"}, "OPENAI_BASE_URL"),
        ({"GRAPH_API_URL": "closed"}, "GRAPH_API_URL"),
        ({"QUEUE_BACKEND": "redis", "REDIS_URL": "closed"}, "REDIS_URL"),
    ],
)
async def test_a_broken_configuration_fails_with_one_line_naming_the_setting(
    runner: CliRunner,
    fakes: Fakes,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str | None],
    setting: str,
) -> None:
    closed = {
        "OPENAI_BASE_URL": f"http://127.0.0.1:{closed_port()}/v1",
        "GRAPH_API_URL": f"http://127.0.0.1:{closed_port()}",
        "REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0",
    }
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, closed[name] if value == "closed" else value)
    code, report = await doctor(runner)
    assert code == 1
    assert report["ok"] is False
    [line] = failures(report)
    assert setting in line


async def test_a_graph_that_does_not_answer_in_time_fails(
    runner: CliRunner, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A silent network fails the check within the doctor's deadline; it never passes."""
    monkeypatch.setattr(doctor_module, "CHECK_TIMEOUT_S", 0.2)
    fakes.graph.delay_s = 1.0
    code, report = await doctor(runner)
    assert code == 1
    [line] = failures(report)
    assert line.startswith("graph: GRAPH_API_URL")


async def test_a_data_dir_that_cannot_be_written_fails(
    runner: CliRunner, fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path under a regular file (root ignores permission bits, not this)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("PYLOTO_DATA_DIR", str(blocker / "data"))
    code, report = await doctor(runner)
    assert code == 1
    [line] = failures(report)
    assert line.startswith("data dir: PYLOTO_DATA_DIR")


async def test_a_missing_extra_names_the_pip_command(
    runner: CliRunner, fakes: Fakes, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """`redis` cannot be imported (a None entry in sys.modules): the extra is named, and the
    Redis check that would need it is not run."""
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setenv("QUEUE_BACKEND", "redis")
    monkeypatch.setenv("REDIS_URL", redis_url)
    code, report = await doctor(runner)
    assert code == 1
    [line] = failures(report)
    assert "pip install 'pyloto[redis]'" in line
    assert "redis" not in [c["name"] for c in report["checks"]]


@pytest.mark.redis
async def test_a_reachable_redis_passes(
    runner: CliRunner, fakes: Fakes, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    for name in ("QUEUE_BACKEND", "SESSION_STORE_BACKEND", "DEDUPE_BACKEND"):
        monkeypatch.setenv(name, "redis")
    monkeypatch.setenv("REDIS_URL", redis_url)
    code, report = await doctor(runner)
    assert code == 0, failures(report)
    assert "data dir" not in [c["name"] for c in report["checks"]]
    assert "redis" in [c["name"] for c in report["checks"]]


@pytest.mark.firestore
async def test_a_reachable_firestore_passes(
    runner: CliRunner, fakes: Fakes, monkeypatch: pytest.MonkeyPatch, firestore_project: str
) -> None:
    monkeypatch.setenv("SESSION_STORE_BACKEND", "firestore")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", firestore_project)
    code, report = await doctor(runner)
    assert code == 0, failures(report)
    assert "firestore" in [c["name"] for c in report["checks"]]


@pytest.mark.cloud_tasks
async def test_a_missing_cloud_tasks_queue_fails_and_is_not_created(
    runner: CliRunner,
    fakes: Fakes,
    monkeypatch: pytest.MonkeyPatch,
    cloud_tasks_queue: CloudTasksQueueRef,
) -> None:
    for name, value in {
        "QUEUE_BACKEND": "cloud_tasks",
        "CLOUD_TASKS_EMULATOR_HOST": cloud_tasks_queue.host,
        "CLOUDTASKS_PROJECT": cloud_tasks_queue.project,
        "CLOUDTASKS_LOCATION": cloud_tasks_queue.location,
        "CLOUDTASKS_QUEUE_NAME": cloud_tasks_queue.queue,
        "CLOUDTASKS_HANDLER_URL": "https://pyloto.example/tasks/process",
        "PYLOTO_TASKS_TOKEN": "a-long-enough-shared-token",
    }.items():
        monkeypatch.setenv(name, value)
    code, report = await doctor(runner)
    assert code == 1
    [line] = failures(report)
    assert line.startswith("cloud tasks: CLOUDTASKS_QUEUE_NAME")
    assert cloud_tasks_queue.name in line  # the emulator answers UNKNOWN, Google NOT_FOUND

    # the check did not create it: once created, the same configuration passes
    import grpc
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    channel = grpc.insecure_channel(cloud_tasks_queue.host)
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    try:
        queue = tasks_v2.Queue(name=cloud_tasks_queue.name)
        client.create_queue(parent=cloud_tasks_queue.parent, queue=queue, timeout=5.0)
    finally:
        channel.close()
    code, report = await doctor(runner)
    assert code == 0, failures(report)


# --- the verify handshake (the real webhook app, served in-process through httpx) ---------------


async def _wrong_challenge(_request: Any) -> PlainTextResponse:
    return PlainTextResponse("12345")


@pytest.fixture
async def handshake_openers(make_settings: Any) -> AsyncIterator[Openers]:
    """An http opener that reaches pyloto's own app at http://pyloto.test and an app that
    answers a fixed challenge at http://wrong.test; OpenAI as the CLI opens it."""
    settings = make_settings(
        queue_backend="memory",
        session_store_backend="memory",
        dedupe_backend="memory",
        whatsapp_verify_token=VERIFY_TOKEN,
    )
    async with open_roles(settings) as roles:
        pyloto_app = create_app(settings, await roles.intake())
        wrong_app = Starlette(routes=[Route("/webhooks/whatsapp", _wrong_challenge)])

        @contextlib.asynccontextmanager
        async def http(
            _settings: Settings, timeouts: httpx.Timeout
        ) -> AsyncIterator[httpx.AsyncClient]:
            mounts = {
                "http://pyloto.test": httpx.ASGITransport(app=pyloto_app),
                "http://wrong.test": httpx.ASGITransport(app=wrong_app),
            }
            async with httpx.AsyncClient(timeout=timeouts, mounts=mounts) as client:
                yield client

        yield Openers(http=http, openai=open_openai)


def _webhook_line(results: list[CheckResult]) -> CheckResult:
    [line] = [r for r in results if r.name == "webhook"]
    return line


async def test_the_webhook_url_answering_the_handshake_passes(
    make_settings: Any, handshake_openers: Openers
) -> None:
    settings = make_settings(whatsapp_verify_token=VERIFY_TOKEN, openai_enabled=False)
    results = await run_doctor(
        settings, handshake_openers, webhook_url="http://pyloto.test/webhooks/whatsapp"
    )
    assert _webhook_line(results).ok, results


async def test_a_webhook_url_echoing_another_challenge_fails(
    make_settings: Any, handshake_openers: Openers
) -> None:
    settings = make_settings(whatsapp_verify_token=VERIFY_TOKEN, openai_enabled=False)
    results = await run_doctor(
        settings, handshake_openers, webhook_url="http://wrong.test/webhooks/whatsapp"
    )
    line = _webhook_line(results)
    assert not line.ok
    assert "--webhook-url" in line.detail


async def test_a_webhook_refusing_the_verify_token_names_it(
    make_settings: Any, handshake_openers: Openers
) -> None:
    settings = make_settings(whatsapp_verify_token="another-token", openai_enabled=False)
    results = await run_doctor(
        settings, handshake_openers, webhook_url="http://pyloto.test/webhooks/whatsapp"
    )
    line = _webhook_line(results)
    assert not line.ok
    assert "WHATSAPP_VERIFY_TOKEN" in line.detail
    assert "another-token" not in line.detail
