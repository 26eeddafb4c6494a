"""The validation set decoded once: its centre crops cached as a uint8 .npy memmap.

A real validation ImageFolder is decoded (PIL in worker processes, DALI or FFCV) into uint8 N x 3 x S x S
centre crops (Resize(round(S / ratio)) + CenterCrop(S), ``data.load_real``'s transform) and written once
to ``<cache>/val/<key>.npy`` with its labels and class names beside it. Every later run memory-maps it
(no decode), and the evaluator moves it to the device once and evaluates it in batches (bf16 autocast and
channels_last on CUDA: ``train.evaluate``). ``load_real`` is ``data.load_real`` with its folders read
through here; ``experiment.prepare`` reads the validation set with it.

The key hashes everything the pixels depend on: the folder's absolute path and listing (class folders,
every file's relative path, size and mtime), the class map's content, the image size, the resize ratio,
the decoder (decoders differ by JPEG rounding) and ``TRANSFORM_VERSION``; change any and it is a new
entry. Writes are atomic (temporary file + rename) and the space is reserved before the decode; a failed
decode, a full disk or an interrupt leaves nothing behind, and an unwritable cache folder is reported
before anything is decoded. The cache lives
in ``$RD3FAST_CACHE`` or ``~/.cache/rd3fast`` (``cachedir``); ``python -m rd3fast.prepare cache`` fills it
ahead of time.

This module sits above the data layers and the readers (it decodes with either) and below
``experiment``; nothing it imports imports it back.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..atomic import atomic_tmp, atomic_write
from ..cachedir import CACHE_ENV, cache_root
from ..errors import Interrupted, RD3Error
from ..lock import OutputLock
from ..progress import bar
from . import sets as data
from .backends import make_reader
from .decode import Fit, decoded
from .content import listing_identity
from .folders import ImageList, list_image_folder
from .sets import ImageSet

TRANSFORM_VERSION = 2  # 2: keyed by content; bump whenever the decode geometry or a decoder's settings change
DECODERS = ("pil", "dali", "ffcv")
SCHEMA = 1
PARALLEL_MIN = 64  # files above which the PIL decode into the cache uses worker processes
BATCH = 256  # images per write into the cache file
NOTE_EVERY = 8  # batches between notes of a partial entry's progress (what an interrupted build resumes from)


def cache_key(root: str | Path | ImageList, image_size: int, resize_ratio: float, decoder: str = "pil",
              class_map: str | Path | None = None, progress: bool = False) -> tuple[str, dict[str, Any]]:
    """(hex key, the dict it hashes) for one folder (or a dataset split's listing) + transform + decoder.
    The folder counts by content, as a run's identity does (``content.listing_identity``: every file's
    relative path, label and sha256, through the stat-keyed hash cache), so an image replaced in place, even
    with its old size and mtime, is a new entry, never the old crops."""
    decoder = resolve_decoder(decoder)
    if decoder not in DECODERS:
        raise RD3Error(f"--loader: the validation decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    listing = root if isinstance(root, ImageList) else list_image_folder(root, class_map)
    source = {"root": str(Path(listing.root).resolve()), "classes": list(listing.classes),
              "files": len(listing.files), "content_sha256": listing_identity(listing, progress=progress)["sha256"]}
    desc = {"kind": "val-centre-crops", "source": source, "image_size": int(image_size),
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


def _uint8_batches(root: Path | ImageList, listing: ImageList, image_size: int, resize_ratio: float, decoder: str,
                   workers: int | None, device: str | torch.device, class_map: str | Path | None,
                   batch_size: int = BATCH, skip: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """(offset, uint8 B x 3 x S x S) in listing order from the chosen decoder; PIL starts at image ``skip``
    (a resumed build), the readers always at 0."""
    if decoder == "pil":
        n = len(listing.files)
        files = [Path(f) for f in listing.files[skip:]]
        with decoded(files, Fit.centre_crop(image_size, resize_ratio), workers, PARALLEL_MIN) as arrays:
            buf = np.empty((max(1, min(batch_size, n - skip)), 3, image_size, image_size), np.uint8)
            start, fill = skip, 0
            for arr in arrays:
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
    reader = make_reader(decoder, root, mode="val", image_size=image_size, resize_ratio=resize_ratio,
                         batch_size=batch_size, device=device, workers=workers, output="uint8",
                         class_map=class_map)
    start = 0
    for x, y in reader:
        arr = x.cpu().numpy()
        if y.cpu().tolist() != list(listing.labels[start:start + len(arr)]):
            raise RD3Error(f"{listing.root}: the {decoder} reader's labels disagree with the listing at image {start}")
        yield start, arr
        start += len(arr)


def _where(cache_dir: str | Path | None) -> str:
    """The cache folder as the user chose it, for messages: the flag's value, or where the default came from."""
    root = cache_root(cache_dir)
    return f"--val-cache {root}" if cache_dir else f"validation cache {root} (${CACHE_ENV} or ~/.cache/rd3fast)"


