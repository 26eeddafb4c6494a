"""Image sets: every set is decoded once into uint8 N x C x H x W (C in {1, 3}) plus int64 labels.

Distilled sets come as an ImageFolder (one subfolder of .png/.jpg images per class; ``folders`` lists
it, ``decode`` decodes it), a tensor file (.pt/.pth/.npz) or an MTT-style folder (images_best.pt +
labels_best.pt; ``tensors``). Real sets are a built-in (digits, fashion-mnist, defined here) or an
ImageNet-style validation ImageFolder, which gets the eval transform (Resize(shorter side) + CenterCrop)
once at decode. Augmentation and normalization happen later, on the device; nothing here keeps PIL images
or float copies around. The validation cache sits above this module (``valcache.load_real`` is
``load_real`` through it), so nothing here knows about caching.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_folder
from ..errors import RD3Error
from ..outputs import check_output_dir
from .decode import Fit, decode_many, short_side
from .folders import list_image_folder, read_class_map
from .idx import read_idx
from .pixels import resize_uint8
from .tensors import CHUNK, is_mtt_folder, read_tensor_set

DEFAULT_VAL_RESIZE_RATIO = 0.875  # ImageNet's Resize(256) -> CenterCrop(224)
FASHION_MNIST_ENV = "RD3FAST_FASHION_MNIST"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]


@dataclass
class ImageSet:
    # uint8 (N, C, H, W), contiguous, C in {1, 3}; float32 for a tensor set read with model_space (values
    # as the model saw them when the set was distilled: the DSA pipeline's input)
    images: torch.Tensor
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]  # class names in index order
    source: str  # path or built-in name
    # A tensor set's own soft labels, float32 (N, K) logits (MTT-style labels_best.pt; --label-source set)
    soft: torch.Tensor | None = None
    lr: float | None = None  # the learned learning rate an MTT-style folder ships (lr_best.pt; --lr from-set)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])


@dataclass(frozen=True)
class DatasetInfo:
    """Defaults of a built-in real set. mean/std are per channel of the 3-channel (expanded) images."""

    name: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    val_resize_ratio: float


# mean/std measured on each train split at the default image_size, in [0, 1] units.
BUILTIN: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 16, (0.3056,) * 3, (0.3188,) * 3, 10, 1.0),
    "fashion-mnist": DatasetInfo("fashion-mnist", 28, (0.2860,) * 3, (0.3530,) * 3, 10, 1.0),
}


def expand_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Images (..., C, H, W) with `channels` channels: 1 -> 3 repeats the gray plane; other changes fail."""
    have = images.shape[-3]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.repeat(*([1] * (images.dim() - 3)), 3, 1, 1)
    raise RD3Error(f"cannot turn {have}-channel images into {channels} channels (only 1 -> 3 is supported)")


def check_resize_ratio(ratio: float) -> None:
    """RD3Error unless the eval crop ratio is in (0, 1]: above 1 the centre crop is larger than the resized
    image, and PIL pads the difference with black, so a cache or an evaluation of it would be wrong."""
    if not 0 < ratio <= 1:
        raise RD3Error(f"--val-resize-ratio: expected a value in (0, 1] (crop size / resized shorter side, "
                       f"0.875 for ImageNet), got {ratio}")


def check_num_classes(what: str, have: int, expected: int, hint: str = "") -> None:
    """RD3Error naming both counts unless they agree (callers skip the check when nothing is expected)."""
    if have != expected:
        raise RD3Error(f"{what} has {have} classes but {expected} were expected"
                       + (f"; {hint}" if hint else ""))


# ---------------------------------------------------------------------------------------------------
# Public readers
# ---------------------------------------------------------------------------------------------------
class FolderReader(Protocol):
    """How ``load_real`` turns a validation folder into an ImageSet once it has checked the arguments; the
    default decodes it now, ``valcache`` passes one that goes through its cache."""

    def __call__(self, root: Path, *, image_size: int, resize_ratio: float, class_map: str | Path | None,
                 workers: int | None, progress: bool) -> ImageSet: ...


def _read_folder(root: Path, fit: Fit, *, class_map: str | Path | None = None, workers: int | None = None,
                 progress: bool = True) -> ImageSet:
    """An ImageFolder decoded with PIL under ``fit``, in ``list_image_folder``'s order."""
    listing = list_image_folder(root, class_map)
    images = decode_many([Path(f) for f in listing.files], fit, workers, desc=f"decode {root}", progress=progress)
    return ImageSet(images, torch.tensor(listing.labels, dtype=torch.int64), list(listing.classes), str(root))


def decode_val_folder(root: Path, *, image_size: int, resize_ratio: float, class_map: str | Path | None = None,
                      workers: int | None = None, progress: bool = True) -> ImageSet:
    """``load_real``'s default ``FolderReader``: the eval transform, decoded now."""
    check_resize_ratio(resize_ratio)
    return _read_folder(root, Fit.centre_crop(image_size, resize_ratio), class_map=class_map, workers=workers,
                        progress=progress)


