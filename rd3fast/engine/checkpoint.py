"""Checkpoints and stop requests: an interrupted run resumes where it stopped, with the same result.

A checkpoint holds everything a group of K runs (``train.train_seeds``) needs to continue: the students,
the optimizer, the EMA, the metrics so far, the schedule position (epoch and step within it, the partial
loss sum) and the global RNG states. The loaders need no state: every batch's draws come from a generator
seeded by (seed, epoch), so skipping the steps already taken reproduces the rest of the epoch exactly,
and on the CPU a resumed run ends with the very numbers of an uninterrupted one (tests/test_resume.py).

Checkpoints are written atomically (temporary file + rename): a kill during the write leaves the previous
checkpoint. They are written every ``every`` epochs, or with ``every = 0`` whenever the time since the last
one exceeds ``AUTO_FACTOR`` times what writing the last one took (so checkpointing costs under 1 % of the
training time, measured and reported in the results), and on a stop request.

A checkpoint that cannot be read all the same (a disk error, a file copied in half, one written by
something else, one holding objects a safe torch.load refuses) is refused in one line naming the file, or,
with ``set_aside_unreadable`` (``run``, ``pretrain`` and the sweeps' groups), renamed to ``<name>.unreadable-<time>``
with one line on stderr saying where, and its runs start over: rerunning the same command recovers, and
nothing is deleted that someone may want to look at.

``StopRequest`` turns SIGINT, SIGTERM and SIGUSR1 (Slurm's preemption warning) into a flag that the loop
reads between steps: it checkpoints and raises ``Interrupted``, which the CLIs print as one line and exit
128 + the signal number (130, 143, 138). A second Ctrl-C while the checkpoint is written aborts at once.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from ..data.tensors import LoadFailed, safe_load
from ..errors import Interrupted, RD3Error

__all__ = ["AUTO_FACTOR", "Checkpointing", "Interrupted", "StopRequest", "set_aside"]

AUTO_FACTOR = 100  # auto interval: at least 100x the last write time between checkpoints -> < 1 % overhead
SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGUSR1")) if s is not None)
SCHEMA = 1


class StopRequest:
    """``with StopRequest() as stop:`` signals set ``stop.signum`` instead of killing the process."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user wants out now
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        import threading

        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def __bool__(self) -> bool:
        return self.signum is not None


@dataclass
class Checkpointing:
    """Where a group of runs checkpoints, how often, and the stop flag the loop watches."""

    path: Path
    every: int = 0  # epochs between checkpoints; 0: automatic (< 1 % of the training time)
    stop: StopRequest | None = None
    identity: dict[str, Any] = field(default_factory=dict)  # what must match to resume (config, seeds, sets)
    # An unreadable checkpoint: False refuses it (RD3Error); True renames it aside and starts over (load: None).
    set_aside_unreadable: bool = False
    writes: int = 0
    write_s: float = 0.0  # total time spent writing
    _last_write_s: float = 0.0
    _last_at: float = field(default_factory=time.perf_counter)

    def due(self, epochs_done: int) -> bool:
        """After ``epochs_done`` epochs: is a periodic checkpoint due?"""
        if self.every > 0:
            return epochs_done % self.every == 0
        if self.writes == 0:
            return True  # the first one measures what a write costs
        return time.perf_counter() - self._last_at >= AUTO_FACTOR * self._last_write_s

    def save(self, state: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        state = {"schema": SCHEMA, "identity": self.identity, **state}
        with atomic_write(self.path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)  # to a file object: a full disk is an OSError (atomic_write's one line)
        self._last_write_s = time.perf_counter() - t0
        self.write_s += self._last_write_s
        self.writes += 1
        self._last_at = time.perf_counter()

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none (or an unreadable one was set aside). A checkpoint of
        something else is an error."""
        if not self.path.is_file():
            return None
        try:
            state = safe_load(self.path)
        except LoadFailed as e:
            return self._unreadable(e.reason)
        if not isinstance(state, dict) or state.get("schema") != SCHEMA:
            return self._unreadable("not an rd3fast checkpoint of this version")
        if state.get("identity") != self.identity:
            keys = sorted(k for k in set(self.identity) | set(state.get("identity", {}))
                          if self.identity.get(k) != state.get("identity", {}).get(k))
            raise RD3Error(f"checkpoint {self.path} belongs to a different run (differs in {', '.join(keys)}); "
                           "pass --restart to discard it")
        return state

    def _unreadable(self, reason: str) -> None:
        """Refuse the file, or (``set_aside_unreadable``) rename it aside, say so in one line and start over."""
        if not self.set_aside_unreadable:
            raise RD3Error(f"checkpoint {self.path} is unreadable ({reason}); delete it (or pass --restart) to "
                           "start its runs over")
        aside = set_aside(self.path)
        print(f"rd3fast: checkpoint {self.path} is unreadable ({reason}); set it aside as {aside} and started its "
              "runs over", file=sys.stderr, flush=True)
        return None

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

    def report(self, train_time: float) -> str:
        share = 100.0 * self.write_s / max(train_time, 1e-9)
        return (f"checkpoints: {self.writes} written to {self.path.name} in {self.write_s:.2f} s "
                f"({share:.2f} % of the training time)")


def set_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.unreadable-<time>`` beside it (a free name) and return the new path; a file
    that cannot be moved is an RD3Error saying to delete it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(100):
        aside = path.with_name(f"{path.name}.unreadable-{stamp}" + (f"-{n}" if n else ""))
        if aside.exists():
            continue
        try:
            os.rename(path, aside)
        except OSError as e:
            raise RD3Error(f"checkpoint {path} is unreadable and cannot be set aside ({e.strerror or e}); delete "
                           "it to start its runs over") from None
        return aside
    raise RD3Error(f"checkpoint {path} is unreadable and 100 set-aside copies exist beside it; delete them")
