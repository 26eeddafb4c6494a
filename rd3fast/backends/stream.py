"""Teacher pre-training that streams the training set through a reader (DALI, FFCV or PIL workers).

For training sets too large to hold as uint8 on the device (ImageNet), ``python -m rd3fast.pretrain
--train FOLDER|FILE.beton --loader dali|ffcv`` runs this loop instead of the resident one: each epoch the
reader decodes, crops (``cfg.crop``: rrc with ``rrc_scale``/``rrc_ratio``, random_crop with
``crop_padding``, or none), flips and normalizes a fresh pass; the step is hard-label cross-entropy with
``cfg.optimizer``/``cfg.lr``/``cfg.sched`` stepped per epoch (``config.lr_factor``), bf16 autocast and
channels_last on CUDA. Evaluation is the cached validation set through ``train.evaluate`` at the
epochs ``train.should_eval`` names. The weights file is the same as the resident path's.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import IMAGENET_MEAN, IMAGENET_STD, Config, describe, lr_factor
from ..errors import RD3Error
from . import make_reader, resolve_loader


def _three(v: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(v) * 3 if len(v) == 1 else tuple(v)


def _optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    params: Any = model.parameters()
    if cfg.no_decay_bn_bias:  # SRe2L/RDED get_parameters(): only weight matrices/kernels are decayed
        named = list(model.named_parameters())
        decay = [p for n, p in named if p.ndim > 1 and "weight" in n]
        rest = [p for n, p in named if not (p.ndim > 1 and "weight" in n)]
        params = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def wants_streaming(loader: str, train_source: str | None, dataset: str | None, device: torch.device) -> str | None:
    """The backend to stream with, or None for the resident path. A .beton streams (ffcv); a folder streams
    with dali/ffcv (auto: DALI on CUDA); a built-in streams only with ``--loader ffcv`` (via its .beton)."""
    if train_source is not None:
        backend = resolve_loader(loader, device, train_source)
        return None if backend == "pil" else backend  # pil: the resident path (PIL worker processes)
    if dataset is not None and loader == "ffcv":
        return "ffcv"
    if dataset is not None and loader == "dali":
        raise RD3Error(f"--loader dali reads image files; write {dataset} as a JPEG folder first "
                       f"(python -m rd3fast.prepare folder --source {dataset} --split train --out DIR) "
                       "and pass --train DIR")
    return None


def pretrain_streaming(cfg: Config, out: str | Path, source: str, backend: str, progress: bool = True,
                       verbose: bool = True) -> dict[str, Any]:
    """Train cfg.student on ``source`` (ImageFolder, .beton, or built-in name for ffcv) streamed by ``backend``;
    evaluate on cfg.dataset / cfg.val; save the weights to ``out``. Returns the run summary."""
    from ..data import BUILTIN, load_real
    from ..experiment import pick_device
    from ..models import build_model, save_weights
    from ..train import RunResult, evaluate, should_eval

    if cfg.mix != "none" or cfg.patch_shuffle != 1:
        raise RD3Error("streaming pre-training supports hard-label CE without mixing: pass --mix none "
                       "--patch-shuffle 1 (the pretrain preset's values)")
    if cfg.dataset is None and cfg.val is None:
        raise RD3Error("no validation set: pass --dataset NAME or --val FOLDER")
    info = BUILTIN.get(cfg.dataset) if cfg.dataset else None
    if cfg.dataset is not None and info is None:
        raise RD3Error(f"--dataset: unknown built-in set {cfg.dataset!r}; expected one of {', '.join(BUILTIN)}")
    size = cfg.image_size or (info.image_size if info else 0)
    if size <= 0:
        raise RD3Error("--image-size: streaming pre-training from a folder needs the training resolution "
                       "(e.g. --image-size 224)")
    ratio = cfg.val_resize_ratio or (info.val_resize_ratio if info else 0.875)
    mean = _three(cfg.mean or (info.mean if info else IMAGENET_MEAN))
    std = _three(cfg.std or (info.std if info else IMAGENET_STD))
    dev = pick_device(cfg.device)
    seed = cfg.seeds[0]
    reader = make_reader(backend, source, mode="train", image_size=size, resize_ratio=ratio, mean=mean, std=std,
                         batch_size=cfg.batch_size, device=dev, class_map=cfg.class_map, seed=seed, crop=cfg.crop,
                         rrc_scale=cfg.rrc_scale, rrc_ratio=cfg.rrc_ratio, crop_padding=cfg.crop_padding,
                         flip_p=cfg.flip_p, drop_last=cfg.drop_last, split="train")
    classes = list(reader.classes)
    k = len(classes)
    val_source = cfg.dataset if cfg.dataset is not None else cfg.val
    val = load_real(val_source, "val", image_size=size, resize_ratio=ratio,
                    cache=getattr(cfg, "val_cache", "auto"), decoder=getattr(cfg, "loader", "auto"))
    if val.num_classes != k:
        raise RD3Error(f"validation set {val.source} has {val.num_classes} classes but {source} has {k}")
    if cfg.num_classes and cfg.num_classes != k:
        raise RD3Error(f"training set {source} has {k} classes but --num-classes is {cfg.num_classes}")
    cfg = cfg.replace(image_size=size, val_resize_ratio=ratio, mean=mean, std=std, num_classes=k)
    if verbose:
        print(f"== pre-training {cfg.student} on {source} streamed by {backend} ({len(reader)} batches/epoch) ==\n"
              f"{describe(cfg)}", flush=True)

    torch.manual_seed(seed)
    model = build_model(cfg.student, k, size).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = _optimizer(cfg, model)
    val_x = (val.images if val.images.shape[1] == 3 else val.images.expand(-1, 3, -1, -1)).to(dev)
    val_y = val.labels.to(dev)
    autocast = dict(device_type="cuda", dtype=torch.bfloat16, enabled=cfg.amp and dev.type == "cuda")
    result = RunResult(seed=seed)
    seen = 0
    start = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"pretrain {cfg.student} ({backend})", disable=not progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        lr = cfg.lr * lr_factor(cfg, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        loss_sum = torch.zeros((), device=dev)
        steps = 0
        for x, y in reader:
            with torch.autocast(**autocast):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            steps += 1
            seen += len(y)
        epoch_loss = float(loss_sum) / max(steps, 1)
        result.epochs.append({"epoch": epoch + 1, "loss": epoch_loss, "lr": lr, "time_s": time.perf_counter() - t0})
        if should_eval(cfg, epoch):
            metrics = evaluate(model, val_x, val_y, mean, std, cfg.eval_batch_size, cfg.amp)
            result.evals.append({"epoch": epoch + 1, **metrics})
            bar.set_postfix(loss=f"{epoch_loss:.3f}", top1=f"{metrics['top1']:.1f}")
        else:
            bar.set_postfix(loss=f"{epoch_loss:.3f}")
    result.train_time_s = time.perf_counter() - start
    result.images_per_s = seen / max(result.train_time_s, 1e-9)
    summary = result.summary()
    save_weights(out, model, cfg.student, num_classes=k, image_size=size, mean=list(mean), std=list(std),
                 classes=classes, dataset=str(source), val_top1=summary["last_top1"], loader=backend)
    if verbose:
        print(f"teacher {cfg.student}: val top-1 {summary['last_top1']:.2f}% -> {out} "
              f"({result.images_per_s:.0f} img/s streamed by {backend})")
    return summary
