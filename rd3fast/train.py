"""The one training loop: draw -> augment -> relabel -> loss -> step -> schedule -> evaluate.

Protocol differences between upstream recipes are Config flags read here, never separate loops. The same
loop pre-trains teachers (loss "ce", no teacher), evaluates distilled sets, trains K seeds at once
(``parallel_seeds``), records or replays a soft-label cache, and runs each step eagerly or as one
captured CUDA graph (``cuda_graph``).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .aug import AugParams, AugSpec, eval_normalize
from .cache import SoftLabelCache
from .config import Config, lr_factor
from .data import ImageSet
from .errors import RD3Error
from .experiment import Experiment
from .graph import GraphedStep, graph_unavailable_reason
from .loader import ResidentLoader
from .losses import total_loss
from .models import build_model
from .students import Students

log = logging.getLogger("rd3fast")


def build_optimizer(cfg: Config, students: Students, capturable: bool = False) -> torch.optim.Optimizer:
    named = students.named_model_parameters()
    params: Any = [p for _, p, _ in named]
    if cfg.no_decay_bn_bias:
        # SRe2L/RDED/EDC get_parameters(): only weights with ndim > 1 (in one model) are decayed.
        decayed = [p for n, p, nd in named if nd > 1 and "weight" in n]
        rest = [p for n, p, nd in named if not (nd > 1 and "weight" in n)]
        params = [{"params": decayed, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    # A graphed step reads the learning rate from a device tensor that the schedule fills in place.
    lr: Any = torch.tensor(cfg.lr, device=named[0][1].device) if capturable else cfg.lr
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, capturable=capturable)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # in place: the captured graph keeps reading the same tensor
        else:
            group["lr"] = lr


class ParamEMA:
    """EDC's EMA: an average of the parameters only; evaluation swaps it in beside the live buffers."""

    def __init__(self, students: Students, decay: float) -> None:
        self.decay = decay
        self.params = [p.detach().clone() for p in students.parameters()]

    @torch.no_grad()
    def update(self, students: Students) -> None:
        torch._foreach_lerp_(self.params, [p.detach() for p in students.parameters()], 1.0 - self.decay)

    @torch.no_grad()
    def swapped(self, students: Students) -> Students:
        ema = copy.deepcopy(students)
        for p, e in zip(ema.parameters(), self.params):
            p.copy_(e)
        return ema


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...],
             std: tuple[float, ...], batch_size: int, amp: bool = True) -> dict[str, float]:
    """Top-1/top-5 on uint8 centre crops already resident on the model's device."""
    was_training = model.training
    model.eval()
    dev = images.device
    correct1 = correct5 = 0
    for i in range(0, len(images), batch_size):
        x = eval_normalize(images[i:i + batch_size], mean, std)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
            logits = model(x).float()
        y = labels[i:i + batch_size]
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum()
        correct5 += (top == y[:, None]).any(1).sum()
    model.train(was_training)
    n = len(images)
    return {"top1": 100.0 * float(correct1) / n, "top5": 100.0 * float(correct5) / n}


@dataclass
class RunResult:
    seed: int
    epochs: list[dict[str, float]] = field(default_factory=list)  # epoch, loss, lr, time_s
    evals: list[dict[str, float]] = field(default_factory=list)  # epoch, top1, top5
    train_time_s: float = 0.0
    images_per_s: float = 0.0
    notes: list[str] = field(default_factory=list)  # e.g. why the step was not graphed

    def summary(self) -> dict[str, Any]:
        last = self.evals[-1] if self.evals else {"top1": math.nan, "top5": math.nan}
        best = max(self.evals, key=lambda e: e["top1"]) if self.evals else last
        return {"seed": self.seed, "last_top1": last["top1"], "last_top5": last["top5"],
                "best_top1": best["top1"], "best_top5": best["top5"], "best_epoch": best.get("epoch"),
                "train_time_s": self.train_time_s, "images_per_s": self.images_per_s,
                "epochs": self.epochs, "evals": self.evals, "notes": self.notes}


def should_eval(cfg: Config, epoch: int) -> bool:
    """After epoch ``epoch`` (0-based): every eval_every epochs once eval_after of training is done, and last."""
    done = epoch + 1
    return done == cfg.epochs or (done % cfg.eval_every == 0 and done > cfg.eval_after * cfg.epochs)


def train(exp: Experiment, seed: int, progress: bool = True, desc: str = "") -> tuple[RunResult, nn.Module]:
    """Train one student from scratch on exp.train; returns its metrics and the trained model."""
    [(result, model)] = train_seeds(exp, [seed], progress=progress, desc=desc)
    return result, model


@dataclass
class Engine:
    """What a run steps: K students, their loaders, the optimizer, EMA, teacher and cache, and ``step``."""

    loaders: list[ResidentLoader]
    students: Students
    optimizer: torch.optim.Optimizer
    ema: ParamEMA | None
    cache: SoftLabelCache | None
    no_graph: str | None  # why the step is not captured as a CUDA graph (None: it is)
    step: Callable[[list, list, list], torch.Tensor]  # (idx, params, cached per seed) -> losses (K,)


