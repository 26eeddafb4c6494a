"""``python -m rd3fast.pretrain``: train a teacher on real data (the "squeeze" phase) and save its weights.

    python -m rd3fast.pretrain --dataset fashion-mnist --arch resnet18-cifar --epochs 30 --out r18_fmnist.pt
    python -m rd3fast.pretrain --train imagenet/train --val imagenet/val --image-size 224 --loader dali ...

The recipe is the ``pretrain`` preset (hard-label CE, SGD 0.05 momentum 0.9 wd 5e-4, cosine, random crop
+ flip, batch 128); every Config flag overrides it. It runs through the evaluator's training loop
(``train.train``): a set that fits is held resident (decoded once, augmented on the device); with
``--loader dali|ffcv`` the training set is streamed instead, each epoch decoded, cropped (``cfg.crop``),
flipped and normalized by the reader (``train.StreamSource``). The weights file records the architecture,
class count, image size and normalization, and ``--teacher-weights`` takes it as it is.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .config import add_config_flags, config_from_args
from .data.sets import load_distilled
from .engine.checkpoint import StopRequest
from .engine.experiment import pick_device
from .engine.pretraining import pretrain, pretrain_streaming, wants_streaming
from .errors import cli


def main(argv: Sequence[str] | None = None) -> int:
    from .cliargs import ArgumentParser, integer
    from .outputs import check_output_file

    p = ArgumentParser(prog="python -m rd3fast.pretrain", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default=None, help="architecture to train (same as --student)")
    p.add_argument("--train", default=None, help="real training ImageFolder or .beton (instead of --dataset)")
    p.add_argument("--out", required=True, help="weights file to write")
    p.add_argument("--preset", default="pretrain", help="recipe to start from")
    p.add_argument("--config", default=None, help="JSON file of config keys")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-evaluation lines")
    p.add_argument("--restart", action="store_true", help="discard the checkpoint <out>.ckpt and start over")
    p.add_argument("--checkpoint-every", type=integer(0), default=0, metavar="EPOCHS",
                   help="checkpoint to <out>.ckpt every N epochs (and on SIGINT/SIGTERM/SIGUSR1); 0: automatically "
                        "(under 1%% of training time)")
    add_config_flags(p)
    args = p.parse_args(argv)

    def body() -> None:
        if args.arch:
            args.student = args.arch
        cfg = config_from_args(args)
        check_output_file(args.out, "--out")  # now, not when the weights are saved after training
        # --loader dali|ffcv streams --train (FOLDER or .beton; ffcv also a built-in) every epoch; pil
        # decodes it once and keeps it resident; auto: DALI on CUDA, else pil.
        stream = wants_streaming(cfg.loader, args.train, cfg.dataset, pick_device(cfg.device))
        with StopRequest() as stop:  # SIGINT/SIGTERM/SIGUSR1: checkpoint, one line, exit 128 + signal
            resume = dict(restart=args.restart, checkpoint_every=args.checkpoint_every, stop=stop)
            if stream:
                pretrain_streaming(cfg, args.out, args.train or cfg.dataset, stream, progress=not args.no_progress,
                                   **resume)
                return
            train_set = load_distilled(args.train, load_size=cfg.load_size, progress=not args.no_progress) \
                if args.train else None
            pretrain(cfg, args.out, train_set=train_set, progress=not args.no_progress, **resume)

    return cli(body)


if __name__ == "__main__":
    sys.exit(main())
