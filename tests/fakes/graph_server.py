"""Moved to `pyloto_cli.fakes.graph_server` (bench needs it installed); re-exported for tests."""

from pyloto_cli.fakes.graph_server import (
    KNOWN_ERRORS,
    FakeGraphServer,
    Fault,
    RecordedRequest,
    RecordedUpload,
    error_body,
    main,
)

__all__ = [
    "KNOWN_ERRORS",
    "FakeGraphServer",
    "Fault",
    "RecordedRequest",
    "RecordedUpload",
    "error_body",
    "main",
]

if __name__ == "__main__":  # `python -m tests.fakes.graph_server` (benchmarks/) still works
    main()
