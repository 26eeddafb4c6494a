"""The field's datasets by name, end to end on fixtures in their native layouts: `run`, a sweep with held-out
selection and --zca, `pretrain`, `distill`, `prepare` and the validation cache all read CIFAR-10 (python
version), Tiny-ImageNet and ImageNet's flat validation folder in place; bad roots are one line, exit 2."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from formats_arrays import write_cifar_binary, write_cifar_python
from formats_trees import write_imagenet_flat_val, write_imagenette, write_tiny_imagenet

from rd3fast import distill, prepare, pretrain, run
from rd3fast.bench import __main__ as bench
from rd3fast.data import datasets, valcache
from rd3fast.data.sets import heldout_split, load_real, train_subset
from rd3fast.errors import RD3Error

ARCH = "convnet-d2-w8"


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """CIFAR-10 as torchvision downloads it (20 train + 20 test images per class), a teacher pre-trained on it
    by name, and a random IPC-2 set distilled from it by name."""
    work = tmp_path_factory.mktemp("cifar")
    content = write_cifar_python(work / "data", "cifar10", per_class=20)
    assert pretrain.main(["--dataset", "cifar10", "--data-root", str(work / "data"), "--arch", ARCH, "--epochs", "1",
                          "--batch-size", "50", "--out", str(work / "teacher.pt"), "--no-progress"]) == 0
    assert distill.main(["--method", "random", "--dataset", "cifar10", "--data-root", str(work / "data"),
                         "--ipc", "2", "--out", str(work / "syn"), "--no-progress"]) == 0
    return work, content


def test_cifar_run_end_to_end(cifar, monkeypatch, tmp_path):
    """`run --dataset cifar10` with $RD3FAST_DATA as the root: the test split is CIFAR's test_batch (every
    image, CIFAR's label order), normalized with the CIFAR-10 defaults."""
    work, content = cifar
    monkeypatch.setenv(datasets.DATA_ENV, str(work / "data"))
    out = tmp_path / "out"
    assert run.main(["--preset", "rd3-small", "--dataset", "cifar10", "--distilled", str(work / "syn"),
                     "--teacher", ARCH, "--teacher-weights", str(work / "teacher.pt"), "--student", ARCH,
                     "--epochs", "2", "--batch-size", "10", "--seeds", "0", "--out", str(out), "--no-progress"]) == 0
    rec = json.loads((out / "results.json").read_text())
    assert rec["config"]["dataset"] == "cifar10" and rec["config"]["image_size"] == 32
    assert rec["config"]["mean"] == list(datasets.BUILTIN["cifar10"].mean)
    [r] = rec["runs"]
    assert r["status"] == "ok" and 0 <= r["evals"][-1]["top1"] <= 100
    val = load_real("cifar10", "test", data_root=work / "data")
    assert torch.equal(val.images, torch.from_numpy(content["test"][0]))
    assert val.labels.tolist() == content["test"][1].tolist() and val.classes == content["classes"]


def test_cifar_binary_reads_as_the_python_version(tmp_path):
    write_cifar_python(tmp_path / "py", "cifar10", per_class=3, seed=5)
    write_cifar_binary(tmp_path / "bin", "cifar10", per_class=3, seed=5)
    a, b = load_real("cifar10", "train", data_root=tmp_path / "py"), load_real("cifar10", "train", data_root=tmp_path / "bin")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.classes == b.classes


