"""A search worker's memory while it merges bf16 checkpoints (``evomerge.testing.memory``).

In a subprocess (its own allocator, glibc told to unmap every large block when freed, so a
freed copy is not silently reused by the next method): a base and three bf16 experts whose
deltas are 60% exact zeros, memory-mapped; one resident candidate; each method merged into
it. What the process holds above the sources must stay within one model's bytes (the
resident candidate) plus half a model, where a float32 copy of the whole model adds two
models and one of the embedding and head (four fifths of this family) for four inputs adds
more than five: a control method that makes such copies must be seen crossing the bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from evomerge.testing.models import make_family

#: methods whose scratch is bounded per tensor chunk (docs/architecture.md lists the others)
BOUNDED = ["linear", "passthrough", "task_arithmetic", "ties", "dare_ties", "dare_linear",
           "breadcrumbs", "breadcrumbs_ties"]
BOUND = 1.5  # model bytes: the resident candidate + half a model of scratch

_CONTROL = """
import sys
import torch
from evomerge.merge.registry import BasePolicy, Param, Scope, merge_method
from evomerge.testing.memory import main

@merge_method("float32_copies", params=(Param("weight", float, Scope.PER_MODEL),), base=BasePolicy.REQUIRED,
              min_inputs=1, reference="a test control")
def float32_copies(group, weight):
    base = group.base.float()  # whole-tensor float32 copies of every input
    out = base + sum(w * (t.float() - base) for t, w in zip(group.tensors, weight))
    return out.to(group.base.dtype)

main(sys.argv[1:])
"""


@pytest.mark.parametrize("compute", [None, "float32"], ids=["as-stored", "float32-compute"])
def test_bounded_methods_hold_one_model_plus_half_and_a_float32_copy_is_seen(compute, tmp_path):
    # as-stored: recipes computing in bf16 (mergekit's arithmetic); float32-compute: a search's
    # recipes (float32, rounded once into the bf16 resident model).
    make_family(tmp_path, tied=False, dtype=torch.bfloat16, zeros=0.6, hidden=384, layers=2,
                intermediate=1536, vocab=32768, heads=6, kv_heads=2)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    run = subprocess.run(
        [sys.executable, "-c", _CONTROL, str(tmp_path), "--candidates", "1", "--threads", "2",
         "--methods", ",".join([*BOUNDED, "float32_copies"]), *(["--compute", compute] if compute else [])],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {r["method"]: r for r in map(json.loads, run.stdout.splitlines())}
    assert set(rows) == {*BOUNDED, "float32_copies"}
    held = {m: (r["anon_peak"] - r["anon_opened"]) / r["model_bytes"] for m, r in rows.items()}
    over = {m: round(h, 2) for m, h in held.items() if m in BOUNDED and h > BOUND}
    assert not over, f"above one model + half a model of scratch (in models): {over}; all: {held}"
    assert held["float32_copies"] > BOUND, f"the control's float32 copies were not seen: {held}"
    assert all(r["file_peak"] >= 3 * r["model_bytes"] for r in rows.values()), "sources not memory-mapped"
