"""The PIL reference reader: a torch DataLoader whose worker processes decode with PIL.

Validation mode decodes each image with ``decode.decode_image`` and the same ``Fit`` (Resize(shorter side)
+ CenterCrop) as ``data.load_real``, so its pixels are the reference the other backends are compared to.
Train mode is the usual torchvision recipe on PIL images (RandomResizedCrop or resize + padded random
crop, then flip). Labels and order come from ``folders.list_image_folder``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ...errors import RD3Error
from ..backends.common import finish
from ..decode import Fit, decode_image, default_workers
from ..folders import ImageList


def _to_chw3(arr: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(arr if arr.flags.writeable and arr.flags.c_contiguous else np.array(arr))
    if t.dim() == 2:
        return t.unsqueeze(0).expand(3, -1, -1).contiguous()
    return t.permute(2, 0, 1).contiguous()


class _Images(torch.utils.data.Dataset):
    def __init__(self, listing: ImageList, mode: str, image_size: int, resize_ratio: float, crop: str,
                 rrc_scale: Sequence[float], rrc_ratio: Sequence[float], crop_padding: int, flip_p: float):
        self.files, self.labels = listing.files, listing.labels
        self.mode, self.size, self.crop = mode, image_size, crop
        self.fit = Fit.centre_crop(image_size, resize_ratio)
        self.rrc_scale, self.rrc_ratio = tuple(rrc_scale), tuple(rrc_ratio)
        self.padding, self.flip_p = crop_padding, flip_p

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.mode == "val":
            return _to_chw3(decode_image(Path(self.files[i]), self.fit)), self.labels[i]
        return self._train_item(i), self.labels[i]

    def _train_item(self, i: int) -> torch.Tensor:
        import torchvision.transforms as T
        import torchvision.transforms.functional as TF

        path = self.files[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
        except Exception as e:  # PIL raises assorted types per plugin
            raise RD3Error(f"cannot decode image {path}: {e}") from None
        s = self.size
        if self.crop == "rrc":
            im = T.RandomResizedCrop(s, scale=self.rrc_scale, ratio=self.rrc_ratio)(im)
        else:
            im = im.resize((s, s), Image.Resampling.BILINEAR)
            if self.crop == "random_crop" and self.padding:
                im = T.RandomCrop(s, padding=self.padding)(im)
        if self.flip_p and float(torch.rand(())) < self.flip_p:
            im = TF.hflip(im)
        return _to_chw3(np.asarray(im))


class PILReader:
    """(x, y) batches from a DataLoader of PIL-decoding worker processes (see the package docstring)."""

    def __init__(self, listing: ImageList, *, mode: str, image_size: int, resize_ratio: float,
                 mean: Sequence[float], std: Sequence[float], batch_size: int, device: Any, seed: int,
                 workers: int | None, crop: str, rrc_scale: Sequence[float], rrc_ratio: Sequence[float],
                 crop_padding: int, flip_p: float, drop_last: bool, output: str) -> None:
        self.listing, self.mode, self.batch_size = listing, mode, batch_size
        self.mean, self.std, self.output = tuple(mean), tuple(std), output
        self.device = torch.device(device)
        self.classes = list(listing.classes)
        self.workers = default_workers() if workers is None else workers
        self.drop_last = drop_last and mode == "train"
        self.seed, self.epoch = seed, 0
        self.dataset = _Images(listing, mode, image_size, resize_ratio, crop, rrc_scale, rrc_ratio,
                               crop_padding, flip_p)

    def __len__(self) -> int:
        n = len(self.listing.files)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=self.mode == "train", generator=gen,
            num_workers=self.workers, drop_last=self.drop_last, pin_memory=self.device.type == "cuda",
            persistent_workers=False)
        for x, y in loader:
            yield finish(x, y, self.mean, self.std, self.output, self.device,
                         channels_last=self.device.type == "cuda")
