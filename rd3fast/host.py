"""Host-process settings that decide CPU speed: the allocator, and how long the process has been running.

glibc's malloc serves every block above its mmap threshold (dynamic, at most 32 MiB) with a fresh
``mmap`` and returns it with ``munmap`` when freed. torch's CPU allocator sits on malloc, so each
evaluation batch of 500 images (a 50 MB activation per layer) and each large step buffer is faulted in
page by page and handed back to the kernel, over and over: measured on the 2-core CI machine, 0.95 M minor
page faults and 1.8 s of system time per evaluation of Fashion-MNIST's 10k test images, and several more
seconds per run in the training steps. ``tune_allocator`` raises the mmap threshold and the trim threshold
once, so freed blocks stay in the heap and are reused (what jemalloc/tcmalloc, the usual PyTorch CPU
advice, do by design). It changes where memory comes from, never a number the run computes.

The command-line entry points call it; library users may call it themselves (it is process-wide).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap
_TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of freed heap for reuse before returning it
_tuned: bool | None = None


def tune_allocator() -> bool:
    """Keep large freed blocks in the heap (glibc only; a no-op elsewhere). Returns whether it applied."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _tuned


def _age_from_proc() -> float | None:
    """Seconds since this process started, from /proc (Linux: start time in clock ticks after boot)."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


_IMPORTED = time.perf_counter()
_AGE_AT_IMPORT = _age_from_proc()


def process_age() -> float:
    """Seconds since this process started (interpreter start-up and imports included); where /proc is
    missing, since this module was imported."""
    return (_AGE_AT_IMPORT or 0.0) + time.perf_counter() - _IMPORTED
