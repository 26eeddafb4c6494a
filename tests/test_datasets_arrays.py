"""CIFAR-10/100 (python and binary versions) and MNIST/Fashion-MNIST (torchvision's raw IDX layout) readers,
on tiny sets written in the exact native formats by ``formats_arrays``."""
from __future__ import annotations

import gzip
import pickle
import shutil

import numpy as np
import pytest
import torch

# the fixture writers next to this file (pytest puts tests/ on sys.path)
from formats_arrays import (CIFAR10_CLASSES, idx_bytes, py2_pickle, train_batch_bounds,
                            write_cifar_binary, write_cifar_python, write_evil_pickle, write_mnist_raw)

from rd3fast.data.cifar import CIFAR_FOLDERS, find_cifar, read_cifar
from rd3fast.data.mnist import MNIST_CLASSES, MNIST_FOLDERS, find_mnist, read_mnist
from rd3fast.errors import RD3Error

WRITERS = {"python": write_cifar_python, "binary": write_cifar_binary}
PER_CLASS = {"cifar10": 3, "cifar100": 2}


def one_line_error(match: str, call, *args, **kwargs) -> str:  # noqa: ANN001
    """The RD3Error of call(*args): one line, containing ``match`` (the file it names)."""
    with pytest.raises(RD3Error) as info:
        call(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert match in msg, msg
    return msg


def check_split(got: tuple[torch.Tensor, torch.Tensor, list[str]], images: np.ndarray, labels: np.ndarray,
                classes: list[str], channels: int, size: int) -> None:
    x, y, names = got
    assert x.dtype == torch.uint8 and x.is_contiguous() and x.shape == (len(labels), channels, size, size)
    assert y.dtype == torch.int64 and y.shape == (len(labels),)
    assert names == classes
    assert np.array_equal(x.numpy(), images)
    assert np.array_equal(y.numpy(), labels)


# ---------------------------------------------------------------------------------------------------
# CIFAR: reading back what was written
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["python", "binary"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_round_trip(tmp_path, name, version):
    wrote = WRITERS[version](tmp_path, name, PER_CLASS[name], seed=3)
    folder, found_version = find_cifar(tmp_path, name)
    assert folder == tmp_path / CIFAR_FOLDERS[name][version == "binary"] and found_version == version
    for split in ("train", "test"):
        check_split(read_cifar(folder, name, split, version), *wrote[split], wrote["classes"], 3, 32)
    if name == "cifar100":
        for split in ("train", "test"):
            got = read_cifar(folder, name, split, version, labels="coarse")
            check_split(got, wrote[split][0], wrote[f"{split}_coarse"], wrote["coarse_classes"], 3, 32)
            assert len(got[2]) == 20 and got[1].max() < 20


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_python_equals_binary(tmp_path, name):
    write_cifar_python(tmp_path, name, PER_CLASS[name], seed=7)
    write_cifar_binary(tmp_path, name, PER_CLASS[name], seed=7)
    py_folder, bin_folder = (tmp_path / f for f in CIFAR_FOLDERS[name])
    for split in ("train", "test"):
        for labels in (("fine", "coarse") if name == "cifar100" else ("fine",)):
            a = read_cifar(py_folder, name, split, "python", labels)
            b = read_cifar(bin_folder, name, split, "binary", labels)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_cifar10_train_is_batches_1_to_5_in_order(tmp_path):
    wrote = write_cifar_python(tmp_path, "cifar10", 3)
    folder = tmp_path / "cifar-10-batches-py"
    images, labels, names = read_cifar(folder, "cifar10", "train", "python")
    assert names == CIFAR10_CLASSES
    # each batch's own content is where batches 1..5 in order put it (the writer's batches differ in size)
    for b, (lo, hi) in enumerate(train_batch_bounds(30), 1):
        with open(folder / f"data_batch_{b}", "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # our own fixture: plain pickle is fine here
        assert set(batch) == {b"data", b"labels", b"batch_label", b"filenames"}
        assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (hi - lo, 3072)
        assert np.array_equal(images[lo:hi].reshape(hi - lo, -1).numpy(), batch[b"data"])
        assert labels[lo:hi].tolist() == batch[b"labels"]
    # R, then G, then B planes, each 32 x 32 row-major: the first 32 values of a row are the red top row
    assert np.array_equal(images[0, 0, 0].numpy(), wrote["train"][0][0, 0, 0])


def test_cifar_python_fixture_is_python2_cpickle(tmp_path):
    """The fixture is the 2009 stream: protocol 2, byte-string keys (loaded as bytes with encoding='bytes'),
    numpy.core.multiarray._reconstruct; Python 3's own pickler would write _codecs.encode instead."""
    write_cifar_python(tmp_path, "cifar100", 2)
    raw = (tmp_path / "cifar-100-python" / "train").read_bytes()
    assert raw[:2] == b"\x80\x02" and b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"_codecs" not in raw
    with open(tmp_path / "cifar-100-python" / "meta", "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert set(meta) == {b"fine_label_names", b"coarse_label_names"} and meta[b"fine_label_names"][0] == b"fine_00"


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_python_resaved_by_python3(tmp_path, protocol):
    """A batch loaded and re-saved in Python 3 (numpy 2 names numpy._core; at protocol 2 bytes become
    _codecs.encode(..., 'latin1'), at 5 the array is numpy's _frombuffer) still reads."""
    wrote = write_cifar_python(tmp_path, "cifar10", 2)
    folder = tmp_path / "cifar-10-batches-py"
    for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        with open(folder / f, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        if f == "test_batch":
            d[b"labels"] = np.asarray(d[b"labels"], np.int64)  # a numpy label array is fine too
        if f == "data_batch_1":
            d[b"labels"] = [np.int64(y) for y in d[b"labels"]]  # and numpy scalars (numpy's scalar())
        (folder / f).write_bytes(pickle.dumps(d, protocol=protocol))
    check_split(read_cifar(folder, "cifar10", "train", "python"), *wrote["train"], CIFAR10_CLASSES, 3, 32)
    check_split(read_cifar(folder, "cifar10", "test", "python"), *wrote["test"], CIFAR10_CLASSES, 3, 32)


def test_cifar_argument_errors(tmp_path):
    write_cifar_python(tmp_path, "cifar10", 1)
    folder = tmp_path / "cifar-10-batches-py"
    one_line_error("coarse", read_cifar, folder, "cifar10", "train", "python", labels="coarse")
    one_line_error("'val'", read_cifar, folder, "cifar10", "val", "python")
    one_line_error("'jpeg'", read_cifar, folder, "cifar10", "train", "jpeg")
    one_line_error("'cifar1000'", find_cifar, tmp_path, "cifar1000")


# ---------------------------------------------------------------------------------------------------
# CIFAR: finding the folder
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["python", "binary"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_find_cifar_in_folder_itself(tmp_path, name, version):
    wrote = WRITERS[version](tmp_path, name, 1)
    folder = tmp_path / CIFAR_FOLDERS[name][version == "binary"]
    assert find_cifar(folder, name) == (folder, version)
    assert find_cifar(str(folder), name) == (folder, version)
    assert torch.equal(read_cifar(folder, name, "test", version)[1], torch.from_numpy(wrote["test"][1]))


def test_find_cifar_prefers_python_and_skips_incomplete(tmp_path):
    write_cifar_python(tmp_path, "cifar10", 1)
    write_cifar_binary(tmp_path, "cifar10", 1)
    assert find_cifar(tmp_path, "cifar10") == (tmp_path / "cifar-10-batches-py", "python")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    assert find_cifar(tmp_path, "cifar10") == (tmp_path / "cifar-10-batches-bin", "binary")
    shutil.rmtree(tmp_path / "cifar-10-batches-bin")
    msg = one_line_error(str(tmp_path / "cifar-10-batches-py"), find_cifar, tmp_path, "cifar10")
    assert "missing data_batch_3" in msg and "incomplete CIFAR-10" in msg


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_find_cifar_not_found_names_what_it_looked_for(tmp_path, name):
    (tmp_path / "something_else").mkdir()
    write_cifar_python(tmp_path / "other", "cifar100" if name == "cifar10" else "cifar10", 1)  # the wrong set
    msg = one_line_error(f"--data-root {tmp_path}", find_cifar, tmp_path, name)
    py, binary = CIFAR_FOLDERS[name]
    assert f"{tmp_path / py}/" in msg and f"{tmp_path / binary}/" in msg and f"in {tmp_path} itself" in msg
    expected = (["data_batch_1..5", "test_batch", "data_batch_1..5.bin", "test_batch.bin"] if name == "cifar10"
                else ["train, test, meta", "train.bin, test.bin", "fine_label_names.txt"])
    assert all(e in msg for e in expected), msg
    one_line_error(str(tmp_path / "nope"), find_cifar, tmp_path / "nope", name)


# ---------------------------------------------------------------------------------------------------
# CIFAR: bad files
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol,refused", [(2, "__builtin__.open"), (4, "pathlib.Path.touch"),
                                              (5, "pathlib.Path.touch")])
def test_cifar_booby_trapped_pickle_runs_nothing(tmp_path, protocol, refused):
    # the trap is real: plain pickle.load runs it
    control = write_evil_pickle(tmp_path / "control.pkl", protocol=protocol)
    with open(tmp_path / "control.pkl", "rb") as f:
        pickle.load(f, encoding="latin1")
    assert control.exists()

    write_cifar_python(tmp_path, "cifar10", 1)
    folder = tmp_path / "cifar-10-batches-py"
    marker = write_evil_pickle(folder / "data_batch_2", tmp_path / "pwned", protocol=protocol)
    msg = one_line_error(str(folder / "data_batch_2"), read_cifar, folder, "cifar10", "train", "python")
    assert f"refused to unpickle {refused}" in msg
    assert not marker.exists()


def test_cifar_refuses_os_system(tmp_path):
    write_cifar_python(tmp_path, "cifar10", 1)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "test_batch").write_bytes(b"\x80\x02cposix\nsystem\nU\x04trueR.")
    msg = one_line_error(f"{folder / 'test_batch'}: refused to unpickle posix.system", read_cifar, folder,
                         "cifar10", "test", "python")
    assert "numpy arrays" in msg


@pytest.mark.parametrize("name,batch", [("cifar10", "data_batch_4"), ("cifar10", "batches.meta"),
                                        ("cifar100", "train")])
@pytest.mark.parametrize("keep", [0.5, -1])
def test_cifar_truncated_pickle(tmp_path, name, batch, keep):
    write_cifar_python(tmp_path, name, 2)
    path = tmp_path / CIFAR_FOLDERS[name][0] / batch
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * keep)] if keep > 0 else raw[:keep])  # mid-data, or just the STOP
    msg = one_line_error(str(path), read_cifar, path.parent, name, "train", "python")
    assert "truncated or corrupt" in msg


