"""First run with no settings: generate a local app secret and verify token, stay closed.

Signature checking is never switched off. With no `WHATSAPP_APP_SECRET`, `pyloto serve`
generates one (and a verify token) into the data dir, reuses it on later runs, and writes an
example webhook next to it so the printed `curl` line posts bytes whose signature it computed.
Real Meta webhooks are rejected until the real app secret is set.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from pyloto_cli.domain.errors import DataDirUnusable
from pyloto_cli.domain.signature import sign
from pyloto_cli.private_files import private_dir, write_private
from pyloto_cli.settings import Settings

SECRETS_FILE = "local-secrets.json"
EXAMPLE_FILE = "example-webhook.json"


@dataclass(frozen=True, slots=True)
class LocalSetup:
    """What first run generated (or found) and the example it wrote."""

    settings: Settings
    generated: bool
    example_path: Path
    example_signature: str
    # the settings filled in from the local secrets file: the only ones `serve` may print
    local: frozenset[str] = frozenset()


def example_webhook() -> dict[str, object]:
    """A small signed-able webhook: one text message from a fake number, stamped now (it is
    written at each start, and a message more than a day old would not be answered)."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "100000000000001",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550000000",
                                "phone_number_id": "100000000000002",
                            },
                            "contacts": [{"profile": {"name": "Ana"}, "wa_id": "15550001234"}],
                            "messages": [
                                {
                                    "from": "15550001234",
                                    "id": f"wamid.example.{secrets.token_hex(8)}",
                                    "timestamp": str(int(time.time())),
                                    "type": "text",
                                    "text": {"body": "Olá! Qual é o preço? 😊"},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }


def ensure_local_secrets(settings: Settings) -> LocalSetup:
    """Fill in a missing app secret / verify token from (or into) the data dir."""
    try:
        data_dir = private_dir(settings.data_dir)
    except OSError as exc:
        raise DataDirUnusable.because(settings.data_dir, "cannot create it", exc) from exc
    try:
        return _fill_in(settings, data_dir)
    except PermissionError as exc:
        what = "cannot write the local secrets"
        raise DataDirUnusable.because(data_dir, what, exc) from exc


def _fill_in(settings: Settings, data_dir: Path) -> LocalSetup:
    generated = False
    update: dict[str, SecretStr] = {}
    if settings.whatsapp_app_secret is None or settings.whatsapp_verify_token is None:
        path = data_dir / SECRETS_FILE
        if path.exists():
            stored = json.loads(path.read_text(encoding="utf-8"))
        else:
            stored = {"app_secret": secrets.token_hex(32), "verify_token": secrets.token_hex(16)}
            write_private(path, json.dumps(stored).encode())
            generated = True
        if settings.whatsapp_app_secret is None:
            update["whatsapp_app_secret"] = SecretStr(stored["app_secret"])
        if settings.whatsapp_verify_token is None:
            update["whatsapp_verify_token"] = SecretStr(stored["verify_token"])
    final = settings.model_copy(update=update) if update else settings
    example = data_dir / EXAMPLE_FILE
    body = json.dumps(example_webhook(), ensure_ascii=False, indent=1).encode()
    write_private(example, body)
    secret = final.whatsapp_app_secret
    key = secret.get_secret_value().encode() if secret is not None else b""
    return LocalSetup(final, generated, example, sign(key, body), frozenset(update))
