"""Secrets and private data: a real `pyloto serve` against the fake OpenAI and Graph servers, a
conversation that works and one that fails (LLM errors, a Graph error), real-looking secrets
given through the environment or a `.env` file. No secret appears in any log line, error output
or CLI output; no log line carries a whole phone number, a whole wamid or a message's text; the
data dir and its files (SQLite's -wal and -shm included) are private under umask 000."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import signal
import stat
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from pyloto_cli.cli import app
from pyloto_cli.domain.signature import sign
from pyloto_cli.fakes.openai_server import FakeAnswer, FakeOpenAIServer
from pyloto_cli.firstrun import SECRETS_FILE
from pyloto_cli.logs import LOGGER_NAME, log_id
from pyloto_cli.settings import Settings
from tests.e2e.serve_process import ServeProcess
from tests.fakes.graph_server import FakeGraphServer
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

PHONE_NUMBER_ID = "900000000000002"
HAPPY_USER = "5511987654321"
FAILING_USER = "15550009876"
HAPPY_TEXT = "Quero saber o preço do plano anual"
FAILING_TEXT = "Meu pedido 4471 não chegou"
_ALNUM = string.ascii_letters + string.digits


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(length))


@dataclass(frozen=True)
class Secrets:
    """Fresh, real-looking credentials: their shapes as Meta and OpenAI issue them."""

    app_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    verify_token: str = field(default_factory=lambda: "vt_" + _random(32))
    access_token: str = field(default_factory=lambda: "EAAG" + _random(180))
    openai_key: str = field(default_factory=lambda: "sk-proj-" + _random(156))

    def env(self) -> dict[str, str]:
        return {
            "WHATSAPP_APP_SECRET": self.app_secret,
            "WHATSAPP_VERIFY_TOKEN": self.verify_token,
            "WHATSAPP_ACCESS_TOKEN": self.access_token,
            "OPENAI_API_KEY": self.openai_key,
        }

    def values(self) -> list[str]:
        return list(self.env().values())


def real_wamid(phone: str) -> str:
    """A wamid shaped like Meta's: base64 that decodes to the sender's number."""
    raw = b"\x18" + bytes([len(phone)]) + phone.encode() + b"\x15\x02\x00\x12\x18\x14"
    return "wamid." + base64.b64encode(raw + secrets.token_hex(10).upper().encode()).decode()


def _envelope(value: dict[str, Any]) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE_NUMBER_ID},
        **value,
    }
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "900000000000001", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(body, ensure_ascii=False).encode()


def message_body(wamid: str, phone: str, text: str) -> bytes:
    return _envelope(
        {
            "contacts": [{"profile": {"name": "Ana"}, "wa_id": phone}],
            "messages": [
                {
                    "from": phone,
                    "id": wamid,
                    "timestamp": str(int(time.time())),
                    "type": "text",
                    "text": {"body": text},
                }
            ],
        }
    )


def status_body(sent_id: str, phone: str) -> bytes:
    status = {"id": sent_id, "status": "delivered", "timestamp": "1767225601"}
    return _envelope({"statuses": [{**status, "recipient_id": phone}]})


@dataclass
class Run:
    """What one run produced: the serve log, the CLI outputs, what must never show."""

    serve: ServeProcess
    data_dir: Path
    wamids: list[str]
    signatures: list[str] = field(default_factory=list)
    cli_outputs: dict[str, str] = field(default_factory=dict)


async def converse(
    run: Run, client: httpx.AsyncClient, creds: Secrets, break_llm: Callable[[], None]
) -> None:
    """The webhook handshake (right and wrong token), a bad signature, a conversation that
    works with its delivery status, then (`break_llm`) one whose LLM calls and Graph send
    fail."""
    url = f"{run.serve.url}/webhooks/whatsapp"
    for token, expected in ((creds.verify_token, 200), (creds.verify_token + "x", 403)):
        params = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "42"}
        assert (await client.get(url, params=params)).status_code == expected

    async def post(body: bytes, key: str = creds.app_secret) -> int:
        signature = sign(key.encode(), body)
        run.signatures.append(signature.removeprefix("sha256="))
        headers = {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}
        return (await client.post(url, content=body, headers=headers)).status_code

    happy, failing = run.wamids
    assert await post(message_body(happy, HAPPY_USER, HAPPY_TEXT), key=creds.verify_token) == 401
    assert await post(message_body(happy, HAPPY_USER, HAPPY_TEXT)) == 200
    await wait_until(
        lambda: run.serve.log.read_text().count('"event": "task_processed"') >= 1,
        within=15.0,
        what="the first message answered",
        details=run.serve.log_tail,
    )
    assert await post(status_body("wamid.fake.00000001", HAPPY_USER)) == 200
    break_llm()
    assert await post(message_body(failing, FAILING_USER, FAILING_TEXT)) == 200
    await wait_until(
        lambda: all(
            f'"event": "{event}"' in run.serve.log.read_text()
            for event in ("task_dead_lettered", "message_status")
        ),
        within=15.0,
        what="the failing message dead-lettered and the status recorded",
        details=run.serve.log_tail,
    )


def run_cli(run: Run, runner: CliRunner, env: dict[str, str]) -> None:
    """The operator commands that show stored records, and one that fails on a bad setting,
    in the run's directory (where its `.env` is, if any)."""
    happy_file = run.serve.workdir / "happy.json"
    happy_file.write_bytes(message_body(run.wamids[0], HAPPY_USER, HAPPY_TEXT))
    commands = {
        "stats": ["queue", "stats", "--json"],
        "dead list": ["queue", "dead-letter", "list"],
        "dead list json": ["queue", "dead-letter", "list", "--json"],
        "dead show": ["queue", "dead-letter", "show", run.wamids[1]],
        "dead show json": ["queue", "dead-letter", "show", run.wamids[1], "--json"],
        "failed deliveries": ["queue", "failed-deliveries"],
        "replay": ["replay", str(happy_file)],
        "replay json": ["replay", str(happy_file), "--json"],
    }
    for name, args in commands.items():
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, (name, result.output)
        run.cli_outputs[name] = result.stdout + result.stderr
    bad = runner.invoke(app, ["queue", "stats"], env={**env, "PYLOTO_MAX_ATTEMPTS": "zero"})
    assert bad.exit_code == 2
    assert "max_attempts" in bad.stderr.lower() or "PYLOTO_MAX_ATTEMPTS" in bad.stderr
    run.cli_outputs["bad setting"] = bad.stdout + bad.stderr
    assert run.wamids[1] in run.cli_outputs["dead list"]  # ids whole for the operator
    assert log_id(run.wamids[1]) in run.cli_outputs["dead list"]


