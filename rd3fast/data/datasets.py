"""The named real datasets (``--dataset NAME``): their defaults, where each lies on disk, and its reader.

Two kinds:

- array sets, read whole into uint8 tensors at their native size: ``digits`` (scikit-learn's, bundled),
  ``mnist`` and ``fashion-mnist`` (torchvision's ``MNIST/raw`` / ``FashionMNIST/raw`` IDX files under
  ``--data-root``; ``fashion-mnist`` without a data root is Debian's ``dataset-fashion-mnist``), ``cifar10``,
  ``cifar100`` and ``cifar100-coarse`` (the python or binary version, ``cifar.py``);
- file sets, listed (which files, which labels) and decoded where they are used: ``tiny-imagenet``
  (``tiny_imagenet.py``), ``imagenet``, ``imagenette``, ``imagewoof`` (``imagenet.py``).

Class indices follow the field so that distilled sets and teachers trained elsewhere line up: the CIFAR
and MNIST files' own label order; sorted wnids for the ImageNet family and Tiny-ImageNet (torchvision's
ImageFolder order, which SRe2L's ``new000/`` and RDED's ``00000/`` folders index).

``--data-root DIR`` (Config ``data_root``; default ``$RD3FAST_DATA``) is searched for the set's standard
folder (``DIR/cifar-10-batches-py``, ``DIR/tiny-imagenet-200``, ...) or holds it itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..errors import RD3Error
from .cifar import find_cifar, read_cifar
from .folders import ImageList
from .idx import read_idx
from .imagenet import find_imagenet, list_imagenet
from .mnist import MNIST_CLASSES, find_mnist, read_mnist
from .tiny_imagenet import find_tiny, list_tiny

DATA_ENV = "RD3FAST_DATA"  # the default --data-root
FASHION_MNIST_ENV = "RD3FAST_FASHION_MNIST"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
DEFAULT_VAL_RESIZE_RATIO = 0.875  # ImageNet's Resize(256) -> CenterCrop(224)


@dataclass(frozen=True)
class DatasetInfo:
    """Defaults of a named real set. mean/std are per channel of the 3-channel (expanded) images, as the
    presets' upstreams normalize that set; a preset that names its own mean/std wins (``rded-small``:
    ImageNet's, as RDED's scripts use for every set)."""

    name: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    val_resize_ratio: float  # the eval transform: Resize(round(size / ratio)) + CenterCrop(size)
    kind: str = "arrays"  # arrays: read whole at native size | files: listed, decoded where used
    channels: int = 3  # as stored (1: grayscale, expanded to 3 where a 3-channel network reads it)
    needs_root: bool = True  # digits (and fashion-mnist from Debian's package) need no --data-root


_CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # MTT utils.py / SRe2L relabel_cifar.py
_CIFAR100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))  # MTT utils.py get_dataset('CIFAR100')
BUILTIN: dict[str, DatasetInfo] = {
    # measured on each train split at the default image_size, in [0, 1] units
    "digits": DatasetInfo("digits", 16, (0.3056,) * 3, (0.3188,) * 3, 10, 1.0, channels=1, needs_root=False),
    "fashion-mnist": DatasetInfo("fashion-mnist", 28, (0.2860,) * 3, (0.3530,) * 3, 10, 1.0, channels=1,
                                 needs_root=False),
    "mnist": DatasetInfo("mnist", 28, (0.1307,) * 3, (0.3081,) * 3, 10, 1.0, channels=1),  # MTT / DC
    "cifar10": DatasetInfo("cifar10", 32, *_CIFAR10, 10, 1.0),
    "cifar100": DatasetInfo("cifar100", 32, *_CIFAR100, 100, 1.0),
    "cifar100-coarse": DatasetInfo("cifar100-coarse", 32, *_CIFAR100, 20, 1.0),
    # Tiny-ImageNet images are 64 px: the eval transform is the identity (SRe2L/MTT evaluate them as stored).
    "tiny-imagenet": DatasetInfo("tiny-imagenet", 64, IMAGENET_MEAN, IMAGENET_STD, 200, 1.0, kind="files"),
    "imagenet": DatasetInfo("imagenet", 224, IMAGENET_MEAN, IMAGENET_STD, 1000, DEFAULT_VAL_RESIZE_RATIO,
                            kind="files"),
    "imagenette": DatasetInfo("imagenette", 224, IMAGENET_MEAN, IMAGENET_STD, 10, DEFAULT_VAL_RESIZE_RATIO,
                              kind="files"),
    "imagewoof": DatasetInfo("imagewoof", 224, IMAGENET_MEAN, IMAGENET_STD, 10, DEFAULT_VAL_RESIZE_RATIO,
                             kind="files"),
}


def dataset_info(name: str, flag: str = "--dataset") -> DatasetInfo:
    """The named set's defaults; an unknown name is an RD3Error listing the known ones."""
    if name not in BUILTIN:
        raise RD3Error(f"{flag}: unknown dataset {name!r}; expected one of {', '.join(BUILTIN)} "
                       "(or a folder: --val FOLDER)")
    return BUILTIN[name]


def split_name(name: str, split: str) -> str:
    """train | val; "test" is val (every set here has one labelled held-out split)."""
    if split in ("train", "val"):
        return split
    if split == "test":
        return "val"
    raise RD3Error(f"{name}: unknown split {split!r}; expected train or val (test)")


