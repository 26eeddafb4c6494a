"""PIL decoding, the bottom of the data side: image files -> uint8 arrays, in worker processes when it pays.

Every path that turns image files into pixels with PIL goes through here (distilled ImageFolders, real
validation folders, the validation cache, the PIL reader), so they all see the same pixels: the same mode
handling and the same ``Fit`` geometry (a square resize, or torchvision's Resize(shorter side) +
CenterCrop computed the way torchvision computes it).
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import RD3Error
from ..progress import bar

PARALLEL_MIN = 256  # below this many files a process pool costs more than it saves


def short_side(image_size: int, resize_ratio: float) -> int:
    """The shorter side before the centre crop (256 for 224 at 0.875): the one formula every decoder uses."""
    return round(image_size / resize_ratio)


@dataclass(frozen=True)
class Fit:
    """Geometry applied to each PIL image at decode. square > 0: resize to square x square (--load-size);
    short > 0: torchvision Resize(short) (shorter side) then CenterCrop(crop)."""

    square: int = 0
    short: int = 0
    crop: int = 0

    @classmethod
    def centre_crop(cls, image_size: int, resize_ratio: float) -> "Fit":
        """The evaluation transform: Resize(round(image_size / resize_ratio)) + CenterCrop(image_size)."""
        return cls(short=short_side(image_size, resize_ratio), crop=image_size)

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


# PIL's modes for one channel of 16-bit samples: a 16-bit gray PNG opens as I;16 (I;16B/L/N are the byte
# orders), and older Pillows open it as I (32-bit ints holding 0..65535).
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
SIXTEEN_BIT_MAX = 65535


def gray16_to_uint8(samples: np.ndarray, path: Path) -> np.ndarray:
    """16-bit gray samples -> uint8, the full range 0..65535 onto 0..255 (round(v * 255 / 65535)).

    PIL's own ``convert("L")`` clips at 255 instead of scaling, which turns most of a 16-bit image white.
    16-bit colour PNGs need nothing here: PIL opens them as 8-bit RGB(A) by keeping each sample's high byte
    (floor(v / 256), within one level of the rounded scale)."""
    v = samples.astype(np.int64)
    lo, hi = int(v.min()), int(v.max())
    if lo < 0 or hi > SIXTEEN_BIT_MAX:  # mode I can hold any int32; a 16-bit image cannot
        raise RD3Error(f"cannot decode image {path}: 16-bit samples range over [{lo}, {hi}]; expected "
                       f"[0, {SIXTEEN_BIT_MAX}]")
    # Integer arithmetic, half up: v * 255 / 65535 = v / 257 is never exactly half-way for integer v.
    return ((v * 255 + SIXTEEN_BIT_MAX // 2) // SIXTEEN_BIT_MAX).astype(np.uint8)


def decode_image(path: Path, fit: Fit) -> np.ndarray:
    """One image as uint8 H x W (modes L and 16-bit gray) or H x W x 3 (every other mode, converted to RGB)."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now so a truncated file fails here, with its name
            if im.mode in SIXTEEN_BIT_MODES:
                # Scaled to 8 bits before ``fit``, so every image is resized as 8-bit gray.
                im = Image.fromarray(gray16_to_uint8(np.asarray(im), path))  # 2-D uint8: mode L
            elif im.mode not in ("L", "RGB"):
                # RGBA/LA drop alpha (no compositing) and P/CMYK map to RGB, as torchvision's loader does.
                im = im.convert("RGB")
            return np.asarray(fit.apply(im))
    except RD3Error:
        raise
    except Exception as e:  # PIL raises assorted types (OSError, SyntaxError, ValueError...) per plugin
        raise RD3Error(f"cannot decode image {path}: {e}") from None


def default_workers() -> int:
    """Decode processes (or reader threads) when the caller does not say: the cores, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def _pool_context() -> Any:
    # fork on Linux: workers inherit the imported modules instead of re-importing torch (as DataLoader
    # does); they only run PIL/numpy, so an initialized CUDA context in the parent is never touched.
    return mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context()


def _worker_signals() -> None:
    """Pool initializer: a forked worker inherits the parent's Python signal handlers, and the CLIs turn
    SIGTERM into a checkpoint request (``checkpoint.StopRequest``) that only the parent's loop reads. The pool
    stops its workers with SIGTERM, so a worker keeping that handler never exits and the parent waits for
    it forever. Workers get the defaults back; Ctrl-C is left to the parent, which then stops the pool."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)


class _Serial:
    """The Pool surface ``decoded`` uses, run in this process."""

    def imap(self, fn: Any, items: Iterable, chunksize: int = 1) -> Iterator:
        return map(fn, items)

    def __enter__(self) -> "_Serial":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


@contextlib.contextmanager
def decoded(files: Sequence[Path], fit: Fit, workers: int | None = None,
            parallel_min: int | None = None) -> Iterator[Iterator[np.ndarray]]:
    """``with decoded(files, fit) as arrays:`` ``decode_image`` of every file, in order: from ``workers``
    processes (None: ``default_workers()``) when there are more than ``parallel_min`` files (None:
    ``PARALLEL_MIN``) and more than one worker, else in this process. Leaving the block (a bad image, a size
    mismatch) stops the pool."""
    n = len(files)
    workers = default_workers() if workers is None else workers
    parallel_min = PARALLEL_MIN if parallel_min is None else parallel_min
    job = partial(decode_image, fit=fit)
    pool_or_serial = _pool_context().Pool(workers, initializer=_worker_signals) if workers > 1 and n > parallel_min \
        else _Serial()
    with pool_or_serial as pool:
        yield pool.imap(job, files, chunksize=max(1, min(64, n // (8 * max(workers, 1)))))


def decode_many(files: Sequence[Path], fit: Fit, workers: int | None, desc: str,
                progress: bool = True) -> torch.Tensor:
    """Decode `files` into one uint8 N x C x H x W tensor. All gray -> C=1; any colour -> C=3 (gray
    images repeated, which is what PIL's L -> RGB conversion does). Sizes must agree after `fit`. A bar
    (on a terminal, unless ``progress`` is off) shows sets large enough to decode in parallel."""
    n = len(files)
    out: np.ndarray | None = None
    colour = False
    with decoded(files, fit, workers) as arrays:
        for i, arr in enumerate(bar(arrays, total=n, desc=desc, unit="img", enabled=progress and n > PARALLEL_MIN)):
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
