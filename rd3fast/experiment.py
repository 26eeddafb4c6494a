"""Everything a run needs, loaded and checked before the first step: data, teachers, finalized config.

All bad input surfaces here, as RD3Error, before anything is trained or written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from . import data
from .config import IMAGENET_MEAN, IMAGENET_STD, Config
from .data import ImageSet
from .errors import RD3Error
from .teacher import Relabeler, load_teachers


@dataclass
class Experiment:
    cfg: Config  # finalized: no "unset" values left
    train: ImageSet  # the distilled set (or the real training set for pre-training), 3 channels
    val: ImageSet  # real validation set as uint8 centre crops, 3 channels
    relabeler: Relabeler | None
    device: torch.device


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RD3Error("--device cuda: no CUDA device is visible")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _three(v: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(v) * 3 if len(v) == 1 else tuple(v)


def prepare(cfg: Config, train_set: ImageSet | None = None) -> Experiment:
    """Load and check; ``train_set`` replaces ``cfg.distilled`` (teacher pre-training on real data)."""
    if cfg.dataset is None and cfg.val is None:
        raise RD3Error("no validation set: pass --dataset NAME (digits, fashion-mnist) or --val FOLDER")
    if cfg.dataset is not None and cfg.val is not None:
        raise RD3Error("--dataset and --val both given: pick one validation set")
    info = None
    if cfg.dataset is not None:
        if cfg.dataset not in data.BUILTIN:
            raise RD3Error(f"--dataset: unknown built-in set {cfg.dataset!r}; expected one of "
                           f"{', '.join(data.BUILTIN)} (or --val FOLDER)")
        info = data.BUILTIN[cfg.dataset]
    mean = _three(cfg.mean or (info.mean if info else IMAGENET_MEAN))
    std = _three(cfg.std or (info.std if info else IMAGENET_STD))

    if train_set is None:
        if cfg.distilled is None:
            raise RD3Error("--distilled: which distilled set to evaluate? (an ImageFolder, .pt, .npz)")
        train_set = _read_distilled(cfg, cfg.distilled, mean, std)
    size = cfg.image_size or (info.image_size if info else train_set.image_size[0])
    ratio = cfg.val_resize_ratio or (info.val_resize_ratio if info else 0.875)
    val_source = cfg.dataset if cfg.dataset is not None else cfg.val
    # Real folders are decoded once into the uint8 validation cache (valcache); built-ins are not cached.
    val = data.load_real(val_source, "val", image_size=size, resize_ratio=ratio,
                         cache=cfg.val_cache, decoder=cfg.loader)

    k = train_set.num_classes
    if cfg.num_classes and cfg.num_classes != k:
        data.check_num_classes(f"training set {train_set.source}", k, cfg.num_classes, "(--num-classes)")
    data.check_num_classes(f"validation set {val.source}", val.num_classes, k,
                           f"to match the {k} classes of {train_set.source}")
    cfg = cfg.replace(image_size=size, val_resize_ratio=ratio, mean=mean, std=std, num_classes=k)
    device = pick_device(cfg.device)
    relabeler = None
    # When replaying a soft-label cache no teacher runs: the cache's class-count and fingerprint checks
    # stand in for the teacher's.
    if cfg.cache_mode != "replay" and (cfg.loss != "ce" or cfg.teacher_weights):
        relabeler = load_teachers(cfg.teacher, cfg.teacher_weights, k, size, device,
                                  logit_norm=cfg.logit_norm, bn_train=cfg.teacher_bn_train)
        data.check_num_classes(f"teacher {'+'.join(cfg.teacher)}", relabeler.num_classes(size), k)
    return Experiment(cfg=cfg, train=_three_channels(train_set), val=_three_channels(val), relabeler=relabeler,
                      device=device)


def load_more_sets(exp: Experiment, paths: Sequence[str]) -> list[ImageSet]:
    """Further distilled sets to train beside ``exp.train`` (several methods' sets of one IPC at once): read
    with the same class map and load size, checked to have the same classes."""
    cfg, more = exp.cfg, []
    for path in paths:
        s = _read_distilled(cfg, path, cfg.mean, cfg.std)
        data.check_num_classes(f"training set {s.source}", s.num_classes, cfg.num_classes,
                               f"to match the {cfg.num_classes} classes of {exp.train.source}")
        more.append(_three_channels(s))
    return more


def _read_distilled(cfg: Config, path: str, mean: tuple[float, ...], std: tuple[float, ...]) -> ImageSet:
    return data.load_distilled(path, class_map=cfg.class_map, load_size=cfg.load_size, mean=mean, std=std)


def _three_channels(s: ImageSet) -> ImageSet:
    return ImageSet(data.expand_channels(s.images, 3), s.labels, s.classes, s.source)
