from __future__ import annotations

import pytest
from eval_helpers import write_task

from evomerge.errors import EvomergeError
from evomerge.eval import SplitLeakError, load_task, task_names


def test_the_shipped_tasks_all_load_on_both_splits():
    names = task_names()
    assert {"addition", "reversal", "sorting", "addition_mc", "zoo_text", "cost"} <= set(names)
    for name in names:
        for split in ("search", "test"):
            ev = load_task(name, split=split)
            assert ev.objectives()
            if ev.size() is not None:
                assert ev.size() > 0


def test_test_split_as_fitness_is_refused_without_the_flag():
    with pytest.raises(SplitLeakError, match="allow_test_split: true"):
        load_task("addition", split="test", fitness=True)
    assert load_task("addition", split="test", fitness=True, allow_test_split=True).split == "test"
    assert load_task("addition", split="search", fitness=True).split == "search"


def test_unknown_task_suggests_a_name():
    with pytest.raises(EvomergeError, match="Did you mean: addition"):
        load_task("additon")


def test_invalid_field_names_file_and_field(tmp_path):
    path = write_task(tmp_path, "bad", {"type": "exact_match", "data": "x/{split}.jsonl", "max_new_tokens": 0})
    with pytest.raises(EvomergeError, match=r"bad\.yaml.*max_new_tokens"):
        load_task(str(path))
    path = write_task(tmp_path, "bad2", {"type": "exact_mach", "data": "x"})
    with pytest.raises(EvomergeError, match="Did you mean: exact_match"):
        load_task(str(path))
    path = write_task(tmp_path, "bad3", {"type": "exact_match", "data": "x", "colour": 1})
    with pytest.raises(EvomergeError, match="colour"):
        load_task(str(path))


def test_data_problems_fail_at_load_naming_the_path(lm, tmp_path):
    model, tok = lm
    path = write_task(tmp_path, "nosplit", {"type": "exact_match", "data": "data/x.jsonl"})
    with pytest.raises(EvomergeError, match="{split}"):
        load_task(str(path))
    path = write_task(tmp_path, "missing", {"type": "exact_match", "data": "data/none/{split}.jsonl"})
    with pytest.raises(EvomergeError, match="none/search.jsonl"):
        load_task(str(path))
    (tmp_path / "data" / "broken").mkdir(parents=True)
    (tmp_path / "data" / "broken" / "search.jsonl").write_text('{"prompt": "a="}\n')
    path = write_task(tmp_path, "broken", {"type": "exact_match", "data": "data/broken/{split}.jsonl"})
    with pytest.raises(EvomergeError, match="search.jsonl:1: missing field 'answer'"):
        load_task(str(path))
    # Data that goes missing after loading is a failed result, not a crash.
    res = load_task(str(path), validate=False).evaluate(model, tok)
    assert not res.ok and "search.jsonl:1: missing field 'answer'" in res.error


def test_evaluator_types_are_listed_without_importing_them():
    import subprocess
    import sys

    code = (
        "import sys; from evomerge.eval import EVALUATORS; "
        "print(EVALUATORS.names()); "
        "print(sorted(m for m in sys.modules if m.startswith('evomerge.eval.') or m == 'torch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, loaded = out.splitlines()
    assert names == str(["cost", "exact_match", "lm_eval", "loglikelihood", "perplexity", "python"])
    assert loaded == str(["evomerge.eval.base", "evomerge.eval.task"])


def test_a_task_knows_how_a_worker_process_loads_it_again(tmp_path, monkeypatch):
    # Pool and Ray workers load the run's tasks themselves: by name from their own
    # evaluators/, and a task given as a path by its absolute path (not by its file's stem).
    assert load_task("addition").ref == "addition"
    path = write_task(tmp_path, "mine", {"type": "cost"})
    monkeypatch.chdir(tmp_path)
    ev = load_task("mine.yaml")
    assert ev.name == "mine" and ev.ref == str(path.resolve())
    assert load_task(ev.ref).name == "mine"