def test_cifar_python_wrong_contents(tmp_path):
    write_cifar_python(tmp_path, "cifar10", 1)
    folder = tmp_path / "cifar-10-batches-py"
    path = folder / "test_batch"

    def read() -> None:
        read_cifar(folder, "cifar10", "test", "python")

    good = {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 2]}
    for bad, expect in [({b"data": np.zeros((3, 3072), np.float64)}, "uint8 array of shape (N, 3072)"),
                        ({b"data": np.zeros((3, 32, 32), np.uint8)}, "found uint8 array of shape (3, 32, 32)"),
                        ({b"labels": [0, 1]}, "3 images but 2 'labels'"),
                        ({b"labels": [0, 1, 10]}, "label 10 outside 0..9"),
                        ({b"labels": "abc"}, "'labels' should be a list of ints"),
                        ({b"data": None}, "found NoneType")]:
        path.write_bytes(py2_pickle({**good, **bad}))
        msg = one_line_error(str(path), read)
        assert expect in msg, msg
    path.write_bytes(py2_pickle({b"labels": [0]}))
    assert "no 'data' entry" in one_line_error(str(path), read)
    path.write_bytes(py2_pickle([1, 2]))
    assert "a pickled list" in one_line_error(str(path), read)
    path.write_bytes(py2_pickle(good))
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": [b"a", b"b"]}))
    assert "2 class names, expected 10" in one_line_error(str(folder / "batches.meta"), read)


