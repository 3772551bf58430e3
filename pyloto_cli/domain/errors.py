"""pyloto's error tree.

PylotoError
├── WebhookRejected        bad signature, malformed JSON, oversized body -> 4xx, nothing enqueued
│   ├── SignatureError
│   ├── MalformedPayload
│   ├── PayloadTooLarge
│   └── RequestTimeout     the body did not arrive in time -> 408, connection closed
├── TransientError         LLM timeout, Graph 429/5xx, backend down -> nack with backoff
│   ├── Deferral           pyloto waits by its own choice: no attempt is spent
│   │   ├── SendPaused     the Graph token is rejected; sending waits for a probe to succeed
│   │   ├── RateLimited    pyloto's own per-number or per-recipient pacing has no slot yet
│   │   └── CircuitOpen    a circuit breaker (LLM or Graph) is open: the service is down
│   └── AmbiguousSendError a send may have reached Meta (read timeout): retried at most once
├── PermanentError         Graph 4xx codes, unsupported payload -> dead-lettered now
│   └── InvalidTask        a stored task that cannot be parsed or holds an unusable id/number
├── StaleLeaseError        an ack/nack/renew with a lease the queue no longer honours
└── BackendUnavailable     a store or queue cannot be reached at start-up
    ├── DataFileUnusable   a SQLite file is damaged, not a database, or locked by another program
    └── DataDirUnusable    the data dir cannot be created or written
"""

from __future__ import annotations


class PylotoError(Exception):
    """Base of every error pyloto raises on purpose."""


class WebhookRejected(PylotoError):
    """The webhook request is refused; nothing was enqueued."""

    status_code = 400


class SignatureError(WebhookRejected):
    """`X-Hub-Signature-256` is missing or does not match the raw body."""

    status_code = 401


class MalformedPayload(WebhookRejected):
    """The body is signed correctly but is not a webhook payload."""

    status_code = 400


class PayloadTooLarge(WebhookRejected):
    """The body is larger than Meta ever sends (3 MiB)."""

    status_code = 413


class RequestTimeout(WebhookRejected):
    """The body did not arrive within the body timeout (a slow or stalled client)."""

    status_code = 408


class TransientError(PylotoError):
    """A failure worth retrying later; `retry_after` (seconds) overrides the backoff policy."""

    def __init__(
        self, reason: str, *, retry_after: float | None = None, code: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.code = code


class Deferral(TransientError):
    """A wait pyloto chose (its own pacing, a pause, an open breaker): the task did nothing
    wrong, so the wait spends no attempt and never dead-letters it on its own."""


class SendPaused(Deferral):
    """Sending is paused (e.g. the access token was rejected); retry after a long delay."""


class RateLimited(Deferral):
    """pyloto's own send pacing has no free slot within the wait a worker may spend."""


class CircuitOpen(Deferral):
    """A circuit breaker is open: calls are not even tried until its cool-down is over."""


class AmbiguousSendError(TransientError):
    """A send may or may not have reached Meta (e.g. a read timeout after the body went out).

    The messages endpoint has no idempotency key, so a retry can duplicate the reply: the
    pipeline retries it at most once.
    """


class PermanentError(PylotoError):
    """A failure that retrying cannot fix; the task is dead-lettered with this reason."""

    def __init__(self, reason: str, *, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class InvalidTask(PermanentError):
    """A task that no attempt can process: it does not parse, or an id in it cannot go into a
    Graph request, or a number in it is out of range. Dead-lettered at once, never sent."""


class StaleLeaseError(PylotoError):
    """The lease expired or was taken by another worker; the ack/nack is refused."""


class BackendUnavailable(PylotoError):
    """A queue or store could not be reached; the message names it and its address."""


class DataFileUnusable(BackendUnavailable):
    """A data file cannot be used as it is (damaged, not a database, locked by another
    program): no retry fixes that, the operator must. The message names the file."""


class DataDirUnusable(BackendUnavailable):
    """The data dir cannot be created or written (a file in its place, no permission): the
    operator must point PYLOTO_DATA_DIR elsewhere or fix the path. The message says which."""

    @classmethod
    def because(cls, data_dir: object, what: str, exc: OSError) -> DataDirUnusable:
        """The error naming the setting and what to do, not a bare errno."""
        reason = exc.strerror or type(exc).__name__
        return cls(
            f"PYLOTO_DATA_DIR={data_dir}: {what} ({reason}); point PYLOTO_DATA_DIR at a "
            "directory you can write, or fix this one"
        )


class WorkerFailed(PylotoError):
    """A worker that `serve` runs could not start; the message says why."""
