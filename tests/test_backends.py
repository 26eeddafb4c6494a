"""DALI and FFCV readers against the PIL path, on real data: JPEG folders written from Fashion-MNIST.

Same labels, order and counts as ``data.load_real``; pixels within JPEG tolerance of PIL's (DALI and FFCV
decode with their own libjpeg-turbo builds); the normalization is rd3fast's own. DALI runs CPU-only
pipelines here (device_id=None); the mixed (GPU) decoder is covered by the ``gpu`` test.
"""
from __future__ import annotations

import gc
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rd3fast.data import backends
from rd3fast.data.backends import make_reader, resolve_loader
from rd3fast.data.folders import list_image_folder
from rd3fast.data.pixels import normalize
from rd3fast.data.sets import BUILTIN, load_real
from rd3fast.errors import RD3Error
from rd3fast.prepare import export_folder

FM = BUILTIN["fashion-mnist"]
pytestmark = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")  # numba finalizers of freed FFCV pipelines (KeyError)
needs_dali = pytest.mark.skipif(not backends.available("dali"), reason="DALI not installed (rd3fast[dali])")
needs_ffcv = pytest.mark.skipif(not backends.available("ffcv"), reason="FFCV not installed (see setup.sh)")


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    mp = pytest.MonkeyPatch()
    mp.setenv("RD3FAST_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _collect() -> None:
    yield
    gc.collect()  # free FFCV's compiled pipelines inside the test, where their numba warnings are filtered


@pytest.fixture(scope="module")
def fm_jpg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 Fashion-MNIST test images per class as 28 x 28 gray JPEGs (quality 90)."""
    return export_folder("fashion-mnist", tmp_path_factory.mktemp("fm") / "val", split="val", limit=24)


@pytest.fixture(scope="module")
def fm_rgb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fashion-MNIST images tinted to RGB and resized to non-square sizes (both orientations), so the
    Resize(shorter side) + CenterCrop geometry is exercised."""
    real = load_real("fashion-mnist", "val")
    root = tmp_path_factory.mktemp("fmrgb")
    for i in range(60):
        y = int(real.labels[i])
        g = real.images[i, 0].numpy().astype(np.float32)
        rgb = np.stack([g, 0.7 * g + 40, 255 - 0.5 * g], -1).clip(0, 255).astype(np.uint8)
        size = (50, 38) if i % 2 else (37, 45)
        (root / f"c{y}").mkdir(exist_ok=True)
        Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC).save(root / f"c{y}" / f"{i:03d}.jpg", quality=92)
    return root


def read_all(reader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*reader)
    return torch.cat(xs), torch.cat(ys)


