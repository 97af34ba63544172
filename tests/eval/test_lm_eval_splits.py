"""The split guard's pure parts: partitions and fidelity subsets (no model, no lm-eval)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from evomerge.eval.lm_eval_splits import partition, stratified_subset

LABELS = ["a"] * 30 + ["b"] * 60 + ["c"] * 10


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_stratified_subsets_keep_each_labels_share_and_are_nested(seed):
    previous: set[int] = set()
    for k in (5, 10, 20, 50, 99):
        idx = stratified_subset(100, k, seed, LABELS)
        assert len(idx) == len(set(idx)) == k and previous <= set(idx)
        counts = Counter(LABELS[i] for i in idx)
        for label, share in (("a", 0.3), ("b", 0.6), ("c", 0.1)):
            assert abs(counts[label] - share * k) <= 1, (k, counts)
        previous = set(idx)


def test_plain_subsets_are_nested_and_seeded():
    assert set(stratified_subset(50, 8, 3)) <= set(stratified_subset(50, 16, 3))
    assert stratified_subset(50, 8, 3) != stratified_subset(50, 8, 4)
    assert stratified_subset(50, None, 3) == list(range(50))


def test_partition_is_disjoint_complete_and_the_same_in_another_process():
    search, test = partition(101, 5, 0.3, "t")
    assert len(search) == 30 and sorted(search + test) == list(range(101))
    code = ("from evomerge.eval.lm_eval_splits import partition, stratified_subset as s; "
            "print((partition(101, 5, 0.3, 't'), s(100, 20, 2, ['a'] * 30 + ['b'] * 60 + ['c'] * 10)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(((search, test), stratified_subset(100, 20, 2, LABELS)))


def test_a_one_document_split_cannot_be_partitioned():
    from evomerge.errors import EvomergeError

    with pytest.raises(EvomergeError, match="at least 2 are needed"):
        partition(1, 0, 0.5, "tiny")
