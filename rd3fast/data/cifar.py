"""CIFAR-10 and CIFAR-100 as the official archives unpack: the python version (pickled batches) and the
binary version (fixed-size records), read into uint8 N x 3 x 32 x 32 images, int64 labels and class names.

The format is described at https://www.cs.toronto.edu/~kriz/cifar.html:

* python version, ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
  ``batches.meta`` with ``label_names``) and ``cifar-100-python/`` (``train``, ``test``, ``meta`` with
  ``fine_label_names`` and ``coarse_label_names``). Each file is a dict pickled by Python 2's cPickle
  (protocol 2): ``data`` is a uint8 numpy array (N, 3072), each row the 1024 red, then 1024 green, then 1024
  blue values of a 32 x 32 image in row-major order; ``labels`` (CIFAR-10) or ``fine_labels`` and
  ``coarse_labels`` (CIFAR-100) are lists of N ints.
* binary version, ``cifar-10-batches-bin/`` (``data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin``,
  ``batches.meta.txt``: one class name a line) and ``cifar-100-binary/`` (``train.bin``, ``test.bin``,
  ``fine_label_names.txt``, ``coarse_label_names.txt``). A record is 1 label byte (CIFAR-10) or 1 coarse then
  1 fine label byte (CIFAR-100), followed by the same 3072 pixel bytes as a python-version row.

Pickles can run code when loaded, so the batches are read with an unpickler that builds only what these
files contain (numpy arrays, lists, bytes, strings) and refuses every other global before anything runs.
"""
from __future__ import annotations

import builtins
import importlib
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import RD3Error

CIFAR_FOLDERS: dict[str, tuple[str, str]] = {"cifar10": ("cifar-10-batches-py", "cifar-10-batches-bin"),
                                             "cifar100": ("cifar-100-python", "cifar-100-binary")}
VERSIONS = ("python", "binary")
PIXELS = 3 * 32 * 32  # one image: the R, G and B planes of 32 x 32
_TITLE = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
_NUM_CLASSES = {("cifar10", "fine"): 10, ("cifar100", "fine"): 100, ("cifar100", "coarse"): 20}


# ---------------------------------------------------------------------------------------------------
# Which files make up a set
# ---------------------------------------------------------------------------------------------------
def _layout(name: str, version: str) -> tuple[list[str], str, list[str], str]:
    """(train batch files in order, test batch file, metadata files, a short description for messages)."""
    if name == "cifar10":
        ext = "" if version == "python" else ".bin"
        meta = ["batches.meta"] if version == "python" else ["batches.meta.txt"]
        train = [f"data_batch_{i}{ext}" for i in range(1, 6)]
        return train, f"test_batch{ext}", meta, f"data_batch_1..5{ext}, test_batch{ext}, {meta[0]}"
    if version == "python":
        return ["train"], "test", ["meta"], "train, test, meta"
    meta = ["fine_label_names.txt", "coarse_label_names.txt"]
    return ["train.bin"], "test.bin", meta, "train.bin, test.bin, " + ", ".join(meta)


def _check_name(name: str) -> None:
    if name not in CIFAR_FOLDERS:
        raise RD3Error(f"unknown CIFAR set {name!r}: expected one of {', '.join(CIFAR_FOLDERS)}")


def _missing(folder: Path, name: str, version: str) -> list[str]:
    train, test, meta, _ = _layout(name, version)
    return [f for f in [*train, test, *meta] if not (folder / f).is_file()]


def _has_batches(folder: Path, name: str, version: str) -> bool:
    train, test, _, _ = _layout(name, version)
    return any((folder / f).is_file() for f in [*train, test])


def find_cifar(data_root: str | Path, name: str) -> tuple[Path, str]:
    """The folder holding CIFAR-10 or CIFAR-100 (``name``: "cifar10" | "cifar100") and its version ("python" |
    "binary"): ``data_root/<official folder>/`` or, when the user pointed at that folder, ``data_root`` itself
    (recognised by its files). The python version wins where both are present."""
    _check_name(name)
    root = Path(data_root)
    title = _TITLE[name]
    if not root.is_dir():
        raise RD3Error(f"--data-root {root}: not a directory (expected the folder holding "
                       f"{' or '.join(f + '/' for f in CIFAR_FOLDERS[name])} of {title})")
    candidates = [(root / sub, version) for sub, version in zip(CIFAR_FOLDERS[name], VERSIONS, strict=True)]
    candidates += [(root, version) for version in VERSIONS]
    for folder, version in candidates:
        if folder.is_dir() and not _missing(folder, name, version):
            return folder, version
    # Nothing complete: a half-extracted archive deserves its missing files named rather than "not found"
    for folder, version in candidates:
        if folder.is_dir() and (folder != root or _has_batches(folder, name, version)):
            raise RD3Error(f"{folder}: incomplete {title} ({version} version): missing "
                           f"{', '.join(_missing(folder, name, version))}")
    looked = [f"{root / sub}/ ({_layout(name, v)[3]})"
              for sub, v in zip(CIFAR_FOLDERS[name], VERSIONS, strict=True)]
    raise RD3Error(f"--data-root {root}: no {title} found: looked for {looked[0]}, {looked[1]} and those files "
                   f"in {root} itself")


