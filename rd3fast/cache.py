"""Soft-label cache: FKD's idea (store the teacher's labels once, train many students) without its size.

SRe2L/FKD store, for every image of every epoch, the crop coordinates and the full fp16 logits: 1000
classes x 2 bytes = 2 kB per image per epoch (28 GB at ImageNet-1K IPC50, 300 epochs). rd3fast stores
what *made* each batch instead — the augmentation parameters, a few bytes per image — plus the top-k
teacher logits in fp16 and the mean of the remaining logits (or the full logits with ``topk=0``):

    per image per epoch: index (2-4 B) + crop box (4 x int16) + flip (1 B) + PatchShuffle orders as
    permutation ranks (2 x 1-2 B) + mixing partner (1-2 B) + top-k values (fp16) and classes (int16)
    + tail mean (fp16)                     -> about 36 B at k=5, f=2, batch <= 256: ~1/55 of FKD's.

Replay rebuilds every batch from the stored parameters with the same augmentation ops, so the recorded
batches are reproduced exactly, and the soft labels come from the file, not from a teacher. One .npz
per epoch (written atomically) plus meta.json.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .atomic import atomic_write
from .aug import AugParams
from .errors import RD3Error


def _uint(n: int) -> type:
    """Smallest unsigned numpy type that holds 0..n-1."""
    return np.uint8 if n <= 256 else np.uint16 if n <= 65536 else np.uint32


class PermCodec:
    """Permutations of range(f) <-> their lexicographic rank (one small integer per permutation)."""

    def __init__(self, f: int) -> None:
        self.table = torch.tensor(list(itertools.permutations(range(f))), dtype=torch.int64)  # (f!, f)
        self.weights = torch.tensor([f ** (f - 1 - i) for i in range(f)], dtype=torch.int64)
        keys = self.table @ self.weights  # base-f code of every permutation, sorted ascending
        self.keys = keys

    def encode(self, perms: torch.Tensor) -> np.ndarray:
        rank = torch.searchsorted(self.keys, perms.cpu() @ self.weights)
        return rank.numpy().astype(_uint(len(self.table)))

    def decode(self, ranks: np.ndarray) -> torch.Tensor:
        return self.table[torch.from_numpy(ranks.astype(np.int64))]


class SoftLabelCache:
    """``record`` mode: ``add`` each step, ``end_epoch`` writes the epoch. ``replay`` mode: ``epoch``."""

    def __init__(self, path: str | Path, mode: str, *, topk: int = 5, num_images: int = 0, batch_size: int = 0,
                 num_classes: int = 0, shuffle_factor: int = 1, fingerprint: str = "") -> None:
        self.path, self.mode = Path(path), mode
        meta_file = self.path / "meta.json"
        if mode == "replay":
            if not meta_file.is_file():
                raise RD3Error(f"--cache {self.path}: no recorded soft-label cache here (meta.json missing); "
                               f"record one with --cache-mode record")
            self.meta = json.loads(meta_file.read_text())
            if num_classes and self.meta["num_classes"] != num_classes:
                raise RD3Error(f"--cache {self.path} holds {self.meta['num_classes']}-class soft labels but the "
                               f"data has {num_classes} classes")
            if fingerprint and self.meta["fingerprint"] != fingerprint:
                raise RD3Error(f"--cache {self.path} was recorded for another set or protocol "
                               f"({self.meta['fingerprint']}); expected {fingerprint}")
        else:
            if self.path.exists() and any(self.path.iterdir()):
                raise RD3Error(f"--cache {self.path} exists and is not empty; choose a new folder to record into")
            self.meta = {"version": 1, "topk": topk, "num_images": num_images, "batch_size": batch_size,
                         "num_classes": num_classes, "shuffle_factor": shuffle_factor, "fingerprint": fingerprint,
                         "epochs": []}
        f = self.meta["shuffle_factor"]
        self.codec = PermCodec(f) if f > 1 else None
        self._steps: list[tuple[torch.Tensor, AugParams, torch.Tensor]] = []

    # --- record ----------------------------------------------------------------------------------
    def add(self, idx: torch.Tensor, params: AugParams, logits: torch.Tensor) -> None:
        """Keep one step's draws and teacher logits (device tensors: no sync until ``end_epoch``)."""
        k = self.meta["topk"]
        if k:
            top = logits.float().topk(min(k, logits.shape[1]), dim=1)
            tail = (logits.float().sum(1) - top.values.sum(1)) / max(logits.shape[1] - top.values.shape[1], 1)
            stored = torch.cat([top.values, tail[:, None]], 1).half(), top.indices.short()
        else:
            stored = logits.half(), None
        self._steps.append((idx, params, stored))

    def end_epoch(self, epoch: int) -> None:
        n_cls, bsz = self.meta["num_classes"], self.meta["batch_size"]
        cols: dict[str, list[np.ndarray]] = {k: [] for k in (
            "idx", "boxes", "flip", "row_rank", "col_rank", "partner", "mix_box", "lam", "values", "classes",
            "sizes")}
        for idx, p, (values, classes) in self._steps:
            cols["idx"].append(idx.cpu().numpy().astype(_uint(self.meta["num_images"])))
            cols["boxes"].append(p.boxes.cpu().numpy().astype(np.int16))
            cols["flip"].append(p.flip.cpu().numpy().astype(np.uint8))
            if self.codec is not None:
                cols["row_rank"].append(self.codec.encode(p.row_perm))
                cols["col_rank"].append(self.codec.encode(p.col_perm))
            cols["partner"].append(p.partner.cpu().numpy().astype(_uint(bsz)))
            cols["mix_box"].append(p.mix_box.cpu().numpy().astype(np.int16)[None])
            cols["lam"].append(p.lam.cpu().numpy().astype(np.float32).reshape(1))
            cols["values"].append(values.cpu().numpy())
            if classes is not None:
                cols["classes"].append(classes.cpu().numpy().astype(_uint(n_cls)))
            cols["sizes"].append(np.array([len(idx)], dtype=np.int32))
        arrays = {k: np.concatenate(v) for k, v in cols.items() if v}
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_npz(self.path / f"epoch_{epoch:05d}.npz", arrays)
        self.meta["epochs"].append(epoch)
        self.meta["mix"] = self._steps[0][1].mix if self._steps else "none"
        _atomic_text(self.path / "meta.json", json.dumps(self.meta, indent=1))
        self._steps = []

    # --- replay ----------------------------------------------------------------------------------
    def epoch(self, epoch: int, device: torch.device) -> Iterator[tuple[torch.Tensor, AugParams, torch.Tensor]]:
        """(indices, params, soft logits) of every recorded step of ``epoch``, on ``device``."""
        recorded = self.meta["epochs"]
        if not recorded:
            raise RD3Error(f"--cache {self.path}: no epoch was recorded")
        # A cache of E epochs serves longer runs by cycling (as LPLD re-draws stored batches).
        file = self.path / f"epoch_{recorded[epoch % len(recorded)]:05d}.npz"
        try:
            z = dict(np.load(file))
        except (OSError, ValueError) as e:
            raise RD3Error(f"soft-label cache file {file} is unreadable ({e})") from None
        n_cls, start = self.meta["num_classes"], 0
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        for step, size in enumerate(z["sizes"].tolist()):
            sl = slice(start, start + size)
            start += size
            params = AugParams(
                boxes=as_t(z["boxes"][sl]).int(), flip=as_t(z["flip"][sl]).bool(),
                row_perm=self.codec.decode(z["row_rank"][sl]) if self.codec else None,
                col_perm=self.codec.decode(z["col_rank"][sl]) if self.codec else None,
                partner=as_t(z["partner"][sl]).long(), mix_box=as_t(z["mix_box"][step]).int(),
                lam=torch.tensor(float(z["lam"][step])), mix=self.meta.get("mix", "none"))
            top_k = "classes" in z
            extra = [as_t(z["idx"][sl]).long(), as_t(z["values"][sl])]
            if top_k:
                extra.append(as_t(z["classes"][sl]).long())
            params, moved = params.to_with(device, *extra)  # one host-to-device copy per step
            idx, values = moved[0], moved[1].float()
            if top_k:  # the rest of the classes get the mean of the remaining logits
                soft = values[:, -1:].expand(size, n_cls).clone()
                soft.scatter_(1, moved[2], values[:, :-1])
            else:
                soft = values
            yield idx, params, soft

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.glob("*") if f.is_file())

    def fkd_bytes(self) -> int:
        """What FKD/SRe2L would store for the same epochs: full fp16 logits + 4 crop coords + flip per image."""
        return len(self.meta["epochs"]) * self.meta["num_images"] * (2 * self.meta["num_classes"] + 4 * 4 + 1)


def _atomic_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)  # uncompressed: the arrays are already small integer types


def _atomic_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)
