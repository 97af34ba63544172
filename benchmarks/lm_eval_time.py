"""Time per candidate of an lm-eval objective: evomerge's in-memory scoring against lm-eval's own
path (the candidate written to disk, then ``HFLM(pretrained=DIR)`` and ``simple_evaluate``, as
mergekit-evolve scores it), on the same tasks and the same model, checking the scores agree.

Tasks: the test world's ``evo_gen`` (generate-until, 2-shot, chat template, multi-turn; 24
validation documents) and ``evo_mc`` (multiple choice, 1-shot; 20 search documents), registered by
name through include_path (``evomerge.testing.lm_eval_tasks``). Model: a random Llama over the
zoo's character tokenizer, of ``--hidden``/``--layers``. The lm-eval side includes writing the
model (safetensors) and loading it, as each mergekit-evolve candidate does; the task index is built
before timing on both sides. Prints min / median / max seconds over ``--runs``::

    python benchmarks/lm_eval_time.py [--runs 5] [--hidden 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    from evomerge.eval import load_task
    from evomerge.testing.lm_eval_tasks import CHAT_TEMPLATE, write_registry_tasks
    from evomerge.testing.models import tiny_char_lm

    root = Path(tempfile.mkdtemp(prefix="lm_eval_time_"))
    include = write_registry_tasks(root)
    model, tokenizer = tiny_char_lm(seed=3, layers=args.layers, hidden=args.hidden)
    tokenizer.chat_template = CHAT_TEMPLATE
    params = sum(p.numel() for p in model.parameters())
    kinds = {
        "evo_gen": ({"num_fewshot": 2, "apply_chat_template": True, "fewshot_as_multiturn": True}, "exact_match"),
        "evo_mc": ({"num_fewshot": 1}, "acc"),
    }
    tm = TaskManager(include_path=[str(include)], include_defaults=False)
    print(f"model: Llama, hidden {args.hidden}, {args.layers} layers, {params / 1e6:.2f}M parameters, float32, CPU, "
          f"{os.cpu_count()} cores")
    for name, (options, metric) in kinds.items():
        ref = "lm_eval:" + json.dumps({"task": name, "include_path": [str(include)], "batch_size": 8, **options})
        task = load_task(ref)
        ours, theirs, agree = [], [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            res = task.evaluate(model, tokenizer)
            ours.append(time.perf_counter() - t0)
            out = root / "candidate"
            t0 = time.perf_counter()
            model.save_pretrained(str(out))
            tokenizer.save_pretrained(str(out))
            spec = load_yaml(include / f"{name}.yaml")
            if name == "evo_gen":
                spec = {**spec, "test_split": "validation"}
                samples = None
            else:
                from evomerge.eval.lm_eval_splits import partition

                samples = {name: partition(40, 0, 0.5, name)[0]}
            got = lm_eval.simple_evaluate(model=HFLM(pretrained=str(out), batch_size=8, device="cpu"), tasks=[spec],
                                          task_manager=tm, samples=samples, bootstrap_iters=0, log_samples=False,
                                          **options)
            theirs.append(time.perf_counter() - t0)
            agree.append((res.values[metric], got["results"][name][f"{metric},none"]))

        def fmt(xs):
            return f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f} s"

        print(f"{name} ({res.n_examples} documents): evomerge in memory {fmt(ours)}; lm-eval from disk {fmt(theirs)}; "
              f"ratio of medians {statistics.median(theirs) / statistics.median(ours):.2f}; scores (ours, lm-eval's): "
              f"{sorted(set(agree))}, agree within 1e-4: {all(abs(a - b) <= 1e-4 for a, b in agree)}")


if __name__ == "__main__":
    main()
