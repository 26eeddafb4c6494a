"""The one training loop: draw -> augment -> relabel -> loss -> step -> schedule -> evaluate.

Protocol differences between upstream recipes are Config flags read here, never separate loops. The same
loop pre-trains teachers (loss "ce", no teacher), evaluates distilled sets, trains K seeds at once
(``parallel_seeds``), records or replays a soft-label cache, and runs each step eagerly or as one
captured CUDA graph (``cuda_graph``).

Where the batches come from is a ``BatchSource``:

- ``ResidentSource``: the set is resident on the device as uint8; per step it draws indices and
  augmentation parameters on the host (``ResidentLoader.draws``) and the step augments on the device
  (or replays them, with the teacher's logits, from a soft-label cache). Its steps can be graphed.
- ``StreamSource``: a reader (DALI, FFCV, PIL workers; ``rd3fast.data.backends``) yields ready, augmented
  batches each epoch: the pre-training path for real sets too large to hold resident.

Both go through the same step (teachers -> students -> loss -> optimizer -> EMA), the same optimizer
builder, schedule and evaluation.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
import torch.nn as nn

from ..config import Config, lr_factor
from ..data.content import digest, set_identity
from ..data.pixels import eval_normalize, normalize
from ..data.sets import ImageSet
from ..data.zca import ZCA
from ..errors import RD3Error
from ..host import process_age
from ..progress import Progress
from .aug import AugParams, AugSpec
from .checkpoint import Checkpointing, Interrupted
from .experiment import Experiment
from .graph import GraphedStep, graph_unavailable_reason
from .loader import ResidentLoader
from .losses import total_loss
from .models import build_model
from .soft_labels import SoftLabelCache
from .students import Students

log = logging.getLogger("rd3fast")


# ---------------------------------------------------------------------------------------------------
# Optimizer, schedule, EMA, evaluation
# ---------------------------------------------------------------------------------------------------
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
             std: tuple[float, ...], batch_size: int, amp: bool = True, whiten: ZCA | None = None) -> dict[str, float]:
    """Top-1/top-5 on uint8 centre crops already resident on the model's device; ``whiten``: the run's
    ZCA, applied after normalization as to the training images."""
    was_training = model.training
    model.eval()
    dev = images.device
    correct1 = correct5 = 0
    for i in range(0, len(images), batch_size):
        x = eval_normalize(images[i:i + batch_size], mean, std)
        if whiten is not None:
            x = whiten(x)
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


def should_eval(cfg: Config, epoch: int) -> bool:
    """After epoch ``epoch`` (0-based): every eval_every epochs once eval_after of training is done, and last."""
    done = epoch + 1
    return done == cfg.epochs or (done % cfg.eval_every == 0 and done > cfg.eval_after * cfg.epochs)


@dataclass
class RunResult:
    seed: int
    epochs: list[dict[str, float]] = field(default_factory=list)  # epoch, loss, lr, time_s
    evals: list[dict[str, float]] = field(default_factory=list)  # epoch, top1, top5
    train_time_s: float = 0.0
    images_per_s: float = 0.0
    notes: list[str] = field(default_factory=list)  # e.g. why the step was not graphed
    first_step_s: float = 0.0  # seconds from process start to this run's first step (start-up cost)
    failure: dict[str, Any] | None = None  # {"epoch", "reason"} when the run stopped being a result

    def summary(self) -> dict[str, Any]:
        """The run as results.json stores it; a failed run (or one never evaluated) has no metrics (null).
        With a held-out split, ``last_heldout_top1`` too (the last evaluation's)."""
        ok = self.failure is None and bool(self.evals)
        last = self.evals[-1] if ok else {"top1": None, "top5": None}
        held = {"last_heldout_top1": last.get("heldout_top1")} if any("heldout_top1" in e for e in self.evals) else {}
        best = max(self.evals, key=lambda e: e["top1"]) if ok else last
        return {"seed": self.seed, "status": "ok" if self.failure is None else "failed", "failure": self.failure,
                "last_top1": last["top1"], "last_top5": last["top5"],
                "best_top1": best["top1"], "best_top5": best["top5"], "best_epoch": best.get("epoch"),
                "train_time_s": self.train_time_s, "images_per_s": self.images_per_s,
                **held, "first_step_s": self.first_step_s, "epochs": self.epochs, "evals": self.evals,
                "notes": self.notes}


# ---------------------------------------------------------------------------------------------------
# Batch sources
# ---------------------------------------------------------------------------------------------------
@dataclass
class StepBatch:
    """What one step trains on, on the device: K stacked batches and each run's hard targets."""

    x: torch.Tensor  # (K, B, C, S, S) normalized (and mixed)
    y: list[torch.Tensor]  # per run: int64 (B,) labels
    y_partner: list[torch.Tensor]  # per run: labels of the mixing partners (= y when not mixed)
    lam: list[torch.Tensor]  # per run: float32 () weight of y
    soft: torch.Tensor | None = None  # (K, B, classes) teacher logits when they come with the batch (cache)
    # --label-source set: per run, the set's own soft labels of the samples and of their mixing partners
    set_soft: list[torch.Tensor] | None = None
    set_soft_partner: list[torch.Tensor | None] | None = None


class BatchSource(Protocol):
    """Where the loop's batches come from. ``epoch`` yields each step's inputs (host side, cheap);
    ``batch`` turns them into a StepBatch on the device inside the step (capturable for graphed sources)."""

    graphable: bool  # whether batch() is free of host syncs with fixed shapes (a CUDA graph can replay it)

    def __len__(self) -> int: ...

    def images_per_epoch(self) -> int: ...

    def epoch(self, epoch: int) -> Iterator[tuple]: ...

    def batch(self, *inputs: Any) -> StepBatch: ...

    def relabeled(self, inputs: tuple, soft: torch.Tensor) -> None: ...

    def end_epoch(self, epoch: int) -> None: ...


class ResidentSource:
    """K resident loaders (one per run) and an optional soft-label cache. Step inputs: (indices per run,
    augmentation params per run, cached logits per run or [])."""

    graphable = True

    def __init__(self, loaders: list[ResidentLoader], cache: SoftLabelCache | None, mode: str = "off") -> None:
        self.loaders, self.cache, self.mode = loaders, cache, mode

    def __len__(self) -> int:
        return len(self.loaders[0])

    def images_per_epoch(self) -> int:
        ld = self.loaders[0]
        return len(ld) * ld.batch_size if ld.drop_last else len(ld.images)

    def epoch(self, epoch: int) -> Iterator[tuple[list, list, list]]:
        k = len(self.loaders)
        if self.cache is not None and self.mode == "replay":
            # Every run replays the recorded stream: the same batches and labels, new students.
            for idx, params, soft in self.cache.epoch(epoch, self.loaders[0].device):
                yield [idx] * k, [params] * k, [soft] * k
            return
        for ld in self.loaders:
            ld.set_epoch(epoch)
        for draws in zip(*(ld.draws() for ld in self.loaders)):
            yield [d[0] for d in draws], [d[1] for d in draws], []

    def batch(self, idx: list[torch.Tensor], params: list[AugParams], cached: list[torch.Tensor]) -> StepBatch:
        batches = [ld.batch(i, p) for ld, i, p in zip(self.loaders, idx, params)]
        x = torch.stack([b.x for b in batches]) if len(batches) > 1 else batches[0].x[None]
        with_soft = batches[0].soft is not None
        return StepBatch(x, [b.y for b in batches], [b.y_partner for b in batches], [b.lam for b in batches],
                         torch.stack(cached) if cached else None,
                         [b.soft for b in batches] if with_soft else None,
                         [b.soft_partner for b in batches] if with_soft else None)

    def relabeled(self, inputs: tuple, soft: torch.Tensor) -> None:
        if self.cache is not None and self.mode == "record":
            idx, params, _ = inputs
            self.cache.add(idx[0], params[0], soft[0])

    def end_epoch(self, epoch: int) -> None:
        if self.cache is not None and self.mode == "record":
            self.cache.end_epoch(epoch)


class StreamSource:
    """A reader's ready (x, y) batches, one run: the streamed pre-training path (DALI, FFCV, PIL workers)."""

    graphable = False

    def __init__(self, reader: Any, images_per_epoch: int | None = None) -> None:
        self.reader = reader
        self._images = images_per_epoch
        self.seen = 0

    def __len__(self) -> int:
        return len(self.reader)

    def images_per_epoch(self) -> int:
        return self._images if self._images is not None else self.seen

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        set_epoch = getattr(self.reader, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        seen = 0
        for x, y in self.reader:
            seen += len(y)
            yield x, y
        self.seen = seen

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> StepBatch:
        one = torch.ones((), device=x.device)
        return StepBatch(x[None], [y], [y], [one])

    def relabeled(self, inputs: tuple, soft: torch.Tensor) -> None:
        return None

    def end_epoch(self, epoch: int) -> None:
        return None


# ---------------------------------------------------------------------------------------------------
# The engine: what a run steps
# ---------------------------------------------------------------------------------------------------
@dataclass
class Engine:
    """K students, the batch source, the optimizer, EMA, and ``step``: one optimizer step of all K."""

    source: BatchSource
    students: Students
    optimizer: torch.optim.Optimizer
    ema: ParamEMA | None
    no_graph: str | None  # why the step is not captured as a CUDA graph (None: it is)
    step: Callable[..., torch.Tensor]  # (*source inputs) -> losses (K,)

    @property
    def loaders(self) -> list[ResidentLoader]:
        return self.source.loaders if isinstance(self.source, ResidentSource) else []

    @property
    def cache(self) -> SoftLabelCache | None:
        return self.source.cache if isinstance(self.source, ResidentSource) else None


def resident_source(exp: Experiment, seeds: Sequence[int], sets: Sequence[ImageSet] | None = None,
                    resume_epoch: int | None = None) -> ResidentSource:
    """One ResidentLoader per run (run j on ``sets[j]``, default exp.train) and the soft-label cache."""
    cfg, dev, k = exp.cfg, exp.device, len(seeds)
    sets = list(sets) if sets is not None else [exp.train] * k
    if len(sets) != k:
        raise ValueError(f"{k} seeds but {len(sets)} training sets: one set per run")
    if cfg.cache_mode != "off" and any(s is not sets[0] for s in sets):
        raise RD3Error("--cache: a soft-label cache belongs to one distilled set; train several sets without it")
    check_side_by_side(sets)
    spec = AugSpec.from_config(cfg, cfg.image_size, cfg.mean, cfg.std)
    loaders = [ResidentLoader(training_images(exp, st), st.labels, spec, cfg.batch_size, seed=s, device=dev,
                              drop_last=cfg.drop_last, backend=cfg.aug_backend,
                              channels_last=dev.type == "cuda" and k == 1,
                              soft=st.soft if cfg.label_source == "set" else None) for s, st in zip(seeds, sets)]
    cache = _open_cache(cfg, exp, resume_epoch) if cfg.cache_mode != "off" else None
    return ResidentSource(loaders, cache, cfg.cache_mode)


def training_images(exp: Experiment, st: ImageSet) -> torch.Tensor:
    """What a loader holds: uint8 pixels for the standard pipeline; for DSA the values the model sees, which
    DSA augments (MTT/DD-Ranking order: normalize -> ZCA -> DSA). A float tensor set is that already (MTT
    saves images_best.pt in the space it trained in, whitened when distilled with ZCA); uint8 images are
    normalized, and whitened with --zca, once here."""
    cfg = exp.cfg
    if cfg.aug != "dsa":
        return st.images
    if st.images.is_floating_point():  # the set's size was checked against the run's (experiment.prepare)
        return st.images
    x = normalize(st.images.float(), cfg.mean, cfg.std)
    return exp.zca(x) if exp.zca is not None else x


def build_engine(exp: Experiment, seeds: Sequence[int], sets: Sequence[ImageSet] | None = None,
                 source: BatchSource | None = None, resume_epoch: int | None = None) -> Engine:
    """Students (initialized from their seeds), optimizer, EMA and the step over ``source`` (default: the
    resident loaders of ``sets``, run j on sets[j], every run on exp.train when None)."""
    cfg, dev, k = exp.cfg, exp.device, len(seeds)
    source = source if source is not None else resident_source(exp, seeds, sets, resume_epoch)
    models = []
    for s in seeds:
        torch.manual_seed(s)  # the student's initialization depends on its seed only
        m = build_model(cfg.student, cfg.num_classes, cfg.image_size, in_chans=exp.channels).to(dev)
        models.append(m.to(memory_format=torch.channels_last) if dev.type == "cuda" and k == 1 else m)
    students = Students(models)
    no_graph = graph_unavailable_reason(cfg, dev) or (None if source.graphable else "streamed batches")
    graphed = no_graph is None
    optimizer = build_optimizer(cfg, students, capturable=graphed)
    ema = ParamEMA(students, cfg.ema_decay) if cfg.ema_decay > 0 else None
    relabeler = exp.relabeler if cfg.loss != "ce" else None
    if relabeler is not None and cfg.compile_teacher and dev.type == "cuda":
        relabeler = torch.compile(relabeler)
    autocast = dict(device_type="cuda", dtype=torch.bfloat16, enabled=cfg.amp and dev.type == "cuda",
                    cache_enabled=not graphed)  # the autocast weight cache must not outlive a capture

    def step(*inputs: Any) -> torch.Tensor:
        """One optimizer step of all K students; returns their losses (K,). For a graphable source it is
        capturable: no host syncs, no host-to-device copies, every input a device tensor
        (tests/test_engine.py checks this)."""
        b = source.batch(*inputs)
        soft = b.soft
        if soft is None and relabeler is not None and b.set_soft is None:
            soft = relabeler(b.x.flatten(0, 1)).view(k, b.x.shape[1], -1)  # one teacher pass for all K
            source.relabeled(inputs, soft)
        if cfg.rded_extra_forward:
            with torch.no_grad(), torch.autocast(**autocast):
                students(b.x)  # RDED: a second BatchNorm statistics update on the same batch
        with torch.autocast(**autocast):
            logits = students(b.x)
        targets = [_targets(cfg.loss, b, soft, j) for j in range(k)]
        losses = torch.stack([
            total_loss(cfg.loss, logits[j], targets[j][0], b.y[j], b.y_partner[j], b.lam[j], cfg.temperature,
                       cfg.kl_t2, cfg.ce_weight, cfg.ce_target, target_partner=targets[j][1]) for j in range(k)])
        losses.sum().backward()  # slices are independent: d(sum)/d(slice j) = d(loss j)
        optimizer.step()
        if ema is not None:
            ema.update(students)
        return losses.detach()

    return Engine(source, students, optimizer, ema, no_graph, step)


def _input_notes(exp: Experiment, sets: Sequence[ImageSet] | None) -> list[str]:
    """What the student trained on when it is not the standard pipeline on a teacher's labels."""
    cfg, notes = exp.cfg, []
    first = (sets[0] if sets else None) or exp.train
    if cfg.label_source == "set":
        notes.append("targets: the set's own soft labels (N x K logits)" if first is not None and first.soft is not None
                     else "targets: the set's hard labels")
    if cfg.lr_from_set:
        notes.append(f"lr {cfg.lr:g} from the set (lr_best.pt)")
    if cfg.aug == "dsa" and first is not None:
        stored = first.images.is_floating_point()
        notes.append("DSA on the set's float images as stored (model space)" if stored else
                     "DSA on the normalized images" + (" after ZCA" if exp.zca is not None else ""))
    if exp.zca is not None:
        notes.append(f"ZCA (eps {cfg.zca_eps:g}) fitted on {cfg.zca_train or cfg.dataset}'s training images, "
                     "applied to the validation images")
    return notes


def _targets(loss: str, b: StepBatch, soft: torch.Tensor | None,
             j: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(soft targets, the partners' soft targets) of run j: the set's own labels when the batch carries them,
    else the teacher's logits (not for loss ce, which trains on hard labels), else none."""
    if b.set_soft is not None:
        return b.set_soft[j], b.set_soft_partner[j]
    return (None if soft is None or loss == "ce" else soft[j]), None


def check_side_by_side(sets: Sequence[ImageSet]) -> None:
    """Runs trained at once step in lockstep, their batches stacked: every set needs as many images."""
    sizes = {st.source: len(st.images) for st in sets}
    if len(set(sizes.values())) > 1:
        raise RD3Error("sets trained at once must have the same number of images (one IPC), got "
                       + ", ".join(f"{src}: {n}" for src, n in sizes.items()) + "; evaluate them separately")


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------
def train(exp: Experiment, seed: int, progress: bool = True, desc: str = "",
          source: BatchSource | None = None,
          checkpoint: Checkpointing | None = None) -> tuple[RunResult, nn.Module]:
    """Train one student from scratch (on exp.train, or on ``source``); returns its metrics and the model."""
    [(result, model)] = train_seeds(exp, [seed], progress=progress, desc=desc, source=source, checkpoint=checkpoint)
    return result, model


def train_seeds(exp: Experiment, seeds: Sequence[int], progress: bool = True, desc: str = "",
                sets: Sequence[ImageSet] | None = None, source: BatchSource | None = None,
                checkpoint: Checkpointing | None = None) -> list[tuple[RunResult, nn.Module]]:
    """Train one student per seed, all at once (one module, one teacher pass per step); with ``sets``, run j
    trains on sets[j] (several distilled sets of one size side by side) instead of exp.train; with
    ``source``, the batches come from it (a reader's stream) instead.

    With ``checkpoint``, the group resumes from its checkpoint when there is one, checkpoints as
    ``checkpoint`` says, and on a stop request checkpoints and raises ``Interrupted``. A run whose
    training loss stops being finite is marked failed at that epoch (``RunResult.failure``) and no longer
    evaluated; the others go on."""
    cfg, dev, k = exp.cfg, exp.device, len(seeds)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes every step, as the reference scripts set it
    state = checkpoint.load() if checkpoint is not None else None
    eng = build_engine(exp, seeds, sets, source, resume_epoch=None if state is None else state["epoch"])
    val_images, val_labels = exp.val.images.to(dev), exp.val.labels.to(dev)
    heldout = None if exp.heldout is None else (exp.heldout.images.to(dev), exp.heldout.labels.to(dev))
    whiten = None if exp.zca is None else exp.zca.to(dev)
    graphed = eng.no_graph is None
    run_step = step_runner(eng)
    note = "whole step as one CUDA graph" if graphed else f"eager step: {eng.no_graph}"
    results = [RunResult(seed=s, notes=[note, *_input_notes(exp, sets)]) for s in seeds]
    pos = _Position()
    if state is not None:
        results, pos = _restore(eng, state, dev)
    stop = checkpoint.stop if checkpoint is not None else None
    # A recording soft-label cache keeps the epoch's draws in memory until the epoch ends: stop there.
    whole_epochs = eng.cache is not None and cfg.cache_mode == "record"
    start = time.perf_counter() - pos.train_time_s

    def save(epoch: int, step: int, loss_sum: torch.Tensor | None, images: int) -> None:
        assert checkpoint is not None
        checkpoint.save({"epoch": epoch, "step": step, "loss_sum": None if loss_sum is None else loss_sum.cpu(),
                         "images": images, "train_time_s": time.perf_counter() - start,
                         "students": eng.students.state_dict(), "optimizer": eng.optimizer.state_dict(),
                         "ema": None if eng.ema is None else [t.cpu() for t in eng.ema.params],
                         "results": [dataclasses.asdict(r) for r in results], "rng": torch.get_rng_state()})

    def interrupted(epoch: int) -> Interrupted:
        assert stop is not None and stop.signum is not None
        runs = ", ".join(f"seed {r.seed}" for r in results)
        return Interrupted(stop.signum, f"{desc or 'training'} ({runs}) at epoch {epoch + 1} of {cfg.epochs}",
                           resumable=True)

    images = pos.images
    with Progress(cfg.epochs, desc or f"seeds {','.join(map(str, seeds))}", enabled=progress,
                  start=pos.epoch) as shown:
        for epoch in range(pos.epoch, cfg.epochs):
            t0 = time.perf_counter()
            lr = cfg.lr * lr_factor(cfg, epoch)  # stepped per epoch, as upstream's LambdaLR
            set_lr(eng.optimizer, lr)
            eng.students.train()
            resumed = epoch == pos.epoch and pos.step > 0
            if cfg.sgd_reset_at_decay and epoch > 0 and not resumed and lr_factor(cfg, epoch) != lr_factor(cfg, epoch - 1):
                eng.optimizer.state.clear()  # MTT builds a new SGD at each decay: momentum starts again from zero
            loss_sum = pos.loss_sum.to(dev) if resumed and pos.loss_sum is not None else torch.zeros(k, device=dev)
            steps = pos.step if resumed else 0
            # The draws of every step come from (seed, epoch): skipping the steps already taken
            # reproduces the rest of the epoch exactly.
            for inputs in itertools.islice(eng.source.epoch(epoch), steps, None):
                if stop and not whole_epochs:
                    save(epoch, steps, loss_sum, images)
                    raise interrupted(epoch)
                if not images and not steps:
                    for r in results:
                        r.first_step_s = process_age()
                loss_sum += run_step(*inputs)
                steps += 1
            if steps == 0:
                raise RD3Error(f"epoch {epoch + 1} had no training step (--batch-size {cfg.batch_size} with "
                               f"--drop-last on {eng.source.images_per_epoch()} images?)")
            eng.source.end_epoch(epoch)
            images += eng.source.images_per_epoch()
            epoch_loss = (loss_sum / steps).tolist()  # one host sync per epoch
            elapsed = time.perf_counter() - t0
            for r, lval in zip(results, epoch_loss):
                if r.failure is not None:
                    continue
                finite = math.isfinite(lval)
                r.epochs.append({"epoch": epoch + 1, "loss": lval if finite else None, "lr": lr, "time_s": elapsed})
                if not finite:  # not a result: the run failed here (strict JSON: no NaN in the record)
                    r.failure = {"epoch": epoch + 1, "reason": f"non-finite training loss ({lval}) in epoch "
                                 f"{epoch + 1}; check the learning rate and the teacher weights"}
            live = [j for j, r in enumerate(results) if r.failure is None]
            if not live:
                break
            top1 = None
            if should_eval(cfg, epoch):
                evaluated = eng.ema.swapped(eng.students) if eng.ema is not None and cfg.eval_ema else eng.students
                for j in live:
                    model = evaluated.model(j)
                    metrics = evaluate(model, val_images, val_labels, cfg.mean, cfg.std, cfg.eval_batch_size, cfg.amp,
                                       whiten)
                    if heldout is not None:  # what hyper-parameter selection reads (never the test set)
                        held = evaluate(model, *heldout, cfg.mean, cfg.std, cfg.eval_batch_size, cfg.amp, whiten)
                        metrics.update(heldout_top1=held["top1"], heldout_top5=held["top5"])
                    results[j].evals.append({"epoch": epoch + 1, **metrics})
                top1 = results[live[0]].evals[-1]["top1"]
            shown.epoch(epoch + 1, epoch_loss[live[0]], top1, images / max(time.perf_counter() - start, 1e-9))
            if checkpoint is not None and epoch + 1 < cfg.epochs and (stop or checkpoint.due(epoch + 1)):
                save(epoch + 1, 0, None, images)
                if stop:
                    raise interrupted(epoch + 1)
    train_time = time.perf_counter() - start
    final = eng.ema.swapped(eng.students) if eng.ema is not None and cfg.eval_ema else eng.students
    out = []
    for j, r in enumerate(results):
        r.train_time_s = train_time
        r.images_per_s = images / max(train_time, 1e-9)  # per run; K runs went at once
        out.append((r, final.model(j) if k == 1 else copy.deepcopy(final.model(j))))
    if graphed:
        for r in results:
            r.notes.append(f"{run_step.replays} of {run_step.replays + run_step.calls} steps replayed the graph "
                           f"(the others: {run_step.warmup} warm-up steps, and batches of another size)")
    if eng.cache is not None and cfg.cache_mode == "replay":
        for r in results:
            r.notes.append(eng.cache.describe())
    if eng.cache is not None and cfg.cache_mode == "record":
        size, fkd = eng.cache.size_bytes(), eng.cache.fkd_bytes()
        for r in results:
            r.notes.append(f"soft-label cache {eng.cache.path}: {size / 2**20:.2f} MiB, FKD-style storage "
                           f"would be {fkd / 2**20:.2f} MiB (1/{fkd / max(size, 1):.0f})")
    if checkpoint is not None and checkpoint.writes:
        for r in results:
            r.notes.append(checkpoint.report(train_time))
    return out


@dataclass
class _Position:
    """Where a group resumes: epoch, steps done in it, their loss sum, images so far, time so far."""

    epoch: int = 0
    step: int = 0
    loss_sum: torch.Tensor | None = None
    images: int = 0
    train_time_s: float = 0.0


def _restore(eng: Engine, state: dict[str, Any], device: torch.device) -> tuple[list[RunResult], _Position]:
    eng.students.load_state_dict(state["students"])
    eng.optimizer.load_state_dict(state["optimizer"])
    if eng.ema is not None:
        for mine, saved in zip(eng.ema.params, state["ema"]):
            mine.copy_(saved)
    torch.set_rng_state(state["rng"])
    results = [RunResult(**r) for r in state["results"]]
    for r in results:
        r.notes.append(f"resumed from a checkpoint at epoch {state['epoch'] + 1}, step {state['step']}")
    return results, _Position(state["epoch"], state["step"], state["loss_sum"], state["images"],
                              state["train_time_s"])


def step_runner(eng: Engine) -> Callable[..., torch.Tensor]:
    """How the loop calls ``eng.step``: replayed as one CUDA graph when the engine allows it, else eagerly."""
    return GraphedStep(eng.step, eng.optimizer) if eng.no_graph is None else _eager(eng.step, eng.optimizer)


def time_step(exp: Experiment, k: int, warmup: int = 5, repeats: int = 5) -> float:
    """Seconds of one training step of ``k`` runs at once on ``exp`` as ``train_seeds`` takes it (the same
    engine: augmentation, teacher pass, K students, loss, optimizer, EMA, the CUDA graph where it applies):
    the median of ``repeats`` steps after ``warmup`` (a process's first steps are several times slower:
    kernel selection, first-touch memory, the graph's capture). Used for cost estimates, on random data."""
    eng = build_engine(exp, list(range(k)))
    run_step = step_runner(eng)
    times: list[float] = []
    epoch = 0
    while len(times) < repeats:
        if not len(eng.source):
            raise RD3Error(f"no training step to time: --batch-size {exp.cfg.batch_size} with --drop-last on "
                           f"{eng.source.images_per_epoch()} images")
        for inputs in eng.source.epoch(epoch):
            t0 = time.perf_counter()
            run_step(*inputs).sum().item()  # .item(): the step's kernels have finished (CUDA is asynchronous)
            if warmup > 0:
                warmup -= 1
            else:
                times.append(time.perf_counter() - t0)
            if len(times) == repeats:
                break
        epoch += 1
    return sorted(times)[len(times) // 2]


def _eager(step: Callable, optimizer: torch.optim.Optimizer) -> Callable:
    def run(*inputs: Any) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        return step(*inputs)
    return run


def _open_cache(cfg: Config, exp: Experiment, resume_epoch: int | None = None) -> SoftLabelCache:
    """The soft-label cache, checked to belong to this set and protocol: its fingerprint is the set's content
    identity (``cache_fingerprint``) and the settings that made the recorded batches. A replay of a cache
    whose set has changed since it was recorded is refused: its soft labels belong to other images."""
    fingerprint = cache_fingerprint(cfg, exp)
    replay = cfg.cache_mode == "replay"
    cache = SoftLabelCache(cfg.cache, cfg.cache_mode, topk=cfg.cache_topk, bits=cfg.cache_bits,
                           num_images=len(exp.train.images), batch_size=cfg.batch_size, num_classes=cfg.num_classes,
                           shuffle_factor=1 if cfg.edc_noop_shuffle else cfg.patch_shuffle,
                           fingerprint="" if replay else fingerprint, resume_epoch=resume_epoch)
    recorded = str(cache.meta.get("fingerprint", ""))
    if replay and recorded != fingerprint:
        set_part = fingerprint.split("|", 1)[0]
        if recorded.startswith("set=") and recorded.split("|", 1)[0] != set_part:
            raise RD3Error(f"--cache {cache.path}: the set changed since this soft-label cache was recorded "
                           f"({exp.train.source}: its files' content, or how they are decoded, differs), so its soft "
                           "labels belong to other images; record it again into a new folder (--cache-mode record)")
        raise RD3Error(f"--cache {cache.path} was recorded for another set or protocol ({recorded}); expected "
                       f"{fingerprint}")
    return cache


def cache_fingerprint(cfg: Config, exp: Experiment) -> str:
    """``set=<content>|<settings>``: the training set by content (``data.content.set_identity`` of the files it
    was read from, through the stat-keyed hash cache, plus how they were decoded; a set built in memory by
    its tensors) and the augmentation and teacher settings the recorded batches depend on."""
    st = exp.train
    if Path(st.source).exists():
        ident: Any = {"files": set_identity(st.source, cfg.class_map), "load_size": cfg.load_size,
                      "mean": list(exp.distilled_mean), "std": list(exp.distilled_std)}
    else:
        h = hashlib.sha256()
        for t in (st.images, st.labels, st.soft):
            if t is not None:
                h.update(f"{t.dtype}{tuple(t.shape)}".encode())
                h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        ident = {"tensors": h.hexdigest()}
    return (f"set={digest(ident)[:32]}|n={len(st.images)}|size={cfg.image_size}|bs={cfg.batch_size}|"
            f"shuffle={cfg.patch_shuffle}|crop={cfg.crop}{tuple(cfg.rrc_scale)}|mix={cfg.mix}|"
            f"teacher={'+'.join(cfg.teacher)}")
