"""Many small host tensors to the device in one copy.

Every step moves a handful of tiny tensors to the GPU (the batch indices, each augmentation parameter,
cached soft labels). Copied one by one from ordinary (pageable) host memory, each copy is staged by the
driver and may wait for the stream to drain, so the host stalls behind the step it just launched, once per
tensor: about ten stalls a step, which at batch 50 is several percent of a graphed ResNet-18 step. Packed
into one pinned buffer they go over in a single asynchronous copy, and the device tensors are views of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

# Every piece starts on a 16-byte boundary: a view as any dtype is legal, and a Triton kernel sees the
# same pointer alignment as for a fresh allocation (Triton specializes on 16-byte alignment, so an odd
# offset would compile a second variant, and the graph's static buffers, which are fresh, a third).
_ALIGN = 16


@dataclass(frozen=True)
class Layout:
    """Where each tensor lies in the packed byte buffer: (offset, nbytes, dtype, shape), or None."""

    pieces: tuple[tuple[int, int, torch.dtype, tuple[int, ...]] | None, ...]
    nbytes: int


def pack(tensors: Sequence[torch.Tensor | None], pin: bool = False) -> tuple[torch.Tensor, Layout]:
    """Copy CPU tensors (None allowed) into one uint8 buffer, optionally in pinned memory."""
    pieces, total = [], 0
    for t in tensors:
        if t is None:
            pieces.append(None)
            continue
        if t.device.type != "cpu":
            raise ValueError(f"pack expects CPU tensors, got one on {t.device}")
        n = t.numel() * t.element_size()
        pieces.append((total, n, t.dtype, tuple(t.shape)))
        total += -(-n // _ALIGN) * _ALIGN
    buf = torch.empty(total, dtype=torch.uint8, pin_memory=pin)
    for t, piece in zip(tensors, pieces):
        if piece is not None and piece[1]:
            off, n, _, _ = piece
            buf[off:off + n].copy_(_bytes(t))
    return buf, Layout(tuple(pieces), total)


def unpack(buf: torch.Tensor, layout: Layout) -> list[torch.Tensor | None]:
    """Views of ``buf`` (on any device) with the packed tensors' dtypes and shapes."""
    out: list[torch.Tensor | None] = []
    for piece in layout.pieces:
        if piece is None:
            out.append(None)
            continue
        off, n, dtype, shape = piece
        out.append(buf[off:off + n].view(dtype).view(shape))
    return out


def to_device(tensors: Sequence[torch.Tensor | None], device: torch.device | str) -> list[torch.Tensor | None]:
    """``[t.to(device) for t in tensors]`` with one pinned, non-blocking copy on CUDA (as is elsewhere)."""
    device = torch.device(device)
    if device.type != "cuda":
        return [None if t is None else t.to(device) for t in tensors]
    buf, layout = pack(tensors, pin=True)
    # The caching host allocator records the copy's event, so the pinned buffer is not reused too early.
    return unpack(buf.to(device, non_blocking=True), layout)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    flat = t.contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat
