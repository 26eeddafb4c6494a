"""Tiny copies of the data sets' native layouts, with real small JPEGs, for the listing tests.

Each writer returns what it wrote: ``{"train": [(relative file, wnid), ...], "val": [...], "dir": <the folder
holding train/ and val/>, ...}``, files relative to the ``root`` it was given, in the order written (not the
order a listing returns). Names follow the official patterns (``n01440764_10026.JPEG``, ``val_0.JPEG``,
``ILSVRC2012_val_00000001.JPEG``); sizes vary (40-90 px) and some images are grayscale, as in ImageNet.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
from PIL import Image

IMAGENETTE_WNIDS = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
                    "n03425413", "n03445777", "n03888605"]
IMAGEWOOF_WNIDS = ["n02086240", "n02087394", "n02088364", "n02089973", "n02093754", "n02096294", "n02099601",
                   "n02105641", "n02111889", "n02115641"]


def write_jpeg(path: Path, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = rng.randint(40, 90), rng.randint(40, 90)
    gray = rng.random() < 0.2
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (h, w) if gray else (h, w, 3),
                                                                   dtype=np.uint8)
    Image.fromarray(pixels, "L" if gray else "RGB").save(path, "JPEG", quality=80)


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def _unsorted(wnids: list[str], rng: random.Random) -> list[str]:
    """The wnids in an order that is not the sorted one (as in Tiny-ImageNet's wnids.txt)."""
    order = list(wnids)
    while len(order) > 1 and order == sorted(order):
        rng.shuffle(order)
    return order


def _bbox(rng: random.Random) -> list[int]:
    x0, y0 = rng.randint(0, 30), rng.randint(0, 30)
    return [x0, y0, x0 + rng.randint(5, 30), y0 + rng.randint(5, 30)]


def write_tiny_imagenet(root: str | Path, wnids: list[str], per_class_train: int, val_per_class: int,
                        seed: int = 0) -> dict:
    """``root`` becomes a tiny-imagenet-200 folder: wnids.txt (not sorted), words.txt, train/<wnid>/images/
    <wnid>_<i>.JPEG + <wnid>_boxes.txt, val/images/val_<i>.JPEG + val_annotations.txt, test/images/."""
    rng = random.Random(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    order = _unsorted(wnids, rng)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in order))
    (root / "words.txt").write_text("".join(f"{w}\tthing {i}, other name\n" for i, w in enumerate(sorted(wnids))))
    out: dict = {"train": [], "val": [], "dir": root, "wnids_order": order}
    for wnid in order:
        boxes = []
        for i in rng.sample(range(500), per_class_train):  # real indices run 0..499: 10 sorts before 2
            f = root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            write_jpeg(f, rng)
            boxes.append(f"{f.name}\t" + "\t".join(map(str, _bbox(rng))) + "\n")
            out["train"].append((_rel(f, root), wnid))
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    labels = [w for w in order for _ in range(val_per_class)]
    rng.shuffle(labels)
    rows = []
    for i, wnid in enumerate(labels):
        f = root / "val" / "images" / f"val_{i}.JPEG"
        write_jpeg(f, rng)
        rows.append(f"{f.name}\t{wnid}\t" + "\t".join(map(str, _bbox(rng))) + "\n")
        out["val"].append((_rel(f, root), wnid))
    (root / "val" / "val_annotations.txt").write_text("".join(rows))
    for i in range(2):
        write_jpeg(root / "test" / "images" / f"test_{i}.JPEG", rng)
    return out


def _train_folders(split_dir: Path, root: Path, wnids: list[str], per_class: int, rng: random.Random) -> list:
    written = []
    for wnid in _unsorted(wnids, rng):
        for n in rng.sample(range(1, 13000), per_class):
            f = split_dir / wnid / f"{wnid}_{n}.JPEG"
            write_jpeg(f, rng)
            written.append((_rel(f, root), wnid))
    return written


