"""Bad inputs to `evomerge search`: each refused before any compute, exit 2, one paragraph
naming the file and field and the fix, no traceback, and no run directory created.

Catalogue entries covered (issue 15, deliverable 3, search side):
1. unknown merge method in a space (did you mean);
2. unknown optimiser (did you mean);
3. unknown task (did you mean), named with the run config and its field;
4. unknown search-space kind (did you mean);
5. unknown gene / parameter name: a space's parameter, a warm_start gene (did you mean);
6. empty ranges (low > high, low == high) and out-of-range bounds (density outside [0, 1]);
7. zero or negative budgets: budget.trials 0, --trials 0 and -5, fidelity 0;
8. malformed YAML in the run config, the space and a task config, with the line;
9. unknown config keys, with did you mean;
11. an empty, unreadable (not UTF-8) or malformed task data file;
12. the test split as fitness: the fix is the run config's `allow_test_split: true`;
13. sources that cannot merge: another architecture, another tensor shape, NaN weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import assert_refused, invoke
from run_helpers import write_run
from safetensors.torch import load_file, save_file


def _search(tmp_path: Path, config: Path):
    out = tmp_path / "out"
    result = invoke("search", config, "--out", out)
    assert not out.exists(), "a refused search created its run directory"
    return result


def _with_space(tmp_path: Path, zoo: Path, **space) -> Path:
    config = write_run(tmp_path, zoo)
    data = yaml.safe_load((tmp_path / "space.yaml").read_text())
    data.update(space)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(data))
    return config


def test_unknown_method_gets_did_you_mean(tmp_path, zoo):
    config = _with_space(tmp_path, zoo, methods=["tiez"])
    assert_refused(_search(tmp_path, config), tmp_path / "space.yaml", "methods", "did you mean 'ties'")


def test_unknown_optimiser_gets_did_you_mean(tmp_path, zoo):
    config = write_run(tmp_path, zoo, optimizer={"name": "cmaez"})
    assert_refused(_search(tmp_path, config), config, "optimizer.name", "Did you mean: cmaes")


def test_unknown_task_names_the_run_config_and_did_you_mean(tmp_path, zoo):
    config = write_run(tmp_path, zoo, objectives=[{"task": "zoo_txt"}])
    assert_refused(_search(tmp_path, config), config, "objectives[0].task", "Did you mean: zoo_text")


def test_unknown_space_kind_gets_did_you_mean(tmp_path, zoo):
    config = _with_space(tmp_path, zoo, kind="layers")
    assert_refused(_search(tmp_path, config), tmp_path / "space.yaml", "kind", "Did you mean: layer")


def test_unknown_parameter_in_a_space_gets_did_you_mean(tmp_path, zoo):
    config = _with_space(tmp_path, zoo, parameters={"weight": {"low": 0, "high": 1},
                                                     "densty": {"low": 0.2, "high": 1}})
    assert_refused(_search(tmp_path, config), tmp_path / "space.yaml", "parameters.densty",
                   "did you mean 'density'")


def test_unknown_warm_start_gene_gets_did_you_mean(tmp_path, zoo):
    config = write_run(tmp_path, zoo, warm_start=[{"add.wieght": 0.3}])
    assert_refused(_search(tmp_path, config), config, "warm_start[0]", "Did you mean 'add.weight'",
                   "evomerge space show")


@pytest.mark.parametrize("low, high, says", [
    (1.0, 0.0, "swap them"),
    (0.5, 0.5, "the range is empty"),
])
def test_empty_ranges_are_refused(tmp_path, zoo, low, high, says):
    config = _with_space(tmp_path, zoo, parameters={"weight": {"low": low, "high": high},
                                                     "density": {"low": 0.3, "high": 1.0}})
    assert_refused(_search(tmp_path, config), tmp_path / "space.yaml", "parameters.weight", says)


def test_density_range_outside_zero_one_is_refused(tmp_path, zoo):
    # It used to run, decoding recipes with density up to 1.3.
    config = _with_space(tmp_path, zoo, parameters={"weight": {"low": 0, "high": 1},
                                                     "density": {"low": 0.5, "high": 1.3}})
    assert_refused(_search(tmp_path, config), tmp_path / "space.yaml", "parameters.density",
                   "[0.5, 1.3]", "within [0, 1]")


@pytest.mark.parametrize("override, field", [
    ({"budget": {"trials": 0}}, "budget.trials"),
    ({"budget": {"trials": -5}}, "budget.trials"),
    ({"fidelity": 0}, "fidelity"),
    ({"fidelity": None, "multi_fidelity": {"levels": [0, 4]}}, "multi_fidelity: levels [0, 4] must be positive"),
])
def test_zero_or_negative_budgets_in_the_config_are_refused(tmp_path, zoo, override, field):
    config = write_run(tmp_path, zoo, **override)
    assert_refused(_search(tmp_path, config), config, field)


@pytest.mark.parametrize("trials", ["0", "-5"])
def test_zero_or_negative_trials_flag_is_refused(tmp_path, zoo, trials):
    # --trials 0 used to fall back to the config's budget, -5 to run nothing and exit 0.
    config = write_run(tmp_path, zoo)
    out = tmp_path / "out"
    result = invoke("search", config, "--out", out, "--trials", trials)
    assert_refused(result, f"--trials {trials}", "at least 1")
    assert not out.exists()


def test_malformed_run_config_yaml_names_the_line(tmp_path, zoo):
    config = write_run(tmp_path, zoo)
    config.write_text("space: space.yaml\nobjectives:\n  - task: zoo_text\n   fidelity: 4\n")
    assert_refused(_search(tmp_path, config), config, "not valid YAML", "line 4")


def test_malformed_space_yaml_names_the_line(tmp_path, zoo):
    config = write_run(tmp_path, zoo)
    (tmp_path / "space.yaml").write_text("base_model: base\nmodels: [add, rev\nmethods: [ties]\n")
    assert_refused(_search(tmp_path, config), tmp_path / "space.yaml", "not valid YAML", "line 3")


def test_malformed_task_yaml_names_the_line(tmp_path, zoo):
    task = tmp_path / "task.yaml"
    task.write_text("type: exact_match\ndata: x/{split}.jsonl\n stop: [\n")
    config = write_run(tmp_path, zoo, objectives=[{"task": str(task)}])
    assert_refused(_search(tmp_path, config), config, "objectives[0].task", task, "line 3")


@pytest.mark.parametrize("override, field, guess", [
    ({"budgett": {"trials": 3}}, "budgett", "did you mean 'budget'"),
    ({"budget": {"trails": 3}}, "budget.trails", "did you mean 'trials'"),
    ({"optimizer": {"nmae": "random"}}, "optimizer.nmae", "did you mean 'name'"),
    ({"zzz": 1}, "zzz", "remove it"),
])
def test_unknown_run_config_keys_get_did_you_mean(tmp_path, zoo, override, field, guess):
    config = write_run(tmp_path, zoo, **override)
    assert_refused(_search(tmp_path, config), config, field, "unknown field", guess)


def test_unknown_space_key_gets_did_you_mean(tmp_path, zoo):
    config = _with_space(tmp_path, zoo, granularity={"layers_per_grup": 1})
    assert_refused(_search(tmp_path, config), tmp_path / "space.yaml", "granularity.layers_per_grup",
                   "did you mean 'layers_per_group'")


def _task_with_data(tmp_path: Path, content: bytes | None) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    if content is not None:
        (data / "search.jsonl").write_bytes(content)
    (data / "test.jsonl").write_text('{"prompt": "add:1+1=", "answer": "2"}\n')
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump({"type": "exact_match", "data": str(data / "{split}.jsonl"),
                                    "max_new_tokens": 3}))
    return task


@pytest.mark.parametrize("content, says", [
    (b"", "no examples"),
    (b"\n\n", "no examples"),
    (b"\xff\xfe\x00garbage\x89\n", "not UTF-8"),
    (b'{"prompt": "add:1+1=", "answer": "2"}\n{"prompt": 3\n', "search.jsonl:2: not valid JSON"),
    (None, "no data for split 'search'"),
])
def test_empty_or_unreadable_task_data_is_refused(tmp_path, zoo, content, says):
    task = _task_with_data(tmp_path, content)
    config = write_run(tmp_path, zoo, objectives=[{"task": str(task)}])
    assert_refused(_search(tmp_path, config), config, "objectives[0].task", "search.jsonl", says)


def test_test_split_as_fitness_names_the_run_config_switch(tmp_path, zoo):
    config = write_run(tmp_path, zoo, split="test")
    message = assert_refused(_search(tmp_path, config), config, "allow_test_split: true")
    assert "--allow-test-split" not in message  # no such flag


# -- 13. sources that cannot merge: refused at search start, before the run directory ------------


def _space_over(tmp_path: Path, zoo: Path, rev: Path) -> Path:
    """A run over the mini zoo with ``rev`` (a changed copy of the zoo's rev) as one source."""
    config = write_run(tmp_path, zoo)
    data = yaml.safe_load((tmp_path / "space.yaml").read_text())
    data["models"] = [str(zoo / "add"), str(rev)]
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(data))
    return config


