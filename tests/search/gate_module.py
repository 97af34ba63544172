"""An evaluation gate: a user's Python task that lets a search's first evaluations through and
holds every later one until the test releases it, so that a test kills or interrupts a search at
a moment the code under test reports, never by racing the clock (copied beside a run under a
module name of its own by ``run_helpers.write_gate``, which also reads its files).

``gate.json`` beside the copy: ``{"pass": N, "hold": [...], "hold_imports": [...], "seconds": S}``.
Each evaluation takes the next number when its score starts: ``claim-<i>``, made with
O_CREAT | O_EXCL, so no two evaluations get one number, in any process of any session (a re-run
of an evaluation takes a new one). Numbers below N (or not in ``hold``) score at once; from N on
(or those in ``hold``), the evaluation writes ``held-<i>`` (JSON: its pid, its score, its Ray
node if it runs in a Ray actor) and waits until ``release`` exists, or, with ``seconds`` set,
until that long has passed. So while the gate is shut exactly N of the evaluations that reach it
can finish, whatever the machine's speed, and a held one never finishes before its release.

Imports are numbered the same way (``import-<i>``): a worker process imports the module while it
starts, and one numbered in ``hold_imports`` writes ``import-held-<i>`` and waits there (a worker
that is certainly not up yet).

The score is a weight statistic of the merged model (no forward pass): deterministic, and
different for different recipes, so a test can find a held evaluation's row by its score.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from evomerge.testing.gate import NEVER, claim, wait_for_release

HERE = Path(__file__).parent


def _settings() -> dict:
    return json.loads((HERE / "gate.json").read_text())


def _claim(kind: str) -> int:
    return claim(HERE, kind)


def _node() -> str | None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return None


def _hold(name: str, value: float | None, seconds: float | None) -> None:
    tmp = HERE / f".{name}.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "score": value, "node": _node()}))
    os.replace(tmp, HERE / name)  # whole or absent to a reader
    if not wait_for_release(HERE, seconds) and seconds is None:
        raise RuntimeError(f"gate {HERE}: held for {NEVER:g} s and never released")


def score(model, tokenizer):
    value = float(sum(p.detach().double().mean() for p in model.parameters()))
    settings = _settings()
    i = _claim("claim")
    if settings["hold"] is not None:
        held = i in settings["hold"]
    else:
        held = settings["pass"] is not None and i >= settings["pass"]
    if held:
        _hold(f"held-{i}", value, settings["seconds"])
    return {"score": value}


def _on_import() -> None:
    settings = _settings()
    if settings["hold_imports"]:
        i = _claim("import")
        if i in settings["hold_imports"]:
            _hold(f"import-held-{i}", None, settings["seconds"])


_on_import()
