"""Listings of the data sets in their native layouts (Tiny-ImageNet-200, ImageNet-1K as class folders, flat
with Kaggle's CSV beside it or in Kaggle's tree, ImageNette, ImageWoof) and the cached listing of huge
ImageFolders: exactly the files written, labels in sorted-wnid order, one-line errors naming the file."""
from __future__ import annotations

import json
import os
import random
import shutil
import time
import types
from pathlib import Path

import pytest
from formats_trees import (
    IMAGENETTE_WNIDS,
    IMAGEWOOF_WNIDS,
    write_imagenet_flat_val,
    write_imagenet_folders,
    write_imagenette,
    write_jpeg,
    write_tiny_imagenet,
)

from rd3fast.data import listing_cache
from rd3fast.data.folders import list_image_folder
from rd3fast.data.imagenet import IMAGENET_DIRS, find_imagenet, list_imagenet
from rd3fast.data.listing_cache import cached_listing
from rd3fast.data.tiny_imagenet import find_tiny, list_tiny
from rd3fast.errors import RD3Error

WNIDS = ["n09246464", "n01443537", "n04067472", "n02124075", "n01629819"]  # not sorted, on purpose


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RD3FAST_CACHE", str(tmp_path / "cache"))  # never the user's ~/.cache


def expected(root: Path, written: list[tuple[str, str]], flat: bool = False,
             classes: list[str] | None = None) -> tuple[list[str], list[int]]:
    """The listing a writer's output should give: sorted wnids (of ``written``, or ``classes``) as classes;
    class folders in class order with files by name, or (flat) all files by name."""
    classes = classes or sorted({w for _, w in written})
    if flat:
        rows = sorted(written, key=lambda fw: Path(fw[0]).name)
    else:
        rows = sorted(written, key=lambda fw: (classes.index(fw[1]), Path(fw[0]).name))
    return [str(root / f) for f, _ in rows], [classes.index(w) for _, w in rows]


def check(listing, root: Path, written, flat: bool = False, classes: list[str] | None = None) -> None:
    files, labels = expected(root, written, flat, classes)
    assert list(listing.files) == files
    assert list(listing.labels) == labels
    assert list(listing.classes) == (classes or sorted({w for _, w in written}))


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(RD3Error) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def age(root: Path) -> None:
    """Set every folder's mtime an hour back: the cache then trusts stamps alone (no racy folders), and any
    later change to a folder moves its mtime to now, whatever the file system's timestamp granularity."""
    for dirpath, _, _ in os.walk(root):
        old = os.stat(dirpath).st_mtime_ns - 3600 * 10**9
        os.utime(dirpath, ns=(old, old))


# ---------------------------------------------------------------------------------------------------
# Tiny-ImageNet-200
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "data" / "tiny-imagenet-200"
    return root, write_tiny_imagenet(root, WNIDS, per_class_train=3, val_per_class=3, seed=1)


def test_tiny_lists_exactly_what_was_written(tiny):
    root, w = tiny
    assert w["wnids_order"] != sorted(WNIDS)  # classes come out sorted although wnids.txt is not
    train = list_tiny(root, "train")
    check(train, root, w["train"])
    assert train.root == str(root / "train")
    val = list_tiny(root, "val")
    check(val, root, w["val"], flat=True)
    assert [Path(f).name for f in val.files][:3] == ["val_0.JPEG", "val_1.JPEG", "val_10.JPEG"]  # by name
    assert val.classes == train.classes and val.root == str(root / "val")


def test_find_tiny_in_and_under_data_root(tiny):
    root, _ = tiny
    assert find_tiny(root) == root
    assert find_tiny(root.parent) == root
    assert list_tiny(root.parent, "val").files == list_tiny(root, "val").files
    msg = one_line_error(find_tiny, root.parent.parent)
    assert "wnids.txt" in msg and str(root.parent.parent / "tiny-imagenet-200") in msg
    assert "val" in one_line_error(list_tiny, root, "test")


def test_tiny_val_only_copy_lists(tiny):
    root, w = tiny
    shutil.rmtree(root / "train")
    check(list_tiny(root, "val"), root, w["val"], flat=True)