def _copy_model(zoo: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(zoo / "rev", tmp_path / "rev-copy"))


def test_sources_of_another_architecture_are_refused_at_start(tmp_path, zoo):
    import json

    rev = _copy_model(zoo, tmp_path)
    cfg = json.loads((rev / "config.json").read_text())
    cfg.update(architectures=["MistralForCausalLM"], model_type="mistral")
    (rev / "config.json").write_text(json.dumps(cfg))
    config = _space_over(tmp_path, zoo, rev)
    assert_refused(_search(tmp_path, config), tmp_path / "space.yaml", "different architectures",
                   "MistralForCausalLM", "choose sources")


def test_sources_with_another_tensor_shape_are_refused_at_start(tmp_path, zoo):
    rev = _copy_model(zoo, tmp_path)
    state = load_file(str(rev / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    state[name] = state[name][:-8].clone()
    save_file(state, str(rev / "model.safetensors"), metadata={"format": "pt"})
    config = _space_over(tmp_path, zoo, rev)
    assert_refused(_search(tmp_path, config), tmp_path / "space.yaml", name, str(rev), "cannot be merged")


def test_sources_with_nan_weights_are_refused_at_start(tmp_path, zoo):
    # It used to start, fail every trial and exit 0.
    rev = _copy_model(zoo, tmp_path)
    state = load_file(str(rev / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    state[name][3, 5] = float("nan")
    save_file(state, str(rev / "model.safetensors"), metadata={"format": "pt"})
    config = _space_over(tmp_path, zoo, rev)
    assert_refused(_search(tmp_path, config), tmp_path / "space.yaml", name, str(rev), "1 NaN")


def test_truncated_source_is_refused_at_start(tmp_path, zoo):
    rev = _copy_model(zoo, tmp_path)
    weights = rev / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    config = _space_over(tmp_path, zoo, rev)
    assert_refused(_search(tmp_path, config), tmp_path / "space.yaml", weights)


def _space_with_base(tmp_path: Path, zoo: Path, base: Path) -> Path:
    config = write_run(tmp_path, zoo)
    data = yaml.safe_load((tmp_path / "space.yaml").read_text())
    data["base_model"] = str(base)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(data))
    return config


def test_a_base_without_a_tokenizer_is_refused_at_start(tmp_path, zoo):
    # It used to end in a raw transformers traceback from the first worker.
    base = Path(shutil.copytree(zoo / "base", tmp_path / "base-copy"))
    for f in base.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            f.unlink()
    config = _space_with_base(tmp_path, zoo, base)
    assert_refused(_search(tmp_path, config), str(base), "no tokenizer", "tokenizer_source")


def test_a_base_that_needs_its_own_code_is_refused_without_the_run_config_switch(tmp_path, zoo):
    import json

    base = Path(shutil.copytree(zoo / "base", tmp_path / "base-copy"))
    cfg = json.loads((base / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (base / "config.json").write_text(json.dumps(cfg))
    config = _space_with_base(tmp_path, zoo, base)
    assert_refused(_search(tmp_path, config), str(base), "modeling_evil.EvilForCausalLM",
                   "trust_remote_code: true")
    # The switch reaches every worker's model loader (the check then lets it through).
    from evomerge.config.run import RunConfig
    from evomerge.run import prepare, worker_spec

    data = yaml.safe_load(config.read_text())
    data["trust_remote_code"] = True
    config.write_text(yaml.safe_dump(data))
    run = RunConfig.load(config)
    assert worker_spec(run, prepare(run, config), {"base": base}).trust_remote_code is True
