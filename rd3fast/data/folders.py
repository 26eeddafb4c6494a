"""ImageFolders: which files, in which order, with which labels (one subfolder of .png/.jpg images per class).

Every reader of a folder (the PIL decode in ``data``, the validation cache, the DALI/PIL/FFCV readers)
takes its files and labels from ``list_image_folder``, so labels and order agree across all of them:
class folders sorted by name (or in a class map's order), files sorted by name within each.

Hidden entries (names starting with ".") are skipped, class folders and image files alike: editors,
macOS (``._x.png``) and sync tools leave them beside the data. Other files without an image extension are
skipped too. A symlinked class folder or image is followed; one whose target is missing or loops is an
error naming it (it is data the user meant to include), as is a folder that cannot be listed.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RD3Error, read_text

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ImageList:
    """An ImageFolder's files and labels in rd3fast's order (the one ``data.load_real`` decodes in)."""

    files: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    root: str


def read_class_map(path: str | Path) -> list[str]:
    """Class folder names, one per line, in class-index order; blank lines ignored."""
    p = Path(path)
    text = read_text(p, f"class map {p} does not exist", f"class map {p}")
    return unique_lines(text, f"class map {p}", "one class folder name per line")


def unique_lines(text: str, what: str, expected: str) -> list[str]:
    """The non-blank lines of a names file (a class map, Tiny-ImageNet's wnids.txt), stripped, in order; an
    empty file or a name listed twice is an RD3Error naming ``what``."""
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise RD3Error(f"{what} is empty; expected {expected}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise RD3Error(f"{what} lists {name!r} twice; each class must appear once")
        seen.add(name)
    return names


def visible_entries(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` not hidden (names starting with "."); one that cannot be listed is an
    RD3Error naming it."""
    try:
        with os.scandir(folder) as it:
            return [e for e in it if not e.name.startswith(".")]
    except OSError as e:
        raise RD3Error(f"cannot list {folder}: {e.strerror or e}") from None


def _visible_entries(folder: Path, what: str, suffixes: tuple[str, ...] = ()) -> list[tuple[Path, os.stat_result]]:
    """(path, stat of what it points to) of every non-hidden entry of ``folder`` (with one of ``suffixes``,
    any case, if given); a symlink whose target is missing or loops, or a folder that cannot be listed, is
    an RD3Error naming it."""
    try:
        paths = [p for p in folder.iterdir()
                 if not p.name.startswith(".") and (not suffixes or p.suffix.lower() in suffixes)]
    except OSError as e:
        raise RD3Error(f"cannot list {what} {folder}: {e.strerror or e}") from None
    entries = []
    for p in paths:
        try:
            entries.append((p, p.stat()))  # follows symlinks
        except OSError as e:
            if p.is_symlink():
                raise RD3Error(f"{p} is a broken symlink (its target {os.readlink(p)} "
                               f"{'loops' if e.errno == errno.ELOOP else 'does not exist'}); "
                               "fix or remove it") from None
            raise RD3Error(f"cannot read {p}: {e.strerror or e}") from None
    return entries


def class_names(root: Path, class_map: str | Path | None) -> list[str]:
    """Class folder names in index order: sorted, or the class map's order (which must match exactly)."""
    found = sorted(p.name for p, st in _visible_entries(root, "image folder") if stat.S_ISDIR(st.st_mode))
    if not found:
        raise RD3Error(f"{root} has no class folders; expected an ImageFolder (one subfolder of "
                       ".png/.jpg images per class), a .pt/.pth/.npz file or an images_best.pt folder")
    if class_map is None:
        return found
    names = read_class_map(class_map)
    unmapped = sorted(set(found) - set(names))
    if unmapped:
        raise RD3Error(f"class folder {root / unmapped[0]} is not in class map {class_map}"
                       + (f" (nor are {len(unmapped) - 1} more)" if len(unmapped) > 1 else ""))
    present = set(found)
    absent = [name for name in names if name not in present]
    if absent:
        raise RD3Error(f"class map {class_map} lists {absent[0]!r} but {root} has no such folder"
                       + (f" (nor {len(absent) - 1} more)" if len(absent) > 1 else ""))
    return names


def list_images(folder: Path) -> list[Path]:
    """The images of one class folder, sorted by name; an empty folder is an error (a class with no data)."""
    images = sorted((p for p, st in _visible_entries(folder, "class folder", IMAGE_EXTS) if stat.S_ISREG(st.st_mode)),
                    key=lambda p: p.name)
    if not images:
        raise RD3Error(f"class folder {folder} is empty (no {'/'.join(IMAGE_EXTS)} images)")
    return images


def list_image_folder(root: str | Path, class_map: str | Path | None = None) -> ImageList:
    """Files and labels of an ImageFolder exactly as ``data.load_real``/``load_distilled`` read it."""
    p = Path(root)
    if not p.is_dir():
        raise RD3Error(f"image folder {p} does not exist or is not a directory")
    classes = class_names(p, class_map)
    files: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        images = list_images(p / name)
        files += [str(f) for f in images]
        labels += [index] * len(images)
    return ImageList(tuple(files), tuple(labels), tuple(classes), str(p))


def folder_fingerprint(root: str | Path, class_map: str | Path | None = None) -> dict[str, Any]:
    """What an ImageFolder's decoded content depends on: path, classes, and each file's name, size, mtime
    (the key of its validation-cache entry and of its .beton)."""
    fp = listing_fingerprint(list_image_folder(root, class_map))
    fp["class_map_sha256"] = hashlib.sha256(Path(class_map).read_bytes()).hexdigest() if class_map is not None else None
    return fp


def listing_fingerprint(listing: ImageList) -> dict[str, Any]:
    """``folder_fingerprint`` of any listing (a folder's, or a dataset split's: Tiny-ImageNet's val images
    labelled by val_annotations.txt, ImageNet's flat val folder labelled by its CSV): root, classes, and
    each file's path relative to the root, label, size and mtime."""
    h = hashlib.sha256()
    base = Path(listing.root)
    for f, y in zip(listing.files, listing.labels):
        st = os.stat(f)
        h.update(f"{os.path.relpath(f, base)}\t{y}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return {"root": str(base.resolve()), "classes": list(listing.classes), "files": len(listing.files),
            "listing_sha256": h.hexdigest(), "class_map_sha256": None}
