"""Import-guarded readers for large real sets (DALI, FFCV) next to the PIL path; each yields the same (x, y).

Every reader here yields ``(x, y)`` batches: ``x`` float32 N x 3 x S x S normalized with ``mean``/``std``
(what ``aug.eval_transform`` makes of rd3fast's uint8 centre crops), ``y`` int64 (N,), both on the
requested device. ``output="uint8"`` yields the un-normalized uint8 N x 3 x S x S crops instead (what the
validation cache stores). Two modes:

- ``val``: Resize(shorter side = round(S / resize_ratio)) + CenterCrop(S), in file order, every image
  once (the last batch may be short);
- ``train``: a random order per epoch, then RandomResizedCrop(S, rrc_scale, rrc_ratio) (``crop="rrc"``),
  a square resize + zero-padded random crop (``"random_crop"``) or a square resize (``"none"``), then a
  horizontal flip with probability ``flip_p``.

Images and labels come from the same listing as the PIL path (``list_image_folder``: sorted class folders
or a class map, files sorted by name), so labels and order agree with ``data.load_real`` exactly.
DALI and FFCV are imported only when used; a missing one is an RD3Error naming the pip extra.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch

from ..aug import eval_normalize
from ..errors import RD3Error

BACKENDS = ("pil", "dali", "ffcv")
LOADERS = ("auto",) + BACKENDS
MODES = ("val", "train")
CROPS = ("rrc", "random_crop", "none")
_EXTRAS = {"dali": ("nvidia.dali", "pip install 'rd3fast[dali]' (the nvidia-dali-cuda130 wheel; it also runs "
                                   "CPU-only pipelines)"),
           "ffcv": ("ffcv", "apt-get install pkg-config libopencv-dev libturbojpeg0-dev, then "
                            "pip install 'rd3fast[ffcv]' && pip install --no-deps ffcv==1.0.2 (see setup.sh)")}


class Reader(Protocol):
    """What every backend returns: an iterable of (x, y) batches that knows its length and class names."""

    classes: list[str]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...


def available(name: str) -> bool:
    """Whether backend ``name`` can be imported here (pil always can)."""
    if name == "pil":
        return True
    if name not in _EXTRAS:
        raise RD3Error(f"--loader: unknown backend {name!r}; expected one of {', '.join(LOADERS)}")
    try:
        return importlib.util.find_spec(_EXTRAS[name][0]) is not None
    except (ImportError, ValueError):
        return False


def require(name: str) -> Any:
    """Import backend ``name``'s library or raise an RD3Error that says how to install it."""
    module, how = _EXTRAS[name]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RD3Error(f"--loader {name}: {module} is not installed ({e}); install it with: {how}") from None


def resolve_loader(name: str, device: torch.device | str, source: str | Path | None = None) -> str:
    """The backend ``name`` stands for. auto: DALI where a GPU can decode (mixed decoder), else PIL worker
    processes (on CPU they are as fast as DALI's CPU decoder and give the reference pixels); FFCV only when
    asked for, or when ``source`` is already a .beton file."""
    if name not in LOADERS:
        raise RD3Error(f"--loader: expected one of {', '.join(LOADERS)}, got {name!r}")
    if name != "auto":
        return name
    if source is not None and str(source).endswith(".beton"):
        return "ffcv"
    if torch.device(device).type == "cuda" and available("dali"):
        return "dali"
    return "pil"


@dataclass(frozen=True)
class ImageList:
    """An ImageFolder's files and labels in rd3fast's order (the one ``data.load_real`` decodes in)."""

    files: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    root: str


def list_image_folder(root: str | Path, class_map: str | Path | None = None) -> ImageList:
    """Files and labels of an ImageFolder exactly as ``data.load_real``/``load_distilled`` read it."""
    from ..data import _class_names, _list_images

    p = Path(root)
    if not p.is_dir():
        raise RD3Error(f"image folder {p} does not exist or is not a directory")
    classes = _class_names(p, class_map)
    files: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        images = _list_images(p / name)
        files += [str(f) for f in images]
        labels += [index] * len(images)
    return ImageList(tuple(files), tuple(labels), tuple(classes), str(p))