def check_private(run: Run, creds: Secrets) -> None:
    log = run.serve.log.read_text()
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    names = {e["event"] for e in events}
    # the runs went where the checks below look: both conversations, both failures
    assert {"webhook_enqueued", "message_sent", "llm_error", "send_failed"} <= names, names
    assert {"task_dead_lettered", "message_status", "webhook_rejected"} <= names, names
    assert log_id(run.wamids[0]) in log
    assert log_id("wamid.fake.00000001") in log
    outputs = {"serve log and errors": log, **run.cli_outputs}
    for where, text in outputs.items():
        for secret in [*creds.values(), *run.signatures]:
            assert secret not in text, f"a secret in {where}"
        for number in (HAPPY_USER, FAILING_USER):
            assert number not in text, f"a whole phone number in {where}"
    log_lines = log + "".join(run.cli_outputs[k] for k in ("stats", "bad setting"))
    for wamid in [*run.wamids, "wamid.fake.00000001"]:
        assert wamid not in log_lines
        assert wamid.removeprefix("wamid.") not in log_lines
    assert HAPPY_TEXT not in log  # no message text at INFO
    assert FAILING_TEXT not in log


def assert_private_data_dir(data_dir: Path) -> None:
    """While serve runs (its -wal and -shm files exist): the dir 0700, every file 0600."""
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data_dir.iterdir()}
    assert {"queue.db", "queue.db-wal", "queue.db-shm", "state.db", "state.db-wal"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o600), modes


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI commands configure the `pyloto` logger on the runner's streams: undo it after."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.mark.parametrize("source", ["environment", "dotenv"])
@pytest.mark.usefixtures("restore_logging")
async def test_no_secret_phone_number_or_wamid_leaks(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Secrets from the environment or `.env`: none in the serve log (stdout and stderr), the
    CLI's output or its errors; logs show masked numbers and hashed wamids only."""
    creds = Secrets()
    workdir = tmp_path / "run"
    workdir.mkdir()
    async with FakeGraphServer() as graph, FakeOpenAIServer() as openai:
        graph.require_token(creds.access_token)
        settings = {
            "PYLOTO_DATA_DIR": str(workdir / "data"),
            "GRAPH_API_URL": graph.url,
            "OPENAI_BASE_URL": openai.base_url,
            "OPENAI_ENABLED": "true",
            "PYLOTO_RETRY_BASE_SECONDS": "0.05",
        }
        if source == "environment":
            settings.update(creds.env())
        else:
            lines = [f"{name}={value}" for name, value in creds.env().items()]
            (workdir / ".env").write_text("\n".join(lines) + "\n")
        serve = ServeProcess(workdir, settings, umask=0)
        run = Run(serve, workdir / "data", [real_wamid(HAPPY_USER), real_wamid(FAILING_USER)])
        await serve.start()
        # the second conversation: its LLM calls refused by an error body that echoes the key
        # (as a careless proxy might), its Graph send refused for good
        echo = json.dumps({"error": {"message": f"Incorrect API key: {creds.openai_key}"}})
        graph.fail(131026, times=None, to=f"+{FAILING_USER}")
        try:
            async with httpx.AsyncClient() as client:
                await converse(
                    run, client, creds, lambda: openai.always(FakeAnswer(status=401, raw_body=echo))
                )
            assert_private_data_dir(run.data_dir)  # under umask 000
        finally:
            assert serve.proc is not None
            serve.proc.send_signal(signal.SIGTERM)
            serve.proc.wait(timeout=30)
        assert openai.requests
        keys = {r.headers.get("authorization") for r in openai.requests}
        assert keys == {f"Bearer {creds.openai_key}"}
    monkeypatch.chdir(workdir)
    monkeypatch.setitem(Settings.model_config, "env_file", ".env")  # as outside the tests
    cli_env = {k: v for k, v in settings.items() if k not in creds.env()}
    if source == "environment":
        cli_env.update(creds.env())
    await asyncio.to_thread(run_cli, run, CliRunner(), cli_env)  # the commands run their loops
    check_private(run, creds)


async def test_first_run_prints_only_what_it_generated(tmp_path: Path) -> None:
    """With the app secret configured and no verify token, serve generates and prints the token
    (a local value) but never the configured secret; the secrets file is 0600 in a 0700 dir."""
    creds = Secrets()
    env = {"PYLOTO_DATA_DIR": str(tmp_path / "data"), "WHATSAPP_APP_SECRET": creds.app_secret}
    serve = ServeProcess(tmp_path, env, umask=0)
    await serve.start()
    serve.terminate()
    printed = serve.log.read_text()
    stored = json.loads((tmp_path / "data" / SECRETS_FILE).read_text())
    assert f"verify token: {stored['verify_token']}" in printed
    assert "app secret:   set by WHATSAPP_APP_SECRET (not shown)" in printed
    assert "WHATSAPP_VERIFY_TOKEN is not set" in printed  # the missing one is named
    assert "until WHATSAPP_APP_SECRET is set" not in printed
    assert creds.app_secret not in printed
    assert stat.S_IMODE((tmp_path / "data" / SECRETS_FILE).stat().st_mode) == 0o600
