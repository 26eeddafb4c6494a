"""rd3fast: the RD3 post-evaluation protocol (and every published recipe) for distilled datasets, fast.

Drop-in pieces for your own training script::

    from rd3fast import ResidentLoader, AugSpec, Relabeler, load_teachers

The package reads bottom to top: the shared modules at this level (config, errors, atomic writes, locks,
progress, cache root) -> ``data/`` (decoding, folders, tensor files, real sets, validation cache, readers)
-> ``engine/`` (augmentation, loader, models, teachers, students, losses, the one training loop) ->
``methods/`` (the distillers) -> ``bench/`` (sweeps, executors, leaderboard) -> the entry points here
(``run``, ``demo``, ``evaluate``, ``pretrain``, ``distill``, ``prepare``). A wing imports only wings below it
(tests/test_imports.py).
"""
from .config import PRESETS, Config, resolve
from .engine.aug import AugParams, AugSpec, augment, sample_params
from .engine.loader import Batch, ResidentLoader
from .engine.teacher import Relabeler, load_teachers
from .errors import RD3Error
from .version import __version__

__all__ = ["AugParams", "AugSpec", "Batch", "Config", "PRESETS", "RD3Error", "Relabeler", "ResidentLoader",
           "__version__", "augment", "load_teachers", "resolve", "sample_params"]
