"""The task-arithmetic family: one implementation, eight registered variants.

Every variant takes task vectors (model minus base), optionally sparsifies each
one, weights them, optionally keeps only the entries that agree with the
elected sign (TIES' consensus, elected from the *weighted* deltas), sums them,
optionally divides by the sum of the weights that contributed, scales by
``lambda`` and adds the result to the base.

=================  ====================  =========  =========  =======
method             sparsification        consensus  normalize  rescale
=================  ====================  =========  =========  =======
task_arithmetic    none                  no         no         no
ties               magnitude             sum        yes        no
dare_ties          random                sum        no         yes
dare_linear        random                no         no         yes
breadcrumbs        magnitude_outliers    no         no         no
breadcrumbs_ties   magnitude_outliers    sum        no         no
della              della_magprune        sum        yes        yes
della_linear       della_magprune        no         no         yes
=================  ====================  =========  =========  =======
(``normalize`` and ``rescale`` are defaults the recipe may override.)
"""

from __future__ import annotations


import torch

from evomerge.merge import sparsify
from evomerge.merge.registry import BasePolicy, Param, Scope, TensorGroup, merge_method


def merge_task_vectors(
    group: TensorGroup,
    *,
    sparsification: str | None,
    consensus: bool,
    weight: list[float],
    density: list[float],
    normalize: bool,
    rescale: bool,
    lambda_: float = 1.0,
    gamma: list[float] | None = None,
    epsilon: list[float] | None = None,
) -> torch.Tensor:
    base = group.base
    if not group.tensors:
        return base
    deltas = []
    for i, tensor in enumerate(group.tensors):
        delta = tensor.to(base.dtype) - base
        if sparsification == "magnitude":
            delta = sparsify.magnitude(delta, density[i], rescale)
        elif sparsification == "random":
            delta = sparsify.random(delta, density[i], rescale, group.generator)
        elif sparsification == "magnitude_outliers":
            delta = sparsify.magnitude_outliers(delta, density[i], rescale, gamma[i])
        elif sparsification == "della_magprune":
            delta = sparsify.della_magprune(delta, density[i], rescale, epsilon[i], group.generator)
        deltas.append(delta.mul_(weight[i]))

    if consensus:
        positive = _sum(deltas) >= 0  # sign elected from the weighted deltas
        mixed = torch.zeros_like(base)
        divisor = torch.zeros_like(base)
        for d, w in zip(deltas, weight):
            agrees = torch.where(positive, d > 0, d < 0)
            mixed.add_(torch.where(agrees, d, 0.0))
            divisor.add_(agrees.to(base.dtype), alpha=w)
        divisor[divisor == 0] = 1
    else:
        mixed = _sum(deltas)
        total = sum(weight)
        divisor = torch.tensor(1.0 if abs(total) < 1e-8 else total, dtype=base.dtype)
    if normalize:
        mixed.div_(divisor)
    if lambda_ != 1:
        mixed.mul_(lambda_)
    return (base + mixed).to(base.dtype)


def _sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    out = tensors[0].clone()
    for t in tensors[1:]:
        out.add_(t)
    return out


def _register(name: str, sparsification: str | None, consensus: bool, normalize: bool, rescale: bool, ref: str):
    params = [
        Param("weight", float, Scope.PER_MODEL),
        Param("density", float, Scope.PER_MODEL, default=1.0),
        Param("normalize", bool, default=normalize),
        Param("rescale", bool, default=rescale),
        Param("lambda", float, default=1.0),
        Param("int8_mask", bool, default=False),  # accepted for mergekit compatibility; no effect on results
    ]
    if sparsification == "magnitude_outliers":
        params.append(Param("gamma", float, Scope.PER_MODEL, default=0.01))
    if sparsification == "della_magprune":
        params.append(Param("epsilon", float, Scope.PER_MODEL, default=0.15))

    def method(group: TensorGroup, **p) -> torch.Tensor:
        p.pop("int8_mask", None)
        return merge_task_vectors(
            group, sparsification=sparsification, consensus=consensus, lambda_=p.pop("lambda"), **p
        )

    method.__name__ = name
    merge_method(
        name,
        params=tuple(params),
        base=BasePolicy.REQUIRED,
        min_inputs=0,
        randomized=sparsification in ("random", "della_magprune"),
        reference=ref,
    )(method)


for _args in (
    ("task_arithmetic", None, False, False, False, "https://arxiv.org/abs/2212.04089"),
    ("ties", "magnitude", True, True, False, "https://arxiv.org/abs/2306.01708"),
    ("dare_ties", "random", True, False, True, "https://arxiv.org/abs/2311.03099"),
    ("dare_linear", "random", False, False, True, "https://arxiv.org/abs/2311.03099"),
    ("breadcrumbs", "magnitude_outliers", False, False, False, "https://arxiv.org/abs/2312.06795"),
    ("breadcrumbs_ties", "magnitude_outliers", True, False, False, "https://arxiv.org/abs/2312.06795"),
    ("della", "della_magprune", True, True, True, "https://arxiv.org/abs/2406.11617"),
    ("della_linear", "della_magprune", False, False, True, "https://arxiv.org/abs/2406.11617"),
):
    _register(*_args)
del _args
