"""`pyloto replay`: conversations against their golden transcripts, diffs, inputs, fixtures."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pyloto_cli.adapters.llm import offline
from pyloto_cli.bootstrap import open_roles
from pyloto_cli.cli import app
from pyloto_cli.logs import log_id
from pyloto_cli.settings import Settings
from pyloto_cli.tools.replay import ReplayClock, run_replay
from pyloto_cli.tools.sources import Source
from pyloto_cli.tools.transcript import diff_transcripts, normalize, read_transcript
from tests.conftest import FIXTURES

CONVERSATIONS = sorted(p.name for p in (FIXTURES / "conversations").iterdir() if p.is_dir())
GOLDEN = FIXTURES / "golden"
WEBHOOKS = sorted((FIXTURES / "webhooks").glob("*.json"))


# the fixtures were recorded long ago: judged against their own time, they replay as recorded
RECORDED = ("--now", "recorded")


def replay(runner: CliRunner, *args: str) -> tuple[int, Any]:
    result = runner.invoke(app, ["replay", *RECORDED, *args, "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def test_every_conversation_has_a_golden_transcript() -> None:
    """The fixtures the README points at exist in pairs."""
    assert CONVERSATIONS == [
        "handoff",
        "media",
        "mixed_media",
        "opt_out",
        "pricing",
        "staff_echo",
        "support_bsuid",
    ]
    assert sorted(p.stem for p in GOLDEN.glob("*.jsonl")) == CONVERSATIONS


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_conversation_replays_as_its_golden_transcript(runner: CliRunner, name: str) -> None:
    """Replayed offline, each recorded conversation matches its golden transcript."""
    conversation, golden = FIXTURES / "conversations" / name, GOLDEN / f"{name}.jsonl"
    result = runner.invoke(app, ["replay", *RECORDED, str(conversation), "--expect", str(golden)])
    assert result.exit_code == 0, result.output
    assert "transcript matches --expect" in result.stdout


def test_sessions_carry_across_files_and_redeliveries_are_skipped(runner: CliRunner) -> None:
    """One replay is one conversation: turns count up, a redelivered wamid is not answered."""
    code, report = replay(runner, str(FIXTURES / "conversations" / "pricing"))
    assert code == 0
    items = report["items"]
    assert [i["outcome"] for i in items].count("skipped") == 1
    replies = [i["reply"] for i in items if "reply" in i]
    assert [r["text"].rsplit("(", 1)[1] for r in replies] == [f"turn {n})" for n in range(1, 7)]
    assert [r["message_type"] for r in replies] == [
        "text",
        "text",
        "buttons",
        "text",
        "list",
        "buttons",
    ]
    interactive = items[3]["sent"][0]["body"]
    assert interactive["type"] == "interactive"
    assert interactive["interactive"]["type"] == "button"
    assert items[3]["message"]["from"] == "***1234"


def test_a_different_golden_fails_with_a_readable_diff(runner: CliRunner, tmp_path: Path) -> None:
    """A golden whose reply differs exits 1 and shows both versions in a unified diff."""
    golden = GOLDEN / "pricing.jsonl"
    changed = tmp_path / "changed.jsonl"
    changed.write_text(
        golden.read_text(encoding="utf-8").replace("(turn 2)", "(turn two)"), encoding="utf-8"
    )
    pricing = str(FIXTURES / "conversations" / "pricing")
    result = runner.invoke(app, ["replay", *RECORDED, pricing, "--expect", str(changed)])
    assert result.exit_code == 1
    assert "transcript differs from --expect" in result.stdout
    assert (
        '-    "text": "You said: \\"What is the price for 5 people?\\" (turn two)"' in result.stdout
    )
    assert (
        '+    "text": "You said: \\"What is the price for 5 people?\\" (turn 2)"' in result.stdout
    )


def test_a_changed_offline_reply_fails_the_golden(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the responder's replies change, --expect catches it (exit 1, diff in --json)."""
    monkeypatch.setattr(offline, "_quote", lambda text: text.upper())
    code, report = replay(
        runner,
        str(FIXTURES / "conversations" / "mixed_media"),
        "--expect",
        str(GOLDEN / "mixed_media.jsonl"),
    )
    assert code == 1
    assert report["matched"] is False
    assert '+    "text": "You said: \\"OLÁ! VOCÊS ABREM NO DOMINGO?\\" (turn 4)"' in report["diff"]


