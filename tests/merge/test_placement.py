"""Where a worker holds its sources (evomerge.merge.placement), and merging on a GPU.

The placement rule is checked here on any machine (the device's free memory is given); the
CUDA tests run where a GPU is, and skip elsewhere.
"""

from __future__ import annotations

import pytest
import torch

from evomerge import Recipe
from evomerge.merge.in_memory import InMemoryMerger
from evomerge.merge.placement import EVAL_SHARE, fits_on_device, source_device
from evomerge.testing.models import make_family

GB = 1 << 30
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_sources_fit_beside_the_candidate_and_the_evaluation_share():
    # 7B-class bf16 on an 80 GB device: a base and two experts fit, a base and three do not.
    total, free, model = 80 * GB, 79 * GB, int(14.5 * GB)
    assert fits_on_device(3 * model, model, free, total)
    assert not fits_on_device(4 * model, model, free, total)
    assert fits_on_device(int(free - model - EVAL_SHARE * total), model, free, total)
    assert not fits_on_device(int(free - model - EVAL_SHARE * total) + 1, model, free, total)


def test_auto_asks_the_device_for_its_free_memory(monkeypatch):
    gpu = torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (79 * GB, 80 * GB))
    assert source_device(gpu, "auto", 3 * 14 * GB, 14 * GB) == gpu
    assert source_device(gpu, "auto", 4 * 15 * GB, 15 * GB) == torch.device("cpu")
    assert source_device(gpu, "host", 1, 1) == torch.device("cpu")
    assert source_device(gpu, "device", 10**15, 10**15) == gpu


def test_on_the_cpu_the_sources_stay_where_they_are():
    cpu = torch.device("cpu")
    assert {source_device(cpu, s, 10**15, 10**15) for s in ("auto", "device", "host")} == {cpu}
    with pytest.raises(ValueError, match="auto, device or host"):
        source_device(cpu, "gpu", 1, 1)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("placement"), tied=False, dtype=torch.bfloat16, zeros=0.6)


def _recipe(family, method: str) -> Recipe:
    models = [{"model": str(family[f"expert{i}"]), "parameters": {"weight": 0.4, "density": 0.5}}
              for i in range(3)]
    return Recipe.from_dict({"merge_method": method, "base_model": str(family["base"]), "models": models})


@cuda
@pytest.mark.parametrize("sources_on", ["host", "device"])
@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties"])
def test_a_merge_on_the_gpu_equals_the_cpu_merge(family, sources_on, method):
    refs = {str(p): str(p) for p in family.values()}
    recipe = _recipe(family, method) if method != "linear" else Recipe.from_dict({
        "merge_method": "linear", "models": [{"model": str(p), "parameters": {"weight": 1.0}}
                                             for p in family.values()]})
    on_cpu = InMemoryMerger(refs).merge(recipe)
    merger = InMemoryMerger(refs, device="cuda", sources_on=sources_on)
    held = {t.device.type for s in merger.sources.values() for t in s.tensors.values()}
    assert held == ({"cpu"} if sources_on == "host" else {"cuda"})
    on_gpu = merger.merge(recipe)
    assert {t.device.type for t in on_gpu.values()} == {"cuda"}
    for name, t in on_cpu.items():
        torch.testing.assert_close(on_gpu[name].cpu(), t, atol=1e-2, rtol=1e-2, msg=name)


@cuda
def test_dare_on_the_gpu_keeps_its_density_and_is_deterministic(family):
    refs = {str(p): str(p) for p in family.values()}
    merger = InMemoryMerger(refs, device="cuda", sources_on="host")
    recipe = _recipe(family, "dare_ties")
    first = {k: v.clone() for k, v in merger.merge(recipe, seed=3).items()}
    again = merger.merge(recipe, seed=3)
    assert all(torch.equal(first[k], again[k]) for k in first)


@cuda
def test_a_worker_on_the_gpu_scores_as_on_the_cpu(tmp_path):
    from dataclasses import replace

    from evomerge.search.executors.worker import Worker
    from evomerge.testing.executors import recipe, worker_spec
    from evomerge.testing.models import mini_zoo_config
    from evomerge.zoo.build import build_zoo

    zoo = build_zoo(tmp_path / "zoo", mini_zoo_config(), log=lambda s: None)
    spec = worker_spec(zoo)
    on_cpu = Worker(spec).evaluate(recipe(zoo, 0.3), 4)
    worker = Worker(replace(spec, device="cuda"))
    on_gpu = worker.evaluate(recipe(zoo, 0.3), 4)
    assert on_gpu.error is None, on_gpu.error
    assert next(worker.model.parameters()).device.type == "cuda"
    assert on_gpu.values == pytest.approx(on_cpu.values, abs=0.25)  # at most one of 4 answers differs
