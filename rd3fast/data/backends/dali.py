"""NVIDIA DALI reader over an ImageFolder of JPEG/PNG files (``pip install 'rd3fast[dali]'``).

On a CUDA device the decoder is ``mixed`` (nvJPEG on the GPU) and resize/crop/flip run on the GPU; without
one the pipeline is built with ``device_id=None`` and everything runs on the CPU threads. The pipeline
emits uint8 HWC images which become N x 3 x S x S and are normalized by ``backends.common.finish`` (the same
``aug.normalize`` as everywhere), so batches match the PIL reader's up to the decoders' JPEG rounding.

Validation geometry is computed inside the graph from each image's header so that it is torchvision's:
the shorter side becomes ``round(S / resize_ratio)``, the longer one ``int(short * long / short_side)``,
and the centre crop starts at Python's ``round((side - S) / 2)`` (round half to even).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch

from ...errors import RD3Error
from ..backends.common import finish, require
from ..decode import default_workers, short_side
from ..folders import ImageList

_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG SOI + marker, PNG signature


def _bad_header(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        return f"cannot read image {path}: {e}"
    return None if head.startswith(_MAGIC) else f"cannot decode image {path}: not a JPEG or PNG file"


def check_headers(files: Sequence[str], threads: int = 16) -> None:
    """RD3Error naming the first file that is not a JPEG/PNG by its first bytes. DALI 2.4's CPU decoder can
    crash the process (segfault) on such a file instead of raising; a damaged JPEG/PNG raises normally."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        for msg in pool.map(_bad_header, files, chunksize=256):
            if msg:
                raise RD3Error(f"--loader dali: {msg}")


def _half_even(d: Any) -> Any:
    """Python's round(d / 2) for a non-negative integer DataNode d (ties to even), in DALI arithmetic."""
    k = d // 2
    return k + (d - 2 * k) * (k - 2 * (k // 2))


def _pipeline(listing: ImageList, *, mode: str, size: int, short: int, crop: str, rrc_scale: Sequence[float],
              rrc_ratio: Sequence[float], padding: int, flip_p: float, gpu: bool, rseed: int) -> Any:
    from nvidia.dali import fn, types

    decoder = "mixed" if gpu else "cpu"
    train = mode == "train"
    jpegs, labels = fn.readers.file(files=list(listing.files), labels=list(listing.labels), name="Reader",
                                    shuffle_after_epoch=train, seed=rseed, pad_last_batch=True)
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
    return img, labels


class DALIReader:
    """(x, y) batches from a DALI pipeline (see the package docstring); one ``for`` loop = one epoch.

    The pipeline is run batch by batch (``Pipeline.run``) rather than through DALIGenericIterator, whose
    constructor decodes the first batch and crashes the process (segfault, DALI 2.4) when that batch holds
    a corrupt file. The reader pads its last batch (``pad_last_batch``), so each epoch is exactly
    ceil(n / batch) runs; the padding is cut off here (or the short batch dropped with ``drop_last``)."""

    def __init__(self, listing: ImageList, *, mode: str, image_size: int, resize_ratio: float,
                 mean: Sequence[float], std: Sequence[float], batch_size: int, device: Any, seed: int,
                 workers: int | None, crop: str, rrc_scale: Sequence[float], rrc_ratio: Sequence[float],
                 crop_padding: int, flip_p: float, drop_last: bool, output: str) -> None:
        require("dali")
        from nvidia.dali import pipeline_def

        self.device = torch.device(device)
        self.classes = list(listing.classes)
        self.listing, self.mode = listing, mode
        gpu = self.device.type == "cuda"
        if gpu and not torch.cuda.is_available():
            raise RD3Error("--loader dali on cuda: no CUDA device is visible")
        self.n, self.batch_size = len(listing.files), batch_size
        self.drop_last = drop_last and mode == "train"
        self.mean, self.std, self.output = tuple(mean), tuple(std), output
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if gpu else None
        threads = workers or default_workers()
        build = pipeline_def(_pipeline, batch_size=batch_size, num_threads=threads, device_id=device_id,
                             seed=seed, prefetch_queue_depth=2)
        self.pipe = build(listing, mode=mode, size=image_size, short=short_side(image_size, resize_ratio),
                          crop=crop, rrc_scale=rrc_scale, rrc_ratio=rrc_ratio, padding=crop_padding,
                          flip_p=flip_p, gpu=gpu, rseed=seed)
        check_headers(listing.files)
        self.runs_per_epoch = math.ceil(self.n / batch_size)
        self.pending = 0  # runs left of an epoch that a caller stopped iterating early
        self.failed: str | None = None
        try:
            self.pipe.build()
        except RuntimeError as e:
            raise RD3Error(f"--loader dali: cannot build the pipeline over {listing.root}: "
                           f"{' '.join(str(e).split())[:400]}") from None

    def _find_bad_file(self, index: int) -> str | None:
        """Val mode reads in file order: the failing batch (or one prefetched after it) holds the bad file."""
        from PIL import Image

        if self.mode != "val":
            return None
        lo = index * self.batch_size
        for f in self.listing.files[lo:lo + 4 * self.batch_size]:
            try:
                with Image.open(f) as im:
                    im.load()
            except Exception:  # noqa: BLE001 - PIL raises assorted types per plugin
                return f
        return None

    def _run(self, index: int) -> tuple[Any, Any]:
        if self.failed:
            raise RD3Error(self.failed)
        try:
            return self.pipe.run()
        except RuntimeError as e:  # a file DALI cannot decode; its message does not name the file
            culprit = self._find_bad_file(index)
            self.failed = (f"--loader dali: cannot decode image {culprit}" if culprit else
                           f"--loader dali: cannot decode an image of {self.listing.root}: "
                           f"{' '.join(str(e).split())[:400]}")
            raise RD3Error(self.failed) from None

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else self.runs_per_epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

        for _ in range(self.pending):  # finish the epoch an earlier loop left, to stay epoch-aligned
            self._run(0)
        self.pending = self.runs_per_epoch
        for index in range(self.runs_per_epoch):
            images, labels = self._run(index)
            self.pending -= 1
            keep = min(self.batch_size, self.n - index * self.batch_size)
            if keep < self.batch_size and self.drop_last:
                continue
            x = to_torch_tensor(images.as_tensor(), copy=True)[:keep]
            y = to_torch_tensor(labels.as_tensor(), copy=True)[:keep]
            yield finish(x, y, self.mean, self.std, self.output, self.device,
                         channels_last=self.device.type == "cuda")
