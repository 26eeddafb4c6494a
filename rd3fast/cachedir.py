"""Where rd3fast keeps what it derives from data sets once: validation-cache entries, FFCV .beton files, ZCA fits.

One root for all of them, so one variable (or ``--cache-dir``) moves them together, e.g. to a fast local disk.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "RD3FAST_CACHE"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else $RD3FAST_CACHE, else ~/.cache/rd3fast."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rd3fast"
