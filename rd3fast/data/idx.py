"""IDX files (the MNIST family's format: a big-endian header, then unsigned bytes), gzipped or plain.
"""
from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np

from ..errors import RD3Error


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (magic 0x0800 + ndim: 2049 labels, 2051 images), gzipped or plain."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with (gzip.open(p, "rb") if gzipped else open(p, "rb")) as f:
            data = bytearray(f.read())  # writable, so torch.from_numpy needs no copy
    except (OSError, EOFError) as e:
        raise RD3Error(f"cannot read idx file {p}: {e}") from None
    header = 4 + 4 * ndim
    magic = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
    if magic != 0x800 + ndim or len(data) < header:
        raise RD3Error(f"{p}: not an idx file of bytes with {ndim} dimension(s) (magic {magic}, expected "
                       f"{0x800 + ndim})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(dims):
        raise RD3Error(f"{p}: header says {'x'.join(map(str, dims))} bytes of data but the file holds "
                       f"{len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)
