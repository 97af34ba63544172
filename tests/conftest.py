"""Session fixtures: tiny model families made in the test run (see evomerge.testing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test reaches the network for a dataset: `datasets` reads this once, at import, and then
# loads from its cache alone (a registry task whose dataset is not cached fails, as offline).
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from evomerge.testing import make_family


@pytest.fixture(scope="session")
def untied_family(tmp_path_factory) -> dict[str, Path]:
    return make_family(tmp_path_factory.mktemp("untied"), tied=False, seed=1)


@pytest.fixture(scope="session")
def tied_family(tmp_path_factory) -> dict[str, Path]:
    return make_family(tmp_path_factory.mktemp("tied"), tied=True, seed=2)


@pytest.fixture(params=["untied", "tied"])
def family(request, untied_family, tied_family) -> dict[str, Path]:
    return untied_family if request.param == "untied" else tied_family


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache for this test, offline: ``huggingface_hub`` reads its
    variables once, at import, so its constants are set here (subprocesses get the variables)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache
