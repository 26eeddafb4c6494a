"""Distillers that write an ImageFolder the evaluator reads.

- ``random``: IPC real images per class drawn without replacement (DD-Ranking's random-real baseline,
  ddranking/utils/data.py get_random_data_path), the reference point of its IOR metric.
- ``rded``: RDED's selection (LINs-lab/RDED synthesize/main.py, utils.py): per class ``candidates`` real
  images, ``num_crop`` RandomResizedCrop(size // factor, ratio 1) crops of each, every crop scored by the
  teacher's cross-entropy on its true class (the crop zero-padded to full size in normalized space), the
  best crop per image kept, the ``ipc * factor**2`` best images kept, stitched factor x factor (nearest
  resize into the grid cells, remainder pixels to the first rows/columns) into ``ipc`` images.
- ``sre2l``: SRe2L's recover (VILA-Lab/SRe2L SRe2L/recover/data_synthesis.py, SRe2L/*small_dataset/
  recover_cifar.py, recover_tiny.py): images optimized from Gaussian noise (or ``--init real``) so that the
  BatchNorm teacher classifies them as their class while each BN layer's batch statistics match its running
  statistics (CE + r_bn * BN loss, Adam, cosine lr, crop/flip/roll jitter). ``rd3fast/methods/recover.py`` holds
  the loop and names the upstream file of every default.
- ``cda``: CDA (VILA-Lab/SRe2L CDA/recover_cda_in1k.py, recover_cda_tiny.py): the same recover with an
  easy-to-hard curriculum on the RandomResizedCrop min scale, 1 -> 0.08 over ``--milestone`` of the
  iterations (``--easy2hard-mode step|linear|cosine``).
- ``herding``, ``kcenter``: coreset selection of real images in the teacher's feature space
  (``rd3fast/methods/coreset.py``).

    python -m rd3fast.distill --method rded --dataset digits --ipc 10 --factor 1 \\
        --teacher convnet-d3 --teacher-weights teacher.pt --out syn/rded_ipc10
    python -m rd3fast.distill --method sre2l --dataset fashion-mnist --ipc 10 \\
        --teacher convnet-d3-w32-bn --teacher-weights fm_bn.pt --out syn/sre2l_ipc10

Every method but ``random`` needs ``--teacher`` and ``--teacher-weights``; the teacher's normalization is the
weights file's recorded mean/std, or ``--mean/--std``. sre2l and cda need a teacher with BatchNorm layers.
Images are saved as PNG (lossless; RDED saves JPEG) in RDED's layout: ``{class:05d}/class{c:05d}_id{i:05d}.png``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch

from .cliargs import ArgumentParser, integer, number, numbers
from .config import SEED_LIMIT
from .data.datasets import BUILTIN, is_file_set
from .data.sets import ImageSet, load_distilled, load_real, train_subset, write_image_folder
from .engine.pretraining import STREAMED_SETS
from .engine.teacher import Relabeler
from .errors import RD3Error, cli
from .methods.coreset import random_real
from .methods.rded import rded_select
from .methods.recover import CROPS, CURRICULA, INITS, Recipe, recover
from .outputs import check_output_dir


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, but not None: those flags say their method's default in their help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


METHODS = ("random", "rded", "sre2l", "cda", "herding", "kcenter")
RECOVER_METHODS = ("sre2l", "cda")
COUNT_BATCH_SIZE = 256  # herding/kcenter: images per teacher forward (coreset_select's default)


def main(argv: Sequence[str] | None = None) -> int:
    from .engine.experiment import pick_device

    p = ArgumentParser(prog="python -m rd3fast.distill", description="Distillers that write an ImageFolder.",
                       formatter_class=_DefaultsHelp)
    p.add_argument("--method", choices=list(METHODS), required=True)
    p.add_argument("--dataset", default=None, help=f"named real set ({', '.join(BUILTIN)}): its training split")
    p.add_argument("--data-root", default=None, help="folder holding --dataset as downloaded [$RD3FAST_DATA]")
    p.add_argument("--max-per-class", type=integer(0), default=0,
                   help="read at most this many training images per class (drawn with --seed; a file set such as "
                        "imagenet decodes only those); 0: all")
    p.add_argument("--train", default=None, help="real training ImageFolder instead of --dataset")
    p.add_argument("--load-size", type=integer(0), default=0, help="resize --train images to this square size")
    p.add_argument("--ipc", type=integer(1), required=True, help="images per class")
    p.add_argument("--out", required=True, help="ImageFolder to write (new or empty)")
    p.add_argument("--seed", type=integer(0, SEED_LIMIT - 1), default=0)
    p.add_argument("--teacher", default=None, help="all but random: teacher architecture (sre2l/cda: with BatchNorm)")
    p.add_argument("--teacher-weights", default=None, help="all but random: teacher weights file")
    p.add_argument("--factor", type=integer(1), default=2, help="rded: patches per side (1 on small sets)")
    p.add_argument("--candidates", type=integer(1), default=300, help="rded: real images scored per class (mipc)")
    p.add_argument("--num-crop", type=integer(1), default=5, help="rded: crops per candidate")
    _add_recover_flags(p)
    p.add_argument("--mean", type=numbers(), default=None,
                   help="normalization mean for the teacher (default: the weights file's)")
    p.add_argument("--std", type=numbers(positive=True), default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they only show on a terminal)")
    args = p.parse_args(argv)

    def body() -> None:
        if (args.dataset is None) == (args.train is None):
            raise RD3Error("pass exactly one of --dataset NAME and --train FOLDER")
        if args.method != "random" and not (args.teacher and args.teacher_weights):
            raise RD3Error(f"--method {args.method} needs --teacher ARCH and --teacher-weights FILE")
        recipe = _recipe_from_args(args)  # flag misuse is reported before any data is read
        check_output_dir(args.out, "--out", must_be_empty=True)  # before reading the data and the teacher
        real = _real_training_set(args)
        if args.method == "random":
            syn = random_real(real, args.ipc, args.seed)
        else:
            syn = _distill_with_teacher(args, real, pick_device(args.device), recipe)
        write_image_folder(syn, args.out)
        print(f"wrote {len(syn.images)} images ({args.method}, IPC {args.ipc}) to {args.out}")

    return cli(body)


def _real_training_set(args: argparse.Namespace) -> ImageSet:
    """--dataset's training split (at most --max-per-class images of each class) or the --train folder."""
    progress = not args.no_progress
    if args.dataset is None:
        if args.max_per_class or args.data_root:
            raise RD3Error(f"{'--max-per-class' if args.max_per_class else '--data-root'} applies to --dataset")
        return load_distilled(args.train, load_size=args.load_size, progress=progress)
    if args.max_per_class:
        return train_subset(args.dataset, args.max_per_class, args.seed, data_root=args.data_root, progress=progress)
    if is_file_set(args.dataset) and args.dataset in STREAMED_SETS:
        raise RD3Error(f"--dataset {args.dataset}: decoding its whole training split (1.28 M images) is not "
                       "what a distiller needs: pass --max-per-class N (e.g. 300, RDED's candidates)")
    return load_real(args.dataset, "train", data_root=args.data_root, progress=progress)