def resolve_root(name: str, data_root: str | Path | None) -> Path | None:
    """The --data-root to search for ``name``: the argument, else $RD3FAST_DATA, else None (fine only for
    the sets that need none); an RD3Error when the set needs one and there is none, or it is not a folder."""
    root = data_root or os.environ.get(DATA_ENV) or None
    if root is None:
        if dataset_info(name).needs_root:
            raise RD3Error(f"--dataset {name}: pass --data-root DIR (or set ${DATA_ENV}): the folder holding "
                           f"{name} as it was downloaded (README \"Datasets\")")
        return None
    p = Path(root).expanduser()
    if not p.is_dir():
        raise RD3Error(f"--data-root {p}: no such folder")
    return p


def locate(name: str, data_root: str | Path | None = None) -> Path | None:
    """Where the named set lies (its standard folder under the data root, or the root itself); None for the
    sets that need no root. Cheap (no decode, no full listing): callers check a run's data before anything
    heavier, and a root without the layout is one RD3Error naming the files looked for."""
    if name == "digits":  # scikit-learn's copy: no layout to find, whatever the data root
        return None
    root = resolve_root(name, data_root)
    if root is None:
        return None
    if name in ("mnist", "fashion-mnist"):
        return find_mnist(root, name)
    if name.startswith("cifar"):
        return find_cifar(root, "cifar100" if name.startswith("cifar100") else name)[0]
    if name == "tiny-imagenet":
        return find_tiny(root)
    return find_imagenet(root, name)


def is_file_set(name: str) -> bool:
    return dataset_info(name).kind == "files"


def read_arrays(name: str, split: str, data_root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                      list[str]]:
    """An array set's split at native size: uint8 (N, C, H, W), int64 labels, class names in index order."""
    info, split = dataset_info(name), split_name(name, split)
    if info.kind != "arrays":
        raise RD3Error(f"--dataset {name} is read as files (list_files), not as arrays")
    if name == "digits":
        return _digits(split)
    root = resolve_root(name, data_root)
    if name == "fashion-mnist" and root is None:
        return _debian_fashion_mnist(split)
    if name in ("mnist", "fashion-mnist"):
        images, labels, classes = read_mnist(find_mnist(root, name), name, "train" if split == "train" else "test")
    else:
        base = "cifar100" if name.startswith("cifar100") else name
        folder, version = find_cifar(root, base)
        images, labels, classes = read_cifar(folder, base, "train" if split == "train" else "test", version,
                                             labels="coarse" if name == "cifar100-coarse" else "fine")
    if len(classes) != info.num_classes:
        raise RD3Error(f"{name} under {root}: {len(classes)} classes, expected {info.num_classes}")
    return images, labels, list(classes)


def list_files(name: str, split: str, data_root: str | Path | None = None) -> ImageList:
    """A file set's split: its files, labels and classes (sorted wnids), from the native layout."""
    info, split = dataset_info(name), split_name(name, split)
    if info.kind != "files":
        raise RD3Error(f"--dataset {name} is read as arrays (read_arrays), not as files")
    root = resolve_root(name, data_root)
    if name == "tiny-imagenet":
        listing = list_tiny(find_tiny(root), split)
    else:
        listing = list_imagenet(find_imagenet(root, name), split, name)
    if len(listing.classes) != info.num_classes and name != "imagenet":
        raise RD3Error(f"{name} under {root}: {len(listing.classes)} classes, expected {info.num_classes}")
    return listing


# ---------------------------------------------------------------------------------------------------
# The two sets that need no data root
# ---------------------------------------------------------------------------------------------------
def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """sklearn's 8x8 digits (bundled with sklearn, no download), a fixed stratified 70/30 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    train, val = train_test_split(np.arange(len(d.target)), test_size=0.3, random_state=0, stratify=d.target)
    index = np.sort(train if split == "train" else val)  # keep the dataset's order within a split
    pixels = np.rint(d.images[index] * (255.0 / 16.0)).astype(np.uint8)  # values are 0..16
    images = torch.from_numpy(pixels).unsqueeze(1).contiguous()
    labels = torch.from_numpy(d.target[index].astype(np.int64))
    return images, labels, [str(i) for i in range(10)]


def fashion_mnist_dir() -> Path:
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


def _idx_file(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise RD3Error(f"fashion-mnist: {folder} has no {stem}(.gz); install the set with `apt-get install "
                   f"dataset-fashion-mnist`, point {FASHION_MNIST_ENV} at a folder holding the idx files, or pass "
                   f"--data-root DIR with torchvision's FashionMNIST/raw/ under it")


def _debian_fashion_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    folder = fashion_mnist_dir()
    prefix = "train" if split == "train" else "t10k"
    image_file = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    label_file = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(image_file, 3)
    labels = read_idx(label_file, 1)
    if len(images) != len(labels):
        raise RD3Error(f"fashion-mnist: {image_file} holds {len(images)} images but {label_file} "
                       f"{len(labels)} labels")
    return (torch.from_numpy(images).unsqueeze(1).contiguous(), torch.from_numpy(labels).to(torch.int64),
            list(MNIST_CLASSES["fashion-mnist"]))