def test_tiny_errors_are_one_line_naming_the_file(tiny):
    root, _ = tiny
    ann = root / "val" / "val_annotations.txt"
    text = ann.read_text()

    ann.write_text(text + "val_999.JPEG\tn01443537\t0\t0\t5\t5\n")
    msg = one_line_error(list_tiny, root, "val")
    assert str(ann) in msg and "val_999.JPEG" in msg

    ann.write_text(text + "val_0.JPEG\tn99999999\t0\t0\t5\t5\n")
    msg = one_line_error(list_tiny, root, "val")
    assert str(ann) in msg and "n99999999" in msg and "wnids.txt" in msg

    ann.write_text("".join(line for line in text.splitlines(keepends=True) if not line.startswith("val_2.JPEG\t")))
    msg = one_line_error(list_tiny, root, "val")
    assert str(root / "val" / "images" / "val_2.JPEG") in msg and "val_annotations.txt" in msg
    ann.write_text(text)

    wnids = root / "wnids.txt"
    good = wnids.read_text()
    wnids.write_text(good + WNIDS[0] + "\n")
    msg = one_line_error(list_tiny, root, "train")
    assert str(wnids) in msg and WNIDS[0] in msg and "twice" in msg
    wnids.write_text(good)

    shutil.rmtree(root / "train" / WNIDS[2])
    msg = one_line_error(list_tiny, root, "train")
    assert str(root / "train" / WNIDS[2]) in msg and str(wnids) in msg


# ---------------------------------------------------------------------------------------------------
# ImageNet-1K: class folders
# ---------------------------------------------------------------------------------------------------
def test_imagenet_class_folders(tmp_path):
    root = tmp_path / "imagenet"
    w = write_imagenet_folders(root, WNIDS, per_class_train=3, per_class_val=2, seed=2)
    train = list_imagenet(root, "train")
    check(train, root, w["train"])
    assert train.root == str(root / "train")
    val = list_imagenet(root, "val")
    check(val, root, w["val"])
    assert val.classes == train.classes
    # found under a data root too, by each of the usual names
    assert find_imagenet(root, "imagenet") == root
    assert find_imagenet(tmp_path, "imagenet") == root
    other = tmp_path / "other" / "ILSVRC2012"
    shutil.copytree(root / "val", other / "val")
    assert find_imagenet(other.parent, "imagenet") == other  # val/ alone is enough
    check(list_imagenet(other.parent, "val"), other, w["val"])


def test_imagenet_find_errors(tmp_path):
    msg = one_line_error(find_imagenet, tmp_path, "imagenet")
    assert str(tmp_path) in msg and "ILSVRC2012" in msg and "ILSVRC/Data/CLS-LOC" in msg
    assert "imagenette" in one_line_error(find_imagenet, tmp_path, "imagenet21k")
    assert "does not exist" in one_line_error(find_imagenet, tmp_path / "nope", "imagenet")
    (tmp_path / "train").mkdir()
    assert "train" in one_line_error(list_imagenet, tmp_path, "test")


def test_imagenet_train_val_class_mismatch(tmp_path):
    root = tmp_path / "imagenet"
    write_imagenet_folders(root, WNIDS, 2, 1, seed=3)
    shutil.rmtree(root / "val" / WNIDS[1])
    msg = one_line_error(list_imagenet, root, "val")
    assert str(root / "val") in msg and WNIDS[1] in msg
    write_jpeg(root / "val" / WNIDS[1] / "ILSVRC2012_val_00000009.JPEG", random.Random(0))
    write_jpeg(root / "val" / "n00000001" / "ILSVRC2012_val_00000010.JPEG", random.Random(0))
    msg = one_line_error(list_imagenet, root, "val")
    assert str(root / "val" / "n00000001") in msg


# ---------------------------------------------------------------------------------------------------
# ImageNet-1K: flat val + LOC_val_solution.csv
# ---------------------------------------------------------------------------------------------------
def test_flat_val_with_csv_beside(tmp_path):
    root = tmp_path / "ILSVRC2012"
    w = write_imagenet_flat_val(root, WNIDS, 2, 3, kaggle_tree=False, seed=4)
    check(list_imagenet(root, "train"), root, w["train"])
    val = list_imagenet(root, "val")
    check(val, root, w["val"], flat=True)
    assert val.root == str(root / "val")
    assert list_imagenet(tmp_path, "val").files == val.files  # found as data_root/ILSVRC2012


@pytest.mark.parametrize("point_at", ["top", "cls-loc", "data-root"])
def test_flat_val_kaggle_tree(tmp_path, point_at):
    top = tmp_path / "imagenet"
    w = write_imagenet_flat_val(top, WNIDS, 2, 3, kaggle_tree=True, seed=5)
    cls_loc = top / "ILSVRC" / "Data" / "CLS-LOC"
    given = {"top": top, "cls-loc": cls_loc, "data-root": tmp_path}[point_at]
    assert find_imagenet(given, "imagenet") == cls_loc
    check(list_imagenet(given, "train"), top, w["train"])
    val = list_imagenet(given, "val")
    check(val, top, w["val"], flat=True)
    assert val.root == str(cls_loc / "val")


