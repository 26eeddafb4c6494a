"""Progress that suits where it is shown: tqdm bars on a terminal, plain lines in a log file.

On a terminal (stderr is a TTY) long work shows a tqdm bar. Off a terminal (Slurm logs, ``> log 2>&1``)
tqdm's redraws would fill the log with carriage returns, so ``Progress`` prints nothing per step and
``Progress.line`` writes one plain line per evaluation instead (run, epoch, loss, top-1, img/s, ETA);
decode bars simply stay quiet. ``enabled=False`` (``--no-progress``) silences both.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TextIO


def on_terminal(stream: TextIO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def bar(iterable: Iterable, *, total: int | None = None, desc: str = "", unit: str = "it",
        enabled: bool = True, leave: bool = False) -> Iterable:
    """``iterable`` wrapped in a tqdm bar on a terminal, returned as it is otherwise."""
    if not enabled or not on_terminal():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)


class Progress:
    """Epoch progress of one run (or K runs at once): a bar on a terminal, a line per evaluation off it."""

    def __init__(self, total: int, desc: str, enabled: bool = True, stream: TextIO | None = None,
                 start: int = 0) -> None:
        self.total, self.desc, self.enabled = total, desc, enabled
        self.stream = sys.stderr if stream is None else stream
        self.tty = enabled and on_terminal(self.stream)
        self.start_epoch = start
        self.t0 = time.perf_counter()
        self._bar: Any = None
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, desc=desc, leave=False, file=self.stream,
                             dynamic_ncols=True)

    def epoch(self, done: int, loss: float, top1: float | None = None, images_per_s: float | None = None) -> None:
        """After ``done`` epochs (1-based count). Off a terminal a line is written only when top1 is given."""
        if not self.enabled:
            return
        if self._bar is not None:
            post = {"loss": f"{loss:.3f}"}
            if top1 is not None:
                post["top1"] = f"{top1:.1f}"
            self._bar.set_postfix(post, refresh=False)
            self._bar.update(done - self._bar.n)
            return
        if top1 is None:
            return
        elapsed = time.perf_counter() - self.t0
        ran = max(done - self.start_epoch, 1)
        eta = elapsed / ran * (self.total - done)
        rate = f" {images_per_s:.0f} img/s" if images_per_s else ""
        print(f"{self.desc}: epoch {done}/{self.total} loss {loss:.4f} top-1 {top1:.2f}{rate} "
              f"ETA {_clock(eta)}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def iterate(items: Iterable, **kw: Any) -> Iterator:
    """``for x in iterate(items, desc=...)``: ``bar`` as a generator (closes the bar when done)."""
    wrapped = bar(items, **kw)
    try:
        yield from wrapped
    finally:
        close = getattr(wrapped, "close", None)
        if close is not None:
            close()
