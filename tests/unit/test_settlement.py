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


# --- the retry horizon ----------------------------------------------------------------------

HORIZON = RetryPolicy(base_s=1.0, cap_s=300.0, jitter=0.0, max_attempts=3, horizon_s=3600.0)
SENT_AT = 1_000_000.0  # the message's own timestamp


def known(outcome: Outcome = Outcome.RETRY, delay: float | None = None) -> TaskResult:
    """A known transient failure (or a wait) of a message sent at SENT_AT."""
    return TaskResult(outcome, "TransientError: graph 503", delay, since=SENT_AT)


def test_a_known_transient_failure_spends_no_attempt_within_the_horizon() -> None:
    decision = settle(known(), 50, HORIZON, now=SENT_AT + 600)
    assert decision.action is Action.RETRY
    assert decision.counted is False
    assert decision.delay_s == 300.0  # half its age (600 s), within the cap


def test_the_backoff_grows_with_the_messages_age() -> None:
    delays = [settle(known(), 1, HORIZON, now=SENT_AT + age).delay_s for age in (1, 10, 100)]
    assert delays == [1.0, 5.0, 50.0]


def test_the_last_retry_is_made_at_the_horizon_then_a_dead_letter() -> None:
    last = settle(known(delay=120.0), 1, HORIZON, now=SENT_AT + 3550)
    assert (last.action, last.delay_s) == (Action.RETRY, 50.0)
    dead = settle(known(), 1, HORIZON, now=SENT_AT + 3600)
    assert dead.action is Action.DEAD_LETTER
    assert dead.reason is not None
    assert dead.reason.startswith("TransientError: graph 503; gave up")


def test_the_24_hour_window_ends_retries_before_a_longer_horizon() -> None:
    policy = RetryPolicy(horizon_s=48 * 3600.0)
    assert settle(known(), 1, policy, now=SENT_AT + 23 * 3600).action is Action.RETRY
    assert settle(known(), 1, policy, now=SENT_AT + 24 * 3600).action is Action.DEAD_LETTER


def test_a_wait_of_pyloto_own_never_spends_an_attempt_but_ends_at_the_horizon() -> None:
    wait = settle(known(Outcome.DEFER, delay=5.0), 99, HORIZON, now=SENT_AT + 10)
    assert wait == Settlement(Action.DEFER, "TransientError: graph 503", 5.0)
    late = settle(known(Outcome.DEFER, delay=5.0), 1, HORIZON, now=SENT_AT + 3601)
    assert late.action is Action.DEAD_LETTER


def test_max_attempts_bounds_only_failures_of_unknown_kind() -> None:
    unknown = TaskResult(Outcome.RETRY, "RuntimeError: bug")
    assert settle(unknown, 2, HORIZON).action is Action.RETRY
    assert settle(unknown, 3, HORIZON).action is Action.DEAD_LETTER
    assert settle(known(), 3, HORIZON, now=SENT_AT + 1).action is Action.RETRY
