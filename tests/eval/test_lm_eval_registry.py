"""lm-eval tasks by registry name (through include_path): the split guard, and the same scores as
lm-eval's own `simple_evaluate` on the candidate saved to disk (`HFLM(pretrained=DIR)`, the
mergekit-evolve path)."""

from __future__ import annotations

import json

import pytest

from evomerge.eval import load_task
from evomerge.eval.lm_eval_splits import partition, stratified_subset
from evomerge.testing.lm_eval_tasks import (
    data_file,
    read_rows,
    save_chat_lm,
    write_registry_tasks,
    write_rows,
)

GEN = {"task": "evo_gen", "num_fewshot": 2, "apply_chat_template": True, "fewshot_as_multiturn": True,
       "system_instruction": "sum", "batch_size": 8}
MC = {"task": "evo_mc", "num_fewshot": 1, "batch_size": 8}
LM_EVAL_OPTIONS = ("num_fewshot", "apply_chat_template", "fewshot_as_multiturn", "system_instruction")


def _inputs(model, tokenizer, seen: list[str]):
    """A forward hook recording every input the model is given, decoded."""

    def spy(_m, args, kwargs, _out):
        seen.extend(tokenizer.batch_decode(args[0] if args else kwargs["input_ids"]))

    return model.register_forward_hook(spy, with_kwargs=True)


def _lm_eval(world, spec, options, samples=None, seen: list[str] | None = None):
    """lm-eval's own path: the saved model loaded by HFLM, a TaskManager of its own; ``seen``
    collects every input its model is given."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(world["model_dir"]), batch_size=8, device="cpu")
    hook = _inputs(lm.model, lm.tokenizer, seen if seen is not None else [])
    try:
        return lm_eval.simple_evaluate(
            model=lm, tasks=[spec], task_manager=TaskManager(include_path=[str(world["include"])], include_defaults=False),
            samples=samples, bootstrap_iters=0, log_samples=False,
            **{k: options[k] for k in LM_EVAL_OPTIONS if k in options},
        )
    finally:
        hook.remove()


def _with_split(world, task, split):
    """The task's own YAML config with another split scored (a complete config: lm-eval builds a
    dict spec from the dict alone)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return {**load_yaml(world["include"] / f"{task}.yaml"), "test_split": split}


def _ref(world, options):
    return "lm_eval:" + json.dumps({**options, "include_path": [str(world["include"])]})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from evomerge.io.hf import load_causal_lm

    root = tmp_path_factory.mktemp("lm_eval_registry")
    include = write_registry_tasks(root)
    model_dir = save_chat_lm(root / "model")
    # evo_gen's answers become the model's own generations (under the very prompts scored) for
    # 3 documents in 4, so exact match is neither 0 nor 1 and both sides must agree on each one.
    tm = TaskManager(include_path=[str(include)], include_defaults=False)
    for split in ("validation", "test"):
        out = lm_eval.simple_evaluate(
            model=HFLM(pretrained=str(model_dir), batch_size=8, device="cpu"),
            tasks=[_with_split({"include": include}, "evo_gen", split)], task_manager=tm, predict_only=True,
            bootstrap_iters=0, **{k: GEN[k] for k in LM_EVAL_OPTIONS})
        said = {s["doc_id"]: s["filtered_resps"][0] for s in out["samples"]["evo_gen"]}
        path = data_file(include, "evo_gen", split)
        rows = read_rows(path)
        for i, row in enumerate(rows):
            row["answer"] = said[i] if i % 4 else "x"
        write_rows(path, rows)
    model, tokenizer = load_causal_lm(model_dir)
    return {"include": include, "model_dir": model_dir, "model": model, "tokenizer": tokenizer}


def _ours(world, options, split="search", fidelity=None, seen: list[str] | None = None):
    task = load_task(_ref(world, options), split=split)
    hook = _inputs(world["model"], world["tokenizer"], seen if seen is not None else [])
    try:
        res = task.evaluate(world["model"], world["tokenizer"], fidelity)
    finally:
        hook.remove()
    assert res.ok, res.error
    return task, res