def _writable_folder(folder: Path, cache_dir: str | Path | None) -> list[Path]:
    """Create the cache's ``folder`` or say in one line, naming --val-cache, why no entry can go there. Returns
    the folders it created (deepest first), for ``_remove_empty`` when the entry then fails: a refused or
    failed cache leaves no empty folder behind."""
    fix = "pass --val-cache off, or --val-cache DIR with a writable folder"
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_empty(created)  # the ones made before the one that failed
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else f"cannot create {folder} ({e.strerror or e})"
        raise RD3Error(f"{_where(cache_dir)}: {why}; {fix}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        _remove_empty(created)
        raise RD3Error(f"{_where(cache_dir)}: {folder} is not writable; {fix}")
    return created


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty: what a failed cache fill made and did not use."""
    for f in folders:
        try:
            f.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty (another entry, a partial one kept to resume), or not ours to remove
            break


def _no_space(folder: Path, need: int, cache_dir: str | Path | None) -> RD3Error:
    free = shutil.disk_usage(folder).free
    return RD3Error(f"no space left on {folder} for the validation cache: need {need / 1e6:.1f} MB, "
                    f"{free / 1e6:.1f} MB free ({_where(cache_dir)}); pass --val-cache off or another DIR")


class _NpyWriter:
    """Writes uint8 images into a .npy file's data at their offsets (``os.pwrite``), not through a memory map:
    pages written through a map stay in the process's resident memory until the kernel reclaims them (a
    50,000-image ImageNet validation cache at 224 px is 7.5 GB), while written and synced pages are dropped
    from the page cache (``posix_fadvise(DONTNEED)``) every few batches. Host memory stays one batch."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        with open(path, "rb") as f:  # the data offset: after the .npy header, whatever its version
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = read(f)
            self.offset = f.tell()
        self.shape = tuple(shape)
        self.per_image = math.prod(self.shape[1:])

    def write(self, start: int, arr: np.ndarray) -> None:
        data = np.ascontiguousarray(arr, dtype=np.uint8)
        os.pwrite(self.fd, memoryview(data).cast("B"), self.offset + start * self.per_image)

    def sync(self) -> None:
        """On disk, and out of the page cache (what is on disk need not stay in memory)."""
        os.fdatasync(self.fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _reserved_npy(path: Path, shape: tuple[int, ...], cache_dir: str | Path | None) -> _NpyWriter:
    """A uint8 .npy of ``shape`` at ``path`` (an existing empty file), its disk space allocated before any
    image is written: a full disk is one clear error now, not a failed write (or, through a memory map, a
    SIGBUS) half-way through the decode."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    with open(path, "r+b") as f:
        np.lib.format.write_array_header_1_0(f, header)
        size = f.tell() + math.prod(shape)
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except AttributeError:  # no posix_fallocate (macOS): the file stays sparse, unreserved
            f.truncate(size)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _no_space(path.parent, size, cache_dir) from None
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve
                raise
            f.truncate(size)
    return _NpyWriter(path)


def build(root: str | Path | ImageList, *, image_size: int, resize_ratio: float, decoder: str = "pil",
          class_map: str | Path | None = None, workers: int | None = None,
          device: str | torch.device | None = None, cache_dir: str | Path | None = None,
          progress: bool = True) -> Path:
    """Decode ``root`` (a folder, or a dataset split's listing) once into the cache (if its entry is missing);
    returns the entry's .npy path.
    ``device`` is where DALI decodes (default: the GPU when there is one). ``progress``: a bar per batch
    written (on a terminal). The cache folder is checked before anything is decoded, its space reserved
    before anything is written, and on any failure or interrupt no file of the entry is left behind."""
    data.check_resize_ratio(resize_ratio)  # also guards callers that skip data.load_real (prepare cache)
    decoder = resolve_decoder(decoder)
    device = _default_device(decoder, device)
    listing = root if isinstance(root, ImageList) else list_image_folder(root, class_map)  # once: key and decode
    key, desc = cache_key(listing, image_size, resize_ratio, decoder, class_map, progress)
    folder = cache_root(cache_dir) / "val"
    entry = folder / key
    finals = _paths(entry)
    npy, labels_npy, meta = finals
    if all(f.is_file() for f in finals):
        return npy
    created = _writable_folder(folder, cache_dir)
    try:
        # One builder per entry: a second run that needs the same entry waits for the first, then reads it,
        # instead of decoding the same folder twice side by side.
        with OutputLock.file(entry.with_suffix(".npy"), flag="--val-cache").acquire(wait=True):
            if all(f.is_file() for f in finals):
                return npy
            return _build_entry(root, listing, finals, key, desc, folder, cache_dir, image_size=image_size,
                                resize_ratio=resize_ratio, decoder=decoder, class_map=class_map, workers=workers,
                                device=device, progress=progress)
    except BaseException:
        _remove_empty(created)  # an interrupted fill keeps its partial entry, and so its folders
        raise


def _build_entry(root: str | Path | ImageList, listing: ImageList, finals: tuple[Path, Path, Path], key: str,
                 desc: dict[str, Any], folder: Path, cache_dir: str | Path | None, *,
                 image_size: int, resize_ratio: float, decoder: str, class_map: str | Path | None,
                 workers: int | None, device: torch.device, progress: bool) -> Path:
    """Decode into ``<entry>.partial.npy``, noting in ``<entry>.partial.json`` how many images it holds (every
    few batches, after they are written). An interrupted build (Ctrl-C, SIGTERM, kill -9) leaves both, and
    the next build of the same entry continues after the last noted image instead of starting over (PIL
    decoder; the DALI/FFCV readers start over). A failure (a bad image, a full disk) removes them: nothing
    half-written is kept that could not be finished."""
    npy, labels_npy, meta = finals
    entry = npy.with_suffix("")
    name = listing.root
    n = len(listing.files)
    shape = (n, 3, image_size, image_size)
    part_npy, part_json = entry.with_suffix(".partial.npy"), entry.with_suffix(".partial.json")
    tmps: list[Path] = []
    replaced: list[Path] = []
    t0 = time.perf_counter()
    done = keep = 0
    out: _NpyWriter | None = None
    try:
        done = _resume_point(part_npy, part_json, key, shape) if decoder == "pil" else 0
        if done:
            out = _NpyWriter(part_npy)
            print(f"rd3fast: resuming the validation cache entry {entry.name} of {name} at image {done} of {n}",
                  flush=True)
        else:
            part_json.unlink(missing_ok=True)
            part_npy.write_bytes(b"")
            out = _reserved_npy(part_npy, shape, cache_dir)
        for f in finals[1:]:  # one by one, so the ones made before a failure are cleaned up
            tmps.append(atomic_tmp(f))
        tmp_labels, tmp_meta = tmps
        # closing: an error or interrupt stops the decoder's worker pool now, not when the traceback is freed.
        source = root if isinstance(root, ImageList) else Path(root)
        skip = done
        with contextlib.closing(_uint8_batches(source, listing, image_size, resize_ratio, decoder, workers, device,
                                               class_map, batch_size=BATCH, skip=skip)) as batches:
            for i, (start, arr) in enumerate(bar(batches, total=math.ceil((n - skip) / BATCH),
                                                 desc=f"decode {name} once ({decoder})", unit="batch",
                                                 enabled=progress)):
                out.write(start, arr)
                done = start + len(arr)
                if i % NOTE_EVERY == NOTE_EVERY - 1:
                    _note(out, part_json, key, shape, done)
        if done != n:
            raise RD3Error(f"{name}: the {decoder} decoder returned {done} images for {n} files")
        out.sync()
        out.close()
        with open(tmp_labels, "wb") as f:  # a file object: np.save would append .npy to a name
            np.save(f, np.asarray(listing.labels, dtype=np.int64), allow_pickle=False)
        record = {"schema": SCHEMA, "key": key, **desc, "images": n, "decode_s": time.perf_counter() - t0,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        tmp_meta.write_text(json.dumps(record, indent=1))
        # The .json is the commit marker: replaced last, so a half-written entry is never read.
        for tmp, final in zip([part_npy, *tmps], finals):
            os.replace(tmp, final)
            replaced.append(final)
        part_json.unlink(missing_ok=True)
    except (KeyboardInterrupt, Interrupted):
        if done and out is not None:  # keep what is decoded: the next build goes on from here
            _note(out, part_json, key, shape, done)
            keep = 1
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(folder, n * 3 * image_size * image_size, cache_dir) from None
        what = f"{e.filename}: {e.strerror}" if e.filename else str(e)
        raise RD3Error(f"filling the validation cache entry {entry} failed ({what}); nothing was kept. "
                       "Pass --val-cache off or another DIR") from None
    finally:
        if out is not None:
            out.close()
        for t in tmps:
            t.unlink(missing_ok=True)
        if not keep and len(replaced) < len(finals):
            part_npy.unlink(missing_ok=True)
            part_json.unlink(missing_ok=True)
        if len(replaced) < len(finals):  # without its .json the rest is no entry: leave nothing half-written
            for f in replaced:
                f.unlink(missing_ok=True)
    return npy


def _note(out: _NpyWriter, part_json: Path, key: str, shape: tuple[int, ...], done: int) -> None:
    """Record that the partial entry holds its first ``done`` images (synced to disk first)."""
    out.sync()
    with atomic_write(part_json) as tmp:
        tmp.write_text(json.dumps({"key": key, "shape": list(shape), "done": done}))


def _resume_point(part_npy: Path, part_json: Path, key: str, shape: tuple[int, ...]) -> int:
    """How many images a partial entry left by an interrupted build holds (0: none, or not this build's)."""
    try:
        note = json.loads(part_json.read_text())
        arr = np.load(part_npy, mmap_mode="r")
        ok = note.get("key") == key and tuple(note.get("shape", ())) == shape and arr.shape == shape
        done = int(note.get("done", 0)) if ok else 0
        del arr
    except (OSError, ValueError, TypeError, AttributeError):
        return 0
    return done if 0 < done <= shape[0] else 0


def load(npy: str | Path) -> ImageSet:
    """An ImageSet over a cache entry: images memory-mapped copy-on-write (nothing decoded or read yet). An
    entry that is unreadable or does not add up is an RD3Error telling the user which files to delete."""
    npy = Path(npy)
    entry = npy.with_suffix("")
    _, labels_npy, meta = _paths(entry)
    delete = f"delete {entry}.* (its .npy, .labels.npy and .json) to rebuild it"
    try:
        record = json.loads(meta.read_text())
        classes = [str(c) for c in record["source"]["classes"]]
        root = str(record["source"]["root"])
        images = np.load(npy, mmap_mode="c")
        labels = np.load(labels_npy)
    except KeyError as e:
        raise RD3Error(f"validation cache entry {meta} has no {e} key; {delete}") from None
    except (OSError, ValueError, EOFError, TypeError) as e:  # TypeError: JSON of the wrong shape
        raise RD3Error(f"validation cache entry {entry} is unreadable ({e}); {delete}") from None
    if (images.ndim != 4 or images.dtype != np.uint8 or labels.ndim != 1 or labels.dtype != np.int64
            or images.shape[0] != len(labels) or record.get("images", len(labels)) != len(labels)
            or (len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes))):
        raise RD3Error(f"validation cache entry {entry} is inconsistent (images {images.shape} {images.dtype}, "
                       f"{len(labels)} labels, {len(classes)} classes); {delete}")
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), classes, root)


