"""The zoo's task data under ``evaluators/data/``: deterministic, with disjoint splits.

``test`` is drawn first, then ``search`` excluding it; training data (drawn on
the fly while the zoo trains) excludes both, so every reported score is on
prompts no model has seen.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from evomerge.io.atomic import atomic_write_text
from evomerge.zoo.skills import SKILLS, Example, draw

SPLIT_SEEDS = {"test": 1000, "search": 2000}
EXAMPLES_PER_SPLIT = 1024
TEXT_LINES_PER_SPLIT = 384
MC_TASK = "addition_mc"
TEXT_TASK = "zoo_text"


def skill_splits(name: str, n: int = EXAMPLES_PER_SPLIT) -> dict[str, list[Example]]:
    seed = sum(map(ord, name))  # a stable per-skill offset (str hash() is salted)
    test = draw(name, random.Random(SPLIT_SEEDS["test"] + seed), n)
    search = draw(name, random.Random(SPLIT_SEEDS["search"] + seed), n, {e.prompt for e in test})
    return {"search": search, "test": test}


def _mc_rows(examples: list[Example], rng: random.Random) -> list[dict]:
    rows = []
    for ex in examples:
        right = int(ex.answer[::-1])  # sums are written backwards, at the skill's fixed width
        width = len(ex.answer)
        wrong: list[int] = []
        for delta in rng.sample([1, -1, 10, -10, 100, -100, 2, -2], 8):
            if len(wrong) == 3:
                break
            if 0 <= right + delta < 10**width and right + delta not in wrong:
                wrong.append(right + delta)
        choices = [f"{v:0{width}d}"[::-1] for v in [right, *wrong]]
        rng.shuffle(choices)
        rows.append({"prompt": ex.prompt, "choices": choices, "answer": choices.index(ex.answer)})
    return rows


def _text_lines(split: str, exclude: set[str]) -> list[str]:
    rng = random.Random(SPLIT_SEEDS[split] + 7)
    names = SKILLS.names()
    out = []
    while len(out) < TEXT_LINES_PER_SPLIT:
        ex = SKILLS.get(rng.choice(names)).sample(rng)
        if ex.prompt not in exclude:
            exclude.add(ex.prompt)
            out.append(ex.text)
    return out


def task_data() -> dict[str, str]:
    """Every data file of the zoo's tasks: relative path -> content."""
    files: dict[str, str] = {}
    used: set[str] = set()
    for skill in (s for s in SKILLS.names() if SKILLS.get(s).hard):
        for split, exs in skill_splits(skill).items():
            used.update(e.prompt for e in exs)
            lines = [json.dumps({"prompt": e.prompt, "answer": e.answer}) for e in exs]
            files[f"data/{skill}/{split}.jsonl"] = "\n".join(lines) + "\n"
    # Multiple choice over the addition splits' prompts (same disjointness).
    for split, exs in skill_splits("addition").items():
        rows = _mc_rows(exs, random.Random(SPLIT_SEEDS[split] + 3))
        files[f"data/{MC_TASK}/{split}.jsonl"] = "\n".join(map(json.dumps, rows)) + "\n"
    for split in ("test", "search"):
        files[f"data/{TEXT_TASK}/{split}.txt"] = "".join(_text_lines(split, used))
    return files


def eval_prompts() -> set[str]:
    """Prompts of every split of every zoo task: never drawn for training."""
    prompts: set[str] = set()
    for rel, text in task_data().items():
        if rel.endswith(".jsonl"):
            prompts.update(json.loads(line)["prompt"] for line in text.splitlines())
        else:
            prompts.update(line[: line.index("=") + 1] for line in text.splitlines())
    return prompts


def write_task_data(root: Path, check: bool = False) -> list[str]:
    """Write (or with ``check``, compare) the data files; returns the paths that differ."""
    changed = []
    for rel, text in task_data().items():
        path = root / rel
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        changed.append(rel)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
    return changed
