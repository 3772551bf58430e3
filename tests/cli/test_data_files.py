"""A data file pyloto cannot use at start (damaged, not a database, locked): one error line
that names the file, exit 2, no traceback."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pyloto_cli.adapters.queue.sqlite import SqliteMessageQueue
from pyloto_cli.adapters.sqlite_db import SqliteDatabase
from pyloto_cli.cli import app
from pyloto_cli.domain.errors import DataFileUnusable
from pyloto_cli.domain.retry import RetryPolicy
from tests.contract.queue_contract import make_task


def not_a_database(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not SQLite, it only sits where queue.db should be\n" * 100)


def damaged_pages(path: Path) -> None:
    """A real queue file whose pages after the first are overwritten: it opens, then reading
    its tables finds the damage (`database disk image is malformed`)."""

    async def fill() -> None:
        async with SqliteMessageQueue(path, RetryPolicy()) as queue:
            await queue.enqueue([make_task(f"wamid.{i}", text="x" * 3000) for i in range(20)])

    asyncio.run(fill())
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xab" * (len(data) - 4096)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("spoil", [not_a_database, damaged_pages])
@pytest.mark.parametrize("command", [["queue", "stats"], ["queue", "stats", "--json"], ["serve"]])
def test_a_damaged_queue_file_is_one_error_line_naming_it_and_exit_2(
    runner: CliRunner, cli_env: Path, spoil: object, command: list[str]
) -> None:
    queue_db = cli_env / "queue.db"
    assert callable(spoil)
    spoil(queue_db)
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in result.stderr.splitlines() if "queue.db" in line]
    [line] = errors
    assert line.startswith("error: DataFileUnusable: sqlite: ")
    assert str(queue_db) in line
    assert "Traceback" not in result.stderr
    assert isinstance(result.exception, SystemExit)  # the boundary's exit, not a crash


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    """A database file another program holds an exclusive lock on."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO t VALUES (1)")
    yield path
    holder.execute("ROLLBACK")
    holder.close()


async def test_a_file_locked_by_another_program_is_named_at_start(locked: Path) -> None:
    with pytest.raises(DataFileUnusable, match="is locked by another program") as caught:
        async with SqliteDatabase(locked, busy_wait_s=0.1):
            pass
    assert str(locked) in str(caught.value)