@pytest.mark.parametrize("split,lm_eval_split", [("search", "validation"), ("test", "test")])
def test_generate_until_with_few_shot_and_chat_template_scores_as_lm_eval(world, split, lm_eval_split):
    ours_in, theirs_in = [], []
    task, res = _ours(world, GEN, split, seen=ours_in)
    (plan,) = task.split_plans
    assert (plan.search_from, plan.test_from, plan.fewshot_from, plan.partition_seed) == ("validation", "test", "train", None)
    theirs = _lm_eval(world, _with_split(world, "evo_gen", lm_eval_split), GEN, seen=theirs_in)["results"]["evo_gen"]
    assert res.values["exact_match"] == theirs["exact_match,none"] == 0.75
    assert ours_in == theirs_in  # the same prompts (few-shot examples, chat turns), in the same batches
    assert res.n_examples == 24
    # A fidelity level is a nested, seeded subset: lm-eval scores the same documents alike.
    _, part = _ours(world, GEN, split, fidelity=8)
    idx = stratified_subset(24, 8, 0)
    theirs = _lm_eval(world, _with_split(world, "evo_gen", lm_eval_split), GEN, samples={"evo_gen": idx})
    assert part.n_examples == 8 and part.values["exact_match"] == theirs["results"]["evo_gen"]["exact_match,none"]


@pytest.mark.parametrize("metric", ["acc", "acc_norm"])
def test_multiple_choice_on_a_partitioned_split_scores_as_lm_eval(world, metric):
    ours_in, theirs_in = [], []
    task, res = _ours(world, {**MC, "metric": metric}, seen=ours_in)
    (plan,) = task.split_plans
    assert (plan.search_from, plan.test_from, plan.partition_seed, plan.search_fraction) == ("validation", "validation", 0, 0.5)
    search, test = partition(40, 0, 0.5, "evo_mc")
    assert (plan.search_docs, plan.test_docs) == (20, 20) and not set(search) & set(test)
    theirs = _lm_eval(world, "evo_mc", MC, samples={"evo_mc": search}, seen=theirs_in)["results"]["evo_mc"]
    assert abs(res.values[metric] - theirs[f"{metric},none"]) <= 1e-4
    assert ours_in == theirs_in  # the same documents with the same few-shot examples
    _, tested = _ours(world, {**MC, "metric": metric}, "test")
    theirs = _lm_eval(world, "evo_mc", MC, samples={"evo_mc": test})["results"]["evo_mc"]
    assert abs(tested.values[metric] - theirs[f"{metric},none"]) <= 1e-4
    # Fidelity subsets of the search part: stratified by label, nested, and scored alike.
    sub = task.subset("evo_mc", 8)
    assert set(sub) <= set(range(20)) and set(task.subset("evo_mc", 4)) <= set(sub)
    _, part = _ours(world, {**MC, "metric": metric}, fidelity=8)
    theirs = _lm_eval(world, "evo_mc", MC, samples={"evo_mc": [search[i] for i in sub]})["results"]["evo_mc"]
    assert abs(part.values[metric] - theirs[f"{metric},none"]) <= 1e-4


def test_the_search_never_sees_a_test_document(world):
    """Every input the model is given while the search scores (documents and few-shot examples
    alike) is checked against the reported documents' prompts."""
    mc_rows = read_rows(data_file(world["include"], "evo_mc", "validation"))
    _, test = partition(len(mc_rows), 0, 0.5, "evo_mc")
    reported = {mc_rows[i]["prompt"] for i in test}
    reported |= {r["prompt"] for r in read_rows(data_file(world["include"], "evo_gen", "test"))}
    seen: list[str] = []
    _ours(world, {**MC, "num_fewshot": 3}, seen=seen)
    _ours(world, GEN, seen=seen)
    assert seen and not [p for p in reported if any(p in text for text in seen)]
    # ... while `eval` on the test split does score them (the check above can fail).
    seen.clear()
    _ours(world, MC, "test", seen=seen)
    assert any(mc_rows[test[0]]["prompt"] in text for text in seen)


