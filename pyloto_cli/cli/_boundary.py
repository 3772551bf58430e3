"""What the operator commands share: settings, quiet logging, the error boundary, JSON output.

The boundary is the CLI's one broad catch (STYLE.md): a usage problem prints one red line and
exits 2, as does a data file the operator must repair or free (damaged, locked); a pyloto or
I/O failure prints one red line and exits 1.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.markup import escape

from pyloto_cli.domain.errors import DataDirUnusable, DataFileUnusable, PylotoError
from pyloto_cli.logs import configure_logging
from pyloto_cli.private_files import private_dir
from pyloto_cli.settings import QueueBackend, Settings
from pyloto_cli.tools import ToolUsageError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# the top-level module a backend needs -> the extra that installs it (pyproject.toml)
_EXTRAS = {"redis": "redis", "google": "gcp", "grpc": "gcp", "proto": "gcp"}


def load_settings() -> Settings:
    """Settings from the environment, and logging that stays out of the way.

    Per-task events are `pyloto worker`'s business; these commands log warnings only, unless
    PYLOTO_LOG_LEVEL=DEBUG.
    """
    settings = Settings()
    level = "DEBUG" if settings.log_level.upper() == "DEBUG" else "WARNING"
    configure_logging(settings.log_format, level)
    return settings


def queue_settings() -> Settings:
    """`load_settings` for a command that reads or fills the queue: it says on stderr which
    data dir it uses, and warns when the queue there is new, since a command run from another
    directory would otherwise show (or fill) an empty queue of its own without a word."""
    settings = load_settings()
    if settings.queue_backend is QueueBackend.MEMORY:
        raise ToolUsageError(
            "QUEUE_BACKEND=memory keeps tasks inside one `pyloto serve` process: this command "
            "would see none and lose what it adds; use QUEUE_BACKEND=sqlite or redis"
        )
    if settings.queue_backend is QueueBackend.SQLITE:
        err = Console(stderr=True)
        try:  # a dir that cannot be made fails here, before the note
            private_dir(settings.data_dir)
        except OSError as exc:
            raise DataDirUnusable.because(settings.data_dir, "cannot create it", exc) from exc
        where = escape(str(settings.data_dir.resolve()))
        if (settings.data_dir / "queue.db").exists():
            err.print(f"data dir: {where}", highlight=False, soft_wrap=True)
        else:
            err.print(
                f"[yellow]warning:[/] no queue in {where} yet: starting an empty one (run from "
                "the directory `pyloto serve` runs in, or set PYLOTO_DATA_DIR)",
                highlight=False,
                soft_wrap=True,
            )
    return settings


def _fail(console: Console, message: str, code: int) -> typer.Exit:
    # one line whatever the terminal's width: an error line is grepped and read in logs
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _settings_problem(exc: ValidationError) -> str:
    """A validation error on one line per field: `PORT: Input should be ... (got '99999')`."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or exc.title
        message = error["msg"].removeprefix("Value error, ")
        secret = any(word in where.upper() for word in ("SECRET", "TOKEN", "KEY"))
        got = "" if secret else f" (got {error['input']!r})"
        parts.append(f"{where}: {message}{got}")
    return "; ".join(parts)


def _missing_extra(exc: ModuleNotFoundError) -> str | None:
    """`pip install 'pyloto[redis]'` when a backend's optional SDK is not installed."""
    extra = _EXTRAS.get((exc.name or "").partition(".")[0])
    if extra is None:
        return None
    return (
        f"the chosen backend needs the {extra!r} extra ({exc.name} is not installed): "
        f"pip install 'pyloto[{extra}]'"
    )


@contextlib.contextmanager
def boundary(console: Console) -> Iterator[None]:
    """Turn expected failures into one red line on `console` and an exit code."""
    try:
        yield
    except ToolUsageError as exc:
        raise _fail(console, str(exc), EXIT_USAGE) from exc
    except ValidationError as exc:
        raise _fail(console, _settings_problem(exc), EXIT_USAGE) from exc
    except ModuleNotFoundError as exc:
        message = _missing_extra(exc)
        if message is None:
            raise
        raise _fail(console, message, EXIT_USAGE) from exc
    except DataDirUnusable as exc:
        raise _fail(console, str(exc), EXIT_USAGE) from exc
    except DataFileUnusable as exc:
        raise _fail(console, f"{type(exc).__name__}: {exc}", EXIT_USAGE) from exc
    except SettingsError as exc:  # a setting that is not even JSON, e.g. a list field
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        raise _fail(console, f"{exc}{cause}", EXIT_USAGE) from exc
    except (PylotoError, OSError) as exc:
        raise _fail(console, f"{type(exc).__name__}: {exc}", EXIT_FAILURE) from exc


def print_json(data: Any) -> None:
    """One JSON object on stdout, for scripts."""
    typer.echo(json.dumps(data, ensure_ascii=False, default=str))