def reference(root: Path, size: int, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    ref = load_real(str(root), "val", image_size=size, resize_ratio=ratio, workers=1)
    return ref.images.expand(-1, 3, -1, -1), ref.labels


def test_listing_is_load_reals_order(fm_jpg: Path) -> None:
    listing = list_image_folder(fm_jpg)
    ref = load_real(str(fm_jpg), "val", image_size=28, resize_ratio=1.0, workers=1)
    assert list(listing.classes) == ref.classes == [f"{i:02d}" for i in range(10)]
    assert torch.equal(torch.tensor(listing.labels), ref.labels) and len(listing.files) == 240


def test_pil_reader_is_the_reference(fm_rgb: Path) -> None:
    ref_x, ref_y = reference(fm_rgb, 24, 0.875)
    x, y = read_all(make_reader("pil", fm_rgb, image_size=24, resize_ratio=0.875, batch_size=16, workers=2,
                                mean=FM.mean, std=FM.std))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (60, 3, 24, 24)
    assert torch.equal(y, ref_y) and torch.allclose(x, normalize(ref_x, FM.mean, FM.std))
    xt, yt = read_all(make_reader("pil", fm_rgb, mode="train", image_size=24, batch_size=16, workers=0))
    assert xt.shape == (60, 3, 24, 24) and sorted(yt.tolist()) == sorted(ref_y.tolist())


@needs_dali
def test_dali_cpu_val_matches_pil(fm_jpg: Path, fm_rgb: Path) -> None:
    ref_x, ref_y = reference(fm_jpg, 28, 1.0)
    reader = make_reader("dali", fm_jpg, image_size=28, resize_ratio=1.0, batch_size=50, output="uint8")
    assert len(reader) == 5
    x, y = read_all(reader)
    assert x.dtype == torch.uint8 and x.shape == ref_x.shape and torch.equal(y, ref_y)
    d = (x.int() - ref_x.int()).abs()
    assert d.float().mean() < 1.0 and d.max() <= 8  # JPEG decoders differ by IDCT rounding only
    # Non-square RGB images through Resize(shorter) + CenterCrop: the same geometry as torchvision/PIL.
    ref_x, ref_y = reference(fm_rgb, 24, 0.875)
    x, y = read_all(make_reader("dali", fm_rgb, image_size=24, resize_ratio=0.875, batch_size=16, output="uint8"))
    d = (x.int() - ref_x.int()).abs()
    assert torch.equal(y, ref_y) and d.float().mean() < 1.0 and d.max() <= 8
    # float output: rd3fast's normalization of the same pixels; a second pass (epoch) is identical
    xf, yf = read_all(make_reader("dali", fm_rgb, image_size=24, resize_ratio=0.875, batch_size=16,
                                  mean=FM.mean, std=FM.std))
    assert xf.dtype == torch.float32 and torch.allclose(xf, normalize(x, FM.mean, FM.std)) and torch.equal(yf, y)


@needs_dali
def test_dali_names_a_corrupt_image(fm_jpg: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(fm_jpg, root)
    jpeg = (root / "05" / "00007.jpg").read_bytes()
    (root / "05" / "00007.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated: DALI's decoder raises
    with pytest.raises(RD3Error, match=r"cannot decode image .*05/00007\.jpg"):
        read_all(make_reader("dali", root, image_size=28, resize_ratio=1.0, batch_size=32))
    (root / "00" / "00001.jpg").write_bytes(b"not a jpeg")  # not an image: caught by its header, up front
    with pytest.raises(RD3Error, match=r"00/00001\.jpg: not a JPEG or PNG"):
        make_reader("dali", root, image_size=28, resize_ratio=1.0, batch_size=32)


@needs_dali
def test_dali_cpu_train_mode(fm_rgb: Path) -> None:
    _, ref_y = reference(fm_rgb, 24, 0.875)
    reader = make_reader("dali", fm_rgb, mode="train", image_size=20, batch_size=16, seed=3, crop="rrc",
                         rrc_scale=(0.3, 1.0))
    epochs = [read_all(reader) for _ in range(2)]
    for x, y in epochs:
        assert x.shape == (60, 3, 20, 20) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert sorted(y.tolist()) == sorted(ref_y.tolist())  # every image once per epoch
    assert not torch.equal(epochs[0][1], epochs[1][1])  # reshuffled between epochs
    x, y = read_all(make_reader("dali", fm_rgb, mode="train", image_size=20, batch_size=16, crop="random_crop",
                                crop_padding=3, flip_p=0.5, drop_last=True))
    assert x.shape == (48, 3, 20, 20)


@needs_ffcv
def test_ffcv_fashion_mnist_beton_is_exact(tmp_path: Path) -> None:
    from rd3fast.data.backends.ffcv import read_meta, write_beton

    out = write_beton("fashion-mnist", tmp_path / "fm_val.beton", split="val", workers=2)
    meta = read_meta(out)
    assert meta["count"] == 10000 and meta["classes"] == load_real("fashion-mnist", "val").classes
    ref = load_real("fashion-mnist", "val")
    reader = make_reader("ffcv", out, image_size=28, resize_ratio=1.0, batch_size=1000, mean=FM.mean, std=FM.std,
                         workers=2)
    assert len(reader) == 10
    x, y = read_all(reader)  # the first epoch JIT-compiles the pipeline
    assert torch.equal(y, ref.labels)
    assert torch.allclose(x, normalize(ref.images.expand(-1, 3, -1, -1), FM.mean, FM.std))  # raw: lossless


@needs_ffcv
def test_ffcv_jpeg_folder_matches_pil(fm_jpg: Path, fm_rgb: Path, tmp_path: Path) -> None:
    from rd3fast.data.backends.ffcv import write_beton

    ref_x, ref_y = reference(fm_jpg, 28, 1.0)
    beton = write_beton(fm_jpg, tmp_path / "raw.beton", write_mode="raw", workers=2)  # PIL's decode, stored
    x, y = read_all(make_reader("ffcv", beton, image_size=28, resize_ratio=1.0, batch_size=64, output="uint8",
                                workers=2))
    assert torch.equal(y, ref_y) and torch.equal(x, ref_x)
    # A folder is written to a cached .beton (JPEG, quality 95: FFCV re-encodes) on first use; FFCV's
    # CenterCrop decoder crops an integer square (int(ratio * shorter side)) and resizes it (INTER_AREA):
    # close to torchvision's Resize + CenterCrop, not equal (sub-pixel offset and scale).
    reader = make_reader("ffcv", fm_rgb, image_size=24, resize_ratio=0.875, batch_size=16, output="uint8",
                         workers=2)
    assert reader.meta["write_mode"] == "jpg" and reader.meta["count"] == 60
    ref_x, ref_y = reference(fm_rgb, 24, 0.875)
    x, y = read_all(reader)
    assert torch.equal(y, ref_y) and x.shape == ref_x.shape
    assert (x.float() - ref_x.float()).abs().mean() < 25
    xt, yt = read_all(make_reader("ffcv", fm_rgb, mode="train", image_size=20, batch_size=16, workers=2,
                                  rrc_scale=(0.3, 1.0)))
    assert xt.shape == (60, 3, 20, 20) and sorted(yt.tolist()) == sorted(ref_y.tolist())


@needs_ffcv
def test_prepare_beton_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rd3fast.data.backends.ffcv import read_meta
    from rd3fast.prepare import main

    out = tmp_path / "digits_val.beton"
    assert main(["beton", "--source", "digits", "--split", "val", "--out", str(out), "--workers", "1"]) == 0
    meta = read_meta(out)
    assert meta["count"] == 540 and meta["source"] == "digits:val" and meta["write_mode"] == "raw"
    assert main(["beton", "--source", "digits", "--out", str(tmp_path / "x.ffcv")]) == 2
    assert ".beton" in capsys.readouterr().err


@needs_ffcv
def test_ffcv_writer_reports_a_corrupt_image(fm_jpg: Path, tmp_path: Path) -> None:
    import shutil

    from rd3fast.data.backends.ffcv import write_beton

    root = tmp_path / "bad"
    shutil.copytree(fm_jpg, root)
    (root / "03" / "00002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(RD3Error, match=r"03/00002\.jpg"):
        write_beton(root, tmp_path / "bad.beton", workers=2)
    assert not list(tmp_path.glob("bad.beton*"))  # nothing half-written


def test_missing_backend_says_how_to_install(monkeypatch: pytest.MonkeyPatch, fm_jpg: Path) -> None:
    real_import = importlib.import_module

    def no_dali(name: str, *a, **k):
        if name.startswith(("nvidia.dali", "ffcv")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_dali)
    with pytest.raises(RD3Error, match=r"rd3fast\[dali\]"):
        backends.require("dali")
    with pytest.raises(RD3Error, match=r"rd3fast\[ffcv\]"):
        backends.require("ffcv")
    with pytest.raises(RD3Error, match=r"--loader"):
        make_reader("tfrecord", fm_jpg, image_size=28)


def test_resolve_loader() -> None:
    assert resolve_loader("auto", "cpu") == "pil"
    assert resolve_loader("auto", "cpu", "x/train.beton") == "ffcv"
    assert resolve_loader("dali", "cpu") == "dali"
    with pytest.raises(RD3Error, match="--loader"):
        resolve_loader("turbo", "cpu")


@pytest.mark.parametrize("loader", [pytest.param("dali", marks=needs_dali), pytest.param("ffcv", marks=needs_ffcv)])
def test_pretrain_streams_through_the_backend(loader: str, fm_jpg: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    from rd3fast.engine.models import read_state_dict
    from rd3fast.pretrain import main

    out = tmp_path / "t.pt"
    rc = main(["--train", str(fm_jpg), "--val", str(fm_jpg), "--loader", loader, "--arch", "convnet-d2-w8",
               "--image-size", "28", "--val-resize-ratio", "1", "--mean", "0.286", "--std", "0.353",
               "--epochs", "2", "--batch-size", "32", "--crop", "random_crop", "--out", str(out), "--no-progress",
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert f"streamed by {loader}" in capsys.readouterr().out
    state, meta = read_state_dict(out)
    assert meta["loader"] == loader and meta["num_classes"] == 10 and 0 <= meta["val_top1"] <= 100


@pytest.mark.gpu
@needs_dali
def test_dali_mixed_decoder_on_gpu(fm_rgb: Path) -> None:
    ref_x, ref_y = reference(fm_rgb, 24, 0.875)
    x, y = read_all(make_reader("dali", fm_rgb, image_size=24, resize_ratio=0.875, batch_size=16,
                                output="uint8", device="cuda"))
    assert x.is_cuda and y.is_cuda and torch.equal(y.cpu(), ref_y)
    d = (x.cpu().int() - ref_x.int()).abs()
    assert d.float().mean() < 2.0 and d.max() <= 16  # nvJPEG vs libjpeg-turbo
    xt, _ = read_all(make_reader("dali", fm_rgb, mode="train", image_size=20, batch_size=16, device="cuda"))
    assert xt.is_cuda and xt.shape == (60, 3, 20, 20)
