"""How `pyloto send` words a failed upload or send: what became of the message, and when to
try again (an ambiguous send may have gone out: it must not invite a blind retry)."""

from __future__ import annotations

from pyloto_cli.domain.errors import (
    AmbiguousSendError,
    PermanentError,
    SendPaused,
    TransientError,
)
from pyloto_cli.tools.send import describe_failure


def test_a_permanent_error_is_not_sent_with_meta_s_reason_in_words() -> None:
    exc = PermanentError("graph error 131026 (undeliverable): Message undeliverable", code=131026)
    assert str(describe_failure(exc, uploading=False)) == (
        "not sent: graph error 131026 (undeliverable): Message undeliverable"
    )
    assert str(describe_failure(exc, uploading=True)).startswith(
        "the upload failed, nothing was sent: graph error 131026"
    )


def test_a_throttled_send_says_when_to_try_again() -> None:
    paced = describe_failure(TransientError("pair_rate_limit", retry_after=5.2), uploading=False)
    assert str(paced) == "not sent (pair rate limit): try again in 5 s"
    outage = describe_failure(TransientError("graph error None (http_503): x"), uploading=False)
    assert str(outage).endswith("try again later")


def test_a_lost_answer_may_have_sent_the_message_but_not_an_upload() -> None:
    lost = AmbiguousSendError("graph_no_answer: ReadTimeout after the request was sent")
    message = str(describe_failure(lost, uploading=False))
    assert "it may have been sent" in message
    assert "try again" not in message
    assert str(describe_failure(lost, uploading=True)).startswith(
        "the upload failed, nothing was sent"
    )


def test_a_rejected_token_names_the_setting() -> None:
    paused = SendPaused("graph error 190 (token_expired): expired", retry_after=300, code=190)
    assert "WHATSAPP_ACCESS_TOKEN is rejected by Graph" in str(
        describe_failure(paused, uploading=False)
    )
