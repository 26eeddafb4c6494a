"""What a run's inputs *are*, by content: the one definition of "the same set", "the same test set" and "the
same file" that a sweep's run ids (``bench.identity``) and the soft-label cache's fingerprint
(``engine.train``) both use, so a changed input is a new run (or a refused replay), never a stale result.

What each identity covers:

- ``set_identity(path)``: an ImageFolder: every image's path relative to the folder, its label (the class
  folder's index, under the class map when one is given) and its content sha256; a tensor file: its sha256;
  an MTT-style folder: the sha256 of every file the reader reads (images_best.pt, labels_best.pt and
  lr_best.pt when present: ``--lr from-set`` trains with it).
- ``test_set_identity(dataset, data_root, val)``: a ``--val`` folder or a named file set (Tiny-ImageNet, the
  ImageNet family): its listing (relative paths, labels) with each file's content sha256; an array set
  (digits, MNIST, Fashion-MNIST, CIFAR): the sha256 of the files its test split is read from.
- ``split_identity(dataset, "train", data_root)``: the training split a held-out split is carved from or a
  ZCA is fitted on: array sets by the content of their files as above; a file set's training split (ImageNet:
  1.28 M files) by its listing with each file's size and mtime, the validation cache's rule, because hashing
  it whole at every plan would cost minutes.
- ``inputs_identity(cfg)``: every other file a run reads: the class map (its content) and, under --zca, what
  the whitening is fitted on. A replayed soft-label cache is left to the cache's own check at open.

None of them names the folder the data is in, so inputs copied elsewhere (``cp -a``, ``rsync -a``) keep their
identity.

When a hash is recomputed: a file's sha256 is remembered in ``$RD3FAST_CACHE/hashes/`` (one JSON file per
folder of hashed files, written atomically) under the file's absolute path and stat key (size, mtime_ns,
ctime_ns, inode); it is read again only when one of those changed. A rewrite changes the ctime even when a
tool restores the mtime, so a replaced file is always hashed again, and a rerun over unchanged inputs costs
one ``stat`` per file. A cache that cannot be read or written is ignored: the hashes are recomputed.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..atomic import atomic_write
from ..cachedir import cache_root
from ..config import Config
from ..errors import RD3Error
from ..progress import iterate
from .cifar import find_cifar
from .datasets import BUILTIN, dataset_info, fashion_mnist_dir, list_files, resolve_root, split_name
from .folders import ImageList, list_image_folder
from .mnist import find_mnist
from .tensors import MTT_FILES, MTT_LR_FILE, is_mtt_folder

HASHES = "hashes"  # the stat-keyed sha256 cache's folder under the cache root
SCHEMA = 1  # of a hash-cache file
CHUNK = 1 << 20  # bytes read at a time while hashing
FLUSH_EVERY = 2000  # new hashes between writes of the cache: an interrupted first hash of a large set keeps most
PROGRESS_FROM = 256  # files to hash before a progress bar is shown (on a terminal)


def hash_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read now (``HashCache.sha256`` remembers it)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
    except OSError as e:
        raise RD3Error(f"cannot read {path}: {e.strerror or e}") from None
    return h.hexdigest()


def digest(obj: Any) -> str:
    """sha256 of a JSON-able value, keys sorted: how identities are compared and folded into ids."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class HashCache:
    """sha256 of files, remembered by (size, mtime_ns, ctime_ns, inode) in one JSON file per folder.

    One instance serves many files (a folder's thousands of images): the folders' files are read once, and
    what changed is written at ``flush`` (and every FLUSH_EVERY new hashes), never once per file."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root() / HASHES
        self._folders: dict[str, dict[str, list]] = {}
        self._dirty: set[str] = set()
        self._new = 0
        self.hashed = 0  # files read and hashed by this instance (what a test of the rule counts)

    def sha256(self, path: str | Path) -> str:
        p = os.path.abspath(path)
        try:
            st = os.stat(p)
        except OSError as e:
            raise RD3Error(f"cannot read {path}: {e.strerror or e}") from None
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        folder, name = os.path.split(p)
        entries = self._folder(folder)
        known = entries.get(name)
        if isinstance(known, list) and len(known) == 5 and known[:4] == stamp and isinstance(known[4], str):
            return known[4]
        sha = hash_file(p)
        self.hashed += 1
        entries[name] = [*stamp, sha]
        self._dirty.add(folder)
        self._new += 1
        if self._new >= FLUSH_EVERY:
            self.flush()
        return sha

    def _file(self, folder: str) -> Path:
        return self.root / f"{hashlib.sha256(folder.encode()).hexdigest()[:32]}.json"

    def _folder(self, folder: str) -> dict[str, list]:
        if folder not in self._folders:
            entries: dict[str, list] = {}
            try:
                saved = json.loads(self._file(folder).read_text())
                if (saved.get("schema") == SCHEMA and saved.get("folder") == folder
                        and isinstance(saved.get("files"), dict)):
                    entries = saved["files"]
            except (OSError, ValueError, AttributeError):
                pass  # none yet, unreadable or damaged: hashed again and rewritten
            self._folders[folder] = entries
        return self._folders[folder]

    def flush(self) -> None:
        """Write what changed; a cache that cannot be written is left as it is (hashes recomputed next time)."""
        for folder in sorted(self._dirty):
            record = {"schema": SCHEMA, "folder": folder, "files": self._folders[folder]}
            try:
                with atomic_write(self._file(folder)) as tmp:
                    tmp.write_text(json.dumps(record, separators=(",", ":")))
            except (OSError, RD3Error):
                pass
        self._dirty.clear()
        self._new = 0

    def many(self, paths: Sequence[str | Path], desc: str = "hash", progress: bool = True) -> list[str]:
        """sha256 of each path, in order, the cache written once at the end; a bar (on a terminal) for many."""
        out = [self.sha256(p) for p in iterate(paths, total=len(paths), desc=desc, unit="file",
                                               enabled=progress and len(paths) >= PROGRESS_FROM)]
        self.flush()
        return out


def file_sha256(path: str | Path, cache: HashCache | None = None) -> str:
    """One file's sha256 through the stat-keyed cache (``cache``: a caller's, shared across many files)."""
    own = cache is None
    cache = cache or HashCache()
    sha = cache.sha256(path)
    if own:
        cache.flush()
    return sha


# ---------------------------------------------------------------------------------------------------
# Sets, test sets, other inputs
# ---------------------------------------------------------------------------------------------------
def listing_identity(listing: ImageList, cache: HashCache | None = None, progress: bool = True) -> dict[str, Any]:
    """A listing by content: each file's path relative to the listing's root, its label and its sha256 (in
    the listing's order), folded into one digest, with the class and file counts beside it."""
    cache = cache or HashCache()
    shas = cache.many(listing.files, desc=f"hash {listing.root}", progress=progress)
    h = hashlib.sha256()
    for f, y, sha in zip(listing.files, listing.labels, shas):
        h.update(f"{os.path.relpath(f, listing.root)}\t{y}\t{sha}\n".encode())
    return {"kind": "files", "classes": len(listing.classes), "files": len(listing.files), "sha256": h.hexdigest()}


def set_identity(path: str | Path, class_map: str | Path | None = None, cache: HashCache | None = None,
                 progress: bool = True, what: str = "distilled set") -> dict[str, Any]:
    """A distilled set (or a ZCA's --zca-train set) by content: an ImageFolder's listing (relative paths,
    labels under ``class_map``, contents); a tensor file's sha256; an MTT folder's files' sha256s.
    ``what`` names the path in the error when it does not exist."""
    p = Path(path)
    if not p.exists():
        raise RD3Error(f"{what} {p} does not exist")
    cache = cache or HashCache()
    if p.is_dir() and not is_mtt_folder(p):
        return listing_identity(list_image_folder(p, class_map), cache, progress)
    if p.is_dir():  # every file read_tensor_set reads: the pair (a missing one is its error) and the lr
        names = [n for n in (*MTT_FILES, MTT_LR_FILE) if (p / n).is_file()]
        out = {"kind": "mtt", "files": {n: cache.sha256(p / n) for n in names}}
    else:
        out = {"kind": "tensors", "sha256": cache.sha256(p)}
    cache.flush()
    return out


def _mnist_files(folder: Path, split: str) -> list[Path]:
    """The IDX files ``mnist.read_mnist`` reads for ``split`` (train | test): plain where both exist."""
    prefix = "train" if split == "train" else "t10k"
    out = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        base = folder / f"{prefix}-{kind}"
        out.append(base if base.is_file() else base.with_name(base.name + ".gz"))
    return out


def _cifar_files(folder: Path, name: str, version: str, split: str) -> list[Path]:
    """The files ``cifar.read_cifar`` reads for ``split``: its batches and the class-name metadata."""
    if name == "cifar10":
        ext = "" if version == "python" else ".bin"
        batches = [f"data_batch_{i}{ext}" for i in range(1, 6)] if split == "train" else [f"test_batch{ext}"]
        meta = ["batches.meta" if version == "python" else "batches.meta.txt"]
    else:
        batches = [("train" if split == "train" else "test") + ("" if version == "python" else ".bin")]
        meta = ["meta"] if version == "python" else ["fine_label_names.txt", "coarse_label_names.txt"]
    return [folder / f for f in (*batches, *meta)]


def _digits_file() -> Path | None:
    """scikit-learn's bundled digits.csv.gz, found without importing scikit-learn (None: not installed)."""
    spec = importlib.util.find_spec("sklearn")
    for base in (spec.submodule_search_locations or []) if spec is not None else []:
        f = Path(base) / "datasets" / "data" / "digits.csv.gz"
        if f.is_file():
            return f
    return None


def array_files(dataset: str, split: str, data_root: str | Path | None = None) -> list[Path]:
    """The files an array set's split is read from (``datasets.read_arrays``)."""
    info, split = dataset_info(dataset), split_name(dataset, split)
    if info.kind != "arrays":
        raise RD3Error(f"--dataset {dataset} is read as files (list_files), not as arrays")
    mnist_split = "train" if split == "train" else "test"
    if dataset == "digits":
        f = _digits_file()
        return [f] if f is not None else []
    root = resolve_root(dataset, data_root)
    if dataset == "fashion-mnist" and root is None:
        return _mnist_files(fashion_mnist_dir(), mnist_split)
    if dataset in ("mnist", "fashion-mnist"):
        return _mnist_files(find_mnist(root, dataset), mnist_split)
    base = "cifar100" if dataset.startswith("cifar100") else dataset
    folder, version = find_cifar(root, base)
    return _cifar_files(folder, base, version, mnist_split)


def split_identity(dataset: str, split: str, data_root: str | Path | None = None, cache: HashCache | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """A named dataset's split by content (module docstring: a file set's *training* split by its listing's
    sizes and mtimes instead)."""
    info, split = dataset_info(dataset), split_name(dataset, split)
    cache = cache or HashCache()
    if info.kind == "files":
        listing = list_files(dataset, split, data_root)
        if split == "train":
            return {"dataset": dataset, "split": split, **_stat_identity(listing)}
        return {"dataset": dataset, "split": split, **listing_identity(listing, cache, progress)}
    files = array_files(dataset, split, data_root)
    shas = cache.many(files, progress=False)
    return {"dataset": dataset, "split": split, "kind": "arrays", "files": {f.name: s for f, s in zip(files, shas)}}


def _stat_identity(listing: ImageList) -> dict[str, Any]:
    """A listing by relative path, label, size and mtime (the validation cache's rule): no content read."""
    h = hashlib.sha256()
    for f, y in zip(listing.files, listing.labels):
        st = os.stat(f)
        h.update(f"{os.path.relpath(f, listing.root)}\t{y}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return {"kind": "listing-stat", "classes": len(listing.classes), "files": len(listing.files),
            "sha256": h.hexdigest()}


def test_set_identity(dataset: str | None, data_root: str | Path | None, val: str | Path | None,
                      cache: HashCache | None = None, progress: bool = True) -> dict[str, Any]:
    """The test set a run reports its top-1 on: a named dataset's test split (``split_identity``) or a
    ``--val`` folder's listing by content. The folder's location is not part of it."""
    cache = cache or HashCache()
    if dataset is not None:
        return split_identity(dataset, "val", data_root, cache, progress)
    if val is None:
        raise RD3Error("no validation set: pass --dataset NAME or --val FOLDER")
    return {"val": listing_identity(list_image_folder(val), cache, progress)}


test_set_identity.__test__ = False  # type: ignore[attr-defined]  # a function, not a pytest test


def inputs_identity(cfg: Config, cache: HashCache | None = None, progress: bool = True) -> dict[str, Any]:
    """Every other file a run's numbers depend on, by content: the class map, and under --zca what the
    whitening is fitted on (--zca-train's set, or the dataset's training split)."""
    cache = cache or HashCache()
    out: dict[str, Any] = {}
    if cfg.class_map is not None:
        if not Path(cfg.class_map).is_file():
            raise RD3Error(f"class map {cfg.class_map} does not exist; expected a text file, one class folder per line")
        out["class_map"] = file_sha256(cfg.class_map, cache)
    if cfg.zca:
        source = cfg.zca_train or cfg.dataset
        if source in BUILTIN:
            out["zca_train"] = split_identity(source, "train", cfg.data_root, cache, progress)
        elif source is not None:
            out["zca_train"] = set_identity(source, cache=cache, progress=progress, what="--zca-train")
    cache.flush()
    return out
