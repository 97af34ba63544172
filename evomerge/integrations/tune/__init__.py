"""Ray Tune integration: evomerge's merge and scoring as a Tune trainable, its spaces as Tune
search spaces, its optimisers as a Tune ``Searcher``.

::

    run = load_tune_run("runs/quickstart.yaml")
    tuner = tune.Tuner(
        evomerge_trainable(run),
        param_space=tune_search_space(run.space),        # for Tune's searchers (OptunaSearch, ...)
        tune_config=tune.TuneConfig(metric="fitness", mode="max", num_samples=run.trials,
                                    search_alg=OptunaSearch(seed=0),  # or EvomergeSearcher(run)
                                    scheduler=ASHAScheduler(**schedule_options(run))),
    )

One module per idea: ``prepared`` (a run config validated and prepared for Tune), ``space``
(genes as Tune domains, a Tune config back to a recipe), ``trainable`` (merge and score, one
report per fidelity level), ``searcher`` (an evomerge optimiser as a ``Searcher``). This
package imports Ray; nothing in evomerge imports it. docs/tune.md walks through it.
"""

from evomerge.integrations.tune.prepared import TuneRun, load_tune_run
from evomerge.integrations.tune.searcher import EvomergeSearcher
from evomerge.integrations.tune.space import (
    config_of,
    gene_key,
    pbt_mutations,
    portable_recipe,
    recipe_of,
    tune_search_space,
)
from evomerge.integrations.tune.trainable import (
    BUDGET,
    FITNESS,
    TrialFailed,
    evomerge_trainable,
    run_trial,
    schedule_options,
    trial_metrics,
)

__all__ = [
    "BUDGET",
    "FITNESS",
    "EvomergeSearcher",
    "TrialFailed",
    "TuneRun",
    "config_of",
    "evomerge_trainable",
    "gene_key",
    "load_tune_run",
    "pbt_mutations",
    "portable_recipe",
    "recipe_of",
    "run_trial",
    "schedule_options",
    "trial_metrics",
    "tune_search_space",
]
