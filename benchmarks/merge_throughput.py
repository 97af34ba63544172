"""Merge throughput: evomerge against mergekit, side by side, in one run.

Generates (once, cached under benchmarks/_work/) a base and two fine-tunes of
a ~540 MB fp32 Llama, then merges them with each method through both tools'
command lines, as a user would. Prints wall time (start-up included), GB/s of
input and peak RSS of each, and the ratios evomerge / mergekit.

    python benchmarks/merge_throughput.py [--methods ties,dare_ties,linear] [--repeat 1]

Targets (issue 2): TIES >= 10x mergekit's throughput, DARE-TIES and linear
>= 3x, peak RSS no higher than mergekit's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from evomerge.testing import make_family

WORK = Path(__file__).parent / "_work" / "throughput"
SHAPE = {
    "hidden": 1024,
    "intermediate": 2816,
    "layers": 6,
    "heads": 16,
    "kv_heads": 8,
    "vocab": 32000,
}
RECIPES = {
    "linear": {
        "merge_method": "linear",
        "models": [("base", {"weight": 0.4}), ("a", {"weight": 0.3}), ("b", {"weight": 0.3})],
    },
    "task_arithmetic": {
        "merge_method": "task_arithmetic",
        "base": True,
        "models": [("a", {"weight": 0.5}), ("b", {"weight": 0.5})],
    },
    "ties": {
        "merge_method": "ties",
        "base": True,
        "models": [("a", {"weight": 0.5, "density": 0.5}), ("b", {"weight": 0.5, "density": 0.5})],
    },
    "dare_ties": {
        "merge_method": "dare_ties",
        "base": True,
        "models": [("a", {"weight": 0.5, "density": 0.5}), ("b", {"weight": 0.5, "density": 0.5})],
    },
    "dare_linear": {
        "merge_method": "dare_linear",
        "base": True,
        "models": [("a", {"weight": 0.5, "density": 0.5}), ("b", {"weight": 0.5, "density": 0.5})],
    },
    "breadcrumbs_ties": {
        "merge_method": "breadcrumbs_ties",
        "base": True,
        "models": [("a", {"weight": 0.5, "density": 0.8}), ("b", {"weight": 0.5, "density": 0.8})],
    },
    "della": {
        "merge_method": "della",
        "base": True,
        "models": [("a", {"weight": 0.5, "density": 0.5}), ("b", {"weight": 0.5, "density": 0.5})],
    },
    "slerp": {
        "merge_method": "slerp",
        "base": True,
        "models": [("base", None), ("a", None)],
        "parameters": {"t": 0.4},
    },
}


def make_models() -> dict[str, Path]:
    """A base and two fine-tunes of a ~545 MB fp32 Llama, generated once."""
    root = WORK / "models"
    paths = {"base": root / "base", "a": root / "expert0", "b": root / "expert1"}
    if not all((p / "model.safetensors").exists() for p in paths.values()):
        make_family(root, tied=False, n_experts=2, seed=0, delta=0.002, **SHAPE)
    return paths


def write_config(method: str, paths: dict[str, Path]) -> Path:
    spec = RECIPES[method]
    cfg = {"merge_method": spec["merge_method"], "dtype": "float32"}
    if spec.get("base"):
        cfg["base_model"] = str(paths["base"])
    cfg["models"] = [
        {"model": str(paths[m]), **({"parameters": p} if p else {})} for m, p in spec["models"]
    ]
    if "parameters" in spec:
        cfg["parameters"] = spec["parameters"]
    out = WORK / f"{method}.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default="ties,dare_ties,linear")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per tool and method; the best is kept"
    )
    parser.add_argument("--skip-mergekit", action="store_true")
    args = parser.parse_args()

    paths = make_models()
    input_bytes = sum((p / "model.safetensors").stat().st_size for p in paths.values())
    for p in paths.values():  # warm the page cache, so both tools read from memory
        with open(p / "model.safetensors", "rb") as f:
            while f.read(1 << 26):
                pass
    bindir = Path(sys.executable).parent
    print(
        f"3 models, {input_bytes / 1e9:.2f} GB fp32 in all; torch threads: {torch.get_num_threads()}"
    )
    # Another busy process on a small machine skews the times (torch's worker threads wait on
    # each other): the load average before each run is printed so such runs can be spotted.
    header = f"{'method':<18}{'tool':<10}{'wall s':>8}{'GB/s':>8}{'peak RSS MB':>13}{'load':>6}"
    print(header)
    print("-" * len(header))
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        cfg = write_config(method, paths)
        result = {}
        tools = {
            "evomerge": [
                str(bindir / "evomerge"),
                "merge",
                str(cfg),
                "--out",
                "{out}",
                "--quiet",
                "--force",
            ]
        }
        if not args.skip_mergekit:
            tools["mergekit"] = [
                str(bindir / "mergekit-yaml"),
                str(cfg),
                "{out}",
                "--no-copy-tokenizer",
                "--quiet",
                "--allow-crimes",
            ]
        for tool, template in tools.items():
            best = None
            for _ in range(args.repeat):
                out = WORK / f"out-{tool}-{method}"
                shutil.rmtree(out, ignore_errors=True)
                os.sync()  # start each run with no dirty pages from the last one being written back
                time.sleep(2)
                load = os.getloadavg()[0]
                wall, rss = timed([a.replace("{out}", str(out)) for a in template])
                shutil.rmtree(out, ignore_errors=True)
                if best is None or wall < best[0]:
                    best = (wall, rss, load)
            result[tool] = best
            print(
                f"{method:<18}{tool:<10}{best[0]:>8.2f}{input_bytes / 1e9 / best[0]:>8.2f}"
                f"{best[1]:>13.0f}{best[2]:>6.1f}",
                flush=True,
            )
        rows.append((method, result))
    if not args.skip_mergekit:
        print()
        print(f"{'method':<18}{'throughput x':>14}{'RSS ratio':>11}")
        for method, r in rows:
            speed = r["mergekit"][0] / r["evomerge"][0]
            rss = r["evomerge"][1] / r["mergekit"][1]
            print(f"{method:<18}{speed:>13.1f}x{rss:>11.2f}")


if __name__ == "__main__":
    main()
