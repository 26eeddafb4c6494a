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

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import torch
from PIL import Image

from ..atomic import atomic_folder
from ..errors import RD3Error
from ..outputs import check_output_dir
from .decode import Fit, decode_many, short_side
from .datasets import BUILTIN, DEFAULT_VAL_RESIZE_RATIO, dataset_info, list_files, read_arrays
from .folders import ImageList, list_image_folder, read_class_map
from .pixels import resize_uint8
from .tensors import CHUNK, is_mtt_folder, read_tensor_set

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

    def __call__(self, root: Path | ImageList, *, image_size: int, resize_ratio: float,
                 class_map: str | Path | None, workers: int | None, progress: bool) -> ImageSet: ...


def _read_folder(root: Path | ImageList, fit: Fit, *, class_map: str | Path | None = None,
                 workers: int | None = None, progress: bool = True) -> ImageSet:
    """An ImageFolder (or a dataset's listing) decoded with PIL under ``fit``, in the listing's order."""
    listing = root if isinstance(root, ImageList) else list_image_folder(root, class_map)
    images = decode_many([Path(f) for f in listing.files], fit, workers, desc=f"decode {listing.root}",
                         progress=progress)
    return ImageSet(images, torch.tensor(listing.labels, dtype=torch.int64), list(listing.classes), listing.root)


def decode_val_folder(root: Path | ImageList, *, image_size: int, resize_ratio: float,
                      class_map: str | Path | None = None, workers: int | None = None,
                      progress: bool = True) -> ImageSet:
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
              read_val_folder: FolderReader = decode_val_folder, data_root: str | Path | None = None) -> ImageSet:
    """A real set: a named dataset's split (``datasets.BUILTIN``; "test" = "val"; read from ``data_root`` or
    $RD3FAST_DATA where it needs one) or a validation ImageFolder.

    Array sets (digits, MNIST, CIFAR) get Resize(round(size / ratio)) + CenterCrop(size) on the whole
    tensor, image_size 0 and resize_ratio 0 meaning the set's defaults (a plain resize at ratio 1). File sets
    (Tiny-ImageNet, the ImageNet family) and a folder (split is ignored: the folder is the split) get
    Resize(round(image_size / resize_ratio)) + CenterCrop(image_size) per image from ``read_val_folder``
    (default: decoded now with PIL worker processes; ``valcache.load_real`` passes its cache).
    """
    if image_size < 0:
        raise RD3Error(f"--image-size: expected an integer >= 0, got {image_size}")
    if resize_ratio:  # 0: the set's default
        check_resize_ratio(resize_ratio)
    if source in BUILTIN:
        if class_map is not None:
            raise RD3Error(f"--class-map applies to image folders; the dataset {source!r} has fixed classes")
        info = BUILTIN[source]
        size, ratio = image_size or info.image_size, resize_ratio or info.val_resize_ratio
        if info.kind == "files":
            listing = list_files(source, split, data_root)
            return read_val_folder(listing, image_size=size, resize_ratio=ratio, class_map=None, workers=workers,
                                   progress=progress)
        images, labels, classes = read_arrays(source, split, data_root)
        return ImageSet(_fit_arrays(images, size, ratio), labels, classes, source)
    p = Path(source)
    if p.is_dir():
        if image_size <= 0:
            raise RD3Error(f"--image-size: the validation folder {p} needs an image size > 0 (the eval crop)")
        return read_val_folder(p, image_size=image_size, resize_ratio=resize_ratio or DEFAULT_VAL_RESIZE_RATIO,
                               class_map=class_map, workers=workers, progress=progress)
    if p.exists():
        raise RD3Error(f"real set {p} is a file; expected a dataset name ({', '.join(BUILTIN)}) or an "
                       "ImageFolder directory")
    raise RD3Error(f"unknown real set {source!r}: not a dataset name ({', '.join(BUILTIN)}) "
                   "and no such directory")


def heldout_split(source: str, size: int, seed: int = 0, *, image_size: int = 0,
                  data_root: str | Path | None = None, workers: int | None = None,
                  progress: bool = True) -> ImageSet:
    """``size`` images of dataset ``source``'s *training* split, drawn per class in equal shares (stratified)
    with ``seed``: the split to choose hyper-parameters on instead of the test set. A file set (ImageNet) is
    listed, and only the drawn files are decoded (with the eval transform: they are evaluated, not trained on)."""
    info = dataset_info(source, "held-out split")
    listing = list_files(source, "train", data_root) if info.kind == "files" else None
    k = len(listing.classes) if listing is not None else info.num_classes
    if size <= 0 or size % k:
        raise RD3Error(f"held-out split of {source}: size {size} must be a positive multiple of its {k} classes")
    held = train_subset(source, size // k, seed, image_size=image_size, data_root=data_root, workers=workers,
                        progress=progress, what="held-out split", listing=listing)
    return ImageSet(held.images, held.labels, held.classes, f"{source}:train-heldout-{size}-seed{seed}")


def train_subset(source: str, per_class: int, seed: int = 0, *, image_size: int = 0,
                 data_root: str | Path | None = None, workers: int | None = None, progress: bool = True,
                 what: str = "--max-per-class", listing: ImageList | None = None) -> ImageSet:
    """``per_class`` images of each class of dataset ``source``'s training split, drawn with ``seed`` and
    kept in the split's order. Array sets are read whole and indexed; file sets (ImageNet's 1.28 M files)
    are listed and only the drawn files decoded, Resize + CenterCrop to ``image_size`` (0: the set's)."""
    info = dataset_info(source, what)
    if info.kind == "files":
        listing = listing or list_files(source, "train", data_root)  # a caller's listing of it: not listed twice
        labels = torch.tensor(listing.labels, dtype=torch.int64)
    else:
        real = load_real(source, "train", image_size=image_size, data_root=data_root)
        labels = real.labels
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(len(listing.classes) if info.kind == "files" else real.num_classes):
        members = torch.nonzero(labels == c).flatten()
        if len(members) < per_class:
            raise RD3Error(f"{what} of {source}: class {c} has only {len(members)} training images, "
                           f"{per_class} needed")
        picks.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    index = torch.sort(torch.cat(picks)).values
    if info.kind == "files":
        chosen = ImageList(tuple(listing.files[i] for i in index.tolist()),
                           tuple(listing.labels[i] for i in index.tolist()), listing.classes, listing.root)
        return decode_val_folder(chosen, image_size=image_size or info.image_size,
                                 resize_ratio=info.val_resize_ratio, workers=workers, progress=progress)
    return ImageSet(real.images[index].contiguous(), real.labels[index], real.classes, real.source)


def _fit_arrays(x: torch.Tensor, image_size: int, ratio: float) -> torch.Tensor:
    """Resize(round(size / ratio)) + CenterCrop(size) on square uint8 tensors (ratio 1: a plain resize)."""
    short = short_side(image_size, ratio)
    x = resize_uint8(x, short, CHUNK)
    if short == image_size:
        return x
    top = int(round((short - image_size) / 2.0))
    return x[..., top:top + image_size, top:top + image_size].contiguous()


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
