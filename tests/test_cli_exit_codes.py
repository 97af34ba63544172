"""Every command follows one exit-code table (README, "Exit codes") and prints no traceback
unless --debug: errors are turned into messages in one place (cli.EvomergeGroup)."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import evomerge.search.front as front_module
from evomerge.cli import app
from evomerge.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EvomergeError

runner = CliRunner()


def _front_raises(monkeypatch, exc: BaseException):
    def boom(run_dir):
        raise exc

    monkeypatch.setattr(front_module, "run_front", boom)


def test_bad_input_exits_2_with_one_paragraph_and_no_traceback(tmp_path):
    res = runner.invoke(app, ["front", str(tmp_path)])
    assert res.exit_code == EXIT_BAD_INPUT
    assert res.output.startswith("error: ") and "Traceback" not in res.output
    assert str(tmp_path) in res.output.replace("\n", "")


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_anywhere_on_the_line_lets_the_traceback_through(tmp_path, where):
    args = ["front", str(tmp_path)]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    res = runner.invoke(app, args)
    assert isinstance(res.exception, EvomergeError)  # raised, not turned into a message
    # and the flag does not stick to the next command of the same process
    assert runner.invoke(app, ["front", str(tmp_path)]).exception.__class__ is SystemExit


def test_an_unexpected_error_is_one_line_and_its_traceback_goes_to_a_file(monkeypatch, tmp_path):
    _front_raises(monkeypatch, ZeroDivisionError("division by zero"))
    res = runner.invoke(app, ["front", str(tmp_path)])
    assert res.exit_code == EXIT_FAILED
    assert "bug in evomerge" in res.output and "Traceback" not in res.output
    path = re.search(r"(\S*evomerge-error-\S*\.txt)", res.output.replace("\n", "")).group(1)
    with open(path) as f:
        text = f.read()
    os.unlink(path)
    assert "ZeroDivisionError" in text and "Traceback" in text


def test_ctrl_c_exits_130(monkeypatch, tmp_path):
    _front_raises(monkeypatch, KeyboardInterrupt())
    res = runner.invoke(app, ["front", str(tmp_path)])
    assert res.exit_code == EXIT_INTERRUPTED and "interrupted (SIGINT)" in res.output


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_a_failed_run_naming_the_file(monkeypatch, tmp_path, code):
    _front_raises(monkeypatch, OSError(code, os.strerror(code), str(tmp_path / "x.safetensors")))
    res = runner.invoke(app, ["front", str(tmp_path)])
    out = res.output.replace("\n", "")
    assert res.exit_code == EXIT_FAILED and "disk filled up" in out and "x.safetensors" in out
    assert "Traceback" not in res.output


def test_permission_denied_is_bad_input_naming_the_file(monkeypatch, tmp_path):
    _front_raises(monkeypatch, PermissionError(errno.EACCES, "Permission denied", "/ro/out"))
    res = runner.invoke(app, ["front", str(tmp_path)])
    assert res.exit_code == EXIT_BAD_INPUT and "/ro/out" in res.output


def test_usage_errors_exit_2():
    assert runner.invoke(app, ["merge"]).exit_code == 2
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_a_command_like_ctrl_c(tmp_path, sig):
    # A command that blocks: `evomerge ui` would start a server; a Python snippet runs the
    # app with a command patched to sleep, so only the signal path is measured. It says
    # "ready" inside its try (the CLI's handlers are in place by then): the signal's cue.
    code = (
        "import time, evomerge.search.front as f\n"
        "def slow(run_dir):\n"
        "    try:\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(60)\n"
        "    finally:\n"
        "        print('cleaned up', flush=True)\n"
        "f.run_front = slow\n"
        "from evomerge.cli import app\n"
        f"app(['front', {str(tmp_path)!r}])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(sig)
    out = proc.stdout.read()
    assert proc.wait(timeout=30) == 128 + sig
    assert "cleaned up" in out and f"interrupted ({sig.name})" in out and "Traceback" not in out