# ---------------------------------------------------------------------------------------------------
# The restricted unpickler
# ---------------------------------------------------------------------------------------------------
class _Refused(pickle.UnpicklingError):
    """A global the batches never contain: raised before it is looked up, so nothing of it runs."""


def _numpy_core(submodule: str) -> Any:
    # numpy >= 1.26 has numpy._core (numpy 2 moved the code there and left numpy.core as a warning shim);
    # older numpy only numpy.core. Files name either, depending on the numpy that wrote them.
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{submodule}")


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    # Python 3 writes bytes at protocol <= 2 as _codecs.encode(str, 'latin1') (a CIFAR batch re-saved in
    # Python 3); only that encoding is let through
    codec = encoding.lower().replace("-", "").replace("_", "") if isinstance(encoding, str) else None
    if not isinstance(text, str) or codec not in ("latin1", "iso88591"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


def _scalar(dtype: np.dtype, *args: Any) -> Any:
    # numpy scalars (a label saved as np.int64): an object dtype would take its value from the pickle
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _Refused("numpy scalar of an object dtype")
    return _numpy_core("multiarray").scalar(dtype, *args)


_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}
for _core in ("numpy.core", "numpy._core"):
    # _reconstruct + ndarray + dtype: ndarray.__reduce__ up to protocol 4; _frombuffer: protocol 5
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = lambda: _numpy_core("multiarray")._reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = lambda: _scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = lambda: _numpy_core("numeric")._frombuffer
for _builtins in ("__builtin__", "builtins"):  # Python 2's name, and Python 3's
    for _container in ("set", "frozenset", "bytes", "bytearray"):
        _ALLOWED[(_builtins, _container)] = lambda c=_container: getattr(builtins, c)


class _BatchUnpickler(pickle.Unpickler):
    """Builds numpy arrays, containers, numbers, bytes and strings; refuses every other global (GLOBAL,
    STACK_GLOBAL, INST, OBJ and the copyreg extension opcodes all come through find_class)."""

    def find_class(self, module: str, name: str) -> Any:
        make = _ALLOWED.get((module, name))
        if make is None:
            raise _Refused(f"{module}.{name}")
        return make()


def _load_pickle(path: Path) -> dict[str, Any]:
    """One batch or meta file, as a dict with str keys."""
    try:
        with open(path, "rb") as f:
            # latin-1: Python 2 str (keys, names and the arrays' raw bytes) come back byte for byte
            obj = _BatchUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise RD3Error(f"{path}: refused to unpickle {e} (a CIFAR batch holds only numpy arrays, lists, bytes "
                       f"and strings)") from None
    except OSError as e:
        raise RD3Error(f"cannot read CIFAR file {path}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - any failure inside a corrupt pickle is the same bad input
        detail = (str(e).splitlines() or [""])[0]
        raise RD3Error(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {detail}); expected a CIFAR "
                       f"batch as the official archive holds it") from None
    if not isinstance(obj, dict):
        raise RD3Error(f"{path}: holds a pickled {type(obj).__name__}; a CIFAR batch or meta file is a dict")
    # keys are bytes when a file was loaded (and re-saved) with encoding='bytes'
    return {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _entry(d: dict[str, Any], key: str, path: Path) -> Any:
    if key not in d:
        keys = ", ".join(sorted(map(str, d))) or "none"
        raise RD3Error(f"{path}: no {key!r} entry (keys: {keys}); not a CIFAR file of this kind")
    return d[key]


def _label_array(value: Any, path: Path, key: str) -> np.ndarray:
    arr = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    if arr is None or arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        what = type(value).__name__ if arr is None else f"{arr.dtype} array of shape {arr.shape}"
        raise RD3Error(f"{path}: {key!r} should be a list of ints, found {what}")
    return arr.astype(np.int64)


def _names(values: Any, path: Path, key: str) -> list[str]:
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, (str, bytes)) for v in values):
        raise RD3Error(f"{path}: {key!r} should be a list of class names")
    return [v.decode("latin-1") if isinstance(v, bytes) else v for v in values]


