"""A sweep run's identity: what its number depends on, hashed (README "Identity, ROOT and what a rerun does").

A run's id hashes the resolved Config, the set's content fingerprint and the teachers' weights
(``run_id``), so a finished run is found again by any later sweep that asks for it, and a changed input is
a new run, never a stale one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..config import Config
from ..data.folders import folder_fingerprint, list_image_folder
from ..data.sets import load_distilled
from ..data.tensors import MTT_FILES, is_mtt_folder
from .sweepfile import Select

# Not part of a run's identity: they do not change its numbers (K at once equals one by one, tested), or
# they are replaced by a content identity (the set's fingerprint, the teachers' sha256).
IDENTITY_FREE = ("parallel_seeds", "val_cache", "distilled", "teacher_weights")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class SetFacts:
    """What the plan needs of a set without decoding it: its content identity, size and shape."""

    fingerprint: dict[str, Any]
    images: int
    classes: int
    image_size: int


def set_facts(path: str | Path) -> SetFacts:
    """An ImageFolder's fingerprint is its listing (relative names, labels, sizes, mtimes: cheap, and what
    the decode depends on); a tensor set's is its content's sha256. Neither names the folder it is in, so
    a ROOT copied with its inputs (``cp -a``, rsync -a) keeps its results."""
    p = Path(path)
    if p.is_dir() and not is_mtt_folder(p):
        fp = {k: v for k, v in folder_fingerprint(p).items() if k != "root"}
        listing = list_image_folder(p)
        from PIL import Image

        with Image.open(listing.files[0]) as im:
            size = max(im.size)
        return SetFacts({"kind": "folder", **fp}, len(listing.files), len(listing.classes), size)
    files = [p / n for n in MTT_FILES] if p.is_dir() else [p]
    s = load_distilled(p, progress=False)
    return SetFacts({"kind": "tensors", "sha256": [sha256_file(f) for f in files]}, len(s.images),
                    int(s.labels.max()) + 1, max(s.image_size))


def run_id(cfg: Config, set_fp: dict[str, Any], teacher_sha256: Sequence[str], heldout: Select | None) -> str:
    """sha256 of the resolved config (less IDENTITY_FREE), the set's fingerprint, the teachers' weights and
    the held-out split evaluated: [:16]."""
    ident = {"config": {k: v for k, v in cfg.to_dict().items() if k not in IDENTITY_FREE}, "set": set_fp,
             "teachers": list(teacher_sha256),
             "heldout": None if heldout is None else {"size": heldout.size, "seed": heldout.seed}}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
