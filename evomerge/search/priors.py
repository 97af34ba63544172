"""Priors from the sources: the recipes a merge search should score before any other.

Whatever the landscape, a few points are known to be informative before anything is
scored: the equal-weight average of the experts, task arithmetic at weights 1 (every task
vector added whole), and each expert alone. A search that scores them first seeds each
optimiser's model (GP, TPE, the quadratic surrogates) or mean (CMA-ES takes them into its
first update) with where the good region starts, instead of spending its first evaluations
on blind draws; they also show at once how far a search gets beyond the obvious merges.

``source_points(space)`` gives them as points of the space's unit cube, in that order, for
a parameter space or the parameter part of a joint space (layer genes stay at the middle):

- ``average``: every weight ``1/n`` with the averaging method if offered (linear, else task
  arithmetic), densities and similar keep-fractions at their highest (keep everything);
- ``task_arithmetic``: every weight 1 with task arithmetic if offered;
- ``expert:<name>``: that expert's weight 1, the others' at their lowest (0 where the range
  allows).

Values outside a gene's range are clipped to it (a weight range ``[0, 0.8]`` gives 0.8 for
"weight 1"); points that decode to the same genes are given once. Other parameters (lambda,
epsilon, ...) take the middle of their ranges, as ``warm_start`` leaves unnamed genes.

``first_points(space, config, config_path)`` gives a run's first points: these priors where the
run config asks for them (``priors: sources``, or ``auto`` with anchor subsets), then its own
``warm_start`` points.
"""

from __future__ import annotations

import contextlib

import numpy as np

KEEP_ALL = ("density",)  # per-model keep-fractions: a prior keeps every entry
AVERAGING = ("linear", "task_arithmetic")  # methods whose weights 1/n give the plain average
ADDING = ("task_arithmetic",)  # methods whose weights 1 add the task vectors whole
ALONE = ("task_arithmetic", "linear")  # methods that give one expert alone at weight 1, others 0


class NoPriors(ValueError):
    """The space has no per-model weight to set (a layer-only space)."""


def _parameter_space(space):
    from evomerge.search.space.joint import JointSpace
    from evomerge.search.space.parameter import ParameterSpace

    ps = space.parameter if isinstance(space, JointSpace) else space
    if not isinstance(ps, ParameterSpace) or "weight" not in ps.parameters:
        raise NoPriors(
            "priors: sources sets each expert's weight, and this space has no weight gene (a layer "
            "space, or a parameter space that does not search `weight`); remove `priors` or give "
            "the points yourself with warm_start."
        )
    return ps


def _pick(methods: list[str], preferred: tuple[str, ...]) -> str:
    return next((m for m in preferred if m in methods), methods[0])


def source_points(space) -> list[tuple[str, np.ndarray]]:
    """(label, unit-cube point) for the average, task arithmetic at weights 1 and each expert."""
    ps = _parameter_space(space)
    labels = ps._labels()
    by_label = {labels[m]: m for m in ps.models}
    n = len(ps.models)
    wanted: list[tuple[str, str, dict[str, float]]] = [
        ("average", _pick(ps.methods, AVERAGING), {m: 1.0 / n for m in ps.models}),
        ("task_arithmetic", _pick(ps.methods, ADDING), {m: 1.0 for m in ps.models}),
    ]
    wanted += [(f"expert:{labels[e]}", _pick(ps.methods, ALONE), {m: 1.0 if m == e else 0.0 for m in ps.models})
               for e in ps.models]
    genes = space.genes()
    out: list[tuple[str, np.ndarray]] = []
    seen: set[bytes] = set()
    for label, method, weights in wanted:
        x = np.full(len(genes), 0.5)
        for i, g in enumerate(genes[: ps.dimension]):
            if g.choices:  # the method gene(s)
                x[i] = g.encode(method) if method in g.choices else 0.5
                continue
            head = g.name.split("[")[0]
            model_label, _, param = head.rpartition(".")
            model = by_label.get(model_label)
            if param == "weight" and model is not None:
                x[i] = _unit(g, weights[model])
            elif param in KEEP_ALL:
                x[i] = 1.0
        key = np.round(x, 12).tobytes()
        if key not in seen:
            seen.add(key)
            out.append((label, x))
    return out


def _unit(gene, value: float) -> float:
    return (min(max(value, gene.low), gene.high) - gene.low) / (gene.high - gene.low)


def first_points(space, config, config_path) -> list[np.ndarray]:
    """The points a run scores first: the sources' priors (``priors: sources``), then the run
    config's ``warm_start`` points (genes it leaves out at the middle of their range)."""
    from evomerge.config.run import RunConfigError

    points: list[np.ndarray] = []
    if config.priors == "sources":
        try:
            points += [x for _, x in source_points(space)]
        except NoPriors as e:
            raise RunConfigError(f"{config_path}: {e}") from None
    elif config.priors == "auto" and wants_auto_priors(config):
        with contextlib.suppress(NoPriors):  # auto: a space without weights simply has none
            points += [x for _, x in source_points(space)]
    return points + [_warm_point(space, p, i, config_path) for i, p in enumerate(config.warm_start)]


def wants_auto_priors(config) -> bool:
    """``priors: auto`` scores the sources first where anchors are chosen from the first trials:
    each expert alone gets its own skill right, so no skill is left without anchors."""
    mf = config.multi_fidelity
    return mf is not None and mf.subsets == "anchors"


def _warm_point(space, point: dict, index: int, config_path) -> np.ndarray:
    from evomerge.config.run import RunConfigError

    genes = {g.name: g for g in space.genes()}
    unknown = sorted(set(point) - set(genes))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(genes), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RunConfigError(
            f"{config_path}: warm_start[{index}]: unknown gene(s) {unknown}.{hint} "
            f"`evomerge space show` lists this space's genes."
        )
    x = np.full(len(genes), 0.5)
    for i, (name, g) in enumerate(genes.items()):
        if name in point:
            try:
                x[i] = g.encode(point[name])
            except ValueError as e:
                raise RunConfigError(f"{config_path}: warm_start[{index}].{name}: {e}.") from None
    return x
