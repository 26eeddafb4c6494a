"""The one exception type for bad input.

Everything a user can get wrong (a path, a flag value, a corrupt image, weights that do not fit) raises
``RD3Error`` with a message that names the file or flag and what was expected. The CLIs catch it, print
one line and exit with status 2; library users get an ordinary ``ValueError`` subclass.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, Callable


class RD3Error(ValueError):
    """Bad input: the message names the offending file/flag and what was expected."""


def read_text(path: Path, missing: str, what: str) -> str:
    """A text file's contents, or one RD3Error: ``missing`` when it is not there, ``cannot read <what> (why)``
    when it cannot be read or is not text (the one place that turns a file's OSError into a line)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise RD3Error(missing) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RD3Error(f"cannot read {what} ({getattr(e, 'strerror', None) or e})") from None


class Interrupted(Exception):
    """A signal stopped the command. A training loop raises it after checkpointing (``resumable``)."""

    def __init__(self, signum: int, where: str = "", resumable: bool = False) -> None:
        super().__init__(where)
        self.signum, self.where, self.resumable = signum, where, resumable

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        where = f" in {self.where}" if self.where else ""
        then = "; run the same command to resume" if self.resumable else "; nothing was left half-written"
        return f"{name}: interrupted{where}{then}"


def cli(body: Callable[[], int | None]) -> int:
    """Run a command-line entry point: RD3Error becomes one line on stderr and exit status 2; a signal
    (SIGINT, SIGTERM, SIGUSR1) one line and 128 + its number, never a traceback. Commands that checkpoint
    (run, pretrain) handle the signals themselves inside (``checkpoint.StopRequest``). Every entry point
    runs here, so the process-wide host settings (``host.tune_allocator``) are made here too."""
    from .host import tune_allocator

    tune_allocator()
    previous = {s: signal.signal(s, _raise_interrupted) for s in _STOP_SIGNALS}
    try:
        return body() or 0
    except RD3Error as e:
        print_error(str(e))
        return 2
    except Interrupted as e:
        print_error(e.message())
        return e.exit_code
    except KeyboardInterrupt:
        print_error(Interrupted(signal.SIGINT).message())
        return 128 + signal.SIGINT
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1") if hasattr(signal, n))


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def print_error(message: str) -> None:
    """The one line every bad input ends in (argument errors too: ``cliargs.ArgumentParser``)."""
    print(f"rd3fast: error: {message}", file=sys.stderr)