def _add_recover_flags(p: argparse.ArgumentParser) -> None:
    """sre2l/cda flags, named as upstream's (--r-bn, --first-bn-multiplier, --jitter, --easy2hard-mode,
    --milestone; --iterations is upstream's --iteration). Defaults are None here so that a flag given to
    another method is an error; the values used are recover.Recipe's (upstream's, shown in the help)."""
    r = Recipe()
    p.add_argument("--iterations", type=integer(1), default=None,
                   help=f"sre2l/cda: optimization steps per batch ({r.iterations})")
    p.add_argument("--lr", type=number(0, lo_open=True), default=None, help=f"sre2l/cda: Adam lr ({r.lr})")
    p.add_argument("--r-bn", type=number(0), default=None,
                   help=f"sre2l/cda: weight of the BatchNorm-statistics loss ({r.r_bn})")
    p.add_argument("--first-bn-multiplier", type=number(0), default=None,
                   help=f"sre2l/cda: extra weight of the first BN layer ({r.first_bn_multiplier})")
    p.add_argument("--jitter", type=integer(0), default=None,
                   help="sre2l/cda: max roll in pixels (32 above 64 px, else 4)")
    p.add_argument("--batch-size", type=integer(1), default=None,
                   help=f"sre2l/cda: images optimized together ({r.batch_size}); herding/kcenter: images per "
                        f"teacher forward ({COUNT_BATCH_SIZE})")
    p.add_argument("--init", choices=list(INITS), default=None,
                   help=f"sre2l/cda: start from Gaussian noise or real images ({r.init})")
    p.add_argument("--crop", choices=list(CROPS), default=None,
                   help="sre2l: RandomResizedCrop + flip each step (auto: above 32 px; cda always crops)")
    p.add_argument("--easy2hard-mode", choices=list(CURRICULA), default=None,
                   help="cda: how the crop min scale falls from 1 to 0.08 (cosine)")
    p.add_argument("--milestone", type=number(0, 1), default=None,
                   help="cda: fraction of the iterations the curriculum spans (1)")


