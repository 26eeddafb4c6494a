"""Soft-label cache: FKD's idea (store the teacher's labels once, train many students) without its size.

SRe2L/FKD store, for every image of every epoch, the crop coordinates and the full fp16 logits: 1000
classes x 2 bytes = 2 kB per image per epoch (28 GB at ImageNet-1K IPC50, 300 epochs). rd3fast stores
what *made* each batch instead — the augmentation parameters, a few bytes per image — plus the teacher's
logits: all of them (``topk=0``), or the top k and the mean of the rest, as fp16 (``bits=16``) or as
8-bit codes between the image's fp16 minimum and maximum (``bits=8``: half the bytes, lossy, each value
within (max - min) / 510 of its fp16 value). ``resolve_topk`` picks the default: all logits up to
``LOSSLESS_CLASSES`` classes, where the top-k encoding saves little or nothing (10 classes: 20 B all, 17 B
top-5 with uint8 classes), top-5 above (1000 classes: 2 kB all, 22 B top-5 with uint16 classes). A top-k
replay is not the recording run's training: on Fashion-MNIST IPC 10 top-5 cost 0.9 points of top-1 and
top-1 1.5 against on-the-fly training on the same batches, while all logits (fp16 or 8-bit) matched it
within 0.06 (benchmarks/bench_cache.py; benchmarks/RESULTS.md, "Soft-label cache: size vs accuracy").
Every replay says in its results what it replayed.

    per image per epoch: index (2-4 B) + crop box (4 x int16) + flip (1 B) + PatchShuffle orders as
    permutation ranks (2 x 1-2 B) + mixing partner (1-2 B) + top-k values (fp16) and classes (uint16)
    + tail mean (fp16)                     -> about 36 B at k=5, f=2, batch <= 256: ~1/55 of FKD's.

Replay rebuilds every batch from the stored parameters with the same augmentation ops, so the recorded
batches are reproduced exactly, and the soft labels come from the file, not from a teacher. One .npz
per epoch (written atomically) plus meta.json.

Opening a cache for replay checks every epoch file before the first step: its zip directory, the members
the replay will read, and each member's bytes against the CRC-32 the zip directory stores for it (the
files are small by design, so reading them once costs about what one replayed epoch reads). A damaged
cache is then one line naming the file and the member, not a failure epochs into a run.
"""
from __future__ import annotations

import itertools
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import RD3Error
from .aug import AugParams

LOSSLESS_CLASSES = 100  # up to this many classes the default keeps every logit
TOPK_ABOVE = 5  # ... and above it, the top 5 (+ the mean of the rest)
META_KEYS = ("topk", "num_images", "batch_size", "num_classes", "shuffle_factor", "fingerprint", "epochs")
EPOCH_KEYS = ("idx", "boxes", "flip", "partner", "mix_box", "lam", "values", "sizes")  # + row/col_rank, classes


def resolve_topk(topk: int, num_classes: int) -> int:
    """--cache-topk: -1 (auto) -> 0 (all logits) up to LOSSLESS_CLASSES classes, else TOPK_ABOVE; a k that
    keeps every class is 0 too."""
    if topk < 0:
        topk = 0 if num_classes <= LOSSLESS_CLASSES else TOPK_ABOVE
    return 0 if topk >= num_classes else topk


