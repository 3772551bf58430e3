"""The bench's per-conversation layout and its reply-order check."""

from __future__ import annotations

from collections import Counter

from pyloto_cli.bench.report import RunRecord, out_of_order
from pyloto_cli.bench.runner import BenchConfig, senders_of


def test_each_sender_writes_its_messages_one_second_apart() -> None:
    senders = senders_of(BenchConfig(messages=2000, rate=100.0, messages_per_user=5))
    assert senders is not None
    assert len(set(senders)) == 400
    assert set(Counter(senders).values()) == {5}
    first = [i for i, s in enumerate(senders) if s == 0]
    assert first == [0, 100, 200, 300, 400]  # at 100 webhooks/s: 1 s apart
    assert senders_of(BenchConfig(messages=10)) is None  # round robin, as before


def record(replies: dict[str, list[float]], users: list[int] | None) -> RunRecord:
    return RunRecord(
        hooks=["a", "b", "c", "d"],
        acks=[],
        replies=replies,
        started=0.0,
        finished=1.0,
        cpu_s=None,
        peak_rss=None,
        dead_letters=None,
        users=users,
    )


def test_a_sender_whose_replies_crossed_is_out_of_order() -> None:
    users = [1, 2, 1, 2]
    in_order = {"a": [1.0], "b": [1.5], "c": [2.0], "d": [2.5, 0.1]}
    assert out_of_order(record(in_order, users)) == 1  # d's first reply came before b's
    crossed = {"a": [3.0], "b": [1.5], "c": [2.0], "d": [2.5]}
    assert out_of_order(record(crossed, users)) == 1
    assert out_of_order(record({"a": [1.0], "c": [2.0]}, users)) == 0
    assert out_of_order(record(in_order, None)) is None