def test_record_writes_a_transcript_that_matches_the_golden(
    runner: CliRunner, tmp_path: Path
) -> None:
    """`--record` writes JSON lines equal to the golden once timings and generated ids go."""
    recorded = tmp_path / "out" / "support.jsonl"
    code, report = replay(
        runner, str(FIXTURES / "conversations" / "support_bsuid"), "--record", str(recorded)
    )
    assert code == 0
    assert report["recorded"] == str(recorded)
    items = read_transcript(recorded)
    assert all("timings_ms" in i for i in items)
    golden = read_transcript(GOLDEN / "support_bsuid.jsonl")
    assert [normalize(i) for i in items] == [normalize(i) for i in golden]


def test_normalize_ignores_timings_and_generated_ids_only() -> None:
    """Timings and sent wamids do not count as differences; the inbound wamid does."""
    item = {
        "task_id": "wamid.IN_1",
        "message": {"id": "wamid.IN_1"},
        "sent": [{"message_id": "wamid.dryrun.1", "body": {"context": {"message_id": "x"}}}],
        "timings_ms": {"total": 1.0},
    }
    other = json.loads(json.dumps(item))
    other["sent"][0]["message_id"] = "wamid.dryrun.7"
    other["timings_ms"] = {"total": 9.0}
    assert diff_transcripts([item], [other]) == ""
    other["message"]["id"] = "wamid.IN_2"
    assert "wamid.IN_2" in diff_transcripts([item], [other])
    assert normalize(item)["sent"][0]["body"]["context"]["message_id"] == "x"


def test_json_lines_requests_in_both_shapes(runner: CliRunner, tmp_path: Path) -> None:
    """A .jsonl file holds bodies or {"body": ...} records (object or raw text); bad lines fail."""
    body = json.loads((FIXTURES / "webhooks" / "text.json").read_text(encoding="utf-8"))
    second = json.loads(json.dumps(body).replace("PYLOTO_TEXT_0001", "PYLOTO_TEXT_0002"))
    third = json.loads(json.dumps(body).replace("PYLOTO_TEXT_0001", "PYLOTO_TEXT_0003"))
    requests = tmp_path / "requests.jsonl"
    lines = [
        json.dumps(body),
        json.dumps({"received_at": 1, "headers": {}, "body": second}),
        "",
        json.dumps({"body": json.dumps(third)}),
        "{broken",
    ]
    requests.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, report = replay(runner, str(requests))
    assert code == 1
    items = report["items"]
    assert [i["source"] for i in items] == [f"requests.jsonl:{n}" for n in (1, 2, 4, 5)]
    assert [i["outcome"] for i in items] == ["done", "done", "done", "rejected"]
    assert [i["reply"]["text"][-8:] for i in items[:3]] == ["(turn 1)", "(turn 2)", "(turn 3)"]
    assert items[3]["reason"].startswith("not JSON")
    assert report["failed"] == 1


def test_arguments_replay_in_the_order_given(runner: CliRunner) -> None:
    """Files given one by one are replayed in argument order, not sorted."""
    pricing = FIXTURES / "conversations" / "pricing"
    code, report = replay(runner, str(pricing / "003.json"), str(pricing / "001.json"))
    assert code == 0
    assert [i["source"] for i in report["items"]] == ["003.json", "001.json"]


def test_live_llm_needs_a_key(runner: CliRunner) -> None:
    """`--live-llm` without OPENAI_API_KEY is a usage error."""
    result = runner.invoke(app, ["replay", "--live-llm", str(WEBHOOKS[0])])
    assert result.exit_code == 2
    assert "OPENAI_API_KEY" in result.stderr


def test_human_output_shows_message_reply_and_graph_body(runner: CliRunner) -> None:
    """Without --json each item is a panel with the parsed message, the reply and the body."""
    result = runner.invoke(app, ["replay", *RECORDED, str(FIXTURES / "webhooks" / "text.json")])
    assert result.exit_code == 0, result.output
    for expected in ("text from ***1234", "greeting", "POST /200000000000001/messages", "timings"):
        assert expected in result.stdout
    assert '"biz_opaque_callback_data": "wamid.PYLOTO_TEXT_0001"' in result.stdout


def test_transcripts_mask_every_number_and_keep_ids_and_the_json_shape(
    runner: CliRunner, tmp_path: Path
) -> None:
    """Human output, `--json` and `--record` carry no phone number (`from` and the Graph body's
    `to` masked) and keep the ids whole, the human one with its log id; the JSON shape stays."""
    text = str(FIXTURES / "webhooks" / "text.json")
    human = runner.invoke(app, ["replay", *RECORDED, text])
    assert human.exit_code == 0, human.output
    assert '"to": "***1234"' in human.stdout
    assert "wamid.PYLOTO_TEXT_0001" in human.stdout
    assert log_id("wamid.PYLOTO_TEXT_0001") in human.stdout
    recorded = tmp_path / "t.jsonl"
    _, report = replay(runner, text, "--record", str(recorded))
    [item] = report["items"]
    assert {"source", "task_id", "kind", "message", "outcome", "reply", "sent"} <= set(item)
    assert {"id", "type", "from", "text"} <= set(item["message"])
    assert (item["task_id"], item["message"]["from"]) == ("wamid.PYLOTO_TEXT_0001", "***1234")
    [sent] = item["sent"]
    assert set(sent) == {"phone_number_id", "type", "body", "message_id"}
    assert sent["body"]["to"] == "***1234"
    assert sent["body"]["biz_opaque_callback_data"] == "wamid.PYLOTO_TEXT_0001"
    for output in (human.stdout, json.dumps(report), recorded.read_text()):
        assert "15550001234" not in output


