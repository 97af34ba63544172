"""The bad-input catalogue's shared checks (issue 15, deliverable 3).

Every entry runs a command through the real CLI and asserts the same contract:
the command refuses with the expected exit code, says what is wrong in one
paragraph that names the file, field or tensor and the fix, prints no
traceback, and leaves nothing half-written. Test modules import the helpers
with ``from conftest import assert_refused, snapshot``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from evomerge.errors import EXIT_BAD_INPUT


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def assert_refused(result, *must_name: str, exit_code: int = EXIT_BAD_INPUT) -> str:
    """``result`` (a CliRunner result) is a refusal: ``exit_code``, one paragraph starting
    ``error:`` that contains every string of ``must_name`` (compared with whitespace collapsed,
    case-insensitively), and no traceback. Returns the message, flattened to one line."""
    out = result.output
    assert result.exit_code == exit_code, f"exit {result.exit_code}, expected {exit_code}:\n{out}"
    assert "Traceback" not in out, out
    start = out.find("error: ")
    assert start >= 0, f"no 'error: ' message:\n{out}"
    message = out[start:].strip()
    assert "\n\n" not in message, f"more than one paragraph:\n{message}"
    flat = _flat(message)
    for name in must_name:
        assert _flat(str(name)).lower() in flat.lower(), f"{name!r} not named in:\n{flat}"
    return flat


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root`` (relative path -> size, mtime in ns, sha256): equal snapshots
    before and after a refused command mean nothing there was touched."""
    root = Path(root)
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def assert_untouched(root: Path, before: dict) -> None:
    """``root`` holds exactly what it held when ``before = snapshot(root)`` was taken."""
    assert snapshot(root) == before, f"{root} was changed"


def assert_only(folder: Path, *names: str) -> None:
    """``folder`` holds just ``names``: no half-written output, no temporary directory beside it."""
    assert sorted(p.name for p in Path(folder).iterdir()) == sorted(names)


def invoke(*args):
    """``evomerge ARGS`` in-process (stdout and stderr together in ``result.output``)."""
    from typer.testing import CliRunner

    from evomerge.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def unwritable_dir(tmp_path: Path) -> Path:
    """A folder nothing can be written to: a read-only directory, or (as root, whom permissions
    do not stop) ``/sys``; skips the test where there is neither."""
    import os
    import tempfile

    import pytest

    ro = tmp_path / "read-only"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    for folder in (ro, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=folder)
        except OSError:
            return folder
        os.close(fd)
        os.unlink(probe)
    pytest.skip("no unwritable folder here (root without a read-only /sys)")


# -- search side: a mini zoo, a run config over it, a finished run to resume -----------------


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Path:
    """The tests' mini zoo (base, add, rev): trains in seconds, built once per session."""
    from evomerge.testing import mini_zoo_config
    from evomerge.zoo.build import build_zoo

    return build_zoo(tmp_path_factory.mktemp("catalogue-zoo"), mini_zoo_config(), log=lambda s: None)


@pytest.fixture(scope="session")
def finished_run(zoo, tmp_path_factory) -> Path:
    """A finished two-trial search over the mini zoo (copy it before changing anything)."""
    from run_helpers import write_run

    root = tmp_path_factory.mktemp("catalogue-run")
    config = write_run(root, zoo, budget={"trials": 2})
    result = invoke("search", config, "--out", root / "out")
    assert result.exit_code == 0, result.output
    return root / "out"


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of ``run_dir`` under ``tmp_path`` (its run.yaml still names the original space)."""
    import shutil

    return Path(shutil.copytree(run_dir, tmp_path / "run"))


NOT_A_RUN = ["missing", "empty", "other files", "config only"]


def not_a_run(tmp_path: Path, finished_run: Path, make: str) -> Path:
    """A directory that holds no run, made as ``make`` (one of NOT_A_RUN) says."""
    d = tmp_path / "d"
    if make != "missing":
        d.mkdir()
    if make == "other files":
        (d / "notes.txt").write_text("hello")
    if make == "config only":
        (d / "run.yaml").write_text((finished_run / "run.yaml").read_text())
    return d
