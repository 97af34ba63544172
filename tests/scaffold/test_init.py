"""`evomerge init`: the files it writes load as a run config and a space and search as they are;
every bad flag is refused with one paragraph naming it, exit 2, and nothing written."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.config.run import RunConfig
from evomerge.errors import EXIT_BAD_INPUT, EXIT_FAILED
from evomerge.methods import METHODS
from evomerge.scaffold import yaml_writer
from evomerge.scaffold.init import InitError, InitOptions, init, split_values
from evomerge.search.space import load_space
from evomerge.testing import mini_zoo_config
from evomerge.testing.hub_cache import put_in_cache
from evomerge.zoo.build import build_zoo

runner = CliRunner()


def _init(*args) -> object:
    return runner.invoke(app, ["init", *map(str, args)])


def _local(family, out: Path, *extra) -> list:
    return ["--out", out, "--base", family["base"], "--models", f"{family['expert0']},{family['expert1']}",
            "--tasks", "zoo_text", *extra]


def test_written_files_load_as_a_run_config_and_a_space(untied_family, tmp_path):
    out = tmp_path / "mine"
    res = _init(*_local(untied_family, out, "--trials", 7, "--method", "ties", "--method", "dare_ties",
                        "--workers", 2, "--fidelity", 8, "--seed", 3))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["run.yaml", "space.yaml"]
    config = RunConfig.load(out / "run.yaml")
    assert config.space == "space.yaml" and [o.task for o in config.objectives] == ["zoo_text"]
    assert (config.budget.trials, config.executor.workers, config.fidelity, config.seed) == (7, 2, 8, 3)
    assert (config.optimizer.name, config.device, config.dtype) == ("tpe", "cpu", "float32")
    space = load_space(out / "space.yaml")
    assert space.source_models() == [str(untied_family[k].resolve()) for k in ("base", "expert0", "expert1")]
    assert space.methods == ["ties", "dare_ties"] and space.seed == 3
    assert [g.name for g in space.genes()] == ["method", "expert0.density", "expert0.weight",
                                               "expert1.density", "expert1.weight"]
    assert "evomerge search --dry-run" in res.output and str(out / "run.yaml") in res.output


def test_every_field_is_commented(untied_family, tmp_path):
    out = tmp_path / "mine"
    assert _init(*_local(untied_family, out)).exit_code == 0
    for name in ("run.yaml", "space.yaml"):
        lines = (out / name).read_text().splitlines()
        for i, line in enumerate(lines):
            if line and not line[0].isspace() and not line.startswith("#"):  # a top-level field
                assert "#" in line or lines[i - 1].startswith("#"), f"{name}: {line!r} has no comment"


def test_hub_ids_and_lm_eval_tasks(hub_cache, untied_family, tmp_path):
    for repo, key in (("org/base", "base"), ("org/a", "expert0"), ("org/b", "expert1")):
        put_in_cache(hub_cache, repo, untied_family[key])
    tasks_dir = tmp_path / "my_tasks"
    tasks_dir.mkdir()
    (tasks_dir / "mine.yaml").write_text("task: mine\ndataset_path: json\n")
    out = tmp_path / "runs" / "mine"
    res = _init("--out", out, "--base", "org/base", "--models", "org/a", "--model", "org/b@main",
                "--tasks", "arc_easy,lm_eval:mmlu_stem", "--task", "mine", "--include-path", tasks_dir,
                "--num-fewshot", 5, "--apply-chat-template", "--device", "cuda:1")
    assert res.exit_code == 0, res.output
    raw = yaml.safe_load((out / "run.yaml").read_text())
    lm = {"num_fewshot": 5, "include_path": ["../../my_tasks"], "apply_chat_template": True}
    assert raw["objectives"] == [{"task": f"lm_eval:{t}", **lm} for t in ("arc_easy", "mmlu_stem", "mine")]
    assert (raw["device"], raw["dtype"]) == ("cuda:1", "bfloat16")  # auto: bfloat16 on cuda
    assert (out / raw["objectives"][0]["include_path"][0]).resolve() == tasks_dir.resolve()
    space = yaml.safe_load((out / "space.yaml").read_text())
    assert (space["base_model"], space["models"], space["dtype"]) == ("org/base", ["org/a", "org/b@main"], "bfloat16")
    assert load_space(out / "space.yaml").source_models() == ["org/base", "org/a", "org/b@main"]
    RunConfig.load(out / "run.yaml")  # the inline lm-eval objective form


def test_a_task_file_is_written_as_an_absolute_path(untied_family, tmp_path, monkeypatch):
    from evomerge.eval.task import evaluators_dir
    from evomerge.search.objectives import bind_objectives

    mine = tmp_path / "tasks" / "text.yaml"
    mine.parent.mkdir()
    mine.write_text((evaluators_dir() / "tasks" / "zoo_text.yaml").read_text().replace(
        "../data", str(evaluators_dir() / "data")))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "mine"
    assert _init(*_local(untied_family, out)[:-2], "--tasks", "tasks/text.yaml").exit_code == 0
    config = RunConfig.load(out / "run.yaml")
    assert config.objectives[0].task == str(mine)
    monkeypatch.chdir(out)  # the search may start anywhere
    tasks, objectives = bind_objectives(config, out / "run.yaml")
    assert [o.key for o in objectives] == ["text/perplexity"]


def test_layers_per_group_reads_the_depth_from_the_base(untied_family, tmp_path):
    out = tmp_path / "mine"
    assert _init(*_local(untied_family, out, "--layers-per-group", 1)).exit_code == 0
    space = load_space(out / "space.yaml")
    assert len(space.groups()) == space.num_layers > 1 and "expert0.weight[g1]" in {g.name for g in space.genes()}


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_gives_a_loadable_space_or_names_the_flag(untied_family, tmp_path, method):
    out = tmp_path / "mine"
    try:
        init(InitOptions(out=out, base=str(untied_family["base"]), tasks=["zoo_text"], methods=[method],
                         models=[str(untied_family["expert0"]), str(untied_family["expert1"])]))
    except InitError as e:
        assert str(e).startswith(f"--method {method} ") and not out.exists()
        return
    space = load_space(out / "space.yaml")
    assert space.dimension > 0 and space.methods == [method]
    space.decode([0.0] * space.dimension)  # the box's corners are recipes the method accepts
    space.decode([1.0] * space.dimension)


def _bad(family, tmp_path) -> dict[str, tuple[list, str]]:
    """Flags that are refused, with what the message must say."""
    base, e0, e1 = (str(family[k]) for k in ("base", "expert0", "expert1"))
    not_a_model = tmp_path / "empty-dir"
    not_a_model.mkdir()
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    lm_yaml = tmp_path / "lm_tasks" / "arc_local.yaml"
    lm_yaml.parent.mkdir()
    lm_yaml.write_text("task: arc_local\ndataset_path: json\n")
    ok = ["--base", base, "--models", f"{e0},{e1}", "--tasks", "zoo_text"]

    def but(flag, *value):
        i = ok.index(flag)
        return [*ok[:i], *ok[i + 2:], flag, *value] if value else [*ok[:i], *ok[i + 2:]]

    return {
        "missing model": (but("--models", "./no/such/model"), "--models: model './no/such/model' is neither"),
        "not a hub id": (but("--base", "no such dir"), "--base: model 'no such dir' is neither"),
        "no config.json": (but("--models", str(not_a_model)), "no config.json"),
        "bare adapter": (but("--models", str(adapter)), f"`BASE+{adapter}`"),
        "base among models": (but("--models", f"{e0},{base}"), "--models names the base"),
        "model twice": (but("--models", f"{e0},{e0}"), "--models names"),
        "unknown method": ([*ok, "--method", "tie"], "Did you mean: ties"),
        "method unfit": ([*ok, "--method", "slerp"], "--method slerp merges exactly 1 model"),
        "nothing to search": ([*ok, "--method", "karcher"], "--method karcher has no parameter"),
        "missing task file": (but("--tasks", "nope.yaml"), "--tasks nope.yaml: no task file"),
        "not a task name": (but("--tasks", "arc easy!"), "--tasks 'arc easy!' is neither"),
        "bad lm-eval name": (but("--tasks", "lm_eval:arc easy"), "is not an lm-eval task name"),
        "lm-eval yaml as a file": (but("--tasks", str(lm_yaml)), f"--include-path {lm_yaml.parent} --tasks arc_local"),
        "task twice": (but("--tasks", "zoo_text,zoo_text"), "--tasks names zoo_text twice"),
        "include path missing": ([*but("--tasks", "arc_easy"), "--include-path", tmp_path / "nope"], "--include-path"),
        "lm-eval option, no lm-eval task": ([*ok, "--num-fewshot", "3"], "--num-fewshot applies to lm-eval tasks"),
        "no trials": ([*ok, "--trials", "0"], "--trials 0 is below 1"),
        "bad device": ([*ok, "--device", "gpu"], "--device 'gpu'"),
        "bad dtype": ([*ok, "--dtype", "fp8"], "--dtype 'fp8'"),
        "bad optimizer": ([*ok, "--optimizer", "cma"], "--optimizer: Unknown optimizer 'cma'"),
    }


BAD = ["missing model", "not a hub id", "no config.json", "bare adapter", "base among models", "model twice",
       "unknown method", "method unfit", "nothing to search", "missing task file", "not a task name",
       "bad lm-eval name", "lm-eval yaml as a file", "task twice", "include path missing",
       "lm-eval option, no lm-eval task", "no trials", "bad device", "bad dtype", "bad optimizer"]


@pytest.mark.parametrize("case", BAD)
def test_a_bad_flag_exits_2_with_one_paragraph_and_writes_nothing(untied_family, tmp_path, case):
    args, expected = _bad(untied_family, tmp_path)[case]
    out = tmp_path / "out"
    res = _init("--out", out, *args)
    text = " ".join(res.output.split())
    assert res.exit_code == EXIT_BAD_INPUT, res.output
    assert text.startswith("error: ") and expected in text and "Traceback" not in res.output
    assert "\n\n" not in res.output.strip()  # one paragraph
    assert not out.exists()


def test_an_uncached_hub_id_offline_is_refused_with_the_fetch_command(hub_cache, untied_family, tmp_path):
    put_in_cache(hub_cache, "org/base", untied_family["base"])
    res = _init("--out", tmp_path / "out", "--base", "org/base", "--models", "org/missing", "--tasks", "zoo_text")
    text = " ".join(res.output.split())
    assert res.exit_code == EXIT_BAD_INPUT and "--models: Model org/missing" in text and "hf download org/missing" in text
    assert not (tmp_path / "out").exists()


def test_a_non_empty_directory_needs_force_and_a_run_directory_is_never_written(untied_family, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "run.yaml").write_text("old")
    refused = _init(*_local(untied_family, out))
    assert refused.exit_code == EXIT_BAD_INPUT and "--force" in refused.output
    assert (out / "run.yaml").read_text() == "old"
    assert _init(*_local(untied_family, out, "--force")).exit_code == 0
    assert (out / "notes.txt").read_text() == "mine" and RunConfig.load(out / "run.yaml")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "run.yaml", "space.yaml"]  # no temp left

    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    refused = _init(*_local(untied_family, a_file, "--force"))
    assert refused.exit_code == EXIT_BAD_INPUT and "is a file" in refused.output and a_file.read_text() == "mine"

    (out / "ledger.db").write_bytes(b"")
    ran = _init(*_local(untied_family, out, "--force"))
    assert ran.exit_code == EXIT_BAD_INPUT and "holds a search run" in ran.output


def test_an_empty_directory_is_filled(untied_family, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    assert _init(*_local(untied_family, out)).exit_code == 0
    assert (out / "space.yaml").is_file()


@pytest.mark.parametrize("exists", [False, True])
def test_writing_is_all_or_nothing(untied_family, tmp_path, monkeypatch, exists):
    out = tmp_path / "mine"
    if exists:
        out.mkdir()
        (out / "run.yaml").write_text("old")
    real, calls = yaml_writer._write_synced, []

    def full_at_the_second_file(path, text):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, text)

    monkeypatch.setattr(yaml_writer, "_write_synced", full_at_the_second_file)
    res = _init(*_local(untied_family, out, "--force"))
    assert res.exit_code == EXIT_FAILED and "disk filled up" in res.output and len(calls) == 2
    assert sorted(os.listdir(tmp_path)) == (["mine"] if exists else [])
    if exists:  # the old file kept, no temporary file left
        assert sorted(os.listdir(out)) == ["run.yaml"] and (out / "run.yaml").read_text() == "old"


def test_split_values_takes_repeats_and_commas():
    assert split_values(["a,b", " c ", "d,,"]) == ["a", "b", "c", "d"] and split_values(None) == []


@pytest.fixture(scope="module")
def mini_zoo(tmp_path_factory) -> Path:
    return build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)


def test_the_written_files_search_as_they_are(mini_zoo, tmp_path):
    out = tmp_path / "mine"
    made = _init("--out", out, "--base", mini_zoo / "base", "--models", mini_zoo / "add", "--models",
                 mini_zoo / "rev", "--tasks", "zoo_text", "--trials", 3, "--fidelity", 4, "--optimizer", "random")
    assert made.exit_code == 0, made.output
    res = runner.invoke(app, ["search", str(out / "run.yaml"), "--out", str(out / "output")])
    assert res.exit_code == 0, res.output
    assert "3 trials in the run, 0 evaluations failed" in " ".join(res.output.split())
    front = runner.invoke(app, ["front", str(out / "output")])
    assert front.exit_code == 0 and "zoo_text/perplexity" in front.output
