"""Moved to `pyloto_cli.fakes.openai_server` (bench needs it installed); re-exported for tests."""

from pyloto_cli.fakes.openai_server import (
    DEFAULT_CONTENT,
    FakeAnswer,
    FakeOpenAIServer,
    RecordedRequest,
    completion_body,
    error_body,
    main,
    route_of,
    serve,
)

__all__ = [
    "DEFAULT_CONTENT",
    "FakeAnswer",
    "FakeOpenAIServer",
    "RecordedRequest",
    "completion_body",
    "error_body",
    "main",
    "route_of",
    "serve",
]

if __name__ == "__main__":  # `python -m tests.fakes.openai_server` (benchmarks/) still works
    main()
