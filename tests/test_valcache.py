"""The validation set decoded once: cache keys, atomic writes, equality with the decode, evaluation from it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from rd3fast.config import resolve
from rd3fast.data import backends, valcache
from rd3fast.data.sets import BUILTIN, load_real
from rd3fast.engine.models import build_model
from rd3fast.errors import RD3Error
from rd3fast.prepare import export_folder

FM = BUILTIN["fashion-mnist"]


@pytest.fixture(autouse=True)
def cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("RD3FAST_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def fm_jpg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 Fashion-MNIST test images per class as JPEGs, upscaled to 36 px so the crop resizes."""
    return export_folder("fashion-mnist", tmp_path_factory.mktemp("fm") / "val", split="val", limit=20,
                         image_size=36)


def entries(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "val").iterdir()) if (root / "val").exists() else []


def test_cache_equals_the_decode_and_is_reused(fm_jpg: Path, cache_env: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ref = load_real(str(fm_jpg), "val", image_size=28, resize_ratio=0.875, workers=1)
    cached = valcache.load_real(str(fm_jpg), "val", image_size=28, resize_ratio=0.875, workers=2, cache=True)
    assert cached.images.dtype == torch.uint8 and cached.images.shape == (200, 3, 28, 28)
    assert torch.equal(cached.images, ref.images.expand(-1, 3, -1, -1)) and torch.equal(cached.labels, ref.labels)
    assert cached.classes == ref.classes
    names = entries(cache_env)
    assert len(names) == 3 and not [n for n in names if n.endswith(".tmp")]  # .npy, .labels.npy, .json
    meta = json.loads(next((cache_env / "val").glob("*.json")).read_text())
    assert meta["image_size"] == 28 and meta["decoder"] == "pil" and meta["images"] == 200
    assert meta["transform_version"] == valcache.TRANSFORM_VERSION and meta["source"]["files"] == 200

    def no_decode(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(valcache, "_uint8_batches", no_decode)
    again = valcache.load_real(str(fm_jpg), "val", image_size=28, resize_ratio=0.875, cache="auto")
    assert torch.equal(again.images, cached.images) and entries(cache_env) == names


def test_key_covers_source_size_ratio_decoder_and_listing(fm_jpg: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(fm_jpg, root)
    key = valcache.cache_key(root, 28, 0.875)[0]
    assert valcache.cache_key(root, 28, 0.875, "auto")[0] == key  # auto decodes with PIL
    others = {valcache.cache_key(root, 32, 0.875)[0], valcache.cache_key(root, 28, 1.0)[0],
              valcache.cache_key(root, 28, 0.875, "dali")[0], valcache.cache_key(fm_jpg, 28, 0.875)[0]}
    assert key not in others and len(others) == 4
    f = root / "04" / "00003.jpg"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched, same content: the same key
    assert valcache.cache_key(root, 28, 0.875)[0] == key
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF  # rewritten with its old size and mtime: a new key (its content counts)
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    touched = valcache.cache_key(root, 28, 0.875)[0]
    assert touched != key
    (root / "04" / "extra.jpg").write_bytes(f.read_bytes())  # a file added: new key
    assert valcache.cache_key(root, 28, 0.875)[0] not in (key, touched)
    cmap = tmp_path / "map.txt"
    cmap.write_text("\n".join(f"{i:02d}" for i in reversed(range(10))))
    assert valcache.cache_key(root, 28, 0.875, class_map=cmap)[0] != valcache.cache_key(root, 28, 0.875)[0]
    with pytest.raises(RD3Error, match="--loader"):
        valcache.cache_key(root, 28, 0.875, "opencv")


def test_corrupt_image_leaves_nothing(fm_jpg: Path, tmp_path: Path, cache_env: Path) -> None:
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(fm_jpg, root)
    (root / "07" / "00005.jpg").write_bytes(b"\xff\xd8\xff truncated")
    with pytest.raises(RD3Error, match=r"07/00005\.jpg"):
        valcache.load_real(str(root), "val", image_size=28, workers=2, cache=True)
    assert entries(cache_env) == []


def test_prepare_cli_and_explicit_cache_dir(fm_jpg: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rd3fast.prepare import main

    rc = main(["cache", "--source", str(fm_jpg), "--image-size", "24", "--cache-dir", str(tmp_path / "c2"),
               "--workers", "1"])
    assert rc == 0 and "200 images (3, 24, 24) uint8" in capsys.readouterr().out
    assert len(entries(tmp_path / "c2")) == 3
    s = valcache.load_real(str(fm_jpg), "val", image_size=24, cache=str(tmp_path / "c2"))
    assert torch.equal(s.images, load_real(str(fm_jpg), "val", image_size=24).images.expand(-1, 3, -1, -1))
    assert main(["cache", "--source", str(tmp_path / "nope"), "--image-size", "24"]) == 2


def test_experiment_prepare_reads_val_folders_through_the_cache(fm_jpg: Path, tmp_path: Path,
                                                                cache_env: Path) -> None:
    from rd3fast.engine.experiment import prepare

    cfg = resolve("pretrain", overrides=dict(val=str(fm_jpg), image_size=28, device="cpu", teacher=(),
                                             student="convnet-d2-w8"))
    train = load_real("fashion-mnist", "val")
    exp = prepare(cfg, train_set=train)
    assert len(entries(cache_env)) == 3 and exp.val.images.shape == (200, 3, 28, 28)
    assert torch.equal(exp.val.labels, load_real(str(fm_jpg), "val", image_size=28).labels)


@pytest.mark.skipif(not backends.available("dali"), reason="DALI not installed")
def test_dali_decoded_cache_is_close_to_pil(fm_jpg: Path) -> None:
    pil = valcache.load_real(str(fm_jpg), "val", image_size=28, cache=True, decoder="pil")
    dali = valcache.load_real(str(fm_jpg), "val", image_size=28, cache=True, decoder="dali")
    assert torch.equal(pil.labels, dali.labels)
    d = (pil.images.int() - dali.images.int()).abs()
    assert d.float().mean() < 1.0 and d.max() <= 8


def test_evaluate_from_cache_matches_redecoding(fm_jpg: Path) -> None:
    """Evaluating from the cache gives the numbers of a fresh decode (its speed is a benchmark's job:
    benchmarks/bench_readers.py, not a timed test that a busy CI machine would fail)."""
    from rd3fast.engine.train import evaluate

    torch.manual_seed(0)
    model = build_model("convnet-d2-w8", 10, 28).eval()
    decoded = load_real(str(fm_jpg), "val", image_size=28, workers=1)
    ref = evaluate(model, decoded.images.expand(-1, 3, -1, -1), decoded.labels, FM.mean, FM.std, 64)
    valcache.load_real(str(fm_jpg), "val", image_size=28, cache=True)  # the one decode
    cached = valcache.load_real(str(fm_jpg), "val", image_size=28, cache=True)
    assert cached.images.is_contiguous() and cached.images.dtype == torch.uint8
    assert evaluate(model, cached.images, cached.labels, FM.mean, FM.std, 64) == ref


def test_cache_off_and_builtins_read_without_an_entry(fm_jpg: Path, cache_env: Path) -> None:
    off = valcache.load_real(str(fm_jpg), "val", image_size=28, cache="off")
    assert torch.equal(off.images, load_real(str(fm_jpg), "val", image_size=28).images)
    builtin = valcache.load_real("fashion-mnist", "val", image_size=20, cache=True)
    assert torch.equal(builtin.images, load_real("fashion-mnist", "val", image_size=20).images)
    assert entries(cache_env) == []