def test_cifar_sweep_with_heldout_selection_and_zca(cifar, tmp_path):
    """A sweep names the dataset and its root (relative to the TOML); [select] carves the held-out split from
    CIFAR's training split, and --zca is fitted on it: every run records its held-out top-1, and the
    leaderboard is written."""
    work, _ = cifar
    shutil.copytree(work / "syn", tmp_path / "syn")
    shutil.copy2(work / "teacher.pt", tmp_path / "teacher.pt")
    shutil.copytree(work / "data", tmp_path / "data")
    (tmp_path / "s.toml").write_text(f'''root = "out"
dataset = "cifar10"
data_root = "data"
seeds = [0]
students = ["{ARCH}"]
epochs = 2
batch_size = 10
zca = true
aug = "dsa"
crop = "none"
flip_p = 0.0
patch_shuffle = 1

[[teachers]]
arch = "{ARCH}"
weights = "teacher.pt"

[[sets]]
name = "random"
path = "syn"
method = "random-real"
ipc = 2

[protocols.rd3-small]

[grid]
lr = [0.001, 0.002]

[select]
keys = ["lr"]
size = 20
''')
    assert bench.main([str(tmp_path / "s.toml"), "--no-progress"]) == 0
    results = [json.loads(p.read_text()) for p in (tmp_path / "out" / "runs").glob("*/results.json")]
    assert len(results) == 2 and all(r["status"] == "ok" for r in results)
    assert all(r["run"]["last_heldout_top1"] is not None for r in results)
    assert any("ZCA" in note for r in results for note in r["run"]["notes"])
    assert (tmp_path / "out" / "leaderboard.md").is_file()


def test_heldout_split_of_cifar_is_drawn_from_train(cifar):
    work, content = cifar
    held = heldout_split("cifar10", 30, seed=1, data_root=work / "data")
    assert held.labels.bincount().tolist() == [3] * 10
    train = {bytes(x) for x in content["train"][0].reshape(len(content["train"][0]), -1)}
    assert all(bytes(x) in train for x in held.images.reshape(len(held.images), -1).numpy())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(200)]
    written = write_tiny_imagenet(root, wnids, per_class_train=2, val_per_class=1)
    return root.parent, written


def test_tiny_imagenet_val_cache_heldout_and_distill(tiny, tmp_path):
    """Tiny-ImageNet's val/ (labelled by val_annotations.txt) decoded once into the cache and memory-mapped
    afterwards; the held-out split decodes only the images it draws; `distill` reads the training split."""
    data_root, written = tiny
    cache = tmp_path / "cache"
    first = valcache.load_real("tiny-imagenet", "val", cache=str(cache), data_root=data_root, progress=False)
    assert first.images.shape == (200, 3, 64, 64) and first.num_classes == 200
    assert list(first.classes) == sorted(w for _, w in written["val"])  # sorted wnids
    assert len(list((cache / "val").glob("*.npy"))) == 2  # images + labels
    again = valcache.load_real("tiny-imagenet", "val", cache=str(cache), data_root=data_root, progress=False)
    assert torch.equal(again.images, first.images) and isinstance(again.images.untyped_storage(), object)
    held = heldout_split("tiny-imagenet", 200, seed=0, data_root=data_root, progress=False)
    assert held.images.shape == (200, 3, 64, 64) and held.labels.bincount().tolist() == [1] * 200
    assert distill.main(["--method", "random", "--dataset", "tiny-imagenet", "--data-root", str(data_root),
                         "--ipc", "1", "--max-per-class", "1", "--out", str(tmp_path / "syn"), "--no-progress"]) == 0
    assert len(list((tmp_path / "syn").glob("*/*.png"))) == 200


def test_imagenet_flat_val_is_read_with_its_csv(tmp_path, monkeypatch):
    """Kaggle's tree (LOC_val_solution.csv above ILSVRC/Data/CLS-LOC/): the flat val folder is labelled by
    the CSV in sorted-wnid order; `prepare cache --source imagenet` fills the cache that `run` then reads;
    the held-out split decodes only what it draws."""
    wnids = ["n02", "n01", "n03"]
    written = write_imagenet_flat_val(tmp_path / "kaggle", wnids, per_class_train=3, per_class_val=2, kaggle_tree=True)
    cache = tmp_path / "cache"
    monkeypatch.setenv("RD3FAST_CACHE", str(cache))
    assert prepare.main(["cache", "--source", "imagenet", "--data-root", str(tmp_path / "kaggle"),
                         "--image-size", "32", "--no-progress"]) == 0
    val = valcache.load_real("imagenet", "val", image_size=32, resize_ratio=0.875, data_root=tmp_path / "kaggle",
                             progress=False)
    assert val.classes == sorted(wnids) and len(val.labels) == 6
    by_file = {Path(f).name: w for f, w in written["val"]}
    listing = datasets.list_files("imagenet", "val", tmp_path / "kaggle")
    assert [val.classes[y] for y in val.labels.tolist()] == [by_file[Path(f).name] for f in listing.files]
    assert len(list((cache / "val").glob("*.json"))) == 1  # run's read found prepare's entry: no second decode
    decoded = []
    real = valcache.data.decode_val_folder

    def counting(listing, **kw):
        decoded.append(len(listing.files))
        return real(listing, **kw)

    monkeypatch.setattr(valcache.data, "decode_val_folder", counting)
    held = train_subset("imagenet", 1, seed=0, image_size=32, data_root=tmp_path / "kaggle", progress=False)
    assert decoded == [3] and held.labels.tolist() == [0, 1, 2]


