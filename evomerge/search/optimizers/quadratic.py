"""Quadratic-model trust-region search: fit a quadratic to what was told, step to its best point.

The idea is MAP's (Li et al., "Low-compute Model Merging with Amortized Pareto Fronts via
Quadratic Approximation", ICLR 2025): a merge's score varies smoothly with its weights and
densities, so a quadratic in the genes fitted by least squares to the candidates evaluated so far
predicts it well near them, at no cost. Stepping to the model's best point and refitting needs far
fewer evaluations (minutes each) than blind sampling or ranking a population. The model is kept
local, as in derivative-free trust-region methods (Powell's; TuRBO's box):

- Start-up: the warm-start points, then ``n_initial`` points of a Sobol sequence scrambled by the
  seed; by default ``min(d + 2, 10)``: a linear model's terms and one more, at most 10 (in large
  spaces scattered points say little about any neighbourhood; known_optimum, 36 genes: 10 beat 38).
- Model: weighted ridge least squares in ``z = (x - centre) / radius`` on the basis ``1, z_i,
  z_i^2 / 2, z_i z_j`` (full quadratic, ``1 + d + d(d+1)/2`` terms) once the fit has 1.5 times as
  many points as terms, else ``1, z_i, z_i^2 / 2`` (linear + diagonal; sooner, the interactions
  are fitted to noise). At most ``max_fit_points`` points nearest the centre take part, weighted
  by a Gaussian of their distance whose width covers at least as many points as terms, times
  ``exp(-5 s)``, ``s`` the share of them that dominate the point (its rank, for one objective), so
  the model is most accurate near the best points, where the search goes (known_optimum at 150
  evaluations, 10 seeds: 6 genes 0.80 -> 0.82, 36 genes 0.39 -> 0.47). The ridge (``ridge`` times
  the normal equations' diagonal) keeps underdetermined fits tame. One model per objective and
  per constraint, cached until the next tell.
- Proposal: the centre is the incumbent (the best told point; feasible first, the least violation
  among infeasible ones); the model's maximum over the trust box ``centre +- radius`` (cut to the
  cube) is proposed: in closed form per gene for one objective and a diagonal model, else by
  projected gradient ascent from the centre, the per-gene solution and two seeded random starts.
- Several objectives: each proposal draws seeded Dirichlet weights ``w`` and maximises a smoothed
  Chebyshev scalarisation ``min_i w_i (f_i - u_i) / e_i`` of the models' predictions (``e``: the
  told front's extent; ``u``: a utopia point a fifth of it past the front's best, so proposals
  push the front outward), centred on the told point best under that scalarisation: successive
  proposals spread along the front, concave parts included.
- Constraints (<= 0 met): a model per constraint; its predicted violation, squared and weighted to
  dominate the objective's spread, is subtracted from the proposal's objective, and incumbents are
  chosen by Deb's rules (feasible before infeasible, infeasible by summed violation).
- Trust region: a model proposal that beats its incumbent (by 1e-3 of the told values' spread) is a
  success, any other a failure, counted as tells arrive; after ``success_tolerance`` successes in a
  row the radius doubles (up to 0.8), after ``failure_tolerance`` failures it halves (5, not 3: a
  merge's kinks fail proposals where a wider region still improves; known_optimum, 20 seeds: 0.80
  -> 0.85 and 0.43 -> 0.47 at 150); a failed trial halves it at once (no new data: the model would
  propose the same point); below ``min_radius`` it restarts at ``radius``.
- Exploration: every ``explore_every``-th proposal is the next Sobol point: it cannot stall.
- Pending points (local penalisation, as in batch Bayesian optimisation): while suggestions are
  out, a Gaussian bump (height 1 value std, width 0.3 radius) around each is subtracted from the
  model, so the next proposal is the model's best away from them (known_optimum, asks in batches
  of 4, 10 seeds: 6 genes 0.68 -> 0.86, 36 genes 0.29 -> 0.46 at 148; told one by one: 0.89, 0.47).
  Failed trials are left out of the fits. A proposal within 0.1 radius (per gene) of a point out,
  or 1e-3 radius of a told or failed one, is replaced by the model's best of seeded perturbations
  that are not: ``ask`` always answers, with a point distinct from those out.

Everything follows from the seed and the order of asks and tells (one seeded generator, draws made in
``ask``), so replaying a ledger's tells retraces the same proposals.
"""

