"""Half-precision CPU tensors read as float32 numpy pieces, for the compiled merge loops.

numpy has no bfloat16, and torch's elementwise kernels on bf16 / fp16 convert every operand of
every op; the float32 loops of ``sparsify`` and ``task_arithmetic`` are several times faster.
A ``Float32Pieces`` stands where those loops take a flat float32 array: slicing it converts that
piece (exactly: every half value is a float32 value) into a per-thread scratch buffer, so no
whole-tensor float32 copy is made. The loops compute in float32 and the result is rounded to the
tensor's dtype once (``OutputPieces``), where torch's half ops round after every op.
"""

from __future__ import annotations

import numpy as np
import torch

from evomerge.merge._scratch import scratch

HALF_DTYPES = (torch.bfloat16, torch.float16)


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
    u = piece.view(np.uint32)
    t = scratch("half-round", u.size, np.uint32)
    np.right_shift(u, 16, out=t)
    np.bitwise_and(t, 1, out=t)
    np.add(t, 0x7FFF, out=t)
    np.add(t, u, out=t)
    np.right_shift(t, 16, out=t)
    nan = np.isnan(piece, out=scratch("half-nan", u.size, np.bool_))
    if nan.any():
        t[nan] = 0x7FC0
    np.copyto(out_bits, t, casting="unsafe")


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
