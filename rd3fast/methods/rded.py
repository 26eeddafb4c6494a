"""RDED's selection (LINs-lab/RDED synthesize/main.py, utils.py).

Per class ``candidates`` real images, ``num_crop`` RandomResizedCrop(size // factor, ratio 1) crops of each,
every crop scored by the teacher's cross-entropy on its true class (the crop zero-padded to full size in
normalized space), the best crop per image kept, the ``ipc * factor**2`` best images kept, stitched
factor x factor (nearest resize into the grid cells, remainder pixels to the first rows/columns) into
``ipc`` images.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.sets import ImageSet
from ..engine.aug import resized_crop, sample_rrc_boxes
from ..engine.teacher import Relabeler, teacher_input
from ..errors import RD3Error
from ..progress import bar


@torch.inference_mode()
def rded_select(real: ImageSet, teacher: Relabeler, ipc: int, mean: Sequence[float], std: Sequence[float], *,
                factor: int = 2, candidates: int = 300, num_crop: int = 5, seed: int = 0,
                device: torch.device | str = "cpu", progress: bool = True) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    size = real.images.shape[-1]
    cell = size // factor
    if cell < 1:
        raise RD3Error(f"--factor {factor}: larger than the {size} px images")
    out_images, out_labels = [], []
    for c in bar(range(real.num_classes), total=real.num_classes, desc="rded select", unit="class",
                 enabled=progress):
        idx = torch.nonzero(real.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)[:candidates]]
        need = ipc * factor * factor
        if len(idx) < need:
            raise RD3Error(f"--ipc {ipc} with --factor {factor} needs {need} candidate images of class "
                           f"{real.classes[c]!r}; {real.source} has {len(idx)}")
        imgs = real.images[idx].to(device)  # (M, C, H, W) uint8
        m = len(imgs)
        boxes = torch.cat([sample_rrc_boxes(m, size, size, (0.08, 1.0), (1.0, 1.0), gen) for _ in range(num_crop)])
        crops = resized_crop(imgs.repeat(num_crop, 1, 1, 1), boxes, cell, antialias=True)  # (num_crop*M, C, s, s)
        x = teacher_input(crops, mean, std)
        pad = size - cell
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))  # zero in normalized space
        ce = torch.cat([F.cross_entropy(teacher(x[i:i + 256]), torch.full((len(x[i:i + 256]),), c, device=device),
                                        reduction="none") for i in range(0, len(x), 256)])
        ce = ce.view(num_crop, m)
        best_crop = ce.argmin(0)  # per image: the crop the teacher is surest of
        best_ce = ce.gather(0, best_crop[None]).squeeze(0)
        chosen = best_ce.argsort()[:need]
        picked = crops.view(num_crop, m, *crops.shape[1:])[best_crop[chosen], chosen]  # (need, C, s, s)
        out_images.append(stitch(picked, ipc, factor, size))
        out_labels.append(torch.full((ipc,), c, dtype=torch.int64))
    images = torch.cat(out_images).round().clamp(0, 255).to(torch.uint8).cpu()
    return ImageSet(images, torch.cat(out_labels), list(real.classes), f"rded-ipc{ipc}-f{factor}")


def stitch(patches: torch.Tensor, ipc: int, factor: int, size: int) -> torch.Tensor:
    """RDED mix_images: output t's grid cell k (row-major) is patches[k * ipc + t], nearest-resized."""
    base, extra = divmod(size, factor)
    sizes = [base + (1 if i < extra else 0) for i in range(factor)]
    offs = np.cumsum([0] + sizes)
    out = torch.zeros(ipc, patches.shape[1], size, size, device=patches.device)
    for k in range(factor * factor):
        r, q = divmod(k, factor)
        cellimgs = patches[k * ipc:(k + 1) * ipc]
        out[:, :, offs[r]:offs[r + 1], offs[q]:offs[q + 1]] = F.interpolate(cellimgs, size=(sizes[r], sizes[q]),
                                                                             mode="nearest")
    return out
