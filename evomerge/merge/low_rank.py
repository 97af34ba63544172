"""An adapter source kept resident as its low-rank factors, beside its resident base.

A search worker holds every source in memory. Three LoRA adapters of a 7B base held as dense
models would cost three more 7B copies; held as factors they cost their rank-r matrices, and
every tensor an adapter leaves alone is the base's own resident tensor, shared. A merge asks
for one tensor at a time, so the adapted tensor ``W + (B @ A) * scale`` is computed when asked
for, with the same operations as ``AdaptedSource.get`` (``evomerge.io.adapter``), so candidates
are bitwise those of the dense path on the CPU (on CUDA the product is taken on the GPU, equal
within rounding). Targets whose dense form is not bitwise that expression
(embeddings, transposed Conv1D weights, a saved replacement of the base tensor) and any tensor
the run keeps in another dtype than the adapter's base are held dense, as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch


class LowRankTensors(Mapping):
    """``name -> tensor`` of an adapted model: computed from the factors, held dense, or the
    base's own tensor."""

    def __init__(self, base: Mapping[str, torch.Tensor], factors: dict, dense: dict) -> None:
        self._base, self._factors, self._dense = base, factors, dense

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self._factors:
            b, a, scale = self._factors[name]
            weight = self._base[name]
            return (weight + (b @ a) * scale).to(weight.dtype)
        if name in self._dense:
            return self._dense[name]
        return self._base[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)


class LowRankSource:
    """A ``TensorSource`` over resident tensors, like ``StateDictSource``, for an adapter."""

    def __init__(self, name: str, adapted: Any, base: Any, *, device: torch.device,
                 dtype: torch.dtype | None) -> None:
        """``adapted``: an ``AdaptedSource`` whose base model is ``base`` (a resident
        ``StateDictSource`` of the same model, loaded with the same ``dtype``)."""
        self.name = name
        self.config = dict(adapted.config)
        factors, dense = {}, {}
        for t in adapted.tensor_names():
            exact = adapted.exact_factors(t)
            same_dtype = (dtype or adapted.dtype(t)) == adapted.dtype(t) == base.tensors[t].dtype
            if exact is not None and same_dtype:
                b, a, scale = exact
                factors[t] = (b.to(device), a.to(device), scale)
            elif exact is not None or adapted.replaced(t) or t in adapted.adapter.targets:
                dense[t] = adapted.get(t).to(device=device, dtype=dtype or adapted.dtype(t))
        self.tensors = LowRankTensors(base.tensors, factors, dense)
        self._own = [*dense.values(), *(f for b, a, _ in factors.values() for f in (b, a))]

    def resident_tensors(self) -> list[torch.Tensor]:
        """The tensors this source holds itself (the base's shared ones are the base's)."""
        return list(self._own)

    def tensor_names(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, tensor: str) -> bool:
        return tensor in self.tensors

    def shape(self, tensor: str) -> tuple[int, ...]:
        own = self.tensors._dense.get(tensor)
        return tuple((own if own is not None else self.tensors._base[tensor]).shape)

    def dtype(self, tensor: str) -> torch.dtype:
        own = self.tensors._dense.get(tensor)
        return (own if own is not None else self.tensors._base[tensor]).dtype

    def get(self, tensor: str) -> torch.Tensor:
        return self.tensors[tensor]