from __future__ import annotations

import math

import numpy as np

from evomerge.search.optimizers.base import Optimizer, Suggestion, register_optimizer
from evomerge.search.pareto import domination_matrix, pareto_mask

_MAX_RADIUS = 0.8
_PENALTY = 1e4  # constraint penalty per squared normalised violation (objectives: unit spread)
_SOFTMIN = 0.01  # temperature of the smoothed Chebyshev minimum
_UTOPIA = 0.2  # the Chebyshev utopia point lies this share of the front's extent past its best
_RANK = 5.0  # fit weight e^(-_RANK * share of the fitted points that dominate a point)
_BUMP, _BUMP_WIDTH = 1.0, 0.3  # pending points: height (normalised units), RMS width (radii)
_FULL = 1.5  # the full quadratic once the fit has this many times as many points as its terms


def _sobol(dimension: int, m: int, seed: tuple[int, int]) -> np.ndarray:
    from scipy.stats import qmc

    gen = np.random.default_rng(list(seed))
    try:  # scipy >= 1.15 calls the generator rng, older ones seed
        return qmc.Sobol(dimension, scramble=True, rng=gen).random_base2(m)
    except TypeError:
        return qmc.Sobol(dimension, scramble=True, seed=gen).random_base2(m)


class _Model:
    """Quadratics ``a_k + g_k.z + z.H_k.z / 2`` in trust-box coordinates, one per column fitted."""

    def __init__(self, a: np.ndarray, g: np.ndarray, h: np.ndarray, diagonal: bool) -> None:
        self.a, self.g, self.h, self.diagonal = a, g, h, diagonal  # (k,), (k, d), (k, d, d)

    def values(self, z: np.ndarray) -> np.ndarray:
        """(n, k) predictions at the rows of ``z``."""
        return self.a + z @ self.g.T + 0.5 * np.einsum("nd,kde,ne->nk", z, self.h, z)

    def gradients(self, z: np.ndarray) -> np.ndarray:
        """(k, d) gradients at one point ``z``."""
        return self.g + self.h @ z


def _basis(z: np.ndarray, full: bool) -> np.ndarray:
    cols = [np.ones((len(z), 1)), z, 0.5 * z * z]
    if full:
        i, j = np.triu_indices(z.shape[1], k=1)
        cols.append(z[:, i] * z[:, j])
    return np.hstack(cols)


