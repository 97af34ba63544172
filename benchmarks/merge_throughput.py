"""Merge throughput: evomerge against mergekit, side by side, in one run.

Generates (once, cached under benchmarks/_work/) a base and two fine-tunes, then
merges them with each method through both tools' command lines, as a user would.
Two families:

* ``default``: a ~545 MB fp32 Llama (6 layers, hidden 1024, vocab 32000), experts =
  base + small Gaussian deltas of one scale;
* ``gqa12``: a ~400 MB fp32 Llama (12 layers, hidden 768, intermediate 2048, vocab
  16000, 12 heads / 4 kv heads, untied): more, smaller tensors, and task vectors like
  real fine-tunes' - expert b's 10x expert a's, scales differing by tensor kind, heavy
  (log-normal) tails on some kinds, 20% of embedding/head rows untouched (exact zeros).

Per method and tool: wall time (start-up included) of each of ``--repeat`` runs,
min / median / max (the median counts), GB/s of input, peak RSS, the 1-minute load
average before each run, and per run the ratio mergekit / evomerge of the runs made
back to back. "merge phase" is evomerge's own timing of ``merge_to_disk`` (reading,
merging, writing; not interpreter or torch start-up), from its summary line.
``--in-memory`` times ``InMemoryMerger.merge(recipe, into=model)`` per candidate
instead, as a search worker does (sources resident, the same output tensors reused).

    python benchmarks/merge_throughput.py [--family default|gqa12|gqa12-zeros] \
        [--methods ties,dare_ties,linear] [--repeat 3] [--in-memory]

Targets (issues 2 and 17): TIES >= 10x mergekit's throughput, DARE-TIES and linear
>= 3x, peak RSS no higher than mergekit's; where start-up alone rules a ratio out,
>= 1.5 GB/s of input in the merge phase. In memory: a TIES candidate of ``gqa12``
under 1 s.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from evomerge.testing import llama_config, llama_state, make_family, save_model

ROOT = Path(__file__).parent / "_work"
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
    # mergekit 0.1.5's other methods (issue 17)
    "nearswap": {"merge_method": "nearswap", "base": True, "models": [("a", None)], "parameters": {"t": 0.001}},
    "multislerp": {"merge_method": "multislerp", "base": True, "models": [("a", {"weight": 0.5}), ("b", {"weight": 0.5})]},
    "karcher": {"merge_method": "karcher", "models": [("base", None), ("a", None), ("b", None)]},
    "sce": {"merge_method": "sce", "base": True, "models": [("a", None), ("b", None)], "parameters": {"select_topk": 0.5}},
    "arcee_fusion": {"merge_method": "arcee_fusion", "base": True, "models": [("a", None)]},
    "ram": {"merge_method": "ram", "base": True, "models": [("a", None), ("b", None)], "parameters": {"epsilon": 0.001}},
    "ramplus_tl": {"merge_method": "ramplus_tl", "base": True, "models": [("a", None), ("b", None)],
                   "parameters": {"epsilon": 0.001, "r": 0.5, "alpha": 0.5}},
    # evomerge's own (no mergekit run: `--methods` with these times evomerge alone)
    "lines": {"merge_method": "lines", "base": True, "models": [("a", {"weight": 1.0}), ("b", {"weight": 1.0})],
              "evomerge_only": True},
    "pcb": {"merge_method": "pcb", "base": True, "models": [("a", {"weight": 1.0}), ("b", {"weight": 1.0})],
            "evomerge_only": True},
    "cabs": {"merge_method": "cabs", "base": True, "models": [("a", {"weight": 1.0}), ("b", {"weight": 1.0})],
             "evomerge_only": True},
    "tsv": {"merge_method": "tsv", "base": True, "models": [("a", None), ("b", None)], "evomerge_only": True},
    "iso_c": {"merge_method": "iso_c", "base": True, "models": [("a", None), ("b", None)], "evomerge_only": True},
    "iso_cts": {"merge_method": "iso_cts", "base": True, "models": [("a", None), ("b", None)], "evomerge_only": True},
    "star": {"merge_method": "star", "base": True, "models": [("a", None), ("b", None)], "evomerge_only": True},
}


GQA12_SHAPE = {
    "hidden": 768,
    "intermediate": 2048,
    "layers": 12,
    "heads": 12,
    "kv_heads": 4,
    "vocab": 16000,
}
# tensor kind -> (task-vector scale relative to the expert's, heavy-tailed)
GQA12_KINDS = {
    "embed_tokens": (0.5, True),
    "lm_head": (0.5, True),
    "q_proj": (1.0, False),
    "k_proj": (1.0, False),
    "v_proj": (1.5, False),
    "o_proj": (1.5, True),
    "gate_proj": (2.0, False),
    "up_proj": (2.0, False),
    "down_proj": (3.0, True),
    "norm": (0.2, False),
}
GQA12_EXPERT_SCALES = (0.001, 0.01)  # expert b's task vector is 10x expert a's


# gqa12-zeros: the same shapes and kinds, each update dropped where it is under half a bfloat16 step
# of the weight (as a bf16 fine-tune leaves such weights unchanged); these scales put 50-70% of each
# expert's delta at exact zeros (the generation prints the share).
GQA12_ZEROS_EXPERT_SCALES = (4e-5, 6e-5)


def _under_half_a_bf16_step(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    _, exponent = torch.frexp(w)  # |w| in [2^(e-1), 2^e): bf16's step there is 2^(e-8)
    return d.abs() < torch.ldexp(torch.ones_like(w), exponent - 9)


def _make_gqa12(root: Path, seed: int = 1, zeros: bool = False) -> None:
    gen = torch.Generator().manual_seed(seed)
    config = llama_config(tied=False, **GQA12_SHAPE)
    base = llama_state(config, gen)
    save_model(root / "base", base, config)
    for e, scale in enumerate(GQA12_ZEROS_EXPERT_SCALES if zeros else GQA12_EXPERT_SCALES):
        expert, dropped, total = {}, 0, 0
        for name, w in base.items():
            rel, heavy = next(v for k, v in GQA12_KINDS.items() if k in name)
            d = torch.randn(w.shape, generator=gen)
            if heavy:  # a log-normal scale mixture: most entries small, a few far larger
                d.mul_(torch.randn(w.shape, generator=gen).exp_())
            if "embed_tokens" in name or "lm_head" in name:  # tokens the fine-tune never saw
                d.mul_((torch.rand(w.shape[0], 1, generator=gen) > 0.2).float())
            d.mul_(scale * rel)
            if zeros:
                d.masked_fill_(_under_half_a_bf16_step(d, w), 0.0)
            dropped += int(torch.eq(d, 0).sum())
            total += d.numel()
            expert[name] = w + d
        save_model(root / f"expert{e}", expert, config)
        print(f"gqa12{'-zeros' if zeros else ''} expert{e}: {dropped / total:.1%} of the delta exactly zero")


# The seed each family's models are generated with unless --seed says otherwise.
DEFAULT_SEEDS = {"default": 0, "gqa12": 1, "gqa12-zeros": 1}


def make_models(family: str = "default", seed: int | None = None) -> dict[str, Path]:
    """A base and two fine-tunes of the family, generated once per seed (default: the family's)."""
    seed = DEFAULT_SEEDS[family] if seed is None else seed
    root = work_dir(family, seed) / "models"
    paths = {"base": root / "base", "a": root / "expert0", "b": root / "expert1"}
    if not all((p / "model.safetensors").exists() for p in paths.values()):
        if family == "default":
            make_family(root, tied=False, n_experts=2, seed=seed, delta=0.002, **SHAPE)
        else:
            _make_gqa12(root, seed, zeros=family == "gqa12-zeros")
    return paths


def work_dir(family: str, seed: int) -> Path:
    name = "throughput" if family == "default" else f"throughput_{family}"
    if seed != DEFAULT_SEEDS[family]:
        name += f"_seed{seed}"
    return ROOT / name


def recipe_dict(method: str, paths: dict[str, Path]) -> dict:
    spec = RECIPES[method]
    cfg = {"merge_method": spec["merge_method"], "dtype": "float32"}
    if spec.get("base"):
        cfg["base_model"] = str(paths["base"])
    cfg["models"] = [
        {"model": str(paths[m]), **({"parameters": p} if p else {})} for m, p in spec["models"]
    ]
    if "parameters" in spec:
        cfg["parameters"] = spec["parameters"]
    return cfg


def write_config(method: str, paths: dict[str, Path], work: Path) -> Path:
    out = work / f"{method}.yaml"
    out.write_text(yaml.safe_dump(recipe_dict(method, paths)))
    return out


MERGE_LINE = re.compile(r"in ([0-9.]+) s, ([0-9.]+) GB/s of input")


def timed(cmd: list[str]) -> tuple[float, float, float | None]:
    """Wall seconds, peak RSS (MB) of one child process, and the merge phase's seconds
    if the child printed evomerge's summary line."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
    found = MERGE_LINE.search(out)
    return wall, usage.ru_maxrss / 1024, float(found[1]) if found else None


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """min / median / max"""
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def warm(paths: dict[str, Path]) -> None:
    """Read the inputs once, so that every run reads from the page cache."""
    for p in paths.values():
        with open(p / "model.safetensors", "rb") as f:
            while f.read(1 << 26):
                pass


def run_cli(args, paths: dict[str, Path], input_bytes: int) -> None:
    work = work_dir(args.family, args.seed)
    bindir = Path(sys.executable).parent
    tools = {"evomerge": [str(bindir / "evomerge"), "merge", "{cfg}", "--out", "{out}", "--force"]}
    if not args.skip_mergekit:
        tools["mergekit"] = [
            str(bindir / "mergekit-yaml"),
            "{cfg}",
            "{out}",
            "--no-copy-tokenizer",
            "--quiet",
            "--allow-crimes",
        ]
    # Another busy process on a small machine skews the times: the load average before each
    # run is printed, and the tools alternate run by run so that each ratio compares runs
    # made under the same load.
    header = (
        f"{'method':<12}{'run':>4}{'load':>6}{'evomerge s':>12}{'merge phase s':>15}"
        f"{'mergekit s':>12}{'ratio':>8}{'RSS evo/mk MB':>16}"
    )
    print(header)
    print("-" * len(header))
    summary = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        cfg = write_config(method, paths, work)
        runs = []
        for i in range(args.repeat):
            row = {}
            for tool, template in tools.items():
                if tool == "mergekit" and RECIPES[method].get("evomerge_only"):
                    continue
                out = work / f"out-{tool}-{method}"
                shutil.rmtree(out, ignore_errors=True)
                os.sync()  # start each run with no dirty pages from the last one being written back
                time.sleep(2)
                load = os.getloadavg()[0]
                cmd = [a.replace("{out}", str(out)).replace("{cfg}", str(cfg)) for a in template]
                row[tool] = (*timed(cmd), load)
                shutil.rmtree(out, ignore_errors=True)
            runs.append(row)
            evo = row["evomerge"]
            mk = row.get("mergekit")
            phase = f"{evo[2]:.2f}" if evo[2] is not None else "-"
            print(
                f"{method:<12}{i + 1:>4}{evo[3]:>6.1f}{evo[0]:>12.2f}{phase:>15}"
                + (
                    f"{mk[0]:>12.2f}{mk[0] / evo[0]:>7.1f}x{evo[1]:>8.0f}/{mk[1]:.0f}"
                    if mk
                    else f"{'-':>12}{'-':>8}{evo[1]:>16.0f}"
                ),
                flush=True,
            )
        summary.append((method, runs))
    gb = input_bytes / 1e9
    print()
    print(f"min / median / max over {args.repeat} run(s); GB/s of input ({gb:.2f} GB)")
    for method, runs in summary:
        evo = [r["evomerge"][0] for r in runs]
        phases = [r["evomerge"][2] for r in runs if r["evomerge"][2] is not None]
        loads = [r["evomerge"][3] for r in runs]
        print(f"{method}: load {spread(loads, '{:.1f}')}")
        print(f"  evomerge wall s        {spread(evo)}   GB/s {spread([gb / t for t in evo])}")
        if phases:
            print(
                f"  evomerge merge phase s {spread(phases)}   GB/s {spread([gb / t for t in phases])}"
            )
        if "mergekit" in runs[0]:
            mk = [r["mergekit"][0] for r in runs]
            ratios = [r["mergekit"][0] / r["evomerge"][0] for r in runs]
            rss = [r["evomerge"][1] / r["mergekit"][1] for r in runs]
            print(f"  mergekit wall s        {spread(mk)}   GB/s {spread([gb / t for t in mk])}")
            print(f"  speed-up x             {spread(ratios, '{:.1f}')}   RSS ratio {spread(rss)}")


def run_in_memory(args, paths: dict[str, Path], input_bytes: int) -> None:
    """Candidates merged as a search worker merges them: sources resident, into one model."""
    from evomerge import Recipe
    from evomerge.merge.in_memory import InMemoryMerger

    refs = {str(p): str(p) for p in paths.values()}
    start = time.perf_counter()
    merger = InMemoryMerger(refs)
    print(f"sources loaded in {time.perf_counter() - start:.1f} s")
    model = None
    print(f"{'method':<12}{'runs':>5}{'load':>18}{'s per candidate':>22}{'GB/s of input':>22}")
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        recipe = Recipe.from_dict(recipe_dict(method, paths), f"{method} recipe")
        plan = merger.plan(recipe)
        used = sum(
            merger.sources[m].tensors[t].nbytes for op in plan.ops for m, t in op.all_inputs
        )
        model = merger.merge(recipe, into=model, plan=plan)  # the first touches the output
        times, loads = [], []
        for _ in range(max(args.repeat, 3)):
            loads.append(os.getloadavg()[0])
            t = time.perf_counter()
            merger.merge(recipe, into=model, plan=plan)
            times.append(time.perf_counter() - t)
        print(
            f"{method:<12}{len(times):>5}{spread(loads, '{:.1f}'):>18}{spread(times):>22}"
            f"{spread([used / 1e9 / t for t in times]):>22}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=tuple(DEFAULT_SEEDS), default="default")
    parser.add_argument("--methods", default="ties,dare_ties,linear")
    parser.add_argument(
        "--seed", type=int, default=None,
        help="seed the family's models are generated with (default: default 0, gqa12 and gqa12-zeros 1)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per tool and method (min/median/max shown)"
    )
    parser.add_argument("--skip-mergekit", action="store_true")
    parser.add_argument(
        "--in-memory", action="store_true", help="time InMemoryMerger candidates instead"
    )
    args = parser.parse_args()
    if args.seed is None:
        args.seed = DEFAULT_SEEDS[args.family]

    work_dir(args.family, args.seed).mkdir(parents=True, exist_ok=True)
    paths = make_models(args.family, args.seed)
    input_bytes = sum((p / "model.safetensors").stat().st_size for p in paths.values())
    warm(paths)
    print(
        f"family {args.family} (seed {args.seed}): 3 models, {input_bytes / 1e9:.2f} GB fp32 in all; "
        f"torch threads: {torch.get_num_threads()}; cores: {os.cpu_count()}"
    )
    if args.in_memory:
        run_in_memory(args, paths, input_bytes)
    else:
        run_cli(args, paths, input_bytes)


if __name__ == "__main__":
    main()
