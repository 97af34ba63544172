"""Per-candidate cost at 1B (issue 30, item 4): evomerge's worker against mergekit's two ways.

On ``family_1b.py``'s family (Llama-3.2-1B's shapes, bf16, a base and three experts whose deltas
are mostly exact zeros; generated once, ~10 GB), per merge method (TIES, DARE-TIES, linear):

* **evomerge**, as a search worker holds it: the sources memory-mapped (``InMemoryMerger``, run
  dtype bf16), one resident bf16 model loaded with transformers, each candidate merged into it
  (``--repeats`` candidates a method, their weights differing), computing in float32 as a
  search's recipes do (and, for the deterministic methods, again with ``dtype: bfloat16``:
  mergekit's arithmetic, bit-exact with its result, not a target); then a short generation task
  (16 prompts, 16 new tokens, one batch, KV cache) with evomerge's ``greedy_generate`` and with
  transformers' ``generate`` on the same model and batch (``--repeats`` each). Then, apart from
  the timings (a 1 ms sampler thread slows short torch ops on 2 cores), the worker's peak
  anonymous (``RssAnon``) and file-backed (``RssFile``) memory over one more candidate a method
  and a generation.
* **mergekit-evolve's on-disk loop**, once a method: mergekit's ``run_merge`` to a directory,
  then ``AutoModelForCausalLM.from_pretrained`` of it (bf16), then the same generation.
* **mergekit's in-memory API** (0.1.5: ``mergekit.merge_methods.api.merge_state_dicts``), once a
  method: the same memory-mapped source tensors in, the result loaded into a model already in
  memory (``load_state_dict``).

Each part runs in a subprocess of its own (its memory is its own). Targets: evomerge's merge >=
10x faster than the on-disk loop's merge + load, and no slower than the in-memory API; its
generation no slower than ``generate``. The whole benchmark takes about 25-35 minutes on 2 cores;
it refuses at once (nothing written) where the machine lacks the memory or disk.

    python benchmarks/scale_1b.py [--methods ties,dare_ties,linear] [--repeats 3] [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import family_1b  # noqa: E402

from evomerge.testing.memory import model_bytes  # noqa: E402

METHODS = ("ties", "dare_ties", "linear")
PROMPTS, NEW_TOKENS = 16, 16
NEED_MEMORY = 16 << 30  # mergekit's API holds its outputs beside a loaded model and its scratch
WORK = Path(__file__).parent / "_work" / "scale_1b"


def parameters(method: str, candidate: int) -> list[dict]:
    """Per-expert parameters of candidate ``candidate`` (weights differ between candidates)."""
    out = []
    for e in range(3):
        p = {"weight": round(0.25 + 0.05 * ((candidate + e) % 3), 2)}
        if method != "linear":
            p["density"] = 0.5
        out.append(p)
    return out


def mergekit_config(paths: dict[str, Path], method: str, candidate: int = 0) -> dict:
    experts = [str(paths[f"expert{e}"]) for e in range(3)]
    models = [{"model": m, "parameters": p} for m, p in zip(experts, parameters(method, candidate), strict=True)]
    if method == "linear":
        models.insert(0, {"model": str(paths["base"]), "parameters": {"weight": 0.25}})
        return {"merge_method": "linear", "models": models, "dtype": "bfloat16"}
    return {"merge_method": method, "base_model": str(paths["base"]), "models": models, "dtype": "bfloat16"}


def prompts(n: int = PROMPTS) -> list[str]:
    return [" ".join(f"w{(977 * i + 131 * j) % 120000}" for j in range(8 + i % 5)) for i in range(n)]


def _generate_hf(model, tokenizer, texts: list[str]) -> float:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    t = time.perf_counter()
    with torch.inference_mode():
        model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)
    return time.perf_counter() - t


def _generate_evomerge(model, tokenizer, texts: list[str]) -> float:
    from evomerge.eval.generate import greedy_generate

    t = time.perf_counter()
    greedy_generate(model, tokenizer, texts, max_new_tokens=NEW_TOKENS, batch_size=len(texts))
    return time.perf_counter() - t


# -- the parts, each in its own process ------------------------------------------------------------


def part_evomerge(paths: dict[str, Path], methods: list[str], repeats: int) -> dict:
    from evomerge import Recipe
    from evomerge.io.hf import load_causal_lm
    from evomerge.merge.in_memory import InMemoryMerger
    from evomerge.testing.memory import MemoryWatch

    out: dict = {"merge": {}, "merge_bf16": {}}
    t = time.perf_counter()
    merger = InMemoryMerger({str(p): str(p) for p in paths.values()}, dtype=torch.bfloat16)
    model, tokenizer = load_causal_lm(paths["base"], dtype=torch.bfloat16)
    out["start_s"] = time.perf_counter() - t

    def candidate(method: str, k: int, dtype: str = "float32") -> float:
        recipe = Recipe.from_dict({**mergekit_config(paths, method, k), "dtype": dtype})
        t = time.perf_counter()
        merger.merge(recipe, into=model)
        return time.perf_counter() - t

    for method in methods:
        # A search's recipes compute in float32 (rounded once into the bf16 resident model);
        # `dtype: bfloat16` is mergekit's arithmetic, step by step in bf16 (bit-exact with it;
        # random masks compute in float32 either way, so DARE is not repeated).
        out["merge"][method] = [candidate(method, k) for k in range(repeats)]
        if method != "dare_ties":
            out["merge_bf16"][method] = [candidate(method, k, "bfloat16") for k in range(repeats)]
    texts = prompts()
    _generate_evomerge(model, tokenizer, texts[:2])  # first-call set-up, not a repeat
    out["generate_evomerge"] = [_generate_evomerge(model, tokenizer, texts) for _ in range(repeats)]
    out["generate_hf"] = [_generate_hf(model, tokenizer, texts) for _ in range(repeats)]
    # The worker's memory, apart from the timings: the 1 ms sampler thread slowed linear's
    # many short torch ops by a fifth on 2 cores. One more candidate a method, then generation.
    with MemoryWatch() as watch:
        for method in methods:
            candidate(method, repeats)
        _generate_evomerge(model, tokenizer, texts)
    out["anon_peak"], out["file_peak"] = watch.peak["RssAnon"], watch.peak["RssFile"]
    return out


def part_mergekit_disk(paths: dict[str, Path], method: str, scratch: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.testing.models import run_mergekit_to_disk

    target = scratch / f"mergekit-{method}"
    shutil.rmtree(target, ignore_errors=True)
    t = time.perf_counter()
    run_mergekit_to_disk(mergekit_config(paths, method), target)
    merge_s = time.perf_counter() - t
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.bfloat16)
    load_s = time.perf_counter() - t
    tokenizer = AutoTokenizer.from_pretrained(str(paths["base"]))
    generate_s = _generate_hf(model, tokenizer, prompts())
    shutil.rmtree(target, ignore_errors=True)
    return {"merge_s": merge_s, "load_s": load_s, "generate_s": generate_s}


def part_mergekit_api(paths: dict[str, Path], method: str) -> dict:
    from mergekit.merge_methods.api import merge_state_dicts

    from evomerge.io.hf import load_model
    from evomerge.io.sources import open_source

    model = load_model(paths["base"], dtype=torch.bfloat16)
    states = {}
    for n in paths:
        src = open_source(n, paths)
        states[n] = {k: src.get(k) for k in src.tensor_names()}  # memory-mapped, as evomerge's
    params = parameters(method, 0)
    ids = [f"expert{e}" for e in range(3)]
    per_input = {key: {i: p[key] for i, p in zip(ids, params, strict=True)} for key in params[0]}
    if method == "linear":  # the base is one of the averaged inputs, as in mergekit_config
        per_input["weight"]["base"] = 0.25
    t = time.perf_counter()
    merged = merge_state_dicts(states, method, parameters=per_input, base=None if method == "linear" else "base",
                               out_dtype=torch.bfloat16)
    model.load_state_dict(merged, strict=False)
    return {"merge_s": time.perf_counter() - t}


# -- the driver ----------------------------------------------------------------------------------


def _run_part(args: list[str]) -> dict:
    run = subprocess.run([sys.executable, __file__, "--part", *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"scale_1b: part {args[0]} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def check_machine(root: Path, scratch: Path) -> None:
    """Refuse before any work where this machine cannot hold the benchmark."""
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total = int(next(ln.split()[1] for ln in meminfo if ln.startswith("MemTotal"))) << 10
    if total < NEED_MEMORY:
        raise SystemExit(f"scale_1b: needs {NEED_MEMORY >> 30} GiB of memory (mergekit's in-memory API holds "
                         f"its outputs beside a loaded model); this machine has {total / 2**30:.1f} GiB.")
    scratch.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(scratch).free
    if free < 3 * 10**9:
        raise SystemExit(f"scale_1b: mergekit's on-disk loop writes a 2.5 GB model under {scratch}; "
                         f"{free / 1e9:.1f} GB are free there. Free some space or pass --scratch.")


def spread(xs: list[float]) -> str:
    return f"{min(xs):7.2f} / {statistics.median(xs):7.2f} / {max(xs):7.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--root", type=Path, default=family_1b.ROOT)
    ap.add_argument("--scratch", type=Path, default=WORK)
    ap.add_argument("--shape", choices=sorted(family_1b.SHAPES), default="1b", help="tiny: a check of the script")
    ap.add_argument("--skip-mergekit", action="store_true")
    ap.add_argument("--part", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    methods = args.methods.split(",")
    if args.part:  # inside a subprocess
        paths = family_1b.make_family(args.root, shape=args.shape, log=lambda s: None)
        kind = args.part[0]
        result = (part_evomerge(paths, methods, args.repeats) if kind == "evomerge"
                  else part_mergekit_disk(paths, args.part[1], args.scratch) if kind == "disk"
                  else part_mergekit_api(paths, args.part[1]))
        print(json.dumps(result))
        return
    check_machine(args.root, args.scratch)
    paths = family_1b.make_family(args.root, shape=args.shape)
    started = time.perf_counter()
    common = ["--methods", args.methods, "--repeats", str(args.repeats), "--root", str(args.root),
              "--scratch", str(args.scratch), "--shape", args.shape]
    evo = _run_part(["evomerge", *common])
    print(f"evomerge worker: sources opened and base loaded in {evo['start_s']:.1f} s; peak RssAnon "
          f"{evo['anon_peak'] / 1e9:.2f} GB, RssFile {evo['file_peak'] / 1e9:.2f} GB (one model "
          f"{model_bytes(paths['base']) / 1e9:.2f} GB)")
    print(f"{'method':10s} {'evomerge merge s (min/med/max)':>32s} {'disk merge+load s':>18s} {'x':>6s} "
          f"{'API merge s':>12s} {'x':>6s}")
    results = {"evomerge": evo, "disk": {}, "api": {}}
    for method in methods:
        med = statistics.median(evo["merge"][method])
        line = f"{method:10s} {spread(evo['merge'][method]):>32s}"
        if not args.skip_mergekit:
            disk = results["disk"][method] = _run_part(["disk", method, *common])
            api = results["api"][method] = _run_part(["api", method, *common])
            total = disk["merge_s"] + disk["load_s"]
            line += f" {total:18.1f} {total / med:6.1f} {api['merge_s']:12.1f} {api['merge_s'] / med:6.2f}"
        print(line, flush=True)
    for method, times in evo["merge_bf16"].items():
        print(f"{method:10s} {spread(times):>32s}   (evomerge with dtype: bfloat16, mergekit's arithmetic)")
    gen_e, gen_h = evo["generate_evomerge"], evo["generate_hf"]
    print(f"generation, {PROMPTS} prompts x {NEW_TOKENS} new tokens, one batch: evomerge {spread(gen_e)} s, "
          f"transformers generate {spread(gen_h)} s (ratio of medians {statistics.median(gen_h) / statistics.median(gen_e):.2f})")
    if results["disk"]:
        print("on-disk loop's generation (transformers, once a method): "
              + ", ".join(f"{m} {d['generate_s']:.1f} s" for m, d in results["disk"].items()))
    print(f"whole benchmark {(time.perf_counter() - started) / 60:.1f} min")
    out = args.scratch / "results.json"
    with tempfile.NamedTemporaryFile("w", dir=args.scratch, delete=False) as f:
        json.dump(results, f, indent=1)
    Path(f.name).replace(out)


if __name__ == "__main__":
    main()