def build_engine(exp: Experiment, seeds: Sequence[int], sets: Sequence[ImageSet] | None = None) -> Engine:
    """Loaders, students (initialized from their seeds), optimizer, EMA and the capturable step. Run j
    trains on ``sets[j]`` (default: every run on ``exp.train``)."""
    cfg, dev, k = exp.cfg, exp.device, len(seeds)
    sets = list(sets) if sets is not None else [exp.train] * k
    if len(sets) != k:
        raise ValueError(f"{k} seeds but {len(sets)} training sets: one set per run")
    if cfg.cache_mode != "off" and any(s is not sets[0] for s in sets):
        raise RD3Error("--cache: a soft-label cache belongs to one distilled set; train several sets without it")
    check_side_by_side(sets)
    spec = AugSpec.from_config(cfg, cfg.image_size, cfg.mean, cfg.std)
    loaders = [ResidentLoader(st.images, st.labels, spec, cfg.batch_size, seed=s, device=dev,
                              drop_last=cfg.drop_last, backend=cfg.aug_backend,
                              channels_last=dev.type == "cuda" and k == 1) for s, st in zip(seeds, sets)]
    models = []
    for s in seeds:
        torch.manual_seed(s)  # the student's initialization depends on its seed only
        m = build_model(cfg.student, cfg.num_classes, cfg.image_size).to(dev)
        models.append(m.to(memory_format=torch.channels_last) if dev.type == "cuda" and k == 1 else m)
    students = Students(models)
    no_graph = graph_unavailable_reason(cfg, dev)
    graphed = no_graph is None
    optimizer = build_optimizer(cfg, students, capturable=graphed)
    ema = ParamEMA(students, cfg.ema_decay) if cfg.ema_decay > 0 else None
    relabeler = exp.relabeler if cfg.loss != "ce" else None
    if relabeler is not None and cfg.compile_teacher and dev.type == "cuda":
        relabeler = torch.compile(relabeler)
    cache = _open_cache(cfg, exp) if cfg.cache_mode != "off" else None
    autocast = dict(device_type="cuda", dtype=torch.bfloat16, enabled=cfg.amp and dev.type == "cuda",
                    cache_enabled=not graphed)  # the autocast weight cache must not outlive a capture

    def step(idx: list[torch.Tensor], params: list[AugParams], cached: list[torch.Tensor]) -> torch.Tensor:
        """One optimizer step of all K students; returns their losses (K,). Capturable as a graph: no host
        syncs, no host-to-device copies, every input a device tensor (tests/test_engine.py checks this)."""
        batches = [ld.batch(i, p) for ld, i, p in zip(loaders, idx, params)]
        x = torch.stack([b.x for b in batches]) if k > 1 else batches[0].x[None]
        if cached:  # replay: the teacher's logits come from the cache
            soft = torch.stack(cached)
        elif relabeler is not None:
            soft = relabeler(x.flatten(0, 1)).view(k, x.shape[1], -1)  # one teacher pass for all K
            if cache is not None:
                cache.add(idx[0], params[0], soft[0])
        else:
            soft = None
        if cfg.rded_extra_forward:
            with torch.no_grad(), torch.autocast(**autocast):
                students(x)  # RDED: a second BatchNorm statistics update on the same batch
        with torch.autocast(**autocast):
            logits = students(x)
        losses = torch.stack([
            total_loss(cfg.loss, logits[j], None if soft is None else soft[j], b.y, b.y_partner, b.lam,
                       cfg.temperature, cfg.kl_t2, cfg.ce_weight, cfg.ce_target) for j, b in enumerate(batches)])
        losses.sum().backward()  # slices are independent: d(sum)/d(slice j) = d(loss j)
        optimizer.step()
        if ema is not None:
            ema.update(students)
        return losses.detach()

    return Engine(loaders, students, optimizer, ema, cache, no_graph, step)


def check_side_by_side(sets: Sequence[ImageSet]) -> None:
    """Runs trained at once step in lockstep, their batches stacked: every set needs as many images."""
    sizes = {st.source: len(st.images) for st in sets}
    if len(set(sizes.values())) > 1:
        raise RD3Error("sets trained at once must have the same number of images (one IPC), got "
                       + ", ".join(f"{src}: {n}" for src, n in sizes.items()) + "; evaluate them separately")


