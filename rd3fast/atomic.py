"""Atomic file writes: write a temporary file beside the target, rename it over the target on success.

A reader never sees half a file, and an interrupted or failed write leaves the previous file (or none). A
full disk (or quota) is bad input like any other: ``RD3Error("no space left on device writing <path>")``,
the temporary file removed.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator

from .errors import RD3Error

DISK_FULL = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)


@contextlib.contextmanager
def disk_full_is_an_error(final: str | Path) -> Iterator[None]:
    """Inside the block, an OSError for a full disk or quota becomes an RD3Error naming ``final``."""
    try:
        yield
    except OSError as e:
        if e.errno in DISK_FULL:
            raise RD3Error(f"no space left on device writing {final}") from None
        raise


def atomic_tmp(final: str | Path) -> Path:
    """A new empty temporary file in ``final``'s folder (created if needed), for a later os.replace."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    return _fresh_beside(final, lambda tmp: os.close(os.open(tmp, flags, 0o666)))


def _fresh_beside(final: str | Path, create: Callable[[Path], None]) -> Path:
    """A new file or folder (``create``) with a random name beside ``final``, its folder created if needed.

    Not tempfile.mkstemp/mkdtemp: they create mode 0600/0700, and the renamed result would stay private to
    its owner (results.json was). Created with 0o666/0o777, the umask applies, as to any new file."""
    final = Path(final)
    with disk_full_is_an_error(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # a name another writer took is retried with a fresh random one
            tmp = final.parent / f"{final.name}.{secrets.token_hex(6)}.tmp"
            try:
                create(tmp)
            except FileExistsError:
                continue
            return tmp
    raise FileExistsError(f"no free temporary name beside {final}")


@contextlib.contextmanager
def atomic_write(final: str | Path) -> Iterator[Path]:
    """``with atomic_write(path) as tmp:`` write to ``tmp``; it replaces ``path`` only if the block succeeds.
    Nothing is left of a failed write; a full disk raises RD3Error."""
    with disk_full_is_an_error(final):
        tmp = atomic_tmp(final)
        try:
            yield tmp
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """``with atomic_folder(path) as tmp:`` fill the new folder ``tmp``; it becomes ``path`` (which must not
    exist, or be empty) only if the block succeeds, so a failed export leaves no half-written folder."""
    with disk_full_is_an_error(final):
        tmp = _fresh_beside(final, lambda t: os.mkdir(t, 0o777))
        try:
            yield tmp
            os.replace(tmp, final)  # over an empty folder too (POSIX rename)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
