"""`pyloto queue stats|drain|failed-deliveries|dead-letter ...` on the SQLite queue."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pyloto_cli.bootstrap import open_roles
from pyloto_cli.cli import app
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.logs import log_id
from pyloto_cli.settings import Settings
from tests.conftest import FIXTURES, stamped_copy, stamped_fixture
from tests.fakes.graph_server import FakeGraphServer

TEXT = FIXTURES / "webhooks" / "text.json"


def invoke_json(runner: CliRunner, *args: str, code: int = 0, **kwargs: Any) -> Any:
    result = runner.invoke(app, [*args, "--json"], **kwargs)
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def bury(data_dir: Path, *fixtures: str, error: str = "PermanentError: test (code 131026)") -> None:
    """Enqueue the fixtures' tasks with the queue API and dead-letter every one of them."""

    async def go() -> None:
        async with open_roles(Settings(_env_file=None, data_dir=data_dir)) as roles:
            queue = (await roles.queue_parts()).queue
            assert queue is not None
            for name in fixtures:
                await queue.enqueue(split_webhook(stamped_fixture(name), time.time()))
            while leased := await queue.lease(10, 30.0):
                for lease in leased:
                    await queue.dead_letter(lease, error)

    asyncio.run(go())


def bury_payloads(data_dir: Path, *payloads: dict[str, Any]) -> None:
    """Enqueue the payloads' tasks and dead-letter every one of them."""

    async def go() -> None:
        async with open_roles(Settings(_env_file=None, data_dir=data_dir)) as roles:
            queue = (await roles.queue_parts()).queue
            assert queue is not None
            for payload in payloads:
                await queue.enqueue(split_webhook(payload, time.time()))
            while leased := await queue.lease(10, 30.0):
                for lease in leased:
                    await queue.dead_letter(lease, "PermanentError: test (code 131026)")

    asyncio.run(go())


@pytest.fixture
def two_dead(cli_env: Path) -> list[str]:
    """Two dead letters: a text message and a failed status."""
    bury(cli_env, "webhooks/text.json", "webhooks/status_failed.json")
    return ["wamid.PYLOTO_TEXT_0001", "wamid.PYLOTO_OUT_FAILED_0001:failed"]


class TestStats:
    def test_json_reports_counts_backend_and_age(self, runner: CliRunner) -> None:
        """`--json` prints one object with every count, the backend and the oldest age."""
        invoke_json(runner, "enqueue", str(TEXT))
        stats = invoke_json(runner, "queue", "stats")
        assert set(stats) == {
            "backend",
            "depth",
            "ready",
            "leased",
            "retrying",
            "dead_lettered",
            "reply_expired",
            "oldest_age_s",
        }
        assert (stats["backend"], stats["depth"], stats["ready"]) == ("sqlite", 1, 1)
        assert stats["oldest_age_s"] >= 0

    def test_watch_stops_after_count_refreshes(self, runner: CliRunner) -> None:
        """`--watch --count 3 --json` prints three snapshots, one JSON object per line."""
        result = runner.invoke(
            app, ["queue", "stats", "--watch", "--count", "3", "--interval", "0.05", "--json"]
        )
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert [line["depth"] for line in lines] == [0, 0, 0]

    def test_human_output_is_a_table(self, runner: CliRunner) -> None:
        """Without --json the counts are printed as a table."""
        result = runner.invoke(app, ["queue", "stats"])
        assert result.exit_code == 0, result.output
        assert "dead lettered" in result.stdout
        assert "sqlite" in result.stdout


