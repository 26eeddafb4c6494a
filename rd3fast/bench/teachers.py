"""A sweep's teachers, checked when the plan is made: each ``[[teachers]]`` weights file loads into its
architecture at the class count and image size of every run that uses it.

The engine checks the same when a group is set up (``experiment.prepare`` -> ``teacher.load_teachers``), but
in a sweep that is when the group trains, possibly hours in and once per group, each failure recorded as
failed runs. A teacher is an input of the whole sweep, so a refused one is one ``RD3Error`` line naming the
TOML file and the ``[[teachers]]`` table, before anything is written or trained.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Protocol

import torch

from ..config import Config
from ..data.datasets import BUILTIN
from ..engine.teacher import load_teachers
from ..errors import RD3Error
from .sweepfile import Sweep


class SetShape(Protocol):
    """What the check needs of a set (``identity.SetFacts`` has it): its class count and image side."""

    @property
    def classes(self) -> int: ...

    @property
    def image_size(self) -> int: ...


def check_teachers(sweep: Sweep, runs: Iterable[tuple[Config, SetShape]]) -> None:
    """Load each teacher of ``sweep`` into its architecture (on the CPU) for every distinct (class count, image
    size, teacher normalization) among ``runs`` (each run's config and its set's shape) that trains with
    teachers; the first that does not fit is an RD3Error naming the sweep file and the teacher."""
    checked: set[tuple[int, int, tuple[float, ...], tuple[float, ...]]] = set()
    for cfg, shape in runs:
        if not _uses_teachers(cfg):
            continue
        size = cfg.image_size or (BUILTIN[cfg.dataset].image_size if cfg.dataset in BUILTIN else 0) \
            or cfg.load_size or shape.image_size
        key = (cfg.num_classes or shape.classes, size, tuple(cfg.teacher_mean), tuple(cfg.teacher_std))
        if key in checked:
            continue
        checked.add(key)
        for i, t in enumerate(sweep.teachers):
            try:
                load_teachers([t.arch], [t.weights], key[0], size, torch.device("cpu"),
                              teacher_mean=cfg.teacher_mean, teacher_std=cfg.teacher_std)
            except RD3Error as e:
                raise RD3Error(f"{sweep.path}: [[teachers]] #{i + 1} ({t.arch}, {Path(t.weights).name}): {e}") \
                    from None


def _uses_teachers(cfg: Config) -> bool:
    """Whether a run with ``cfg`` loads its teachers: the condition ``experiment.prepare`` applies (a replayed
    soft-label cache or the set's own labels need none)."""
    return bool(cfg.teacher_weights) and cfg.cache_mode != "replay" and cfg.label_source != "set"