def _read_python_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _load_pickle(path)
    data = _entry(d, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        what = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise RD3Error(f"{path}: 'data' should be a uint8 array of shape (N, {PIXELS}), found {what}")
    labels = _label_array(_entry(d, label_key, path), path, label_key)
    if len(labels) != len(data):
        raise RD3Error(f"{path}: {len(data)} images but {len(labels)} {label_key!r}; expected one label per image")
    return data, labels


def _read_binary_batch(path: Path, label_column: int, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + PIXELS
    try:
        raw = bytearray(path.read_bytes())  # writable, so the numpy views below need no copy
    except OSError as e:
        raise RD3Error(f"cannot read CIFAR file {path}: {e.strerror or e}") from None
    if not raw or len(raw) % record:
        raise RD3Error(f"{path}: {len(raw)} bytes is not a whole number of {record}-byte records "
                       f"({label_bytes} label byte(s) + {PIXELS} pixel bytes); truncated or not this set's file")
    rows = np.frombuffer(raw, np.uint8).reshape(-1, record)
    return rows[:, label_bytes:], rows[:, label_column].astype(np.int64)


def _read_names_txt(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RD3Error(f"cannot read CIFAR class names {path}: {e}") from None
    # one name a line; the official files end in blank lines
    return [line.strip() for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------
# Reading a split
# ---------------------------------------------------------------------------------------------------
def read_cifar(folder: str | Path, name: str, split: str, version: str,
               labels: str = "fine") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One split ("train": batches 1..5 concatenated in order; "test") of the set in ``folder`` (as
    ``find_cifar`` returns it): uint8 (N, 3, 32, 32) contiguous images, int64 (N,) labels and the class
    names in CIFAR's own label order (label i is names[i]). ``labels``: "fine" or, for CIFAR-100 only,
    "coarse" (its 20 superclasses)."""
    _check_name(name)
    folder = Path(folder)
    title = _TITLE[name]
    if split not in ("train", "test"):
        raise RD3Error(f"CIFAR split {split!r}: expected 'train' or 'test'")
    if version not in VERSIONS:
        raise RD3Error(f"CIFAR version {version!r}: expected 'python' or 'binary'")
    if labels not in ("fine", "coarse"):
        raise RD3Error(f"CIFAR labels {labels!r}: expected 'fine' or 'coarse'")
    if (name, labels) not in _NUM_CLASSES:
        raise RD3Error(f"labels {labels!r}: {title} has one set of labels; only CIFAR-100 has coarse ones")
    train, test, meta, _ = _layout(name, version)
    files = [folder / f for f in (train if split == "train" else [test])]

    if version == "python":
        meta_path = folder / meta[0]
        meta_key = "label_names" if name == "cifar10" else f"{labels}_label_names"
        names = _names(_entry(_load_pickle(meta_path), meta_key, meta_path), meta_path, meta_key)
        label_key = "labels" if name == "cifar10" else f"{labels}_labels"
        batches = [_read_python_batch(p, label_key) for p in files]
    else:
        meta_path = folder / (meta[0] if name == "cifar10" else f"{labels}_label_names.txt")
        names = _read_names_txt(meta_path)
        label_bytes = 1 if name == "cifar10" else 2
        label_column = 1 if (name, labels) == ("cifar100", "fine") else 0  # CIFAR-100: <coarse><fine><pixels>
        batches = [_read_binary_batch(p, label_column, label_bytes) for p in files]

    expected = _NUM_CLASSES[(name, labels)]
    if len(names) != expected:
        raise RD3Error(f"{meta_path}: {len(names)} class names, expected {expected} for {title} "
                       f"({labels} labels)")
    for p, (_, y) in zip(files, batches, strict=True):
        bad = y[(y < 0) | (y >= expected)]
        if len(bad):
            raise RD3Error(f"{p}: label {int(bad[0])} outside 0..{expected - 1} of {title} ({labels} labels)")
    # concatenate copies even a single batch: the result owns contiguous memory (the binary rows are
    # strided views into the file's bytes)
    images = np.concatenate([x for x, _ in batches]).reshape(-1, 3, 32, 32)
    targets = np.concatenate([y for _, y in batches])
    return torch.from_numpy(images), torch.from_numpy(targets), names
