"""The README's first command: `pyloto serve` with no settings at all starts, stays closed, and
prints a curl line that works."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pyloto_cli.domain.signature import sign, verify_signature
from pyloto_cli.firstrun import SECRETS_FILE, ensure_local_secrets
from pyloto_cli.logs import log_id
from pyloto_cli.settings import Settings
from tests.e2e.serve_process import free_port
from tests.waiting import poll_until

pytestmark = pytest.mark.e2e

_SETTING_PREFIXES = ("WHATSAPP_", "OPENAI_", "PYLOTO_", "GRAPH_", "QUEUE_", "REDIS_", "CLOUD")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    env.pop("PORT", None)
    env.pop("SESSION_STORE_BACKEND", None)
    env.pop("DEDUPE_BACKEND", None)
    return {**env, **extra}


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False


def test_local_secrets_are_generated_once_and_reused(tmp_path: Path) -> None:
    """First run writes a secret file (mode 600); the second run reads the same values."""
    settings = Settings(_env_file=None, data_dir=tmp_path)
    first = ensure_local_secrets(settings)
    second = ensure_local_secrets(settings)
    assert first.generated
    assert not second.generated
    secret = first.settings.whatsapp_app_secret
    assert secret is not None
    assert second.settings.whatsapp_app_secret == secret
    assert (tmp_path / SECRETS_FILE).stat().st_mode & 0o777 == 0o600
    body = second.example_path.read_bytes()  # rewritten each start, with a fresh wamid
    verify_signature(secret.get_secret_value().encode(), body, second.example_signature)


def test_a_configured_secret_is_never_replaced(tmp_path: Path) -> None:
    """With WHATSAPP_APP_SECRET set, nothing is generated and the example is signed with it."""
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        whatsapp_app_secret="real-secret",
        whatsapp_verify_token="real-token",
    )
    setup = ensure_local_secrets(settings)
    assert not setup.generated
    assert not (tmp_path / SECRETS_FILE).exists()
    body = setup.example_path.read_bytes()
    assert setup.example_signature == sign(b"real-secret", body)


def test_serve_with_no_settings_prints_a_working_curl_line(tmp_path: Path) -> None:
    """No env at all: serve starts, prints the curl line; that line's request gets 200 and a
    dry-run reply; an unsigned post is refused."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyloto_cli", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=clean_env(PYLOTO_LOG_FORMAT="json"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        poll_until(
            lambda: _answers(f"{url}/readyz"),
            within=20.0,
            interval=0.05,
            what="/readyz",
            details=log.read_text,
        )
        printed = log.read_text()
        assert "Real Meta webhooks will be rejected until WHATSAPP_APP_SECRET is set" in printed
        curl = next(line.strip() for line in printed.splitlines() if "curl " in line)
        args = shlex.split(curl)
        signature = next(a for a in args if a.startswith("X-Hub-Signature-256:")).split(": ")[1]
        data_file = next(a for a in args if a.startswith("@"))[1:]
        body = (tmp_path / data_file).read_bytes()
        accepted = httpx.post(
            f"{url}/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": signature}
        )
        assert accepted.status_code == 200
        refused = httpx.post(f"{url}/webhooks/whatsapp", content=body)
        assert refused.status_code == 401
        wamid = json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        processed_line = re.compile(r'"event": "task_processed".*' + re.escape(log_id(wamid)))
        poll_until(
            lambda: processed_line.search(log.read_text()),
            within=15.0,
            interval=0.05,
            what="task_processed logged",
            details=lambda: log.read_text()[-3000:],
        )
        events = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        sent = [e for e in events if e["event"] == "message_sent"]
        assert sent, printed
        processed = [e for e in events if e["event"] == "task_processed"]
        assert any(e.get("task_id") == log_id(wamid) for e in processed), log.read_text()[-3000:]
        assert all("15550001234" not in json.dumps(e) for e in events)  # phones masked
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # uvicorn re-raises the SIGTERM it handled once shutdown is complete
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()[-2000:]
    assert '"event": "runtime_closed"' in log.read_text()
    # one process, one line: the worker thread's role says it, the web role does not repeat it
    opened = [e for e in events if e["event"] == "runtime_opened"]
    assert [e["role"] for e in opened] == ["processing"], opened


def test_unreachable_backend_is_one_clear_error_and_exit_1(tmp_path: Path) -> None:
    """A backend that cannot be reached stops `serve` before it listens: one line, its address."""
    port = free_port()
    env = clean_env(
        QUEUE_BACKEND="redis",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        WHATSAPP_APP_SECRET="s",
        WHATSAPP_VERIFY_TOKEN="t",
    )
    result = subprocess.run(
        [sys.executable, "-m", "pyloto_cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "BackendUnavailable" in result.stderr
    assert env["REDIS_URL"].rsplit("/", 1)[0] in result.stderr.replace("\n", "")