class TestDeadLetters:
    def test_list_shows_every_dead_letter_masked(
        self, runner: CliRunner, two_dead: list[str]
    ) -> None:
        """`list --json` gives ids, errors and attempts; conversations keep only 4 digits."""
        listed = invoke_json(runner, "queue", "dead-letter", "list")["dead_letters"]
        assert [d["task_id"] for d in listed] == two_dead
        assert listed[0]["conversation"] == "200000000000001:***1234"
        assert listed[0]["error"] == "PermanentError: test (code 131026)"
        assert listed[0]["attempts"] == 1

    def test_show_prints_the_item(self, runner: CliRunner, two_dead: list[str]) -> None:
        """`show ID` includes the item as received."""
        shown = invoke_json(runner, "queue", "dead-letter", "show", two_dead[0])
        assert shown["item"]["text"]["body"] == "Hi, do you deliver on Sundays?"
        assert shown["kind"] == "message"

    def test_list_shows_ids_whole_with_log_ids_and_numbers_masked(
        self, runner: CliRunner, two_dead: list[str]
    ) -> None:
        """Human `list`: each id whole on a line of its own, the hash its log lines carry,
        the conversation masked; the sender's number appears nowhere."""
        result = runner.invoke(app, ["queue", "dead-letter", "list"])
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        for task_id in two_dead:
            assert task_id in lines
            assert f"log id {log_id(task_id)}" in result.stdout
        assert "200000000000001:***1234" in result.stdout
        assert "15550001234" not in result.stdout

    def test_a_long_wamid_is_never_cut_and_show_masks_the_item(
        self, runner: CliRunner, cli_env: Path
    ) -> None:
        """A real-length wamid stays whole on an 80-column console; `show` (human and JSON)
        masks every phone number of the stored item and keeps the ids whole."""
        wamid = "wamid.HBgLMTU1NTAwMDEyMzQVAgASGBQzQTdCQ0Q3RjFGNjU4RUFFRDY3RQA="
        payload = stamped_fixture("webhooks/text.json")
        value = payload["entry"][0]["changes"][0]["value"]
        value["messages"][0]["id"] = wamid
        value["messages"][0]["context"] = {"from": "15550009876", "id": "wamid.CTX"}
        bury_payloads(cli_env, payload)
        listed = runner.invoke(app, ["queue", "dead-letter", "list"], terminal_width=80)
        assert wamid in listed.stdout.splitlines()
        shown = invoke_json(runner, "queue", "dead-letter", "show", wamid)
        assert shown["task_id"] == wamid
        assert shown["item"]["from"] == "***1234"
        assert shown["item"]["context"] == {"from": "***9876", "id": "wamid.CTX"}
        human = runner.invoke(app, ["queue", "dead-letter", "show", wamid], terminal_width=80)
        assert f"task_id: {wamid}" in human.stdout.splitlines()
        assert f"log_id: {log_id(wamid)}" in human.stdout
        for number in ("15550001234", "15550009876"):
            assert number not in listed.stdout + human.stdout + json.dumps(shown)

    def test_show_unknown_id_exits_1(self, runner: CliRunner, two_dead: list[str]) -> None:
        """An id that is not a dead letter is an error."""
        result = runner.invoke(app, ["queue", "dead-letter", "show", "wamid.nope"])
        assert result.exit_code == 1
        assert "no dead letter wamid.nope" in result.stderr

    def test_requeue_one_then_drain_answers_it(
        self, runner: CliRunner, two_dead: list[str]
    ) -> None:
        """A requeued dead letter is processed by the next drain; the other stays dead."""
        report = invoke_json(runner, "queue", "dead-letter", "requeue", two_dead[0])
        assert report == {"requeued": 1, "missing": []}
        assert invoke_json(runner, "queue", "stats")["ready"] == 1
        drained = invoke_json(runner, "queue", "drain")
        assert drained["done"] == 1
        remaining = invoke_json(runner, "queue", "dead-letter", "list")["dead_letters"]
        assert [d["task_id"] for d in remaining] == [two_dead[1]]

    def test_requeue_all(self, runner: CliRunner, two_dead: list[str]) -> None:
        """`--all` moves every dead letter back."""
        assert invoke_json(runner, "queue", "dead-letter", "requeue", "--all")["requeued"] == 2
        assert invoke_json(runner, "queue", "stats")["dead_lettered"] == 0

    def test_requeue_unknown_id_exits_1(self, runner: CliRunner, two_dead: list[str]) -> None:
        """Ids that are not dead letters are reported; the known ones are still requeued."""
        report = invoke_json(
            runner, "queue", "dead-letter", "requeue", "wamid.nope", two_dead[1], code=1
        )
        assert report == {"requeued": 1, "missing": ["wamid.nope"]}

    def test_requeue_needs_ids_or_all(self, runner: CliRunner, two_dead: list[str]) -> None:
        """Neither ids nor --all is a usage error."""
        result = runner.invoke(app, ["queue", "dead-letter", "requeue"])
        assert result.exit_code == 2
        assert "--all" in result.stderr

    def test_purge_asks_first(self, runner: CliRunner, two_dead: list[str]) -> None:
        """Without --yes, answering no keeps the dead letters."""
        result = runner.invoke(app, ["queue", "dead-letter", "purge"], input="n\n")
        assert result.exit_code == 1
        assert invoke_json(runner, "queue", "stats")["dead_lettered"] == 2

    def test_purge_yes_deletes_them(self, runner: CliRunner, two_dead: list[str]) -> None:
        """`purge --yes` deletes every dead letter."""
        assert invoke_json(runner, "queue", "dead-letter", "purge", "--yes") == {"purged": 2}
        assert invoke_json(runner, "queue", "dead-letter", "list") == {"dead_letters": []}


def test_failed_delivery_is_visible_with_its_error_code(runner: CliRunner) -> None:
    """A `failed` status webhook, once processed, is listed with code and masked recipient."""
    failed = FIXTURES / "conversations" / "support_bsuid" / "004.json"
    invoke_json(runner, "enqueue", str(failed))
    invoke_json(runner, "queue", "drain")
    rows = invoke_json(runner, "queue", "failed-deliveries")["failed"]
    assert len(rows) == 1
    assert rows[0]["message_id"] == "wamid.dryrun.3"
    assert (rows[0]["error_code"], rows[0]["error_title"]) == (131047, "Re-engagement message")
    assert rows[0]["recipient"] == "BR.***0003"
    assert rows[0]["inbound_message_id"] == "wamid.PYLOTO_CONV_SUPPORT_0003"


async def test_drain_dead_letters_a_permanent_graph_error_and_exits_1(
    runner: CliRunner, tmp_path: Path
) -> None:
    """With a Graph token, a send refused with 131026 is dead-lettered; `list` shows why."""
    text = stamped_copy(TEXT, tmp_path / "inbox")
    async with FakeGraphServer() as graph:
        graph.fail(131026, times=None)
        env = {"WHATSAPP_ACCESS_TOKEN": "test-token", "GRAPH_API_URL": graph.url}
        enqueued = await asyncio.to_thread(runner.invoke, app, ["enqueue", str(text)])
        assert enqueued.exit_code == 0, enqueued.output
        result = await asyncio.to_thread(runner.invoke, app, ["queue", "drain", "--json"], env=env)
        assert [(r.answered, r.code) for r in graph.requests] == [(400, 131026)]
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["dead_lettered"] == 1
    listed = await asyncio.to_thread(invoke_json, runner, "queue", "dead-letter", "list")
    assert [d["task_id"] for d in listed["dead_letters"]] == ["wamid.PYLOTO_TEXT_0001"]
    assert "131026" in listed["dead_letters"][0]["error"]
