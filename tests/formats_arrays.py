"""Fixture writers: tiny CIFAR-10/100 (python and binary versions) and MNIST/Fashion-MNIST (torchvision's raw
IDX layout) sets, written in the exact native formats, for the readers in ``rd3fast.data.cifar`` and
``rd3fast.data.mnist``.

The CIFAR python batches are what Python 2's cPickle wrote in 2009 (https://www.cs.toronto.edu/~kriz/cifar.html):
protocol 2, dict keys and strings as Python 2 ``str`` (the pickle opcodes SHORT_BINSTRING/BINSTRING, which
Python 3 loads as bytes or as latin-1 str depending on ``encoding``), the pixels a numpy uint8 array rebuilt
through ``numpy.core.multiarray._reconstruct`` with its raw bytes as one BINSTRING, labels a list of ints.
Python 3's own pickler cannot write that stream (at protocol 2 it turns bytes into ``_codecs.encode`` calls
and numpy 2 names ``numpy._core``), so ``py2_pickle`` emits the opcodes itself.

Every writer returns what it wrote (images uint8 N x C x H x W numpy arrays, int64 labels, class names) so a
test compares the reader's output to it. The pixel content depends only on (name, per_class, seed), so the
python and binary versions written with the same arguments hold the same images.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Synthetic names (CIFAR-100's real ones are English nouns like "aquarium_fish"; the underscore is kept)
CIFAR100_FINE = [f"fine_{i:02d}" for i in range(100)]
CIFAR100_COARSE = [f"coarse_{i:02d}" for i in range(20)]
TRAIN_BATCHES = 5  # CIFAR-10's data_batch_1..5


# ---------------------------------------------------------------------------------------------------
# A Python 2 cPickle stream (protocol 2), opcode by opcode
# ---------------------------------------------------------------------------------------------------
def py2_pickle(obj: Any) -> bytes:
    """``obj`` as Python 2's cPickle.dump(obj, f, 2) wrote it: bytes are Python 2 ``str`` (BINSTRING), numpy
    arrays go through ``numpy.core.multiarray._reconstruct``. Supports dict, list, tuple, bytes, int, bool,
    None and C-contiguous numpy arrays of a builtin dtype, which is all a CIFAR batch holds. No memo opcodes
    (cPickle writes BINPUT after each container; loading does not need them)."""
    out = bytearray(pickle.PROTO + b"\x02")
    _emit(out, obj)
    out += pickle.STOP
    return bytes(out)


def _emit(out: bytearray, obj: Any) -> None:
    if obj is None:
        out += pickle.NONE
    elif isinstance(obj, bool):
        out += pickle.NEWTRUE if obj else pickle.NEWFALSE
    elif isinstance(obj, (int, np.integer)):
        _emit_int(out, int(obj))
    elif isinstance(obj, bytes):
        if len(obj) < 256:
            out += pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj
        else:
            out += pickle.BINSTRING + struct.pack("<i", len(obj)) + obj
    elif isinstance(obj, str):
        _emit(out, obj.encode("latin-1"))  # Python 2 str: a byte string
    elif isinstance(obj, tuple):
        if 1 <= len(obj) <= 3:
            for x in obj:
                _emit(out, x)
            out += (pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3)[len(obj) - 1]
        else:
            out += pickle.MARK
            for x in obj:
                _emit(out, x)
            out += pickle.TUPLE
    elif isinstance(obj, list):
        out += pickle.EMPTY_LIST
        for start in range(0, len(obj), 1000):  # cPickle batches APPENDS by 1000
            out += pickle.MARK
            for x in obj[start:start + 1000]:
                _emit(out, x)
            out += pickle.APPENDS
    elif isinstance(obj, dict):
        out += pickle.EMPTY_DICT
        items = list(obj.items())
        for start in range(0, len(items), 1000):
            out += pickle.MARK
            for k, v in items[start:start + 1000]:
                _emit(out, k)
                _emit(out, v)
            out += pickle.SETITEMS
    elif isinstance(obj, np.ndarray):
        _emit_array(out, obj)
    else:
        raise TypeError(f"py2_pickle: cannot write {type(obj).__name__}")


def _emit_int(out: bytearray, v: int) -> None:
    if 0 <= v < 256:
        out += pickle.BININT1 + bytes([v])
    elif 0 <= v < 65536:
        out += pickle.BININT2 + struct.pack("<H", v)
    else:
        out += pickle.BININT + struct.pack("<i", v)


def _global(out: bytearray, module: str, name: str) -> None:
    out += pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _emit_array(out: bytearray, a: np.ndarray) -> None:
    # numpy 1.x's ndarray.__reduce__: _reconstruct(ndarray, (0,), 'b') then __setstate__((1, shape, dtype,
    # is_fortran, raw bytes)); the dtype itself is dtype('u1', 0, 1) with state (3, '|', None, None, None,
    # -1, -1, 0)
    assert a.flags.c_contiguous and a.dtype.names is None
    _global(out, "numpy.core.multiarray", "_reconstruct")
    _global(out, "numpy", "ndarray")
    _emit(out, (0,))
    _emit(out, b"b")
    out += pickle.TUPLE3 + pickle.REDUCE
    out += pickle.MARK
    _emit(out, 1)
    _emit(out, tuple(int(d) for d in a.shape))
    _global(out, "numpy", "dtype")
    _emit(out, (a.dtype.str[1:].encode(), 0, 1))
    out += pickle.REDUCE
    order = a.dtype.byteorder if a.dtype.byteorder in "<>" else "|"
    _emit(out, (3, order.encode(), None, None, None, -1, -1, 0))
    out += pickle.BUILD
    _emit(out, False)
    _emit(out, a.tobytes())
    out += pickle.TUPLE + pickle.BUILD


# ---------------------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------------------
def cifar_content(name: str, per_class: int, seed: int = 0) -> dict:
    """Random images and shuffled labels: ``per_class`` images per class in train and in test; CIFAR-100's
    coarse label is fine // 5 (the real mapping differs; only its consistency matters here)."""
    rng = np.random.default_rng(seed)
    k = 10 if name == "cifar10" else 100
    content: dict = {"classes": list(CIFAR10_CLASSES if k == 10 else CIFAR100_FINE)}
    for split in ("train", "test"):
        labels = rng.permutation(np.repeat(np.arange(k, dtype=np.int64), per_class))
        images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
        content[split] = (images, labels)
        if k == 100:
            content[f"{split}_coarse"] = labels // 5
    if k == 100:
        content["coarse_classes"] = list(CIFAR100_COARSE)
    return content


