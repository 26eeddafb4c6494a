"""ImageNet-1K, ImageNette and ImageWoof as they are distributed: which files, which labels, which class order.

Layouts read, under a folder DIR:

- class folders, ``DIR/train/<wnid>/*.JPEG`` and ``DIR/val/<wnid>/*.JPEG``: torchvision's ImageFolder layout
  (ILSVRC2012's train tar unpacked per class, val sorted into class folders, e.g. by the widely used valprep.sh);
- a flat ``DIR/val/ILSVRC2012_val_00000001.JPEG ...`` labelled by ``LOC_val_solution.csv``, Kaggle's "ImageNet
  Object Localization Challenge" (https://www.kaggle.com/c/imagenet-object-localization-challenge/data): header
  ``ImageId,PredictionString``, rows ``ILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295``
  whose label is the first wnid of PredictionString. The CSV sits beside train/ and val/, or at the top of
  Kaggle's tree ``<top>/LOC_val_solution.csv`` + ``<top>/ILSVRC/Data/CLS-LOC/{train,val}`` (looked for in DIR
  and up to 3 folders above it);
- fastai's ImageNette and ImageWoof (https://github.com/fastai/imagenette): ``imagenette2[-320|-160]/`` and
  ``imagewoof2[-320|-160]/``, each ``train/<wnid>/*.JPEG`` + ``val/<wnid>/*.JPEG`` for 10 ImageNet classes.

Class order is always the sorted wnids of the training class folders (without a train/: of the val class
folders, or of the CSV): torchvision's ImageFolder order, the one teachers and distilled sets use.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import RD3Error
from .folders import IMAGE_EXTS, ImageList, class_names, list_images, visible_entries
from .listing_cache import cached_listing

KAGGLE_CLS_LOC = "ILSVRC/Data/CLS-LOC"  # where Kaggle's archive keeps train/ and val/
VAL_CSV = "LOC_val_solution.csv"
CSV_LEVELS_UP = 3  # <top>/ILSVRC/Data/CLS-LOC -> <top>

# Folder names looked for under a data root, in this order (after the data root itself).
IMAGENET_DIRS: dict[str, tuple[str, ...]] = {
    "imagenet": ("imagenet", "ILSVRC2012", "imagenet-1k", "imagenet1k", "ILSVRC/Data/CLS-LOC",
                 "imagenet/ILSVRC/Data/CLS-LOC", "imagenet-object-localization-challenge/ILSVRC/Data/CLS-LOC"),
    "imagenette": ("imagenette2", "imagenette2-320", "imagenette2-160"),
    "imagewoof": ("imagewoof2", "imagewoof2-320", "imagewoof2-160"),
}
NAMES = {"imagenet": "ImageNet-1K", "imagenette": "ImageNette", "imagewoof": "ImageWoof"}

# fastai's subsets have these classes exactly: checking the set (not only the count) catches an ImageWoof
# folder passed as ImageNette and the reverse, which would otherwise be evaluated with the wrong labels.
IMAGENETTE_WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
                    "n03425413", "n03445777", "n03888605")
IMAGEWOOF_WNIDS = ("n02086240", "n02087394", "n02088364", "n02089973", "n02093754", "n02096294", "n02099601",
                   "n02105641", "n02111889", "n02115641")
FIXED_CLASSES = {"imagenette": IMAGENETTE_WNIDS, "imagewoof": IMAGEWOOF_WNIDS}
SPLITS = ("train", "val")


def _check_name(name: str) -> None:
    if name not in IMAGENET_DIRS:
        raise RD3Error(f"unknown ImageNet-family set {name!r}: expected one of {', '.join(IMAGENET_DIRS)}")


def _holds_splits(folder: Path) -> bool:
    return (folder / "train").is_dir() or (folder / "val").is_dir()


def find_imagenet(data_root: str | Path, name: str) -> Path:
    """The folder holding ``train/`` and/or ``val/`` of set ``name`` ("imagenet", "imagenette", "imagewoof"):
    ``data_root`` itself, else the first of ``IMAGENET_DIRS[name]`` under it that holds them (for ImageNet this
    includes Kaggle's ``ILSVRC/Data/CLS-LOC``, so the Kaggle top folder works as ``data_root`` too)."""
    _check_name(name)
    root = Path(data_root)
    if not root.is_dir():
        raise RD3Error(f"data root {root} does not exist or is not a directory")
    for folder in (root, *(root / sub for sub in IMAGENET_DIRS[name])):
        if _holds_splits(folder):
            return folder
    raise RD3Error(f"no {NAMES[name]} in {root}: looked for train/ or val/ in it and in its sub-folders "
                   + ", ".join(IMAGENET_DIRS[name]))


def _check_fixed(name: str, classes: tuple[str, ...] | list[str], where: Path) -> None:
    """For ImageNette/ImageWoof: exactly their 10 wnids (an RD3Error naming the first stranger otherwise)."""
    expected = FIXED_CLASSES.get(name)
    if expected is None:
        return
    strangers = sorted(set(classes) - set(expected))
    if len(classes) == len(expected) and not strangers:
        return
    other = next((NAMES[n] for n, w in FIXED_CLASSES.items() if n != name and set(classes) == set(w)), None)
    hint = f"; this is {other}" if other else f" ({' '.join(expected)})"
    if strangers:
        raise RD3Error(f"class {strangers[0]} of {where} is not one of {NAMES[name]}'s {len(expected)} classes{hint}")
    raise RD3Error(f"{where} has {len(classes)} classes but {NAMES[name]} has {len(expected)}{hint}")


def _csv_candidates(base: Path) -> list[Path]:
    """Where LOC_val_solution.csv may be: the split folder's parent DIR and up to 3 folders above it (the path
    as given and with symlinks resolved)."""
    seen: list[Path] = []
    for start in (base.absolute(), base.resolve()):
        for folder in (start, *list(start.parents)[:CSV_LEVELS_UP]):
            if folder not in seen:
                seen.append(folder)
    return [folder / VAL_CSV for folder in seen]


def _stem(image_id: str) -> str:
    base, ext = os.path.splitext(image_id)
    return base if ext.lower() in IMAGE_EXTS else image_id


def read_val_csv(path: Path) -> dict[str, tuple[str, int]]:
    """Kaggle's LOC_val_solution.csv: image id (file name without extension) -> (first wnid, line number)."""
    rows: dict[str, tuple[str, int]] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
                raise RD3Error(f"{path}: expected Kaggle's header ImageId,PredictionString, got "
                               f"{','.join(header or [])[:80]!r}")
            for row in reader:
                number = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) < 2 or not row[0].strip() or not row[1].split():
                    raise RD3Error(f"{path} line {number}: expected ImageId,<wnid x0 y0 x1 y1 ...>, "
                                   f"got {','.join(row)[:80]!r}")
                image_id = _stem(row[0].strip())
                if image_id in rows:
                    raise RD3Error(f"{path} line {number}: {image_id} already has a row (line {rows[image_id][1]})")
                rows[image_id] = (row[1].split()[0], number)
    except FileNotFoundError:
        raise RD3Error(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RD3Error(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not rows:
        raise RD3Error(f"{path} has no rows; expected one ImageId,PredictionString row per validation image")
    return rows


def _flat_val(val: Path, base: Path, train_classes: list[str] | None, name: str) -> ImageList:
    """A flat val/ labelled by LOC_val_solution.csv. Images without a row are an error; rows without an image
    are ignored (Kaggle's CSV covers all 50,000 images, and a partial copy of val/ is fine)."""
    if not any(os.path.splitext(e.name)[1].lower() in IMAGE_EXTS for e in visible_entries(val)):
        raise RD3Error(f"{val} has neither class folders nor {'/'.join(IMAGE_EXTS)} images")
    candidates = _csv_candidates(base)
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise RD3Error(f"{val} holds images without class folders, and no {VAL_CSV} labels them: looked in "
                       + ", ".join(str(c.parent) for c in candidates)
                       + f"; put Kaggle's {VAL_CSV} beside train/ and val/ or sort val/ into <wnid>/ folders")
    rows = read_val_csv(found)
    images = list_images(val)
    unlabelled = [f for f in images if f.stem not in rows]
    if unlabelled:
        raise RD3Error(f"{found} has no row for {len(unlabelled)} of the {len(images)} images in {val} "
                       f"(the first: {unlabelled[0].name})")
    train = base / "train"
    classes = train_classes if train_classes is not None else sorted({wnid for wnid, _ in rows.values()})
    _check_fixed(name, classes, train if train_classes is not None else found)
    index = {wnid: i for i, wnid in enumerate(classes)}
    labels: list[int] = []
    for f in images:
        wnid, number = rows[f.stem]
        if wnid not in index:
            raise RD3Error(f"{found} line {number}: {wnid} (for {f.stem}) is not a training class "
                           f"(there is no {train / wnid})")
        labels.append(index[wnid])
    return ImageList(tuple(str(f) for f in images), tuple(labels), tuple(classes), str(val))


def _check_same_classes(val: Path, val_classes: tuple[str, ...], train: Path, train_classes: list[str]) -> None:
    extra = sorted(set(val_classes) - set(train_classes))
    if extra:
        raise RD3Error(f"class folder {val / extra[0]} has no training counterpart {train / extra[0]}"
                       + (f" (nor have {len(extra) - 1} more)" if len(extra) > 1 else ""))
    missing = sorted(set(train_classes) - set(val_classes))
    if missing:
        raise RD3Error(f"{val} has no folder for training class {missing[0]} (there is {train / missing[0]})"
                       + (f"; {len(missing) - 1} more are missing" if len(missing) > 1 else ""))


def list_imagenet(root: str | Path, split: str, name: str = "imagenet",
                  cache_dir: str | Path | None = None) -> ImageList:
    """Files and labels of split "train" or "val" of ImageNet-1K, ImageNette or ImageWoof (``name``).

    ``root`` is anything ``find_imagenet`` accepts: the folder holding train/ and val/, Kaggle's top folder,
    its CLS-LOC folder, or a data root holding one of ``IMAGENET_DIRS[name]``. Class folders (train/, and val/
    when it has sub-folders) are listed through ``cached_listing`` (1.28 M training files); a flat val/ is
    labelled by LOC_val_solution.csv. Train and class-folder val must have the same classes; the classes of
    ImageNette/ImageWoof must be exactly theirs. ``ImageList.root`` is the split's folder.
    """
    _check_name(name)
    if split not in SPLITS:
        raise RD3Error(f"{NAMES[name]} split {split!r}: expected one of {', '.join(SPLITS)}")
    base = find_imagenet(root, name)
    train, val = base / "train", base / "val"
    if split == "train":
        if not train.is_dir():
            raise RD3Error(f"{train} is missing; {NAMES[name]}'s training images go in train/<wnid>/")
        listing = cached_listing(train, cache_dir=cache_dir)
        _check_fixed(name, listing.classes, train)
        return listing
    if not val.is_dir():
        raise RD3Error(f"{val} is missing; {NAMES[name]}'s validation images go in val/<wnid>/ "
                       f"(or flat, with Kaggle's {VAL_CSV})")
    train_classes = class_names(train, None) if train.is_dir() else None
    if not any(e.is_dir() for e in visible_entries(val)):
        return _flat_val(val, base, train_classes, name)
    listing = cached_listing(val, cache_dir=cache_dir)
    if train_classes is not None:
        _check_same_classes(val, listing.classes, train, train_classes)
    _check_fixed(name, listing.classes, val)
    return listing
