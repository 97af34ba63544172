"""Faults on cue inside real trials, for ``test_trial_faults.py`` (copied beside a run as a
user's task module, under a name of its own per test).

``plan.json`` beside the copy lists faults. The first recipe a worker merges gets the first
fault, the next new recipe the second, and so on; a recipe keeps its fault on every attempt
and in every process (claims are files made with ``os.link``, which cannot half-succeed), so
a re-queued evaluation of a killed worker meets the same fault again. ``target-<i>`` holds
the content hash of the recipe that got fault ``i``: the test finds its ledger row by it.

Importing the module wraps ``InMemoryMerger.merge`` in the importing process, to learn which
recipe the model in hand came from (and to fail a merge on cue); the test restores it.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch

from evomerge.merge.in_memory import InMemoryMerger

HERE = Path(__file__).parent
FAULTS: list[str] = json.loads((HERE / "plan.json").read_text())["faults"]
RETURNS = {  # what a function returns instead of {"score": number}
    "return_none": None,
    "return_str": "0.5",
    "return_none_value": {"score": None},
    "return_str_value": {"score": "high"},
    "return_nan": {"score": float("nan")},
}
_current: dict[str, str] = {}  # the recipe last merged in this process: a worker merges, then scores


def _claim(key: str) -> str | None:
    """The fault of recipe ``key``: the one it claimed before, or the next one free."""
    if FAULTS == ["every"]:  # every recipe raises
        return "raise"
    for i, fault in enumerate(FAULTS):
        target = HERE / f"target-{i}"
        if target.exists():
            if target.read_text() == key:
                return fault
            continue
        tmp = HERE / f".claim-{os.getpid()}-{i}"
        tmp.write_text(key)
        try:
            os.link(tmp, target)
        except FileExistsError:
            if target.read_text() == key:
                return fault
            continue
        finally:
            tmp.unlink()
        return fault
    return None


_merge = InMemoryMerger.merge


def _merge_on_cue(self, recipe, *args, **kwargs):
    key = recipe.content_hash()
    _current["key"] = key
    if _claim(key) == "merge_oom":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
    return _merge(self, recipe, *args, **kwargs)


InMemoryMerger.merge = _merge_on_cue


def score(model, tokenizer):
    """A weight statistic (no forward pass, so a merge with huge finite weights scores too)."""
    fault = _claim(_current["key"])
    if fault == "raise":
        raise RuntimeError("the metric server is down (simulated)")
    if fault == "eval_oom":
        raise torch.OutOfMemoryError("CUDA out of memory during the forward pass (simulated)")
    if fault == "die":  # on its first attempt the worker exits, on the next it is SIGKILLed
        key = _current["key"][:16]
        first = not list(HERE.glob(f"died-{key}"))
        (HERE / f"died-{key}").touch()
        if first:
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
    if fault in RETURNS:
        return RETURNS[fault]
    return {"score": float(model.model.embed_tokens.weight.detach().double().mean())}
