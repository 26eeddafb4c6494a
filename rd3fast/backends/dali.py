"""NVIDIA DALI reader over an ImageFolder of JPEG/PNG files (``pip install 'rd3fast[dali]'``).

On a CUDA device the decoder is ``mixed`` (nvJPEG on the GPU) and resize/crop/flip run on the GPU; without
one the pipeline is built with ``device_id=None`` and everything runs on the CPU threads. The pipeline
emits uint8 HWC images which become N x 3 x S x S and are normalized by ``backends.finish`` (the same
``aug.normalize`` as everywhere), so batches match the PIL reader's up to the decoders' JPEG rounding.

Validation geometry is computed inside the graph from each image's header so that it is torchvision's:
the shorter side becomes ``round(S / resize_ratio)``, the longer one ``int(short * long / short_side)``,
and the centre crop starts at Python's ``round((side - S) / 2)`` (round half to even).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch

from ..errors import RD3Error
from . import ImageList, finish, require, short_side


def _half_even(d: Any) -> Any:
    """Python's round(d / 2) for a non-negative integer DataNode d (ties to even), in DALI arithmetic."""
    k = d // 2
    return k + (d - 2 * k) * (k - 2 * (k // 2))


def _pipeline(listing: ImageList, *, mode: str, size: int, short: int, crop: str, rrc_scale: Sequence[float],
              rrc_ratio: Sequence[float], padding: int, flip_p: float, gpu: bool, rseed: int) -> Any:
    dali = require("dali")
    from nvidia.dali import fn, types

    decoder = "mixed" if gpu else "cpu"
    train = mode == "train"
    jpegs, labels = fn.readers.file(files=list(listing.files), labels=list(listing.labels), name="Reader",
                                    shuffle_after_epoch=train, seed=rseed, pad_last_batch=False)
    if not train:
        shape = fn.peek_image_shape(jpegs, dtype=types.INT32)
        h, w = shape[0], shape[1]
        portrait = fn.cast(w <= h, dtype=types.INT32)
        rx = portrait * short + (1 - portrait) * ((short * w) // h)
        ry = portrait * ((short * h) // w) + (1 - portrait) * short
        img = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
        img = fn.resize(img, resize_x=fn.cast(rx, dtype=types.FLOAT), resize_y=fn.cast(ry, dtype=types.FLOAT),
                        interp_type=types.INTERP_LINEAR, antialias=True)
        start = fn.stack(_half_even(ry - size), _half_even(rx - size))
        img = fn.slice(img, start=start, shape=[size, size], axes=[0, 1])
    else:
        if crop == "rrc":
            img = fn.decoders.image_random_crop(jpegs, device=decoder, output_type=types.RGB,
                                                random_area=list(rrc_scale), random_aspect_ratio=list(rrc_ratio),
                                                num_attempts=10, seed=rseed)
        else:
            img = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
        img = fn.resize(img, resize_x=float(size), resize_y=float(size), interp_type=types.INTERP_LINEAR,
                        antialias=True)
        if crop == "random_crop" and padding:
            img = fn.crop(img, crop=(size + 2 * padding, size + 2 * padding), out_of_bounds_policy="pad",
                          fill_values=0)
            positions = [i / (2 * padding) for i in range(2 * padding + 1)]  # whole-pixel offsets, uniform
            img = fn.crop(img, crop=(size, size), crop_pos_x=fn.random.uniform(values=positions),
                          crop_pos_y=fn.random.uniform(values=positions))
        if flip_p > 0:
            img = fn.flip(img, horizontal=fn.random.coin_flip(probability=flip_p, dtype=types.INT32))
    img = fn.transpose(img, perm=[2, 0, 1])  # HWC -> CHW, still uint8
    if gpu:
        labels = labels.gpu()
    del dali
    return img, labels


class DALIReader:
    """(x, y) batches from a DALI pipeline (see the package docstring); one ``for`` loop = one epoch."""

    def __init__(self, listing: ImageList, *, mode: str, image_size: int, resize_ratio: float,
                 mean: Sequence[float], std: Sequence[float], batch_size: int, device: Any, seed: int,
                 workers: int | None, crop: str, rrc_scale: Sequence[float], rrc_ratio: Sequence[float],
                 crop_padding: int, flip_p: float, drop_last: bool, output: str) -> None:
        require("dali")
        from nvidia.dali import pipeline_def
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from ..data import _default_workers

        self.device = torch.device(device)
        self.classes = list(listing.classes)
        gpu = self.device.type == "cuda"
        if gpu and not torch.cuda.is_available():
            raise RD3Error("--loader dali on cuda: no CUDA device is visible")
        self.n, self.batch_size = len(listing.files), batch_size
        self.drop_last = drop_last and mode == "train"
        self.mean, self.std, self.output = tuple(mean), tuple(std), output
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if gpu else None
        threads = workers or _default_workers()
        build = pipeline_def(_pipeline, batch_size=batch_size, num_threads=threads, device_id=device_id,
                             seed=seed, prefetch_queue_depth=2)
        self.pipe = build(listing, mode=mode, size=image_size, short=short_side(image_size, resize_ratio),
                          crop=crop, rrc_scale=rrc_scale, rrc_ratio=rrc_ratio, padding=crop_padding,
                          flip_p=flip_p, gpu=gpu, rseed=seed)
        try:
            self.pipe.build()
            self.it = DALIGenericIterator(
                self.pipe, ["x", "y"], reader_name="Reader", auto_reset=True,
                last_batch_policy=LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL)
        except RuntimeError as e:
            raise RD3Error(f"--loader dali: cannot build the pipeline over {listing.root}: "
                           f"{str(e).strip().splitlines()[0]}") from None

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        it = iter(self.it)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except RuntimeError as e:  # a corrupt file: DALI names it in the message
                self.it.reset()
                msg = " ".join(str(e).split())
                raise RD3Error(f"--loader dali: cannot decode an image: {msg[:500]}") from None
            out = batch[0]
            yield finish(out["x"], out["y"], self.mean, self.std, self.output, self.device,
                         channels_last=self.device.type == "cuda")
