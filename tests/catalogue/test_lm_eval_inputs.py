"""Bad inputs naming lm-eval tasks (issue 28's catalogue entries), through the real command line:
exit 2, one paragraph naming the task, the field and the fix, nothing written.

28a. a task name typo (close names from lm-eval's index), in a run config and in `evomerge eval`;
28b. a task whose dataset is not cached, offline (an include_path task, and lm-eval's own arc_easy);
28c. a metric the task does not produce;
28d. task options on an objective that is not an inline lm-eval task;
28e. a chat template asked for while the base (whose tokenizer every candidate keeps) has none;
28f. a task over local files that are not there (not reported as an uncached Hub dataset).
"""

from __future__ import annotations

import pytest
import yaml
from conftest import assert_refused, invoke

from evomerge.testing import tiny_char_lm
from evomerge.testing.lm_eval_tasks import write_registry_tasks


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_inputs")
    include = write_registry_tasks(root)
    (include / "evo_gone.yaml").write_text(yaml.safe_dump({
        "task": "evo_gone", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(root / "gone.jsonl")}},
        "output_type": "generate_until", "test_split": "test", "doc_to_text": "{{q}}", "doc_to_target": "{{a}}"}))
    (include / "evo_far.yaml").write_text(yaml.safe_dump({
        "task": "evo_far", "dataset_path": "evomerge-test/not-cached", "output_type": "generate_until",
        "test_split": "test", "doc_to_text": "{{q}}", "doc_to_target": "{{a}}"}))
    dirs = [root / name for name in ("base", "a", "b")]
    for seed, d in enumerate(dirs):
        model, tokenizer = tiny_char_lm(seed=seed, layers=1)
        model.save_pretrained(str(d))
        tokenizer.save_pretrained(str(d))
    zoo = dirs[0]
    space = {"base_model": str(zoo), "models": [str(d) for d in dirs[1:]], "methods": ["linear"],
             "parameters": {"weight": {"low": 0.0, "high": 1.0}}}
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    return root, include, zoo


def _search(root, tmp_path, objective):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"space": str(root / "space.yaml"), "objectives": [objective],
                                      "budget": {"trials": 2}, "tracking": {"enabled": False}}))
    out = tmp_path / "out"
    result = invoke("search", config, "--out", out)
    assert not out.exists(), result.output  # refused before anything was written
    return result, config


def test_28a_a_task_name_typo_names_close_ones(world, tmp_path):
    root, include, _ = world
    result, config = _search(root, tmp_path, {"task": "lm_eval:evo_gn", "include_path": str(include)})
    assert_refused(result, str(config), "objectives[0]", "'evo_gn' is not a task, group or tag",
                   "Did you mean: evo_gen", "include_path")


def test_28a_a_typo_of_lm_evals_own_task_in_eval(world):
    _, _, model = world
    result = invoke("eval", model, "-t", "lm_eval:arc_eazy")
    assert_refused(result, "'arc_eazy' is not a task, group or tag", "Did you mean: arc_easy")


def test_28b_a_dataset_not_cached_offline_is_named_with_its_fetch_command(world, tmp_path):
    root, include, _ = world
    result, config = _search(root, tmp_path, {"task": "lm_eval:evo_far", "include_path": str(include)})
    assert_refused(result, str(config), "dataset evomerge-test/not-cached cannot be loaded",
                   "downloads are off", "datasets.load_dataset('evomerge-test/not-cached')")


def test_28b_lm_evals_own_task_without_its_dataset(world):
    _, _, model = world
    result = invoke("eval", model, "-t", "lm_eval:arc_easy")
    assert_refused(result, "allenai/ai2_arc (ARC-Easy) cannot be loaded", "not in the datasets cache",
                   "datasets.load_dataset('allenai/ai2_arc', 'ARC-Easy')")


def test_28c_a_metric_the_task_does_not_report(world, tmp_path):
    root, include, _ = world
    result, config = _search(root, tmp_path, {"task": "lm_eval:evo_mc", "metric": "f1", "include_path": str(include)})
    assert_refused(result, str(config), "metric 'f1' is not one the task reports", "acc, acc_norm")


def test_28d_task_options_on_a_task_file_objective(world, tmp_path):
    root, _, _ = world
    result, config = _search(root, tmp_path, {"task": "addition", "num_fewshot": 5})
    assert_refused(result, str(config), "num_fewshot", "only an inline lm-eval objective")


def test_28e_a_chat_template_the_base_lacks(world, tmp_path):
    root, include, base = world
    result, _ = _search(root, tmp_path, {"task": "lm_eval:evo_gen", "apply_chat_template": True,
                                        "include_path": str(include)})
    assert_refused(result, "apply_chat_template is set", str(base), "has no chat template",
                   "chat_template.jinja", "apply_chat_template: false")


def test_28f_local_data_files_that_are_not_there(world, tmp_path):
    root, include, _ = world
    result, config = _search(root, tmp_path, {"task": "lm_eval:evo_gone", "include_path": str(include)})
    message = assert_refused(result, str(config), "json data files cannot be read", str(root / "gone.jsonl"),
                             "dataset_kwargs.data_files")
    assert "cache" not in message
