"""Staging folders a killed run cannot leave behind for long: each is locked (`flock`) by the run that made it,
the kernel drops the lock however that run ends, and the next run in the same folder removes every unlocked
one. All of graphprune's temporary folders are made here."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

PREFIX = ".graphprune-"  # a staging folder: `PREFIX` + its run token
_CLAIMING = ".graphprune~"  # a folder made but not yet locked (renamed to `PREFIX` once it is)
_CLAIM_SECONDS = 60  # an unlocked claiming folder older than this was left by a run killed while claiming it


@contextlib.contextmanager
def staging_folder(parent: str | os.PathLike | None = None) -> Iterator[Path]:
    """A new hidden folder in `parent` (default: the temporary folder, `TMPDIR`), locked while inside and removed
    on leaving. Debris of killed runs in `parent` is removed first (`sweep`)."""
    parent = Path(tempfile.gettempdir() if parent is None else parent)
    sweep(parent)
    token = secrets.token_hex(4)
    claiming, folder = parent / (_CLAIMING + token), parent / (PREFIX + token)
    os.mkdir(claiming, 0o700)
    handle = os.open(claiming, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(claiming, folder)  # the lock stays with the folder: it is on the inode, not the name
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(claiming, ignore_errors=True)
        os.close(handle)


def token_of(folder: Path) -> str:
    """The run token of a staging folder (files it publishes carry it in their names)."""
    return folder.name[len(PREFIX):]


def is_live(parent: Path, token: str) -> bool:
    """True while the run that made staging folder `token` in `parent` is still running."""
    folder = parent / (PREFIX + token)
    if not folder.is_dir():
        return False
    return not _unlocked(folder)


def sweep(parent: Path) -> None:
    """Remove the staging folders in `parent` that no running process holds (a killed run's debris)."""
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    now = time.time()
    for entry in entries:
        claiming = entry.name.startswith(_CLAIMING)
        if not (entry.name.startswith(PREFIX) or claiming) or entry.is_symlink() or not entry.is_dir():
            continue
        with contextlib.suppress(OSError):
            if claiming and now - entry.stat().st_mtime < _CLAIM_SECONDS:
                continue
            if _unlocked(entry):
                shutil.rmtree(entry, ignore_errors=True)


def _unlocked(folder: Path) -> bool:
    """True when no process holds `folder`'s lock (taking it for a moment to find out)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        return True
    finally:
        os.close(handle)
