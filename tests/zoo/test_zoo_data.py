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


def test_exact_match_tasks_generate_past_the_longest_answer():
    """A model that closes its answer with a pre-training mark ("cba.") must be scored wrong, so
    generation may not stop at the answer's length: one more character (one token) is needed."""
    import yaml

    from evomerge.zoo.skills import SKILLS

    tasks = evaluators_dir() / "tasks"
    for name in (s for s in SKILLS.names() if SKILLS.get(s).hard):
        cfg = yaml.safe_load((tasks / f"{name}.yaml").read_text())
        longest = max(
            len(json.loads(line)["answer"])
            for split in ("search", "test")
            for line in (evaluators_dir() / "data" / name / f"{split}.jsonl").read_text().splitlines()
        )
        assert cfg["max_new_tokens"] > longest, (name, cfg["max_new_tokens"], longest)
