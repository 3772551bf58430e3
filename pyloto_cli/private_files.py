"""The data dir and its files are private to the user pyloto runs as: the dir 0700, files 0600.

They hold every message's text, the sessions and (on first run) the local app secret, so they
are created with these modes whatever the umask, and files pyloto finds wider (written by an
older version, or copied in) are tightened when opened. SQLite creates a database's -wal and
-shm files with the database file's own mode, so creating the database file 0600 first makes
them private too.

An existing dir with wider permissions is tightened when the user owns it, with a warning
naming the old mode: the files inside are 0600 whatever the dir allows, so a wider dir only
lets others list them, and with the write bit delete or replace the queue. A dir owned by
someone else (a shared mount) is left alone with a warning; its files are still 0600.

Files are opened without following a symbolic link (`O_NOFOLLOW`): a link planted in the data
dir cannot make pyloto change the mode of, or overwrite, a file elsewhere; it is an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import Final

from pyloto_cli.logs import get_logger, log_event

DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
SQLITE_SIDE_FILES: Final = ("-wal", "-shm", "-journal")

_log = get_logger("files")


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) with the dir itself 0700, or tighten it if it is ours."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        os.chmod(path, DIR_MODE)  # mkdir's mode goes through the umask
        return path
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077 == 0:
        return path
    try:
        os.chmod(path, mode & ~0o077)
    except PermissionError:
        log_event(_log, "data_dir_not_private", logging.WARNING, path=str(path), mode=f"{mode:o}")
        return path
    log_event(
        _log,
        "data_dir_tightened",
        logging.WARNING,
        path=str(path),
        mode=f"{mode:o}",
        now=f"{mode & ~0o077:o}",
    )
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty with mode 0600 if missing, or tighten it to 0600 (and a SQLite
    database's -wal, -shm and -journal files beside it) if it is wider."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        _tighten(fd)
    finally:
        os.close(fd)
    for suffix in SQLITE_SIDE_FILES:
        side = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(side, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                _tighten(fd)
            finally:
                os.close(fd)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600 from the first byte (never readable by others,
    not even between the write and a chmod)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, FILE_MODE)
    with os.fdopen(fd, "wb") as out:
        _tighten(out.fileno())
        out.write(data)


def _tighten(fd: int) -> None:
    """Drop the group and other bits of an open file (os.open's mode went through the umask,
    and an existing file kept its own)."""
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o077:
        os.fchmod(fd, mode & ~0o077)
