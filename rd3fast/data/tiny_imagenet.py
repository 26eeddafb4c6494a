"""Tiny-ImageNet-200 as its zip unpacks: which files, which labels, in which class order.

The layout of ``tiny-imagenet-200/`` (http://cs231n.stanford.edu/tiny-imagenet-200.zip, described by the
CS231n project page and the zip itself):

- ``wnids.txt``: the 200 WordNet ids, one per line, *not* sorted; ``words.txt``: ``wnid<TAB>names`` (unused);
- ``train/<wnid>/images/<wnid>_<i>.JPEG`` (500 per class) and ``train/<wnid>/<wnid>_boxes.txt`` (unused);
- ``val/images/val_<i>.JPEG`` (10,000) with ``val/val_annotations.txt``: ``file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1``;
- ``test/images/`` without labels (ignored: the labelled evaluation split is val).

Class order is the wnids *sorted*, not wnids.txt's order: it is the order torchvision's ImageFolder gives an
ImageFolder copy of the set, and so the order of distilled sets and of teachers trained on such a copy.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import RD3Error, read_text
from .folders import IMAGE_EXTS, ImageList, list_images, unique_lines, visible_entries

TINY_DIR = "tiny-imagenet-200"
SPLITS = ("train", "val")


def _is_tiny(folder: Path) -> bool:
    # train/ or val/: an evaluation machine may hold only the labelled val split (and wnids.txt for the order)
    return (folder / "wnids.txt").is_file() and ((folder / "train").is_dir() or (folder / "val").is_dir())


def find_tiny(data_root: str | Path) -> Path:
    """The ``tiny-imagenet-200`` folder: ``data_root`` itself or ``data_root/tiny-imagenet-200``, recognised by
    its ``wnids.txt`` beside ``train/`` (or ``val/``)."""
    root = Path(data_root)
    candidates = [root, root / TINY_DIR]
    for folder in candidates:
        if _is_tiny(folder):
            return folder
    raise RD3Error(f"no Tiny-ImageNet-200 in {root}: looked for wnids.txt beside train/ or val/ in "
                   + " and in ".join(str(c) for c in candidates)
                   + " (unpack http://cs231n.stanford.edu/tiny-imagenet-200.zip there)")


def read_wnids(path: Path) -> list[str]:
    """wnids.txt's ids in file order (blank lines ignored); duplicates and an empty file are errors."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RD3Error(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    return unique_lines(text, str(path), "one WordNet id (e.g. n01443537) per line")


def _images(folder: Path, what: str) -> list[Path]:
    """The images of a folder, sorted by name; a missing or image-less folder is an error naming it."""
    if not folder.is_dir():
        raise RD3Error(f"{what} {folder} is missing")
    if not any(os.path.splitext(e.name)[1].lower() in IMAGE_EXTS for e in visible_entries(folder)):
        raise RD3Error(f"{what} {folder} has no {'/'.join(IMAGE_EXTS)} images")
    return list_images(folder)


def _read_annotations(path: Path, known: set[str]) -> dict[str, str]:
    """val_annotations.txt: file name -> wnid; a malformed or repeated row or an unknown wnid is an error."""
    text = read_text(path, f"{path} is missing; Tiny-ImageNet's val labels are in it", str(path))
    labels: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
            raise RD3Error(f"{path} line {number}: expected file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1, "
                           f"got {line.strip()[:80]!r}")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in known:
            raise RD3Error(f"{path} line {number}: {wnid} (for {name}) is not in wnids.txt")
        if name in labels:
            raise RD3Error(f"{path} line {number}: {name} is annotated twice")
        labels[name] = wnid
    return labels


def list_tiny(root: str | Path, split: str) -> ImageList:
    """Files and labels of a Tiny-ImageNet split ("train" or "val"; callers map "test" to "val").

    ``root`` is the tiny-imagenet-200 folder (or the folder holding it: ``find_tiny``). Classes: the wnids
    sorted. Train: the class folders' ``images/`` in class order, files sorted by name. Val: ``val/images``
    sorted by file name, labels from ``val_annotations.txt``. ``ImageList.root`` is the split's folder.
    """
    if split not in SPLITS:
        raise RD3Error(f"Tiny-ImageNet split {split!r}: expected one of {', '.join(SPLITS)}")
    tiny = find_tiny(root)
    wnids_txt = tiny / "wnids.txt"
    classes = sorted(read_wnids(wnids_txt))
    index = {wnid: i for i, wnid in enumerate(classes)}
    files: list[str] = []
    labels: list[int] = []
    if split == "train":
        train = tiny / "train"
        if not train.is_dir():
            raise RD3Error(f"{train} is missing; Tiny-ImageNet's training images are in train/<wnid>/images/")
        extra = sorted(e.name for e in visible_entries(train) if e.is_dir() and e.name not in index)
        if extra:
            raise RD3Error(f"class folder {train / extra[0]} is not in {wnids_txt}"
                           + (f" (nor are {len(extra) - 1} more)" if len(extra) > 1 else ""))
        for wnid in classes:
            if not (train / wnid).is_dir():
                raise RD3Error(f"class folder {train / wnid} is missing ({wnids_txt} lists {wnid})")
            images = _images(train / wnid / "images", "image folder")
            files += [str(f) for f in images]
            labels += [index[wnid]] * len(images)
        return ImageList(tuple(files), tuple(labels), tuple(classes), str(train))
    val = tiny / "val"
    annotations = _read_annotations(val / "val_annotations.txt", set(index))
    images = _images(val / "images", "image folder")
    present = {f.name for f in images}
    missing = sorted(name for name in annotations if name not in present)
    if missing:
        raise RD3Error(f"{val / 'val_annotations.txt'} names {missing[0]} but {val / 'images'} has no such image"
                       + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unlabelled = [f for f in images if f.name not in annotations]
    if unlabelled:
        raise RD3Error(f"val image {unlabelled[0]} has no row in {val / 'val_annotations.txt'}"
                       + (f" (nor have {len(unlabelled) - 1} more)" if len(unlabelled) > 1 else ""))
    for f in images:
        files.append(str(f))
        labels.append(index[annotations[f.name]])
    return ImageList(tuple(files), tuple(labels), tuple(classes), str(val))
