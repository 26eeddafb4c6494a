"""``python -m rd3fast.pretrain``: train a teacher on real data (the "squeeze" phase) and save its weights.

    python -m rd3fast.pretrain --dataset fashion-mnist --arch resnet18-cifar --epochs 30 --out r18_fmnist.pt

The recipe is the ``pretrain`` preset (hard-label CE, SGD 0.05 momentum 0.9 wd 5e-4, cosine, random crop
+ flip, batch 128); every Config flag overrides it. It runs through the same training loop as the
evaluator. The weights file records the architecture, class count, image size and normalization, and
``--teacher-weights`` takes it as it is.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from .backends.stream import pretrain_streaming, wants_streaming
from .config import Config, add_config_flags, config_from_args, describe
from .data import ImageSet, load_distilled, load_real
from .errors import RD3Error, cli
from .models import save_weights


def pretrain(cfg: Config, out: str | Path, train_set: ImageSet | None = None, progress: bool = True,
             verbose: bool = True) -> dict[str, Any]:
    """Train cfg.student on the real training set (built-in ``cfg.dataset`` unless ``train_set``), save it."""
    from .experiment import prepare
    from .train import train

    if train_set is None:
        if cfg.dataset is None:
            raise RD3Error("pretrain: pass --dataset NAME or --train FOLDER")
        train_set = load_real(cfg.dataset, "train", image_size=cfg.image_size)
    exp = prepare(cfg.replace(loss="ce", teacher=(), teacher_weights=()), train_set=train_set)
    cfg = exp.cfg
    if verbose:
        print(f"== pre-training {cfg.student} on {train_set.source} ({len(train_set.images)} images) ==\n"
              f"{describe(cfg)}", flush=True)
    result, model = train(exp, cfg.seeds[0], progress=progress, desc=f"pretrain {cfg.student}")
    summary = result.summary()
    save_weights(out, model, cfg.student, num_classes=cfg.num_classes, image_size=cfg.image_size,
                 mean=list(cfg.mean), std=list(cfg.std), classes=list(exp.train.classes),
                 dataset=train_set.source, val_top1=summary["last_top1"])
    if verbose:
        print(f"teacher {cfg.student}: val top-1 {summary['last_top1']:.2f}% -> {out}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rd3fast.pretrain", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default=None, help="architecture to train (same as --student)")
    p.add_argument("--train", default=None, help="real training ImageFolder (instead of --dataset)")
    p.add_argument("--out", required=True, help="weights file to write")
    p.add_argument("--preset", default="pretrain", help="recipe to start from")
    p.add_argument("--config", default=None, help="JSON file of config keys")
    p.add_argument("--no-progress", action="store_true")
    add_config_flags(p)
    args = p.parse_args(argv)

    def body() -> None:
        from .experiment import pick_device

        if args.arch:
            args.student = args.arch
        cfg = config_from_args(args)
        # --loader dali|ffcv streams --train (FOLDER or .beton; ffcv also a built-in) every epoch; pil
        # decodes it once and keeps it resident; auto: DALI on CUDA, else pil.
        stream = wants_streaming(cfg.loader, args.train, cfg.dataset, pick_device(cfg.device))
        if stream:  # DALI/FFCV: decode, crop and flip every epoch instead of holding the set resident
            pretrain_streaming(cfg, args.out, args.train or cfg.dataset, stream, progress=not args.no_progress)
            return
        train_set = load_distilled(args.train, load_size=cfg.load_size) if args.train else None
        pretrain(cfg, args.out, train_set=train_set, progress=not args.no_progress)

    return cli(body)


if __name__ == "__main__":
    sys.exit(main())
