"""What is printed before anything starts: the plan as a table, and the estimated cost of what is left.
"""
from __future__ import annotations

import itertools
import json
import math
import statistics
import time
from pathlib import Path
from typing import Sequence

import torch

from ..config import Config
from ..data.datasets import BUILTIN, is_file_set, list_files
from ..data.folders import list_image_folder
from ..data.sets import ImageSet, load_real
from ..engine import train as training
from ..engine.experiment import Experiment, pick_device
from ..engine.models import build_model
from ..engine.teacher import Relabeler
from ..errors import RD3Error
from ..results import environment
from .identity import set_facts
from .plan import Plan, RunSpec, distinct
from .store import status
from .sweepfile import Sweep

MAX_ROWS = 200  # rows of the plan table printed; the rest are counted (plan.json lists every run)
MAX_TIMED = 16  # distinct setups whose step is timed; further ones are estimated at the median of those
# Config keys that change the values a step computes, not the work it does: runs differing only in these are
# timed once (a grid over lr x weight decay is one setup, not one per point).
TIME_FREE = frozenset({
    "preset", "seeds", "distilled", "val", "data_root", "val_cache", "class_map", "teacher_weights", "lr",
    "momentum", "betas", "weight_decay", "sched", "zeta", "warmup_epochs", "step_size", "milestones", "gamma",
    "lr_from_set", "temperature", "ce_target", "epochs", "eval_every", "eval_after", "cutmix_beta",
    "mixup_alpha", "rrc_scale", "rrc_ratio", "flip_p", "zca_eps", "teacher_mean", "teacher_std", "mean", "std",
})


# ---------------------------------------------------------------------------------------------------
# What is printed before anything starts
# ---------------------------------------------------------------------------------------------------
def plan_summary(plan: Plan, root: str | Path, retry_failed: bool = False, estimate: bool = True,
                 max_rows: int = MAX_ROWS) -> str:
    """The resolved runs as a compact table (one row per set x protocol x student x grid point: its seeds,
    id prefixes and status; the first ``max_rows`` rows, then how many more), then the estimated cost of
    what is left to train. Each run's status is read once."""
    sweep = plan.sweep
    first = distinct(plan.runs)
    shared = len(plan.runs) - len(first)
    also = f" ({shared} of them shared by protocols that resolve alike: trained once)" if shared else ""
    lines = [f"sweep {sweep.path}: {len(plan.runs)} runs{also} in {len(plan.groups)} groups (at most "
             f"{plan.parallel_seeds} at once) -> {root}", "",
             "| set | protocol (preset) | student | grid | seeds | ids | status |", "|" + "---|" * 7]
    rows: dict[tuple, list[RunSpec]] = {}
    for r in plan.runs:
        rows.setdefault((r.set.name, r.label, r.preset, r.student, json.dumps(r.grid)), []).append(r)
    states = {r.id: status(root, r.id) for r in first}
    for (name, proto, preset, student, _), runs in itertools.islice(rows.items(), max_rows):
        counts = {s: sum(states[r.id] == s for r in runs) for s in ("finished", "failed", "pending")}
        shown = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        point = ", ".join(f"{k}={v}" for k, v in runs[0].grid.items()) or "-"
        lines.append(f"| {name} | {proto} ({preset}) | {student} | {point} | {','.join(str(r.seed) for r in runs)} | "
                     f"{','.join(r.id[:6] for r in runs)} | {shown} |")
    if len(rows) > max_rows:
        lines.append(f"| ... {len(rows) - max_rows:,} more rows ({len(plan.runs):,} runs in all: ROOT/plan.json "
                     "lists every one) |")
    if estimate:
        wanted = ("pending", "failed") if retry_failed else ("pending",)
        lines += ["", estimate_cost(plan, [r for r in first if states[r.id] in wanted])]
    return "\n".join(lines)


def run_steps(cfg: Config, images: int) -> int:
    """Optimizer steps of one run: epochs x ceil(images / batch) (floor with drop_last)."""
    per_epoch = images // cfg.batch_size if cfg.drop_last else math.ceil(images / cfg.batch_size)
    return cfg.epochs * per_epoch


