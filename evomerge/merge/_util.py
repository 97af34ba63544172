"""Small tensor helpers shared by the merge methods."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from contextvars import ContextVar

import torch


def work_dtype(t: torch.Tensor) -> torch.dtype:
    """Float64 stays float64; everything else is accumulated in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


_SUM_CHUNK = 1 << 18  # elements accumulated at a time when the output is narrower than the sum


def weighted_sum(
    tensors: list[torch.Tensor], weights: list[float], dtype: torch.dtype,
    divisor: float | None = None, out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """sum_i weights[i] * tensors[i], accumulated in ``dtype``, divided by ``divisor`` if given,
    returned in ``out_dtype`` (default ``dtype``). A narrower output (bf16 sources summed in
    float32) is accumulated a chunk at a time and written straight into it: the whole-tensor
    accumulator would cost a bf16 128256 x 2048 embedding 1 GB of float32 and a 0.5 GB converted
    copy beside the resident model. Chunks give the same bits: the same elementwise operations."""
    first = tensors[0]
    out_dtype = out_dtype or dtype
    div = None if divisor is None else torch.tensor(divisor, dtype=dtype)
    out = new_output(first.shape, out_dtype, first.device)
    flat_out, flats, n = out.view(-1), [t.reshape(-1) for t in tensors], out.numel()
    # The output is its own accumulator where the dtypes agree (one pass over the whole tensor);
    # else a chunk-sized one is reused.
    step = n if out_dtype == dtype else _SUM_CHUNK
    acc = None if out_dtype == dtype else torch.empty(min(step, n), dtype=dtype, device=first.device)
    for start in range(0, n, max(step, 1)):
        stop = min(start + step, n)
        a = flat_out[start:stop] if acc is None else acc[: stop - start]
        a.zero_()
        for t, w in zip(flats, weights, strict=True):
            a.add_(t[start:stop], alpha=w)  # promotes t to the accumulator's dtype
        if div is not None:
            a.div_(div)
        if acc is not None:
            flat_out[start:stop].copy_(a)
    return out


class OutputPool:
    """Recycles the CPU buffers that merged tensors are written into.

    Freshly mapped memory is slow to touch the first time (page faults, and worse on
    some VMs); a streamed merge produces one output tensor after another, so the buffer
    of a tensor already written can hold a later one. ``merge_to_disk`` installs a pool
    with ``use_output_pool``; methods get buffers from ``new_output``; ``settle`` after
    each op frees what the op took but did not return, and the writer ``release``s the
    returned one once it is on disk. Without a pool, ``new_output`` is ``torch.empty``.
    """

    def __init__(self) -> None:
        self._free: list[torch.Tensor] = []  # flat uint8 buffers
        self._lent: dict[int, torch.Tensor] = {}  # storage address -> buffer, in this op
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        with self._lock:
            # Best fit, and never a buffer much larger: keep it for the large tensor to come.
            fits = [
                (b.numel(), i)
                for i, b in enumerate(self._free)
                if nbytes <= b.numel() <= 2 * nbytes + (1 << 20)
            ]
            buf = self._free.pop(min(fits)[1]) if fits else None
        if buf is None:
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8)
        self._lent[buf.data_ptr()] = buf
        return buf[:nbytes].view(dtype).view(shape)

    def settle(self, result: torch.Tensor) -> torch.Tensor | None:
        """End of an op: the buffer behind ``result`` (if it is one of ours), others freed."""
        addr = result.untyped_storage().data_ptr() if result.device.type == "cpu" else None
        keep = self._lent.pop(addr, None) if addr is not None else None
        with self._lock:
            self._free.extend(self._lent.values())
        self._lent.clear()
        return keep

    def release(self, buf: torch.Tensor) -> None:
        with self._lock:
            self._free.append(buf)


_output_pool: ContextVar[OutputPool | None] = ContextVar("evomerge_output_pool", default=None)


@contextlib.contextmanager
def _using(var: ContextVar, value) -> Iterator[None]:
    """``var`` set to ``value`` for the block (and reset after it, also on errors)."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def use_output_pool(pool: OutputPool | None) -> contextlib.AbstractContextManager[None]:
    return _using(_output_pool, pool)


class Destination:
    """The tensor the current op's result should be written into, handed out once.

    ``InMemoryMerger`` offers each resident output tensor before merging into it, so a
    method that builds its result with ``new_output`` writes it in place: no copy, and no
    fresh pages (touching new memory costs more than the merge itself on some machines).
    A tensor is handed out only for an exact match (shape, dtype, device, contiguous), to
    the op's first ``new_output`` call; the merger copies whatever else a method returns.
    """

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None

    def take(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor | None:
        t, self.tensor = self.tensor, None
        if t is None or tuple(t.shape) != shape or t.dtype != dtype or t.device != torch.device(device):
            return None
        return t if t.is_contiguous() else None


_destination: ContextVar[Destination | None] = ContextVar("evomerge_destination", default=None)


def use_destination(dest: Destination | None) -> contextlib.AbstractContextManager[None]:
    return _using(_destination, dest)


def new_output(
    shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """An uninitialised output tensor: the offered destination, else from the active pool on
    the CPU, else fresh."""
    dest = _destination.get()
    if dest is not None and dest.tensor is not None:
        found = dest.take(tuple(shape), dtype, device)
        if found is not None:
            return found
    pool = _output_pool.get()
    if pool is None or device.type != "cpu":
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    return pool.take(tuple(shape), dtype)


# A fused merge loop checks its output for NaN/inf as it writes it; it marks that tensor so
# that the engine's check need not read it again. The engine checks each op's result right
# after the op and takes the mark either way, so a mark never outlives its op. (Inference
# tensors keep no version counter: a method must not change its result in place after the
# loop wrote it; merge_task_vectors returns it as written.)
_finite_mark = threading.local()


def _finite_key(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), t.numel(), t.dtype, t.device)


def mark_finite(t: torch.Tensor) -> None:
    _finite_mark.key = _finite_key(t)


def take_finite_mark(t: torch.Tensor) -> bool:
    """Whether ``t`` is the tensor last marked finite, unchanged; clears the mark."""
    key, _finite_mark.key = getattr(_finite_mark, "key", None), None
    return key is not None and key == _finite_key(t)
