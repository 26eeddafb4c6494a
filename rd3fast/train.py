"""The one training loop: augment -> relabel -> loss -> step -> schedule -> evaluate.

Protocol differences between upstream recipes are Config flags read here, never separate loops. The same
loop pre-trains teachers (loss "ce", no teacher) and evaluates distilled sets.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .aug import AugSpec, eval_transform
from .config import Config, lr_factor
from .experiment import Experiment
from .loader import ResidentLoader
from .losses import total_loss
from .models import build_model


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    params: Any = model.parameters()
    if cfg.no_decay_bn_bias:
        # SRe2L/RDED get_parameters(): only weight matrices/kernels (ndim > 1) are decayed.
        decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "weight" in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "weight" in n)]
        params = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


class ParamEMA:
    """EDC's EMA: an average of the parameters only; evaluation swaps it in beside the live buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        torch._foreach_lerp_(self.params, [p.detach() for p in model.parameters()], 1.0 - self.decay)

    @torch.no_grad()
    def swapped(self, model: nn.Module) -> nn.Module:
        ema_model = copy.deepcopy(model)
        for p, e in zip(ema_model.parameters(), self.params):
            p.copy_(e)
        return ema_model


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...],
             std: tuple[float, ...], batch_size: int, amp: bool = True) -> dict[str, float]:
    """Top-1/top-5 on uint8 centre crops already resident on the model's device."""
    was_training = model.training
    model.eval()
    dev = images.device
    correct1 = correct5 = 0
    for i in range(0, len(images), batch_size):
        x = eval_transform(images[i:i + batch_size], mean, std)
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

    def summary(self) -> dict[str, Any]:
        last = self.evals[-1] if self.evals else {"top1": math.nan, "top5": math.nan}
        best = max(self.evals, key=lambda e: e["top1"]) if self.evals else last
        return {"seed": self.seed, "last_top1": last["top1"], "last_top5": last["top5"],
                "best_top1": best["top1"], "best_top5": best["top5"], "best_epoch": best.get("epoch"),
                "train_time_s": self.train_time_s, "images_per_s": self.images_per_s,
                "epochs": self.epochs, "evals": self.evals}


def should_eval(cfg: Config, epoch: int) -> bool:
    """After epoch ``epoch`` (0-based): every eval_every epochs once eval_after of training is done, and last."""
    done = epoch + 1
    return done == cfg.epochs or (done % cfg.eval_every == 0 and done > cfg.eval_after * cfg.epochs)


def train(exp: Experiment, seed: int, progress: bool = True, desc: str = "") -> tuple[RunResult, nn.Module]:
    """Train one student from scratch on exp.train; returns its metrics and the trained model."""
    cfg, dev = exp.cfg, exp.device
    torch.manual_seed(seed)  # student initialization
    spec = AugSpec.from_config(cfg, cfg.image_size, cfg.mean, cfg.std)
    loader = ResidentLoader(exp.train.images, exp.train.labels, spec, cfg.batch_size, seed=seed, device=dev,
                            drop_last=cfg.drop_last, backend=cfg.aug_backend,
                            channels_last=dev.type == "cuda")
    student = build_model(cfg.student, cfg.num_classes, cfg.image_size).to(dev)
    if dev.type == "cuda":
        student = student.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, student)
    ema = ParamEMA(student, cfg.ema_decay) if cfg.ema_decay > 0 else None
    val_images, val_labels = exp.val.images.to(dev), exp.val.labels.to(dev)
    autocast = dict(device_type="cuda", dtype=torch.bfloat16, enabled=cfg.amp and dev.type == "cuda")

    result = RunResult(seed=seed)
    bar = tqdm(range(cfg.epochs), desc=desc or f"seed {seed}", disable=not progress, leave=False)
    start = time.perf_counter()
    for epoch in bar:
        t0 = time.perf_counter()
        lr = cfg.lr * lr_factor(cfg, epoch)  # stepped per epoch, as upstream's LambdaLR
        for group in optimizer.param_groups:
            group["lr"] = lr
        loader.set_epoch(epoch)
        student.train()
        loss_sum = torch.zeros((), device=dev)
        for batch in loader:
            soft = exp.relabeler(batch.x) if exp.relabeler is not None and cfg.loss != "ce" else None
            if cfg.rded_extra_forward:
                with torch.no_grad(), torch.autocast(**autocast):
                    student(batch.x)  # RDED: a second BatchNorm statistics update on the same batch
            with torch.autocast(**autocast):
                logits = student(batch.x)
            loss = total_loss(cfg.loss, logits, soft, batch.y, batch.y_partner, batch.lam, cfg.temperature,
                              cfg.kl_t2, cfg.ce_weight, cfg.ce_target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update(student)
            loss_sum += loss.detach()
        epoch_loss = float(loss_sum) / len(loader)  # one host sync per epoch
        result.epochs.append({"epoch": epoch + 1, "loss": epoch_loss, "lr": lr, "time_s": time.perf_counter() - t0})
        if should_eval(cfg, epoch):
            model = ema.swapped(student) if ema is not None and cfg.eval_ema else student
            metrics = evaluate(model, val_images, val_labels, cfg.mean, cfg.std, cfg.eval_batch_size, cfg.amp)
            result.evals.append({"epoch": epoch + 1, **metrics})
            bar.set_postfix(loss=f"{epoch_loss:.3f}", top1=f"{metrics['top1']:.1f}")
        else:
            bar.set_postfix(loss=f"{epoch_loss:.3f}")
    result.train_time_s = time.perf_counter() - start
    per_epoch = len(loader) * cfg.batch_size if cfg.drop_last else len(exp.train.images)
    result.images_per_s = cfg.epochs * per_epoch / max(result.train_time_s, 1e-9)
    final = ema.swapped(student) if ema is not None and cfg.eval_ema else student
    return result, final
