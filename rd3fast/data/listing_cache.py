"""Listings of huge ImageFolders (ImageNet's 1.28 M training files) made once and kept on disk.

``list_image_folder`` stats every file; on a network file system that is minutes for ImageNet's train/.
``cached_listing`` saves the listing under ``cache_root()/listings/<key>.json`` and later checks only the root
folder and the ~1000 class folders: on POSIX, creating, removing or renaming an entry of a directory updates
that directory's st_mtime (``rename(2)``, ``unlink(2)``, ``open(2)`` with O_CREAT: "the parent directory's
timestamps are updated"), so an unchanged (st_mtime_ns, st_ino) of every class folder means unchanged names
in it. A changed file's *content* does not change its folder, and does not change a listing either.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..cachedir import cache_root
from ..errors import RD3Error
from .folders import IMAGE_EXTS, ImageList, class_names, list_image_folder, list_images

FORMAT = 1  # bump when the saved JSON changes meaning; older entries then miss (the key hashes it)

# A folder modified this close to (or after) the moment its listing began may have changed again within the
# same timestamp tick (Linux: a jiffy; FAT: 2 s) after it was listed, leaving its mtime as saved ("racy git").
# Such a folder is re-listed (that folder only) on the next use, until its mtime is older than this.
RACY_NS = 2_000_000_000


def _key(root: Path, class_map: str | Path | None) -> str:
    """The cache file's name: the root's absolute path, the class map's bytes, the format and extensions."""
    h = hashlib.sha256()
    h.update(f"{FORMAT}\0{'/'.join(IMAGE_EXTS)}\0{root.resolve()}\0".encode())
    if class_map is not None:
        try:
            h.update(Path(class_map).read_bytes())
        except OSError:
            h.update(b"\0unreadable class map\0")  # list_image_folder reports it properly
    return h.hexdigest()[:32]


def _stamp(path: Path) -> tuple[int, int] | None:
    """(st_mtime_ns, st_ino) of a folder (symlinks followed, as the listing follows them); None if not one."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _prefix(root: Path) -> str:
    """What ``str(root / name / file)`` starts with, built without a Path per file (1.28 M of them)."""
    base = str(root)
    return "" if base == "." else base.rstrip(os.sep) + os.sep


def _from_saved(root: Path, saved: dict[str, Any]) -> ImageList:
    prefix = _prefix(root)
    files: list[str] = []
    labels: list[int] = []
    for index, entry in enumerate(saved["classes"]):
        head = prefix + entry["name"] + os.sep
        files += [head + f for f in entry["files"]]
        labels += [index] * len(entry["files"])
    return ImageList(tuple(files), tuple(labels), tuple(e["name"] for e in saved["classes"]), str(root))


def _load(path: Path, root: Path, class_map: str | Path | None,
          started: int) -> tuple[ImageList | None, dict[str, Any] | None]:
    """The saved listing if it is still valid, and the saved entry to write again if its racy folders have all
    settled (their verified stamps are now old enough to be trusted), else None."""
    try:
        saved = json.loads(path.read_text())
        if saved.get("format") != FORMAT or saved.get("root") != str(root.resolve()):
            return None, None
        racy_before = started - RACY_NS

        def still_valid(folder: Path, stamp: list[int]) -> bool | None:
            """False: changed; None: unchanged but racy (verify its names); True: unchanged."""
            now = _stamp(folder)
            if now is None or list(now) != list(stamp):
                return False
            return None if stamp[0] >= saved["listed_at_ns"] - RACY_NS else True

        resave = False
        settled = saved["root_stamp"][0] < racy_before
        ok = still_valid(root, saved["root_stamp"])
        if ok is False:
            return None, None
        if ok is None:  # the class folders themselves may have changed: compare their names
            if class_names(root, class_map) != [e["name"] for e in saved["classes"]]:
                return None, None
            resave = True
        for entry in saved["classes"]:
            folder = root / entry["name"]
            ok = still_valid(folder, entry["stamp"])
            if ok is False:
                return None, None
            if ok is None:
                if [p.name for p in list_images(folder)] != entry["files"]:
                    return None, None
                resave = True
                settled &= entry["stamp"][0] < racy_before
        listing = _from_saved(root, saved)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, RD3Error):
        return None, None  # unreadable, corrupt or from another version: list again
    if resave and settled:
        # The stamps just verified stay the saved ones: a change after the verification differs from them.
        return listing, {**saved, "listed_at_ns": started}
    return listing, None


def _write(path: Path, saved: dict[str, Any]) -> None:
    """Write a cache entry; a cache that cannot be written only costs the next call a walk."""
    try:
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(saved, separators=(",", ":")))
    except (OSError, RD3Error):
        pass


def _save(path: Path, listing: ImageList, root: Path, stamps: dict[str, tuple[int, int]],
          root_stamp: tuple[int, int], started: int) -> None:
    """Save a fresh listing with the stamps taken before it was made."""
    prefix = _prefix(root)
    per_class: list[list[str]] = [[] for _ in listing.classes]
    for f, y in zip(listing.files, listing.labels):
        head = prefix + listing.classes[y] + os.sep
        if not f.startswith(head):
            return  # not the layout this cache stores (cannot happen with list_image_folder's files)
        per_class[y].append(f[len(head):])
    saved = {"format": FORMAT, "root": str(root.resolve()), "listed_at_ns": started, "root_stamp": list(root_stamp),
             "classes": [{"name": name, "stamp": list(stamps[name]), "files": names}
                         for name, names in zip(listing.classes, per_class)]}
    _write(path, saved)


def cached_listing(root: str | Path, class_map: str | Path | None = None,
                   cache_dir: str | Path | None = None) -> ImageList:
    """``list_image_folder(root, class_map)``, saved the first time and read back while it is still valid.

    Key: sha256 of the folder's absolute (resolved) path and the class map's content (plus the cache format and
    the image extensions), so ``cache_root(cache_dir)/listings/<key>.json``. Validity: the saved listing is
    returned while the root folder and every class folder have the same (name, st_mtime_ns, st_ino) as when it
    was made; adding, removing or renaming an entry of a folder changes its mtime (POSIX), so ~1000 stats
    replace walking 1.28 M files. Anything different: listed again and saved over the old entry. Folders
    modified within ``RACY_NS`` of the listing are re-listed one by one on use until they are older (a second
    change in the same timestamp tick would otherwise go unseen). The stamps are taken before the walk, so a
    change during it shows up as a difference next time. A cache folder that cannot be written is no error
    (nothing is saved). The files are stored per class, by name, relative to their class folder; the returned
    paths are built on ``root`` as given, exactly as ``list_image_folder`` returns them.
    """
    p = Path(root)
    started = time.time_ns()
    path = cache_root(cache_dir) / "listings" / f"{_key(p, class_map)}.json"
    listing, resave = _load(path, p, class_map, started)
    if listing is not None:
        if resave is not None:  # every racy folder is now old enough to be trusted: next time, stats only
            _write(path, resave)
        return listing
    # Stamp first, walk second: a folder changed during the walk then differs from its stamp next time.
    root_stamp = _stamp(p)
    stamps: dict[str, tuple[int, int]] = {}
    if root_stamp is not None:
        try:
            with os.scandir(p) as it:
                for entry in it:
                    s = None if entry.name.startswith(".") else _stamp(p / entry.name)
                    if s is not None:
                        stamps[entry.name] = s
        except OSError:
            root_stamp = None
    listing = list_image_folder(p, class_map)
    if root_stamp is not None and all(name in stamps for name in listing.classes):
        _save(path, listing, p, stamps, root_stamp, started)
    return listing
