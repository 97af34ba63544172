"""A Tune driver the restore test kills: ``python tune_driver.py RUN_CONFIG STORAGE CUE STARTS ADDRESS``.

It joins the Ray runtime at ADDRESS and runs an experiment ("restore") of 8 trials, one at a
time: evomerge's CMA-ES (population 4) as the searcher, ASHA on the fidelity levels. A callback
appends each trial start to STARTS and, once 3 trials have finished, writes CUE (their ids):
the test kills this process on that cue, then restores the experiment itself. The experiment
state is saved at every step (TUNE_GLOBAL_CHECKPOINT_S=0, set by the test), so what finished
before the cue is on disk when the cue is written.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from evomerge.integrations.tune import (
    FITNESS,
    EvomergeSearcher,
    evomerge_trainable,
    load_tune_run,
    schedule_options,
)

TRIALS = 8
CUE_AFTER = 3


class Cue(tune.Callback):
    def __init__(self, cue: str, starts: str) -> None:
        self.cue, self.starts = cue, starts

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        with open(self.starts, "a") as f:
            f.write(trial.trial_id + "\n")

    def on_step_end(self, iteration, trials, **info) -> None:
        # After the step's experiment checkpoint: the finished trials it counts are saved.
        done = [t.trial_id for t in trials if t.status == "TERMINATED"]
        if len(done) >= CUE_AFTER and not os.path.exists(self.cue):
            Path(self.cue + ".tmp").write_text(json.dumps(done))
            os.replace(self.cue + ".tmp", self.cue)


def main(config: str, storage: str, cue: str, starts: str, address: str) -> None:
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    run = load_tune_run(config)
    tuner = tune.Tuner(
        evomerge_trainable(run),
        tune_config=tune.TuneConfig(
            metric=FITNESS, mode="max", num_samples=TRIALS, max_concurrent_trials=1, reuse_actors=True,
            search_alg=EvomergeSearcher(run, optimizer="cmaes", options={"popsize": 4}),
            scheduler=ASHAScheduler(**schedule_options(run)),
        ),
        run_config=tune.RunConfig(name="restore", storage_path=storage, verbose=0,
                                  callbacks=[Cue(cue, starts)]),
    )
    tuner.fit()


if __name__ == "__main__":
    main(*sys.argv[1:])