def _fit(z: np.ndarray, targets: np.ndarray, ridge: float, prior: np.ndarray) -> _Model:
    """Weighted ridge least squares of ``targets`` (n, k) on the quadratic basis of ``z`` (n, d),
    rows nearest ``z = 0`` weighted most."""
    n, d = z.shape
    full = n >= _FULL * (1 + d + d * (d + 1) // 2)
    phi = _basis(z, full)
    p = phi.shape[1]
    dist = np.sqrt(np.mean(z * z, axis=1))
    width = max(1.0, float(np.sort(dist)[min(n, p) - 1]))
    w = prior * np.exp(-0.5 * (dist / width) ** 2)
    a = phi.T @ (w[:, None] * phi)
    diag = np.arange(1, p)
    a[diag, diag] += ridge * a[diag, diag] + 1e-12 * np.trace(a) / p
    beta = np.linalg.solve(a, phi.T @ (w[:, None] * targets)).T  # (k, p)
    h = np.zeros((len(beta), d, d))
    h[:, np.arange(d), np.arange(d)] = beta[:, 1 + d: 1 + 2 * d]
    if full:
        i, j = np.triu_indices(d, k=1)
        h[:, i, j] = h[:, j, i] = beta[:, 1 + 2 * d:]
    return _Model(beta[:, 0], beta[:, 1: 1 + d], h, not full)


def _ascend(objective, z: np.ndarray, lo: np.ndarray, hi: np.ndarray, iterations: int = 200):
    """Projected gradient ascent of ``objective`` (``z -> (value, gradient)``) in the box, with
    Barzilai-Borwein steps and Armijo backtracking. Plain numpy: scipy's L-BFGS-B calls a
    threaded BLAS whose start-up dominates such small problems on a busy machine."""
    value, grad = objective(z)
    step = 1.0
    for _ in range(iterations):
        while True:
            new = np.clip(z + step * grad, lo, hi)
            new_value, new_grad = objective(new)
            if new_value >= value + 1e-4 * grad @ (new - z) or step < 1e-12:
                break
            step *= 0.5
        if new_value <= value:
            break
        s, y = new - z, new_grad - grad
        z, value, grad = new, new_value, new_grad
        if np.max(np.abs(s)) < 1e-10:
            break
        sy = float(s @ y)
        step = float(s @ s) / -sy if sy < 0 else 2 * step
    return z, value


@register_optimizer("quadratic")
class Quadratic(Optimizer):
    max_objectives = None

    def __init__(
        self,
        dimension: int,
        n_objectives: int = 1,
        seed: int = 0,
        *,
        n_initial: int | None = None,
        radius: float = 0.2,
        min_radius: float = 2.0**-12,
        success_tolerance: int = 2,
        failure_tolerance: int = 5,
        explore_every: int = 20,
        max_fit_points: int = 300,
        ridge: float = 1e-5,
    ) -> None:
        super().__init__(dimension, n_objectives, seed)
        if not 0 < min_radius < radius <= _MAX_RADIUS:
            raise ValueError(f"need 0 < min_radius < radius <= {_MAX_RADIUS}, not {min_radius} and {radius}")
        if min(success_tolerance, failure_tolerance, max_fit_points) < 1 or explore_every < 0 or ridge <= 0:
            raise ValueError(f"success_tolerance ({success_tolerance}), failure_tolerance ({failure_tolerance}), "
                             f"max_fit_points ({max_fit_points}) must be >= 1, explore_every ({explore_every}) "
                             f">= 0 (0: never), ridge ({ridge}) > 0")
        self.n_initial = min(dimension + 2, 10) if n_initial is None else max(1, int(n_initial))
        self.initial_radius, self.radius, self.min_radius = radius, radius, min_radius
        self.success_tolerance, self.failure_tolerance = success_tolerance, failure_tolerance
        self.explore_every, self.max_fit_points, self.ridge = explore_every, max_fit_points, ridge
        self.restarts = 0
        self._rng = np.random.default_rng([seed, 2])
        self._warm: list[np.ndarray] = []
        self._sobol: list[np.ndarray] = []
        self._sobol_blocks = self._given_initial = self._model_asks = self._successes = self._failures = 0
        self._x: list[np.ndarray] = []  # told points that scored
        self._y: list[np.ndarray] = []  # their values (maximised)
        self._c: list[np.ndarray] = []  # their constraint values (empty arrays when none)
        self._failed: list[np.ndarray] = []
        self._out: dict[int, tuple[np.ndarray, bool, np.ndarray | None]] = {}  # id -> (x, by the model, weights)
        self._cache: tuple[tuple, _Model, np.ndarray, np.ndarray] | None = None

    def warm_start(self, points: list[np.ndarray]) -> None:
        self._warm.extend(np.asarray(p, dtype=float).copy() for p in points)

    # -- ask -----------------------------------------------------------------------------------

    def ask(self) -> Suggestion:
        by_model, weights = False, None
        if self._warm:
            x = self._warm.pop(0)
        elif self._given_initial < self.n_initial or len(self._x) < 2:
            self._given_initial += 1
            x = self._next_sobol()
        else:
            self._model_asks += 1
            if self.explore_every and self._model_asks % self.explore_every == 0:
                x = self._next_sobol()
            else:
                x, weights = self._propose()
                by_model = True
        sid = self._new_id()
        self._out[sid] = (x, by_model, weights)
        return Suggestion(sid, x.copy())

    def _next_sobol(self) -> np.ndarray:
        if not self._sobol:
            m = max(4, math.ceil(math.log2(max(self.n_initial, 2))))
            self._sobol = list(_sobol(self.dimension, m, (self.seed, self._sobol_blocks)))
            self._sobol_blocks += 1
        return self._sobol.pop(0)

    def _propose(self) -> tuple[np.ndarray, np.ndarray | None]:
        weights = self._rng.dirichlet(np.ones(self.n_objectives)) if self.n_objectives > 1 else None
        best = self._incumbent(weights)
        centre, r = self._x[best], self.radius
        model, scale, violation_scale = self._model(best)
        lo, hi = np.maximum(-1.0, -centre / r), np.minimum(1.0, (1.0 - centre) / r)
        pending = (np.array([p for p, _, _ in self._out.values()]).reshape(-1, self.dimension) - centre) / r
        objective = self._objective(model, weights, scale, violation_scale, pending)
        z = self._maximise(objective, model, lo, hi, plain=not len(pending))
        if self._too_close(centre + r * z):
            z = self._perturbed(objective, z, lo, hi, centre)
            if z is None:
                return self._next_sobol(), None
        return np.clip(centre + r * z, 0.0, 1.0), weights

    def _too_close(self, x: np.ndarray) -> bool:
        r = self.radius
        for points, tolerance in ((self._x + self._failed, 1e-3 * r), ([p for p, _, _ in self._out.values()], 0.1 * r)):
            if points and np.min(np.max(np.abs(np.asarray(points) - x), axis=1)) < tolerance:
                return True
        return False

    def _perturbed(self, objective, z: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   centre: np.ndarray) -> np.ndarray | None:
        """The best predicted of seeded perturbations of ``z`` that are not too close to a point
        told or out (a random subset of genes moved by about a third of the radius)."""
        d, n = self.dimension, 64
        mask = self._rng.random((n, d)) < min(1.0, 5.0 / d)
        mask[np.arange(n), self._rng.integers(0, d, n)] = True
        candidates = np.clip(z + mask * self._rng.normal(0.0, 0.3, (n, d)), lo, hi)
        best, best_value = None, -np.inf
        for c in candidates:
            value = objective(c)[0]
            if value > best_value and not self._too_close(centre + self.radius * c):
                best, best_value = c, value
        return best

    # -- the model -----------------------------------------------------------------------------

    def _constraints(self) -> np.ndarray:
        """(n, k) constraint values of the told points (k = 0 unless every one told k values)."""
        k = len(self._c[0]) if self._c else 0
        ok = k and all(len(c) == k for c in self._c)
        return np.asarray(self._c) if ok else np.zeros((len(self._c), 0))

    def _violations(self) -> np.ndarray:
        return np.maximum(self._constraints(), 0.0).sum(axis=1)

    def _frame(self, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The Chebyshev reference of values ``ys``: a utopia point past the front's best values
        and the front's extent per objective (the whole cloud's where the front is flat)."""
        front = ys[pareto_mask(ys)]
        top, extent = front.max(axis=0), np.ptp(front, axis=0)
        extent = np.where(extent > 0, extent, np.ptp(ys, axis=0))
        extent = np.where(extent > 0, extent, 1.0)
        return top + _UTOPIA * extent, extent

    def _scalarised(self, ys: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
        if weights is None:
            return ys[:, 0]
        utopia, extent = self._frame(ys)
        return np.min(weights * (ys - utopia) / extent, axis=1)

    def _incumbent(self, weights: np.ndarray | None) -> int:
        """Index of the best told point under ``weights``: feasible first, then by value; the least
        violation among infeasible ones (ties: the earliest)."""
        s = self._scalarised(np.asarray(self._y), weights)
        return int(np.lexsort((np.arange(len(s)), -s, self._violations()))[0])

    def _model(self, best: int) -> tuple[_Model, np.ndarray, np.ndarray]:
        key = (len(self._x), best, self.radius)
        if self._cache is None or self._cache[0] != key:
            centre, r = self._x[best], self.radius
            z = (np.asarray(self._x) - centre) / r
            near = np.argsort(np.sqrt(np.mean(z * z, axis=1)), kind="stable")[: self.max_fit_points]
            ys, cs = np.asarray(self._y)[near], self._constraints()[near]
            mean, scale = ys.mean(axis=0), ys.std(axis=0)
            scale = np.where(scale > 0, scale, 1.0)
            cscale = np.sqrt(np.mean(cs * cs, axis=0)) if cs.shape[1] else np.zeros(0)
            cscale = np.where(cscale > 0, cscale, 1.0)
            beaten = domination_matrix(ys).sum(axis=0) / max(1, len(ys) - 1)
            model = _fit(z[near], np.hstack([(ys - mean) / scale, cs / cscale]), self.ridge,
                         np.exp(-_RANK * beaten))
            self._cache = (key, model, np.stack([mean, scale]), cscale)
        return self._cache[1], self._cache[2], self._cache[3]

    def _objective(self, model: _Model, weights, scale: np.ndarray, cscale: np.ndarray, pending: np.ndarray):
        """``z -> (value, gradient)`` of the proposal's objective: the (scalarised) predicted
        values less the predicted constraint violation, in normalised units."""
        m = self.n_objectives
        if weights is not None:
            utopia, extent = self._frame(np.asarray(self._y))
            ideal, coef = (utopia - scale[0]) / scale[1], weights * scale[1] / extent

        def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
            q = model.values(z[None])[0]
            grads = model.gradients(z)
            if weights is None:
                value, grad = q[0], grads[0]
            else:
                u = coef * (q[:m] - ideal)
                p = np.exp(-(u - u.min()) / _SOFTMIN)  # softmin: -T log sum exp(-u / T)
                value, grad = u.min() - _SOFTMIN * math.log(p.sum()), (p / p.sum() * coef) @ grads[:m]
            if len(q) > m:
                over = np.maximum(q[m:], 0.0)
                value -= _PENALTY * float(over @ over)
                grad = grad - 2 * _PENALTY * over @ grads[m:]
            if len(pending):  # local penalisation: a bump around each point still out
                diff = z - pending
                bump = _BUMP * np.exp(-0.5 * np.mean(diff * diff, axis=1) / _BUMP_WIDTH**2)
                value -= float(bump.sum())
                grad = grad + bump @ diff / (len(z) * _BUMP_WIDTH**2)
            return float(value), grad

        return objective

    def _maximise(self, objective, model: _Model, lo: np.ndarray, hi: np.ndarray, plain: bool) -> np.ndarray:
        # per gene: g z + h z^2 / 2 on [lo, hi] is largest at an end or at the stationary point
        g, h = model.g[0], np.diagonal(model.h[0])
        inner = np.clip(np.where(h < 0, -g / np.where(h < 0, h, -1.0), lo), lo, hi)
        options = np.stack([lo, hi, inner])
        per_gene = options[np.argmax(g * options + 0.5 * h * options**2, axis=0), np.arange(self.dimension)]
        if plain and self.n_objectives == 1 and model.diagonal and len(model.a) == 1:
            return per_gene
        starts = [np.clip(np.zeros(self.dimension), lo, hi), per_gene,
                  *(lo + (hi - lo) * self._rng.random((2, self.dimension)))]
        best, best_value = per_gene, -np.inf
        for start in starts:
            z, value = _ascend(objective, start, lo, hi)
            if value > best_value:
                best, best_value = z, value
        return best

    # -- tell ----------------------------------------------------------------------------------

    def tell(self, id: int, values: tuple[float, ...] | None,
             constraints: tuple[float, ...] | None = None) -> None:
        out = self._out.pop(id, None)
        if out is None:
            return
        x, by_model, weights = out
        if values is None or not all(math.isfinite(float(v)) for v in values):
            self._failed.append(x)
            if by_model:  # no new data: the model would propose the same point again
                self._shrink()
            return
        y = np.asarray(values, dtype=float)
        c = np.asarray(constraints if constraints is not None else (), dtype=float)
        if by_model:
            self._adapt(self._improves(y, c, weights))
        self._x.append(x)
        self._y.append(y)
        self._c.append(c)

    def _improves(self, y: np.ndarray, c: np.ndarray, weights: np.ndarray | None) -> bool:
        best = self._incumbent(weights)
        violation, best_violation = float(np.maximum(c, 0.0).sum()), float(self._violations()[best])
        if violation > 0 or best_violation > 0:
            return violation < best_violation
        s = self._scalarised(np.vstack([self._y, y[None]]), weights)
        return bool(s[-1] > s[best] + 1e-3 * (s.max() - s.min()))

    def _adapt(self, success: bool) -> None:
        if success:
            self._successes, self._failures = self._successes + 1, 0
            if self._successes >= self.success_tolerance:
                self.radius, self._successes = min(2 * self.radius, _MAX_RADIUS), 0
        else:
            self._successes, self._failures = 0, self._failures + 1
            if self._failures >= self.failure_tolerance:
                self._shrink()

    def _shrink(self) -> None:
        self.radius, self._successes, self._failures = self.radius / 2, 0, 0
        if self.radius < self.min_radius:
            self.radius = self.initial_radius
            self.restarts += 1
