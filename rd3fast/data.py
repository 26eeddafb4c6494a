"""Readers: every image set is decoded once into uint8 N x C x H x W (C in {1, 3}) plus int64 labels.

Distilled sets come as an ImageFolder (one subfolder of .png/.jpg images per class), a tensor file
(.pt/.pth/.npz) or an MTT-style folder (images_best.pt + labels_best.pt). Real sets are a built-in
(digits, fashion-mnist) or an ImageNet-style validation ImageFolder, which gets the eval transform
(Resize(shorter side) + CenterCrop) once at decode. Augmentation and normalization happen later, on the
device; nothing here keeps PIL images or float copies around.
"""
from __future__ import annotations

import gzip
import math
import multiprocessing as mp
import os
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from .aug import resize_uint8
from .errors import RD3Error

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
TENSOR_EXTS = (".pt", ".pth", ".npz")
PT_IMAGE_KEYS = ("images", "x", "data", "image_syn")
PT_LABEL_KEYS = ("labels", "y", "targets", "label_syn")
NPZ_IMAGE_KEYS = ("x", "images", "data")
NPZ_LABEL_KEYS = ("y", "labels", "targets")
MTT_FILES = ("images_best.pt", "labels_best.pt")
DEFAULT_VAL_RESIZE_RATIO = 0.875  # ImageNet's Resize(256) -> CenterCrop(224)
PARALLEL_MIN = 256  # below this a process pool costs more than it saves
UNIT_TOLERANCE = 1e-3  # float images within [0, 1] +- this are plain [0, 1] pixels, not normalized ones
FASHION_MNIST_ENV = "RD3FAST_FASHION_MNIST"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
_CHUNK = 1024  # images per float conversion step, so a large float set never doubles in memory


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 (N, C, H, W), contiguous, C in {1, 3}
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]  # class names in index order
    source: str  # path or built-in name

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


