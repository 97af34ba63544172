"""`evomerge search --dry-run`: every check before compute, the plan, an estimate, and nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from run_helpers import write_run
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.dry_run import dry_run
from evomerge.search.executors import worker as worker_module
from evomerge.search.space import load_space
from evomerge.testing import make_family, mini_zoo_config
from evomerge.zoo.build import build_zoo

runner = CliRunner()
MF = {"levels": [2, 4], "eta": 2, "bracket": 4}  # 6 trials: brackets of 4 and 2 -> rung 0: 6, rung 1: 2 + 1


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if a worker (the first thing that loads weights) is built."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was refused")

    monkeypatch.setattr(worker_module.Worker, "__init__", refuse)


def _tree(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in root.rglob("*")}


def _dry(*args):
    return runner.invoke(app, ["search", "--dry-run", *map(str, args)])


def test_the_plan_of_a_tiny_run_and_nothing_written(tmp_path, zoo, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = write_run(tmp_path, zoo, fidelity=None, multi_fidelity=MF, budget={"trials": 6},
                    tracking={"enabled": True})
    genes = len(load_space(tmp_path / "space.yaml").genes())
    before = _tree(tmp_path)
    result = _dry(cfg, "--out", tmp_path / "runs" / "out")
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert f"{genes} genes" in out
    assert "successive halving, 2 brackets" in out
    assert "6 trials -> 9 evaluations" in out
    assert "wall time: about" in out and "an estimate" in out
    assert _tree(tmp_path) == before  # no run directory, ledger, MLflow store or anything else
    assert not (tmp_path / "runs").exists()

    plan = dry_run(cfg, tmp_path / "runs" / "out")
    assert [(r.level, r.per_bracket, r.evaluations) for r in plan.schedule.rungs] == [(2, 4, 6), (4, 2, 3)]
    assert plan.schedule.evaluations == 9 and len(plan.genes) == genes
    assert plan.estimate.seconds > plan.timing.load_seconds > 0
    assert all(s > 0 for s in plan.timing.seconds.values())
    assert _tree(tmp_path) == before


def test_without_out_the_run_directory_is_not_checked(tmp_path, zoo):
    result = _dry(write_run(tmp_path, zoo))
    assert result.exit_code == 0, result.output
    assert "not checked (give --out)" in result.output
    assert runner.invoke(app, ["search", str(tmp_path / "run.yaml")]).exit_code == 2  # a search needs --out


def test_an_unknown_task_is_refused_before_any_model_loads(tmp_path, zoo, no_model_loads):
    result = _dry(write_run(tmp_path, zoo, objectives=[{"task": "zoo_txt"}]), "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "Unknown task 'zoo_txt'" in result.output and "Did you mean: zoo_text" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_a_task_whose_data_is_missing_is_refused_before_any_model_loads(tmp_path, zoo, no_model_loads):
    task = tmp_path / "mytask.yaml"
    task.write_text(yaml.safe_dump({"type": "perplexity", "data": "nowhere/{split}.txt"}))
    result = _dry(write_run(tmp_path, zoo, objectives=[{"task": str(task)}]), "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "nowhere" in result.output and "Traceback" not in result.output


def test_a_missing_source_is_refused_before_any_model_loads(tmp_path, zoo, no_model_loads):
    cfg = write_run(tmp_path, zoo)
    space = yaml.safe_load((tmp_path / "space.yaml").read_text())
    space["models"][1] = str(tmp_path / "no_such_model")
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    result = _dry(cfg, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "no_such_model" in result.output and "space.yaml" in result.output
    assert not (tmp_path / "out").exists()


def _run_with_second_model(tmp_path, zoo, model):
    """The tests' run, with ``model`` in place of the space's second source."""
    cfg = write_run(tmp_path, zoo)
    space = yaml.safe_load((tmp_path / "space.yaml").read_text())
    space["models"][1] = str(model)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    return cfg


def test_sources_that_do_not_fit_together_are_refused_before_any_model_loads(tmp_path, zoo, no_model_loads):
    other = make_family(tmp_path / "other", tied=False, n_experts=0, hidden=48)["base"]  # another shape
    cfg = _run_with_second_model(tmp_path, zoo, other)
    result = _dry(cfg, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_a_source_with_nan_is_refused_before_any_model_loads(tmp_path, zoo, no_model_loads):
    broken = tmp_path / "rev_nan"
    broken.mkdir()
    for f in (zoo / "rev").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(broken / "model.safetensors"))
    name = next(n for n in tensors if "layers.0.mlp.down_proj" in n)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    cfg = _run_with_second_model(tmp_path, zoo, broken)
    result = _dry(cfg, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "rev_nan" in result.output and "NaN" in result.output and "down_proj" in result.output
    assert not (tmp_path / "out").exists()


def test_a_base_without_a_tokenizer_is_refused_before_any_model_loads(tmp_path, zoo, no_model_loads):
    base = tmp_path / "base_untokenized"
    base.mkdir()
    for f in (zoo / "base").iterdir():
        if "token" not in f.name:
            (base / f.name).write_bytes(f.read_bytes())
    cfg = write_run(tmp_path, zoo)
    space = yaml.safe_load((tmp_path / "space.yaml").read_text())
    space["base_model"] = str(base)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    result = _dry(cfg, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "base_untokenized" in result.output and "no tokenizer" in result.output


def test_an_existing_run_or_an_out_under_a_file_is_refused(tmp_path, zoo, no_model_loads):
    cfg = write_run(tmp_path, zoo)
    run = tmp_path / "done"
    run.mkdir()
    (run / "ledger.jsonl").write_text("")
    result = _dry(cfg, "--out", run)
    assert result.exit_code == 2 and "already holds a run" in result.output
    (tmp_path / "afile").write_text("x")
    result = _dry(cfg, "--out", tmp_path / "afile" / "out")
    assert result.exit_code == 2 and "is a file, not a folder" in result.output


def test_an_mlflow_server_that_does_not_answer_is_refused(tmp_path, zoo, no_model_loads):
    cfg = write_run(tmp_path, zoo, tracking={"enabled": True, "uri": "http://127.0.0.1:9"})
    result = _dry(cfg, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "MLflow tracking server" in result.output


def test_a_ray_cluster_that_does_not_answer_is_refused(tmp_path, zoo, no_model_loads):
    cfg = write_run(tmp_path, zoo, executor={"kind": "ray", "workers": 2, "address": "127.0.0.1:9"})
    result = _dry(cfg, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "Ray cluster" in result.output and "127.0.0.1:9" in result.output


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused(tmp_path, zoo, no_model_loads):
    result = _dry(write_run(tmp_path, zoo, device="cuda"), "--out", tmp_path / "out")
    assert result.exit_code == 2 and "CUDA is not available" in result.output


def test_more_worker_threads_than_cores_is_a_note_and_the_estimate_counts_the_cores(tmp_path, zoo):
    cores = len(os.sched_getaffinity(0))
    cfg = write_run(tmp_path, zoo, executor={"workers": 4 * cores, "torch_threads": 1})
    plan = dry_run(cfg)
    assert plan.parallel == cores
    assert any("share cores" in n for n in plan.notes)
    assert plan.schedule.evaluations == 4


def test_the_plan_lists_the_constraints_and_how_the_optimiser_is_told(tmp_path, zoo):
    cfg = write_run(tmp_path, zoo, optimizer={"name": "cmaes"},
                    constraints=["cost/layers <= 2", {"metric": "zoo_text/perplexity", "max": 1e6}])
    result = _dry(cfg)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "constraints: cost/layers <= 2, zoo_text/perplexity <= 1e+06" in out
    assert "told as a penalty" in out and "feasible trials only" in out
