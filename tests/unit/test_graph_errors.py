"""The Graph error table: retry, give up or pause, decided by Meta's code, not the HTTP status."""

from __future__ import annotations

import pytest

from pyloto_cli.domain.graph_errors import GRAPH_ERRORS, Action, GraphError, classify

RETRY_CODES = [130429, 131056, 4, 80007, 2, 131000, 131016, 131057, 133004]
PERMANENT_CODES = [131047, 131026, 131048, 131050, 131051, 100, 131008, 131009, 131021]


@pytest.mark.parametrize("code", RETRY_CODES)
def test_throttling_and_outages_are_retried_even_as_http_400(code: int) -> None:
    """Retryable codes retry whatever the HTTP status (Meta throttles with 400)."""
    assert classify(code, 400).action is Action.RETRY


@pytest.mark.parametrize("code", PERMANENT_CODES)
def test_payload_and_recipient_errors_are_permanent_even_as_http_500(code: int) -> None:
    """Permanent codes never retry, even behind a 5xx."""
    assert classify(code, 500).action is Action.PERMANENT


@pytest.mark.parametrize("code", [132000, 132001, 132012, 132069])
def test_template_errors_are_permanent(code: int) -> None:
    """Every 132xxx template error is permanent."""
    assert classify(code, 400).action is Action.PERMANENT


@pytest.mark.parametrize("code", [0, 190])
def test_token_errors_pause(code: int) -> None:
    """Auth failures (0, 190) pause sending."""
    assert classify(code, 401).action is Action.AUTH


@pytest.mark.parametrize(("strikes", "wait"), [(0, 1.0), (1, 4.0), (2, 16.0), (3, 64.0)])
def test_pair_rate_limit_waits_4_to_the_x(strikes: int, wait: float) -> None:
    """131056 waits 4^X s, X = consecutive pair-limit hits on that recipient."""
    assert classify(131056, 400, pair_strikes=strikes).retry_after == wait


def test_pair_rate_limit_wait_is_capped() -> None:
    """The 4^X wait stops growing (no multi-day waits)."""
    assert classify(131056, 400, pair_strikes=20).retry_after == 4.0**5


def test_fixed_waits() -> None:
    """Throughput and maintenance errors carry their own waits."""
    assert classify(130429, 400).retry_after == 1.0
    assert classify(131057, 500).retry_after == 60.0
    assert classify(131000, 500).retry_after is None  # the queue's policy


@pytest.mark.parametrize(
    ("status", "action"),
    [(500, Action.RETRY), (503, Action.RETRY), (429, Action.RETRY), (400, Action.PERMANENT)],
)
def test_without_a_code_the_status_decides(status: int, action: Action) -> None:
    """A body without a Graph error (a proxy's 502) falls back on the HTTP status."""
    assert classify(None, status).action is action


def test_unknown_429_uses_retry_after_header() -> None:
    """An unknown 429 honours the server's Retry-After."""
    assert classify(None, 429, retry_after_header=7.0).retry_after == 7.0


def test_unknown_code_on_400_is_permanent() -> None:
    """An unknown code with a 4xx is not retried blindly."""
    decision = classify(999_999, 400)
    assert decision.action is Action.PERMANENT
    assert decision.reason == "graph_error_999999"


def test_table_has_one_action_per_code() -> None:
    """Each code in the table has a reason and a known action."""
    assert all(rule.reason and rule.action in Action for rule in GRAPH_ERRORS.values())


def test_parses_meta_error_shape() -> None:
    """code, message, details, subcode and fbtrace_id are read from Meta's error object."""
    body = {
        "error": {
            "message": "(#130429) Rate limit hit",
            "type": "OAuthException",
            "code": 130429,
            "error_data": {"messaging_product": "whatsapp", "details": "throughput reached"},
            "error_subcode": 2494055,
            "fbtrace_id": "Az8or2",
        }
    }
    error = GraphError.from_body(body)
    assert error == GraphError(
        130429, "(#130429) Rate limit hit", "throughput reached", 2494055, "Az8or2"
    )


def test_parses_error_with_title_only() -> None:
    """The older shape (title, no message, no fbtrace_id) still gives code and text."""
    error = GraphError.from_body({"error": {"code": 131047, "title": "Re-engagement message"}})
    assert error is not None
    assert (error.code, error.message, error.fbtrace_id) == (131047, "Re-engagement message", None)


@pytest.mark.parametrize("body", [None, [], {"error": "boom"}, {"messages": []}, "text"])
def test_non_error_bodies(body: object) -> None:
    """Bodies without an error object give None."""
    assert GraphError.from_body(body) is None