def load_distilled(path: str | Path, *, class_map: str | Path | None = None, load_size: int = 0,
                   mean: Sequence[float] = (), std: Sequence[float] = (), progress: bool = True,
                   model_space: bool = False) -> ImageSet:
    """A distilled set: ImageFolder, .pt/.pth/.npz tensors, or an images_best.pt + labels_best.pt folder.

    load_size > 0 resizes every image to load_size x load_size once (PIL bilinear for image files, torch
    bilinear+antialias for tensors). mean/std are only used to undo normalization of float tensors that
    fall outside [0, 1]: pass the values the set was normalized with, as given (1 or C values), never a
    dataset's defaults (``tensors.read_tensor_set``). ``progress``: a decode bar for large ImageFolders
    (on a terminal). ``model_space``: float tensor images are kept as stored (``tensors.read_tensor_set``).
    A tensor set's soft labels and an MTT folder's lr_best.pt come along as ``soft`` and ``lr``.
    """
    p = Path(path)
    if not p.exists():
        raise RD3Error(f"distilled set {p} does not exist")
    if load_size < 0:
        raise RD3Error(f"--load-size: expected an integer >= 0, got {load_size}")
    if p.is_dir() and not is_mtt_folder(p):
        return _read_folder(p, Fit(square=load_size), class_map=class_map, progress=progress)
    images, labels, k, soft, lr = read_tensor_set(p, load_size, mean, std, model_space)
    if class_map is None:
        classes = [str(i) for i in range(k)]
    else:
        classes = read_class_map(class_map)
        if k > len(classes):
            raise RD3Error(f"{p}: labels need {k} classes but class map {class_map} names {len(classes)}")
    return ImageSet(images, labels, classes, str(p), soft=soft, lr=lr)


def load_real(source: str, split: str, *, image_size: int = 0, resize_ratio: float = 0.0,
              class_map: str | Path | None = None, workers: int | None = None, progress: bool = True,
              read_val_folder: FolderReader = decode_val_folder) -> ImageSet:
    """A real set: built-in name (split "train" | "val", "test" = "val") or a validation ImageFolder.

    Built-ins are resized to image_size (0: the set's default) with torch bilinear+antialias. A folder
    (split is ignored: the folder is the split) gets Resize(round(image_size / resize_ratio)) +
    CenterCrop(image_size) per image, resize_ratio 0 meaning 0.875, from ``read_val_folder`` (default:
    decoded now with PIL worker processes; ``valcache.load_real`` passes its cache).
    """
    if image_size < 0:
        raise RD3Error(f"--image-size: expected an integer >= 0, got {image_size}")
    if resize_ratio:  # 0: the set's default
        check_resize_ratio(resize_ratio)
    if source in BUILTIN:
        if class_map is not None:
            raise RD3Error(f"--class-map applies to image folders; the built-in {source!r} has fixed classes")
        info = BUILTIN[source]
        images, labels, classes = _BUILTIN_READERS[source](_split(source, split))
        images = _builtin_fit(images, image_size or info.image_size, resize_ratio or info.val_resize_ratio)
        return ImageSet(images, labels, classes, source)
    p = Path(source)
    if p.is_dir():
        if image_size <= 0:
            raise RD3Error(f"--image-size: the validation folder {p} needs an image size > 0 (the eval crop)")
        return read_val_folder(p, image_size=image_size, resize_ratio=resize_ratio or DEFAULT_VAL_RESIZE_RATIO,
                               class_map=class_map, workers=workers, progress=progress)
    if p.exists():
        raise RD3Error(f"real set {p} is a file; expected a built-in ({', '.join(BUILTIN)}) or an "
                       "ImageFolder directory")
    raise RD3Error(f"unknown real set {source!r}: not a built-in ({', '.join(BUILTIN)}) "
                   "and no such directory")


def heldout_split(source: str, size: int, seed: int = 0, *, image_size: int = 0) -> ImageSet:
    """``size`` images of built-in ``source``'s *training* split, drawn per class in equal shares (stratified)
    with ``seed``: the split to choose hyper-parameters on instead of the test set."""
    if source not in BUILTIN:
        raise RD3Error(f"held-out split: {source!r} is not a built-in set ({', '.join(BUILTIN)}); a held-out "
                       "split is carved from a built-in training set")
    real = load_real(source, "train", image_size=image_size)
    k = real.num_classes
    if not 0 < size <= len(real.labels) or size % k:
        raise RD3Error(f"held-out split of {source}: size {size} must be a positive multiple of its {k} classes "
                       f"and at most {len(real.labels)}")
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(k):
        members = torch.nonzero(real.labels == c).flatten()
        if len(members) < size // k:
            raise RD3Error(f"held-out split of {source}: class {c} has only {len(members)} training images")
        picks.append(members[torch.randperm(len(members), generator=g)[:size // k]])
    index = torch.sort(torch.cat(picks)).values
    return ImageSet(real.images[index].contiguous(), real.labels[index], real.classes,
                    f"{source}:train-heldout-{size}-seed{seed}")


def _split(source: str, split: str) -> str:
    if split in ("train", "val"):
        return split
    if split == "test":
        return "val"  # the built-ins have one held-out split; "test" is its usual name for fashion-mnist
    raise RD3Error(f"{source}: unknown split {split!r}; expected train or val")


def _builtin_fit(x: torch.Tensor, image_size: int, ratio: float) -> torch.Tensor:
    """Resize(round(size / ratio)) + CenterCrop(size) on square uint8 tensors (ratio 1: a plain resize)."""
    short = short_side(image_size, ratio)
    x = resize_uint8(x, short, CHUNK)
    if short == image_size:
        return x
    top = int(round((short - image_size) / 2.0))
    return x[..., top:top + image_size, top:top + image_size].contiguous()


# ---------------------------------------------------------------------------------------------------
# Built-in real sets
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
                   f"dataset-fashion-mnist` or point {FASHION_MNIST_ENV} at a folder holding the idx files")


def _fashion_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
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
            list(FASHION_MNIST_CLASSES))


_BUILTIN_READERS = {"digits": _digits, "fashion-mnist": _fashion_mnist}


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
