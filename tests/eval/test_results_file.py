"""`evomerge eval --output FILE.json` writes lm-eval's results format: for an lm-eval task, the
file `simple_evaluate` returns for it (same keys, same values); for every other task kind, the
same shape, which lm-eval's own table printer reads."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.testing import tiny_char_lm

REPO = Path(__file__).resolve().parents[2]
# Whether higher is better, per metric: the task's objective's direction; nll is reported by the
# perplexity task beside its objective, with no direction declared.
BETTER = {"exact_match": True, "acc": True, "acc_norm": True, "params": False, "layers": False,
          "bytes": False, "perplexity": False, "nll": None, "digit_confidence": True}
runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny model on disk, and evaluators/'s zoo_addition task (its two YAMLs as they are) over
    16 documents whose answers are the model's own greedy answers for 3 in 4 (so exact match is
    0.75, and lm-eval and evomerge must agree document by document)."""
    from evomerge.eval.generate import greedy_generate

    root = tmp_path_factory.mktemp("results_file")
    model, tokenizer = tiny_char_lm(seed=2)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    for yaml_file in ("tasks/addition_lm_eval.yaml", "lm_eval/zoo_addition.yaml"):
        (root / yaml_file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "evaluators" / yaml_file, root / yaml_file)
    prompts = [json.loads(line)["prompt"] for line in
               (REPO / "evaluators/data/addition/test.jsonl").read_text().splitlines()[:16]]
    said = greedy_generate(model, tokenizer, prompts, max_new_tokens=5, stop=["\n"])
    rows = "".join(json.dumps({"prompt": p, "answer": s if i % 4 else s + "!"}) + "\n"
                   for i, (p, s) in enumerate(zip(prompts, said, strict=True)))
    (root / "data/addition").mkdir(parents=True)
    for split in ("search", "test"):
        (root / f"data/addition/{split}.jsonl").write_text(rows)
    return {"model": root / "model", "task": root / "tasks/addition_lm_eval.yaml",
            "lm_eval_yaml": root / "lm_eval/zoo_addition.yaml"}


def _simple_evaluate(world) -> dict:
    """lm-eval's own path: the saved model loaded by HFLM, the task from its YAML."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from evomerge.eval.lm_eval_local import local_task_config

    return lm_eval.simple_evaluate(
        model=HFLM(pretrained=str(world["model"]), batch_size=64, device="cpu"),
        tasks=[local_task_config(world["lm_eval_yaml"], "test")],
        task_manager=TaskManager(include_defaults=False), bootstrap_iters=0, log_samples=False,
    )


def _without_evomerge(configs: dict) -> dict:
    return {name: {**c, "metadata": {k: v for k, v in c["metadata"].items() if k != "evomerge"}}
            for name, c in configs.items()}


def test_an_lm_eval_task_is_written_as_simple_evaluate_returns_it(world, tmp_path):
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker

    out = tmp_path / "results.json"
    res = runner.invoke(app, ["eval", str(world["model"]), "-t", str(world["task"]), "--output", str(out)])
    assert res.exit_code == 0, res.output
    ours = json.loads(out.read_text())
    theirs = json.loads(json.dumps(_simple_evaluate(world), default=str))

    # The keys simple_evaluate returns, and those lm-eval's EvaluationTracker adds to its file.
    tracker = set(asdict(GeneralConfigTracker())) | {"task_hashes"}
    assert set(ours) == set(theirs) | tracker
    assert theirs["results"]["zoo_addition"]["exact_match,none"] == 0.75
    for key in ("results", "group_subtasks", "versions", "n-shot", "higher_is_better", "n-samples"):
        assert ours[key] == theirs[key], key
    assert _without_evomerge(ours["configs"]) == theirs["configs"]
    assert ours["configs"]["zoo_addition"]["metadata"]["evomerge"]["task"] == str(world["task"])
    assert set(ours["config"]) == set(theirs["config"])
    same = {k: v for k, v in theirs["config"].items() if k != "device"}  # lm-eval's: None, given an object
    assert {k: ours["config"][k] for k in same} == same and ours["config"]["device"] == "cpu"
    for key in ("tokenizer_pad_token", "tokenizer_eos_token", "tokenizer_bos_token", "eot_token_id",
                "max_length", "transformers_version", "lm_eval_version"):
        assert ours[key] == theirs[key], key
    assert ours["model_name"] == str(world["model"]) and ours["task_hashes"] == {}


def test_every_task_kind_is_written_and_lm_evals_table_reads_it(world, tmp_path):
    from lm_eval.utils import make_table

    out = tmp_path / "results.json"
    out.write_text(json.dumps({"results": {"old": {}}}))  # an earlier results file: replaced
    tasks = ["addition", "addition_mc", "cost", "zoo_text", "digit_confidence", str(world["task"])]
    res = runner.invoke(app, ["eval", str(world["model"]), *[a for t in tasks for a in ("-t", t)],
                              "--fidelity", "8", "--json", "--output", str(out)])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    doc = json.loads(out.read_text())
    names = ["addition", "addition_mc", "cost", "zoo_text", "digit_confidence", "zoo_addition"]
    assert list(doc["results"]) == names  # the earlier file's "old" is gone
    rows = [[cell.strip() for cell in line.split("|")] for line in make_table(doc).splitlines()]
    for name, r in zip(names, printed, strict=True):
        entry = doc["results"][name]
        assert entry["alias"] == name and entry["sample_len"] == r["n_examples"]
        assert doc["n-samples"][name]["effective"] == r["n_examples"]
        assert doc["configs"][name]["metadata"]["evomerge"]["fidelity"] == 8
        for metric, value in r["values"].items():
            assert entry[f"{metric},none"] == value, (name, metric)
            assert doc["higher_is_better"][name][metric] is BETTER[metric], (name, metric)
            assert any(metric in row and f"{value:.4f}" in row for row in rows), (name, metric)
        assert any(name in row for row in rows), name
    # Where a task reports each example's outcome, the stderr is that of their mean (0/1 outcomes:
    # sqrt(p(1-p)/(n-1))); where it does not, "N/A", as lm-eval writes a stderr it has not computed.
    acc, n = doc["results"]["addition_mc"]["acc,none"], doc["results"]["addition_mc"]["sample_len"]
    assert doc["results"]["addition_mc"]["acc_stderr,none"] == pytest.approx(math.sqrt(acc * (1 - acc) / (n - 1)))
    assert doc["results"]["zoo_text"]["perplexity_stderr,none"] == "N/A"
    assert doc["results"]["cost"]["params_stderr,none"] == "N/A"
    assert doc["results"]["zoo_addition"]["exact_match_stderr,none"] == "N/A"
    assert doc["config"]["limit"] == 8 and doc["configs"]["cost"]["metadata"]["evomerge"]["type"] == "cost"


def test_a_task_that_fails_leaves_no_results_file(world, tmp_path):
    (tmp_path / "boom_fn.py").write_text("def score(model, tokenizer):\n    raise RuntimeError('boom')\n")
    (tmp_path / "boom.yaml").write_text("type: python\nfunction: boom_fn:score\npython_path: .\n"
                                        "objectives: {x: maximize}\n")
    out = tmp_path / "results.json"
    res = runner.invoke(app, ["eval", str(world["model"]), "-t", "cost", "-t", str(tmp_path / "boom.yaml"),
                              "--output", str(out)])
    assert res.exit_code == 1
    assert "boom" in res.output and "not written" in res.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["boom.yaml", "boom_fn.py"]
