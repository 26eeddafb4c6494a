"""Training one group: its unfinished runs K at once through the engine's one loop, each run's results.json
written when the group ends; an interrupted group resumes from ROOT/groups/<key>/checkpoint.pt.

A checkpoint that cannot be read is renamed aside (``checkpoint.pt.unreadable-<time>``, one line on stderr)
and the group starts over, so rerunning the command recovers from it; ``discard_checkpoint`` is what
``--restart`` does to each group it trains.
"""
from __future__ import annotations

import dataclasses
import signal
import socket
import time
from pathlib import Path
from typing import Any

import torch

from ..data.sets import ImageSet, expand_channels, heldout_split, load_real
from ..data.tensors import LoadFailed, safe_load
from ..engine import train as training
from ..engine.checkpoint import Checkpointing, StopRequest
from ..engine.experiment import Experiment, load_more_sets, prepare
from ..errors import Interrupted, RD3Error
from ..lock import OutputLock
from ..results import environment, write_json
from .plan import SCHEMA, Group, RunSpec
from .sweepfile import REAL
from .store import GROUPS, RESULTS, read_result, run_dir, to_train

CHECKPOINT = "checkpoint.pt"  # in ROOT/groups/<key>/: the group's training state while it is unfinished


# ---------------------------------------------------------------------------------------------------
# Training one group
# ---------------------------------------------------------------------------------------------------
def run_group(root: str | Path, group: Group, progress: bool = True, *, retry_failed: bool = False,
              stop: StopRequest | None = None, checkpoint_every: int = 0) -> list[dict[str, Any]]:
    """Train the group's unfinished runs K at once and write each one's results.json; return the group's
    results records (finished earlier ones included). Finished runs are never retrained, failed ones only
    with ``retry_failed``; an interrupted group resumes from ROOT/groups/<key>/checkpoint.pt. A run that
    fails (bad input, non-finite loss, out of memory) is recorded as failed with its message; anything else
    propagates (the executor records the group as failed). ``stop``: checkpoint and raise Interrupted."""
    if stop:  # a signal between groups: start no other
        raise Interrupted(stop.signum or signal.SIGTERM, f"before group {group.key}", resumable=True)
    folder = Path(root) / GROUPS / group.key
    with OutputLock.folder(folder, flag=f"group {group.key}"):  # one writer per group, across machines
        todo = to_train(root, group.runs, retry_failed)
        if todo:
            _train_group(root, folder, group.key, todo, progress, stop, checkpoint_every)
    return [rec for r in group.runs if (rec := read_result(root, r.id)) is not None]


def _train_group(root: str | Path, folder: Path, key: str, todo: list[RunSpec], progress: bool,
                 stop: StopRequest | None, checkpoint_every: int) -> None:
    t0 = time.perf_counter()
    ids = [r.id for r in todo]
    device = "?"
    # Its identity: the runs it trains (a checkpoint of another subset of the group is refused, not mixed in).
    ckpt = Checkpointing(folder / CHECKPOINT, checkpoint_every, stop, {"runs": ids}, set_aside_unreadable=True)
    if _stale(ckpt):  # left by an attempt on other runs of the group, which have finished since
        ckpt.discard()
    try:
        exp = _experiment(todo, progress)
        device = environment(exp.device)["device"]
        setup_s = time.perf_counter() - t0
        sets = _sets_of(exp, todo, progress)
        seeds: dict[str, list[str]] = {}
        for r in todo:
            seeds.setdefault(r.set.name, []).append(str(r.seed))
        desc = f"{todo[0].label}: " + "; ".join(f"{name} seeds {','.join(v)}" for name, v in seeds.items())
        results = training.train_seeds(exp, [r.seed for r in todo], progress=progress, desc=desc,
                                       sets=[sets[r.set.path] for r in todo], checkpoint=ckpt)
    except Exception as e:  # noqa: BLE001 - only the failures a run can have are recorded; the rest re-raise
        message = failure_message(e, len(todo))
        if message is None:
            raise
        wall = time.perf_counter() - t0
        for r in todo:
            _write_result(root, r, training.RunResult(seed=r.seed, failure={"epoch": None, "reason": message}),
                          key, ids, device, wall)
        return
    for r, (result, _) in zip(todo, results):
        _write_result(root, r, result, key, ids, device, setup_s + result.train_time_s)
    ckpt.discard()  # only now: every run of it is in its results.json


