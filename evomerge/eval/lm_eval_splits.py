"""The split guard for lm-eval's own tasks: the search never sees the documents ``eval`` reports.

A registry task comes with lm-eval's splits (training, validation, test; a few-shot split or a
fallback rule). evomerge's two splits map onto them:

- validation and test both present: the search scores validation, ``eval`` reports test;
- one evaluation split only: it is partitioned by a seeded permutation into a search part
  (``search_fraction`` of the documents) and a test part; the partition's seed, sizes and a
  digest of its indices are recorded with the run;
- few-shot examples come from where lm-eval takes them (its few-shot split, else training, else
  validation) unless that is the reported documents: then from the search documents instead.
  Examples drawn from the very documents being scored exclude the document itself.

The task object is changed in place (two splits added to its dataset, its ``test_split``
pointed at the one scored, its few-shot sampler rebuilt), so lm-eval's own evaluation loop runs
unchanged on it. Fidelity subsets of the scored documents are nested and, where the task has a
label (multiple choice), stratified by it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from evomerge.eval.lm_eval_index import LmEvalTaskError

SEARCH_SPLIT = "evomerge_search"
TEST_SPLIT = "evomerge_test"


@dataclass(frozen=True)
class SplitPlan:
    """How one lm-eval task's documents were divided (what a run records)."""

    task: str
    search_from: str  # the dataset split the search documents come from
    test_from: str
    search_docs: int
    test_docs: int
    fewshot_from: str  # a dataset split, "search documents", "config samples" or "none"
    partition_seed: int | None  # None: two separate splits, no partition
    search_fraction: float | None
    search_digest: str  # sha256 of the search documents' indices in search_from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def partition(n: int, seed: int, fraction: float, task: str) -> tuple[list[int], list[int]]:
    """The search and test parts (sorted indices) of a one-split task's ``n`` documents."""
    if n < 2:
        raise LmEvalTaskError(
            f"lm-eval task {task}: its only evaluation split has {n} document(s); at least 2 are needed "
            f"to keep a test part apart from the search."
        )
    k = min(n - 1, max(1, round(n * fraction)))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in order[:k]), sorted(int(i) for i in order[k:])


def _digest(indices: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest()[:16]


def guard_task(task, split: str, *, seed: int, search_fraction: float) -> SplitPlan:
    """Point ``task`` (an lm-eval ``ConfigurableTask`` with its dataset loaded) at evomerge's
    ``split`` ("search" or "test"), as the module docstring describes."""
    cfg = task.config
    name = task.task_name
    dataset = task.dataset
    val, test, train = cfg.validation_split, cfg.test_split, cfg.training_split
    if val is not None and test is not None and val != test:
        search_from, test_from = val, test
        search_idx = list(range(len(dataset[val])))
        search_raw, test_raw = dataset[val], dataset[test]
        part_seed, fraction = None, None
    elif val is not None or test is not None:
        search_from = test_from = val if val is not None else test
        search_idx, test_idx = partition(len(dataset[search_from]), seed, search_fraction, name)
        search_raw, test_raw = dataset[search_from].select(search_idx), dataset[search_from].select(test_idx)
        part_seed, fraction = seed, search_fraction
    else:
        raise LmEvalTaskError(f"lm-eval task {name}: it has neither a validation nor a test split to score.")

    fs = task.fewshot_cfg
    explicit = fs.split
    if explicit is not None:
        fewshot_from = explicit
    elif fs.samples is not None:
        fewshot_from = "config samples"
    else:  # lm-eval's fallback rule (Task.fewshot_docs)
        fewshot_from = train or val or test
    dataset[SEARCH_SPLIT], dataset[TEST_SPLIT] = search_raw, test_raw
    cfg.test_split = SEARCH_SPLIT if split == "search" else TEST_SPLIT
    if fewshot_from == test_from:
        # The reported documents (or the split they are cut from) would feed the prompts: take
        # the examples from the search documents instead.
        fewshot_from = "search documents"
        fs.split = SEARCH_SPLIT
        fs.process_docs = cfg.process_docs
    elif explicit is not None and fewshot_from == search_from:
        fs.split = SEARCH_SPLIT  # the same documents under evomerge's name
    if getattr(task, "sampler", None) is not None:
        task.sampler = type(task.sampler)(list(task.fewshot_docs()), rnd=None)
        # The sampler now holds its documents; what is left of ``fs.split`` is lm-eval's test
        # ``fewshot split == test split`` for handing the scored document to the sampler, which
        # then draws one more and drops it (so the draw, not only the exclusion, depends on it).
        # Decide it as lm-eval would for the same documents scored alone, and always when the
        # examples come from the scored search documents themselves.
        lm_eval_test = (search_from if split == "search" else test_from) if part_seed is None else test
        own_docs = fewshot_from == "search documents" and split == "search"
        fs.split = cfg.test_split if explicit == lm_eval_test or own_docs else None
    return SplitPlan(
        task=name, search_from=search_from, test_from=test_from, search_docs=len(search_raw),
        test_docs=len(test_raw), fewshot_from=fewshot_from if getattr(task, "sampler", None) is not None else "none",
        partition_seed=part_seed, search_fraction=fraction, search_digest=_digest(search_idx),
    )


def labels(task) -> list[Any] | None:
    """The label of each scored document (multiple-choice tasks), else None."""
    if task.config.output_type != "multiple_choice":
        return None
    try:
        return [repr(task.doc_to_target(d)) for d in task.eval_docs]
    except Exception:  # noqa: BLE001 - a target that needs more than the document: not stratified
        return None


def stratified_subset(n: int, k: int | None, seed: int, strata: list[Any] | None = None) -> list[int]:
    """Indices of ``k`` of ``n`` documents: nested in ``k`` for one seed and, given ``strata``,
    each label's share close to its share of all ``n`` (every prefix of one ordering)."""
    if k is None or k >= n:
        return list(range(n))
    if k < 1:
        raise LmEvalTaskError(f"fidelity {k} is not a positive number of documents.")
    rng = np.random.default_rng(seed)
    if strata is None:
        return sorted(int(i) for i in rng.permutation(n)[:k])
    # Each document's place in a shuffled order of its own label, as a fraction of that label's
    # size (plus a random offset within its slot): sorting by it interleaves the labels in
    # proportion, so any prefix is stratified, and prefixes of one ordering are nested.
    keys = np.empty(n)
    jitter = rng.random(n)
    groups: dict[Any, list[int]] = {}
    for i, s in enumerate(strata):
        groups.setdefault(s, []).append(i)
    for label in sorted(groups, key=repr):
        members = np.array(groups[label])
        members = members[rng.permutation(len(members))]
        keys[members] = (np.arange(len(members)) + jitter[members]) / len(members)
    order = np.lexsort((np.arange(n), keys))
    return sorted(int(i) for i in order[:k])
