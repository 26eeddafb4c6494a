"""Bad data (issue 10, "nothing lost, nothing silent"): every case below gives either the correct result or
one clear RD3Error (one line, naming the file or flag) before any training, and leaves nothing half-written:
no ``*.tmp`` file anywhere, no validation-cache entry from a run that failed.

Tables: ``GOOD`` (inputs that used to be decoded wrongly and must now give exact pixels or labels), ``BAD``
(inputs that used to pass silently or crash and must now be one RD3Error), ``E2E`` (a few of them through
``rd3fast.run.main`` on the built-in digits: exit status 2, --out not created). Fixtures are tiny and built
here: a few 8x8 PNGs, small tensors.
"""
from __future__ import annotations

import errno
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from rd3fast import run
from rd3fast.config import IMAGENET_MEAN, IMAGENET_STD, resolve
from rd3fast.data import decode, valcache
from rd3fast.data import sets as data
from rd3fast.data.decode import Fit, decode_image
from rd3fast.data.folders import list_image_folder
from rd3fast.data.sets import load_distilled
from rd3fast.engine.aug import AugParams
from rd3fast.engine.experiment import load_more_sets, prepare
from rd3fast.engine.models import build_model, save_weights
from rd3fast.engine.soft_labels import SoftLabelCache
from rd3fast.errors import RD3Error

ARCH = "convnet-d2-w16"
ROOT_IGNORES_PERMISSIONS = os.geteuid() == 0


@pytest.fixture(autouse=True)
def cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The validation cache of every case lives in tmp_path/cache, so its leftovers can be checked."""
    root = tmp_path / "cache"
    monkeypatch.setenv("RD3FAST_CACHE", str(root))
    return root


# ---------------------------------------------------------------------------------------------------
# Fixture builders
# ---------------------------------------------------------------------------------------------------
def pixels(seed: int, shape: tuple[int, ...] = (8, 8, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def image_folder(root: Path, classes: int = 2, per_class: int = 2) -> Path:
    """classes x per_class random 8x8 RGB PNGs, class folders c0, c1, ..."""
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(pixels(10 * c + i)).save(root / f"c{c}" / f"{i}.png")
    return root


def png16(path: Path, samples: np.ndarray) -> Path:
    """A 16-bit PNG (gray H x W or RGB H x W x 3) written by hand: PIL cannot write 16-bit colour."""
    h, w = samples.shape[:2]
    color_type = 0 if samples.ndim == 2 else 2
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def gradient16() -> np.ndarray:
    """8x8 16-bit gray ramp over the full range 0..65535."""
    return np.linspace(0, 65535, 64).round().astype(np.uint16).reshape(8, 8)


def scaled16(samples: np.ndarray) -> np.ndarray:
    """The reference: value * 255 / 65535, rounded."""
    return np.rint(samples.astype(np.float64) * 255 / 65535).astype(np.uint8)


def tensor_set(path: Path, images: Any, labels: Any) -> Path:
    torch.save({"x": images, "y": labels}, path)
    return path


def unit_pixels(n: int = 6, c: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    """uint8 pixels as the float [0, 1] values the sets below are made from."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)


