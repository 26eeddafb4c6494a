"""Atomic file writes: write a temporary file beside the target, rename it over the target on success.

A reader never sees half a file, and an interrupted or failed write leaves the previous file (or none).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def atomic_tmp(final: str | Path) -> Path:
    """A new empty temporary file in ``final``'s folder (created if needed), for a later os.replace."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=final.name + ".", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_write(final: str | Path) -> Iterator[Path]:
    """``with atomic_write(path) as tmp:`` write to ``tmp``; it replaces ``path`` only if the block succeeds."""
    tmp = atomic_tmp(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