def describe_compression(topk: int, bits: int) -> str:
    what = "all logits" if topk == 0 else f"top-{topk} logits + the mean of the rest"
    return f"{what}, {'fp16' if bits == 16 else '8-bit codes'}" + ("" if topk == 0 and bits == 16 else " (lossy)")


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

    def __init__(self, path: str | Path, mode: str, *, topk: int = -1, bits: int = 16, num_images: int = 0,
                 batch_size: int = 0, num_classes: int = 0, shuffle_factor: int = 1, fingerprint: str = "",
                 resume_epoch: int | None = None) -> None:
        """``resume_epoch``: a recording run resumed from its checkpoint at that epoch continues this cache
        (the epochs from there on are recorded again)."""
        if bits not in (8, 16):
            raise RD3Error(f"--cache-bits: expected 8 or 16, got {bits}")
        self.path, self.mode = Path(path), mode
        meta_file = self.path / "meta.json"
        if self.path.exists() and not self.path.is_dir():
            raise RD3Error(f"--cache {self.path} is a file; expected a folder for the soft-label cache")
        if mode == "replay":
            if not meta_file.is_file():
                raise RD3Error(f"--cache {self.path}: no recorded soft-label cache here (meta.json missing); "
                               f"record one with --cache-mode record")
            self.meta = _read_meta(meta_file)
            columns = _columns(ranks=self.meta["shuffle_factor"] > 1, top_k=bool(self.meta["topk"]),
                               coded=self.meta.get("bits", 16) == 8)
            for epoch in self.meta["epochs"]:
                _check_members(_epoch_file(self.path, epoch), columns)
            if num_classes and self.meta["num_classes"] != num_classes:
                raise RD3Error(f"--cache {self.path} holds {self.meta['num_classes']}-class soft labels but the "
                               f"data has {num_classes} classes")
            if fingerprint and self.meta["fingerprint"] != fingerprint:
                raise RD3Error(f"--cache {self.path} was recorded for another set or protocol "
                               f"({self.meta['fingerprint']}); expected {fingerprint}")
        elif resume_epoch is not None and meta_file.is_file():
            self.meta = _read_meta(meta_file)
            if self.meta["fingerprint"] != fingerprint or self.meta["topk"] != resolve_topk(topk, num_classes) \
                    or self.meta.get("bits", 16) != bits:
                raise RD3Error(f"--cache {self.path} was recorded for another set, protocol or compression; "
                               f"{_record_again(self.path)}")
            self.meta["epochs"] = [e for e in self.meta["epochs"] if e < resume_epoch]
        else:
            if self.path.exists() and any(self.path.iterdir()) and resume_epoch is None:
                raise RD3Error(f"--cache {self.path} exists and is not empty; choose a new folder to record into")
            # Checked now, not when the first epoch's labels are written after it has been trained.
            nearest = next(p for p in (self.path, *self.path.parents) if p.exists())
            if not nearest.is_dir() or not os.access(nearest, os.W_OK | os.X_OK):
                raise RD3Error(f"--cache {self.path}: cannot create it ({nearest} is not a writable folder)")
            self.meta = {"version": 1, "topk": resolve_topk(topk, num_classes), "bits": bits,
                         "num_images": num_images, "batch_size": batch_size,
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
            values, classes = torch.cat([top.values, tail[:, None]], 1), top.indices.short()
        else:
            values, classes = logits.float(), None
        self._steps.append((idx, params, (*_encode(values, self.meta.get("bits", 16)), classes)))

    def end_epoch(self, epoch: int) -> None:
        n_cls, bsz = self.meta["num_classes"], self.meta["batch_size"]
        cols: dict[str, list[np.ndarray]] = {k: [] for k in (
            "idx", "boxes", "flip", "row_rank", "col_rank", "partner", "mix_box", "lam", "values", "qparams",
            "classes", "sizes")}
        for idx, p, (values, qparams, classes) in self._steps:
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
            if qparams is not None:
                cols["qparams"].append(qparams.cpu().numpy())
            if classes is not None:
                cols["classes"].append(classes.cpu().numpy().astype(_uint(n_cls)))
            cols["sizes"].append(np.array([len(idx)], dtype=np.int32))
        arrays = {k: np.concatenate(v) for k, v in cols.items() if v}
        _atomic_npz(self.path / f"epoch_{epoch:05d}.npz", arrays)  # atomic_write creates the folder
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
        file = _epoch_file(self.path, recorded[epoch % len(recorded)])
        bits = self.meta.get("bits", 16)
        z = _read_epoch(file, ranks=self.codec is not None, top_k=bool(self.meta["topk"]), coded=bits == 8)
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
            if bits == 8:
                extra.append(as_t(z["qparams"][sl]))
            params, moved = params.to_with(device, *extra)  # one host-to-device copy per step
            idx, values = moved[0], _decode(moved[1], moved[-1] if bits == 8 else None)
            if top_k:  # the rest of the classes get the mean of the remaining logits
                soft = values[:, -1:].expand(size, n_cls).clone()
                soft.scatter_(1, moved[2], values[:, :-1])
            else:
                soft = values
            yield idx, params, soft

    def describe(self) -> str:
        """What this cache holds, for the results of the runs that replay it."""
        what = describe_compression(self.meta["topk"], self.meta.get("bits", 16))
        return f"soft-label cache {self.path} replayed: {what}, {len(self.meta['epochs'])} recorded epoch(s)"

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.glob("*") if f.is_file())

    def fkd_bytes(self) -> int:
        """What FKD/SRe2L would store for the same epochs: full fp16 logits + 4 crop coords + flip per image."""
        return len(self.meta["epochs"]) * self.meta["num_images"] * (2 * self.meta["num_classes"] + 4 * 4 + 1)


def _record_again(folder: Path) -> str:
    """What to do about a damaged cache: recording needs an empty folder, so the whole folder goes."""
    return f"delete the folder {folder} and record it again (--cache-mode record)"


def _read_meta(file: Path) -> dict[str, Any]:
    """meta.json of a recorded cache, with every key replay reads; anything else is one RD3Error."""
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise RD3Error(f"soft-label cache {file} is unreadable ({e}); {_record_again(file.parent)}") from None
    missing = [k for k in META_KEYS if k not in meta] if isinstance(meta, dict) else list(META_KEYS)
    if missing or not isinstance(meta["epochs"], list) or not all(isinstance(e, int) for e in meta["epochs"]):
        raise RD3Error(f"soft-label cache {file} is incomplete (missing or bad {', '.join(missing) or 'epochs'}); "
                       f"{_record_again(file.parent)}")
    return meta


