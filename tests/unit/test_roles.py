"""The composition root builds each role only where it is used."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pyloto_cli.bootstrap import open_roles
from pyloto_cli.settings import Settings


async def test_the_intake_role_opens_no_llm_client(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A web process takes webhooks in even when its LLM settings could not open a responder:
    only a role that processes tasks opens one."""
    settings = make_settings(
        openai_api_key="sk-test",
        openai_base_url="http://127.0.0.1:9/v1",
        prompts_dir=tmp_path / "missing",
    )
    async with open_roles(settings) as roles:
        intake = await roles.intake()
        assert (await intake.check_ready())["sessions"] == "ok"
        assert await roles.push() is None  # a pull queue: /tasks/process has nothing to run
        with pytest.raises(ValueError, match="PYLOTO_PROMPTS_DIR"):
            await roles.worker()


async def test_roles_are_built_once_and_shared(make_settings: Callable[..., Settings]) -> None:
    """The memory queue's worker leases what the intake's sink stored: one queue object."""
    settings = make_settings(
        queue_backend="memory", session_store_backend="memory", dedupe_backend="memory"
    )
    async with open_roles(settings) as roles:
        intake, worker = await roles.intake(), await roles.worker()
        assert worker.queue is intake.sink
        assert await roles.intake() is intake
        assert await roles.worker() is worker
        assert worker.pipeline.sessions is intake.sessions
