"""A search worker's resident memory with three LoRA adapter sources against three dense ones.

A worker holds every source of its space in memory and one resident model it merges candidates
into. Three dense fine-tunes cost three more copies of the model; three ``base+adapter`` sources
are kept as their low-rank factors beside the base (``evomerge/merge/low_rank.py``). This builds,
once, a ~400 MB float32 Llama (the throughput benchmark's gqa12 shape: 12 layers, hidden 768,
intermediate 2048, 12 heads, 4 KV heads, vocabulary 16000, untied), three dense experts of it and
three rank-16 LoRA adapters of it (every attention and MLP projection), then, in a fresh process per
run, does what a worker does at start and for its first candidate: loads the sources
(``InMemoryMerger`` over the resolved references), loads the resident model and merges a TIES
candidate of the three sources into it. It reports that process's private bytes
(``Private_Clean + Private_Dirty`` of ``/proc/self/smaps_rollup``) and anonymous bytes, min /
median / max over ``--runs`` processes each::

    python benchmarks/adapter_memory.py [--runs 3] [--rank 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from evomerge.testing import llama_config, llama_state, save_model

ROOT = Path(__file__).resolve().parent / "_work" / "adapter_memory"
SHAPE = {"hidden": 768, "layers": 12, "intermediate": 2048, "vocab": 16000, "heads": 12, "kv_heads": 4}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EXPERTS = 3


def build(rank: int) -> Path:
    root = ROOT / f"r{rank}"
    if (root / "done").exists():
        return root
    gen = torch.Generator().manual_seed(5)
    config = llama_config(tied=False, **SHAPE)
    base = llama_state(config, gen)
    save_model(root / "base", base, config)
    for e in range(EXPERTS):
        save_model(root / f"expert{e}", {k: v + 0.01 * torch.randn(v.shape, generator=gen)
                                         for k, v in base.items()}, config)
        factors = {}
        for name, w in base.items():
            module = name.removesuffix(".weight")
            if w.dim() == 2 and module.rsplit(".", 1)[-1] in TARGETS:
                factors[f"base_model.model.{module}.lora_A.weight"] = 0.02 * torch.randn(rank, w.shape[1], generator=gen)
                factors[f"base_model.model.{module}.lora_B.weight"] = 0.02 * torch.randn(w.shape[0], rank, generator=gen)
        adapter = root / f"lora{e}"
        adapter.mkdir(parents=True, exist_ok=True)
        save_file(factors, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
        (adapter / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(TARGETS),
            "bias": "none", "use_dora": False, "fan_in_fan_out": False, "use_rslora": False}))
    (root / "done").touch()
    return root


def refs(root: Path, kind: str) -> list[str]:
    if kind == "dense":
        return [str(root / f"expert{e}") for e in range(EXPERTS)]
    return [f"{root / 'base'}+{root / f'lora{e}'}" for e in range(EXPERTS)]


def memory() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return {"private": fields["Private_Clean"] + fields["Private_Dirty"], "anonymous": fields["Anonymous"]}


def measure(root: Path, kind: str) -> None:
    """One worker's start and first candidate (run in its own process)."""
    from evomerge.io.hf import load_model
    from evomerge.io.sources import resolve_sources
    from evomerge.merge.in_memory import InMemoryMerger
    from evomerge.recipe import Recipe

    torch.set_num_threads(1)
    models = refs(root, kind)
    base = str(root / "base")
    merger = InMemoryMerger(resolve_sources([base, *models]))
    model = load_model(base)
    recipe = Recipe.from_dict({"merge_method": "ties", "base_model": base, "dtype": "float32", "models": [
        {"model": m, "parameters": {"weight": 0.4, "density": 0.5}} for m in models]})
    merger.merge(recipe, into=model)
    print(json.dumps(memory()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--measure", choices=("dense", "adapter"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.root, args.measure)
        return
    root = build(args.rank)
    model_bytes = (root / "base" / "model.safetensors").stat().st_size
    adapter_bytes = (root / "lora0" / "adapter_model.safetensors").stat().st_size
    print(f"model {model_bytes / 1e6:.0f} MB float32 ({SHAPE}); adapter rank {args.rank}: "
          f"{adapter_bytes / 1e6:.1f} MB each; 3 sources + the base, one TIES candidate merged")
    results = {}
    for kind in ("dense", "adapter"):
        runs = []
        for _ in range(args.runs):
            out = subprocess.run([sys.executable, __file__, "--measure", kind, "--root", str(root)],
                                 check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        results[kind] = runs
        for key in ("private", "anonymous"):
            values = sorted(r[key] / 1e9 for r in runs)
            print(f"{kind:8s} {key:9s} GB: min {values[0]:.3f} median {statistics.median(values):.3f} "
                  f"max {values[-1]:.3f}")
    ratio = statistics.median(r["private"] for r in results["adapter"]) / statistics.median(
        r["private"] for r in results["dense"])
    print(f"adapter / dense private bytes (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()