def _unreadable(file: Path, e: Exception) -> RD3Error:
    return RD3Error(f"soft-label cache file {file} is unreadable or truncated ({e}); {_record_again(file.parent)}")


def _epoch_file(folder: Path, epoch: int) -> Path:
    """The recorded epoch's file, checked to exist and to end in a zip directory (a truncated copy does not;
    only the file's tail is read). Replay checks every epoch so when it opens the cache, not epochs into a run."""
    file = folder / f"epoch_{epoch:05d}.npz"
    if not file.is_file():
        raise RD3Error(f"soft-label cache file {file} is missing (meta.json lists its epoch); "
                       f"{_record_again(file.parent)}")
    try:
        zipfile.ZipFile(file).close()
    except (OSError, zipfile.BadZipFile) as e:
        raise _unreadable(file, e) from None
    return file


def _columns(*, ranks: bool, top_k: bool, coded: bool) -> tuple[str, ...]:
    """The arrays a recorded epoch holds for a cache of this kind (what ``epoch`` reads)."""
    return (EPOCH_KEYS + (("row_rank", "col_rank") if ranks else ()) + (("classes",) if top_k else ())
            + (("qparams",) if coded else ()))


def _check_members(file: Path, columns: tuple[str, ...]) -> None:
    """Every column of ``file`` is a member whose bytes match the CRC-32 in the zip directory: a truncated,
    overwritten or partly copied epoch is found when the cache is opened. One RD3Error naming the member."""
    try:
        with zipfile.ZipFile(file) as z:
            members = {info.filename: info for info in z.infolist()}
            missing = [c for c in columns if f"{c}.npy" not in members]
            if missing:
                raise RD3Error(f"soft-label cache file {file} lacks {', '.join(missing)}; {_record_again(file.parent)}")
            for name, info in members.items():
                try:
                    with z.open(info) as member:  # ZipExtFile checks the CRC-32 and the size at the end
                        while member.read(1 << 20):
                            pass
                except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
                    raise RD3Error(f"soft-label cache file {file} is unreadable or truncated (its member {name} "
                                   f"is corrupt: {e}); {_record_again(file.parent)}") from None
    except (OSError, zipfile.BadZipFile) as e:
        raise _unreadable(file, e) from None


def _encode(values: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp16 values, or (bits 8) per-row uint8 codes of the fp16 values and the row's fp16 (min, max): a code c
    stands for min + c * (max - min) / 255. The min and max are fp16 values themselves, so they are stored
    exactly and every value decodes within half a step, (max - min) / 510, of its fp16 value."""
    half = values.half()
    if bits == 16:
        return half, None
    v = half.float()
    lo, hi = v.amin(1, keepdim=True), v.amax(1, keepdim=True)
    step = ((hi - lo) / 255).clamp_min(torch.finfo(torch.float32).tiny)  # all equal: every code is 0
    codes = ((v - lo) / step).round_().clamp_(0, 255).to(torch.uint8)
    return codes, torch.cat([lo, hi], 1).half()


def _decode(values: torch.Tensor, qparams: torch.Tensor | None) -> torch.Tensor:
    if qparams is None:
        return values.float()
    q = qparams.float()
    lo, hi = q[:, :1], q[:, 1:]
    return lo + values.float() * ((hi - lo) / 255)


def _read_epoch(file: Path, *, ranks: bool, top_k: bool, coded: bool = False) -> dict[str, np.ndarray]:
    """One recorded epoch's arrays, checked to hold every column and to add up; else one RD3Error."""
    try:
        with np.load(file, allow_pickle=False) as npz:
            z = {k: npz[k] for k in npz.files}  # reads every array now, so a corrupt member fails here
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _unreadable(file, e) from None
    needed = _columns(ranks=ranks, top_k=top_k, coded=coded)
    missing = [k for k in needed if k not in z]
    if missing:
        raise RD3Error(f"soft-label cache file {file} lacks {', '.join(missing)}; {_record_again(file.parent)}")
    length = {k: a.shape[0] if a.ndim else -1 for k, a in z.items()}
    rows, steps = int(z["sizes"].sum()), length["sizes"]
    if (any(length[k] != rows for k in ("idx", "boxes", "flip", "partner", "values"))
            or any(length[k] != steps for k in ("lam", "mix_box"))):
        raise RD3Error(f"soft-label cache file {file} is inconsistent (its columns disagree in length); "
                       f"{_record_again(file.parent)}")
    return z


def _written(path: Path, write: Any) -> None:
    """``write(tmp)`` into ``path`` atomically; a failure (a full disk) is one RD3Error naming the file."""
    try:
        with atomic_write(path) as tmp:
            write(tmp)
    except OSError as e:
        raise RD3Error(f"cannot write soft-label cache file {path}: {e.strerror or e}") from None


def _atomic_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # uncompressed: the arrays are already small integer types
    _written(path, write)


def _atomic_text(path: Path, text: str) -> None:
    _written(path, lambda tmp: tmp.write_text(text))