def normalized(px: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (px / 255 - m) / s


def recorded_cache(folder: Path, epochs: int = 2) -> Path:
    """A small soft-label cache recorded through SoftLabelCache's own record path (top-2 logits)."""
    cache = SoftLabelCache(folder, "record", topk=2, num_images=4, batch_size=2, num_classes=3, fingerprint="f")
    for epoch in range(epochs):
        for step in range(2):
            params = AugParams(boxes=torch.zeros(2, 4, dtype=torch.int32), flip=torch.zeros(2, dtype=torch.bool),
                               row_perm=None, col_perm=None, partner=torch.tensor([1, 0]),
                               mix_box=torch.zeros(4, dtype=torch.int32), lam=torch.tensor(1.0), mix="none")
            cache.add(torch.tensor([2 * step, 2 * step + 1]), params, torch.randn(2, 3))
        cache.end_epoch(epoch)
    return folder


def cache_entry(tmp: Path) -> Path:
    """A complete validation-cache entry of a 2-class folder; returns its .json."""
    npy = valcache.build(image_folder(tmp / "val"), image_size=8, resize_ratio=1.0, workers=1, progress=False)
    return npy.with_suffix(".json")


def digits_cfg(distilled: Path, **overrides: Any) -> Any:
    """rd3-small on digits with hard-label CE (no teacher), CPU."""
    settings = dict(dataset="digits", distilled=str(distilled), student=ARCH, loss="ce", epochs=1, device="cpu")
    return resolve("rd3-small", overrides={**settings, **overrides})


def folder_cfg(tmp: Path, val_classes: int, **overrides: Any) -> Any:
    """A 2-class distilled folder validated on a val_classes-class folder (through the validation cache)."""
    train = image_folder(tmp / "syn")
    val = image_folder(tmp / "val", classes=val_classes)
    settings = dict(val=str(val), distilled=str(train), student=ARCH, loss="ce", epochs=1, device="cpu")
    return resolve("rd3-small", overrides={**settings, **overrides})


def wrong_teacher(tmp: Path) -> Path:
    """Weights of a 5-class teacher, for 2-class data."""
    path = tmp / "teacher5.pt"
    save_weights(path, build_model(ARCH, 5, 8), ARCH, num_classes=5)
    return path


def fail_decode_at(monkeypatch: pytest.MonkeyPatch, exc: BaseException, after: int = 2) -> None:
    """The PIL decode raises ``exc`` once ``after`` images are done (a full disk, an interrupt)."""
    real, calls = decode.decode_image, []

    def flaky(path: Path, fit: Fit) -> np.ndarray:
        calls.append(path)
        if len(calls) > after:
            raise exc
        return real(path, fit)

    monkeypatch.setattr(decode, "decode_image", flaky)


def deny_listing(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Listing a folder called ``name`` fails as chmod 000 makes it fail (for root, who ignores chmod)."""
    real = Path.iterdir

    def iterdir(self: Path) -> Any:
        if self.name == name:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)


def chmod(path: Path, mode: int) -> Path:
    path.chmod(mode)
    return path


# ---------------------------------------------------------------------------------------------------
# GOOD: the correct result (got, want, the largest difference allowed)
# ---------------------------------------------------------------------------------------------------
def good_gray16_png_folder(tmp: Path) -> tuple[Any, Any, int]:
    """16-bit gray PNGs (PIL mode I;16), full range, through the ImageFolder reader: no clipping."""
    for c in range(2):
        (tmp / "s" / f"c{c}").mkdir(parents=True)
        png16(tmp / "s" / f"c{c}" / "0.png", gradient16() if c == 0 else 65535 - gradient16())
    assert Image.open(tmp / "s" / "c0" / "0.png").mode == "I;16"
    got = load_distilled(tmp / "s").images[:, 0].numpy()
    return got, np.stack([scaled16(gradient16()), scaled16(65535 - gradient16())]), 0


def good_gray16_tiff(mode: str) -> Callable[[Path], tuple[Any, Any, int]]:
    """decode_image on the other 16-bit modes PIL opens (I;16B big-endian, I as older Pillows open a
    16-bit PNG): TIFF keeps the mode."""
    def make(tmp: Path) -> tuple[Any, Any, int]:
        samples = gradient16()
        im = Image.fromarray(samples.astype(np.int32)).convert("I") if mode == "I" else \
            Image.frombytes(mode, (8, 8), samples.astype(">u2").tobytes())
        im.save(tmp / "g.tif")
        assert Image.open(tmp / "g.tif").mode == mode
        return decode_image(tmp / "g.tif", Fit()), scaled16(samples), 0
    return make


def good_rgb16_png(tmp: Path) -> tuple[Any, Any, int]:
    """16-bit RGB: PIL opens it as 8-bit RGB with each sample's high byte, within one level of the
    rounded scale (and no clipping)."""
    samples = np.random.default_rng(0).integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    samples[0, 0] = (0, 65535, 32896)
    png16(tmp / "rgb.png", samples)
    return decode_image(tmp / "rgb.png", Fit()), scaled16(samples), 1


def good_float_unit(tmp: Path) -> tuple[Any, Any, int]:
    px = unit_pixels()
    return load_distilled(tensor_set(tmp / "u.pt", px / 255, torch.arange(6))).images, px, 0


def good_float_gray_minus1_1(tmp: Path) -> tuple[Any, Any, int]:
    """A 1-channel set normalized to [-1, 1]: one mean/std value for its one channel."""
    px = unit_pixels(c=1)
    path = tensor_set(tmp / "g.pt", normalized(px, (0.5,), (0.5,)), torch.arange(6))
    return load_distilled(path, mean=(0.5,), std=(0.5,)).images, px, 0


def good_float_imagenet(tmp: Path) -> tuple[Any, Any, int]:
    px = unit_pixels()
    path = tensor_set(tmp / "n.pt", normalized(px, IMAGENET_MEAN, IMAGENET_STD), torch.arange(6))
    return load_distilled(path, mean=IMAGENET_MEAN, std=IMAGENET_STD).images, px, 0


def good_float_0_255(tmp: Path) -> tuple[Any, Any, int]:
    """0-255 floats with the values the error message suggests (--mean 0 --std 1/255)."""
    px = unit_pixels()
    cfg = resolve(overrides=dict(mean="0", std="1/255"))  # "1/255" as the flag would give it
    path = tensor_set(tmp / "f.pt", px.float(), torch.arange(6))
    return load_distilled(path, mean=cfg.mean, std=cfg.std).images, px, 0


def good_float_slight_overshoot(tmp: Path) -> tuple[Any, Any, int]:
    """An optimized set a little outside the valid range after de-normalizing (1 % of values): clipped."""
    px = unit_pixels()
    x = normalized(px, IMAGENET_MEAN, IMAGENET_STD)
    x.view(-1)[::100] = 4.0  # de-normalizes to above 1 in every channel
    want = px.clone()
    want.view(-1)[::100] = 255
    return load_distilled(tensor_set(tmp / "o.pt", x, torch.arange(6)), mean=IMAGENET_MEAN,
                          std=IMAGENET_STD).images, want, 0


def good_logits_labels(tmp: Path) -> tuple[Any, Any, int]:
    """Soft labels that are logits: negative values and an all-zero row are fine (argmax)."""
    y = torch.tensor([[-3.0, -1.0, -2.0], [0.0, 0.0, 0.0], [-5.0, -4.0, 2.0]])
    s = load_distilled(tensor_set(tmp / "l.pt", unit_pixels(n=3), y))
    return s.labels, torch.tensor([1, 0, 2]), 0


def good_hidden_files_skipped(tmp: Path) -> tuple[Any, Any, int]:
    """.hidden.png and a .hidden class folder are skipped alike (as are non-image files)."""
    root = image_folder(tmp / "s")
    Image.fromarray(pixels(9)).save(root / "c0" / ".hidden.png")
    (root / ".thumbs").mkdir()
    Image.fromarray(pixels(9)).save(root / ".thumbs" / "x.png")
    (root / "c1" / "notes.txt").write_text("not an image")
    listing = list_image_folder(root)
    names = [str(Path(f).relative_to(root)) for f in listing.files]
    assert load_distilled(root).images.shape[0] == 4
    return np.array(names), np.array(["c0/0.png", "c0/1.png", "c1/0.png", "c1/1.png"]), 0


GOOD: dict[str, Callable[[Path], tuple[Any, Any, int]]] = {
    "16-bit gray PNG folder (I;16)": good_gray16_png_folder,
    "16-bit gray I;16B": good_gray16_tiff("I;16B"),
    "16-bit gray as mode I": good_gray16_tiff("I"),
    "16-bit RGB PNG": good_rgb16_png,
    "float [0, 1] pixels": good_float_unit,
    "1-channel float [-1, 1] with --mean 0.5 --std 0.5": good_float_gray_minus1_1,
    "ImageNet-normalized with ImageNet --mean/--std": good_float_imagenet,
    "0-255 floats with --mean 0 --std 1/255": good_float_0_255,
    "normalized set overshooting 1 % of values": good_float_slight_overshoot,
    "logits as soft labels": good_logits_labels,
    "hidden files and folders skipped": good_hidden_files_skipped,
}


@pytest.mark.parametrize("make", GOOD.values(), ids=GOOD.keys())
def test_correct_result(make: Callable[[Path], tuple[Any, Any, int]], tmp_path: Path) -> None:
    got, want, tol = make(tmp_path)
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    if tol == 0:
        assert np.array_equal(got, want), (got, want)
    else:
        assert np.abs(got.astype(np.int64) - want.astype(np.int64)).max() <= tol


# ---------------------------------------------------------------------------------------------------
# BAD: one RD3Error of one line, matching ``match``
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bad:
    make: Callable[[Path, pytest.MonkeyPatch], Callable[[], Any]]  # builds the input, returns the call
    match: str  # regex of the message
    needs_permissions: bool = False  # chmod-based: root (CI) ignores permissions, so skipped there
    cache_may_hold: bool = False  # the case set up validation-cache entries of its own beforehand


def bad_16bit_out_of_range(tmp: Path, mp: pytest.MonkeyPatch) -> Callable[[], Any]:
    Image.fromarray(np.full((8, 8), 70000, np.int32)).convert("I").save(tmp / "i.tif")
    return lambda: decode_image(tmp / "i.tif", Fit())


def bad_float_set(images: Callable[[], torch.Tensor], **kw: Any) -> Callable[[Path, pytest.MonkeyPatch], Any]:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Callable[[], Any]:
        path = tensor_set(tmp / "set.pt", images(), torch.arange(6))
        return lambda: load_distilled(path, **kw)
    return make


def bad_labels(labels: torch.Tensor) -> Callable[[Path, pytest.MonkeyPatch], Any]:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Callable[[], Any]:
        path = tensor_set(tmp / "soft.pt", unit_pixels(n=len(labels)), labels)
        return lambda: load_distilled(path)
    return make


def nan_rows() -> torch.Tensor:
    y = torch.randn(6, 4)
    y[2, 1] = float("nan")
    return y


def inf_rows() -> torch.Tensor:
    y = torch.randn(6, 4)
    y[4, 0] = float("inf")
    return y


def bad_symlink(loop: bool) -> Callable[[Path, pytest.MonkeyPatch], Any]:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Callable[[], Any]:
        root = image_folder(tmp / "s")
        link = root / "c1" / "2.png"
        if loop:
            (root / "c1" / "3.png").symlink_to(link)
            link.symlink_to(root / "c1" / "3.png")
        else:
            link.symlink_to(tmp / "gone.png")
        return lambda: load_distilled(root)
    return make


def bad_unreadable_class(really: bool) -> Callable[[Path, pytest.MonkeyPatch], Any]:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Callable[[], Any]:
        root = image_folder(tmp / "s")
        locked = root / "c1"
        if really:
            chmod(locked, 0)
        else:
            deny_listing(mp, "c1")
        return lambda: load_distilled(root)
    return make


def bad_val_cache_dir(kind: str) -> Callable[[Path, pytest.MonkeyPatch], Any]:
    """--val-cache that is a file, a read-only folder (chmod, or os.access saying so for root)."""
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Callable[[], Any]:
        val = image_folder(tmp / "val")
        target = tmp / "vc"
        if kind == "file":
            target.write_text("not a folder")
        else:
            (target / "val").mkdir(parents=True)
            if kind == "read-only":
                chmod(target / "val", 0o555)
            else:
                real = os.access
                mp.setattr(os, "access", lambda p, m, **kw: False if Path(p) == target / "val" else real(p, m, **kw))
        # decode_image must never run: the folder is checked before anything is decoded
        fail_decode_at(mp, AssertionError("decoded before the cache folder was checked"), after=0)
        return lambda: valcache.load_real(str(val), "val", image_size=8, cache=str(target))
    return make


def bad_no_space(tmp: Path, mp: pytest.MonkeyPatch) -> Callable[[], Any]:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    mp.setattr(os, "posix_fallocate", full)
    val = image_folder(tmp / "val")
    return lambda: valcache.build(val, image_size=8, resize_ratio=1.0, workers=1, progress=False)


def bad_io_error_in_fill(tmp: Path, mp: pytest.MonkeyPatch) -> Callable[[], Any]:
    val = image_folder(tmp / "val")
    fail_decode_at(mp, OSError(errno.EIO, "Input/output error", str(tmp / "disk")))
    return lambda: valcache.build(val, image_size=8, resize_ratio=1.0, workers=1, progress=False)


def bad_cache_json(damage: Callable[[dict], Any]) -> Callable[[Path, pytest.MonkeyPatch], Any]:
    """An existing validation-cache entry whose .json was damaged: ``damage(record)`` returns the new text."""
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Callable[[], Any]:
        meta = cache_entry(tmp)
        meta.write_text(damage(json.loads(meta.read_text())))
        return lambda: valcache.load_real(str(tmp / "val"), "val", image_size=8, resize_ratio=1.0, cache=True)
    return make


def without_source(record: dict) -> str:
    del record["source"]
    return json.dumps(record)


def bad_ratio(call: str) -> Callable[[Path, pytest.MonkeyPatch], Any]:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Callable[[], Any]:
        val = image_folder(tmp / "val")
        if call == "build":  # what `prepare cache --val-resize-ratio 2` calls
            return lambda: valcache.build(val, image_size=8, resize_ratio=2.0, workers=1, progress=False)
        return lambda: data.decode_val_folder(val, image_size=8, resize_ratio=2.0)
    return make


def bad_prepare(**overrides: Any) -> Callable[[Path, pytest.MonkeyPatch], Any]:
    """experiment.prepare failing on a check it can make before the validation folder is decoded."""
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Callable[[], Any]:
        extra = {k: (v(tmp) if callable(v) else v) for k, v in overrides.items() if k != "val_classes"}
        cfg = folder_cfg(tmp, overrides.get("val_classes", 2), **extra)
        return lambda: prepare(cfg, progress=False)
    return make


def bad_soft_cache(damage: Callable[[Path], Any], mode: str = "replay") -> Callable[[Path, pytest.MonkeyPatch], Any]:
    """A recorded soft-label cache, then ``damage(folder)``; replay opens it and reads every epoch."""
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Callable[[], Any]:
        folder = recorded_cache(tmp / "soft")
        damage(folder)

        def replay() -> None:
            cache = SoftLabelCache(folder, mode)
            for epoch in range(2):
                list(cache.epoch(epoch, torch.device("cpu")))
        return replay
    return make


def truncate(file: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        blob = (folder / file).read_bytes()
        (folder / file).write_bytes(blob[:len(blob) // 2])
    return damage


def flip_middle_byte(folder: Path) -> None:
    """Corrupt array data inside a complete zip (caught by the member's CRC when read)."""
    file = folder / "epoch_00001.npz"
    blob = bytearray(file.read_bytes())
    blob[len(blob) // 3] ^= 0xFF
    file.write_bytes(bytes(blob))


def drop_meta_key(folder: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    del meta["num_classes"]
    (folder / "meta.json").write_text(json.dumps(meta))


def cache_is_file(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder)
    folder.write_text("not a folder")


BAD: dict[str, Bad] = {
    # 1. 16-bit images
    "mode I image beyond 16 bits": Bad(bad_16bit_out_of_range, r"i\.tif.*16-bit samples range over \[70000"),
    # 2. float tensor sets: never a guessed normalization
    "normalized floats, no --mean/--std": Bad(
        bad_float_set(lambda: normalized(unit_pixels(), IMAGENET_MEAN, IMAGENET_STD)),
        r"set\.pt: float images range over .*not \[0, 1\] pixels.*pass --mean/--std the set was normalized with "
        r"\(e\.g\. ImageNet: --mean 0\.485,0\.456,0\.406 --std 0\.229,0\.224,0\.225"),
    "0-255 floats with ImageNet --mean/--std": Bad(
        bad_float_set(lambda: unit_pixels().float(), mean=IMAGENET_MEAN, std=IMAGENET_STD),
        r"set\.pt: --mean 0\.485,0\.456,0\.406 --std 0\.229,0\.224,0\.225 do not fit the data"),
    "ImageNet-normalized with Fashion-MNIST stats": Bad(
        bad_float_set(lambda: normalized(unit_pixels(), IMAGENET_MEAN, IMAGENET_STD),
                      mean=data.BUILTIN["fashion-mnist"].mean, std=data.BUILTIN["fashion-mnist"].std),
        r"set\.pt: --mean .* do not fit the data: they put \d+\.\d% of the pixel values outside \[0, 1\]"),
    "2 --mean values for 1 channel": Bad(
        bad_float_set(lambda: normalized(unit_pixels(c=1), (0.5,), (0.5,)), mean=(0.5, 0.5), std=(0.5,)),
        r"set\.pt: --mean has 2 values for 1-channel images; expected 1 \(for every channel\)$"),
    "3 --std values for 1 channel": Bad(
        bad_float_set(lambda: normalized(unit_pixels(c=1), (0.5,), (0.5,)), mean=(0.5,), std=(0.5,) * 3),
        r"set\.pt: --std has 3 values for 1-channel images"),
    # 3. soft labels
    "soft labels with NaN": Bad(bad_labels(nan_rows()), r"soft\.pt: labels contain NaN or inf"),
    "soft labels with inf": Bad(bad_labels(inf_rows()), r"soft\.pt: labels contain NaN or inf"),
    "hard float labels with inf": Bad(bad_labels(torch.tensor([0.0, float("inf")])), r"soft\.pt: labels contain"),
    # 4. image folders
    "dangling symlinked image": Bad(bad_symlink(loop=False), r"c1/2\.png is a broken symlink .*does not exist"),
    "looping symlinked image": Bad(bad_symlink(loop=True), r"c1/[23]\.png is a broken symlink .*loops"),
    "unreadable class folder (listing denied)": Bad(bad_unreadable_class(False),
                                                    r"cannot list class folder .*c1: Permission denied"),
    "unreadable class folder (chmod 000)": Bad(bad_unreadable_class(True),
                                               r"cannot list class folder .*c1: Permission denied",
                                               needs_permissions=True),
    # 5. the validation cache
    "--val-cache is a file": Bad(bad_val_cache_dir("file"), r"--val-cache .*vc: .*vc is a file, not a folder; "
                                                            r"pass --val-cache off"),
    "--val-cache not writable (access denied)": Bad(bad_val_cache_dir("denied"), r"--val-cache .*vc: .*is not writable"),
    "--val-cache read-only (chmod 555)": Bad(bad_val_cache_dir("read-only"), r"--val-cache .*vc: .*is not writable",
                                             needs_permissions=True),
    "no space for the validation cache": Bad(
        bad_no_space, r"no space left on .*cache/val for the validation cache: need 0\.0 MB, .* MB free "
                      r"\(validation cache .*\); pass --val-cache off or another DIR"),
    "I/O error while filling the validation cache": Bad(
        bad_io_error_in_fill, r"filling the validation cache entry .* failed \(.*disk: Input/output error\); "
                              r"nothing was kept"),
    "validation-cache .json without a key": Bad(bad_cache_json(without_source),
                                                r"\.json has no 'source' key; delete .*\.\* \(its \.npy, \.labels\.npy and "
                                                r"\.json\) to rebuild it", cache_may_hold=True),
    "validation-cache .json corrupt": Bad(bad_cache_json(lambda r: json.dumps(r)[:40]),
                                          r"validation cache entry .* is unreadable .*; delete .* to rebuild it",
                                          cache_may_hold=True),
    "validation-cache .json of the wrong shape": Bad(bad_cache_json(lambda r: "[1, 2]"),
                                                     r"is unreadable .*; delete", cache_may_hold=True),
    "--val-resize-ratio 2 into the cache": Bad(bad_ratio("build"), r"--val-resize-ratio: expected a value in \(0, 1\]"),
    "--val-resize-ratio 2 decoding a folder": Bad(bad_ratio("decode"), r"--val-resize-ratio: expected a value in"),
    "val folder with other classes: no cache entry": Bad(
        bad_prepare(val_classes=3), r"validation set .*val has 3 classes but 2 were expected; to match the 2 classes"),
    "teacher with other classes: no cache entry": Bad(
        bad_prepare(loss="kl", teacher=(ARCH,), teacher_weights=lambda t: (str(wrong_teacher(t)),)),
        r"teacher weights .*teacher5\.pt have 5 outputs but the data has 2 classes"),
    # 7. a batch larger than the set with --drop-last
    "--batch-size > set with --drop-last": Bad(
        bad_prepare(batch_size=1000, drop_last=True),
        r"--batch-size 1000 with --drop-last: the training set .*syn has only 4 images"),
    # 6. the soft-label cache
    "soft-label meta.json corrupt": Bad(bad_soft_cache(truncate("meta.json")),
                                        r"soft-label cache .*meta\.json is unreadable .*; delete the folder .*soft and "
                                        r"record it again"),
    "soft-label meta.json incomplete": Bad(bad_soft_cache(drop_meta_key),
                                           r"meta\.json is incomplete \(missing or bad num_classes\); delete the folder"),
    "soft-label epoch truncated": Bad(bad_soft_cache(truncate("epoch_00001.npz")),
                                      r"epoch_00001\.npz is unreadable or truncated .*; delete the folder"),
    "soft-label epoch corrupt": Bad(bad_soft_cache(flip_middle_byte),
                                    r"epoch_00001\.npz is unreadable or truncated .*; delete the folder"),
    "soft-label epoch missing": Bad(bad_soft_cache(lambda f: (f / "epoch_00000.npz").unlink()),
                                    r"epoch_00000\.npz is missing .*; delete the folder"),
    "--cache is a file (replay)": Bad(bad_soft_cache(cache_is_file), r"--cache .*soft is a file; expected a folder"),
    "--cache is a file (record)": Bad(bad_soft_cache(cache_is_file, mode="record"),
                                      r"--cache .*soft is a file; expected a folder"),
}


def files_under(root: Path) -> list[Path]:
    """Files of the cache but the content hashes (``hashes/``: sha256s of files that were read, each complete;
    what a run's identity and the validation-cache key are made of, kept for the next run)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and "hashes" not in p.relative_to(root).parts) \
        if root.exists() else []


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_one_clear_error(case: Bad, tmp_path: Path, cache_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if case.needs_permissions and ROOT_IGNORES_PERMISSIONS:
        pytest.skip("root ignores file permissions (the listing-denied/os.access variant covers the code path)")
    call = case.make(tmp_path, monkeypatch)
    before = files_under(cache_env)
    try:
        with pytest.raises(RD3Error, match=case.match) as caught:
            call()
    finally:
        for p in tmp_path.rglob("*"):  # let pytest clean up what a case locked
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
    assert "\n" not in str(caught.value)
    assert not [p for p in tmp_path.rglob("*.tmp")], "a temporary file was left behind"
    assert files_under(cache_env) == (before if case.cache_may_hold else []), "a validation-cache entry was written"


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RD3Error("stop")], ids=["KeyboardInterrupt", "RD3Error"])
def test_interrupted_cache_fill_leaves_nothing(exc: BaseException, tmp_path: Path, cache_env: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    val = image_folder(tmp_path / "val", classes=3, per_class=3)
    fail_decode_at(monkeypatch, exc, after=4)
    with pytest.raises(type(exc)):
        valcache.build(val, image_size=8, resize_ratio=1.0, workers=1, progress=False)
    assert files_under(cache_env) == []
    monkeypatch.undo()  # and the next fill works
    monkeypatch.setenv("RD3FAST_CACHE", str(cache_env))
    npy = valcache.build(val, image_size=8, resize_ratio=1.0, workers=1, progress=False)
    assert len(files_under(cache_env)) == 3 and valcache.load(npy).images.shape == (9, 3, 8, 8)


def test_reserved_cache_equals_the_decode(tmp_path: Path) -> None:
    """The space-reserving .npy writer gives a normal .npy holding exactly the decoded crops."""
    val = image_folder(tmp_path / "val")
    npy = valcache.build(val, image_size=8, resize_ratio=1.0, workers=1, progress=False)
    want = data.load_real(str(val), "val", image_size=8, resize_ratio=1.0, workers=1).images
    assert torch.equal(torch.from_numpy(np.load(npy)), want)


def test_distilled_sets_get_only_the_configured_mean_std(tmp_path: Path) -> None:
    """prepare and load_more_sets pass the reader --mean/--std as configured, never the dataset's (digits)
    defaults; the run itself still normalizes with the finalized 3-value mean/std."""
    px = unit_pixels(n=20, c=1, size=16)
    labels = torch.arange(10).repeat(2)
    first = tensor_set(tmp_path / "a.pt", normalized(px, (0.5,), (0.5,)), labels)
    second = tensor_set(tmp_path / "b.pt", normalized(px.flip(0), (0.5,), (0.5,)), labels)
    with pytest.raises(RD3Error, match=r"a\.pt: float images range over \[-1, 1\]"):
        prepare(digits_cfg(first), progress=False)  # digits' mean/std would have been a silent guess
    exp = prepare(digits_cfg(first, mean=(0.5,), std=(0.5,)), progress=False)
    assert (exp.distilled_mean, exp.distilled_std) == ((0.5,), (0.5,))
    assert exp.cfg.mean == (0.5,) * 3 and torch.equal(exp.train.images[:, 0:1], px)
    [more] = load_more_sets(exp, [str(second)], progress=False)
    assert torch.equal(more.images[:, 0:1], px.flip(0))


# ---------------------------------------------------------------------------------------------------
# End to end: rd3fast.run.main on digits
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init 10-class teacher (only its shape matters here)."""
    path = tmp_path_factory.mktemp("teacher") / "t.pt"
    save_weights(path, build_model(ARCH, 10, 16), ARCH, num_classes=10)
    return path


def digits_set(path: Path, kind: str) -> Path:
    """20 16x16 gray images, 2 per digit class: uint8, floats in [-1, 1], or uint8 with NaN soft labels."""
    px = unit_pixels(n=20, c=1, size=16)
    labels: torch.Tensor = torch.arange(10).repeat(2)
    if kind == "nan-labels":
        labels = torch.nn.functional.one_hot(labels, 10).float()
        labels[3, 3] = float("nan")
    return tensor_set(path, normalized(px, (0.5,), (0.5,)) if kind == "minus1-1" else px, labels)


E2E = {  # (set kind, extra flags, exit status, stderr pattern)
    "float [-1, 1] without --mean/--std": ("minus1-1", [], 2, r"float images range over \[-1, 1\]: not \[0, 1\]"),
    "float [-1, 1] with --mean 0.5 --std 0.5": ("minus1-1", ["--mean", "0.5", "--std", "0.5"], 0, ""),
    "--batch-size 1000 --drop-last": ("uint8", ["--batch-size", "1000", "--drop-last"], 2,
                                      r"--batch-size 1000 with --drop-last: .* has only 20 images"),
    "NaN soft labels": ("nan-labels", [], 2, r"set\.pt: labels contain NaN or inf"),
}


@pytest.mark.parametrize("kind, extra, rc, pattern", E2E.values(), ids=E2E.keys())
def test_run_end_to_end(kind: str, extra: list[str], rc: int, pattern: str, teacher: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    args = ["--preset", "rd3-small", "--dataset", "digits", "--distilled", str(digits_set(tmp_path / "set.pt", kind)),
            "--teacher", ARCH, "--teacher-weights", str(teacher), "--student", ARCH, "--epochs", "1",
            "--seeds", "0", "--device", "cpu", "--out", str(out), "--no-progress", *extra]
    assert run.main(args) == rc
    err = capsys.readouterr().err
    if rc == 0:
        assert (out / "results.json").is_file()
        return
    [line] = [x for x in err.splitlines() if x.strip()]  # one line, no traceback
    assert line.startswith("rd3fast: error: ") and re.search(pattern, line), line
    assert not out.exists()
