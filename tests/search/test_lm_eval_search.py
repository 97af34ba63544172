"""A search whose objectives are lm-eval registry tasks (by name, through include_path): one
generate-until with few-shot examples and the candidate's chat template, one multiple choice on a
partitioned split. It is killed (-9) mid-search and resumed; the resumed run follows the
uninterrupted one; the exported best model scores, under lm-eval's own `simple_evaluate`, what the
ledger recorded; and `evomerge eval` reports the documents the search left out, refusing others."""

from __future__ import annotations

import json

import pytest
import yaml
from run_helpers import search_killed_at_gate, write_gate
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.eval.lm_eval_splits import stratified_subset
from evomerge.search.ledgers.sqlite import SQLiteLedger as Ledger
from evomerge.testing.lm_eval_tasks import CHAT_TEMPLATE, write_registry_tasks
from evomerge.testing.models import mini_zoo_config
from evomerge.zoo.build import build_zoo

FIDELITY = 8
pytestmark = pytest.mark.slow  # ~30 s: three search processes, an export, lm-eval from disk


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    zoo = build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)
    (zoo / "base" / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return zoo


def _config(tmp_path, zoo, include, gate):
    space = {"base_model": str(zoo / "base"), "models": [str(zoo / "add"), str(zoo / "rev")],
             "methods": ["task_arithmetic"], "parameters": {"weight": {"low": 0.0, "high": 1.0}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    inc = str(include.relative_to(tmp_path))  # relative to the run config, as users write it
    run = {
        "space": "space.yaml",
        "objectives": [
            {"task": "lm_eval:evo_gen", "include_path": [inc], "num_fewshot": 2, "apply_chat_template": True,
             "fewshot_as_multiturn": True, "batch_size": 8},
            {"task": "lm_eval:evo_mc", "metric": "acc_norm", "include_path": inc, "batch_size": 8},
            gate.objective,
        ],
        "fidelity": FIDELITY, "optimizer": {"name": "cmaes", "options": {"popsize": 4}},
        "budget": {"trials": 6}, "tracking": {"enabled": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    return tmp_path / "run.yaml"


def _trials(run_dir):
    return [(t.recipe_hash, t.scores) for t in Ledger(run_dir / "ledger.db").evaluations("complete")]


def test_lm_eval_objectives_search_resume_and_score_as_lm_eval(tmp_path, zoo):
    include = write_registry_tasks(tmp_path)
    gate = write_gate(tmp_path / "gate", passes=3)
    cfg = _config(tmp_path, zoo, include, gate)
    run_dir = tmp_path / "killed"
    search_killed_at_gate(cfg, run_dir, gate, 3, cwd=tmp_path)
    assert len(_trials(run_dir)) == 3
    res = CliRunner().invoke(app, ["resume", str(run_dir)])
    assert res.exit_code == 0, res.output
    trials = _trials(run_dir)
    res = CliRunner().invoke(app, ["search", str(cfg), "--out", str(tmp_path / "whole")])
    assert res.exit_code == 0, res.output
    assert trials == _trials(tmp_path / "whole") and len(trials) == 6  # scores included
    splits = json.loads((run_dir / "splits.json").read_text())
    assert splits["evo_gen"]["splits"][0]["search_from"] == "validation"
    assert splits["evo_mc"]["splits"][0]["partition_seed"] == 0

    # The exported best model, scored by lm-eval itself from disk, as mergekit-evolve would.
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    out = tmp_path / "best"
    res = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    trial = int(res.stdout.split("trial ")[1].split()[0])
    scores = dict(Ledger(run_dir / "ledger.db").evaluations("complete")[trial].scores)
    gen = {**load_yaml(include / "evo_gen.yaml"), "test_split": "validation"}
    theirs = lm_eval.simple_evaluate(
        model=HFLM(pretrained=str(out), batch_size=8, device="cpu"), tasks=[gen],
        task_manager=TaskManager(include_path=[str(include)], include_defaults=False),
        samples={"evo_gen": stratified_subset(24, FIDELITY, 0)}, num_fewshot=2, apply_chat_template=True,
        fewshot_as_multiturn=True, bootstrap_iters=0, log_samples=False)
    assert scores["evo_gen/exact_match"] == theirs["results"]["evo_gen"]["exact_match,none"]

    # `eval` reports the test documents; the documents the search scored only when told.
    res = CliRunner().invoke(app, ["eval", str(out), "-t", "lm_eval:evo_mc", "--include-path", str(include), "--json"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["eval", str(out), "-t", f"lm_eval:{{\"task\": \"evo_mc\", \"include_path\": [\"{include}\"]}}",
                                   "--split", "search"])
    assert res.exit_code == 2 and "the search scored the documents" in res.output
    res = CliRunner().invoke(app, ["eval", str(out), "-t", f"lm_eval:{{\"task\": \"evo_mc\", \"include_path\": [\"{include}\"], \"partition_seed\": 1}}"])
    assert res.exit_code == 2 and "not the test part" in res.output
