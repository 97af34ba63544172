"""README's walk-through ("Your first hour"), run as a newcomer runs it, so that it cannot rot.

Every ```bash block of that section runs, in order, in a fresh copy of the repository (the files
`git ls-files -co --exclude-standard` lists: tracked, and untracked ones that are not ignored).
The blocks run like commands typed into one terminal: each in its own `bash -e -o pipefail`,
starting in the directory and with the exported environment the block before it ended with (so
`source .venv/bin/activate` carries over). A block fails the test with its text and its output.

Markers, as a comment line inside a block (output blocks, ```console / ```text, are not run):

- `# walkthrough: background until "TEXT"` -- a block that keeps running (a server). The test
  waits for TEXT in its output, requests every http://127.0.0.1 (or localhost) URL the output
  holds (each must answer 200), then presses Ctrl-C (SIGINT to the block's process group); the
  block must end.
- `# walkthrough: interrupt after "TEXT"` -- when TEXT appears in the output, the test presses
  Ctrl-C; the block must then end as interrupted (exit code 130). So that the command cannot end
  by itself first, however fast the machine, `evomerge` in that block is the real CLI with one
  hook (a shell function running `HOLD_AT_CUE`): once its progress line holds TEXT, the search
  waits there (the controller, in its progress report) until the Ctrl-C.

What the copy reuses instead of installing and training (to fit CI; nothing else is shared):

- `.venv` is a directory whose `bin/`, `lib/`, `include/` and `pyvenv.cfg` link to the virtual
  environment running this test (the repository's `.venv` under `make test-slow`), with a fresh
  `.installed` stamp so `make` does not reinstall; `PYTHONPATH` puts the copy's own `evomerge`
  package first, so the copy's code is what runs.
- `zoo/` links to this repository's `zoo/` (`make test-slow` builds it before the tests), so the
  walk-through's `evomerge zoo build` finds it cached.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Your first hour"
BLOCK_TIMEOUT = 900  # seconds; a block that runs longer has hung
STOP_TIMEOUT = 60  # seconds a block may take to end after Ctrl-C



@dataclass
class Block:
    code: str
    line: int  # where it starts in README.md
    background_until: str | None = None
    interrupt_after: str | None = None


_MARKER = re.compile(r'^\s*#\s*walkthrough:\s*(background until|interrupt after)\s+"([^"]+)"', re.M)


def walkthrough_blocks(readme: str) -> list[Block]:
    """The ```bash blocks of the walk-through section, in order, with their markers."""
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    section = readme[start : end if end != -1 else len(readme)]
    first_line = readme[:start].count("\n") + 1
    blocks = []
    for m in re.finditer(r"^```bash\n(.*?)^```", section, re.S | re.M):
        block = Block(m.group(1), first_line + section[: m.start()].count("\n"))
        for kind, text in _MARKER.findall(block.code):
            if kind == "background until":
                block.background_until = text
            else:
                block.interrupt_after = text
        blocks.append(block)
    return blocks


def fresh_copy(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
        capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file() and not src.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    venv = Path(sys.prefix)
    (dest / ".venv").mkdir()
    for name in ("bin", "lib", "lib64", "include", "pyvenv.cfg"):
        if (venv / name).exists():
            (dest / ".venv" / name).symlink_to(venv / name)
    (dest / ".venv" / ".installed").touch()  # newer than pyproject.toml: make does not reinstall
    (dest / "zoo").symlink_to(REPO / "zoo")
    return dest


# `evomerge ARGS` for a block the test interrupts (argv: the cue text, then ARGS): the real CLI,
# whose progress printer, once it has printed a line holding the cue, holds the search there
# until Ctrl-C (KeyboardInterrupt, as anywhere in the search loop) ends it. A pool's workers
# import this file as __mp_main__: they only define the function.
HOLD_AT_CUE = """\
import sys
import time


def hold_after(cue):
    from evomerge.search import progress

    report = progress.ProgressPrinter.__call__

    def report_then_hold(self, p):
        report(self, p)
        if cue in progress.format_progress(p):
            end = time.monotonic() + 900  # the test presses Ctrl-C long before
            while time.monotonic() < end:
                time.sleep(0.05)

    progress.ProgressPrinter.__call__ = report_then_hold


if __name__ == "__main__":
    hold_after(sys.argv.pop(1))
    from evomerge.cli import main

    sys.argv[0] = "evomerge"
    main()
"""


@dataclass
class Terminal:
    """One shell session's state between blocks: the directory and the exported environment."""

    root: Path
    state: Path
    env: dict[str, str] = field(default_factory=dict)

    def script(self, block: Block, n: int) -> Path:
        env_file, cwd_file = self.state / "env.sh", self.state / "cwd"
        path = self.state / f"block{n:02d}.sh"
        restore = f"source {env_file}\ncd \"$(cat {cwd_file})\"\n" if env_file.exists() else ""
        hook = ""
        if block.interrupt_after:  # a shell function: not exported, so this block's alone
            (self.state / "hold_at_cue.py").write_text(HOLD_AT_CUE)
            hook = (f"evomerge() {{ {shlex.quote(sys.executable)} {shlex.quote(str(self.state / 'hold_at_cue.py'))} "
                    f"{shlex.quote(block.interrupt_after)} \"$@\"; }}\n")
        path.write_text(
            "set -eo pipefail\n"
            f"trap 'export -p > {env_file}.new && mv {env_file}.new {env_file}; pwd > {cwd_file}' EXIT\n"
            f"{restore}{hook}{block.code}"
        )
        return path


class Output:
    """A block's stdout and stderr, read as they come."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.text = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in iter(proc.stdout.readline, b""):
            with self._lock:
                self.text += line.decode(errors="replace")

    def wait_for(self, text: str, proc: subprocess.Popen, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if text in self.text:
                    return True
            if proc.poll() is not None:
                self._thread.join(5)
                return text in self.text
            time.sleep(0.2)
        return False

    def close(self) -> str:
        self._thread.join(10)
        return self.text


def _stop(proc: subprocess.Popen, sig: int, timeout: float) -> bool:
    """Send ``sig`` to the block's process group; True if the block ended within ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _failure(block: Block, why: str, output: str) -> str:
    return (f"README.md walk-through block at line {block.line} {why}\n--- block ---\n{block.code}"
            f"--- output (last 8000 characters) ---\n{output[-8000:]}")


def _like_a_terminal() -> None:
    """In the block's process, before bash starts: its own process group (Ctrl-C goes to the
    group), and SIGINT handled by default even when this test runs in a background job, whose
    ignored SIGINT the block would inherit (bash cannot un-ignore it, Python would keep it)."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_block(term: Terminal, block: Block, n: int, env: dict[str, str]) -> str:
    proc = subprocess.Popen(
        ["bash", str(term.script(block, n))], cwd=term.root, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_like_a_terminal,
    )
    out = Output(proc)
    try:
        if block.background_until:
            if not out.wait_for(block.background_until, proc, BLOCK_TIMEOUT):
                pytest.fail(_failure(block, f"never printed {block.background_until!r}", out.text))
            time.sleep(2)  # the rest of what it prints once up (more links)
            # the links evomerge prints (the server's own log may name docs on the internet)
            for url in re.findall(r"http://(?:127\.0\.0\.1|localhost)[^\s)'\"]+", out.text):
                with urllib.request.urlopen(url, timeout=30) as response:
                    assert response.status == 200, _failure(block, f"{url} answered {response.status}", out.text)
            if not _stop(proc, signal.SIGINT, STOP_TIMEOUT):
                pytest.fail(_failure(block, f"did not stop within {STOP_TIMEOUT} s of Ctrl-C", out.text))
            return out.close()
        if block.interrupt_after:
            if not out.wait_for(block.interrupt_after, proc, BLOCK_TIMEOUT):
                pytest.fail(_failure(block, f"never printed {block.interrupt_after!r}", out.text))
            if not _stop(proc, signal.SIGINT, STOP_TIMEOUT):
                pytest.fail(_failure(block, f"did not stop within {STOP_TIMEOUT} s of Ctrl-C", out.text))
            text = out.close()
            if proc.returncode not in (130, -signal.SIGINT):
                pytest.fail(_failure(block, f"exited {proc.returncode} after Ctrl-C, not 130", text))
            if "Traceback" in text:
                pytest.fail(_failure(block, "printed a traceback on Ctrl-C", text))
            return text
        try:
            proc.wait(BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(_failure(block, f"ran past {BLOCK_TIMEOUT} s", out.text))
        text = out.close()
        if proc.returncode != 0:
            pytest.fail(_failure(block, f"exited {proc.returncode}", text))
        return text
    finally:
        if proc.poll() is None:
            _kill_group(proc)


def test_walkthrough_blocks_parse():
    """The section exists, has blocks, and every marker names its text (a typo would skip it)."""
    readme = (REPO / "README.md").read_text()
    blocks = walkthrough_blocks(readme)
    assert len(blocks) >= 5
    for b in blocks:
        if "walkthrough:" in b.code:
            assert b.background_until or b.interrupt_after, f"unknown marker in block at line {b.line}"


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> Path:
    """Every block of the walk-through, run on a fresh copy: the copy's root."""
    tmp_path = tmp_path_factory.mktemp("walkthrough")
    if sys.prefix == sys.base_prefix:
        pytest.skip("needs the repository's virtual environment (run it with .venv/bin/python)")
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to copy")
    blocks = walkthrough_blocks((REPO / "README.md").read_text())
    root = fresh_copy(tmp_path / "evomerge")
    state = tmp_path / "terminal"
    state.mkdir()
    term = Terminal(root, state)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTEST", "EVOMERGE_"))}
    env.update(PYTHONPATH=str(root), EVOMERGE_ZOO=str(root / "zoo"))
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if Path(p).resolve() != Path(sys.prefix, "bin").resolve()
    )
    (state / "cwd").write_text(str(root))
    started = time.monotonic()
    timings = []
    for n, block in enumerate(blocks):
        t = time.monotonic()
        output = run_block(term, block, n, env)
        (state / f"block{n:02d}.out").write_text(output)  # real output, to refresh the README's
        timings.append(f"line {block.line}: {time.monotonic() - t:.0f} s")
        (state / "timings.txt").write_text("\n".join(timings) + "\n")
    print(f"walk-through: {time.monotonic() - started:.0f} s ({'; '.join(timings)})")
    return root


@pytest.mark.slow  # the whole walk-through: a 360-trial search and six more steps, ~10 min
def test_readme_walkthrough_on_a_fresh_copy(walkthrough):
    assert (walkthrough / "runs" / "quickstart-model" / "evomerge_recipe.yaml").is_file()


def quickstart_summary(output: str) -> tuple[int, int, int, int]:
    """From the quickstart's summary line: trials, failed evaluations, examples scored, and the
    examples full evaluation of every trial would have scored."""
    m = re.search(r"\((\d+) trials in the run, (\d+) evaluations failed.*?multi-fidelity scored "
                  r"(\d+) examples instead of (\d+)", output, re.S)
    assert m, "no summary line in the quickstart's output"
    return tuple(int(g) for g in m.groups())


@pytest.mark.slow  # reads what the walk-through left
def test_the_quickstart_ran_its_budget_to_a_front(walkthrough):
    """The whole quickstart: its budget with no failure, successive halving scoring under half
    the examples full evaluation would, and a front with a hypervolume over its objectives."""
    import yaml

    from evomerge.search.front import run_front

    # the first block's output (`make quickstart`), saved beside the copy by the fixture
    output = (walkthrough.parent / "terminal" / "block00.out").read_text()
    trials, failed, scored, at_top = quickstart_summary(output)
    budget = yaml.safe_load((walkthrough / "runs" / "quickstart.yaml").read_text())
    assert trials == budget["budget"]["trials"] and failed == 0
    assert scored < 0.5 * at_top
    objectives, front, _, hv = run_front(walkthrough / "runs" / "quickstart-output")
    assert len(objectives) == len(budget["objectives"]) and front and hv is not None


@pytest.mark.slow  # scores ~27 models on the test split after the walk-through: ~2 min
def test_the_quickstart_beats_plain_merges_and_chance(walkthrough):
    """The zoo issue's landscape, on the quickstart a newcomer just ran (the default zoo, seed
    0, which `make test-slow` built): every expert >= 0.9 on its skill, the base <= 0.3 on each;
    the quickstart's best recipe keeps >= 0.7 of each expert's skill, beats
    the average and task arithmetic by >= 0.05 and the median of 20 random recipes of its space
    by >= 0.1, all on the test split. benchmarks/zoo_landscape.py measures it over 5 zoo seeds."""
    from evomerge.search.landscape import all_checks, score_landscape

    result = score_landscape(walkthrough / "zoo", walkthrough / "runs" / "quickstart-output")
    failed = [name for name, ok in all_checks(result).items() if not ok]
    assert not failed, f"{failed}: {json.dumps(result['rows'], indent=1)}, random means {result['random_means']}"