_RECOVER_FLAGS = {"iterations": "sre2l/cda", "lr": "sre2l/cda", "r_bn": "sre2l/cda",
                  "first_bn_multiplier": "sre2l/cda", "jitter": "sre2l/cda", "init": "sre2l/cda",
                  "crop": "sre2l/cda", "easy2hard_mode": "cda", "milestone": "cda"}


def _recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recover Recipe of sre2l/cda (upstream defaults for the flags not given); for other methods,
    an RD3Error when one of the recover flags was given (it would be silently ignored)."""
    for key, owners in _RECOVER_FLAGS.items():
        if getattr(args, key) is not None and args.method not in owners.split("/"):
            raise RD3Error(f"--{key.replace('_', '-')} applies to --method {' and '.join(owners.split('/'))}, "
                           f"not {args.method}")
    if args.batch_size is not None and args.method not in RECOVER_METHODS + ("herding", "kcenter"):
        raise RD3Error(f"--batch-size applies to --method sre2l, cda, herding and kcenter, not {args.method}")
    given = {k: getattr(args, k) for k in ("iterations", "lr", "r_bn", "first_bn_multiplier", "jitter", "init",
                                           "crop", "milestone") if getattr(args, k) is not None}
    if args.method in RECOVER_METHODS and args.batch_size is not None:
        given["batch_size"] = args.batch_size
    if args.method == "cda":
        given["curriculum"] = args.easy2hard_mode or "cosine"  # recover_cda_in1k.py --easy2hard-mode default
    recipe = Recipe(**given)
    recipe.check()
    return recipe


def _distill_with_teacher(args: argparse.Namespace, real: ImageSet, device: torch.device,
                          recipe: Recipe) -> ImageSet:
    teacher, mean, std = _teacher_from_args(args, real, device)
    progress = not args.no_progress
    if args.method == "rded":
        return rded_select(real, teacher, args.ipc, mean, std, factor=args.factor, candidates=args.candidates,
                           num_crop=args.num_crop, seed=args.seed, device=device, progress=progress)
    if args.method in RECOVER_METHODS:
        return recover(teacher, real, args.ipc, mean, std, recipe=recipe, seed=args.seed, device=device,
                       progress=progress, arch=args.teacher)
    from .methods.coreset import coreset_select

    return coreset_select(real, teacher, args.ipc, mean, std, method=args.method, seed=args.seed, device=device,
                          batch_size=args.batch_size or COUNT_BATCH_SIZE, progress=progress)


def _teacher_from_args(args: argparse.Namespace, real: ImageSet,
                       device: torch.device) -> tuple[Relabeler, Sequence[float], Sequence[float]]:
    """The --teacher loaded from --teacher-weights, and the normalization it takes: --mean/--std, else the
    weights file's recorded mean/std (an RD3Error when neither says)."""
    from .engine.models import read_state_dict
    from .engine.teacher import load_teachers

    _, meta = read_state_dict(args.teacher_weights)
    mean = args.mean or meta.get("mean")
    std = args.std or meta.get("std")
    if mean is None or std is None:
        raise RD3Error(f"{args.teacher_weights} records no normalization: pass --mean and --std")
    size = real.images.shape[-1]
    teacher = load_teachers([args.teacher], [args.teacher_weights], real.num_classes, size, device)
    return teacher, mean, std


if __name__ == "__main__":
    sys.exit(main())
