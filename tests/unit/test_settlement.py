"""The one ack / defer / retry / dead-letter decision the worker and `/tasks/process` share."""

from __future__ import annotations

import pytest

from pyloto_cli.domain.retry import RetryPolicy
from pyloto_cli.domain.task import FailureKind
from pyloto_cli.pipeline.process import Outcome, TaskResult
from pyloto_cli.pipeline.settlement import DEFAULT_DEFER_S, Action, Settlement, settle

POLICY = RetryPolicy(base_s=2.0, cap_s=100.0, jitter=0.0, max_attempts=3)


@pytest.mark.parametrize("outcome", [Outcome.DONE, Outcome.SKIPPED])
def test_done_and_duplicates_are_acked_even_on_the_last_attempt(outcome: Outcome) -> None:
    assert settle(TaskResult(outcome), 3, POLICY) == Settlement(Action.ACK)


def test_a_retry_waits_the_failures_own_delay_and_carries_its_kind() -> None:
    result = TaskResult(
        Outcome.RETRY, "AmbiguousSendError: x", 7.0, failure=FailureKind.AMBIGUOUS_SEND
    )
    assert settle(result, 1, POLICY) == Settlement(
        Action.RETRY, "AmbiguousSendError: x", 7.0, FailureKind.AMBIGUOUS_SEND
    )


def test_a_retry_without_a_delay_gets_the_policys_backoff() -> None:
    assert settle(TaskResult(Outcome.RETRY, "500"), 2, POLICY) == Settlement(
        Action.RETRY, "500", 4.0
    )


def test_a_retry_on_the_last_attempt_is_dead_lettered_with_its_reason() -> None:
    result = TaskResult(Outcome.RETRY, "still failing", 1.0, failure=FailureKind.AMBIGUOUS_SEND)
    assert settle(result, 3, POLICY) == Settlement(Action.DEAD_LETTER, "still failing")


def test_a_permanent_failure_is_dead_lettered_on_its_first_attempt() -> None:
    result = TaskResult(Outcome.DEAD, "PermanentError: bad recipient (code 131026)")
    assert settle(result, 1, POLICY).action is Action.DEAD_LETTER


def test_a_pause_defers_whatever_the_attempt_with_its_delay_or_the_default() -> None:
    assert settle(TaskResult(Outcome.DEFER, "paused", 30.0), 3, POLICY) == Settlement(
        Action.DEFER, "paused", 30.0
    )
    assert settle(TaskResult(Outcome.DEFER, "paused"), 3, POLICY).delay_s == DEFAULT_DEFER_S


def test_a_failure_without_a_reason_still_says_something() -> None:
    assert settle(TaskResult(Outcome.DEAD), 1, POLICY).reason == "unknown error"