def cached_real(root: str | Path | ImageList, *, image_size: int, resize_ratio: float, decoder: str = "pil",
                class_map: str | Path | None = None, workers: int | None = None,
                device: str | torch.device | None = None, cache_dir: str | Path | None = None,
                progress: bool = True) -> ImageSet:
    """``data.load_real`` for a folder, through the cache: decode once, memory-map afterwards."""
    return load(build(root, image_size=image_size, resize_ratio=resize_ratio, decoder=decoder,
                      class_map=class_map, workers=workers, device=device, cache_dir=cache_dir,
                      progress=progress))


def load_real(source: str, split: str, *, image_size: int = 0, resize_ratio: float = 0.0,
              class_map: str | Path | None = None, workers: int | None = None, cache: bool | str = "auto",
              decoder: str = "pil", progress: bool = True, data_root: str | Path | None = None) -> ImageSet:
    """``data.load_real`` (same arguments and checks), a validation folder read through the cache unless
    ``cache`` is off: True/"auto"/"on": the default cache dir, a path: that dir, False/"off": decode now.
    ``decoder`` (pil | dali | ffcv | auto) decodes a folder missing from the cache (3-channel images)."""
    if cache in (False, None, "", "off"):
        return data.load_real(source, split, image_size=image_size, resize_ratio=resize_ratio,
                              class_map=class_map, workers=workers, progress=progress, data_root=data_root)
    cache_dir = None if cache in (True, "auto", "on") else str(cache)
    return data.load_real(source, split, image_size=image_size, resize_ratio=resize_ratio, class_map=class_map,
                          workers=workers, progress=progress, data_root=data_root,
                          read_val_folder=partial(cached_real, decoder=decoder, cache_dir=cache_dir))
