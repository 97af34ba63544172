"""Bad inputs to ``evomerge convert mergekit-evolve``: refused with exit 2, one paragraph naming
the config file (or the option), the field and the fix, no traceback, and nothing written to
--out (a new one is not created, an existing one is untouched).

Entries:
1. unknown keys, at the top level, under genome: and in a task (the key, "did you mean", the
   keys allowed there);
2. merge methods: linear (no evomerge space weights every model as mergekit-evolve does) and a
   method mergekit-evolve does not search, each naming the methods that convert;
3. genomes evomerge cannot express exactly: tokenizer_source, smooth across several layer
   groups, normalize other than evomerge's default for the method, negative weights with
   normalize on, slerp over more than two models or with filters;
4. genomes mergekit-evolve refuses or fails on: no base_model for task arithmetic, a
   layer_granularity that does not divide the layers, repeated models or filters, only the base;
   and a layer_granularity whose layer count cannot be read (Hub model, no --num-layers);
5. tasks: negative or zero weights, a repeated task, a metric without a name, no tasks;
   malformed values (a model as a mapping, limit 0, a negative layer_granularity);
6. options: --task-search-path that is no directory, --sigma0 out of range, --max-fevals,
   --batch-size, --device;
7. files: malformed YAML (with its line), a config that is not a mapping, a missing config, an
   --out that holds files (without --force) or is a file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import assert_refused, assert_untouched, invoke, snapshot

GOOD = {
    "genome": {"models": ["org/base", "org/a", "org/b"], "merge_method": "ties", "base_model": "org/base"},
    "tasks": [{"name": "my_task", "weight": 1.0, "metric": "acc,none"}],
}


def _config(tmp_path: Path, genome: dict | None = None, **top) -> Path:
    """GOOD with ``genome`` merged into its genome and ``top`` into its top level."""
    data = {**GOOD, "genome": {**GOOD["genome"], **(genome or {})}, **top}
    path = tmp_path / "evolve.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _convert(config: Path, out: Path, *options):
    return invoke("convert", "mergekit-evolve", config, "--out", out, *options)


def test_the_good_config_converts(tmp_path):
    assert _convert(_config(tmp_path), tmp_path / "out").exit_code == 0


CASES = [
    # 1. unknown keys
    (dict(limits=10), (), ["unknown key 'limits'", "did you mean 'limit'", "genome, tasks, limit, num_fewshot, "
                           "shuffle, random_init, apply_chat_template, fewshot_as_multiturn"]),
    (dict(genome={"layer_granularty": 2}), (), ["genome.layer_granularty", "did you mean 'layer_granularity'",
                                                "under genome:", "allow_negative_weights"]),
    (dict(tasks=[{"name": "t", "metrics": "acc,none"}]), (), ["tasks[0].metrics", "did you mean 'metric'"]),
    # 2. methods
    (dict(genome={"merge_method": "linear"}), (), ["genome.merge_method", "linear cannot be converted",
                                                    "task_arithmetic, ties, dare_ties, slerp"]),
    (dict(genome={"merge_method": "della"}), (), ["genome.merge_method", "not a method mergekit-evolve searches",
                                                   "task_arithmetic, ties, dare_ties, slerp"]),
    # 3. not expressible exactly
    (dict(genome={"tokenizer_source": "union"}), (), ["genome.tokenizer_source", "Remove it"]),
    (dict(genome={"layer_granularity": 2, "smooth": True}), ("--num-layers", 4),
     ["genome.smooth", "2 layer-group values", "set smooth: false"]),
    (dict(genome={"merge_method": "dare_ties"}), (), ["genome.normalize", "unset", "normalize: false"]),
    (dict(genome={"normalize": False}), (), ["genome.normalize", "normalize: true"]),
    (dict(genome={"merge_method": "task_arithmetic", "normalize": True}), (), ["genome.normalize", "normalize: false"]),
    (dict(genome={"allow_negative_weights": True}), (), ["genome.allow_negative_weights",
                                                         "allow_negative_weights: false"]),
    (dict(genome={"merge_method": "slerp", "base_model": None}), (), ["genome.models", "exactly two models",
                                                                       "has 3 model(s)"]),
    (dict(genome={"merge_method": "slerp", "models": ["org/a", "org/b"], "base_model": None, "filters": ["mlp"]}),
     (), ["genome.filters", "remove it"]),
    # 4. mergekit-evolve refuses or fails too
    (dict(genome={"merge_method": "task_arithmetic", "base_model": None}), (), ["genome.base_model",
                                                                                 "add base_model"]),
    (dict(genome={"layer_granularity": 3}), ("--num-layers", 4), ["genome.layer_granularity",
                                                                  "choose a divisor of 4"]),
    (dict(genome={"layer_granularity": 2}), (), ["genome.layer_granularity", "--num-layers N"]),
    (dict(genome={"models": ["org/a", "org/a"]}), (), ["genome.models[1]", "listed twice"]),
    (dict(genome={"models": ["org/base"]}), (), ["genome.models", "only the base model"]),
    (dict(genome={"filters": ["mlp", "mlp"]}), (), ["genome.filters[1]", "list each filter once"]),
    # 5. tasks and malformed values
    (dict(tasks=[{"name": "ppl", "weight": -1.0}]), (), ["tasks[0].weight", "higher_is_better",
                                                         "needs no negative weight"]),
    (dict(tasks=[{"name": "t", "weight": 0}]), (), ["tasks[0].weight", "Leave out a task"]),
    (dict(tasks=["t", {"name": "t", "metric": "acc,none"}]), (), ["tasks[1]", "repeats tasks[0]", "their sum"]),
    (dict(tasks=[{"name": "t", "metric": ",none"}]), (), ["tasks[0].metric", "metric,filter"]),
    (dict(tasks=[]), (), ["tasks", "at least 1"]),
    (dict(genome={"models": [{"model": {"path": "org/a"}}]}), (), ["genome.models[0]", "string form"]),
    (dict(limit=0), (), ["limit", "greater than or equal to 1"]),
    (dict(genome={"layer_granularity": -8}), (), ["genome.layer_granularity", "greater than or equal to 0"]),
    # 6. options
    ({}, ("--task-search-path", "no/such/dir"), ["--task-search-path", "no/such/dir", "fix the path"]),
    ({}, ("--sigma0", 3), ["--sigma0", "outside (0, 1]", "smaller positive --sigma0"]),
    ({}, ("--sigma0", -0.1), ["--sigma0", "smaller positive --sigma0"]),
    ({}, ("--max-fevals", 0), ["--max-fevals", "positive number"]),
    ({}, ("--batch-size", 0), ["--batch-size", "positive batch size"]),
    ({}, ("--device", "gpu"), ["--device", "neither cpu nor cuda"]),
]


@pytest.mark.parametrize("changes, options, names", CASES,
                         ids=[f"{i}-{'-'.join(map(str, n[:1]))}" for i, (_, _, n) in enumerate(CASES)])
def test_refused_by_name_with_the_fix_and_nothing_written(tmp_path, changes, options, names):
    changes = dict(changes)
    config = _config(tmp_path, changes.pop("genome", None), **changes)
    out = tmp_path / "out"
    message = assert_refused(_convert(config, out, *options), *names)
    assert str(config) in message or names[0].startswith("--")
    assert not out.exists()


def test_the_genome_and_tasks_are_required(tmp_path):
    path = tmp_path / "evolve.yml"
    path.write_text(yaml.safe_dump({"tasks": ["t"]}))
    assert_refused(_convert(path, tmp_path / "out"), path, "genome", "Field required")
    assert not (tmp_path / "out").exists()


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "evolve.yml"
    path.write_text("genome:\n  models:\n    - a\n   - b\ntasks: [t]\n")
    assert_refused(_convert(path, tmp_path / "out"), path, "not valid YAML", "line 4")
    assert not (tmp_path / "out").exists()


def test_a_config_that_is_not_a_mapping_or_not_there(tmp_path):
    path = tmp_path / "evolve.yml"
    path.write_text("- genome\n- tasks\n")
    assert_refused(_convert(path, tmp_path / "out"), path, "a mapping with `genome:` and `tasks:`")
    missing = tmp_path / "missing.yml"
    assert_refused(_convert(missing, tmp_path / "out"), missing, "cannot read the mergekit-evolve config")
    assert not (tmp_path / "out").exists()


def test_an_out_that_holds_files_is_kept_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.yaml").write_text("mine: true\n")
    before = snapshot(out)
    assert_refused(_convert(_config(tmp_path), out), out, "already holds files", "run.yaml", "--force")
    assert_untouched(out, before)


def test_an_out_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "out"
    out.write_text("a file")
    assert_refused(_convert(_config(tmp_path), out), out, "is a file", "--out")
    assert out.read_text() == "a file"


def test_a_bad_config_leaves_an_existing_out_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    before = snapshot(out)
    config = _config(tmp_path, {"merge_method": "linear"})
    assert_refused(_convert(config, out, "--force"), config, "linear")
    assert_untouched(out, before)
