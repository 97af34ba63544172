from __future__ import annotations

import json

from evomerge.eval.task import evaluators_dir
from evomerge.zoo.data import eval_prompts, task_data, write_task_data
from evomerge.zoo.train import Mixture


def test_committed_task_data_matches_the_generator():
    assert write_task_data(evaluators_dir(), check=True) == []


def test_search_and_test_splits_are_disjoint():
    files = task_data()
    for rel in files:
        if rel.endswith("test.jsonl"):
            test = {json.loads(x)["prompt"] for x in files[rel].splitlines()}
            search = {json.loads(x)["prompt"] for x in files[rel.replace("test", "search")].splitlines()}
            assert test and search and not test & search, rel


def test_training_never_draws_an_evaluation_prompt():
    held_out = eval_prompts()
    draw = Mixture({"addition": 1.0, "recall": 1.0}).sampler(0, held_out)
    # Two-digit addition has 10^4 prompts and 512+ are held out: collisions would be frequent.
    assert not {draw().prompt for _ in range(3000)} & held_out
