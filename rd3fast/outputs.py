"""Output paths checked before any work starts.

A run writes its results after training, so an output it cannot write (a file where a folder goes, a
read-only folder, a full disk) would otherwise surface hours later as a traceback, the training lost. The
entry points call these first; each check writes nothing that stays (the writability probe is a file
created and removed at once), and a folder that does not exist yet is not created: it is checked through
the nearest folder above it that does.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .errors import RD3Error

# Enough for results.json + curves.png or a small weights file; a disk with less is full for our purpose.
MIN_FREE_BYTES = 16 * 2**20


def check_output_dir(path: str | Path, flag: str, *, must_be_empty: bool = False) -> Path:
    """``path`` can be a folder written into: it is one (or does not exist yet, under a writable folder),
    on a disk with room. ``must_be_empty``: writers that refuse to mix their files with others'."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise RD3Error(f"{flag} {p} is a file; expected a folder (created if missing)")
    if must_be_empty and p.is_dir() and any(p.iterdir()):
        raise RD3Error(f"{flag} {p} exists and is not empty; choose a new folder")
    _check_can_write_in(p, flag, p)
    return p


def check_output_file(path: str | Path, flag: str) -> Path:
    """``path`` can be written as a file: it is not a folder, and its folder can take it."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise RD3Error(f"{flag} {p} is a folder; expected a file name to write")
    _check_can_write_in(p.parent, flag, p)
    return p


def check_folder_name(name: str, flag: str) -> None:
    """``name`` is one plain folder name, to be joined under an output folder: no '/' or '\\', not empty, not
    '.', '..' or hidden. A name like ``../../x`` would put files outside the folder the user chose."""
    if not name.strip() or "/" in name or "\\" in name or name.startswith("."):
        raise RD3Error(f"{flag}: {name!r} is not a plain folder name (expected no '/' or '\\', not empty, "
                       "not starting with '.')")


def _check_can_write_in(folder: Path, flag: str, shown: Path) -> None:
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise RD3Error(f"{flag} {shown}: {base} is a file, not a folder")
    problem = _cannot_create_in(base)
    if problem:
        raise RD3Error(f"{flag} {shown}: cannot write in {base} ({problem})")
    free = free_bytes(base)
    if free < MIN_FREE_BYTES:
        raise RD3Error(f"{flag} {shown}: the disk of {base} is full: {free / 2**20:.1f} MB free, at least "
                       f"{MIN_FREE_BYTES // 2**20} MB needed")


def free_bytes(path: str | Path) -> int:
    """Bytes this user can still write on ``path``'s filesystem (what is left after the root reserve)."""
    return shutil.disk_usage(path).free


def _nearest_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _cannot_create_in(folder: Path) -> str | None:
    """Why no file can be created in ``folder``, or None. os.access answers from permission bits and mount
    flags only (and network filesystems may answer wrongly); a probe file, created and removed at once,
    also meets quotas, full inode tables and ACLs."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".rd3fast-probe-")
    except OSError as e:
        return e.strerror or type(e).__name__
    os.close(fd)
    os.unlink(probe)
    return None
