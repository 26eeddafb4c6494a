"""``python -m rd3fast.prepare``: write FFCV .beton files, fill the validation cache, export JPEG folders.

    python -m rd3fast.prepare beton --source /data/imagenet/train --out in1k_train.beton --write-mode jpg \\
        --max-resolution 256
    python -m rd3fast.prepare beton --source fashion-mnist --split train --out fmnist_train.beton
    python -m rd3fast.prepare cache --source /data/imagenet/val --image-size 224 [--loader dali]
    python -m rd3fast.prepare folder --source fashion-mnist --split val --out fmnist_val_jpg [--limit 100]

``cache`` decodes a validation ImageFolder once into the uint8 centre-crop cache that evaluation reads
(``$RD3FAST_CACHE`` or ~/.cache/rd3fast, or ``--cache-dir``) and prints the entry. ``folder`` writes a
built-in set as an ImageFolder of JPEG (or PNG) files, e.g. to feed DALI or to test the readers on real
images. Bad input prints one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_folder
from .cachedir import cache_root
from .cliargs import ArgumentParser, integer, number
from .data.datasets import BUILTIN, is_file_set, list_files
from .errors import RD3Error, cli
from .outputs import check_output_dir, check_output_file


def export_folder(source: str, out: str | Path, *, split: str = "val", fmt: str = "jpg", quality: int = 90,
                  limit: int = 0, image_size: int = 0, data_root: str | Path | None = None) -> Path:
    """A named set's split (or the first ``limit`` images per class of it) as an ImageFolder: one folder per
    class (``00``, ``01``, ...; sorted order = class index), files ``{i:05d}.jpg``. Gray stays gray."""
    from PIL import Image

    from .data.sets import load_real

    if fmt not in ("jpg", "png"):
        raise RD3Error(f"--format: expected jpg or png, got {fmt!r}")
    if limit < 0:
        raise RD3Error(f"--limit: expected an integer >= 0 (0: all), got {limit}")
    root = check_output_dir(out, "--out", must_be_empty=True)
    real = load_real(source, split, image_size=image_size, data_root=data_root)
    width = max(2, len(str(real.num_classes - 1)))
    counts = np.zeros(real.num_classes, np.int64)
    with atomic_folder(root) as tmp:  # a failed export (a full disk) leaves no partial folder
        for img, y in zip(real.images, real.labels.tolist()):
            if limit and counts[y] >= limit:
                continue
            d = tmp / f"{y:0{width}d}"
            d.mkdir(exist_ok=True)
            arr = img.permute(1, 2, 0).numpy()
            im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
            name = d / f"{counts[y]:05d}.{fmt}"
            if fmt == "jpg":
                im.save(name, quality=quality)
            else:
                im.save(name)
            counts[y] += 1
        (tmp / "classes.txt").write_text("\n".join(f"{i:0{width}d}\t{c}" for i, c in enumerate(real.classes))
                                         + "\n")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m rd3fast.prepare", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("beton", help="write an FFCV .beton (+ .beton.json)")
    b.add_argument("--source", required=True, help="ImageFolder or dataset name (cifar10, imagenet, ...)")
    b.add_argument("--split", default="train", help="a dataset's split (train | val)")
    b.add_argument("--data-root", default=None, help="folder holding the dataset as downloaded [$RD3FAST_DATA]")
    b.add_argument("--out", required=True, help=".beton file to write")
    b.add_argument("--write-mode", default="raw", choices=["raw", "jpg"])
    b.add_argument("--jpeg-quality", type=integer(1, 100), default=90)
    b.add_argument("--max-resolution", type=integer(1), default=None, help="cap on the longer side (folders)")
    b.add_argument("--image-size", type=integer(0), default=0, help="built-ins: resize to this size (0: native)")
    b.add_argument("--class-map", default=None)
    b.add_argument("--workers", type=integer(1), default=None)
    c = sub.add_parser("cache", help="decode a validation ImageFolder once into the uint8 cache")
    c.add_argument("--source", required=True, help="validation ImageFolder, or a file dataset's name "
                   "(tiny-imagenet, imagenet, imagenette, imagewoof: its val split)")
    c.add_argument("--data-root", default=None, help="folder holding the dataset as downloaded [$RD3FAST_DATA]")
    c.add_argument("--image-size", type=integer(1), default=None,
                   help="centre-crop size (224 for ImageNet) [a dataset's default; required for a folder]")
    # No 0 here (evaluation's "the dataset's default"): a folder has no default to fall back on.
    c.add_argument("--val-resize-ratio", type=number(0, 1, lo_open=True), default=None,
                   help="crop / resized shorter side, in (0, 1] [a dataset's default; 0.875 for a folder]")
    c.add_argument("--loader", default="pil", choices=["auto", "pil", "dali", "ffcv"], help="decoder")
    c.add_argument("--class-map", default=None)
    c.add_argument("--cache-dir", default=None, help="[$RD3FAST_CACHE or ~/.cache/rd3fast]")
    c.add_argument("--workers", type=integer(1), default=None)
    c.add_argument("--device", default=None, help="where DALI decodes [cuda if there is one]")
    c.add_argument("--no-progress", action="store_true", help="no decode bar (it only shows on a terminal)")
    f = sub.add_parser("folder", help="write a built-in set as an ImageFolder of JPEG/PNG files")
    f.add_argument("--source", required=True, help="dataset name (fashion-mnist, digits, cifar10, ...)")
    f.add_argument("--data-root", default=None, help="folder holding the dataset as downloaded [$RD3FAST_DATA]")
    f.add_argument("--split", default="val")
    f.add_argument("--out", required=True)
    f.add_argument("--format", default="jpg", choices=["jpg", "png"])
    f.add_argument("--quality", type=integer(1, 100), default=90, help="JPEG quality")
    f.add_argument("--limit", type=integer(0), default=0, help="at most this many images per class (0: all)")
    f.add_argument("--image-size", type=integer(0), default=0, help="resize to this size (0: native)")
    args = p.parse_args(argv)
    return cli(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    if args.cmd == "beton":
        check_output_file(args.out, "--out")
        from .data.backends.ffcv import write_beton

        out = write_beton(args.source, args.out, split=args.split, write_mode=args.write_mode,
                          jpeg_quality=args.jpeg_quality, max_resolution=args.max_resolution,
                          class_map=args.class_map, workers=args.workers, image_size=args.image_size,
                          data_root=args.data_root)
        print(f"wrote {out} (+ {out.name}.json) in {time.perf_counter() - t0:.1f}s")
    elif args.cmd == "cache":
        from .data.valcache import build, load

        check_output_dir(cache_root(args.cache_dir), "--cache-dir")
        source, size, ratio = args.source, args.image_size, args.val_resize_ratio
        if source in BUILTIN:  # a file set's validation split (array sets are read whole, never cached)
            if not is_file_set(source):
                raise RD3Error(f"--source {source}: an array set is read whole in a second; the cache is for "
                               "image files (a folder, or tiny-imagenet / imagenet / imagenette / imagewoof)")
            info = BUILTIN[source]
            size, ratio = size or info.image_size, ratio or info.val_resize_ratio
            source = list_files(source, "val", args.data_root)
        elif size is None:
            raise RD3Error("--image-size: a folder needs the centre-crop size (224 for ImageNet)")
        npy = build(source, image_size=size, resize_ratio=ratio or 0.875,
                    decoder=args.loader, class_map=args.class_map, workers=args.workers, device=args.device,
                    cache_dir=args.cache_dir, progress=not args.no_progress)
        s = load(npy)
        print(f"validation cache {npy}: {len(s.labels)} images {tuple(s.images.shape[1:])} uint8, "
              f"{s.num_classes} classes ({time.perf_counter() - t0:.1f}s)")
    else:
        out = export_folder(args.source, args.out, split=args.split, fmt=args.format, quality=args.quality,
                            limit=args.limit, image_size=args.image_size, data_root=args.data_root)
        print(f"wrote ImageFolder {out} in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
