"""Per-thread scratch buffers for the CPU merge loops, reused across calls and tensors."""

from __future__ import annotations

import threading

import numpy as np

CHUNK = 1 << 16  # elements per piece on the CPU: a pass's buffers stay in L2/L3, calls stay few

_local = threading.local()


def scratch(key: str, n: int, dtype) -> np.ndarray:
    """A per-thread buffer reused across calls: fresh pages are slow to fault in."""
    bufs = _local.__dict__.setdefault("bufs", {})
    buf = bufs.get(key)
    if buf is None or buf.dtype != dtype or buf.size < n:
        buf = bufs[key] = np.empty(max(n, CHUNK), dtype=dtype)
    return buf[:n]
