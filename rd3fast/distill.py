"""Baseline distillers that write an ImageFolder the evaluator reads.

- ``random``: IPC real images per class drawn without replacement (DD-Ranking's random-real baseline,
  ddranking/utils/data.py get_random_data_path), the reference point of its IOR metric.
- ``rded``: RDED's selection (LINs-lab/RDED synthesize/main.py, utils.py): per class ``candidates`` real
  images, ``num_crop`` RandomResizedCrop(size // factor, ratio 1) crops of each, every crop scored by the
  teacher's cross-entropy on its true class (the crop zero-padded to full size in normalized space), the
  best crop per image kept, the ``ipc * factor**2`` best images kept, stitched factor x factor (nearest
  resize into the grid cells, remainder pixels to the first rows/columns) into ``ipc`` images.

    python -m rd3fast.distill --method rded --dataset digits --ipc 10 --factor 1 \\
        --teacher convnet-d3 --teacher-weights teacher.pt --out syn/rded_ipc10

Images are saved as PNG (lossless; RDED saves JPEG) in RDED's layout: ``{class:05d}/class{c:05d}_id{i:05d}.png``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .atomic import atomic_folder
from .aug import normalize, resized_crop, sample_rrc_boxes
from .cliargs import ArgumentParser, integer, numbers
from .config import SEED_LIMIT
from .data import ImageSet, load_distilled, load_real
from .errors import RD3Error, cli
from .outputs import check_output_dir
from .progress import bar
from .teacher import Relabeler


def random_real(real: ImageSet, ipc: int, seed: int = 0) -> ImageSet:
    """IPC images per class, without replacement."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(real.num_classes):
        idx = np.flatnonzero(real.labels.numpy() == c)
        if len(idx) < ipc:
            raise RD3Error(f"--ipc {ipc}: class {real.classes[c]!r} of {real.source} has only {len(idx)} images")
        picks.append(np.sort(rng.choice(idx, size=ipc, replace=False)))
    sel = torch.from_numpy(np.concatenate(picks))
    return ImageSet(real.images[sel].clone(), real.labels[sel].clone(), list(real.classes), f"random-ipc{ipc}")


@torch.inference_mode()
def rded_select(real: ImageSet, teacher: Relabeler, ipc: int, mean: Sequence[float], std: Sequence[float], *,
                factor: int = 2, candidates: int = 300, num_crop: int = 5, seed: int = 0,
                device: torch.device | str = "cpu", progress: bool = True) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    _, c_in, size, _ = real.images.shape
    cell = size // factor
    if cell < 1:
        raise RD3Error(f"--factor {factor}: larger than the {size} px images")
    out_images, out_labels = [], []
    for c in bar(range(real.num_classes), total=real.num_classes, desc="rded select", unit="class",
                 enabled=progress):
        idx = torch.nonzero(real.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)[:candidates]]
        need = ipc * factor * factor
        if len(idx) < need:
            raise RD3Error(f"--ipc {ipc} with --factor {factor} needs {need} candidate images of class "
                           f"{real.classes[c]!r}; {real.source} has {len(idx)}")
        imgs = real.images[idx].to(device)  # (M, C, H, W) uint8
        m = len(imgs)
        boxes = torch.cat([sample_rrc_boxes(m, size, size, (0.08, 1.0), (1.0, 1.0), gen) for _ in range(num_crop)])
        crops = resized_crop(imgs.repeat(num_crop, 1, 1, 1), boxes, cell, antialias=True)  # (num_crop*M, C, s, s)
        x = normalize(crops, tuple(mean), tuple(std))
        pad = size - cell
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))  # zero in normalized space
        xs = x if c_in == 3 else x.expand(-1, 3, -1, -1)
        ce = torch.cat([F.cross_entropy(teacher(xs[i:i + 256]), torch.full((len(xs[i:i + 256]),), c, device=device),
                                        reduction="none") for i in range(0, len(xs), 256)])
        ce = ce.view(num_crop, m)
        best_crop = ce.argmin(0)  # per image: the crop the teacher is surest of
        best_ce = ce.gather(0, best_crop[None]).squeeze(0)
        chosen = best_ce.argsort()[:need]
        picked = crops.view(num_crop, m, *crops.shape[1:])[best_crop[chosen], chosen]  # (need, C, s, s)
        out_images.append(stitch(picked, ipc, factor, size))
        out_labels.append(torch.full((ipc,), c, dtype=torch.int64))
    images = torch.cat(out_images).round().clamp(0, 255).to(torch.uint8).cpu()
    return ImageSet(images, torch.cat(out_labels), list(real.classes), f"rded-ipc{ipc}-f{factor}")


