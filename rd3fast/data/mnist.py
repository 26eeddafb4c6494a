"""MNIST and Fashion-MNIST in torchvision's download layout, ``<root>/MNIST/raw/`` and
``<root>/FashionMNIST/raw/``, read into uint8 N x 1 x 28 x 28 images, int64 labels and class names.

Each folder holds the four IDX files of the official distributions (format: http://yann.lecun.com/exdb/mnist/,
"FILE FORMATS FOR THE MNIST DATABASE"; Fashion-MNIST ships the same files,
https://github.com/zalandoresearch/fashion-mnist): ``train-images-idx3-ubyte`` (magic 2051, N x 28 x 28
bytes), ``train-labels-idx1-ubyte`` (magic 2049, N bytes) and their ``t10k-`` test counterparts, plain or
gzipped (``.gz``; torchvision keeps both). ``idx.read_idx`` parses the files.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import RD3Error
from .idx import read_idx

MNIST_FOLDERS: dict[str, str] = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
MNIST_CLASSES: dict[str, list[str]] = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}
_TITLE = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
_PREFIX = {"train": "train", "test": "t10k"}
_FILES = [f"{prefix}-{kind}" for prefix in ("train", "t10k") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]


def _check_name(name: str) -> None:
    if name not in MNIST_FOLDERS:
        raise RD3Error(f"unknown MNIST-family set {name!r}: expected one of {', '.join(MNIST_FOLDERS)}")


def _idx_file(folder: Path, base: str) -> Path | None:
    """``base`` in ``folder``, plain or gzipped; the plain one where both exist (no decompression)."""
    for candidate in (folder / base, folder / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_mnist(data_root: str | Path, name: str) -> Path:
    """The folder holding the four IDX files of ``name`` ("mnist" | "fashion-mnist"): torchvision's
    ``data_root/MNIST/raw`` (``FashionMNIST/raw``), ``data_root/raw`` (the user pointed at ``MNIST/``) or
    ``data_root`` itself (the user pointed at ``raw/`` or at a folder of the four files)."""
    _check_name(name)
    root = Path(data_root)
    if not root.is_dir():
        raise RD3Error(f"--data-root {root}: not a directory (expected the folder holding "
                       f"{MNIST_FOLDERS[name]}/raw/ of {_TITLE[name]})")
    candidates = [root / MNIST_FOLDERS[name] / "raw", root / "raw", root]
    for folder in candidates:
        if folder.is_dir() and all(_idx_file(folder, f) for f in _FILES):
            return folder
    # Half there (a download that stopped): name what is missing instead of "not found"
    for folder in candidates:
        present = [f for f in _FILES if folder.is_dir() and _idx_file(folder, f)]
        if present:
            missing = [f for f in _FILES if f not in present]
            raise RD3Error(f"{folder}: incomplete {_TITLE[name]}: missing {', '.join(missing)} (plain or .gz)")
    looked = ", ".join(f"{c}/" for c in candidates[:-1])
    raise RD3Error(f"--data-root {root}: no {_TITLE[name]} found: looked for {', '.join(_FILES)} (plain or .gz) "
                   f"in {looked} and {root} itself")


def read_mnist(folder: str | Path, name: str, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One split ("train" | "test") of the set in ``folder`` (as ``find_mnist`` returns it): uint8
    (N, 1, 28, 28) contiguous images, int64 (N,) labels and the class names in label order."""
    _check_name(name)
    if split not in _PREFIX:
        raise RD3Error(f"{_TITLE[name]} split {split!r}: expected 'train' or 'test'")
    folder = Path(folder)
    paths = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        base = f"{_PREFIX[split]}-{kind}"
        path = _idx_file(folder, base)
        if path is None:
            raise RD3Error(f"{folder / base}: no such file (nor {base}.gz); expected {_TITLE[name]}'s IDX files")
        paths.append(path)
    image_path, label_path = paths
    images = read_idx(image_path, 3)
    labels = read_idx(label_path, 1)
    if images.shape[1:] != (28, 28):
        raise RD3Error(f"{image_path}: images of {images.shape[1]}x{images.shape[2]} pixels, expected 28x28 "
                       f"({_TITLE[name]})")
    if len(images) != len(labels):
        raise RD3Error(f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels; expected "
                       f"one label per image (files of different downloads?)")
    classes = MNIST_CLASSES[name]
    if len(labels) and int(labels.max()) >= len(classes):
        raise RD3Error(f"{label_path}: label {int(labels.max())} outside 0..{len(classes) - 1} of {_TITLE[name]}")
    # read_idx's array views a writable buffer of its own: the images need no copy
    return (torch.from_numpy(images.reshape(-1, 1, 28, 28)), torch.from_numpy(labels.astype("int64")),
            list(classes))
