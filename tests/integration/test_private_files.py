"""The data dir is 0700 and every file pyloto writes there 0600, whatever the umask (real files)."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyloto_cli import private_files
from pyloto_cli.bootstrap import open_roles
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.firstrun import EXAMPLE_FILE, SECRETS_FILE, ensure_local_secrets
from pyloto_cli.logs import event_fields
from pyloto_cli.settings import Settings
from tests.conftest import stamped_fixture


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022], ids=["umask000", "umask022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask for the test (restored after): the modes must not depend on it."""
    value: int = request.param
    previous = os.umask(value)
    try:
        yield value
    finally:
        os.umask(previous)


async def fill_data_dir(data_dir: Path) -> None:
    """What `pyloto serve` writes on a first run with traffic: the local secrets, the example
    webhook, queue.db and state.db with their -wal and -shm files (open while checked)."""
    settings = ensure_local_secrets(Settings(_env_file=None, data_dir=data_dir)).settings
    async with open_roles(settings) as roles:
        queue = (await roles.queue_parts()).queue
        assert queue is not None
        await queue.enqueue(split_webhook(stamped_fixture("webhooks/text.json"), time.time()))
        stores = await roles.stores()
        await stores.deduper.claim("wamid.PRIVATE", 60.0)  # writes state.db
        assert_private(data_dir)


def assert_private(data_dir: Path) -> None:
    names = {p.name for p in data_dir.iterdir()}
    for db in ("queue.db", "state.db"):
        assert {db, f"{db}-wal", f"{db}-shm"} <= names, names
    assert {SECRETS_FILE, EXAMPLE_FILE} <= names
    assert mode(data_dir) == 0o700
    files = {p.name: mode(p) for p in data_dir.iterdir()}
    assert files == dict.fromkeys(files, 0o600), files


async def test_a_new_data_dir_and_its_files_are_private(umask: int, tmp_path: Path) -> None:
    """Created 0700, every file 0600 (SQLite's -wal and -shm too), under umask 000 and 022."""
    await fill_data_dir(tmp_path / "parent" / "data")


async def test_a_wider_existing_dir_and_files_are_tightened_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Files an older version left 0644 in a 0755 dir: tightened on open, the dir with a
    warning naming its old mode."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    for name in ("state.db", "state.db-wal", EXAMPLE_FILE):
        (data_dir / name).touch()
        (data_dir / name).chmod(0o644)
    caplog.set_level(logging.WARNING, logger="pyloto")
    await fill_data_dir(data_dir)
    [warning] = [event_fields(r) for r in caplog.records if r.getMessage() == "data_dir_tightened"]
    assert (warning["mode"], warning["now"]) == ("755", "700")


def test_a_dir_that_cannot_be_tightened_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dir owned by someone else (chmod refused) is left as it is, with a warning; its
    files are still created 0600."""
    data_dir = tmp_path / "shared"
    data_dir.mkdir()
    data_dir.chmod(0o775)

    def refuse(path: Path, new_mode: int) -> None:
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(os, "chmod", refuse)
    caplog.set_level(logging.WARNING, logger="pyloto")
    setup = ensure_local_secrets(Settings(_env_file=None, data_dir=data_dir))
    assert mode(data_dir) == 0o775
    assert any(r.getMessage() == "data_dir_not_private" for r in caplog.records)
    assert mode(setup.example_path) == 0o600
    assert mode(data_dir / SECRETS_FILE) == 0o600


def test_write_private_never_leaves_a_readable_file(umask: int, tmp_path: Path) -> None:
    """An existing 0644 file rewritten is 0600 afterwards, with the new bytes."""
    path = tmp_path / "f.json"
    path.write_text("old")
    path.chmod(0o644)
    private_files.write_private(path, b"new")
    assert (mode(path), path.read_bytes()) == (0o600, b"new")


def test_a_symlink_planted_in_the_data_dir_is_refused(tmp_path: Path) -> None:
    """A link named like a data file never makes pyloto chmod or overwrite its target."""
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me")
    target.chmod(0o644)
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    (data_dir / EXAMPLE_FILE).symlink_to(target)
    with pytest.raises(OSError, match="symbolic links"):
        ensure_local_secrets(Settings(_env_file=None, data_dir=data_dir))
    with pytest.raises(OSError, match="symbolic links"):
        private_files.private_file(data_dir / EXAMPLE_FILE)
    assert (mode(target), target.read_text()) == (0o644, "keep me")
