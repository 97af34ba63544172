"""Wiring a run: executor and ledger kinds come from registries; run_search names none of them."""

from __future__ import annotations

import sys
import textwrap

import pytest
import yaml

from evomerge.config.run import RunConfig
from evomerge.errors import EvomergeError
from evomerge.run import run_search
from evomerge.search.executors import EXECUTORS
from evomerge.search.ledgers import find_ledger
from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"), mini_zoo_config(), log=lambda s: None)


def _config(tmp_path, zoo, **over):
    space = {"base_model": str(zoo / "base"), "models": [str(zoo / "add"), str(zoo / "rev")],
             "methods": ["task_arithmetic"], "parameters": {"weight": {"low": 0.0, "high": 1.0}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    run = {"space": "space.yaml", "objectives": [{"task": "cost", "metric": "params"}],
           "optimizer": {"name": "random"}, "budget": {"trials": 2}, "tracking": {"enabled": False},
           **over}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    return tmp_path / "run.yaml"


def test_a_config_without_kind_keeps_its_meaning():
    base = {"space": "s.yaml", "objectives": [{"task": "cost"}]}
    assert RunConfig.model_validate(base).executor.resolved_kind == "serial"
    assert RunConfig.model_validate({**base, "executor": {"workers": 3}}).executor.resolved_kind == "pool"
    assert RunConfig.model_validate({**base, "ledger": "journal"}).ledger.kind == "journal"
    assert RunConfig.model_validate({**base, "ledger": {"kind": "journal"}}).ledger.kind == "journal"


@pytest.mark.parametrize("over, message", [
    ({"executor": {"kind": "serail"}}, r"executor\.kind: Unknown executor kind 'serail'\. Did you mean: serial\?"),
    ({"executor": {"kind": "pool", "workers": 2, "adress": "x"}}, r"executor \(pool\): adress: unknown field"),
    ({"ledger": "sqllite"}, r"ledger\.kind: Unknown ledger kind 'sqllite'\. Did you mean: sqlite"),
    ({"optimizer": {"name": "cmaa"}}, r"optimizer\.name: Unknown optimizer 'cmaa'\. Did you mean: cmaes, lq_cmaes\?"),
])
def test_unknown_kinds_fail_before_any_output(tmp_path, zoo, over, message):
    cfg = _config(tmp_path, zoo, **over)
    with pytest.raises(EvomergeError, match=message):
        run_search(cfg, tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_a_journal_ledger_by_its_plain_name(tmp_path, zoo):
    run_search(_config(tmp_path, zoo, ledger="journal"), tmp_path / "out", log=lambda s: None)
    assert find_ledger(tmp_path / "out") == "journal"


def test_a_new_executor_joins_through_an_entry_point_without_editing_evomerge(tmp_path, zoo, monkeypatch):
    """A separate package declares `[project.entry-points."evomerge.executors"] counting = ...`;
    `executor: {kind: counting}` then selects it, with its own options validated."""
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "counting_executor.py").write_text(textwrap.dedent('''
        from evomerge.search.executors.serial import SerialExecutor
        from evomerge.validation import StrictModel

        SUBMITTED = []

        class Options(StrictModel):
            label: str = "none"

        class CountingExecutor(SerialExecutor):
            Options = Options

            def __init__(self, worker, settings, options, *, tasks=None):
                super().__init__(worker, settings, options, tasks=tasks)
                self.label = options.label

            def submit(self, job, recipe, fidelity):
                SUBMITTED.append((self.label, job))
                super().submit(job, recipe, fidelity)
    '''))
    dist = plugin / "counting_executor-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: counting-executor\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[evomerge.executors]\ncounting = counting_executor:CountingExecutor\n")
    monkeypatch.syspath_prepend(str(plugin))
    monkeypatch.setattr(EXECUTORS, "_plugins_read", False)  # as in a fresh process
    monkeypatch.setattr(EXECUTORS, "_lazy", dict(EXECUTORS._lazy))
    monkeypatch.setattr(EXECUTORS, "_items", dict(EXECUTORS._items))
    cfg = _config(tmp_path, zoo, executor={"kind": "counting", "label": "mine"})
    result = run_search(cfg, tmp_path / "out", log=lambda s: None)
    assert result.evaluated == 2
    assert [label for label, _ in sys.modules["counting_executor"].SUBMITTED] == ["mine", "mine"]
    assert "counting" in EXECUTORS.names()


def test_workers_hold_sources_and_model_in_the_configured_dtype(tmp_path, zoo):
    import torch

    from evomerge.search.executors import TaskSpec, WorkerSpec
    from evomerge.search.executors.worker import Worker

    refs = {str(zoo / m): zoo / m for m in ("base", "add")}
    worker = Worker(WorkerSpec(refs, str(zoo / "base"), (TaskSpec("cost", "search", False),), dtype="bfloat16"))
    assert next(worker.model.parameters()).dtype == torch.bfloat16
    assert {t.dtype for t in worker.merger.sources[str(zoo / "add")].tensors.values()} == {torch.bfloat16}
    result = run_search(_config(tmp_path, zoo, dtype="bfloat16"), tmp_path / "out", log=lambda s: None)
    assert result.evaluated == 2 and result.failed == 0


def test_a_device_that_is_not_cpu_or_cuda_is_refused_before_any_output(tmp_path, zoo):
    with pytest.raises(EvomergeError, match=r"device: String should match pattern"):
        run_search(_config(tmp_path, zoo, device="gpu"), tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_a_second_controller_on_a_running_run_directory_is_refused(tmp_path, zoo):
    from evomerge.run import resume_search
    from evomerge.search.rundir import RunLock

    run_search(_config(tmp_path, zoo), tmp_path / "out", trials=1, log=lambda s: None)
    held = RunLock(tmp_path / "out")  # as if a controller were running it now
    try:
        with pytest.raises(EvomergeError, match=r"being searched by another controller \(pid \d+ on "):
            resume_search(tmp_path / "out", log=lambda s: None)
    finally:
        held.release()
    assert resume_search(tmp_path / "out", log=lambda s: None).evaluated == 1  # free again


def test_a_search_killed_before_its_ledger_existed_starts_again(tmp_path, zoo):
    # Killed between writing run.yaml and creating the ledger: no trial can have finished, and
    # `search` (not `resume`) is what goes on; before, both refused the directory.
    from evomerge.search.rundir import RUN_FILE, freeze_config

    config = _config(tmp_path, zoo)
    (tmp_path / "out").mkdir()
    freeze_config(RunConfig.load(config), config, tmp_path / "out")
    assert run_search(config, tmp_path / "out", log=lambda s: None).trials == 2
    assert (tmp_path / "out" / RUN_FILE).is_file()


def test_a_search_refused_while_opening_its_ledger_leaves_no_run_behind(tmp_path, zoo, monkeypatch):
    import evomerge.run as run_module

    def refuse(*args, **kwargs):
        raise EvomergeError("cannot open the ledger")

    monkeypatch.setattr(run_module, "open_ledger", refuse)
    with pytest.raises(EvomergeError, match="cannot open the ledger"):
        run_search(_config(tmp_path, zoo), tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()