def _val_ids(wnids: list[str], per_class: int, rng: random.Random) -> list[tuple[int, str]]:
    """(ILSVRC2012 validation number, wnid) pairs: numbers from 1..50000, classes interleaved as in the real set."""
    labels = [w for w in wnids for _ in range(per_class)]
    rng.shuffle(labels)
    return list(zip(sorted(rng.sample(range(1, 50001), len(labels))), labels))


def write_imagenet_folders(root: str | Path, wnids: list[str], per_class_train: int, per_class_val: int,
                           seed: int = 0) -> dict:
    """``root/train/<wnid>/<wnid>_<n>.JPEG`` and ``root/val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG``."""
    rng = random.Random(seed)
    root = Path(root)
    out: dict = {"train": _train_folders(root / "train", root, wnids, per_class_train, rng), "val": [], "dir": root}
    for number, wnid in _val_ids(wnids, per_class_val, rng):
        f = root / "val" / wnid / f"ILSVRC2012_val_{number:08d}.JPEG"
        write_jpeg(f, rng)
        out["val"].append((_rel(f, root), wnid))
    return out


def write_imagenet_flat_val(root: str | Path, wnids: list[str], per_class_train: int, per_class_val: int,
                            kaggle_tree: bool, seed: int = 0) -> dict:
    """A flat val/ with LOC_val_solution.csv: beside train/ and val/ in ``root`` or, with ``kaggle_tree``,
    Kaggle's ``root/LOC_val_solution.csv`` + ``root/ILSVRC/Data/CLS-LOC/{train,val}`` (+ LOC_synset_mapping.txt).
    CSV rows are shuffled, each with 1-2 boxes and the trailing space of Kaggle's file."""
    rng = random.Random(seed)
    root = Path(root)
    base = root / "ILSVRC" / "Data" / "CLS-LOC" if kaggle_tree else root
    out: dict = {"train": _train_folders(base / "train", root, wnids, per_class_train, rng), "val": [], "dir": base,
                 "csv": root / "LOC_val_solution.csv"}
    rows = []
    for number, wnid in _val_ids(wnids, per_class_val, rng):
        f = base / "val" / f"ILSVRC2012_val_{number:08d}.JPEG"
        write_jpeg(f, rng)
        out["val"].append((_rel(f, root), wnid))
        boxes = [wnid] + _bbox(rng)
        if rng.random() < 0.5:
            boxes += [wnid] + _bbox(rng)
        rows.append([f.stem, " ".join(map(str, boxes)) + " "])
    rng.shuffle(rows)
    with open(out["csv"], "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["ImageId", "PredictionString"])
        writer.writerows(rows)
    if kaggle_tree:
        (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} thing {i}\n" for i, w in enumerate(sorted(wnids))))
    return out


def write_imagenette(root: str | Path, variant: str = "imagenette2-160", per_class_train: int = 2,
                     per_class_val: int = 2, seed: int = 0) -> dict:
    """``root/<variant>/{train,val}/<wnid>/*.JPEG`` with the real 10 wnids (ImageWoof's for an imagewoof
    variant) and fastai's noisy_*.csv beside them; val files keep their ILSVRC2012_val names, as in imagenette2."""
    rng = random.Random(seed)
    root = Path(root)
    wnids = IMAGEWOOF_WNIDS if variant.startswith("imagewoof") else IMAGENETTE_WNIDS
    base = root / variant
    out = write_imagenet_folders(base, wnids, per_class_train, per_class_val, seed=rng.randrange(2**31))
    out["train"] = [(_rel(base / f, root), w) for f, w in out["train"]]
    out["val"] = [(_rel(base / f, root), w) for f, w in out["val"]]
    noisy = "noisy_imagewoof.csv" if variant.startswith("imagewoof") else "noisy_imagenette.csv"
    with open(base / noisy, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "noisy_labels_0", "noisy_labels_1", "noisy_labels_5", "noisy_labels_25",
                         "noisy_labels_50", "is_valid"])
        for split in ("train", "val"):
            for f, w in out[split]:
                writer.writerow([str(Path(f).relative_to(variant)), w, w, w, w, w, split == "val"])
    out["dir"] = base
    return out
