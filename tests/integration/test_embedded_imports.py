"""The embedded defaults need no cloud package: serving never imports redis or Google clients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECK = """
import asyncio, sys
from pyloto_cli.cli import app
from pyloto_cli.web.app import create_app
from pyloto_cli.bootstrap import open_roles
from pyloto_cli.settings import Settings

async def main():
    settings = Settings(_env_file=None, data_dir=sys.argv[1], whatsapp_app_secret="s")
    async with open_roles(settings) as roles:
        create_app(settings, await roles.intake(), await roles.push())
        await roles.worker()

asyncio.run(main())
optional = {"google", "redis", "grpc", "prometheus_client"}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in optional)
print(loaded)
sys.exit(1 if loaded else 0)
"""


def test_default_runtime_imports_no_cloud_client(tmp_path: Path) -> None:
    """Opening the default roles and app loads neither redis nor google-* nor grpc, nor
    prometheus_client while metrics are off."""
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