def test_flat_val_without_train_takes_classes_from_csv(tmp_path):
    root = tmp_path / "in1k"
    w = write_imagenet_flat_val(root, WNIDS, 1, 2, kaggle_tree=False, seed=6)
    shutil.rmtree(root / "train")
    check(list_imagenet(root, "val"), root, w["val"], flat=True)


def test_flat_val_partial_copy_ignores_extra_rows(tmp_path):
    root = tmp_path / "in1k"
    w = write_imagenet_flat_val(root, WNIDS, 1, 3, kaggle_tree=True, seed=7)
    gone = [fw for fw in w["val"] if fw[1] == min(WNIDS)]  # labels of the rest shift if wrongly derived
    for f, _ in gone:
        (root / f).unlink()
    kept = [fw for fw in w["val"] if fw not in gone]
    check(list_imagenet(root, "val"), root, kept, flat=True, classes=sorted(WNIDS))  # all training classes


def test_flat_val_errors(tmp_path):
    root = tmp_path / "in1k"
    w = write_imagenet_flat_val(root, WNIDS, 1, 2, kaggle_tree=False, seed=8)
    csv_path = w["csv"]
    text = csv_path.read_text()

    lines = text.splitlines(keepends=True)
    first = min(Path(f).name for f, _ in w["val"])
    csv_path.write_text("".join(line for line in lines if not line.startswith(Path(first).stem)))
    msg = one_line_error(list_imagenet, root, "val")
    assert str(csv_path) in msg and "1 of the" in msg and first in msg

    wrong = lines[0] + "".join(line.replace(line.split(",")[1].split()[0], "n00000042", 1) if i == 1 else line
                               for i, line in enumerate(lines[1:], 1))
    csv_path.write_text(wrong)
    msg = one_line_error(list_imagenet, root, "val")
    assert str(csv_path) in msg and "n00000042" in msg and "line 2" in msg and "training class" in msg

    csv_path.write_text("image,label\n" + "".join(lines[1:]))
    msg = one_line_error(list_imagenet, root, "val")
    assert str(csv_path) in msg and "ImageId,PredictionString" in msg

    csv_path.unlink()
    msg = one_line_error(list_imagenet, root, "val")
    assert "LOC_val_solution.csv" in msg and str(root) in msg and str(root / "val") in msg
    assert str(tmp_path) in msg  # it says where it looked: up to 3 levels above


# ---------------------------------------------------------------------------------------------------
# ImageNette / ImageWoof
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["imagenette2", "imagenette2-320", "imagenette2-160", "imagewoof2",
                                     "imagewoof2-320", "imagewoof2-160"])
def test_imagenette_imagewoof(tmp_path, variant):
    name = "imagewoof" if variant.startswith("imagewoof") else "imagenette"
    assert variant in IMAGENET_DIRS[name]
    w = write_imagenette(tmp_path, variant, per_class_train=2, per_class_val=1, seed=9)
    assert find_imagenet(tmp_path, name) == tmp_path / variant
    assert find_imagenet(tmp_path / variant, name) == tmp_path / variant
    train = list_imagenet(tmp_path, "train", name)
    check(train, tmp_path, w["train"])
    assert list(train.classes) == sorted(IMAGEWOOF_WNIDS if name == "imagewoof" else IMAGENETTE_WNIDS)
    check(list_imagenet(tmp_path / variant, "val", name), tmp_path, w["val"])


def test_imagenette_class_checks(tmp_path):
    write_imagenette(tmp_path, "imagewoof2-160", 1, 1, seed=10)
    msg = one_line_error(list_imagenet, tmp_path / "imagewoof2-160", "train", "imagenette")
    assert "ImageWoof" in msg and "ImageNette" in msg
    msg = one_line_error(find_imagenet, tmp_path, "imagenette")
    assert "imagenette2-160" in msg
    shutil.rmtree(tmp_path / "imagewoof2-160" / "train" / IMAGEWOOF_WNIDS[3])
    shutil.rmtree(tmp_path / "imagewoof2-160" / "val" / IMAGEWOOF_WNIDS[3])
    msg = one_line_error(list_imagenet, tmp_path, "train", "imagewoof")
    assert "9 classes" in msg and str(tmp_path / "imagewoof2-160" / "train") in msg


# ---------------------------------------------------------------------------------------------------
# cached_listing
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imagenet"
    write_imagenet_folders(root, WNIDS, per_class_train=3, per_class_val=1, seed=11)
    age(root)
    return root / "train"


def forbid_walks(monkeypatch) -> None:
    def walk(*args, **kwargs):
        raise AssertionError("walked the tree")
    monkeypatch.setattr(listing_cache, "list_image_folder", walk)
    monkeypatch.setattr(listing_cache, "list_images", walk)


