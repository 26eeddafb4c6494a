"""Readers: ImageFolders, tensor files, built-in real sets and the validation-folder eval transform."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rd3fast.data import datasets, decode
from rd3fast.data.folders import read_class_map
from rd3fast.data.idx import read_idx
from rd3fast.data.sets import BUILTIN, ImageSet, check_num_classes, expand_channels, load_distilled, load_real
from rd3fast.errors import RD3Error


def rand_pixels(seed: int, h: int, w: int, c: int = 3) -> np.ndarray:
    shape = (h, w) if c == 1 else (h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_folder(root: Path, classes: list[str], per_class: int = 3, size: tuple[int, int] = (6, 5),
                 mode: str = "RGB", ext: str = ".png") -> dict[str, list[np.ndarray]]:
    """Class folders of random images; returns the pixels per class in filename order."""
    pixels: dict[str, list[np.ndarray]] = {}
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        pixels[name] = []
        for i in range(per_class):
            arr = rand_pixels(100 * k + i, size[1], size[0], 1 if mode == "L" else 3)
            Image.fromarray(arr, mode).save(root / name / f"img{i:02d}{ext}")
            pixels[name].append(arr)
    return pixels


def chw(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())


# ---------------------------------------------------------------------------------------------------
# ImageFolder distilled sets
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [["new000", "new001", "new002"], ["00000", "00001", "00002"]])
def test_folder_png_round_trip(tmp_path, classes):
    pixels = write_folder(tmp_path, classes[::-1])  # creation order must not matter
    (tmp_path / classes[0] / "notes.txt").write_text("ignored")
    s = load_distilled(tmp_path)
    assert isinstance(s, ImageSet) and s.classes == classes and s.num_classes == 3
    assert s.images.dtype == torch.uint8 and s.images.is_contiguous() and s.images.shape == (9, 3, 5, 6)
    assert s.image_size == (5, 6) and s.source == str(tmp_path)
    assert s.labels.dtype == torch.int64 and s.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    expected = torch.stack([chw(a) for name in classes for a in pixels[name]])
    assert torch.equal(s.images, expected)


def test_images_sorted_by_filename(tmp_path):
    (tmp_path / "a").mkdir()
    for name, value in [("b.png", 20), ("a.png", 10), ("c.PNG", 30)]:
        Image.fromarray(np.full((4, 4), value, np.uint8), "L").save(tmp_path / "a" / name)
    s = load_distilled(tmp_path)
    assert s.images[:, 0, 0, 0].tolist() == [10, 20, 30]


def test_class_map_orders_classes(tmp_path):
    write_folder(tmp_path, ["cat", "ant", "bee"], per_class=1)
    cmap = tmp_path.parent / f"{tmp_path.name}_map.txt"
    cmap.write_text("bee\n\ncat\nant\n\n")
    s = load_distilled(tmp_path, class_map=cmap)
    assert s.classes == ["bee", "cat", "ant"]
    plain = load_distilled(tmp_path)  # sorted: ant, bee, cat
    assert torch.equal(s.images[0], plain.images[1]) and torch.equal(s.images[2], plain.images[0])
    assert s.labels.tolist() == [0, 1, 2]


def test_class_map_mismatch_errors(tmp_path):
    root = tmp_path / "set"
    write_folder(root, ["ant", "bee"], per_class=1)
    cmap = tmp_path / "map.txt"
    cmap.write_text("ant\n")
    with pytest.raises(RD3Error, match="bee.*not in class map"):
        load_distilled(root, class_map=cmap)
    cmap.write_text("ant\nbee\nwasp\n")
    with pytest.raises(RD3Error, match="wasp"):
        load_distilled(root, class_map=cmap)
    cmap.write_text("ant\nant\n")
    with pytest.raises(RD3Error, match="twice"):
        read_class_map(cmap)
    with pytest.raises(RD3Error, match="nope.txt"):
        read_class_map(tmp_path / "nope.txt")


def test_grayscale_folder_keeps_one_channel(tmp_path):
    pixels = write_folder(tmp_path, ["0", "1"], per_class=2, mode="L")
    s = load_distilled(tmp_path)
    assert s.images.shape == (4, 1, 5, 6) and s.images.is_contiguous()
    assert torch.equal(s.images[3], chw(pixels["1"][1]))


def test_mixed_gray_and_colour_become_rgb(tmp_path):
    (tmp_path / "c").mkdir()
    gray, rgb = rand_pixels(1, 4, 4, 1), rand_pixels(2, 4, 4)
    Image.fromarray(gray, "L").save(tmp_path / "c" / "a.png")
    Image.fromarray(rgb, "RGB").save(tmp_path / "c" / "b.png")
    Image.fromarray(np.dstack([rgb, np.full((4, 4), 7, np.uint8)]), "RGBA").save(tmp_path / "c" / "c.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "c" / "d.png")
    s = load_distilled(tmp_path)
    assert s.images.shape == (4, 3, 4, 4) and s.images.is_contiguous()
    assert torch.equal(s.images[0], chw(gray).expand(3, 4, 4))
    assert torch.equal(s.images[1], chw(rgb)) and torch.equal(s.images[2], chw(rgb))  # alpha dropped
    palette = np.asarray(Image.fromarray(rgb).convert("P").convert("RGB"))
    assert torch.equal(s.images[3], chw(palette))


def test_jpeg_any_case_extension(tmp_path):
    (tmp_path / "n01").mkdir()
    arr = rand_pixels(3, 8, 8)
    Image.fromarray(arr).save(tmp_path / "n01" / "x.JPEG", quality=95)
    Image.fromarray(arr).save(tmp_path / "n01" / "y.jpg", quality=95)
    s = load_distilled(tmp_path)
    ref = np.asarray(Image.open(tmp_path / "n01" / "x.JPEG").convert("RGB"))
    assert s.images.shape == (2, 3, 8, 8) and torch.equal(s.images[0], chw(ref))


def test_mixed_sizes_error_and_load_size(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    big, small = rand_pixels(4, 12, 10), rand_pixels(5, 8, 8)
    Image.fromarray(big).save(tmp_path / "a" / "big.png")
    Image.fromarray(small).save(tmp_path / "b" / "small.png")
    with pytest.raises(RD3Error, match=r"big\.png is 10x12.*small\.png is 8x8.*--load-size"):
        load_distilled(tmp_path)
    s = load_distilled(tmp_path, load_size=6)
    assert s.images.shape == (2, 3, 6, 6)
    ref = np.asarray(Image.fromarray(big).resize((6, 6), Image.Resampling.BILINEAR))
    assert torch.equal(s.images[0], chw(ref))


def test_parallel_decode_matches_serial(tmp_path, monkeypatch):
    write_folder(tmp_path, ["a", "b", "c"], per_class=5, size=(7, 9))
    serial = load_distilled(tmp_path)
    monkeypatch.setattr(decode, "PARALLEL_MIN", 0)
    parallel = load_real(str(tmp_path), "val", image_size=5, workers=2)
    serial_val = load_real(str(tmp_path), "val", image_size=5, workers=1)
    assert torch.equal(parallel.images, serial_val.images) and torch.equal(parallel.labels, serial.labels)
    assert torch.equal(load_distilled(tmp_path).images, serial.images)


def test_parallel_decode_reports_bad_file(tmp_path, monkeypatch):
    write_folder(tmp_path, ["a"], per_class=4)
    (tmp_path / "a" / "img01.png").write_bytes(b"broken")
    monkeypatch.setattr(decode, "PARALLEL_MIN", 0)
    with pytest.raises(RD3Error, match=r"img01\.png"):
        load_real(str(tmp_path), "val", image_size=4, workers=2)


# ---------------------------------------------------------------------------------------------------
# Folder errors
# ---------------------------------------------------------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(RD3Error, match="nowhere.*does not exist"):
        load_distilled(tmp_path / "nowhere")


def test_truncated_png(tmp_path):
    write_folder(tmp_path, ["a"], per_class=2, size=(32, 32))
    f = tmp_path / "a" / "img01.png"
    f.write_bytes(f.read_bytes()[:60])
    with pytest.raises(RD3Error, match=r"cannot decode image .*img01\.png"):
        load_distilled(tmp_path)


def test_text_file_named_jpg(tmp_path):
    write_folder(tmp_path, ["a"], per_class=1)
    (tmp_path / "a" / "readme.jpg").write_text("this is not a jpeg")
    with pytest.raises(RD3Error, match=r"readme\.jpg"):
        load_distilled(tmp_path)


def test_empty_class_folder(tmp_path):
    write_folder(tmp_path, ["a"], per_class=1)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("x")
    with pytest.raises(RD3Error, match=r"class folder .*b is empty"):
        load_distilled(tmp_path)


def test_no_class_folders(tmp_path):
    Image.fromarray(rand_pixels(0, 4, 4)).save(tmp_path / "flat.png")
    with pytest.raises(RD3Error, match=f"{tmp_path.name} has no class folders"):
        load_distilled(tmp_path)


def test_unsupported_file(tmp_path):
    f = tmp_path / "set.h5"
    f.write_bytes(b"")
    with pytest.raises(RD3Error, match=r"set\.h5.*unsupported"):
        load_distilled(f)


# ---------------------------------------------------------------------------------------------------
# Tensor files
# ---------------------------------------------------------------------------------------------------
def test_pt_dict_uint8(tmp_path):
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    y = torch.tensor([0, 2, 1, 2])
    torch.save({"image_syn": x, "label_syn": y}, tmp_path / "syn.pt")
    s = load_distilled(tmp_path / "syn.pt")
    assert torch.equal(s.images, x) and s.labels.tolist() == [0, 2, 1, 2] and s.classes == ["0", "1", "2"]


def test_pt_tuple_and_class_map(tmp_path):
    x = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    torch.save((x, torch.tensor([0, 1, 0])), tmp_path / "syn.pth")
    cmap = tmp_path / "map.txt"
    cmap.write_text("zero\none\ntwo\n")
    s = load_distilled(tmp_path / "syn.pth", class_map=cmap)
    assert torch.equal(s.images, x) and s.classes == ["zero", "one", "two"]


def test_mtt_folder(tmp_path):
    x = torch.rand(6, 3, 4, 4)
    y = torch.arange(6) % 3
    torch.save(x, tmp_path / "images_best.pt")
    torch.save(y, tmp_path / "labels_best.pt")
    s = load_distilled(tmp_path)
    assert torch.equal(s.images, (x * 255).round().to(torch.uint8)) and s.num_classes == 3
    (tmp_path / "labels_best.pt").unlink()
    with pytest.raises(RD3Error, match="labels_best.pt"):
        load_distilled(tmp_path)


def test_npz_nhwc_float_unit_range(tmp_path):
    x = np.random.default_rng(0).random((5, 6, 7, 3), dtype=np.float32)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = -0.0005, 1.0005  # within tolerance of [0, 1]
    np.savez(tmp_path / "syn.npz", x=x, y=np.array([0, 1, 1, 0, 1]))
    s = load_distilled(tmp_path / "syn.npz")
    assert s.images.shape == (5, 3, 6, 7) and s.images.is_contiguous()
    expected = torch.from_numpy(np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)).permute(0, 3, 1, 2)
    assert torch.equal(s.images, expected) and s.labels.dtype == torch.int64


def test_gray_nhw_images(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", images=x, labels=np.array([1, 0, 1]))
    s = load_distilled(tmp_path / "g.npz")
    assert s.images.shape == (3, 1, 4, 5) and torch.equal(s.images[:, 0], torch.from_numpy(x))


def test_normalized_float_needs_mean_std(tmp_path):
    pixels = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.save({"x": (pixels / 255 - m) / s, "y": torch.arange(4)}, tmp_path / "n.pt")
    with pytest.raises(RD3Error, match=r"n\.pt.*pass --mean/--std"):
        load_distilled(tmp_path / "n.pt")
    out = load_distilled(tmp_path / "n.pt", mean=mean, std=std)
    assert torch.equal(out.images, pixels)
    with pytest.raises(RD3Error, match="--mean has 2 values"):
        load_distilled(tmp_path / "n.pt", mean=(0.5, 0.5), std=(0.5,))


def test_soft_labels_argmax(tmp_path):
    logits = torch.randn(5, 7)
    torch.save({"data": torch.randint(0, 256, (5, 3, 2, 2), dtype=torch.uint8), "targets": logits},
               tmp_path / "s.pt")
    s = load_distilled(tmp_path / "s.pt")
    assert torch.equal(s.labels, logits.argmax(1)) and s.num_classes == 7


def test_soft_labels_beside_hard_labels_keep_each_images_class(tmp_path):
    # DD-Ranking's inputs: image i is of class i // ipc, its soft labels a teacher's logits, which may misread it
    x = torch.randint(0, 256, (4, 3, 2, 2), dtype=torch.uint8)
    classes, soft = torch.tensor([0, 0, 1, 1]), torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 3.0, 0.0],
                                                              [0.0, 0.0, 4.0]])
    torch.save({"images": x, "labels": classes, "soft_labels": soft}, tmp_path / "s.pt")
    s = load_distilled(tmp_path / "s.pt")
    assert torch.equal(s.labels, classes) and torch.equal(s.soft, soft) and s.num_classes == 3
    for bad, message in ((soft[:3], r"soft_labels \(3, 3\)"), (soft[:, :1], r"K >= 2 classes"),
                         (soft.long(), "expected floats"), (soft * float("nan"), "NaN or inf")):
        torch.save({"images": x, "labels": classes, "soft_labels": bad}, tmp_path / "bad.pt")
        with pytest.raises(RD3Error, match=message):
            load_distilled(tmp_path / "bad.pt")


def test_tensor_load_size(tmp_path):
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    torch.save((x, torch.tensor([0, 1])), tmp_path / "t.pt")
    assert load_distilled(tmp_path / "t.pt", load_size=4).images.shape == (2, 3, 4, 4)


def test_tensor_file_errors(tmp_path):
    torch.save({"x": torch.zeros(3, 3, 2, 2, dtype=torch.uint8), "y": torch.zeros(2, dtype=torch.long)},
               tmp_path / "count.pt")
    with pytest.raises(RD3Error, match=r"count\.pt: 3 images but 2 labels"):
        load_distilled(tmp_path / "count.pt")
    torch.save({"pics": torch.zeros(1), "classes": torch.zeros(1)}, tmp_path / "keys.pt")
    with pytest.raises(RD3Error, match=r"keys\.pt.*found keys pics, classes"):
        load_distilled(tmp_path / "keys.pt")
    torch.save(torch.zeros(2, 3, 4, 4), tmp_path / "bare.pt")
    with pytest.raises(RD3Error, match=r"bare\.pt: unknown tensor-file layout"):
        load_distilled(tmp_path / "bare.pt")
    np.savez(tmp_path / "k.npz", pics=np.zeros(1))
    with pytest.raises(RD3Error, match=r"k\.npz.*found keys pics"):
        load_distilled(tmp_path / "k.npz")
    (tmp_path / "junk.pt").write_text("not a tensor file")
    with pytest.raises(RD3Error, match=r"junk\.pt"):
        load_distilled(tmp_path / "junk.pt")
    torch.save((torch.zeros(2, 5, 4, 4), torch.zeros(2, dtype=torch.long)), tmp_path / "ch.pt")
    with pytest.raises(RD3Error, match=r"ch\.pt: images have shape \(2, 5, 4, 4\)"):
        load_distilled(tmp_path / "ch.pt")


# ---------------------------------------------------------------------------------------------------
# Built-in real sets
# ---------------------------------------------------------------------------------------------------
def test_digits_split():
    from sklearn.datasets import load_digits

    train, val = load_real("digits", "train"), load_real("digits", "val")
    assert (len(train.labels), len(val.labels)) == (1257, 540)
    assert train.images.shape[1:] == (1, 16, 16) and train.images.dtype == torch.uint8
    assert train.classes == val.classes == [str(i) for i in range(10)] and train.num_classes == 10
    assert BUILTIN["digits"].image_size == 16
    # stratified: every class is ~30% val
    per_class = torch.bincount(val.labels, minlength=10) / (
        torch.bincount(val.labels, minlength=10) + torch.bincount(train.labels, minlength=10))
    assert ((per_class - 0.3).abs() < 0.02).all()
    # disjoint and complete: at native 8x8, train + val is exactly the quantized dataset (as a multiset)
    d = load_digits()
    raw_train, raw_val = load_real("digits", "train", image_size=8), load_real("digits", "val", image_size=8)
    ref = np.rint(d.images * 255 / 16).astype(np.uint8)
    all_rows = [(bytes(ref[i][None]), int(d.target[i])) for i in range(len(ref))]
    assert sorted(all_rows) == sorted(
        [(bytes(raw_train.images[i].numpy()), int(raw_train.labels[i])) for i in range(1257)]
        + [(bytes(raw_val.images[i].numpy()), int(raw_val.labels[i])) for i in range(540)])
    again = load_real("digits", "val")
    assert torch.equal(again.images, val.images) and torch.equal(again.labels, val.labels)
    assert torch.equal(load_real("digits", "test").labels, val.labels)


def test_digits_resize_matches_torch():
    raw = load_real("digits", "val", image_size=8).images
    ref = torch.nn.functional.interpolate(raw.float(), size=(16, 16), mode="bilinear", align_corners=False,
                                          antialias=True).round().to(torch.uint8)
    assert torch.equal(load_real("digits", "val").images, ref)
    assert load_real("digits", "val", image_size=12, resize_ratio=0.75).images.shape[-2:] == (12, 12)


def test_builtin_errors(tmp_path):
    with pytest.raises(RD3Error, match="digits, fashion-mnist"):
        load_real("cifar11", "val")
    with pytest.raises(RD3Error, match="unknown split"):
        load_real("digits", "holdout")
    with pytest.raises(RD3Error, match="class-map"):
        load_real("digits", "val", class_map=tmp_path / "m.txt")


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    raw = struct.pack(">I", 0x800 + arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_parser(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    write_idx(tmp_path / "i", images, gz)
    write_idx(tmp_path / "l", np.array([2, 0, 9], np.uint8), gz)
    assert np.array_equal(read_idx(tmp_path / "i", 3), images)
    assert read_idx(tmp_path / "l", 1).tolist() == [2, 0, 9]
    with pytest.raises(RD3Error, match=r"magic 2051, expected 2049"):
        read_idx(tmp_path / "i", 1)
    (tmp_path / "t").write_bytes((tmp_path / "i").read_bytes()[:-1] if not gz else
                                 gzip.compress(gzip.decompress((tmp_path / "i").read_bytes())[:-1]))
    with pytest.raises(RD3Error, match="holds 59"):
        read_idx(tmp_path / "t", 3)


def test_fashion_mnist_from_env_dir(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 9, 3, 3], np.uint8), False)
    monkeypatch.setenv(datasets.FASHION_MNIST_ENV, str(tmp_path))
    s = load_real("fashion-mnist", "test")
    assert s.images.shape == (4, 1, 28, 28) and torch.equal(s.images[:, 0], torch.from_numpy(images))
    assert s.labels.tolist() == [0, 9, 3, 3] and s.classes[9] == "Ankle boot" and s.num_classes == 10
    missing = rf"{tmp_path.name} has no train-images.*apt-get install dataset-fashion-mnist"
    with pytest.raises(RD3Error, match=missing):
        load_real("fashion-mnist", "train")


@pytest.mark.skipif(not Path(datasets.FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_debian(monkeypatch):
    monkeypatch.delenv(datasets.FASHION_MNIST_ENV, raising=False)
    val = load_real("fashion-mnist", "val")
    assert val.images.shape == (10000, 1, 28, 28) and val.labels.shape == (10000,)
    assert torch.bincount(val.labels).tolist() == [1000] * 10
    assert abs(val.images.float().mean().item() / 255 - BUILTIN["fashion-mnist"].mean[0]) < 0.01
    assert load_real("fashion-mnist", "val", image_size=32).images.shape == (10000, 1, 32, 32)


# ---------------------------------------------------------------------------------------------------
# Validation folder: Resize(round(size / ratio)) + CenterCrop(size) once per image
# ---------------------------------------------------------------------------------------------------
def test_val_folder_matches_torchvision(tmp_path):
    from torchvision import transforms as T

    sizes = [(40, 30), (30, 41), (37, 37), (50, 23)]
    files = []
    for k, (w, h) in enumerate(sizes):
        (tmp_path / f"n{k:02d}").mkdir()
        f = tmp_path / f"n{k:02d}" / "img.JPEG"
        Image.fromarray(rand_pixels(k, h, w)).save(f, quality=90)
        files.append(f)
    for ratio, size in [(0.0, 16), (0.8, 12), (1.0, 20)]:
        s = load_real(str(tmp_path), "val", image_size=size, resize_ratio=ratio)
        assert s.images.shape == (4, 3, size, size) and s.classes == ["n00", "n01", "n02", "n03"]
        tf = T.Compose([T.Resize(round(size / (ratio or 0.875))), T.CenterCrop(size), T.PILToTensor()])
        ref = torch.stack([tf(Image.open(f).convert("RGB")) for f in files])
        assert (s.images.int() - ref.int()).abs().max() <= 1


def test_val_folder_errors(tmp_path):
    write_folder(tmp_path, ["a"], per_class=1)
    with pytest.raises(RD3Error, match="image size > 0"):
        load_real(str(tmp_path), "val")
    with pytest.raises(RD3Error, match=r"val-resize-ratio"):
        load_real(str(tmp_path), "val", image_size=8, resize_ratio=1.5)
    with pytest.raises(RD3Error, match=r"no such directory"):
        load_real(str(tmp_path / "missing"), "val", image_size=8)


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------
def test_expand_channels():
    gray = torch.randint(0, 256, (2, 1, 3, 3), dtype=torch.uint8)
    rgb = expand_channels(gray, 3)
    assert rgb.shape == (2, 3, 3, 3) and rgb.is_contiguous() and torch.equal(rgb[:, 2], gray[:, 0])
    assert expand_channels(rgb, 3) is rgb
    assert expand_channels(gray[0], 3).shape == (3, 3, 3)
    with pytest.raises(RD3Error, match="3-channel images into 1"):
        expand_channels(rgb, 1)


def test_check_num_classes():
    check_num_classes("distilled set", 10, 10)
    with pytest.raises(RD3Error, match="set has 10 classes but 1000 were expected; pass --class-map"):
        check_num_classes("distilled set", 10, 1000, "pass --class-map")


def test_text_files_missing_or_unreadable_are_one_line(tmp_path):
    # one reader behind the class map, the sweep file and Tiny-ImageNet's val_annotations.txt
    from rd3fast.bench.sweepfile import load_sweep
    from rd3fast.data.folders import read_class_map

    with pytest.raises(RD3Error, match=r"^class map .*nope\.txt does not exist$"):
        read_class_map(tmp_path / "nope.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(RD3Error, match=r"^cannot read class map .*bin\.txt \(.*codec.*\)$"):
        read_class_map(tmp_path / "bin.txt")
    with pytest.raises(RD3Error, match=r"^cannot read sweep file .*bin\.txt \(.*\)$"):
        load_sweep(tmp_path / "bin.txt")
    with pytest.raises(RD3Error, match=r"^sweep file .*none\.toml does not exist$"):
        load_sweep(tmp_path / "none.toml")