@pytest.mark.parametrize("path", WEBHOOKS, ids=[p.stem for p in WEBHOOKS])
async def test_every_webhook_fixture_replays_without_failure(path: Path, tmp_path: Path) -> None:
    """Each fixture alone goes through the whole pipeline: no rejection, retry or dead letter."""
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")
    source = [Source(path.name, path=path)]
    report = await run_replay(settings, open_roles, source, now=ReplayClock.RECORDED)
    assert report.items
    assert report.failures == []
    assert all(i["outcome"] in ("done", "skipped") for i in report.items)


def test_the_whole_webhooks_directory_replays_in_one_run(runner: CliRunner) -> None:
    """All fixtures in one replay (one runtime, sorted by name) exit 0."""
    code, report = replay(runner, str(FIXTURES / "webhooks"))
    assert code == 0
    names = [i["source"] for i in report["items"]]
    assert names == sorted(names, key=lambda n: n.split("/")[1])
    assert len({n for n in names}) == len(WEBHOOKS)


def test_an_old_recording_on_the_wall_clock_is_stored_not_answered_and_exits_0(
    runner: CliRunner,
) -> None:
    """Without `--now recorded`, a message recorded long ago is stale: `skipped` with the
    reason `message_stale`, nothing sent, and the replay still succeeds."""
    result = runner.invoke(app, ["replay", str(FIXTURES / "webhooks" / "text.json"), "--json"])
    assert result.exit_code == 0, result.output
    [item] = json.loads(result.stdout)["items"]
    assert (item["outcome"], item["reason"], item["sent"]) == ("skipped", "message_stale", [])


def test_the_recorded_clock_is_the_newest_timestamp_of_the_whole_input(
    runner: CliRunner, tmp_path: Path
) -> None:
    """`--now recorded` judges each message against the newest one in the input: a message a
    day and a half older than the last is stale, the last is answered."""
    body = json.loads((FIXTURES / "webhooks" / "text.json").read_text(encoding="utf-8"))
    later = json.loads(
        json.dumps(body)
        .replace("PYLOTO_TEXT_0001", "PYLOTO_TEXT_0002")
        .replace('"1767225600"', '"1767355200"')
    )
    (tmp_path / "1.json").write_text(json.dumps(body), encoding="utf-8")
    (tmp_path / "2.json").write_text(json.dumps(later), encoding="utf-8")
    code, report = replay(runner, str(tmp_path))
    assert code == 0
    assert [(i["outcome"], i.get("reason")) for i in report["items"]] == [
        ("skipped", "message_stale"),
        ("done", None),
    ]
    assert [len(i["sent"]) for i in report["items"]] == [0, 1]


def test_an_unknown_clock_is_a_usage_error(runner: CliRunner) -> None:
    """`--now` takes wall or recorded."""
    result = runner.invoke(app, ["replay", "--now", "yesterday", str(WEBHOOKS[0])])
    assert result.exit_code == 2


def test_a_long_message_shows_its_reply_split_in_order(runner: CliRunner, tmp_path: Path) -> None:
    """The offline responder quotes the whole text: a 9,000-character message is answered in
    three text parts (cut at sentence ends: the quote is one line), in order, all in that
    task's `sent` list."""
    text = "\n\n".join((f"Paragraph {n}. " + "All good here. " * 63).strip() for n in range(10))
    message = {
        "from": "15550001234",
        "id": "wamid.LONG1",
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": text},
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": "900000000000002"},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": "15550001234"}],
        "messages": [message],
    }
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
    }
    path = tmp_path / "long.json"
    path.write_text(json.dumps(payload))
    code, report = replay(runner, str(path))
    assert code == 0
    [item] = report["items"]
    sent = item["sent"]
    assert [s["type"] for s in sent] == ["text"] * 3
    bodies = [s["body"]["text"]["body"] for s in sent]
    assert bodies[0].startswith('You said: "Paragraph 0.')
    assert bodies[-1].endswith("(turn 1)")
    assert " ".join(bodies) == f'You said: "{" ".join(text.split())}" (turn 1)'
