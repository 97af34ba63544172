"""What the spectral merge methods (``tsv``, ``iso_c``, ``iso_cts``, ``star``) share.

Each of them merges the task vectors (expert minus base) of a 2-D weight through singular value
decompositions, and every other tensor by the plain mean of its task vectors. ``spectral_merge``
does the common part: task vectors in float32 (float64 stays float64), the mean for tensors that
are not 2-D and for embedding and output-head tables, the method's matrix rule for the rest, then
base + scale * merged delta in the input dtype.

Embedding and head tables (vocabulary x hidden) are averaged, not decomposed: their rows are
per-token lookups rather than a linear map whose dominant directions the papers reason about, and
they are the largest matrices of a language model, so their SVD costs the most. The official
TSV and Iso code (CLIP image encoders) never meets a fine-tuned vocabulary table (it averages
only ``text_projection`` among 2-D tensors), nor does STAR's (LoRA-adapted projections only).

Cost: a reduced SVD (``full_matrices=False``) of an m x n matrix is O(m n min(m, n)); the
methods take from T (STAR) or 1 (Iso-C) to T + 3 (Iso-CTS) of them per matrix for T experts.
One 768 x 2048 float32 SVD takes ~0.2 s on an idle 2-core machine (one 1024 x 2816 took ~30 s
on a heavily shared one), and the 12-layer benchmark model of ``merge_throughput.py --family
gqa12`` takes 16-68 s by method, so a 7B merge on a CPU is a matter of hours; on a GPU (``--device
cuda``) the SVDs are far faster.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from evomerge.merge._util import work_dtype
from evomerge.merge.registry import TensorGroup

_TABLE_PARTS = ("wte", "wpe", "lm_head")


def is_embedding_or_head(name: str) -> bool:
    """Whether a tensor name is an embedding table or the output head (``model.embed_tokens.weight``,
    ``transformer.wte.weight``, ``lm_head.weight``, ``gpt_neox.embed_in.weight``...)."""
    return any("embed" in part or part in _TABLE_PARTS for part in name.split("."))


def svd(a: torch.Tensor, method: str, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reduced SVD ``a = U diag(S) Vh``, with an error that names the tensor if it fails."""
    try:
        return torch.linalg.svd(a, full_matrices=False)
    except RuntimeError as err:  # torch.linalg.LinAlgError: no convergence (NaN/inf, or LAPACK)
        bad = "" if torch.isfinite(a).all() else " It holds NaN or inf values."
        raise ValueError(
            f"{method}: the singular value decomposition of tensor {name!r} (shape "
            f"{tuple(a.shape)}, {a.dtype}) failed: {err}.{bad} Check that the source models hold "
            f"finite weights for this tensor, or merge it with another method (a `slices:` entry "
            f"or a per-tensor recipe) such as task_arithmetic."
        ) from err


def noise_floor(s: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> float:
    """The singular value below which an SVD of a matrix of ``shape`` with largest singular value
    ``s[0]`` cannot tell a direction from rounding error (numpy's ``matrix_rank`` tolerance)."""
    return s[0].item() * max(shape) * torch.finfo(s.dtype).eps if s.numel() else 0.0


def polar(a: torch.Tensor, method: str, name: str) -> torch.Tensor:
    """The orthogonal polar factor ``P Q^T`` of ``a = P D Q^T``: the matrix with orthonormal
    columns (or rows, if ``a`` is wide) nearest to ``a``, which is how TSV and Iso-CTS
    decorrelate the singular vectors they stack. Only the pairs with ``D`` above the noise floor
    are used: for a rank-deficient ``a`` (two experts with the same singular vector) the others
    are arbitrary completions chosen by the SVD routine, and would add arbitrary directions."""
    p, d, qh = svd(a, method, name)
    rank = int((d > noise_floor(d, a.shape)).sum())
    return p[:, :rank] @ qh[:rank]


def summed(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Their sum, in a fresh tensor (one accumulator, not a stacked copy of all of them)."""
    out = tensors[0].clone()
    for t in tensors[1:]:
        out += t
    return out


MatrixRule = Callable[[list[torch.Tensor]], torch.Tensor]


def spectral_merge(group: TensorGroup, method: str, rule: MatrixRule, scale: float) -> torch.Tensor:
    """``base + scale * delta``: ``delta = rule(task vectors)`` for a 2-D weight, else the mean
    task vector. ``rule`` gets the task vectors in the working dtype, each of the base's shape."""
    base = group.base
    if base is None:
        raise ValueError(
            f"{method} needs a base model: it merges task vectors (each model minus the base). "
            f"Set `base_model:` in the recipe."
        )
    if not group.tensors:
        return base
    for i, t in enumerate(group.tensors):
        if t.shape != base.shape:
            raise ValueError(
                f"{method}: input {i} of tensor {group.name!r} has shape {tuple(t.shape)} but the "
                f"base has {tuple(base.shape)}; every model must hold this tensor in the base's shape."
            )
    dtype = work_dtype(base)
    b = base.to(dtype)
    tvs = [t.to(dtype) - b for t in group.tensors]
    if base.dim() == 2 and not is_embedding_or_head(group.name):
        delta = rule(tvs)
    else:
        delta = summed(tvs) / len(tvs)
    return (b + scale * delta).to(base.dtype)
