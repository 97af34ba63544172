"""How much memory a search worker holds while it merges (Linux ``/proc``).

A worker keeps its sources memory-mapped (file-backed pages: the page cache's,
shared by every worker of the machine that maps the same files) and one
resident candidate in the run's dtype (anonymous memory: the worker's own).
``MemoryWatch`` samples ``RssAnon`` and ``RssFile`` of this process from a
thread; ``probe`` merges candidates of each method into one resident model and
reports what each added above the memory held before the first merge.

The sampling interval (1 ms) is far below the time a whole-tensor copy of the
sizes probed lives (tens of milliseconds to fill), so a method that
materialises one is seen; a shorter-lived peak may be missed, never invented.

Run as ``python -m evomerge.testing.memory FAMILY_DIR --methods ties,linear``
(``FAMILY_DIR`` holding ``base`` and ``expert0``..): one JSON line per method.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

_FIELDS = ("RssAnon", "RssFile")


def read_status(pid: int | str = "self") -> dict[str, int]:
    """``RssAnon`` and ``RssFile`` of a process, in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) * 1024 for k in _FIELDS}


class MemoryWatch:
    """Peak ``RssAnon`` / ``RssFile`` of a process while the ``with`` block runs."""

    def __init__(self, pid: int | str = "self", interval: float = 0.001) -> None:
        self.pid, self.interval = pid, interval
        self.start: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        now = read_status(self.pid)
        for k, v in now.items():
            self.peak[k] = max(self.peak.get(k, 0), v)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> MemoryWatch:
        self.start = read_status(self.pid)
        self.peak = dict(self.start)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def anon_added(self) -> int:
        """Peak anonymous bytes above those held at the start."""
        return self.peak["RssAnon"] - self.start["RssAnon"]


def _probe_value(param) -> Any:
    """What the probe gives a method's parameter: density 0.5; 0.5 (numbers) or False (flags)
    where there is no default, as the method suite does; else the default."""
    if param.name == "density":
        return 0.5
    if param.required:
        return 0.5 if param.type is float else False
    return param.default


def method_recipe(name: str, base: str, experts: list[str], dtype: str | None) -> dict[str, Any]:
    """A recipe of ``name`` over ``experts`` (and ``base`` where the method takes one), with the
    parameters the method suite gives it (0.5 where there is no default; density 0.5)."""
    from evomerge.merge.registry import BasePolicy, Scope, get_method

    spec = get_method(name)
    n = len(experts) if spec.max_inputs is None else min(len(experts), spec.max_inputs)
    shared: dict[str, Any] = {}
    per_model: dict[str, Any] = {}
    for p in spec.params:
        if p.name == "density" or p.required:  # (the others take the method's defaults)
            (per_model if p.scope is Scope.PER_MODEL else shared)[p.name] = _probe_value(p)
    models = [{"model": m, "parameters": dict(per_model)} for m in experts[:n]]
    recipe: dict[str, Any] = {"merge_method": name, "models": models, "parameters": shared}
    if spec.base is BasePolicy.INPUT:
        k = len(experts) + 1 if spec.max_inputs is None else spec.max_inputs
        recipe["models"] = [{"model": m, "parameters": dict(per_model)} for m in [base, *experts][:k]]
    else:
        recipe["base_model"] = base
    if dtype:
        recipe["dtype"] = dtype
    return recipe


def model_bytes(path: Path) -> int:
    """Bytes of a model directory's tensors, as stored."""
    from evomerge.io.checkpoint import Checkpoint, tensor_bytes

    checkpoint = Checkpoint(path)
    try:
        return tensor_bytes(checkpoint)
    finally:
        checkpoint.close()


def release_free_memory() -> None:
    """Hand the allocator's free pages back to the system (glibc), so that the next peak is
    measured from what is live."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def warm_up(methods: list[str], dtype: torch.dtype, n: int = 1_100_001) -> None:
    """Call each method once on small tensors of ``dtype`` (every path a large tensor takes), so
    that what loads once per process (numba's compiled loops, per-thread scratch of a few
    pieces) is held before the measurement starts, as torch's own libraries are."""
    from evomerge.merge.registry import BasePolicy, Scope, TensorGroup, get_method

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(n, generator=gen).to(dtype)
    inputs = [(base.float() + 0.01 * torch.randn(n, generator=gen)).to(dtype) for _ in range(3)]
    for name in methods:
        spec = get_method(name)
        k = len(inputs) if spec.max_inputs is None else min(len(inputs), spec.max_inputs)
        params = {p.name: [_probe_value(p)] * k if p.scope is Scope.PER_MODEL else _probe_value(p)
                  for p in spec.params}
        group = TensorGroup("model.layers.0.mlp.up_proj.weight", inputs[:k],
                            None if spec.base is BasePolicy.INPUT else base,
                            seed=0 if spec.randomized else None, layer=0, num_layers=2)
        spec.fn(group, **params)


def probe(family: Path, methods: list[str], *, candidates: int = 2, dtype: str | None = None,
          compute: str | None = None, log=lambda s: None) -> list[dict[str, Any]]:
    """Merge ``candidates`` candidates of each method into one resident model (made first by a
    linear merge and reused, as a search worker's); per method: seconds per candidate and the
    peak anonymous bytes it added above what was held before it (its scratch: the resident
    model is already counted), with the file-backed peak. ``dtype``: the resident model's and
    the recipes' (default: the sources'); ``compute``: the recipes' compute dtype instead (a
    search's recipes compute in float32 and are stored into its resident model's dtype).

    Run it with ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment: glibc then maps every
    large allocation and unmaps it when freed, so freed scratch is not silently reused by the
    next method's allocations (which would hide that method's peak)."""
    from evomerge import Recipe
    from evomerge.merge.in_memory import InMemoryMerger

    base = family / "base"
    experts = sorted(str(p) for p in family.glob("expert*"))
    merger = InMemoryMerger({r: r for r in [str(base), *experts]})
    stored = merger.sources[str(base)]
    warm_up(["linear", *methods], getattr(torch, dtype) if dtype else next(iter(stored.tensors.values())).dtype)
    opened = read_status()
    resident = merger.merge(Recipe.from_dict(method_recipe("linear", str(base), experts, dtype)))
    rows = []
    for name in methods:
        recipe = Recipe.from_dict(method_recipe(name, str(base), experts, compute or dtype), name)
        times = []
        release_free_memory()
        with MemoryWatch() as watch:
            for _ in range(candidates):
                t = time.perf_counter()
                resident = merger.merge(recipe, into=resident)
                times.append(time.perf_counter() - t)
        row = {"method": name, "seconds": times, "scratch": watch.anon_added,
               "anon_peak": watch.peak["RssAnon"], "anon_opened": opened["RssAnon"],
               "file_peak": watch.peak["RssFile"], "model_bytes": model_bytes(base)}
        log(json.dumps(row))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("family", type=Path)
    ap.add_argument("--methods", default="ties,dare_ties,linear")
    ap.add_argument("--candidates", type=int, default=2)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--compute", default=None, help="the recipes' compute dtype (default: --dtype)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    probe(args.family, args.methods.split(","), candidates=args.candidates, dtype=args.dtype, compute=args.compute,
          log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main(sys.argv[1:])
