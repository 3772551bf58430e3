"""The suite's hermetic environment: a developer's keys and `.env` never reach a test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyloto_cli.settings import Settings
from tests.conftest import make_hermetic


def test_the_settings_variables_are_cleared_and_others_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    leaky = {
        "OPENAI_API_KEY": "sk-real",
        "WHATSAPP_ACCESS_TOKEN": "EAA-real",
        "PYLOTO_DATA_DIR": "/home/me/data",
        "REDIS_URL": "redis://prod:6379/0",
        "GOOGLE_APPLICATION_CREDENTIALS": "/home/me/key.json",
        "FIRESTORE_EMULATOR_HOST": "10.0.0.5:8080",
        "CLOUDTASKS_QUEUE_NAME": "inbound",
        "GRAPH_API_URL": "https://graph.facebook.com",
        "PUBSUB_TOPIC": "t",
        "QUEUE_BACKEND": "redis",
        "PORT": "9000",
    }
    for name, value in leaky.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NOT_A_SETTING", "kept")
    make_hermetic(monkeypatch)
    assert not set(leaky) & set(os.environ)
    assert os.environ["NOT_A_SETTING"] == "kept"
    settings = Settings()
    assert settings.openai_api_key is None
    assert settings.redis_url is None


def test_a_dotenv_in_the_cwd_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("WHATSAPP_APP_SECRET=from-dotenv\nPYLOTO_CONCURRENCY=3\n")
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.whatsapp_app_secret is None
    assert settings.concurrency == Settings.model_fields["concurrency"].default