def test_a_tag_is_the_mean_of_its_tasks_and_needs_a_common_metric(world, tmp_path):
    from evomerge.errors import EvomergeError

    with pytest.raises(EvomergeError, match=r"its tasks \(evo_gen, evo_mc\) report no metric in common"):
        load_task(_ref(world, {"task": "evo_tag"}))
    # A tag over two tasks of one kind: the mean of their scores.
    (world["include"] / "evo_mc_b.yaml").write_text(
        (world["include"] / "evo_mc.yaml").read_text().replace("task: evo_mc", "task: evo_mc_b")
        .replace("- evo_tag", "- evo_mc_tag"))
    (world["include"] / "evo_mc.yaml").write_text(
        (world["include"] / "evo_mc.yaml").read_text().replace("- evo_tag", "- evo_mc_tag"))
    from evomerge.eval import lm_eval_index

    lm_eval_index._MANAGERS.clear()  # the index was read before these YAMLs changed
    task, tag = _ours(world, {"task": "evo_mc_tag", "metric": "acc", "batch_size": 8})
    _, one = _ours(world, {**MC, "num_fewshot": 0, "metric": "acc"})
    assert {p.task for p in task.split_plans} == {"evo_mc", "evo_mc_b"}
    assert tag.values["acc"] == pytest.approx(one.values["acc"]) and tag.n_examples == 40


def test_a_group_scores_as_lm_eval_under_its_aggregate_metric(world):
    import yaml

    (world["include"] / "evo_group.yaml").write_text(yaml.safe_dump({
        "group": "evo_group", "task": ["evo_mc"], "metadata": {"version": 1.0},
        "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}]}))
    from evomerge.eval import lm_eval_index

    lm_eval_index._MANAGERS.clear()  # the index was read before this YAML was written
    task, res = _ours(world, {**MC, "task": "evo_group"})
    assert [o.name for o in task.objectives()] == ["acc"]  # the group's aggregate, not a leaf's first
    search, _ = partition(40, 0, 0.5, "evo_mc")
    out = _lm_eval(world, "evo_group", MC, samples={"evo_mc": search})
    theirs = out["results"]
    assert abs(res.values["acc"] - theirs["evo_group"]["acc,none"]) <= 1e-4
    # Its results file (`evomerge eval --output`) has the group's task beside the group, as lm-eval's.
    from evomerge.eval.results_file import results_document

    doc = results_document(str(world["model_dir"]), world["model"], world["tokenizer"], [task], [res],
                           device="cpu", fidelity=None, started=0.0, seconds=1.0)
    assert set(doc["results"]) == set(theirs) == {"evo_group", "evo_mc"}
    assert doc["group_subtasks"] == out["group_subtasks"]
    assert doc["results"]["evo_mc"]["acc,none"] == theirs["evo_mc"]["acc,none"]
    assert doc["results"]["evo_group"]["acc,none"] == res.values["acc"]
    # The same documents scored; "original" counts the split scored: evomerge's search half.
    assert doc["n-samples"]["evo_mc"] == {"original": 20, "effective": 20}
    assert out["n-samples"]["evo_mc"] == {"original": 40, "effective": 20}


@pytest.mark.parametrize("cached", [True, False])
def test_datasets_are_read_from_the_cache_first_when_online(world, monkeypatch, cached):
    """Online, a task's dataset is first loaded with downloads off (a cached one then never asks
    the Hub for a newer revision); only a dataset that is not cached is loaded online."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    real, calls = datasets.load_dataset, []

    def load(*args, **kwargs):
        calls.append((datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE))
        if calls[-1][0] and not cached:
            raise FileNotFoundError("Dataset evo_gen is not cached")
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load)
    load_task(_ref(world, GEN)).validate()
    assert calls == ([(True, True)] if cached else [(True, True), (False, False)])
    assert not datasets.config.HF_HUB_OFFLINE and not constants.HF_HUB_OFFLINE  # restored


def test_what_a_worker_on_another_node_must_see(world, tmp_path):
    """The Ray executor checks every node sees these paths: an inline task's include_path (no
    task file, no folder of its own), a task file's folder besides."""
    inline = load_task(_ref(world, GEN), validate=False)
    assert inline.needed_paths() == [world["include"]]
    (tmp_path / "lme.yaml").write_text(f"type: lm_eval\ntask: evo_gen\ninclude_path: {world['include']}\n")
    from_file = load_task(str(tmp_path / "lme.yaml"), validate=False)
    assert from_file.needed_paths() == [world["include"], tmp_path.resolve()]