def estimate_cost(plan: Plan, pending: Sequence[RunSpec]) -> str:
    """Steps and seconds of the pending runs. Seconds: per group (the K runs it trains at once), the engine's
    own training step (``engine.train.time_step``: augmentation, teacher pass, K students, optimizer, the
    CUDA graph where it applies) and an evaluation batch, timed here and now on random weights and images,
    times the steps and evaluation batches the group takes. Data decoding and start-up are not included."""
    if not pending:
        return "estimated cost: nothing left to train"
    steps = sum(run_steps(r.config, r.images) for r in pending)
    try:
        seconds, device, how = _estimate_seconds(plan, pending)
    except RD3Error as e:
        return f"estimated cost: {len(pending)} runs to train, {steps:,} steps; no time estimate ({e})"
    return (f"estimated cost: {len(pending)} runs to train, {steps:,} steps (epochs x ceil(images/batch)), "
            f"about {_duration(seconds)} of {device} time\n  ({how})")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _estimate_seconds(plan: Plan, pending: Sequence[RunSpec]) -> tuple[float, str, str]:
    """Each group's pending runs, K at once as ``group.run_group`` trains them: steps x the timed step of K
    runs, plus every run's evaluation batches x the timed evaluation batch."""
    wanted = {r.id for r in pending}
    facts = {s.path: plan.facts.get(s.path) or set_facts(s.path) for s in {r.set for r in pending}}
    val_images = _val_images(plan.sweep)
    device = pick_device(pending[0].config.device)
    timed: dict[str, tuple[float, float]] = {}
    shown: dict[str, str] = {}
    setups: dict[str, str] = {}  # group_bucket -> its timing setup
    evals: dict[tuple, int] = {}  # (epochs, eval_every, eval_after) -> evaluations of a run
    guessed = 0  # groups of setups beyond MAX_TIMED: the median timed step
    total = 0.0
    for group in plan.groups:
        todo = [r for r in group.runs if r.id in wanted]
        if not todo:
            continue
        wanted -= {r.id for r in todo}  # a run shared by two protocols is trained once
        cfg, f = todo[0].config, facts[todo[0].set.path]
        size = cfg.image_size or (BUILTIN[cfg.dataset].image_size if cfg.dataset else cfg.load_size or f.image_size)
        bucket = (todo[0].bucket or json.dumps(cfg.to_dict(), sort_keys=True)) + f"|{f.classes}|{size}|{len(todo)}"
        if bucket not in setups:
            setups[bucket] = json.dumps([{k: v for k, v in cfg.to_dict().items() if k not in TIME_FREE},
                                         f.classes, size, len(todo)], sort_keys=True, default=str)
        setup = setups[bucket]
        if setup not in timed and len(timed) < MAX_TIMED:
            exp = _timing_experiment(cfg, f.classes, size, device)
            eval_s = _time_eval(exp)
            timed[setup] = (training.time_step(exp, len(todo)), eval_s)
            shown[setup] = (f"{cfg.student} x {len(todo)} + {'+'.join(cfg.teacher) or 'no teacher'} at {size} px, "
                            f"batch {cfg.batch_size}: {timed[setup][0] * 1e3:.0f} ms/step")
        if setup in timed:
            step_s, eval_s = timed[setup]
        else:
            guessed += 1
            step_s, eval_s = (statistics.median(t[i] for t in timed.values()) for i in (0, 1))
        total += run_steps(cfg, todo[0].images) * step_s
        for r in todo:
            when = (r.config.epochs, r.config.eval_every, r.config.eval_after)
            if when not in evals:
                evals[when] = sum(training.should_eval(r.config, e) for e in range(r.config.epochs))
            held = r.heldout.size if r.heldout is not None else 0
            total += evals[when] * math.ceil((val_images + held) / r.config.eval_batch_size) * eval_s
    name = environment(device)["device"]
    more = (f"; {guessed} groups of further setups at the median of these (at most {MAX_TIMED} setups are timed)"
            if guessed else "")
    return total, name, (f"the engine's step and an evaluation batch timed just now on {name}, random weights: "
                         + "; ".join(shown.values()) + more)


def _timing_experiment(cfg: Config, classes: int, size: int, device: torch.device) -> Experiment:
    """An Experiment like the group's, on random uint8 images and randomly initialized teachers: enough
    images for the timed steps, the run's image size, class count and finalized config."""
    n = cfg.batch_size * 4
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % classes
    soft = torch.randn(n, classes, generator=gen) if cfg.label_source == "set" else None
    train_set = ImageSet(images, labels, [str(c) for c in range(classes)], "timing", soft=soft)
    val = ImageSet(images[:min(n, cfg.eval_batch_size)], labels[:min(n, cfg.eval_batch_size)], train_set.classes,
                   "timing")
    mean = tuple(cfg.mean or (0.5,)) * (3 if len(cfg.mean) <= 1 else 1)  # the value does not change the time
    std = tuple(cfg.std or (0.25,)) * (3 if len(cfg.std) <= 1 else 1)
    cfg = cfg.replace(image_size=size, num_classes=classes, mean=mean, std=std, cache_mode="off", drop_last=False,
                      compile_teacher=False)
    relabeler = None
    if cfg.label_source != "set" and (cfg.loss != "ce" or cfg.teacher_weights):
        torch.manual_seed(0)
        relabeler = Relabeler([build_model(a, classes, size).to(device) for a in cfg.teacher], cfg.teacher)
    return Experiment(cfg=cfg, train=train_set, val=val, relabeler=relabeler, device=device)


def _time_eval(exp: Experiment, warmup: int = 2, repeats: int = 3) -> float:
    """Seconds of one evaluation batch of ``cfg.eval_batch_size`` images (timed on the images there are,
    scaled)."""
    cfg = exp.cfg
    torch.manual_seed(0)
    model = build_model(cfg.student, cfg.num_classes, cfg.image_size).to(exp.device)
    images, labels = exp.val.images.to(exp.device), exp.val.labels.to(exp.device)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        training.evaluate(model, images, labels, cfg.mean, cfg.std, cfg.eval_batch_size, cfg.amp)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * cfg.eval_batch_size / len(images)


def _val_images(sweep: Sweep) -> int:
    if sweep.dataset is not None:  # a file set is counted from its listing, never decoded for this
        if is_file_set(sweep.dataset):
            return len(list_files(sweep.dataset, "val", sweep.data_root).files)
        return len(load_real(sweep.dataset, "val", data_root=sweep.data_root).labels)
    return len(list_image_folder(sweep.val).files)
