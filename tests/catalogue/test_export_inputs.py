"""Bad inputs to ``evomerge export`` and ``evomerge zoo build`` (issue 15's catalogue).

Entries, one test each, through the real command line (exit 2, one paragraph naming the
directory or trial and the fix, no traceback, nothing written, the run left as it was):

17. ``export`` of a trial that does not exist, and of a directory that is not a run;
13. ``export`` to an output that exists (without --force);
16. ``zoo build --out`` to a place that cannot be written (refused before any training).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_only, assert_refused, assert_untouched, invoke, snapshot, unwritable_dir

from evomerge.testing import mini_zoo_config
from evomerge.zoo.build import build_zoo


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished two-trial search over a mini zoo."""
    import yaml

    root = tmp_path_factory.mktemp("export")
    zoo = build_zoo(root / "zoo", mini_zoo_config(), log=lambda s: None)
    space = {"base_model": str(zoo / "base"), "models": [str(zoo / "add"), str(zoo / "rev")],
             "methods": ["task_arithmetic"], "parameters": {"weight": {"low": 0.2, "high": 1.0}}}
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    config = {"space": str(root / "space.yaml"), "objectives": [{"task": "zoo_text"}], "fidelity": 4,
              "optimizer": {"name": "random"}, "budget": {"trials": 2}, "tracking": {"enabled": False}}
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    result = invoke("search", root / "run.yaml", "--out", root / "run")
    assert result.exit_code == 0, result.output
    return root / "run"


def test_17_export_of_a_trial_that_does_not_exist(run_dir, tmp_path):
    before = snapshot(run_dir)
    assert_refused(invoke("export", run_dir, "--trial", 99, "--out", tmp_path / "out"),
                   "Trial 99", str(run_dir), "--trial")
    assert_untouched(run_dir, before)
    assert_only(tmp_path)


def test_17b_export_of_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "notes.txt").write_text("x")
    assert_refused(invoke("export", tmp_path / "notarun", "--out", tmp_path / "out"),
                   str(tmp_path / "notarun"), "not a search run", "evomerge search --out")
    assert_only(tmp_path, "notarun")


def test_13_export_to_an_existing_output(run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = snapshot(out)
    assert_refused(invoke("export", run_dir, "--out", out), str(out), "--force")
    assert_untouched(out, before)


def test_16_zoo_build_to_an_unwritable_place(tmp_path):
    out = unwritable_dir(tmp_path) / "zoo"
    assert_refused(invoke("zoo", "build", "--out", out, "--no-report"), str(out), "--out")
    assert not out.exists()


def test_16b_zoo_build_to_a_path_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "zoo"
    assert_refused(invoke("zoo", "build", "--out", out, "--no-report"), str(out), "is a file", "--out")
    assert_only(tmp_path, "afile")
