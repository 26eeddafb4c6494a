"""Progress off a terminal: one plain line per evaluation (no carriage returns), nothing with --no-progress."""
from __future__ import annotations

import io

from rd3fast import progress
from rd3fast.progress import Progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_one_line_per_evaluation():
    out = io.StringIO()
    with Progress(4, "rd3 seed 0", stream=out) as shown:
        shown.epoch(1, 2.5)
        shown.epoch(2, 2.0, top1=41.25, images_per_s=1234.0)
        shown.epoch(3, 1.5)
        shown.epoch(4, 1.0, top1=55.5, images_per_s=1300.0)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 2
    assert lines[0].startswith("rd3 seed 0: epoch 2/4 loss 2.0000 top-1 41.25 1234 img/s ETA ")
    assert lines[1].startswith("rd3 seed 0: epoch 4/4 loss 1.0000 top-1 55.50")
    assert lines[1].endswith("ETA 0:00")


def test_disabled_prints_nothing_and_a_terminal_gets_a_bar():
    out = io.StringIO()
    with Progress(2, "x", enabled=False, stream=out) as shown:
        shown.epoch(1, 1.0, top1=10.0)
    assert out.getvalue() == ""
    tty = FakeTTY()
    with Progress(2, "bar", stream=tty) as shown:
        shown.epoch(1, 1.0, top1=10.0)
        shown.epoch(2, 0.5)
    assert "bar" in tty.getvalue() and "\r" in tty.getvalue()


def test_decode_bar_is_the_iterable_itself_off_a_terminal():
    items = [1, 2, 3]
    assert progress.bar(items, desc="decode") is items  # pytest's stderr is not a terminal
    assert list(progress.iterate(items, desc="decode", enabled=False)) == items
