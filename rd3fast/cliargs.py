"""The argument parser every entry point (run, pretrain, distill, prepare) builds on, and range-checked types.

argparse's own ``error`` prints the whole usage block (dozens of lines: every Config flag) before the one
line that matters, and by default it takes any unambiguous prefix of a flag, so ``--epoch 2`` silently set
``--epochs`` and ``--temp 5`` ``--temperature``. A misspelt flag must be an error, as a misspelt key of a
config file is. ``ArgumentParser`` prints one line (``rd3fast: error: ...; see --help``), exits with status 2
like every other bad input, and matches flags exactly; its subparsers are of the same class.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Callable, NoReturn

from .errors import print_error


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors and no flag abbreviations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print_error(f"{message}; see --help")
        self.exit(2)


def _interval(lo: float | None, hi: float | None, lo_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}]"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    return f"<= {hi}" if hi is not None else ""


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in [lo, hi] (either end may be open-ended). argparse puts the flag's
    name in front of the message."""
    return _ranged(int, f"an integer {_interval(lo, hi, False)}".strip(),
                   lambda v: (lo is None or v >= lo) and (hi is None or v <= hi))


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite float in [lo, hi], or (lo, hi] with ``lo_open``."""
    return _ranged(float, f"a number {_interval(lo, hi, lo_open)}".strip(),
                   lambda v: math.isfinite(v) and (lo is None or (v > lo if lo_open else v >= lo))
                   and (hi is None or v <= hi))


def _ranged(kind: Callable[[str], Any], what: str, ok: Callable[[Any], bool]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def numbers(*, positive: bool = False) -> Callable[[str], tuple[float, ...]]:
    """An argparse ``type``: comma-separated finite floats (``0.5,0.5,0.5``), all > 0 with ``positive``."""
    what = "comma-separated numbers" + (" > 0" if positive else "")

    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(s) for s in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return values

    return parse