# ---------------------------------------------------------------------------------------------------
# Small public helpers
# ---------------------------------------------------------------------------------------------------
def expand_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Images (..., C, H, W) with `channels` channels: 1 -> 3 repeats the gray plane; other changes fail."""
    have = images.shape[-3]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.repeat(*([1] * (images.dim() - 3)), 3, 1, 1)
    raise RD3Error(f"cannot turn {have}-channel images into {channels} channels (only 1 -> 3 is supported)")


def check_num_classes(what: str, have: int, expected: int, hint: str = "") -> None:
    """RD3Error naming both counts unless they agree (callers skip the check when nothing is expected)."""
    if have != expected:
        raise RD3Error(f"{what} has {have} classes but {expected} were expected"
                       + (f"; {hint}" if hint else ""))


def read_class_map(path: str | Path) -> list[str]:
    """Class folder names, one per line, in class-index order; blank lines ignored."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise RD3Error(f"class map {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RD3Error(f"cannot read class map {p}: {e}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise RD3Error(f"class map {p} is empty; expected one class folder name per line")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise RD3Error(f"class map {p} lists {name!r} twice; each class folder must appear once")
        seen.add(name)
    return names


# ---------------------------------------------------------------------------------------------------
# Image decoding, shared by distilled ImageFolders and real validation folders
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Fit:
    """Geometry applied to each PIL image at decode. square > 0: resize to square x square (--load-size);
    short > 0: torchvision Resize(short) (shorter side) then CenterCrop(crop)."""

    square: int = 0
    short: int = 0
    crop: int = 0

    def apply(self, im: Image.Image) -> Image.Image:
        if self.square:
            # PIL's bilinear filter widens its support when downscaling, i.e. it antialiases.
            return im.resize((self.square, self.square), Image.Resampling.BILINEAR)
        if self.short:
            w, h = im.size
            # torchvision _compute_resized_output_size: the longer side is scaled and truncated.
            size = (self.short, int(self.short * h / w)) if w <= h else (int(self.short * w / h), self.short)
            im = im.resize(size, Image.Resampling.BILINEAR)
            w, h = im.size
            # torchvision center_crop's offsets (ratio <= 1 means the crop always fits).
            top, left = int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
            return im.crop((left, top, left + self.crop, top + self.crop))
        return im


def _decode_image(path: Path, fit: _Fit) -> np.ndarray:
    """One image as uint8 H x W (mode L) or H x W x 3 (every other mode, converted to RGB)."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now so a truncated file fails here, with its name
            if im.mode not in ("L", "RGB"):
                # RGBA/LA drop alpha (no compositing) and P/CMYK map to RGB, as torchvision's loader does.
                im = im.convert("RGB")
            return np.asarray(fit.apply(im))
    except Exception as e:  # PIL raises assorted types (OSError, SyntaxError, ValueError...) per plugin
        raise RD3Error(f"cannot decode image {path}: {e}") from None


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _pool_context() -> Any:
    # fork on Linux: workers inherit the imported modules instead of re-importing torch (as DataLoader
    # does); they only run PIL/numpy, so an initialized CUDA context in the parent is never touched.
    return mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context()


def _decode_many(files: Sequence[Path], fit: _Fit, workers: int | None, desc: str) -> torch.Tensor:
    """Decode `files` into one uint8 N x C x H x W tensor. All gray -> C=1; any colour -> C=3 (gray
    images repeated, which is what PIL's L -> RGB conversion does). Sizes must agree after `fit`."""
    n = len(files)
    workers = _default_workers() if workers is None else workers
    job = partial(_decode_image, fit=fit)
    big = n > PARALLEL_MIN
    out: np.ndarray | None = None
    colour = False
    with _pool_context().Pool(workers) if big and workers > 1 else _Serial() as pool:
        results = pool.imap(job, files, chunksize=max(1, min(64, n // (8 * workers))))
        for i, arr in enumerate(tqdm(results, total=n, desc=desc, unit="img", disable=not big)):
            if out is None:
                # Gray images are written into all three planes; dropped at the end if nothing had colour.
                out = np.empty((n, 3, *arr.shape[:2]), np.uint8)
            if arr.shape[:2] != out.shape[2:]:
                (h0, w0), (h1, w1) = out.shape[2:], arr.shape[:2]
                raise RD3Error(f"images differ in size: {files[0]} is {w0}x{h0} but {files[i]} is {w1}x{h1}; "
                               "pass --load-size N to resize every image to N x N at decode")
            if arr.ndim == 2:
                out[i] = arr
            else:
                out[i] = arr.transpose(2, 0, 1)
                colour = True
    assert out is not None  # callers never pass an empty list
    return torch.from_numpy(out if colour else np.ascontiguousarray(out[:, :1]))


class _Serial:
    """The Pool surface _decode_many uses, run in this process."""

    def imap(self, fn: Any, items: Iterable, chunksize: int = 1) -> Iterable:
        return map(fn, items)

    def __enter__(self) -> "_Serial":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _class_names(root: Path, class_map: str | Path | None) -> list[str]:
    """Class folder names in index order: sorted, or the class map's order (which must match exactly)."""
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise RD3Error(f"{root} has no class folders; expected an ImageFolder (one subfolder of "
                       ".png/.jpg images per class), a .pt/.pth/.npz file or an images_best.pt folder")
    if class_map is None:
        return found
    names = read_class_map(class_map)
    unmapped = sorted(set(found) - set(names))
    if unmapped:
        raise RD3Error(f"class folder {root / unmapped[0]} is not in class map {class_map}"
                       + (f" (nor are {len(unmapped) - 1} more)" if len(unmapped) > 1 else ""))
    present = set(found)
    absent = [name for name in names if name not in present]
    if absent:
        raise RD3Error(f"class map {class_map} lists {absent[0]!r} but {root} has no such folder"
                       + (f" (nor {len(absent) - 1} more)" if len(absent) > 1 else ""))
    return names


def _list_images(folder: Path) -> list[Path]:
    images = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()),
                    key=lambda p: p.name)
    if not images:
        raise RD3Error(f"class folder {folder} is empty (no {'/'.join(IMAGE_EXTS)} images)")
    return images


def _read_folder(root: Path, class_map: str | Path | None, fit: _Fit, workers: int | None) -> ImageSet:
    classes = _class_names(root, class_map)
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        images = _list_images(root / name)
        files += images
        labels += [index] * len(images)
    images = _decode_many(files, fit, workers, desc=f"decode {root}")
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64), classes, str(root))


# ---------------------------------------------------------------------------------------------------
# Tensor files
# ---------------------------------------------------------------------------------------------------
def _torch_load(path: Path) -> Any:
    try:
        # weights_only: a distilled set is data; refuse pickled code from a downloaded file.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RD3Error(f"cannot read tensor file {path}: {e}") from None


def _pick(d: dict, keys: Sequence[str], path: Path, what: str) -> Any:
    for key in keys:
        if key in d:
            return d[key]
    raise RD3Error(f"{path}: unknown tensor-file layout: no {what} key (expected one of {'|'.join(keys)}); "
                   f"found keys {', '.join(map(str, d)) or 'none'}")


def _read_pt(path: Path) -> tuple[Any, Any]:
    obj = _torch_load(path)
    if isinstance(obj, dict):
        return _pick(obj, PT_IMAGE_KEYS, path, "images"), _pick(obj, PT_LABEL_KEYS, path, "labels")
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0], obj[1]
    raise RD3Error(f"{path}: unknown tensor-file layout ({type(obj).__name__}); expected a dict with "
                   f"{'|'.join(PT_IMAGE_KEYS)} and {'|'.join(PT_LABEL_KEYS)} keys, "
                   "or an (images, labels) pair")


def _read_npz(path: Path) -> tuple[Any, Any]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise RD3Error(f"cannot read {path}: {e}") from None
    return _pick(arrays, NPZ_IMAGE_KEYS, path, "images"), _pick(arrays, NPZ_LABEL_KEYS, path, "labels")


def _as_tensor(value: Any, path: Path, what: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    raise RD3Error(f"{path}: {what} must be a tensor or array, got {type(value).__name__}")


def _chunked_uint8(x: torch.Tensor, fn: Any) -> torch.Tensor:
    """uint8 tensor of fn(float32 chunk) over the first dim, so a large float set is never copied whole."""
    out = torch.empty(x.shape, dtype=torch.uint8)
    for i in range(0, len(x), _CHUNK):
        out[i:i + _CHUNK] = fn(x[i:i + _CHUNK].float()).clamp_(0, 255).round_().to(torch.uint8)
    return out


def _per_channel(values: Sequence[float], channels: int, path: Path, flag: str) -> torch.Tensor:
    if len(values) not in (1, channels):
        raise RD3Error(f"{path}: {flag} has {len(values)} values for {channels}-channel images")
    return torch.tensor([float(v) for v in values] * (channels // len(values)),
                        dtype=torch.float32).view(1, channels, 1, 1)


def _to_uint8_images(x: torch.Tensor, path: Path, mean: Sequence[float],
                     std: Sequence[float]) -> torch.Tensor:
    """Any supported image array -> uint8 N x C x H x W, contiguous."""
    if x.dim() == 3:
        x = x.unsqueeze(1)  # N x H x W: gray
    elif x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)  # NHWC
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise RD3Error(f"{path}: images have shape {tuple(x.shape)}; expected N x C x H x W or N x H x W x C "
                       "with C in (1, 3), or N x H x W")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if x.dtype == torch.bool or x.is_complex():
        raise RD3Error(f"{path}: images have dtype {x.dtype}; expected uint8 or float")
    if not x.is_floating_point():
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise RD3Error(f"{path}: integer images range over [{lo}, {hi}]; expected [0, 255]")
        return x.to(torch.uint8).contiguous()
    if not bool(torch.isfinite(x).all()):
        raise RD3Error(f"{path}: images contain NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo >= -UNIT_TOLERANCE and hi <= 1 + UNIT_TOLERANCE:
        return _chunked_uint8(x, lambda v: v * 255)
    if not mean or not std:
        raise RD3Error(f"{path}: float images range over [{lo:.3g}, {hi:.3g}], so they are normalized; "
                       "pass --mean/--std the set was normalized with")
    m = _per_channel(mean, x.shape[1], path, "--mean")
    s = _per_channel(std, x.shape[1], path, "--std")
    return _chunked_uint8(x, lambda v: (v * s + m).clamp_(0, 1) * 255)


def _hard_labels(y: torch.Tensor, path: Path) -> tuple[torch.Tensor, int]:
    """int64 (N,) labels and the class count they imply: soft (N, K) -> argmax and K; hard -> max + 1."""
    if y.dim() == 2:
        return y.argmax(1).to(torch.int64), y.shape[1]
    if y.dim() != 1:
        raise RD3Error(f"{path}: labels have shape {tuple(y.shape)}; expected (N,) class indices or (N, K) "
                       "soft labels")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise RD3Error(f"{path}: 1-D labels must be whole class indices")
    y = y.to(torch.int64)
    if len(y) and int(y.min()) < 0:
        raise RD3Error(f"{path}: labels contain {int(y.min())}; expected class indices >= 0")
    return y, int(y.max()) + 1 if len(y) else 0


def _tensor_set(images: Any, labels: Any, path: Path, class_map: str | Path | None, load_size: int,
                mean: Sequence[float], std: Sequence[float]) -> ImageSet:
    x = _as_tensor(images, path, "images")
    y = _as_tensor(labels, path, "labels")
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
        raise RD3Error(f"{path}: {len(x) if x.dim() else 0} images but {len(y) if y.dim() else 0} labels; "
                       "expected one label per image")
    if len(x) == 0:
        raise RD3Error(f"{path}: holds no images")
    y, k = _hard_labels(y, path)
    x = _to_uint8_images(x, path, mean, std)
    if load_size:
        x = resize_uint8(x, load_size, _CHUNK)
    if class_map is None:
        classes = [str(i) for i in range(k)]
    else:
        classes = read_class_map(class_map)
        if k > len(classes):
            raise RD3Error(f"{path}: labels need {k} classes but class map {class_map} names {len(classes)}")
    return ImageSet(x, y, classes, str(path))


# ---------------------------------------------------------------------------------------------------
# Public readers
# ---------------------------------------------------------------------------------------------------
def load_distilled(path: str | Path, *, class_map: str | Path | None = None, load_size: int = 0,
                   mean: Sequence[float] = (), std: Sequence[float] = ()) -> ImageSet:
    """A distilled set: ImageFolder, .pt/.pth/.npz tensors, or an images_best.pt + labels_best.pt folder.

    load_size > 0 resizes every image to load_size x load_size once (PIL bilinear for image files, torch
    bilinear+antialias for tensors). mean/std are only used to undo normalization of float tensors that
    fall outside [0, 1].
    """
    p = Path(path)
    if not p.exists():
        raise RD3Error(f"distilled set {p} does not exist")
    if load_size < 0:
        raise RD3Error(f"--load-size: expected an integer >= 0, got {load_size}")
    if p.is_dir():
        present = [name for name in MTT_FILES if (p / name).is_file()]
        if len(present) == 2:
            images, labels = (_torch_load(p / name) for name in MTT_FILES)
            return _tensor_set(images, labels, p, class_map, load_size, mean, std)
        if present:
            missing = next(name for name in MTT_FILES if name not in present)
            raise RD3Error(f"{p} has {present[0]} but no {missing}; an MTT-style folder needs both")
        return _read_folder(p, class_map, _Fit(square=load_size), workers=None)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _tensor_set(*_read_npz(p), p, class_map, load_size, mean, std)
    if suffix in (".pt", ".pth"):
        return _tensor_set(*_read_pt(p), p, class_map, load_size, mean, std)
    raise RD3Error(f"{p}: unsupported distilled set; expected an ImageFolder directory, a "
                   f"{'/'.join(TENSOR_EXTS)} file or a folder with {' + '.join(MTT_FILES)}")


def load_real(source: str, split: str, *, image_size: int = 0, resize_ratio: float = 0.0,
              class_map: str | Path | None = None, workers: int | None = None, cache: bool | str = False,
              decoder: str = "pil") -> ImageSet:
    """A real set: built-in name (split "train" | "val", "test" = "val") or a validation ImageFolder.

    Built-ins are resized to image_size (0: the set's default) with torch bilinear+antialias. A folder
    (split is ignored: the folder is the split) gets Resize(round(image_size / resize_ratio)) +
    CenterCrop(image_size) per image, resize_ratio 0 meaning 0.875. ``cache`` (True/"auto": the default
    cache dir, a path: that dir, False/"off": none) decodes a folder once with ``decoder`` (pil | dali |
    ffcv) into a uint8 .npy that later calls memory-map (``valcache``; 3-channel images).
    """
    if image_size < 0:
        raise RD3Error(f"--image-size: expected an integer >= 0, got {image_size}")
    if resize_ratio and not 0 < resize_ratio <= 1:
        raise RD3Error(f"--val-resize-ratio: expected a value in (0, 1], got {resize_ratio}")
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
        ratio = resize_ratio or DEFAULT_VAL_RESIZE_RATIO
        if cache not in (False, None, "", "off"):
            from .valcache import cached_real

            return cached_real(p, image_size=image_size, resize_ratio=ratio, decoder=decoder, class_map=class_map,
                               workers=workers, cache_dir=None if cache in (True, "auto", "on") else str(cache))
        return _read_folder(p, class_map, _Fit(short=round(image_size / ratio), crop=image_size), workers)
    if p.exists():
        raise RD3Error(f"real set {p} is a file; expected a built-in ({', '.join(BUILTIN)}) or an "
                       "ImageFolder directory")
    raise RD3Error(f"unknown real set {source!r}: not a built-in ({', '.join(BUILTIN)}) "
                   "and no such directory")


def _split(source: str, split: str) -> str:
    if split in ("train", "val"):
        return split
    if split == "test":
        return "val"  # the built-ins have one held-out split; "test" is its usual name for fashion-mnist
    raise RD3Error(f"{source}: unknown split {split!r}; expected train or val")


def _builtin_fit(x: torch.Tensor, image_size: int, ratio: float) -> torch.Tensor:
    """Resize(round(size / ratio)) + CenterCrop(size) on square uint8 tensors (ratio 1: a plain resize)."""
    short = round(image_size / ratio)
    x = resize_uint8(x, short, _CHUNK)
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


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (magic 0x0800 + ndim: 2049 labels, 2051 images), gzipped or plain."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with (gzip.open(p, "rb") if gzipped else open(p, "rb")) as f:
            data = bytearray(f.read())  # writable, so torch.from_numpy needs no copy
    except (OSError, EOFError) as e:
        raise RD3Error(f"cannot read idx file {p}: {e}") from None
    header = 4 + 4 * ndim
    magic = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
    if magic != 0x800 + ndim or len(data) < header:
        raise RD3Error(f"{p}: not an idx file of bytes with {ndim} dimension(s) (magic {magic}, expected "
                       f"{0x800 + ndim})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(dims):
        raise RD3Error(f"{p}: header says {'x'.join(map(str, dims))} bytes of data but the file holds "
                       f"{len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


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
