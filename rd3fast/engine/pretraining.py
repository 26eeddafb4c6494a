"""Teacher pre-training (the "squeeze" phase) through the evaluator's one training loop.

``pretrain`` holds a real training set resident (decoded once, augmented on the device);
``pretrain_streaming`` streams it through a reader (DALI/FFCV), each epoch decoded, cropped, flipped and
normalized by the reader (``train.StreamSource``). The recipe is the ``pretrain`` preset; the CLI is
``python -m rd3fast.pretrain``. The weights file records the architecture, class count, image size and
normalization, and ``--teacher-weights`` takes it as it is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import IMAGENET_MEAN, IMAGENET_STD, Config, describe
from ..data import valcache
from ..data.backends import make_reader, resolve_loader
from ..data.datasets import dataset_info, is_file_set
from ..data.sets import ImageSet, load_real
from ..errors import RD3Error
from ..lock import OutputLock
from .checkpoint import Checkpointing, StopRequest
from .experiment import Experiment, pick_device, prepare
from .models import save_weights
from .train import StreamSource, train


STREAMED_SETS = ("imagenet",)  # file sets pre-trained streamed, never decoded whole into memory


def pretrain(cfg: Config, out: str | Path, train_set: ImageSet | None = None, progress: bool = True,
             verbose: bool = True, **resume: Any) -> dict[str, Any]:
    """Train cfg.student on the real training set (built-in ``cfg.dataset`` unless ``train_set``), held
    resident; save it to ``out``. Returns the run summary. ``resume``: see ``_train_and_save``."""
    if train_set is None:
        if cfg.dataset is None:
            raise RD3Error("pretrain: pass --dataset NAME or --train FOLDER")
        train_set = load_real(cfg.dataset, "train", image_size=cfg.image_size, data_root=cfg.data_root,
                              progress=progress)
    exp = prepare(cfg.replace(loss="ce", teacher=(), teacher_weights=()), train_set=train_set, progress=progress)
    if verbose:
        print(f"== pre-training {exp.cfg.student} on {train_set.source} ({len(train_set.images)} images) ==\n"
              f"{describe(exp.cfg)}", flush=True)
    return _train_and_save(exp, out, train_set.source, list(exp.train.classes), None, progress, verbose, **resume)


def wants_streaming(loader: str, train_source: str | None, dataset: str | None, device: torch.device) -> str | None:
    """The backend to stream with, or None for the resident path. A .beton streams (ffcv); a folder streams
    with dali/ffcv (auto: DALI on CUDA); ImageNet-size file sets (imagenet) always stream (auto: DALI on
    CUDA, else PIL workers), other file sets (Tiny-ImageNet, ImageNette) with dali/ffcv; an array set
    streams only with ``--loader ffcv`` (via its .beton)."""
    if train_source is not None:
        backend = resolve_loader(loader, device, train_source)
        return None if backend == "pil" else backend  # pil: the resident path (PIL worker processes)
    if dataset is not None and is_file_set(dataset):
        backend = resolve_loader(loader, device)
        if dataset in STREAMED_SETS:
            return backend  # 1.28 M images do not fit in memory decoded: every epoch is read from disk
        return None if backend == "pil" else backend
    if dataset is not None and loader == "ffcv":
        return "ffcv"
    if dataset is not None and loader == "dali":
        raise RD3Error(f"--loader dali reads image files; write {dataset} as a JPEG folder first "
                       f"(python -m rd3fast.prepare folder --source {dataset} --split train --out DIR) "
                       "and pass --train DIR")
    return None


def pretrain_streaming(cfg: Config, out: str | Path, source: str, backend: str, progress: bool = True,
                       verbose: bool = True, **resume: Any) -> dict[str, Any]:
    """Train cfg.student on ``source`` (ImageFolder, .beton, or built-in name for ffcv) streamed by
    ``backend`` through the training loop; evaluate on cfg.dataset / cfg.val; save the weights to ``out``."""
    if cfg.mix != "none" or cfg.patch_shuffle != 1:
        raise RD3Error("streaming pre-training supports hard-label CE without mixing: pass --mix none "
                       "--patch-shuffle 1 (the pretrain preset's values)")
    if cfg.dataset is None and cfg.val is None:
        raise RD3Error("no validation set: pass --dataset NAME or --val FOLDER")
    info = dataset_info(cfg.dataset) if cfg.dataset else None
    size = cfg.image_size or (info.image_size if info else 0)
    if size <= 0:
        raise RD3Error("--image-size: streaming pre-training from a folder needs the training resolution "
                       "(e.g. --image-size 224)")
    ratio = cfg.val_resize_ratio or (info.val_resize_ratio if info else 0.875)
    mean = _three(cfg.mean or (info.mean if info else IMAGENET_MEAN))
    std = _three(cfg.std or (info.std if info else IMAGENET_STD))
    dev = pick_device(cfg.device)
    reader = make_reader(backend, source, mode="train", image_size=size, resize_ratio=ratio, mean=mean, std=std,
                         batch_size=cfg.batch_size, device=dev, class_map=cfg.class_map, seed=cfg.seeds[0],
                         crop=cfg.crop, rrc_scale=cfg.rrc_scale, rrc_ratio=cfg.rrc_ratio,
                         crop_padding=cfg.crop_padding, flip_p=cfg.flip_p, drop_last=cfg.drop_last, split="train",
                         data_root=cfg.data_root)
    classes = list(reader.classes)
    k = len(classes)
    val_source = cfg.dataset if cfg.dataset is not None else cfg.val
    val = valcache.load_real(val_source, "val", image_size=size, resize_ratio=ratio, cache=cfg.val_cache,
                             decoder=cfg.loader, progress=progress, data_root=cfg.data_root)
    if val.num_classes != k:
        raise RD3Error(f"validation set {val.source} has {val.num_classes} classes but {source} has {k}")
    if cfg.num_classes and cfg.num_classes != k:
        raise RD3Error(f"training set {source} has {k} classes but --num-classes is {cfg.num_classes}")
    cfg = cfg.replace(loss="ce", teacher=(), teacher_weights=(), image_size=size, val_resize_ratio=ratio,
                      mean=mean, std=std, num_classes=k)
    val = ImageSet(val.images if val.images.shape[1] == 3 else val.images.expand(-1, 3, -1, -1), val.labels,
                   val.classes, val.source)
    exp = Experiment(cfg=cfg, train=None, val=val, relabeler=None, device=dev)
    if verbose:
        print(f"== pre-training {cfg.student} on {source} streamed by {backend} ({len(reader)} batches/epoch) ==\n"
              f"{describe(cfg)}", flush=True)
    return _train_and_save(exp, out, str(source), classes, StreamSource(reader), progress, verbose,
                           meta={"loader": backend}, **resume)


def _train_and_save(exp: Experiment, out: str | Path, source: str, classes: list[str],
                    stream: StreamSource | None, progress: bool, verbose: bool, meta: dict[str, Any] | None = None,
                    restart: bool = False, checkpoint_every: int = 0,
                    stop: StopRequest | None = None) -> dict[str, Any]:
    """Train, then save the weights. ``out`` is locked for the run; the run checkpoints to ``<out>.ckpt``
    (every ``checkpoint_every`` epochs, 0 = automatic, and on a ``stop`` request) and resumes from it when
    the same command runs again (``restart`` discards it). A streamed run resumes at its epoch; how a
    reader orders that epoch's images is the reader's own."""
    cfg, meta = exp.cfg, meta or {}
    how = f" ({meta['loader']})" if "loader" in meta else ""
    with OutputLock.file(out):
        # An unreadable checkpoint is renamed aside and the run starts over, as `run` and the sweeps do.
        ckpt = Checkpointing(Path(str(out) + ".ckpt"), checkpoint_every, stop,
                             {"config": cfg.to_dict(), "source": source}, set_aside_unreadable=True)
        if restart:
            ckpt.discard()
        result, model = train(exp, cfg.seeds[0], progress=progress, desc=f"pretrain {cfg.student}{how}",
                              source=stream, checkpoint=ckpt)
        if result.failure is not None:
            raise RD3Error(f"pre-training failed at epoch {result.failure['epoch']}: {result.failure['reason']}; "
                           f"nothing written to {out}")
        summary = result.summary()
        save_weights(out, model, cfg.student, num_classes=cfg.num_classes, image_size=cfg.image_size,
                     mean=list(cfg.mean), std=list(cfg.std), classes=classes, dataset=source,
                     val_top1=summary["last_top1"], **meta)
        ckpt.discard()  # only now: the weights file holds the result
    if verbose:
        streamed = f" ({result.images_per_s:.0f} img/s streamed by {meta['loader']})" if "loader" in meta else ""
        print(f"teacher {cfg.student}: val top-1 {summary['last_top1']:.2f}% -> {out}{streamed}")
    return summary


def _three(v: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(v) * 3 if len(v) == 1 else tuple(v)
