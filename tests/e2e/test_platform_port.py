"""`pyloto serve` with only PORT set (Cloud Run's contract) listens on every interface and
says so in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.serve_process import ServeProcess

pytestmark = pytest.mark.e2e

_PROC_NET_TCP = Path("/proc/net/tcp")
_LISTEN = "0A"


def _listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses (hex, as the kernel lists them) with a socket listening on `port`."""
    found = set()
    for line in _PROC_NET_TCP.read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == _LISTEN and int(hex_port, 16) == port:
            found.add(address)
    return found


@pytest.mark.skipif(not _PROC_NET_TCP.exists(), reason="needs Linux's /proc/net/tcp")
async def test_port_alone_binds_every_interface(tmp_path: Path) -> None:
    serve = ServeProcess(
        tmp_path,
        {
            "PYLOTO_DATA_DIR": str(tmp_path / "data"),
            "WHATSAPP_APP_SECRET": "platform-secret",
            "WHATSAPP_VERIFY_TOKEN": "platform-verify",
            "OPENAI_ENABLED": "false",
            "PYLOTO_WORKER_ENABLED": "false",
        },
    )
    del serve.env["PYLOTO_PORT"]
    serve.env["PORT"] = str(serve.port)
    try:
        await serve.start()  # polls http://127.0.0.1:PORT/readyz
        assert _listening_addresses(serve.port) == {"00000000"}  # 0.0.0.0, not 127.0.0.1 only
        said = [line for line in serve.log_tail().splitlines() if "PORT is set" in line]
        assert said == [
            f"PORT is set: listening on 0.0.0.0:{serve.port} (every interface), "
            "as Cloud Run expects; set PYLOTO_HOST to choose another"
        ]
    finally:
        serve.terminate()