def _stale(ckpt: Checkpointing) -> bool:
    """Whether ckpt's file is a checkpoint of other runs (memory-mapped: only its identity is read)."""
    if not ckpt.path.is_file():
        return False
    try:
        state = safe_load(ckpt.path, mmap=True)
    except LoadFailed:  # an unreadable file is Checkpointing.load's to set aside
        return False
    return isinstance(state, dict) and "identity" in state and state["identity"] != ckpt.identity


def discard_checkpoint(root: str | Path, group: Group) -> bool:
    """``--restart``: delete the group's checkpoint (under its lock: never one a trainer is writing), so its
    runs start over; whether there was one."""
    folder = Path(root) / GROUPS / group.key
    if not (folder / CHECKPOINT).exists():
        return False
    with OutputLock.folder(folder, flag=f"group {group.key}"):
        had = (folder / CHECKPOINT).exists()
        (folder / CHECKPOINT).unlink(missing_ok=True)
    return had


def _experiment(todo: list[RunSpec], progress: bool) -> Experiment:
    """The group's data, teachers and finalized config, checked once; with a held-out split attached when
    the sweep selects grid values on one."""
    cfg = todo[0].config
    if todo[0].role == REAL:  # the real-hard reference: the dataset's whole training split, hard labels
        train = load_real(cfg.dataset, "train", image_size=cfg.image_size, data_root=cfg.data_root, progress=progress)
        exp = prepare(cfg, train_set=train, progress=progress)
    else:
        exp = prepare(cfg, progress=progress)
    held = todo[0].heldout
    if held is not None:
        h = heldout_split(exp.cfg.dataset, held.size, held.seed, image_size=exp.cfg.image_size,
                          data_root=exp.cfg.data_root, progress=progress)
        exp = dataclasses.replace(exp, heldout=ImageSet(expand_channels(h.images, exp.channels), h.labels, h.classes,
                                                        h.source))
    return exp


def _sets_of(exp: Experiment, todo: list[RunSpec], progress: bool) -> dict[str, ImageSet]:
    """Each distinct set of the group decoded once: the first is exp.train, the others checked against it."""
    paths = list(dict.fromkeys(r.set.path for r in todo))
    return dict(zip(paths, [exp.train, *load_more_sets(exp, paths[1:], progress=progress)]))


def failure_message(e: BaseException, k: int = 1) -> str | None:
    """The recorded message of an exception a run can fail with (bad input, out of memory), else None."""
    if isinstance(e, RD3Error):
        return str(e)
    oom = getattr(torch, "OutOfMemoryError", None)
    if (oom is not None and isinstance(e, oom)) or (isinstance(e, RuntimeError) and "out of memory" in str(e)):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return (f"out of memory training {k} run(s) at once ({first}); rerun with --retry-failed and a smaller "
                "--parallel-seeds")
    return None


def _write_result(root: str | Path, run: RunSpec, result: training.RunResult, key: str, ids: list[str],
                  device: str, wall_s: float) -> None:
    """results.json of one run. ``wall_s``: the group's set-up plus training time, shared by its
    ``k`` runs (they trained at once, so device time is summed over groups, not runs)."""
    summary = result.summary()
    error = None
    if result.failure is not None:
        at = result.failure.get("epoch")
        error = f"failed at epoch {at}: {result.failure['reason']}" if at is not None else result.failure["reason"]
    record = {"schema": SCHEMA, "id": run.id, "status": summary["status"], "error": error, "run": summary,
              "group": {"key": key, "k": len(ids), "runs": ids, "device": device, "host": socket.gethostname()},
              "wall_s": wall_s, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(run_dir(root, run.id) / RESULTS, record)
