"""Which documents a run's lm-eval tasks were scored on, recorded so nothing later reports on them.

``splits.json`` in the run directory lists, per task, how its documents were divided (the split
guard's ``SplitPlan``: the splits, the partition's seed and fraction, a digest of the search
documents). A resumed run must divide them alike (else its trials were scored on other
documents); an exported model carries the record, and ``evomerge eval`` refuses to report on
documents the search saw unless told.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evomerge.errors import EvomergeError

RECORD = "splits.json"
EXPORTED = "evomerge_splits.json"


def task_records(tasks) -> dict[str, dict[str, Any]]:
    return {t.name: t.record() for t in tasks if hasattr(t, "record")}


def write_record(run_dir: Path, tasks) -> None:
    from evomerge.io.atomic import atomic_write_text

    records = task_records(tasks)
    if records:
        atomic_write_text(Path(run_dir) / RECORD, json.dumps(records, indent=2, sort_keys=True) + "\n")


def read_record(folder: Path, name: str = RECORD) -> dict[str, dict[str, Any]]:
    path = Path(folder) / name
    return json.loads(path.read_text()) if path.is_file() else {}


def check_resumed(run_dir: Path, tasks) -> None:
    """A resumed run's tasks divide their documents as when the run started."""
    before = read_record(run_dir)
    for name, now in task_records(tasks).items():
        if name in before and before[name] != now:
            raise EvomergeError(
                f"{run_dir}: task {name}'s documents are divided differently from when the run started "
                f"({RECORD} records {before[name]['splits']}; now {now['splits']}): its dataset or the "
                f"task's split options changed, so new trials would be scored on other documents. "
                f"Restore them, or start a new run."
            )


def seen_documents(recorded: dict[str, dict[str, Any]], tasks) -> list[str]:
    """For each task ``evomerge eval`` is about to report, whether the documents it reports were
    scored by the search that ``recorded`` describes; returns one line per overlap."""
    lines = []
    for task in tasks:
        if not hasattr(task, "record") or task.name not in recorded:
            continue
        rec, now = recorded[task.name], task.record()
        searched = {p["task"]: p for p in rec["splits"]}
        for plan in now["splits"]:
            old = searched.get(plan["task"])
            if old is None:
                continue
            if rec["split"] == "test":
                lines.append(f"{plan['task']}: the search itself scored the test documents (split: test)")
            elif plan["test_from"] == old["search_from"] and (
                now["split"] == "search" or any(old[k] != plan[k] for k in
                                                ("partition_seed", "search_fraction", "search_digest"))):
                lines.append(f"{plan['task']}: its {plan['test_from']} documents here are not the test part "
                             f"the search left out (search: {old}; here: {plan})")
    return lines
