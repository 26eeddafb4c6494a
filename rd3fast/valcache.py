"""The validation set decoded once: its centre crops cached as a uint8 .npy memmap.

A real validation ImageFolder is decoded (PIL in worker processes, DALI or FFCV) into uint8 N x 3 x S x S
centre crops (Resize(round(S / ratio)) + CenterCrop(S), ``data.load_real``'s transform) and written once
to ``<cache>/val/<key>.npy`` with its labels and class names beside it. Every later run memory-maps it
(no decode), and the evaluator moves it to the device once and evaluates it in batches (bf16 autocast and
channels_last on CUDA: ``train.evaluate``).

The key hashes everything the pixels depend on: the folder's absolute path and listing (class folders,
every file's relative path, size and mtime), the class map's content, the image size, the resize ratio,
the decoder (decoders differ by JPEG rounding) and ``TRANSFORM_VERSION``; change any and it is a new
entry. Writes are atomic (temporary file + rename); a failed decode leaves nothing behind. The cache lives
in ``$RD3FAST_CACHE`` or ``~/.cache/rd3fast``; ``python -m rd3fast.prepare cache`` fills it ahead of time.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .atomic import atomic_tmp
from .errors import RD3Error

CACHE_ENV = "RD3FAST_CACHE"
TRANSFORM_VERSION = 1  # bump whenever the decode geometry or a decoder's settings change
DECODERS = ("pil", "dali", "ffcv")
SCHEMA = 1

def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else $RD3FAST_CACHE, else ~/.cache/rd3fast."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rd3fast"

def folder_fingerprint(root: str | Path, class_map: str | Path | None = None) -> dict[str, Any]:
    """What an ImageFolder's decoded content depends on: path, classes, and each file's name, size, mtime."""
    from .backends import list_image_folder

    listing = list_image_folder(root, class_map)
    h = hashlib.sha256()
    base = Path(listing.root)
    for f, y in zip(listing.files, listing.labels):
        st = os.stat(f)
        h.update(f"{Path(f).relative_to(base)}\t{y}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    cmap = hashlib.sha256(Path(class_map).read_bytes()).hexdigest() if class_map is not None else None
    return {"root": str(base.resolve()), "classes": list(listing.classes), "files": len(listing.files),
            "listing_sha256": h.hexdigest(), "class_map_sha256": cmap}

def cache_key(root: str | Path, image_size: int, resize_ratio: float, decoder: str = "pil",
              class_map: str | Path | None = None) -> tuple[str, dict[str, Any]]:
    """(hex key, the dict it hashes) for one folder + transform + decoder."""
    decoder = resolve_decoder(decoder)
    if decoder not in DECODERS:
        raise RD3Error(f"--loader: the validation decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    desc = {"kind": "val-centre-crops", "source": folder_fingerprint(root, class_map), "image_size": int(image_size),
            "resize_ratio": float(resize_ratio), "decoder": decoder, "transform_version": TRANSFORM_VERSION}
    blob = json.dumps(desc, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32], desc

def resolve_decoder(decoder: str) -> str:
    """The validation decoder a --loader value stands for: auto means PIL (the reference pixels; the decode
    happens once, so its speed matters little)."""
    return "pil" if decoder in ("auto", "", None) else decoder

def _default_device(decoder: str, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if decoder == "dali" and torch.cuda.is_available() else "cpu")

def _paths(entry: Path) -> tuple[Path, Path, Path]:
    return entry.with_suffix(".npy"), entry.with_suffix(".labels.npy"), entry.with_suffix(".json")

def _uint8_batches(root: Path, listing: Any, image_size: int, resize_ratio: float, decoder: str,
                   workers: int | None, device: str | torch.device, class_map: str | Path | None,
                   batch_size: int = 256) -> Iterator[tuple[int, np.ndarray]]:
    """(offset, uint8 B x 3 x S x S) in listing order from the chosen decoder."""
    if decoder == "pil":
        from .data import _decode_image, _default_workers, _Fit, _pool_context, _Serial

        fit = _Fit(short=round(image_size / resize_ratio), crop=image_size)
        n = len(listing.files)
        workers = _default_workers() if workers is None else workers
        job = partial(_decode_image, fit=fit)
        files = [Path(f) for f in listing.files]
        with _pool_context().Pool(workers) if workers > 1 and n > 64 else _Serial() as pool:
            buf = np.empty((min(batch_size, n), 3, image_size, image_size), np.uint8)
            start = fill = 0
            for arr in pool.imap(job, files, chunksize=max(1, min(64, n // (8 * max(workers, 1))))):
                if arr.shape[:2] != (image_size, image_size):  # cannot happen with a centre crop; be loud
                    raise RD3Error(f"decoded crop has shape {arr.shape}, expected {image_size}x{image_size}")
                buf[fill] = arr if arr.ndim == 2 else arr.transpose(2, 0, 1)
                fill += 1
                if fill == len(buf):
                    yield start, buf[:fill]
                    start, fill = start + fill, 0
            if fill:
                yield start, buf[:fill]
        return
    from .backends import make_reader

    reader = make_reader(decoder, root, mode="val", image_size=image_size, resize_ratio=resize_ratio,
                         batch_size=batch_size, device=device, workers=workers, output="uint8",
                         class_map=class_map)
    start = 0
    for x, y in reader:
        arr = x.cpu().numpy()
        if y.cpu().tolist() != list(listing.labels[start:start + len(arr)]):
            raise RD3Error(f"{root}: the {decoder} reader's labels disagree with the folder listing at image {start}")
        yield start, arr
        start += len(arr)

def build(root: str | Path, *, image_size: int, resize_ratio: float, decoder: str = "pil",
          class_map: str | Path | None = None, workers: int | None = None,
          device: str | torch.device | None = None, cache_dir: str | Path | None = None,
          progress: bool = True) -> Path:
    """Decode ``root`` once into the cache (if its entry is missing); returns the entry's .npy path.
    ``device`` is where DALI decodes (default: the GPU when there is one)."""
    from tqdm import tqdm

    from .backends import list_image_folder

    decoder = resolve_decoder(decoder)
    device = _default_device(decoder, device)
    key, desc = cache_key(root, image_size, resize_ratio, decoder, class_map)
    folder = cache_root(cache_dir) / "val"
    entry = folder / key
    npy, labels_npy, meta = _paths(entry)
    if meta.is_file() and npy.is_file() and labels_npy.is_file():
        return npy
    folder.mkdir(parents=True, exist_ok=True)
    listing = list_image_folder(root, class_map)
    n = len(listing.files)
    tmp_npy, tmp_labels, tmp_meta = atomic_tmp(npy), atomic_tmp(labels_npy), atomic_tmp(meta)
    t0 = time.perf_counter()
    try:
        out = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.uint8, shape=(n, 3, image_size, image_size))
        done = 0
        with tqdm(total=n, desc=f"decode {root} once ({decoder})", unit="img", disable=not progress) as bar:
            batches = _uint8_batches(Path(root), listing, image_size, resize_ratio, decoder, workers, device,
                                     class_map)
            for start, arr in batches:
                out[start:start + len(arr)] = arr
                done = start + len(arr)
                bar.update(len(arr))
        if done != n:
            raise RD3Error(f"{root}: the {decoder} decoder returned {done} images for {n} files")
        out.flush()
        del out
        with open(tmp_labels, "wb") as f:  # a file object: np.save would append .npy to a name
            np.save(f, np.asarray(listing.labels, dtype=np.int64), allow_pickle=False)
        record = {"schema": SCHEMA, "key": key, **desc, "images": n, "decode_s": time.perf_counter() - t0,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        tmp_meta.write_text(json.dumps(record, indent=1))
        # The .json is the commit marker: written last, so a half-written entry is never read.
        os.replace(tmp_npy, npy)
        os.replace(tmp_labels, labels_npy)
        os.replace(tmp_meta, meta)
    finally:
        for t in (tmp_npy, tmp_labels, tmp_meta):
            t.unlink(missing_ok=True)
    return npy

def load(npy: str | Path) -> Any:
    """An ImageSet over a cache entry: images memory-mapped copy-on-write (nothing decoded or read yet)."""
    from .data import ImageSet

    npy = Path(npy)
    _, labels_npy, meta = _paths(npy.with_suffix(""))
    try:
        record = json.loads(meta.read_text())
        images = np.load(npy, mmap_mode="c")
        labels = np.load(labels_npy)
    except (OSError, ValueError, EOFError, KeyError) as e:
        raise RD3Error(f"validation cache entry {npy} is unreadable ({e}); delete it to rebuild") from None
    if images.shape[0] != len(labels) or images.dtype != np.uint8 or images.ndim != 4:
        raise RD3Error(f"validation cache entry {npy} is inconsistent; delete it to rebuild")
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), list(record["source"]["classes"]),
                    record["source"]["root"])

def cached_real(root: str | Path, *, image_size: int, resize_ratio: float, decoder: str = "pil",
                class_map: str | Path | None = None, workers: int | None = None,
                device: str | torch.device | None = None, cache_dir: str | Path | None = None,
                progress: bool = True) -> Any:
    """``data.load_real`` for a folder, through the cache: decode once, memory-map afterwards."""
    return load(build(root, image_size=image_size, resize_ratio=resize_ratio, decoder=decoder,
                      class_map=class_map, workers=workers, device=device, cache_dir=cache_dir,
                      progress=progress))

@torch.inference_mode()
def evaluate(model: torch.nn.Module, val: Any, mean: tuple[float, ...], std: tuple[float, ...],
             batch_size: int = 500, device: str | torch.device | None = None, amp: bool = True) -> dict[str, float]:
    """Top-1/top-5 of ``model`` on a cached (or any uint8) ImageSet: moved to the model's device once, then
    ``train.evaluate`` (batched; bf16 autocast + channels_last on CUDA)."""
    from .train import evaluate as _evaluate

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    images = val.images if val.images.shape[1] == 3 else val.images.expand(-1, 3, -1, -1)
    return _evaluate(model, images.to(dev), val.labels.to(dev), tuple(mean), tuple(std), batch_size, amp)
