"""FFCV: a .beton writer (ImageFolder or a built-in set such as Fashion-MNIST; raw or JPEG) and a reader.

``pip install 'rd3fast[ffcv]'`` after ``apt-get install pkg-config libopencv-dev libturbojpeg0-dev`` (see
setup.sh; FFCV 1.0.2 is installed ``--no-deps`` so that pip does not pull opencv-python next to the
headless build). Everything here runs on CPU: the reader's pipeline is decode -> [flip / translate] ->
ToTensor (-> ToDevice on CUDA), and the uint8 NHWC batch is turned into normalized N x 3 x S x S by
``backends.common.finish`` (the same ``aug.normalize`` as everywhere), so no cupy is needed. The first epoch of a
Loader JIT-compiles its pipeline (a few seconds).

Geometry: validation uses FFCV's ``CenterCropRGBImageDecoder(S, ratio)``: a centred square of side
``int(ratio * shorter side)`` resized to S (OpenCV INTER_AREA). That is torchvision's Resize + CenterCrop
up to interpolation and sub-pixel rounding, and exact for square images stored at S with ratio 1.
Train mode: ``RandomResizedCropRGBImageDecoder``; ``crop="random_crop"``: centre crop at ratio 1 +
``RandomTranslate(padding)``; then ``RandomHorizontalFlip(flip_p)``.

Each .beton gets a ``.beton.json`` beside it (classes, source, count, write mode); both are written
atomically. Images are stored RGB (gray repeated to 3 channels), labels as int.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ...atomic import atomic_tmp
from ...cachedir import cache_root
from ...errors import RD3Error
from ..backends.common import finish, require
from ..decode import default_workers
from ..folders import ImageList, folder_fingerprint, list_image_folder, listing_fingerprint
from ..datasets import BUILTIN, is_file_set, list_files, resolve_root
from ..sets import load_real

WRITE_MODES = ("raw", "jpg")

def _rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)

class _FolderItems:
    """Indexable (HWC uint8 RGB, label) over an ImageFolder listing, for FFCV's writer processes. A file that
    cannot be decoded is recorded in ``errors`` (a worker that raised would hang FFCV's writer) and written
    as a 1x1 placeholder; the writer then fails and removes the partial file."""

    def __init__(self, listing: ImageList, errors: str) -> None:
        self.files, self.labels, self.errors = listing.files, listing.labels, errors

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                im.load()
                arr = np.asarray(im.convert("RGB") if im.mode != "L" else im)
            return _rgb(arr), int(self.labels[i])
        except Exception as e:  # noqa: BLE001 - PIL raises assorted types per plugin
            with open(self.errors, "a") as f:
                f.write(f"cannot decode image {self.files[i]}: {' '.join(str(e).split())}\n")
            return np.zeros((1, 1, 3), np.uint8), int(self.labels[i])

class _ArrayItems:
    """Indexable (HWC uint8 RGB, label) over uint8 N x C x H x W tensors (a built-in set)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images.numpy(), labels.numpy()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return _rgb(self.images[i].transpose(1, 2, 0)), int(self.labels[i])

def write_beton(source: str | Path, out: str | Path, *, split: str = "train", write_mode: str = "raw",
                jpeg_quality: int = 90, max_resolution: int | None = None, class_map: str | Path | None = None,
                workers: int | None = None, image_size: int = 0, data_root: str | Path | None = None) -> Path:
    """Write ``source`` (an ImageFolder, or a dataset name + ``split``, found under ``data_root``) to the
    .beton ``out`` (+ .json).

    write_mode raw stores pixels, jpg JPEG-compresses them at ``jpeg_quality``; ``max_resolution`` caps the
    longer side (FFCV's writer, INTER_AREA). Built-ins are written at ``image_size`` (0: their default)."""
    require("ffcv")
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    if write_mode not in WRITE_MODES:
        raise RD3Error(f"--write-mode: expected one of {', '.join(WRITE_MODES)}, got {write_mode!r}")
    if not 1 <= jpeg_quality <= 100:
        raise RD3Error(f"--jpeg-quality: expected 1..100, got {jpeg_quality}")
    out = Path(out)
    if out.suffix != ".beton":
        raise RD3Error(f"--out {out}: an FFCV file must end in .beton")
    out.parent.mkdir(parents=True, exist_ok=True)
    if str(source) in BUILTIN and not is_file_set(str(source)):
        real = load_real(str(source), split, image_size=image_size, data_root=data_root)
        items: Any = _ArrayItems(real.images, real.labels)
        classes, origin = list(real.classes), f"{source}:{split}"
    else:
        listing = (list_files(str(source), split, data_root) if str(source) in BUILTIN
                   else list_image_folder(source, class_map))
        classes, origin = list(listing.classes), str(Path(listing.root).resolve())
        items = None
    tmp = str(atomic_tmp(out))
    errors = tmp + ".errors"
    try:
        if items is None:
            items = _FolderItems(listing, errors)
        fields = {"image": RGBImageField(write_mode=write_mode, max_resolution=max_resolution,
                                         jpeg_quality=jpeg_quality), "label": IntField()}
        n_workers = max(1, min(workers or default_workers(), len(items)))
        DatasetWriter(tmp, fields, num_workers=n_workers).from_indexed_dataset(
            items, chunksize=max(1, min(100, math.ceil(len(items) / n_workers))))
        if os.path.exists(errors) and os.path.getsize(errors):
            raise RD3Error(Path(errors).read_text().splitlines()[0])
        meta = {"schema": 1, "source": origin, "classes": classes, "count": len(items), "write_mode": write_mode,
                "jpeg_quality": jpeg_quality if write_mode == "jpg" else None, "max_resolution": max_resolution}
        meta_tmp = tmp + ".json"
        Path(meta_tmp).write_text(json.dumps(meta, indent=1))
        os.replace(tmp, out)
        os.replace(meta_tmp, str(out) + ".json")
    finally:
        for t in (tmp, errors, tmp + ".json"):
            if os.path.exists(t):
                os.unlink(t)
    return out

def read_meta(beton: str | Path) -> dict[str, Any]:
    p = Path(str(beton) + ".json")
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise RD3Error(f"{beton} has no {p.name} beside it (classes, count); write it with "
                       "`python -m rd3fast.prepare beton`") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RD3Error(f"cannot read {p}: {e}") from None

def beton_for(source: str | Path, *, split: str = "train", class_map: str | Path | None = None,
              data_root: str | Path | None = None,
              write_mode: str | None = None, jpeg_quality: int = 95, max_resolution: int | None = None,
              cache_dir: str | Path | None = None, workers: int | None = None) -> Path:
    """The .beton of ``source`` in the cache (``<cache>/beton/<key>.beton``), written on first use. The key
    covers the folder listing (names, sizes, mtimes) or the built-in + split, and the write settings.
    write_mode None: raw for built-ins (small, lossless), jpg (quality 95) for folders (raw pixels of a
    large JPEG folder would take ~10x its size)."""
    arrays = str(source) in BUILTIN and not is_file_set(str(source))
    if write_mode is None:
        write_mode = "raw" if arrays else "jpg"
    if arrays:  # the arrays' content: what the named set holds under this data root
        origin: Any = {"dataset": f"{source}:{split}", "data_root": str(resolve_root(str(source), data_root))}
    elif str(source) in BUILTIN:
        origin = listing_fingerprint(list_files(str(source), split, data_root))
    else:
        origin = folder_fingerprint(source, class_map)
    blob = json.dumps({"source": origin, "write_mode": write_mode, "jpeg_quality": jpeg_quality,
                       "max_resolution": max_resolution, "ffcv_schema": 1}, sort_keys=True).encode()
    out = cache_root(cache_dir) / "beton" / (hashlib.sha256(blob).hexdigest()[:32] + ".beton")
    if not (out.is_file() and Path(str(out) + ".json").is_file()):
        write_beton(source, out, split=split, write_mode=write_mode, jpeg_quality=jpeg_quality,
                    max_resolution=max_resolution, class_map=class_map, workers=workers, data_root=data_root)
    return out

class FFCVReader:
    """(x, y) batches from an FFCV Loader over a .beton (see the package docstring); a ``for`` loop = one epoch."""

    def __init__(self, beton: str | Path, *, mode: str, image_size: int, resize_ratio: float,
                 mean: Sequence[float], std: Sequence[float], batch_size: int, device: Any, seed: int,
                 workers: int | None, crop: str, rrc_scale: Sequence[float], rrc_ratio: Sequence[float],
                 crop_padding: int, flip_p: float, drop_last: bool, output: str) -> None:
        require("ffcv")
        from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder, RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import RandomHorizontalFlip, RandomTranslate, ToDevice, ToTensor

        self.beton = Path(beton)
        if not self.beton.is_file():
            raise RD3Error(f"--loader ffcv: {self.beton} does not exist")
        self.meta = read_meta(self.beton)
        self.classes = list(self.meta["classes"])
        self.device = torch.device(device)
        self.mean, self.std, self.output = tuple(mean), tuple(std), output
        size = (image_size, image_size)
        if mode == "val":
            image: list[Any] = [CenterCropRGBImageDecoder(size, ratio=resize_ratio)]
        elif crop == "rrc":
            image = [RandomResizedCropRGBImageDecoder(size, scale=tuple(rrc_scale), ratio=tuple(rrc_ratio))]
        else:
            image = [CenterCropRGBImageDecoder(size, ratio=1.0)]
            if crop == "random_crop" and crop_padding:
                image.append(RandomTranslate(padding=crop_padding))
        if mode == "train" and flip_p > 0:
            image.append(RandomHorizontalFlip(flip_prob=flip_p))
        image.append(ToTensor())
        label: list[Any] = [IntDecoder(), ToTensor()]
        if self.device.type == "cuda":
            image.append(ToDevice(self.device, non_blocking=True))
            label.append(ToDevice(self.device, non_blocking=True))
        try:
            self.loader = Loader(
                str(self.beton), batch_size=batch_size, num_workers=workers or default_workers(), os_cache=True,
                order=OrderOption.RANDOM if mode == "train" else OrderOption.SEQUENTIAL, seed=seed,
                drop_last=drop_last and mode == "train", pipelines={"image": image, "label": label})
        except Exception as e:  # noqa: BLE001 - FFCV raises assorted types for a bad file
            raise RD3Error(f"--loader ffcv: cannot open {self.beton}: {type(e).__name__}: {e}") from None

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_images(self) -> int:
        return int(self.loader.reader.num_samples)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            # FFCV reuses its batch buffers: the labels and uint8 images are copied before they leave here
            # (normalization makes a new tensor anyway).
            x, y = x.permute(0, 3, 1, 2), y.clone()  # NHWC -> NCHW
            if self.output == "uint8":
                x = x.contiguous()
            yield finish(x, y, self.mean, self.std, self.output, self.device,
                         channels_last=self.device.type == "cuda")