@pytest.mark.parametrize("name,batch", [("cifar10", "data_batch_5.bin"), ("cifar100", "train.bin")])
def test_cifar_truncated_binary(tmp_path, name, batch):
    write_cifar_binary(tmp_path, name, 2)
    path = tmp_path / CIFAR_FOLDERS[name][1] / batch
    raw = path.read_bytes()
    record = 3073 if name == "cifar10" else 3074
    path.write_bytes(raw[:-100])
    msg = one_line_error(str(path), read_cifar, path.parent, name, "train", "binary")
    assert f"{record}-byte records" in msg
    path.write_bytes(b"")
    one_line_error(str(path), read_cifar, path.parent, name, "train", "binary")
    # a CIFAR-10 file among CIFAR-100's (3073-byte records where 3074 are expected) is caught as well
    path.write_bytes(raw[:len(raw) // record * (record - 1)] if name == "cifar100" else raw[:-1])
    one_line_error(str(path), read_cifar, path.parent, name, "train", "binary")


def test_cifar_binary_label_out_of_range(tmp_path):
    write_cifar_binary(tmp_path, "cifar10", 1)
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[3073] = 200  # the second record's label byte
    path.write_bytes(bytes(raw))
    assert "label 200 outside 0..9" in one_line_error(str(path), read_cifar, path.parent, "cifar10", "test",
                                                      "binary")


# ---------------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_round_trip(tmp_path, name, gz):
    wrote = write_mnist_raw(tmp_path, name, 12, 5, seed=1, gz=gz)
    folder = find_mnist(tmp_path, name)
    assert folder == tmp_path / MNIST_FOLDERS[name] / "raw" == wrote["folder"]
    for split in ("train", "test"):
        check_split(read_mnist(folder, name, split), *wrote[split], MNIST_CLASSES[name], 1, 28)
    assert read_mnist(folder, name, "train")[2][0] == ("0" if name == "mnist" else "T-shirt/top")


def test_mnist_plain_preferred_over_gz(tmp_path):
    plain = write_mnist_raw(tmp_path, "mnist", 4, 3, seed=1)
    write_mnist_raw(tmp_path, "mnist", 6, 2, seed=2, gz=True)  # torchvision keeps both; these differ here
    check_split(read_mnist(plain["folder"], "mnist", "test"), *plain["test"], MNIST_CLASSES["mnist"], 1, 28)


def test_find_mnist_variants(tmp_path):
    write_mnist_raw(tmp_path, "fashion-mnist", 3, 2)
    raw = tmp_path / "FashionMNIST" / "raw"
    assert find_mnist(tmp_path, "fashion-mnist") == raw
    assert find_mnist(tmp_path / "FashionMNIST", "fashion-mnist") == raw  # pointed at FashionMNIST/
    assert find_mnist(raw, "fashion-mnist") == raw  # pointed at raw/ itself
    flat = tmp_path / "flat"
    shutil.copytree(raw, flat)
    assert find_mnist(str(flat), "fashion-mnist") == flat
    # MNIST is not Fashion-MNIST: its folder name differs
    msg = one_line_error(f"--data-root {tmp_path}", find_mnist, tmp_path, "mnist")
    assert f"{tmp_path / 'MNIST' / 'raw'}/" in msg and "train-images-idx3-ubyte" in msg and "itself" in msg
    one_line_error(str(tmp_path / "nope"), find_mnist, tmp_path / "nope", "mnist")
    one_line_error("'emnist'", find_mnist, tmp_path, "emnist")


def test_find_mnist_incomplete(tmp_path):
    raw = write_mnist_raw(tmp_path, "mnist", 3, 2, gz=True)["folder"]
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    msg = one_line_error(str(raw), find_mnist, tmp_path, "mnist")
    assert "missing t10k-labels-idx1-ubyte" in msg and "train-images" not in msg


def test_mnist_mismatched_counts(tmp_path):
    raw = write_mnist_raw(tmp_path, "mnist", 5, 4)["folder"]
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    msg = one_line_error(str(raw / "t10k-images-idx3-ubyte"), read_mnist, raw, "mnist", "test")
    assert str(raw / "t10k-labels-idx1-ubyte") in msg and "4 images" in msg and "3 labels" in msg
    read_mnist(raw, "mnist", "train")  # the other split is unaffected


def test_mnist_bad_files(tmp_path):
    raw = write_mnist_raw(tmp_path, "mnist", 5, 4)["folder"]
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(idx_bytes(np.zeros((5, 32, 32), np.uint8)))
    assert "expected 28x28" in one_line_error(str(images), read_mnist, raw, "mnist", "train")
    images.write_bytes(idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-7])  # truncated
    one_line_error(str(images), read_mnist, raw, "mnist", "train")
    gz = raw / "t10k-images-idx3-ubyte"
    gz.unlink()
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8)))[:-9])
    one_line_error("t10k-images-idx3-ubyte.gz", read_mnist, raw, "mnist", "test")
    labels = raw / "t10k-labels-idx1-ubyte"
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8))))
    labels.write_bytes(idx_bytes(np.array([0, 1, 2, 10], np.uint8)))
    assert "label 10 outside 0..9" in one_line_error(str(labels), read_mnist, raw, "mnist", "test")
    labels.unlink()
    one_line_error(str(labels), read_mnist, raw, "mnist", "test")
    one_line_error("'val'", read_mnist, raw, "mnist", "val")


@pytest.mark.parametrize("stream,refused", [
    (b"\x80\x02c_codecs\nencode\nU\x01xU\x05rot13\x86R.", "_codecs.encode with encoding 'rot13'"),
    (b"\x80\x02cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nU\x02O8K\x00K\x01\x87RN\x86R.",
     "numpy scalar of an object dtype"),
    (b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x8c\x04eval\x93.", "builtins.eval"),
])
def test_cifar_allowed_globals_are_narrow(tmp_path, stream, refused):
    """The few callables let through (for files re-saved by Python 3) take no arbitrary arguments either."""
    write_cifar_python(tmp_path, "cifar10", 1)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(stream)
    assert f"refused to unpickle {refused}" in one_line_error(str(path), read_cifar, path.parent, "cifar10", "test",
                                                              "python")


def test_digits_needs_no_layout_whatever_the_data_root(tmp_path):
    # scikit-learn's copy: a data root given for other sets (or $RD3FAST_DATA) must not be searched for it
    from rd3fast.data.datasets import locate, read_arrays

    assert locate("digits", tmp_path) is None
    assert read_arrays("digits", "train", tmp_path)[0].shape[1:] == (1, 8, 8)
