"""A resident uint8 image set with the DataLoader surface, yielding finished (augmented, mixed) batches.

The set lives on the training device as uint8 (a 10k-image 224 px set is 1.5 GB), so a batch is an index
gather plus the augmentation: no workers, no host copies. All randomness comes from one CPU
torch.Generator re-seeded from (seed, epoch), so the same seed gives the same batches whatever else the
run does, and ``set_epoch`` works as with DistributedSampler.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from . import aug
from .aug import AugParams, AugSpec


@dataclass
class Batch:
    x: torch.Tensor  # (B, C, S, S) normalized, mixed
    y: torch.Tensor  # int64 (B,) hard labels of the samples
    y_partner: torch.Tensor  # int64 (B,) hard labels of the mixing partners
    lam: torch.Tensor  # float32 (): weight of y in the mixed target (1.0 when the batch is not mixed)
    params: AugParams  # on the device; what produced x (for soft-label caches and kernel tests)
    soft: torch.Tensor | None = None  # (B, K) the set's own soft labels of the samples, when it has them
    soft_partner: torch.Tensor | None = None  # (B, K) those of the mixing partners (None when not mixed)


def pick_backend(requested: str, device: torch.device) -> str:
    """'auto' means the Triton kernels on CUDA when they import, the torch spec elsewhere."""
    if requested == "torch" or (requested == "auto" and device.type != "cuda"):
        return "torch"
    try:
        from rd3fast.kernels import fused_augment  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import problem means "no kernels here"
        if requested == "triton":
            raise RuntimeError(f"--aug-backend triton: the Triton kernels are unavailable ({e})") from e
        return "torch"
    return "triton"


class ResidentLoader:
    """``for batch in loader`` yields ``Batch``; ``len(loader)`` batches per epoch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, spec: AugSpec, batch_size: int, *,
                 seed: int = 0, device: torch.device | str = "cpu", drop_last: bool = False,
                 shuffle: bool = True, dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 backend: str = "auto", soft: torch.Tensor | None = None) -> None:
        # uint8 pixels; the DSA pipeline also takes float32 model-space values (normalized, maybe whitened).
        pixel_types = (torch.uint8, torch.float32) if spec.aug == "dsa" else (torch.uint8,)
        if images.dtype not in pixel_types or images.dim() != 4:
            raise ValueError(f"ResidentLoader expects {' or '.join(map(str, pixel_types))} N x C x H x W images, "
                             f"got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels) or (soft is not None and len(soft) != len(labels)):
            raise ValueError(f"{len(images)} images but {len(labels)} labels"
                             + ("" if soft is None else f" and {len(soft)} soft labels"))
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.soft = None if soft is None else soft.to(self.device, torch.float32)
        self.spec, self.batch_size, self.seed = spec, batch_size, seed
        self.drop_last, self.shuffle, self.dtype, self.channels_last = drop_last, shuffle, dtype, channels_last
        # The Triton kernels implement the standard pipeline; DSA runs as the torch spec.
        self.backend = "torch" if spec.aug == "dsa" else pick_backend(backend, self.device)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self, epoch: int) -> torch.Generator:
        # Distinct, reproducible streams per (seed, epoch); the constant keeps seeds 0,1,2 far apart.
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def draws(self, epoch: int | None = None) -> Iterator[tuple[torch.Tensor, AugParams]]:
        """(indices, params) of each batch of an epoch, on the device: everything random, nothing applied.

        Kept apart from ``transform`` so that a CUDA graph can replay the transform on static buffers
        and a soft-label cache can record and replay the draws.
        """
        gen = self.generator(self.epoch if epoch is None else epoch)
        n = len(self.images)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        _, _, h, w = self.images.shape
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            params = aug.sample_params(self.spec, len(idx), h, w, gen)
            params, [idx] = params.to_with(self.device, idx)  # one pinned copy per step on CUDA
            yield idx, params

    def batch(self, idx: torch.Tensor, params: AugParams) -> Batch:
        y = self.labels[idx]
        soft = soft_partner = None
        if self.soft is not None:
            soft = self.soft[idx]
            soft_partner = soft[params.partner] if params.mix != "none" else None
        return Batch(x=self.transform(idx, params), y=y, y_partner=y[params.partner], lam=params.lam,
                     params=params, soft=soft, soft_partner=soft_partner)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1  # without set_epoch, the next pass still gets fresh randomness
        for idx, params in self.draws(epoch):
            yield self.batch(idx, params)

    def transform(self, idx: torch.Tensor, params: AugParams) -> torch.Tensor:
        if self.backend == "triton":
            from rd3fast.kernels import fused_augment
            return fused_augment(self.images, idx, params, self.spec, dtype=self.dtype,
                                 channels_last=self.channels_last)
        return aug.augment(self.images[idx], params, self.spec, dtype=self.dtype, channels_last=self.channels_last)
