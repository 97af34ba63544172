"""Gaussian-process Bayesian optimisation on BoTorch, with input warping suited to merge genes.

An optional extra (``pip install 'evomerge[botorch]'``: BoTorch and GPyTorch on the pinned torch);
importing evomerge never imports BoTorch, and building this optimiser without it raises
``MissingExtraError`` (a one-paragraph ``EvomergeError``, also an ``ImportError``).

- Model: an exact GP (``SingleTaskGP``: an RBF kernel with one lengthscale per gene and
  BoTorch's dimension-scaled priors, a learned noise level, outcomes standardised). With one
  output (one objective, no constraints) each gene is first warped by its own learned
  Kumaraswamy CDF (BoTorch's ``Warp``; LogNormal(0, 0.5) priors on both concentrations, centred
  on no warping). A merge's landscape is not stationary in its genes: a density matters most
  near 1, a weight near the task-arithmetic point; a warped gene stretches the part of [0, 1]
  where the score moves fastest, which one lengthscale per gene cannot. (BoTorch's tutorials use
  a wider prior, LogNormal(0, 0.87); with a dozen points it warped a gene's optimum into a corner
  the model then could not resolve, tests/search/optimizers/test_botorch_gp.py.) Several outputs
  (objectives, constraints), all scored at the same points, are one batched multi-output GP, a
  kernel per output, unwarped: BoTorch cannot share a learned warping across a batched model's
  outputs, and a model per output (``ModelListGP``) costs a posterior per output at every step
  of the acquisition search (0.71 against 0.62 s a proposal at three objectives, 500 told).
- Acquisition: one objective, ``qLogNoisyExpectedImprovement`` (its baseline, the points that
  may hold the incumbent, is the ``_BASELINE`` best told: each evaluation's joint posterior is
  over them rather than the whole fit); several,
  ``qLogExpectedHypervolumeImprovement`` over the told front (feasible trials), the reference
  point at the told values' nadir less a tenth of their range per objective (a hypervolume needs
  a point that every proposal beats; this one lets the front's extremes count, as in BoTorch's
  tutorials). The noisy variant of the latter decomposes a sampled front per Monte-Carlo
  sample: ~40% more per proposal at three objectives, for noise a merge's fixed evaluation set
  barely has. With three or more objectives nearly every fitted point is on the front, and its
  exact box decomposition is large (140 points of three objectives: 302 boxes), so it is
  approximated to ``_ALPHA`` of the hypervolume (BoTorch's ``NondominatedPartitioning``: 63
  boxes; a proposal's CPU time 3.8 -> 1.4 s at 500 told). Both are Monte-Carlo acquisitions over
  ``mc_samples`` quasi-random base samples seeded per ask.
- Pending points: suggestions asked but not yet told. One objective: they are ``X_pending``,
  and the acquisition values the new point jointly with them (fantasised from the model), so
  asks in a batch spread instead of piling on one optimum. Several: the model is conditioned on
  their posterior mean ("kriging believer", ``_believe``): qLogEHVI's joint form is exponential
  in the batch (a bracket of nine asked at once took minutes a proposal). Failed trials are left
  out of the fit; the latest ``_FAILED_KEPT`` failed points stay pending for good (several
  objectives: believed at the worst told values), so the unchanged model does not propose the
  same point again (a failure is not retried).
- Start-up: the warm-start points, then a Sobol sequence scrambled by the seed, for the first
  ``n_startup_trials`` asks (and while fewer than two trials have scored).
- Constraints (<= 0 met): an output per constraint beside the objectives'; the acquisitions weight
  improvement by the modelled probability of feasibility (BoTorch's ``constraints``).
- Cost: an exact GP's fit is cubic and its acquisition search linear in the points fitted, so
  past ``max_trials`` scored trials the model sees ``gp_window.window``'s choice (the best half
  by Pareto rank, the latest half), as the ``gp`` optimiser does. Hyperparameters start from the
  last fit's; they are refitted at every tell up to ``full_refits`` scored trials, then at every
  ``refit_every``-th, and in between the last fit's model is conditioned on the new data. The
  acquisition is maximised by L-BFGS-B (``acq_maxiter`` iterations) from ``num_restarts`` starts
  chosen among ``raw_samples`` quasi-random points (both "auto" by default: ``_EFFORT``, less
  for several objectives). The first qLogEHVI in an environment has BoTorch compile its fused
  C++ kernel (~20 s once; cached under ~/.cache/torch_extensions; without a compiler BoTorch
  falls back to Python). Torch runs on one thread meanwhile: on these
  small tensors a second thread's hand-offs cost more than they save (a proposal took 9 s with
  two threads on a busy 2-core machine, 1 s with one). Measured by benchmarks/controller_cost.py
  (benchmarks/README.md).

Everything follows from the seed and the order of asks and tells: every draw happens inside
``torch.random.fork_rng`` seeded from (seed, asks so far) (the global RNGs are left as they
were), the design is a seeded Sobol engine, and fits happen at counts of tells, never on a
clock; replaying a ledger's tells retraces the same proposals.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import NamedTuple

import numpy as np

from evomerge.errors import EvomergeError
from evomerge.search.optimizers.base import Optimizer, Suggestion, auto_options, register_optimizer
from evomerge.search.optimizers.gp_window import window

_FAILED_KEPT = 20  # the latest failed points kept pending (not proposed again)
_REF_MARGIN = 0.1  # hypervolume reference point: the nadir less this share of the range
_BASELINE = 20  # one objective: the best told points that may be the incumbent (NEI's baseline)
_ALPHA = 1e-3  # 3+ objectives: the front's boxes approximated to this share of its hypervolume
_WARP_PRIOR = 0.5  # the Kumaraswamy concentrations: LogNormal(0, this), centred on no warping
# The acquisition search's effort ("auto" options), by objectives: each step of a search over
# qLogEHVI costs about twice one over qLogNEI, so several objectives take fewer (item 7 of issue 29:
# <= 0.5 s a proposal at 37 genes and 500 told; benchmarks/README.md, controller_cost.py).
_EFFORT = {"one": {"raw_samples": 128, "acq_maxiter": 15}, "several": {"raw_samples": 64, "acq_maxiter": 10}}


class MissingExtraError(EvomergeError, ImportError):
    """BoTorch is not installed."""


def _import_botorch():
    try:
        import botorch  # noqa: F401
        import gpytorch  # noqa: F401
    except ImportError as e:
        raise MissingExtraError(
            f"optimizer botorch_gp needs BoTorch and GPyTorch, an optional extra of evomerge that is "
            f"not installed here ({e}). Install it with: pip install 'evomerge[botorch]' (it keeps the "
            f"pinned torch), or choose another optimiser (gp is Optuna's GP, in the default install)."
        ) from None


class _Told(NamedTuple):  # what gp_window.window reads
    number: int
    values: tuple[float, ...]


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1)[0])


@register_optimizer("botorch_gp")
class BotorchGP(Optimizer):
    max_objectives = None

    def __init__(
        self,
        dimension: int,
        n_objectives: int = 1,
        seed: int = 0,
        *,
        n_startup_trials: int = 10,
        max_trials: int | None = 150,
        warping: bool = True,
        full_refits: int = 60,
        refit_every: int = 5,
        fit_maxiter: int = 75,
        num_restarts: int = 4,
        raw_samples: int | str = "auto",
        acq_maxiter: int | str = "auto",
        mc_samples: int = 32,
    ) -> None:
        super().__init__(dimension, n_objectives, seed)
        effort = auto_options(_EFFORT, n_objectives, raw_samples=raw_samples, acq_maxiter=acq_maxiter)
        raw_samples, acq_maxiter = effort["raw_samples"], effort["acq_maxiter"]
        counts = {"n_startup_trials": n_startup_trials, "full_refits": full_refits, "refit_every": refit_every,
                  "fit_maxiter": fit_maxiter, "num_restarts": num_restarts, "raw_samples": raw_samples,
                  "acq_maxiter": acq_maxiter, "mc_samples": mc_samples}
        bad = [f"{k} ({v})" for k, v in counts.items()
               if not isinstance(v, int) or isinstance(v, bool) or v < (k != "n_startup_trials")]
        if max_trials is not None and (not isinstance(max_trials, int) or max_trials < 4):
            bad.append(f"max_trials ({max_trials}; None: every scored trial)")
        if bad:
            raise ValueError(f"botorch_gp options must be whole numbers >= 1 (n_startup_trials >= 0, max_trials >= 4; "
                             f"raw_samples and acq_maxiter may be auto): {', '.join(bad)}")
        if raw_samples < num_restarts:
            raise ValueError(f"raw_samples ({raw_samples}) must be at least num_restarts ({num_restarts})")
        _import_botorch()
        import torch
        from torch.quasirandom import SobolEngine

        self.n_startup_trials, self.max_trials, self.warping = n_startup_trials, max_trials, bool(warping)
        self.full_refits, self.refit_every, self.fit_maxiter = full_refits, refit_every, fit_maxiter
        self.num_restarts, self.raw_samples, self.acq_maxiter = num_restarts, raw_samples, acq_maxiter
        self.mc_samples = mc_samples
        self._sobol = SobolEngine(dimension, scramble=True, seed=_seed(seed, 1))
        self._warm: list[np.ndarray] = []
        self._asks = 0
        self._x: list[np.ndarray] = []  # told points that scored, in order
        self._y: list[tuple[float, ...]] = []  # their values (maximised) and constraint values
        self._failed: list[np.ndarray] = []
        self._out: dict[int, np.ndarray] = {}
        self._model = None  # (scored count it was fitted to, model)
        self._rows = None  # (scored count, X, Y): what the model is fitted to
        self._params: dict | None = None  # the last full fit's hyperparameters
        self._fits = 0  # hyperparameter fits so far (for the record)
        self._dtype = torch.double

    def warm_start(self, points: list[np.ndarray]) -> None:
        self._warm.extend(np.clip(np.asarray(p, dtype=float), 0.0, 1.0).copy() for p in points)

    # -- ask / tell ----------------------------------------------------------------------------

    def ask(self) -> Suggestion:
        import torch

        if self._warm:
            x = self._warm.pop(0)
        elif self._asks < self.n_startup_trials or len(self._x) < 2:
            x = self._sobol.draw(1, dtype=self._dtype)[0].numpy()
        else:
            threads = torch.get_num_threads()
            try:
                with torch.random.fork_rng(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.set_num_threads(1)  # see the module's docstring: Cost
                    torch.manual_seed(_seed(self.seed, 2, self._asks))
                    x = self._propose()
            finally:
                torch.set_num_threads(threads)
        self._asks += 1
        sid = self._new_id()
        self._out[sid] = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
        return Suggestion(sid, self._out[sid].copy())

    def tell(self, id: int, values: tuple[float, ...] | None,
             constraints: tuple[float, ...] | None = None) -> None:
        x = self._out.pop(id, None)
        if x is None:
            return
        given = tuple(constraints) if constraints is not None else ()
        if values is None or not all(math.isfinite(float(v)) for v in (*values, *given)):
            self._failed = [*self._failed, x][-_FAILED_KEPT:]
            return
        c = given if self.n_constraints else ()
        if len(c) != self.n_constraints:
            raise ValueError(f"botorch_gp expects {self.n_constraints} constraint values per scored trial, "
                             f"not {len(c)}")
        self._x.append(x)
        self._y.append(tuple(float(v) for v in values) + tuple(-float(v) for v in c))  # constraints: >= 0 met

    # -- the model -----------------------------------------------------------------------------

    def _data(self):
        """The fitted rows: every scored trial, or the window past ``max_trials`` (one choice per tell)."""
        n = len(self._x)
        if self._rows is None or self._rows[0] != n:
            rows = list(range(n))
            if self.max_trials is not None and n > self.max_trials:
                told = [_Told(i, self._y[i][: self.n_objectives]) for i in rows]
                rows = sorted(window(told, self.max_trials))
            self._rows = (n, np.array([self._x[i] for i in rows]), np.array([self._y[i] for i in rows]))
        return self._rows[1], self._rows[2]

    def _fit(self):
        import torch
        from botorch.exceptions.errors import ModelFittingError
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms.input import Warp
        from botorch.models.transforms.outcome import Standardize
        from gpytorch.mlls import ExactMarginalLogLikelihood
        from gpytorch.priors import LogNormalPrior

        n = len(self._x)
        if self._model is not None and self._model[0] == n:
            return self._model[1]
        X, Y = self._data()
        X, Y = torch.as_tensor(X, dtype=self._dtype), torch.as_tensor(Y, dtype=self._dtype)
        refit = self._params is None or n <= self.full_refits or n % self.refit_every == 0
        unit = torch.stack([torch.zeros(self.dimension), torch.ones(self.dimension)]).to(self._dtype)
        warp = None
        if self.warping and Y.shape[1] == 1:
            warp = Warp(self.dimension, indices=list(range(self.dimension)), bounds=unit,
                        concentration1_prior=LogNormalPrior(0.0, _WARP_PRIOR),
                        concentration0_prior=LogNormalPrior(0.0, _WARP_PRIOR))
        # Several outputs: one batched GP (see the module's docstring: Model).
        model = SingleTaskGP(X, Y, input_transform=warp, outcome_transform=Standardize(m=Y.shape[1]))
        if self._params is not None:  # start from (or, between refits, keep) the last fit's
            model.load_state_dict(self._params, strict=False)
        if refit:
            mll = ExactMarginalLogLikelihood(model.likelihood, model)
            with contextlib.suppress(ModelFittingError):  # a failed fit keeps its start: still a GP
                fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": self.fit_maxiter}}, max_attempts=2)
            self._fits += 1
            self._params = {name: p.detach().clone() for name, p in model.named_parameters()}
        model.eval()
        self._model = (n, model)
        return model

    def _believe(self, model, Y: np.ndarray):
        """Several objectives: the model conditioned on what the pending points are believed to score
        (their posterior mean; a failed point, the worst told value of each output), and those
        beliefs as rows beside the told ones (the front counts them), so a proposal looks elsewhere.
        qLogEHVI could take them as ``X_pending`` instead, but it sums over every subset of the joint
        batch: 2^9 terms for a bracket of nine asked before any is told."""
        import torch

        pending, failed = list(self._out.values()), list(self._failed)
        if not pending and not failed:
            return model, Y
        x = torch.as_tensor(np.array(pending + failed), dtype=self._dtype)
        with torch.no_grad():  # a prediction first also builds the caches that conditioning extends
            believed = model.posterior(x).mean[: len(pending)]
        worst = torch.as_tensor(Y.min(axis=0), dtype=self._dtype).expand(len(failed), -1)
        beliefs = torch.cat([believed, worst])
        return model.condition_on_observations(x, beliefs), np.vstack([Y, believed.numpy()])

    def _propose(self) -> np.ndarray:
        import torch
        from botorch.optim import optimize_acqf
        from botorch.sampling import SobolQMCNormalSampler

        model = self._fit()
        X, Y = self._data()
        tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=float), dtype=self._dtype)  # noqa: E731
        sampler = SobolQMCNormalSampler(torch.Size([self.mc_samples]), seed=_seed(self.seed, 3, self._asks))
        m = self.n_objectives
        constraints = [(lambda Z, k=k: -Z[..., k]) for k in range(m, Y.shape[1])] or None  # <= 0: met
        if m == 1:
            from botorch.acquisition import qLogNoisyExpectedImprovement
            from botorch.acquisition.objective import GenericMCObjective

            objective = GenericMCObjective(lambda Z, X=None: Z[..., 0]) if constraints else None
            feasible = np.all(Y[:, 1:] >= 0, axis=1)
            best = np.lexsort((-Y[:, 0], ~feasible))[:_BASELINE]  # the best told, feasible first
            pending = [*self._out.values(), *self._failed]
            X_pending = tensor(pending) if pending else None
            acq = qLogNoisyExpectedImprovement(model, tensor(X[best]), sampler=sampler, objective=objective,
                                               X_pending=X_pending, constraints=constraints, prune_baseline=True)
        else:
            from botorch.acquisition.multi_objective.logei import qLogExpectedHypervolumeImprovement
            from botorch.acquisition.multi_objective.objective import IdentityMCMultiOutputObjective
            from botorch.utils.multi_objective.box_decompositions.non_dominated import (
                FastNondominatedPartitioning,
                NondominatedPartitioning,
            )

            values = Y[:, :m]
            ref = values.min(axis=0) - _REF_MARGIN * np.maximum(values.max(axis=0) - values.min(axis=0), 1e-9)
            model, rows = self._believe(model, Y)
            feasible = rows[np.all(rows[:, m:] >= 0, axis=1), :m]  # the front: feasible told and believed values
            front = {"ref_point": tensor(ref), "Y": tensor(feasible).reshape(-1, m)}
            partitioning = (FastNondominatedPartitioning(**front) if m == 2
                            else NondominatedPartitioning(alpha=_ALPHA, **front))
            objective = IdentityMCMultiOutputObjective(outcomes=list(range(m))) if constraints else None
            acq = qLogExpectedHypervolumeImprovement(model, ref.tolist(), partitioning,
                                                     sampler=sampler, objective=objective, constraints=constraints)
        bounds = tensor([np.zeros(self.dimension), np.ones(self.dimension)])
        x, _ = optimize_acqf(acq, bounds, q=1, num_restarts=self.num_restarts, raw_samples=self.raw_samples,
                             options={"maxiter": self.acq_maxiter, "seed": _seed(self.seed, 4, self._asks)},
                             retry_on_optimization_warning=False)  # a bounded cost: the best start wins
        return x[0].detach().numpy()