def _filenames(labels: np.ndarray, start: int) -> list[bytes]:
    return [f"image_{start + i:05d}_label{int(y)}.png".encode() for i, y in enumerate(labels)]


def train_batch_bounds(n: int) -> list[tuple[int, int]]:
    """How the writers split n train images over data_batch_1..5 (unequal sizes on purpose: the reader must
    not assume 10000 per batch)."""
    cuts = np.linspace(0, n, TRAIN_BATCHES + 1).astype(int)
    cuts[1] = max(1, cuts[1] - 1)  # batch 1 one shorter than the rest
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def write_cifar_python(root: Path, name: str, per_class: int, seed: int = 0) -> dict:
    """``root/cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta) or ``root/cifar-100-python/``
    (train, test, meta), as the official archives hold them. Returns ``cifar_content``."""
    c = cifar_content(name, per_class, seed)
    if name == "cifar10":
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        images, labels = c["train"]
        for b, (lo, hi) in enumerate(train_batch_bounds(len(labels)), 1):
            _write_py_batch(folder / f"data_batch_{b}", f"training batch {b} of 5", images[lo:hi], labels[lo:hi], lo)
        _write_py_batch(folder / "test_batch", "testing batch 1 of 1", *c["test"], 0)
        meta = {b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in c["classes"]], b"num_vis": 3072}
        (folder / "batches.meta").write_bytes(py2_pickle(meta))
    else:
        folder = Path(root) / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        for split, batch_label in (("train", "training batch 1 of 1"), ("test", "testing batch 1 of 1")):
            images, fine = c[split]
            batch = {b"filenames": _filenames(fine, 0), b"batch_label": batch_label.encode(),
                     b"fine_labels": [int(y) for y in fine],
                     b"coarse_labels": [int(y) for y in c[f"{split}_coarse"]],
                     b"data": images.reshape(len(images), 3072)}
            (folder / split).write_bytes(py2_pickle(batch))
        meta = {b"fine_label_names": [n.encode() for n in c["classes"]],
                b"coarse_label_names": [n.encode() for n in c["coarse_classes"]]}
        (folder / "meta").write_bytes(py2_pickle(meta))
    return c


def _write_py_batch(path: Path, batch_label: str, images: np.ndarray, labels: np.ndarray, start: int) -> None:
    # CIFAR-10's key order: data, labels, batch_label, filenames
    batch = {b"data": images.reshape(len(images), 3072), b"labels": [int(y) for y in labels],
             b"batch_label": batch_label.encode(), b"filenames": _filenames(labels, start)}
    path.write_bytes(py2_pickle(batch))


