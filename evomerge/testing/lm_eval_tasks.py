"""lm-eval tasks registered by name through ``include_path``, over local JSON data, for tests.

- ``evo_gen``: generate-until (exact match), training / validation / test splits, few-shot
  examples from its training split;
- ``evo_mc``: multiple choice by log-likelihood (acc, acc_norm), a training split and ONE
  evaluation split (validation), which evomerge's split guard partitions.

Both carry the tag ``evo_tag``. The prompts are the zoo's addition prompts, drawn without
repetition, so each split's documents are told apart by their text. ``CHAT_TEMPLATE`` is a chat
template the zoo's character tokenizer can spell.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}a:{% endif %}"
)
SIZES = {"evo_gen": {"train": 8, "validation": 24, "test": 24}, "evo_mc": {"train": 8, "validation": 40}}


def _prompts(n: int, rng: random.Random) -> list[tuple[int, int]]:
    pairs = [(a, b) for a in range(10, 60) for b in range(10, 60)]
    return rng.sample(pairs, n)


def write_registry_tasks(root: Path, *, seed: int = 0) -> Path:
    """Write the two tasks' YAMLs and data under ``root``; returns the include_path directory."""
    rng = random.Random(seed)
    pairs = iter(_prompts(sum(sum(s.values()) for s in SIZES.values()), rng))
    tasks = (root / "lm_eval_tasks").resolve()
    data = (root / "lm_eval_data").resolve()  # the YAMLs name their data files absolutely
    tasks.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, str]] = {}
    for task, splits in SIZES.items():
        files[task] = {}
        for split, n in splits.items():
            rows = []
            for _ in range(n):
                a, b = next(pairs)
                row = {"prompt": f"add:{a}+{b}=", "answer": str(a + b)}
                if task == "evo_mc":
                    choices = [str(a + b), str(a + b + 1), str(a + b - 1)]
                    rng.shuffle(choices)
                    row = {**row, "choices": choices, "label": choices.index(str(a + b))}
                rows.append(row)
            path = data / task / f"{split}.jsonl"
            write_rows(path, rows)
            files[task][split] = str(path)
    common = {"dataset_path": "json", "tag": ["evo_tag"], "doc_to_text": "{{prompt}}", "metadata": {"version": 1.0}}
    gen = {
        "task": "evo_gen", **common,
        "dataset_kwargs": {"data_files": files["evo_gen"]},
        "training_split": "train", "validation_split": "validation", "test_split": "test",
        "fewshot_split": "train", "output_type": "generate_until",
        "doc_to_target": "{{answer}}", "target_delimiter": "",
        "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": 4},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    mc = {
        "task": "evo_mc", **common,
        "dataset_kwargs": {"data_files": files["evo_mc"]},
        "training_split": "train", "validation_split": "validation",
        "output_type": "multiple_choice", "doc_to_choice": "{{choices}}", "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
    }
    for cfg in (gen, mc):
        (tasks / f"{cfg['task']}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tasks


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def data_file(include_dir: Path, task: str, split: str) -> Path:
    return include_dir.parent / "lm_eval_data" / task / f"{split}.jsonl"


def save_chat_lm(out: Path, seed: int = 3) -> Path:
    """A tiny random character-level Llama with ``CHAT_TEMPLATE``, saved as a model directory."""
    from evomerge.testing.models import tiny_char_lm

    model, tokenizer = tiny_char_lm(seed=seed)
    tokenizer.chat_template = CHAT_TEMPLATE
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
