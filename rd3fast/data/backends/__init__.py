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

Images and labels come from the same listing as the PIL path (``folders.list_image_folder``: sorted class
folders or a class map, files sorted by name), so labels and order agree with ``data.load_real`` exactly.
DALI and FFCV are imported only when used; a missing one is an RD3Error naming the pip extra.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ...errors import RD3Error
from ..backends.common import BACKENDS, CROPS, LOADERS, MODES, Reader, available, check_args, require
from ..datasets import BUILTIN, is_file_set, list_files
from ..folders import ImageList, list_image_folder


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


def make_reader(backend: str, source: str | Path | ImageList, *, mode: str = "val", image_size: int,
                resize_ratio: float = 0.875, mean: Sequence[float] = (0.485, 0.456, 0.406),
                std: Sequence[float] = (0.229, 0.224, 0.225), batch_size: int = 256,
                device: torch.device | str = "cpu", class_map: str | Path | None = None, seed: int = 0,
                workers: int | None = None, crop: str = "rrc", rrc_scale: Sequence[float] = (0.08, 1.0),
                rrc_ratio: Sequence[float] = (3 / 4, 4 / 3), crop_padding: int = 4, flip_p: float = 0.5,
                drop_last: bool = False, output: str = "float", split: str | None = None,
                data_root: str | Path | None = None) -> Reader:
    """One reader over an ImageFolder, a listing, or a named dataset (pil, dali: a file set's split,
    ``split`` defaulting to the mode's) or a .beton file (ffcv; anything else is written to a .beton in the
    cache first). ``data_root``: where a named dataset lies. Arguments as in the module docstring."""
    kw = dict(mode=mode, image_size=image_size, resize_ratio=resize_ratio, mean=mean, std=std,
              batch_size=batch_size, device=device, seed=seed, workers=workers, crop=crop, rrc_scale=rrc_scale,
              rrc_ratio=rrc_ratio, crop_padding=crop_padding, flip_p=flip_p, drop_last=drop_last, output=output)
    check_args(mode, image_size, resize_ratio, crop, output)
    if backend == "ffcv":
        from ..backends.ffcv import FFCVReader, beton_for

        split = split or ("val" if mode == "val" else "train")
        beton = Path(source) if str(source).endswith(".beton") else beton_for(source, split=split,
                                                                               class_map=class_map,
                                                                               data_root=data_root)
        return FFCVReader(beton, **kw)
    listing = listing_of(source, class_map, split or ("val" if mode == "val" else "train"), data_root)
    if backend == "dali":
        from ..backends.dali import DALIReader

        return DALIReader(listing, **kw)
    if backend == "pil":
        from ..backends.pil import PILReader

        return PILReader(listing, **kw)
    raise RD3Error(f"--loader: expected one of {', '.join(BACKENDS)}, got {backend!r}")


def listing_of(source: str | Path | ImageList, class_map: str | Path | None = None, split: str = "train",
               data_root: str | Path | None = None) -> ImageList:
    """The files and labels a reader reads: a listing as it is, a named file dataset's split (Tiny-ImageNet,
    the ImageNet family) from its native layout, or an ImageFolder's listing."""
    if isinstance(source, ImageList):
        return source
    if str(source) in BUILTIN:
        if not is_file_set(str(source)):
            raise RD3Error(f"{source} is read whole into memory (an array set), not streamed by a reader; "
                           "use --loader ffcv (its .beton) or the resident path")
        return list_files(str(source), split, data_root)
    return list_image_folder(source, class_map)


__all__ = ["listing_of", "BACKENDS", "CROPS", "LOADERS", "MODES", "Reader", "available", "make_reader", "require",
           "resolve_loader"]
