"""A user's install, not the developer's: `pip install -e .` without the test extra, in a new venv.

The test extra brings packages (mergekit and what it pulls in) that the product may silently lean
on; this builds a virtual environment from the project alone and runs, in it, an lm-eval
objective through `evomerge eval` and a search through `evomerge search` on a zoo trained in a
second. It installs from the package registries (about 1.5-2 min), so it is in `make test-slow`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: float = 900) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_plain_install_scores_lm_eval_and_searches(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    _run([base_python, "-m", "venv", str(venv)], tmp_path)
    py, evomerge = venv / "bin" / "python", venv / "bin" / "evomerge"
    # --no-compile: byte-compiling every installed file is most of pip's own time here.
    _run([str(py), "-m", "pip", "install", "--quiet", "--no-compile", "-e", str(REPO)], tmp_path)
    missing = _run([str(py), "-c", textwrap.dedent("""
        import importlib.util
        print(' '.join(m for m in ('pytest', 'mergekit', 'hypothesis') if importlib.util.find_spec(m) is None))
    """)], tmp_path).split()
    assert missing == ["pytest", "mergekit", "hypothesis"], "the venv holds part of the test extra"

    _run([str(py), "-c", textwrap.dedent("""
        from pathlib import Path
        from evomerge.testing.models import mini_zoo_config
        from evomerge.zoo.build import build_zoo
        build_zoo(Path('zoo'), mini_zoo_config(), log=lambda s: None)
    """)], tmp_path)
    out = _run([str(evomerge), "eval", "zoo/add", "-t", "addition_lm_eval", "--fidelity", "8", "--json"], tmp_path)
    assert '"exact_match"' in out and '"ok": true' in out, out

    (tmp_path / "space.yaml").write_text(textwrap.dedent("""
        kind: parameter
        base_model: zoo/base
        models: [zoo/add, zoo/rev]
        methods: [task_arithmetic]
        parameters:
          weight: {low: 0.0, high: 1.0}
    """))
    (tmp_path / "run.yaml").write_text(textwrap.dedent("""
        space: space.yaml
        objectives:
          - {task: addition_lm_eval}
        budget: {trials: 3}
        fidelity: 8
    """))
    _run([str(evomerge), "search", "run.yaml", "--out", "out"], tmp_path)
    front = _run([str(evomerge), "front", "out"], tmp_path)
    assert "addition_lm_eval/exact_match" in front and "3 trial(s)" in front, front

    # The botorch extra is not in the default install: choosing its optimiser is refused before
    # any compute (exit 2), in one paragraph that names the install.
    (tmp_path / "bo.yaml").write_text((tmp_path / "run.yaml").read_text() + "optimizer: {name: botorch_gp}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(evomerge), "search", "bo.yaml", "--out", "bo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "pip install 'evomerge[botorch]'" in proc.stdout + proc.stderr, proc
    assert not (tmp_path / "bo").exists()