def stitch(patches: torch.Tensor, ipc: int, factor: int, size: int) -> torch.Tensor:
    """RDED mix_images: output t's grid cell k (row-major) is patches[k * ipc + t], nearest-resized."""
    base, extra = divmod(size, factor)
    sizes = [base + (1 if i < extra else 0) for i in range(factor)]
    offs = np.cumsum([0] + sizes)
    out = torch.zeros(ipc, patches.shape[1], size, size, device=patches.device)
    for k in range(factor * factor):
        r, q = divmod(k, factor)
        cellimgs = patches[k * ipc:(k + 1) * ipc]
        out[:, :, offs[r]:offs[r + 1], offs[q]:offs[q + 1]] = F.interpolate(cellimgs, size=(sizes[r], sizes[q]),
                                                                             mode="nearest")
    return out


def write_image_folder(images: ImageSet, out: str | Path) -> Path:
    """RDED's layout {class:05d}/class{class:05d}_id{i:05d}.png; refuses to mix into a non-empty folder, and
    a failed write (a full disk) leaves no partial folder."""
    root = check_output_dir(out, "--out", must_be_empty=True)
    counts: dict[int, int] = {}
    with atomic_folder(root) as tmp:
        for img, y in zip(images.images, images.labels.tolist()):
            i = counts[y] = counts.get(y, -1) + 1
            d = tmp / f"{y:05d}"
            d.mkdir(exist_ok=True)
            arr = img.permute(1, 2, 0).numpy()
            Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(d / f"class{y:05d}_id{i:05d}.png")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    from .experiment import pick_device

    p = ArgumentParser(prog="python -m rd3fast.distill", description="Baseline distillers.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", choices=["random", "rded"], required=True)
    p.add_argument("--dataset", default=None, help="built-in real set (digits, fashion-mnist)")
    p.add_argument("--train", default=None, help="real training ImageFolder instead of --dataset")
    p.add_argument("--load-size", type=integer(0), default=0, help="resize --train images to this square size")
    p.add_argument("--ipc", type=integer(1), required=True, help="images per class")
    p.add_argument("--out", required=True, help="ImageFolder to write (new or empty)")
    p.add_argument("--seed", type=integer(0, SEED_LIMIT - 1), default=0)
    p.add_argument("--teacher", default=None, help="rded: teacher architecture")
    p.add_argument("--teacher-weights", default=None, help="rded: teacher weights file")
    p.add_argument("--factor", type=integer(1), default=2, help="rded: patches per side (1 on small sets)")
    p.add_argument("--candidates", type=integer(1), default=300, help="rded: real images scored per class (mipc)")
    p.add_argument("--num-crop", type=integer(1), default=5, help="rded: crops per candidate")
    p.add_argument("--mean", type=numbers(), default=None,
                   help="normalization mean for the teacher (default: the weights file's)")
    p.add_argument("--std", type=numbers(positive=True), default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they only show on a terminal)")
    args = p.parse_args(argv)

    def body() -> None:
        if (args.dataset is None) == (args.train is None):
            raise RD3Error("pass exactly one of --dataset NAME and --train FOLDER")
        if args.method == "rded" and not (args.teacher and args.teacher_weights):
            raise RD3Error("--method rded needs --teacher ARCH and --teacher-weights FILE")
        check_output_dir(args.out, "--out", must_be_empty=True)  # before reading the data and the teacher
        real = (load_real(args.dataset, "train") if args.dataset
                else load_distilled(args.train, load_size=args.load_size, progress=not args.no_progress))
        if args.method == "random":
            syn = random_real(real, args.ipc, args.seed)
        else:
            syn = _rded_from_args(args, real, pick_device(args.device))
        write_image_folder(syn, args.out)
        print(f"wrote {len(syn.images)} images ({args.method}, IPC {args.ipc}) to {args.out}")

    return cli(body)

def _rded_from_args(args: argparse.Namespace, real: ImageSet, device: torch.device) -> ImageSet:
    from .models import read_state_dict
    from .teacher import load_teachers

    _, meta = read_state_dict(args.teacher_weights)
    mean = args.mean or meta.get("mean")
    std = args.std or meta.get("std")
    if mean is None or std is None:
        raise RD3Error(f"{args.teacher_weights} records no normalization: pass --mean and --std")
    size = real.images.shape[-1]
    teacher = load_teachers([args.teacher], [args.teacher_weights], real.num_classes, size, device)
    return rded_select(real, teacher, args.ipc, mean, std, factor=args.factor, candidates=args.candidates,
                       num_crop=args.num_crop, seed=args.seed, device=device, progress=not args.no_progress)


if __name__ == "__main__":
    sys.exit(main())
