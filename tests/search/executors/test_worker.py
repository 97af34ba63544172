"""A worker survives what goes wrong inside one candidate: the trial fails with the reason."""

from __future__ import annotations

import pytest
import torch

from evomerge.recipe import Recipe
from evomerge.search.executors import TaskSpec, WorkerSpec
from evomerge.search.executors.worker import Worker
from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    zoo = build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)
    refs = {str(zoo / m): zoo / m for m in ("base", "add", "rev")}
    w = Worker(WorkerSpec(refs, str(zoo / "base"), (TaskSpec("addition", "search", False),), torch_threads=1))
    w.recipe = Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": str(zoo / "base"), "models": [
        {"model": str(zoo / "add"), "parameters": {"weight": 0.5}},
        {"model": str(zoo / "rev"), "parameters": {"weight": 0.5}}]})
    return w


def test_out_of_memory_in_a_merge_fails_the_trial_and_the_worker_goes_on(worker, monkeypatch):
    real = worker.merger.merge

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(worker.merger, "merge", oom)
    out = worker.evaluate(worker.recipe, 4)
    assert out.values is None and "OutOfMemoryError" in out.error and "20.00 GiB" in out.error
    monkeypatch.setattr(worker.merger, "merge", real)
    assert worker.evaluate(worker.recipe, 4).values is not None


def test_out_of_memory_in_an_evaluation_fails_the_trial_and_the_worker_goes_on(worker, monkeypatch):
    forward = type(worker.model).forward

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory during the forward pass")

    monkeypatch.setattr(type(worker.model), "forward", oom)
    out = worker.evaluate(worker.recipe, 4)
    assert out.values is None and "task addition failed" in out.error and "out of memory" in out.error
    monkeypatch.setattr(type(worker.model), "forward", forward)
    assert worker.evaluate(worker.recipe, 4).values is not None
