"""Tune's HyperBand or PBT over the test's run: ``python tune_schedulers_driver.py RUN_CONFIG
STORAGE ADDRESS hyperband|pbt``. Joins the Ray runtime at ADDRESS, runs 4 trials (random
configs from the run's space), and writes STORAGE/grid.json: each trial's directory, final
config and error. A script of its own, as a user runs Tune (see test_tune.py for why)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import HyperBandScheduler, PopulationBasedTraining

from evomerge.integrations.tune import (
    BUDGET,
    FITNESS,
    evomerge_trainable,
    load_tune_run,
    pbt_mutations,
    schedule_options,
    tune_search_space,
)


def main(config: str, storage: str, address: str, kind: str) -> None:
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    run = load_tune_run(config)
    if kind == "hyperband":
        scheduler = HyperBandScheduler(**schedule_options(run))
    else:
        scheduler = PopulationBasedTraining(time_attr=BUDGET, perturbation_interval=1,
                                            hyperparam_mutations=pbt_mutations(run.space))
    tuner = tune.Tuner(
        evomerge_trainable(run),
        param_space=tune_search_space(run.space),
        tune_config=tune.TuneConfig(metric=FITNESS, mode="max", num_samples=4, max_concurrent_trials=2,
                                    reuse_actors=True, scheduler=scheduler),
        run_config=tune.RunConfig(name=kind, storage_path=storage),
    )
    grid = tuner.fit()
    Path(storage, "grid.json").write_text(json.dumps(
        [{"path": r.path, "config": r.config, "error": repr(r.error) if r.error else None} for r in grid]))


if __name__ == "__main__":
    main(*sys.argv[1:5])
