"""One writer per output: an exclusive lock on an output (``--out``), held for the whole run.

The lock is ``fcntl.flock`` on ``<folder>/.rd3fast.lock`` (an output folder) or ``<file>.lock`` (a
weights file being pre-trained): the kernel releases it when the holder exits in
any way (kill -9 included), so a crashed run never leaves a stale lock behind, and a second run on the
same folder stops at once with the holder's pid and host (written into the file) instead of racing it
and overwriting its results.

Releasing removes the lock file (and the folders the lock created, when empty): a run refused after it
locked (results of another config in ``--out``, a bad set found while loading) leaves no file behind in an
output folder that existed before it. Removing a lock file another process may be waiting on is safe:
``acquire`` checks, once it holds the lock, that its descriptor is still the file at the path, and starts
again when it is not.
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

        self._created = []
        for _ in range(100):
            made = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the holder we waited for removed the folder it had made: make it again
                self._note_created(made)
                continue
            except OSError as e:
                self._note_created(made)
                self._remove_created()  # those made before the one that failed
                raise RD3Error(f"{self.flag} {self.output}: cannot create the lock file {self.path} "
                               f"({e.strerror})") from None
            self._note_created(made)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RD3Error(f"{self.flag} {self.output} is in use by another rd3fast run (pid "
                               f"{holder.get('pid', '?')} on {holder.get('host', '?')}, since "
                               f"{holder.get('since', '?')}); wait for it to finish or pick another folder") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed the file while we waited for it: lock the one at the path now
        else:
            self._remove_created()
            raise RD3Error(f"{self.flag} {self.output}: the lock file {self.path} kept disappearing")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock and remove its file: a run leaves nothing of the lock behind (a run that wrote
        nothing, as when bad input is found after locking, leaves the output as it was), and the folders the
        lock created go too, when they are empty."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # unlinked while still held, so no other run is inside
        self._remove_created()  # still held too: a waiter wakes to find them gone, and makes them its own
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None

    def _note_created(self, made: list[Path]) -> None:
        """Add ``made`` to the folders this lock created, deepest first."""
        self._created = sorted(set(self._created) | set(made), key=lambda p: len(p.parts), reverse=True)

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()  # only if empty (and only if it was made)
            except FileNotFoundError:
                continue
            except OSError:
                break
        self._created = []

    def __enter__(self) -> "OutputLock":
        return self if self._fd is not None else self.acquire()  # ``with lock.acquire(wait=True):`` too

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open ``fd`` is still the file at ``path`` (not one unlinked by the holder before us)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
