"""The one exception type for bad input.

Everything a user can get wrong (a path, a flag value, a corrupt image, weights that do not fit) raises
``RD3Error`` with a message that names the file or flag and what was expected. The CLIs catch it, print
one line and exit with status 2; library users get an ordinary ``ValueError`` subclass.
"""
from __future__ import annotations

import sys
from typing import Callable


class RD3Error(ValueError):
    """Bad input: the message names the offending file/flag and what was expected."""


def cli(body: Callable[[], int | None]) -> int:
    """Run a command-line entry point: RD3Error becomes one line on stderr and exit status 2. Every entry
    point runs here, so the process-wide host settings (``host.tune_allocator``) are made here too."""
    from .host import tune_allocator

    tune_allocator()
    try:
        return body() or 0
    except RD3Error as e:
        print_error(str(e))
        return 2


def print_error(message: str) -> None:
    """The one line every bad input ends in (argument errors too: ``cliargs.ArgumentParser``)."""
    print(f"rd3fast: error: {message}", file=sys.stderr)
