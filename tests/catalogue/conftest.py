"""The bad-input catalogue's shared checks (issue 15, deliverable 3).

Every entry of the catalogue is one test that runs the real command line and checks the
same things: the exit code of the README's table (2 bad input, 1 the run failed), one
paragraph that names what is wrong (file, field or tensor) and the fix, no traceback,
nothing half-written and no existing result touched. ``assert_refused`` checks the
message; ``snapshot`` / ``assert_untouched`` and ``assert_only`` check the disk.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from evomerge.cli import app


def invoke(*args: Any) -> Any:
    """Run ``evomerge ARGS`` in-process (stdout and stderr together in ``result.output``)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def _code_and_output(result: Any) -> tuple[int | None, str]:
    if isinstance(result, subprocess.CompletedProcess):
        return result.returncode, (result.stdout or "") + (result.stderr or "")
    return result.exit_code, result.output


def error_message(result: Any) -> str:
    """The text after ``error:``, with line breaks made spaces (rich may wrap in a terminal)."""
    _, output = _code_and_output(result)
    start = output.find("error:")
    assert start >= 0, f"no 'error:' in the output:\n{output}"
    return " ".join(output[start + len("error:"):].split())


def assert_refused(result: Any, *must_name: str, exit_code: int = 2) -> str:
    """The command was refused as the catalogue requires; returns the message.

    ``must_name``: strings that must all appear in the message (the file, field or tensor,
    and a word of the fix such as the flag to pass), compared with whitespace collapsed.
    """
    code, output = _code_and_output(result)
    assert code == exit_code, f"exit code {code}, expected {exit_code}; output:\n{output}"
    assert "Traceback" not in output, output
    assert output.count("error:") == 1, f"expected one error, got:\n{output}"
    tail = output[output.find("error:"):].strip()
    assert "\n\n" not in tail, f"the error is not one paragraph:\n{tail}"
    message = error_message(result)
    for name in must_name:
        assert " ".join(str(name).split()) in message, f"{name!r} not named in: {message}"
    assert not re.search(r"\bunexpected \w+(Error|Exception)\b", message), (
        f"an internal error, not a refusal: {message}")
    return message


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root`` (relative path -> size and content hash)."""
    root = Path(root)
    if root.is_file():
        return {root.name: (root.stat().st_size, hashlib.sha256(root.read_bytes()).hexdigest())}
    return {
        str(p.relative_to(root)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_untouched(root: Path, before: dict[str, tuple[int, str]]) -> None:
    """``root`` holds exactly the files it held when ``before = snapshot(root)`` was taken."""
    assert snapshot(root) == before, f"{root} was changed"


def assert_only(folder: Path, *names: str) -> None:
    """``folder`` holds just ``names``: no half-written output, no temporary directory beside it."""
    assert sorted(p.name for p in Path(folder).iterdir()) == sorted(names)


@pytest.fixture
def cli():
    """``cli("merge", recipe, "--out", out)``: the command line, in-process."""
    return invoke