def train_seeds(exp: Experiment, seeds: Sequence[int], progress: bool = True, desc: str = "",
                sets: Sequence[ImageSet] | None = None) -> list[tuple[RunResult, nn.Module]]:
    """Train one student per seed, all at once (one module, one teacher pass per step); with ``sets``, run j
    trains on sets[j] (several distilled sets of one size side by side) instead of exp.train."""
    cfg, dev, k = exp.cfg, exp.device, len(seeds)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes every step, as the reference scripts set it
    eng = build_engine(exp, seeds, sets)
    val_images, val_labels = exp.val.images.to(dev), exp.val.labels.to(dev)
    graphed = eng.no_graph is None
    run_step: Callable = GraphedStep(eng.step, eng.optimizer) if graphed else _eager(eng.step, eng.optimizer)
    note = "whole step as one CUDA graph" if graphed else f"eager step: {eng.no_graph}"
    results = [RunResult(seed=s, notes=[note]) for s in seeds]
    bar = tqdm(range(cfg.epochs), desc=desc or f"seeds {','.join(map(str, seeds))}", disable=not progress,
               leave=False)
    start = time.perf_counter()
    for epoch in bar:
        t0 = time.perf_counter()
        lr = cfg.lr * lr_factor(cfg, epoch)  # stepped per epoch, as upstream's LambdaLR
        set_lr(eng.optimizer, lr)
        eng.students.train()
        loss_sum = torch.zeros(k, device=dev)
        for draws in _epoch_draws(cfg, eng.loaders, eng.cache, epoch, dev):
            loss_sum += run_step(*draws)
        if eng.cache is not None and cfg.cache_mode == "record":
            eng.cache.end_epoch(epoch)
        epoch_loss = (loss_sum / len(eng.loaders[0])).tolist()  # one host sync per epoch
        elapsed = time.perf_counter() - t0
        for r, lval in zip(results, epoch_loss):
            r.epochs.append({"epoch": epoch + 1, "loss": lval, "lr": lr, "time_s": elapsed})
        if should_eval(cfg, epoch):
            evaluated = eng.ema.swapped(eng.students) if eng.ema is not None and cfg.eval_ema else eng.students
            for j, r in enumerate(results):
                metrics = evaluate(evaluated.model(j), val_images, val_labels, cfg.mean, cfg.std,
                                   cfg.eval_batch_size, cfg.amp)
                r.evals.append({"epoch": epoch + 1, **metrics})
            bar.set_postfix(loss=f"{epoch_loss[0]:.3f}", top1=f"{results[0].evals[-1]['top1']:.1f}")
        else:
            bar.set_postfix(loss=f"{epoch_loss[0]:.3f}")
    train_time = time.perf_counter() - start
    final = eng.ema.swapped(eng.students) if eng.ema is not None and cfg.eval_ema else eng.students
    out = []
    for j, r in enumerate(results):
        r.train_time_s = train_time
        ld = eng.loaders[j]
        per_epoch = len(ld) * cfg.batch_size if cfg.drop_last else len(ld.images)
        r.images_per_s = cfg.epochs * per_epoch / max(train_time, 1e-9)  # per run; K runs went at once
        out.append((r, final.model(j) if k == 1 else copy.deepcopy(final.model(j))))
    if graphed:
        for r in results:
            r.notes.append(f"{run_step.replays} of {run_step.replays + run_step.calls} steps replayed the graph "
                           f"(the others: {run_step.warmup} warm-up steps, and batches of another size)")
    if eng.cache is not None and cfg.cache_mode == "record":
        size, fkd = eng.cache.size_bytes(), eng.cache.fkd_bytes()
        for r in results:
            r.notes.append(f"soft-label cache {eng.cache.path}: {size / 2**20:.2f} MiB, FKD-style storage "
                           f"would be {fkd / 2**20:.2f} MiB (1/{fkd / max(size, 1):.0f})")
    return out


def _eager(step: Callable, optimizer: torch.optim.Optimizer) -> Callable:
    def run(idx: list, params: list, cached: list) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        return step(idx, params, cached)
    return run


def _epoch_draws(cfg: Config, loaders: list[ResidentLoader], cache: SoftLabelCache | None, epoch: int,
                 device: torch.device):
    """Per step: ([idx per seed], [params per seed], [cached soft labels per seed] or [])."""
    if cache is not None and cfg.cache_mode == "replay":
        # Every seed replays the recorded stream: the same batches and labels, new students.
        for idx, params, soft in cache.epoch(epoch, device):
            yield [idx] * len(loaders), [params] * len(loaders), [soft] * len(loaders)
        return
    for ld in loaders:
        ld.set_epoch(epoch)
    for draws in zip(*(ld.draws() for ld in loaders)):
        yield [d[0] for d in draws], [d[1] for d in draws], []


def _open_cache(cfg: Config, exp: Experiment) -> SoftLabelCache:
    fingerprint = (f"{exp.train.source}|n={len(exp.train.images)}|size={cfg.image_size}|bs={cfg.batch_size}|"
                   f"shuffle={cfg.patch_shuffle}|crop={cfg.crop}{tuple(cfg.rrc_scale)}|mix={cfg.mix}|"
                   f"teacher={'+'.join(cfg.teacher)}")
    return SoftLabelCache(cfg.cache, cfg.cache_mode, topk=cfg.cache_topk, num_images=len(exp.train.images),
                          batch_size=cfg.batch_size, num_classes=cfg.num_classes,
                          shuffle_factor=1 if cfg.edc_noop_shuffle else cfg.patch_shuffle, fingerprint=fingerprint)