def write_cifar_binary(root: Path, name: str, per_class: int, seed: int = 0) -> dict:
    """``root/cifar-10-batches-bin/`` (data_batch_1..5.bin, test_batch.bin: records of <label byte><3072 pixel
    bytes>; batches.meta.txt) or ``root/cifar-100-binary/`` (train.bin, test.bin: <coarse byte><fine byte>
    <3072 pixel bytes>; fine_label_names.txt, coarse_label_names.txt). Returns ``cifar_content``."""
    c = cifar_content(name, per_class, seed)
    if name == "cifar10":
        folder = Path(root) / "cifar-10-batches-bin"
        folder.mkdir(parents=True, exist_ok=True)
        images, labels = c["train"]
        for b, (lo, hi) in enumerate(train_batch_bounds(len(labels)), 1):
            (folder / f"data_batch_{b}.bin").write_bytes(_records([labels[lo:hi]], images[lo:hi]))
        (folder / "test_batch.bin").write_bytes(_records([c["test"][1]], c["test"][0]))
        # the real file ends in a blank line
        (folder / "batches.meta.txt").write_text("\n".join(c["classes"]) + "\n\n")
    else:
        folder = Path(root) / "cifar-100-binary"
        folder.mkdir(parents=True, exist_ok=True)
        for split in ("train", "test"):
            images, fine = c[split]
            (folder / f"{split}.bin").write_bytes(_records([c[f"{split}_coarse"], fine], images))
        (folder / "fine_label_names.txt").write_text("\n".join(c["classes"]) + "\n")
        (folder / "coarse_label_names.txt").write_text("\n".join(c["coarse_classes"]) + "\n")
    return c


def _records(label_columns: list[np.ndarray], images: np.ndarray) -> bytes:
    cols = [np.asarray(col, np.uint8)[:, None] for col in label_columns]
    return np.concatenate([*cols, images.reshape(len(images), 3072)], axis=1).tobytes()


# ---------------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (torchvision's <root>/MNIST/raw, <root>/FashionMNIST/raw)
# ---------------------------------------------------------------------------------------------------
MNIST_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x00000800 + ndim (2049 labels, 2051 images), big-endian dims."""
    arr = np.ascontiguousarray(arr, np.uint8)
    return struct.pack(f">I{arr.ndim}I", 0x800 + arr.ndim, *arr.shape) + arr.tobytes()


def write_mnist_raw(root: Path, name: str, n_train: int, n_test: int, seed: int = 0, gz: bool = False) -> dict:
    """The four IDX files in ``root/MNIST/raw`` (or ``root/FashionMNIST/raw``), plain or (gz) only gzipped.
    Returns {"train": (images N x 1 x 28 x 28, labels), "test": (...), "folder": the raw folder}."""
    folder = Path(root) / MNIST_FOLDERS[name] / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out: dict = {"folder": folder}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.int64)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            data = idx_bytes(arr)
            path = folder / f"{prefix}-{kind}"
            if gz:
                with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
                    f.write(data)
            else:
                path.write_bytes(data)
        out[split] = (images[:, None], labels)
    return out


# ---------------------------------------------------------------------------------------------------
# A booby-trapped pickle
# ---------------------------------------------------------------------------------------------------
class _Touch:
    """Pickles as a call to pathlib.Path.touch(marker): loading it with plain pickle creates the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self) -> tuple:
        return Path.touch, (self.marker,)


def write_evil_pickle(path: Path, marker: Path | None = None, protocol: int = 2) -> Path:
    """A CIFAR-looking batch whose ``data`` value runs code when loaded with plain ``pickle.load``: it creates
    the file ``marker`` (default: ``path`` + ".pwned"), so a test can prove nothing ran. Protocol 2 is a
    Python 2 stream calling ``__builtin__.open(marker, "w")`` (GLOBAL opcode); protocol 4 or 5 is Python 3's
    pickle of ``pathlib.Path.touch(marker)`` (STACK_GLOBAL). Returns the marker path."""
    path = Path(path)
    marker = Path(marker) if marker is not None else path.with_name(path.name + ".pwned")
    if protocol == 2:
        out = bytearray(pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK)
        _emit(out, b"labels")
        _emit(out, [0, 1])
        _emit(out, b"data")
        _global(out, "__builtin__", "open")
        _emit(out, (str(marker).encode(), b"w"))
        out += pickle.REDUCE + pickle.SETITEMS + pickle.STOP
        path.write_bytes(bytes(out))
    else:
        path.write_bytes(pickle.dumps({b"labels": [0, 1], b"data": _Touch(marker)}, protocol=protocol))
    return marker