def short_side(image_size: int, resize_ratio: float) -> int:
    """The shorter side before the centre crop, as ``data.load_real`` computes it (256 for 224 at 0.875)."""
    return round(image_size / resize_ratio)


def check_args(mode: str, image_size: int, resize_ratio: float, crop: str, output: str) -> None:
    if mode not in MODES:
        raise RD3Error(f"reader mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if image_size < 1:
        raise RD3Error(f"--image-size: the reader needs an image size >= 1, got {image_size}")
    if not 0 < resize_ratio <= 1:
        raise RD3Error(f"--val-resize-ratio: expected a value in (0, 1], got {resize_ratio}")
    if crop not in CROPS:
        raise RD3Error(f"--crop: the streaming readers support {', '.join(CROPS)}, got {crop!r}")
    if output not in ("float", "uint8"):
        raise RD3Error(f"reader output: expected float or uint8, got {output!r}")


def finish(x: torch.Tensor, y: torch.Tensor, mean: Sequence[float], std: Sequence[float], output: str,
           device: torch.device, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N x 3 x H x W (any device) -> the reader's batch: normalized float32 (or uint8) and int64 labels
    on ``device``. The normalization is ``aug.normalize``'s (x / 255 - mean) / std, fused into one multiply
    and one subtract in place (4x faster on CPU; equal to it within float rounding, ~1e-7)."""
    x = x.to(device, non_blocking=True)
    y = y.reshape(-1).to(device=device, dtype=torch.int64, non_blocking=True)
    if output == "uint8":
        return x, y
    x = eval_normalize(x, tuple(mean), tuple(std))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def make_reader(backend: str, source: str | Path, *, mode: str = "val", image_size: int,
                resize_ratio: float = 0.875, mean: Sequence[float] = (0.485, 0.456, 0.406),
                std: Sequence[float] = (0.229, 0.224, 0.225), batch_size: int = 256,
                device: torch.device | str = "cpu", class_map: str | Path | None = None, seed: int = 0,
                workers: int | None = None, crop: str = "rrc", rrc_scale: Sequence[float] = (0.08, 1.0),
                rrc_ratio: Sequence[float] = (3 / 4, 4 / 3), crop_padding: int = 4, flip_p: float = 0.5,
                drop_last: bool = False, output: str = "float", split: str | None = None) -> Reader:
    """One reader over an ImageFolder (pil, dali) or a .beton file / ImageFolder (ffcv; a folder is written
    to a .beton in the cache first; so is a built-in name, its ``split`` defaulting to the mode's). Arguments
    as in the module docstring."""
    kw = dict(mode=mode, image_size=image_size, resize_ratio=resize_ratio, mean=mean, std=std,
              batch_size=batch_size, device=device, seed=seed, workers=workers, crop=crop, rrc_scale=rrc_scale,
              rrc_ratio=rrc_ratio, crop_padding=crop_padding, flip_p=flip_p, drop_last=drop_last, output=output)
    check_args(mode, image_size, resize_ratio, crop, output)
    if backend == "ffcv":
        from .ffcv import FFCVReader, beton_for

        split = split or ("val" if mode == "val" else "train")
        beton = Path(source) if str(source).endswith(".beton") else beton_for(source, split=split,
                                                                               class_map=class_map)
        return FFCVReader(beton, **kw)
    listing = list_image_folder(source, class_map)
    if backend == "dali":
        from .dali import DALIReader

        return DALIReader(listing, **kw)
    if backend == "pil":
        from .pil import PILReader

        return PILReader(listing, **kw)
    raise RD3Error(f"--loader: expected one of {', '.join(BACKENDS)}, got {backend!r}")


__all__ = ["BACKENDS", "LOADERS", "ImageList", "Reader", "available", "list_image_folder", "make_reader",
           "require", "resolve_loader"]
