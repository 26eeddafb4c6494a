"""One writer per output: an exclusive lock on an output (``--out``), held for the whole run.

The lock is ``fcntl.flock`` on ``<folder>/.rd3fast.lock`` (an output folder) or ``<file>.lock`` (a
weights file being pre-trained): the kernel releases it when the holder exits in
any way (kill -9 included), so a crashed run never leaves a stale lock behind, and a second run on the
same folder stops at once with the holder's pid and host (written into the file) instead of racing it
and overwriting its results.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .errors import RD3Error

LOCK_NAME = ".rd3fast.lock"


class OutputLock:
    """``with OutputLock.folder(out):`` / ``OutputLock.file(weights)``: exclusive use of one output."""

    def __init__(self, lock_file: str | Path, output: str | Path, flag: str = "--out") -> None:
        self.path, self.output, self.flag = Path(lock_file), Path(output), flag
        self._fd: int | None = None
        self._created: list[Path] = []  # folders this lock made, removed again if the run wrote nothing

    @classmethod
    def folder(cls, folder: str | Path, flag: str = "--out") -> "OutputLock":
        return cls(Path(folder) / LOCK_NAME, folder, flag)

    @classmethod
    def file(cls, file: str | Path, flag: str = "--out") -> "OutputLock":
        file = Path(file)
        return cls(file.with_name(file.name + ".lock"), file, flag)

    def acquire(self, wait: bool = False) -> "OutputLock":
        """Take the lock; held by another process: an RD3Error naming it, or with ``wait`` block until free."""
        import fcntl

        try:
            missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._created = missing
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RD3Error(f"{self.flag} {self.output}: cannot create the lock file {self.path} "
                           f"({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RD3Error(f"{self.flag} {self.output} is in use by another rd3fast run (pid {holder.get('pid', '?')} "
                           f"on {holder.get('host', '?')}, since {holder.get('since', '?')}); wait for it to finish "
                           "or pick another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock. A run that wrote nothing (bad input found after locking) leaves nothing behind:
        the lock file goes, and so do the folders the lock created, when they are empty."""
        if self._fd is None:
            return
        beside = self.path.parent != self.output  # a file's lock sits beside it: do not leave it there
        empty = self.path.parent.is_dir() and [p.name for p in self.path.parent.iterdir()] == [self.path.name]
        if beside or (self._created and empty):
            self.path.unlink(missing_ok=True)  # unlinked while still held, so no other run is inside
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None
        for folder in self._created:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break

    def __enter__(self) -> "OutputLock":
        return self if self._fd is not None else self.acquire()  # ``with lock.acquire(wait=True):`` too

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
