"""Graph API errors -> what to do about them: one table, keyed by Meta's `error.code`.

Meta answers throttling as HTTP 400 and some outages as 500 with a code, so the decision is
made on `error.code` (DOMAIN.md §4); the HTTP status is only a fallback for bodies without one
(a proxy's 502, an empty 503). Pure: the sender turns a `Decision` into an exception.

    RETRY      a TransientError, after `retry_after` seconds (None: the queue's backoff policy)
    PERMANENT  a PermanentError: dead-letter now, never retry
    AUTH       the token is rejected: pause every send until a probe succeeds (SendPaused)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final


class Action(StrEnum):
    """What a Graph error asks of the sender."""

    RETRY = "retry"
    PERMANENT = "permanent"
    AUTH = "auth"


class Backoff(StrEnum):
    """How long a retryable error waits."""

    POLICY = "policy"  # the queue's exponential backoff
    FIXED = "fixed"  # `Rule.wait_s`
    PAIR = "pair"  # 4**strikes seconds, per recipient (131056)


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the table."""

    action: Action
    reason: str
    backoff: Backoff = Backoff.POLICY
    wait_s: float = 0.0


def _retry(reason: str, wait_s: float | None = None) -> Rule:
    if wait_s is None:
        return Rule(Action.RETRY, reason)
    return Rule(Action.RETRY, reason, Backoff.FIXED, wait_s)


def _never(reason: str) -> Rule:
    return Rule(Action.PERMANENT, reason)


_TABLE: dict[int, Rule] = {
    # token rejected: alert, rotate; every send waits
    0: Rule(Action.AUTH, "auth_failed"),
    190: Rule(Action.AUTH, "token_expired"),
    # throttling and outages: retry
    4: _retry("app_rate_limit", 60.0),
    80007: _retry("waba_rate_limit", 30.0),
    130429: _retry("throughput_limit", 1.0),
    131056: Rule(Action.RETRY, "pair_rate_limit", Backoff.PAIR),
    2: _retry("service_unavailable"),
    131000: _retry("unknown_error"),
    131016: _retry("service_unavailable"),
    131057: _retry("number_in_maintenance", 60.0),
    133004: _retry("service_unavailable"),
    # the payload, the recipient or the account: retrying cannot fix these
    1: _never("invalid_request"),
    3: _never("capability_missing"),
    10: _never("permission_denied"),
    100: _never("invalid_parameter"),
    368: _never("account_restricted"),
    130472: _never("user_in_experiment"),
    130497: _never("country_restricted"),
    131005: _never("permission_denied"),
    131008: _never("missing_parameter"),
    131009: _never("invalid_parameter_value"),
    131021: _never("sender_is_recipient"),
    131026: _never("undeliverable"),
    131031: _never("account_locked"),
    131037: _never("display_name_not_approved"),
    131042: _never("payment_issue"),
    131045: _never("number_not_registered"),
    131047: _never("outside_24h_window"),
    131048: _never("spam_rate_limit"),
    131049: _never("ecosystem_engagement"),
    131050: _never("marketing_opt_out"),
    131051: _never("unsupported_message_type"),
    131052: _never("media_download_failed"),
    131053: _never("media_upload_failed"),
    131062: _never("bsuid_recipient_not_supported"),
    131064: _never("template_violation_limit"),
}

GRAPH_ERRORS: Final[Mapping[int, Rule]] = MappingProxyType(_TABLE)
"""Every Graph error code pyloto knows, with its action (DOMAIN.md §4)."""

_PAIR_WAIT_CAP_S: Final = 4.0**5  # 17 min: Meta's 4^X stops making sense beyond this


@dataclass(frozen=True, slots=True)
class GraphError:
    """Meta's `{"error": {...}}` object, the fields pyloto logs and branches on."""

    code: int | None
    message: str
    details: str | None = None
    subcode: int | None = None
    fbtrace_id: str | None = None

    @classmethod
    def from_body(cls, body: Any) -> GraphError | None:
        """The error of a Graph response body, or None if it carries none."""
        if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
            return None
        error: dict[str, Any] = body["error"]
        data = error.get("error_data")
        details = data.get("details") if isinstance(data, dict) else None
        return cls(
            code=_as_int(error.get("code")),
            message=str(error.get("message") or error.get("title") or ""),
            details=str(details) if details is not None else None,
            subcode=_as_int(error.get("error_subcode")),
            fbtrace_id=_as_str(error.get("fbtrace_id")),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of `classify`: what to do, why, and how long to wait (None: the policy)."""

    action: Action
    reason: str
    retry_after: float | None = None


def classify(
    code: int | None,
    http_status: int,
    *,
    pair_strikes: int = 0,
    retry_after_header: float | None = None,
) -> Decision:
    """Decide on a failed Graph answer: by `code` when the table knows it, else by HTTP status.

    `pair_strikes` is how many 131056 errors in a row hit this recipient (X in Meta's 4^X);
    `retry_after_header` is a `Retry-After` the answer carried, used for unknown 429s.
    """
    rule = GRAPH_ERRORS.get(code) if code is not None else None
    if rule is None:
        rule = _by_status(code, http_status)
    if rule.action is not Action.RETRY:
        return Decision(rule.action, rule.reason)
    if rule.backoff is Backoff.PAIR:
        return Decision(
            rule.action, rule.reason, min(4.0 ** max(0, pair_strikes), _PAIR_WAIT_CAP_S)
        )
    if rule.backoff is Backoff.FIXED:
        return Decision(rule.action, rule.reason, rule.wait_s)
    return Decision(rule.action, rule.reason, retry_after_header)


def _by_status(code: int | None, http_status: int) -> Rule:
    """Fallback for codes outside the table (and bodies without one)."""
    if code is not None and 132000 <= code <= 132999:
        return _never("template_error")
    if code is not None and 200 <= code <= 299:
        return _never("permission_denied")
    if http_status == 429:
        return _retry("http_429")
    if http_status >= 500:
        return _retry(f"http_{http_status}")
    if http_status == 401 and code is None:
        return Rule(Action.AUTH, "http_401")
    return _never(f"http_{http_status}" if code is None else f"graph_error_{code}")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
