"""docs/own_models.md ("Your own models"), run as a user runs it, so that it cannot rot.

Every ```bash block of the page runs, in order, in one fresh directory, as written, with the
`evomerge` of this checkout on PATH. What stands in for the network:

- the three Hub ids the page's `evomerge init` names are the mini zoo's base and two experts,
  published under those ids in a local Hub cache (`evomerge.testing.hub_cache`), offline;
- the two lm-eval task names it gives are registered by name through `include_path` over local
  JSON data (multiple choice over the zoo's reversal and sorting prompts; the first with
  validation and test splits, the second with validation only, as lm-eval's arc_easy and piqa),
  which lm-eval prefers to its own tasks of those names. That is the one thing added to the
  page's commands: `--include-path DIR` at the end of the `evomerge init` command.

The ```yaml blocks, the files `evomerge init` writes without their comments, must equal what it
wrote (the include path aside), and hold at most 15 lines together.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "own_models.md"
SPLITS = {"train": 8, "validation": 12, "test": 12}  # documents per split (few: 40 trials score them)


def blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", PAGE.read_text(), re.S | re.M)


def init_command() -> list[str]:
    """The page's `evomerge init` command line, as words."""
    found = [b for b in blocks("bash") if b.lstrip().startswith("evomerge init")]
    assert len(found) == 1, "the page has one `evomerge init` block"
    return shlex.split(found[0].replace("\\\n", " "))


def flag(words: list[str], name: str) -> list[str]:
    return [v for i, w in enumerate(words[:-1]) if w == name for v in words[i + 1].split(",")]


def yaml_lines() -> list[str]:
    return [line for b in blocks("yaml") for line in b.splitlines() if line.strip() and not line.startswith("#")]


def test_the_page_shows_at_most_15_lines_of_yaml_and_every_step():
    assert 0 < len(yaml_lines()) <= 15
    words = init_command()
    assert len(flag(words, "--base")) == 1 and len(flag(words, "--models")) == 2 and len(flag(words, "--tasks")) == 2
    commands = [b.split()[1] for b in blocks("bash")]
    assert commands == ["init", "search", "front", "export"]


def _choices(prompt: str, answer: str, i: int) -> tuple[list[str], int]:
    """The answer and two wrong ones (the word as given, the answer rotated), the answer at i % n."""
    word = prompt.split(":", 1)[1].rstrip("=")
    options = [answer]
    for wrong in (word, answer[1:] + answer[:1], answer[::-1] + answer[:1]):
        if wrong not in options and len(options) < 3:
            options.append(wrong)
    label = i % len(options)
    options.insert(label, options.pop(0))
    return options, label


def write_lm_eval_tasks(root: Path, names: list[str]) -> Path:
    """lm-eval task YAMLs named ``names``: multiple choice over the zoo's reversal prompts with
    train, validation and test splits (as lm-eval's arc_easy), then over its sorting prompts with
    train and validation only (as piqa: the search scores a seeded part of validation)."""
    from evomerge.eval.task import evaluators_dir

    tasks = root / "lm_eval_tasks"
    tasks.mkdir()
    for (name, skill), splits in zip(zip(names, ("reversal", "sorting"), strict=True),
                                     (SPLITS, {"train": 8, "validation": 24}), strict=True):
        rows = [json.loads(line) for line in (evaluators_dir() / "data" / skill / "search.jsonl").open()]
        files, start = {}, 0
        for split, n in splits.items():
            path = tasks / f"{name}_{split}.jsonl"
            with path.open("w") as f:
                for i, row in enumerate(rows[start:start + n]):
                    options, label = _choices(row["prompt"], row["answer"], i)
                    f.write(json.dumps({"prompt": row["prompt"], "choices": options, "label": label}) + "\n")
            files[split], start = str(path), start + n
        (tasks / f"{name}.yaml").write_text(yaml.safe_dump({
            "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": files},
            **{f"{split if split != 'train' else 'training'}_split": split for split in splits},
            "output_type": "multiple_choice", "doc_to_text": "{{prompt}}", "doc_to_choice": "choices",
            "doc_to_target": "label", "target_delimiter": "",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        }, sort_keys=False))
    return tasks


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    from evomerge.testing import mini_zoo_config
    from evomerge.testing.hub_cache import put_in_cache
    from evomerge.zoo.build import build_zoo

    root = tmp_path_factory.mktemp("own-models")
    words = init_command()
    # The mini zoo trained longer (~15 s): experts that differ enough for merges to score apart.
    mini = mini_zoo_config()
    faster = {"lr": 3e-3, "batch_size": 16, "warmup": 5}
    config = mini.model_copy(update={
        "base": mini.base.model_copy(update={"steps": 40, **faster}),
        "experts": tuple(e.model_copy(update={"steps": 30, **faster}) for e in mini.experts)})
    zoo = build_zoo(root / "zoo", config, log=lambda s: None)
    cache = root / "hf-cache"
    ids = [*flag(words, "--base"), *flag(words, "--models")]
    commits = {repo: put_in_cache(cache, repo, zoo / name) for repo, name in zip(ids, ("base", "add", "rev"), strict=True)}
    return {"cache": cache, "commits": commits, "tasks": write_lm_eval_tasks(root, flag(words, "--tasks"))}


def _run(block: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    res = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, f"block failed:\n{block}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
    return res


@pytest.mark.slow  # a 40-trial lm-eval search on the mini zoo
def test_the_page_runs_as_written(world, tmp_path):
    env = dict(os.environ, HF_HUB_CACHE=str(world["cache"]), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("HF_HOME", None)
    out = {}
    for block in blocks("bash"):
        step = block.split()[1]
        if step == "init":
            block = block.rstrip() + f" --include-path {shlex.quote(str(world['tasks']))}\n"
        out[step] = _run(block, tmp_path, env)

        if step == "init":  # the page's YAML is what init wrote, less the include path added here
            mine = tmp_path / "runs" / "mine"
            run, space = (yaml.safe_load(b) for b in blocks("yaml"))
            written = yaml.safe_load((mine / "run.yaml").read_text())
            assert all(o.pop("include_path") for o in written["objectives"])
            assert written == run
            assert yaml.safe_load((mine / "space.yaml").read_text()) == space

    trials = int(flag(init_command(), "--trials")[0])
    assert f"{trials} trials in the run, 0 evaluations failed" in " ".join(out["search"].stdout.split())
    tasks = flag(init_command(), "--tasks")
    # As the page says: validation searched, test kept; a one-split task partitioned.
    splits = json.loads((tmp_path / "runs" / "mine" / "output" / "splits.json").read_text())
    two, one = (splits[t]["splits"][0] for t in tasks)
    assert (two["search_from"], two["test_from"]) == ("validation", "test")
    assert (one["search_from"], one["test_from"], one["search_docs"] + one["test_docs"]) == ("validation", "validation", 24)
    front = out["front"].stdout
    assert all(f"{t}/acc (max)" in front for t in tasks), front
    on_front = {int(m) for m in re.findall(r"^│\s*(\d+)\s*│", front, re.M)}
    exported = int(re.search(r"trial (\d+) ->", out["export"].stdout).group(1))
    assert exported in on_front, front  # the best weighted sum is on the front

    model = tmp_path / "runs" / "mine" / "model"
    recipe = yaml.safe_load((model / "evomerge_recipe.yaml").read_text())
    pinned = {f"{repo}@{commit}" for repo, commit in world["commits"].items()}
    assert {recipe["base_model"], *(m["model"] for m in recipe["models"])} <= pinned
    assert (model / "model.safetensors").is_file() and (model / "mergekit_config.yml").is_file()
