"""A sweep run's identity: everything that decides its number, hashed (README "Identity, ROOT and what a rerun
does").

A run's id hashes its resolved Config less the keys that name where an input lies (``IDENTITY_FREE``), and in
their place the inputs themselves by content (``data.content``): the distilled set, the test set, the
teachers' weights, the held-out split and its training split, and every other file the run reads. So a
finished run is found again by any later sweep that asks for the same thing, a changed input is a new run,
never a stale one, and a ROOT copied with its inputs keeps its results.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..config import Config
from ..data.content import HashCache, listing_identity, set_identity
from ..data.folders import list_image_folder
from ..data.sets import load_distilled
from ..data.tensors import is_mtt_folder

IDENTITY_VERSION = 2  # bump when what an id hashes changes (2: inputs by content, the test set included)

# Config keys that are not hashed as they are written. None of them may change a number unless its
# replacement (hashed by content instead) changes too.
IDENTITY_FREE = (
    "parallel_seeds",  # K runs at once equal one by one (tests/test_engine.py): how, not what, is trained
    "val_cache",  # where decoded validation crops are kept; the crops are keyed by their folder and transform
    "distilled",  # -> the set's content identity (set_identity)
    "val",  # -> the test set's content identity (test_set_identity)
    "data_root",  # -> the named dataset's files by content (test set, held-out and ZCA training splits)
    "teacher_weights",  # -> each weights file's sha256
    "class_map",  # -> its sha256 (and the folder set's labels under it)
    "zca_train",  # -> what the ZCA is fitted on, by content (inputs_identity)
)


@dataclass(frozen=True)
class SetFacts:
    """What the plan needs of a set without decoding it: its content identity, size and shape."""

    identity: dict[str, Any]
    images: int
    classes: int
    image_size: int  # native (the longer side of the first image of a folder); --load-size is the config's


def set_facts(path: str | Path, cfg: Config | None = None, cache: HashCache | None = None) -> SetFacts:
    """A set's content identity and shape, read as ``run`` reads it: a folder is listed (under the class map)
    and one image opened; a tensor set is loaded with the run's --mean/--std, its float images kept as
    stored under --aug dsa, so a set ``run`` accepts is accepted here and one it refuses is refused with the
    same message. ``cfg``: the run's resolved config (None: the defaults)."""
    p = Path(path)
    class_map = cfg.class_map if cfg is not None else None
    cache = cache or HashCache()
    if p.is_dir() and not is_mtt_folder(p):
        listing = list_image_folder(p, class_map)
        from PIL import Image

        with Image.open(listing.files[0]) as im:
            size = max(im.size)
        return SetFacts(listing_identity(listing, cache), len(listing.files), len(listing.classes), size)
    ident = set_identity(p, class_map, cache)
    s = load_distilled(p, class_map=class_map, mean=cfg.mean if cfg else (), std=cfg.std if cfg else (),
                       progress=False, model_space=cfg is not None and cfg.aug == "dsa")
    return SetFacts(ident, len(s.images), s.num_classes, max(s.image_size))


def identity_base(cfg: Config, set_identity: dict[str, Any], test_identity: dict[str, Any],
                  teacher_sha256: Sequence[str], heldout: dict[str, Any] | None,
                  files: dict[str, Any], as_dict: dict[str, Any] | None = None) -> str:
    """Canonical JSON of everything a run's number depends on but its seeds: the config less IDENTITY_FREE
    and seeds, and the inputs by content. ``heldout``: the held-out split evaluated (size, seed and the
    training split's identity), None without one; ``files``: ``content.inputs_identity``; ``as_dict``:
    ``cfg.to_dict()`` when the caller has it."""
    config = {k: v for k, v in (as_dict or cfg.to_dict()).items() if k not in IDENTITY_FREE and k != "seeds"}
    ident = {"version": IDENTITY_VERSION, "config": config, "set": set_identity, "test": test_identity,
             "teachers": list(teacher_sha256), "heldout": heldout, "files": files}
    return json.dumps(ident, sort_keys=True, separators=(",", ":"))


def seeded_id(base: str, seeds: Sequence[int]) -> str:
    """The id of ``identity_base``'s runs at ``seeds``: sha256, first 16 hex digits. Split from the base so a
    plan serializes each config once, not once per seed."""
    return hashlib.sha256(f"{base}\nseeds={json.dumps(list(seeds))}".encode()).hexdigest()[:16]


def run_id(cfg: Config, set_identity: dict[str, Any], test_identity: dict[str, Any],
           teacher_sha256: Sequence[str], heldout: dict[str, Any] | None = None,
           files: dict[str, Any] | None = None) -> str:
    """sha256 of the resolved config (less IDENTITY_FREE), the set's, the test set's and the teachers'
    content, the held-out split and the other input files: [:16]."""
    return seeded_id(identity_base(cfg, set_identity, test_identity, teacher_sha256, heldout, files or {}),
                     cfg.seeds)