def test_imagenette_by_name(tmp_path):
    write_imagenette(tmp_path, "imagenette2-160", per_class_train=1, per_class_val=1)
    s = load_real("imagenette", "val", image_size=32, data_root=tmp_path)
    assert s.images.shape == (10, 3, 32, 32) and s.classes == sorted(s.classes)


@pytest.mark.parametrize("argv,expected", [
    (["--dataset", "cifar10", "--data-root", "{empty}"], "no CIFAR-10 found"),
    (["--dataset", "cifar10", "--data-root", "{missing}"], "--data-root"),
    (["--dataset", "tiny-imagenet", "--data-root", "{empty}"], "tiny-imagenet-200"),
    (["--dataset", "imagenet", "--data-root", "{empty}"], "imagenet"),
    (["--dataset", "cifar11"], "unknown dataset 'cifar11'"),
])
def test_bad_data_roots_are_one_line(tmp_path, monkeypatch, capsys, argv, expected):
    monkeypatch.delenv(datasets.DATA_ENV, raising=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "syn" / "0").mkdir(parents=True)
    argv = [a.format(empty=tmp_path / "empty", missing=tmp_path / "missing") for a in argv]
    code = run.main([*argv, "--distilled", str(tmp_path / "syn"), "--teacher", ARCH, "--teacher-weights", "w.pt",
                     "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and expected in err, err
    assert not (tmp_path / "out").exists()


def test_no_data_root_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv(datasets.DATA_ENV, raising=False)
    with pytest.raises(RD3Error, match=r"pass --data-root DIR \(or set \$RD3FAST_DATA\)"):
        load_real("cifar100", "train")


def test_interrupted_val_cache_decode_resumes(tmp_path, monkeypatch):
    """An interrupt while a validation set decodes into the cache keeps what was decoded (noted every few
    batches); the next build decodes only the rest, and the entry equals one built in one go."""
    write_imagenette(tmp_path / "data", "imagenette2-160", per_class_train=1, per_class_val=3)
    listing = datasets.list_files("imagenette", "val", tmp_path / "data")
    monkeypatch.setattr(valcache, "BATCH", 4)
    monkeypatch.setattr(valcache, "NOTE_EVERY", 2)
    monkeypatch.setattr(valcache, "PARALLEL_MIN", 10**6)  # in this process: the patched decoder is seen
    real, seen = valcache.decoded, []

    def interrupted_after(files, fit, workers=None, parallel_min=None):
        seen.append(len(files))
        ctx = real(files, fit, workers, parallel_min)

        class Gen:
            def __enter__(self):
                arrays = ctx.__enter__()

                def limited():
                    for i, a in enumerate(arrays):
                        if len(seen) == 1 and i == 20:
                            raise KeyboardInterrupt
                        yield a
                return limited()

            def __exit__(self, *exc):
                return ctx.__exit__(*exc)
        return Gen()

    monkeypatch.setattr(valcache, "decoded", interrupted_after)
    kw = dict(image_size=32, resize_ratio=0.875, cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(KeyboardInterrupt):
        valcache.build(listing, **kw)
    assert list((tmp_path / "cache" / "val").glob("*.partial.json"))
    npy = valcache.build(listing, **kw)
    assert seen == [30, 10]  # the interrupt at image 20 noted the 5 batches of 4 written before it
    assert not list((tmp_path / "cache" / "val").glob("*.partial.*"))
    monkeypatch.setattr(valcache, "decoded", real)
    fresh = valcache.build(listing, **{**kw, "cache_dir": tmp_path / "fresh"})
    assert np.array_equal(np.load(npy), np.load(fresh))