def test_cached_listing_reads_back_without_walking(folder, tmp_path, monkeypatch):
    first = cached_listing(folder, cache_dir=tmp_path / "c")
    assert first == list_image_folder(folder)
    saved = list((tmp_path / "c" / "listings").glob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["classes"][0]["name"] == min(WNIDS)
    forbid_walks(monkeypatch)
    assert cached_listing(folder, cache_dir=tmp_path / "c") == first
    monkeypatch.chdir(folder.parent)  # same key from a relative path; files built on the root as given
    assert cached_listing("train", cache_dir=tmp_path / "c") == list_image_folder("train")
    assert cached_listing("./train/", cache_dir=tmp_path / "c") == list_image_folder("./train/")


@pytest.mark.parametrize("change", ["add", "remove", "rename", "new class", "hidden file"])
def test_cached_listing_sees_changes(folder, tmp_path, change):
    cached_listing(folder, cache_dir=tmp_path / "c")
    cls = folder / sorted(WNIDS)[2]
    victim = min(cls.iterdir())
    if change == "add":
        write_jpeg(cls / "n00000000_1.JPEG", random.Random(0))
    elif change == "remove":
        victim.unlink()
    elif change == "rename":
        victim.rename(cls / ("zz_" + victim.name))
    elif change == "new class":
        write_jpeg(folder / "n99999999" / "n99999999_1.JPEG", random.Random(0))
    else:
        (cls / ".DS_Store").write_text("x")
    again = cached_listing(folder, cache_dir=tmp_path / "c")
    assert again == list_image_folder(folder)
    assert cached_listing(folder, cache_dir=tmp_path / "c") == again


def test_cached_listing_racy_folder_is_verified(tmp_path, monkeypatch):
    root = tmp_path / "fresh"
    write_imagenet_folders(root, WNIDS, 2, 1, seed=12)  # not aged: every folder is "racy" (just written)
    first = cached_listing(root / "train", cache_dir=tmp_path / "c")
    # a change in the same timestamp tick leaves the mtime as saved: simulate it by restoring the mtime
    cls = root / "train" / min(WNIDS)
    st = cls.stat()
    write_jpeg(cls / "n00000000_1.JPEG", random.Random(0))
    os.utime(cls, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = cached_listing(root / "train", cache_dir=tmp_path / "c")
    assert again != first and again == list_image_folder(root / "train")
    age(root)  # once settled, the entry is saved again and trusted on stats alone
    cached_listing(root / "train", cache_dir=tmp_path / "c")  # lists again (mtimes changed), saves
    forbid_walks(monkeypatch)
    assert cached_listing(root / "train", cache_dir=tmp_path / "c") == again


def test_cached_listing_settles_racy_entries(tmp_path, monkeypatch):
    root = tmp_path / "fresh"
    write_imagenet_folders(root, WNIDS, 2, 1, seed=13)
    first = cached_listing(root / "train", cache_dir=tmp_path / "c")
    later = time.time_ns() + 3600 * 10**9  # an hour on, the verified folders are old enough to be trusted
    monkeypatch.setattr(listing_cache, "time", types.SimpleNamespace(time_ns=lambda: later))
    assert cached_listing(root / "train", cache_dir=tmp_path / "c") == first  # verifies, saves as settled
    monkeypatch.undo()
    forbid_walks(monkeypatch)
    assert cached_listing(root / "train", cache_dir=tmp_path / "c") == first


def test_cached_listing_cache_problems_are_not_errors(folder, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    assert cached_listing(folder, cache_dir=blocker) == list_image_folder(folder)  # unwritable: still lists
    cached_listing(folder, cache_dir=tmp_path / "c")
    for f in (tmp_path / "c" / "listings").glob("*.json"):
        f.write_text("{not json")
    assert cached_listing(folder, cache_dir=tmp_path / "c") == list_image_folder(folder)
    with pytest.raises(RD3Error):
        cached_listing(tmp_path / "missing", cache_dir=tmp_path / "c")


def test_cached_listing_keys_on_the_class_map(folder, tmp_path):
    cmap = tmp_path / "classes.txt"
    cmap.write_text("\n".join(sorted(WNIDS, reverse=True)) + "\n")
    mapped = cached_listing(folder, cmap, cache_dir=tmp_path / "c")
    assert list(mapped.classes) == sorted(WNIDS, reverse=True) and mapped == list_image_folder(folder, cmap)
    assert cached_listing(folder, cache_dir=tmp_path / "c").classes == tuple(sorted(WNIDS))
    cmap.write_text("\n".join(sorted(WNIDS)) + "\n")
    assert cached_listing(folder, cmap, cache_dir=tmp_path / "c").classes == tuple(sorted(WNIDS))
