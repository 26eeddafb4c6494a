"""Everything a run needs, loaded and checked before the first step: data, teachers, finalized config.

All bad input surfaces here, as RD3Error, before anything is trained or written.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..config import IMAGENET_MEAN, IMAGENET_STD, Config
from ..data import sets as data
from ..data import valcache
from ..data.datasets import BUILTIN, dataset_info, list_files, locate
from ..data.folders import class_names
from ..data.sets import ImageSet
from ..data.zca import ZCA, fit_pixels
from ..errors import RD3Error
from .teacher import Relabeler, load_teachers


@dataclass
class Experiment:
    cfg: Config  # finalized: no "unset" values left
    train: ImageSet | None  # the distilled set (or the real training set for pre-training), 3 channels;
    # None when a reader streams the training set (train.StreamSource)
    val: ImageSet  # real validation set as uint8 centre crops, 3 channels
    relabeler: Relabeler | None
    device: torch.device
    # --mean/--std as configured, before the dataset's defaults fill them in: the only values a float
    # distilled set is de-normalized with (guessing them from the validation set would be silently wrong).
    distilled_mean: tuple[float, ...] = ()
    distilled_std: tuple[float, ...] = ()
    # A held-out split of the real *training* set (3 channels), evaluated beside ``val`` at every
    # evaluation: hyper-parameters are chosen on it, never on the test set (rd3fast.bench, select="heldout").
    heldout: ImageSet | None = None
    # --zca: the whitening fitted on the real training set, applied to the training images (before DSA)
    # and to every validation batch after normalization.
    zca: ZCA | None = None

    @property
    def channels(self) -> int:
        """The students' input channels: 1 for a grayscale set under --gray-channels 1, else 3."""
        return int(self.val.images.shape[1])


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RD3Error("--device cuda: no CUDA device is visible")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _three(v: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(v) * 3 if len(v) == 1 else tuple(v)


def prepare(cfg: Config, train_set: ImageSet | None = None, progress: bool = True) -> Experiment:
    """Load and check; ``train_set`` replaces ``cfg.distilled`` (teacher pre-training on real data).
    ``progress``: decode bars for large image folders (on a terminal); off with ``--no-progress``.

    Cheap checks come first (the training set, the validation folder's class count, the teachers), the
    validation decode last: it may write a validation-cache entry, which a run failing on any of those
    must not leave behind."""
    if cfg.dataset is None and cfg.val is None:
        raise RD3Error(f"no validation set: pass --dataset NAME ({', '.join(BUILTIN)}) or --val FOLDER")
    if cfg.dataset is not None and cfg.val is not None:
        raise RD3Error("--dataset and --val both given: pick one validation set")
    info = dataset_info(cfg.dataset) if cfg.dataset is not None else None
    if info is not None:
        locate(cfg.dataset, cfg.data_root)  # a missing --data-root or layout is said now, before any decode
    mean = _three(cfg.mean or (info.mean if info else IMAGENET_MEAN))
    std = _three(cfg.std or (info.std if info else IMAGENET_STD))
    if cfg.zca:
        # MTT and DD-Ranking (utils.py / ddranking/utils/data.py get_dataset) whiten ToTensor() pixels in
        # [0, 1]: with ZCA they drop Normalize, so the run's normalization is the identity.
        if cfg.mean or cfg.std:
            raise RD3Error("--zca: MTT/DD-Ranking whiten [0, 1] pixels without Normalize; drop --mean/--std")
        mean, std = (0.0,) * 3, (1.0,) * 3
        _zca_source(cfg)  # a missing --zca-train is said now, before the validation decode may write a cache entry

    if train_set is None:
        if cfg.distilled is None:
            raise RD3Error("--distilled: which distilled set to evaluate? (an ImageFolder, .pt, .npz)")
        # --mean/--std as configured, not ``mean``/``std`` above: a dataset's defaults would be a guess.
        train_set = _read_distilled(cfg, cfg.distilled, cfg.mean, cfg.std, progress)
    _check_batches(cfg, train_set)
    cfg = _labels_and_lr(cfg, train_set)
    size = cfg.image_size or (info.image_size if info else train_set.image_size[0])
    ratio = cfg.val_resize_ratio or (info.val_resize_ratio if info else 0.875)
    val_source = cfg.dataset if cfg.dataset is not None else cfg.val

    k = train_set.num_classes
    if cfg.num_classes and cfg.num_classes != k:
        data.check_num_classes(f"training set {train_set.source}", k, cfg.num_classes, "(--num-classes)")
    val_hint = f"to match the {k} classes of {train_set.source}"
    # The validation classes from the built-in's definition or the folder's listing, before any decode.
    if info is not None:  # a file set's own count (an ImageNet subset in ImageNet's layout is fine)
        have = len(list_files(cfg.dataset, "val", cfg.data_root).classes) if info.kind == "files" else info.num_classes
        data.check_num_classes(f"validation set {val_source}", have, k, val_hint)
    elif Path(val_source).is_dir():  # anything else: data.load_real says what is wrong with it
        data.check_num_classes(f"validation set {val_source}", len(class_names(Path(val_source), None)), k,
                               val_hint)
    _check_dsa_size(cfg.aug, train_set, size)
    configured_mean, configured_std = cfg.mean, cfg.std
    cfg = cfg.replace(image_size=size, val_resize_ratio=ratio, mean=mean, std=std, num_classes=k)
    device = pick_device(cfg.device)
    relabeler = None
    # When replaying a soft-label cache no teacher runs: the cache's class-count and fingerprint checks
    # stand in for the teacher's.
    if cfg.cache_mode != "replay" and cfg.label_source != "set" and (cfg.loss != "ce" or cfg.teacher_weights):
        relabeler = load_teachers(cfg.teacher, cfg.teacher_weights, k, size, device,
                                  logit_norm=cfg.logit_norm, bn_train=cfg.teacher_bn_train, input_mean=mean,
                                  input_std=std, teacher_mean=cfg.teacher_mean, teacher_std=cfg.teacher_std)
        data.check_num_classes(f"teacher {'+'.join(cfg.teacher)}", relabeler.num_classes(size), k)

    # Real folders are decoded once into the uint8 validation cache (valcache); built-ins are not cached.
    val = valcache.load_real(val_source, "val", image_size=size, resize_ratio=ratio, cache=cfg.val_cache,
                             decoder=cfg.loader, progress=progress, data_root=cfg.data_root)
    data.check_num_classes(f"validation set {val.source}", val.num_classes, k, val_hint)
    channels = 1 if cfg.gray_channels == 1 and train_set.images.shape[1] == 1 and val.images.shape[1] == 1 else 3
    if channels == 1:  # a gray set's normalization is one value (the three are equal: (m,) * 3)
        cfg = cfg.replace(mean=cfg.mean[:1], std=cfg.std[:1])
    zca = _fit_zca(cfg, device, progress, channels) if cfg.zca else None
    return Experiment(cfg=cfg, train=_with_channels(train_set, channels), val=_with_channels(val, channels),
                      relabeler=relabeler, device=device, distilled_mean=configured_mean,
                      distilled_std=configured_std, zca=zca)


def _check_dsa_size(aug: str, s: ImageSet, size: int) -> None:
    """DSA does not resize (upstream augments the set at its own size): the set must be at the run's size."""
    side = s.images.shape[-1]
    if aug == "dsa" and tuple(s.images.shape[-2:]) != (size, size):
        raise RD3Error(f"--aug dsa trains on {s.source} at its own size ({side} px; DSA does not resize) but the "
                       f"run's --image-size is {size}: pass --image-size {side}, or --load-size {size} for an "
                       "image set")


def _labels_and_lr(cfg: Config, s: ImageSet) -> Config:
    """--label-source set and --lr from-set, checked against what the set ships; the set's lr fills cfg.lr
    so that the printed and saved config shows the value trained with."""
    if cfg.label_source == "set" and s.soft is None and cfg.loss != "ce":
        raise RD3Error(f"--label-source set with --loss {cfg.loss}: {s.source} has hard labels, so there is no "
                       "soft target; use --loss ce (hard labels stay hard) or --label-source teacher")
    if not cfg.lr_from_set:
        return cfg
    if s.lr is None:
        raise RD3Error(f"--lr from-set: {s.source} ships no learned learning rate (an MTT-style folder's "
                       "lr_best.pt); pass --lr VALUE")
    return cfg.replace(lr=s.lr)


def _fit_zca(cfg: Config, device: torch.device, progress: bool, channels: int = 3) -> ZCA:
    """ZCA on the real training set (3 channels, at the run's size, in [0, 1]: the run's mean/std are 0/1
    under --zca), as MTT/DD-Ranking fit kornia's ZCAWhitening(eps=0.1) on their ToTensor() training set."""
    source = _zca_source(cfg)
    if source in BUILTIN:  # its training split, from --data-root
        real = data.load_real(source, "train", image_size=cfg.image_size, data_root=cfg.data_root,
                              progress=progress)
    else:
        try:
            real = data.load_distilled(source, load_size=cfg.image_size, progress=progress)
        except RD3Error as e:  # its messages name the file; this names the flag that chose it
            raise RD3Error(f"--zca-train: {e}") from None
    if real.images.dtype != torch.uint8:
        raise RD3Error(f"--zca-train {source}: expected real images (uint8 pixels), got {real.images.dtype}")
    # Fitted on the run's device (the D x D covariance is the cost), kept on the CPU beside the images, and
    # cached: the fit depends on the pixels and eps only.
    return fit_pixels(data.expand_channels(real.images, channels), eps=cfg.zca_eps, device=device)


def _zca_source(cfg: Config) -> str:
    """The real training set --zca fits on: --zca-train, else --dataset; a path that is not there is an
    error naming --zca-train (load_distilled would call it a missing "distilled set")."""
    source = cfg.zca_train or cfg.dataset
    if source is None:
        raise RD3Error("--zca: which real training set to fit the whitening on? pass --zca-train (a dataset "
                       "name, an ImageFolder or a tensor file)")
    if source not in BUILTIN and not Path(source).exists():
        raise RD3Error(f"--zca-train {source} does not exist; expected a dataset name ({', '.join(BUILTIN)}), an "
                       "ImageFolder or a tensor file of real training images")
    return source


def load_more_sets(exp: Experiment, paths: Sequence[str], progress: bool = True) -> list[ImageSet]:
    """Further distilled sets to train beside ``exp.train`` (several methods' sets of one IPC at once): read
    with the same class map and load size, checked to have the same classes."""
    cfg, more = exp.cfg, []
    for path in paths:
        s = _read_distilled(cfg, path, exp.distilled_mean, exp.distilled_std, progress)
        _check_batches(cfg, s)
        data.check_num_classes(f"training set {s.source}", s.num_classes, cfg.num_classes,
                               f"to match the {cfg.num_classes} classes of {exp.train.source}")
        _check_dsa_size(cfg.aug, s, cfg.image_size)
        if _labels_and_lr(cfg, s).lr != cfg.lr:  # also checks its labels against --label-source
            raise RD3Error(f"--lr from-set: {s.source} ships lr {s.lr}, {exp.train.source} {exp.train.lr}; sets "
                           "trained at once share one lr: evaluate them separately")
        more.append(_with_channels(s, exp.channels))
    return more


def _read_distilled(cfg: Config, path: str, mean: tuple[float, ...], std: tuple[float, ...],
                    progress: bool) -> ImageSet:
    # DSA works on the values the model sees: a float tensor set (MTT's images_best.pt) is kept as stored.
    return data.load_distilled(path, class_map=cfg.class_map, load_size=cfg.load_size, mean=mean, std=std,
                               progress=progress, model_space=cfg.aug == "dsa")


def _check_batches(cfg: Config, s: ImageSet) -> None:
    """With --drop-last a batch larger than the set drops every image: no step would run, yet the run
    would report the untrained student's accuracy."""
    n = len(s.images)
    if cfg.drop_last and cfg.batch_size > n:
        raise RD3Error(f"--batch-size {cfg.batch_size} with --drop-last: the training set {s.source} has only "
                       f"{n} images, so every batch would be dropped and nothing trained; pass --batch-size "
                       f"{n} or less, or --no-drop-last")


def _with_channels(s: ImageSet, channels: int) -> ImageSet:
    """The set with ``channels`` channels: gray images repeated to 3 (or kept at 1 under --gray-channels 1)."""
    return dataclasses.replace(s, images=data.expand_channels(s.images, channels))
