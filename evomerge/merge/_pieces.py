"""Half-precision CPU tensors read as float32 numpy pieces, for the compiled merge loops.

numpy has no bfloat16, and torch's elementwise kernels on bf16 / fp16 convert every operand of
every op; the float32 loops of ``sparsify`` and ``task_arithmetic`` are several times faster.
A ``Float32Pieces`` stands where those loops take a flat float32 array: slicing it converts that
piece (exactly: every half value is a float32 value) into a per-thread scratch buffer, so no
whole-tensor float32 copy is made.

Two arithmetics, as mergekit's ``dtype`` (the compute dtype) chooses them: half tensors merged as
they are compute as torch's ops in that dtype do (each op in float32, rounded to the half dtype;
sums over models accumulated in float32 and rounded once; ``half_rounding`` names the dtype and
``round_half`` does the rounding), which is mergekit's arithmetic with ``dtype: bfloat16``. Under
``computing_in_float32`` (a plan whose compute dtype is float32 hands its half sources over
unconverted) the loops compute in float32 and round the result once (``OutputPieces``), as
mergekit does with ``dtype: float32, out_dtype: bfloat16``.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

import numpy as np
import torch

from evomerge.merge._scratch import scratch
from evomerge.merge._util import _using

HALF_DTYPES = (torch.bfloat16, torch.float16)


_in_float32: ContextVar[bool] = ContextVar("evomerge_half_in_float32", default=False)


def computing_in_float32() -> contextlib.AbstractContextManager[None]:
    """Within the block, half tensors given to a merge method stand for their float32 values:
    the merge computes in float32 and rounds its result once."""
    return _using(_in_float32, True)


def half_rounding(*tensors: torch.Tensor) -> torch.dtype | None:
    """The half dtype every step of a merge of these tensors rounds to (torch's arithmetic in
    that dtype), or None: they are not half, or the merge computes in float32. Read it on the
    calling thread (context variables do not reach the merge's worker threads)."""
    dtype = tensors[0].dtype
    return dtype if dtype in HALF_DTYPES and not _in_float32.get() else None


def _bf16_rounded(piece: np.ndarray) -> np.ndarray:
    """``piece`` (float32) rounded to bfloat16 as torch rounds (to nearest, ties to even; NaN to
    0x7FC0): a uint32 scratch array whose high 16 bits are the bf16 bits (low bits not cleared)."""
    u = piece.view(np.uint32)
    t = scratch("half-round", u.size, np.uint32)
    np.right_shift(u, 16, out=t)
    np.bitwise_and(t, 1, out=t)
    np.add(t, 0x7FFF, out=t)
    np.add(t, u, out=t)
    nan = np.isnan(piece, out=scratch("half-nan", u.size, np.bool_))
    if nan.any():
        t[nan] = 0x7FC00000
    return t


def round_half(a: np.ndarray, dtype: torch.dtype | None) -> np.ndarray:
    """A float32 piece rounded in place to ``dtype``'s values (bf16 / fp16: to nearest, ties to
    even, as torch converts); unchanged for None."""
    if dtype is None:
        return a
    if dtype == torch.bfloat16:
        np.bitwise_and(_bf16_rounded(a), np.uint32(0xFFFF0000), out=a.view(np.uint32))
        return a
    h = scratch("round-half-16", a.size, np.float16)
    with np.errstate(over="ignore"):  # past float16's range is inf, as torch converts
        np.copyto(h, a, casting="same_kind")
    np.copyto(a, h)
    return a


def round_scalar(value: float, dtype: torch.dtype | None) -> float:
    """A Python number as a tensor of ``dtype`` holds it (unchanged for None): as torch converts
    it, through float32. In numpy: this runs on the merge's worker threads too (no torch op there)."""
    if dtype is None:
        return value
    return float(round_half(np.array([value], dtype=np.float32), dtype)[0])


def use_half_pieces(*tensors: torch.Tensor) -> bool:
    """Whether the float32 loops apply through pieces: CPU tensors of one half dtype."""
    first = tensors[0]
    return (first.device.type == "cpu" and first.dtype in HALF_DTYPES
            and all(t.device.type == "cpu" and t.dtype == first.dtype for t in tensors))


class Float32Pieces:
    """A flat half-precision CPU tensor read in float32. ``view[a:b]`` is a float32 array valid
    until this view's next slice in the same thread (a scratch buffer named ``key``: give every
    view used at the same time its own); ``view[index_array]`` is a fresh array.

    Conversions are numpy's (bf16: the bits shifted into a float32's high half, exact), never a
    torch op: these run on the merge's worker threads, and a torch op there starts an OpenMP
    team per thread, after which libgomp stops spinning and every small torch op of the process
    waits for sleeping threads (linear's chunked sums ran 2.6x slower after one TIES merge)."""

    dtype = np.dtype(np.float32)

    def __init__(self, t: torch.Tensor, key: str) -> None:
        flat = t.detach().reshape(-1)
        self.size = flat.numel()
        self.key = f"half-{key}"
        self._bf16 = flat.dtype == torch.bfloat16
        self._data = flat.view(torch.int16).numpy().view(np.uint16) if self._bf16 else flat.numpy()

    def bf16_bits(self, start: int, stop: int) -> np.ndarray | None:
        """Entries ``start:stop`` as bfloat16 bits (uint16, no copy), for a compiled loop that
        reads them itself; None where the tensor is float16."""
        return self._data[start:stop] if self._bf16 else None

    def _convert(self, src: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self._bf16:
            np.left_shift(src, 16, out=out.view(np.uint32), dtype=np.uint32)
        else:
            np.copyto(out, src)
        return out

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self.size)
            if step != 1:
                raise IndexError("Float32Pieces: contiguous slices only")
            return self._convert(self._data[start:stop], scratch(self.key, stop - start, np.float32))
        src = self._data[np.asarray(index)]
        return self._convert(src, np.empty(src.size, np.float32))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        # The whole tensor in float32: only the rare fallback of an order statistic takes it.
        whole = self._convert(self._data, np.empty(self.size, np.float32))
        return whole if dtype is None else whole.astype(dtype)


def flat_f32(t: torch.Tensor, key: str) -> np.ndarray | Float32Pieces:
    """A flat float32/float64 numpy view of a CPU tensor, or float32 pieces of a half one."""
    if t.dtype in HALF_DTYPES:
        return Float32Pieces(t, key)
    return t.detach().reshape(-1).numpy()


def round_to_bf16(piece: np.ndarray, out_bits: np.ndarray) -> None:
    """``piece`` (float32) rounded to bfloat16 bits, as torch rounds: to nearest, ties to even,
    NaN to 0x7FC0."""
    np.right_shift(_bf16_rounded(piece), 16, out=out_bits, casting="unsafe")


class OutputPieces:
    """Where a loop writes a flat output piece by piece: straight into a float32/64 tensor's
    memory, or (half precision) into a float32 scratch piece rounded into the tensor by ``put``
    (in numpy, as ``Float32Pieces`` reads)."""

    def __init__(self, out: torch.Tensor) -> None:
        flat = out.detach().view(-1)
        self.direct = out.dtype not in HALF_DTYPES
        self._bf16 = out.dtype == torch.bfloat16
        self._array = (flat.view(torch.int16).numpy().view(np.uint16) if self._bf16 else flat.numpy())

    def piece(self, start: int, stop: int) -> np.ndarray:
        if self.direct:
            return self._array[start:stop]
        return scratch("half-out", stop - start, np.float32)

    def put(self, piece: np.ndarray, start: int, stop: int) -> None:
        if self.direct:
            return
        if self._bf16:
            round_to_bf16(piece, self._array[start:stop])
        else:
            np.copyto(self._array[start:stop], piece, casting="same_kind")  # IEEE rounding, as torch
