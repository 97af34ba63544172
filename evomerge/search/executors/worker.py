"""A worker: the source weights and one resident model, into which each candidate is merged.

No disk, no reloading: ``evaluate`` plans the recipe, fits the resident model's
depth to it, merges in memory and scores every task. Whatever goes wrong with
the recipe or a task (including out-of-memory inside the merge) comes back as an
``Outcome`` with the reason. Executors decide where workers run.
"""

from __future__ import annotations

import time

from evomerge.errors import EvomergeError
from evomerge.eval.anchors import AnchoredLevel
from evomerge.eval.cost import set_output_bytes
from evomerge.search.executors import Outcome, WorkerSpec


class Worker:
    def __init__(self, spec: WorkerSpec, tasks=None) -> None:
        import torch

        from evomerge.eval import load_task
        from evomerge.io.hf import load_causal_lm
        from evomerge.io.sources import model_dir
        from evomerge.merge.in_memory import InMemoryMerger

        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        self.tasks = tasks or [
            load_task(t.name, split=t.split, fitness=True, allow_test_split=t.allow_test_split) for t in spec.tasks
        ]
        self.device = spec.device
        dtype = getattr(torch, spec.dtype) if spec.dtype else None
        self.merger = InMemoryMerger(spec.sources, device=spec.device, dtype=dtype, sources_on=spec.sources_on)
        self.model, self.tokenizer = load_causal_lm(model_dir(spec.base, spec.sources), device=spec.device,
                                                    dtype=dtype or torch.float32,
                                                    trust_remote_code=spec.trust_remote_code)

    def _release_memory(self) -> None:
        import torch

        if str(self.device).startswith("cuda"):
            torch.cuda.empty_cache()

    def evaluate(self, recipe, fidelity) -> Outcome:
        t0 = time.perf_counter()
        try:
            plan = self.merger.plan(recipe)  # built once: it gives the depth and drives the merge
            if plan.num_layers != self.model.config.num_hidden_layers:
                from evomerge.merge.resident import fit_layers

                fit_layers(self.model, plan.num_layers)
            self.merger.merge(recipe, into=self.model, plan=plan)
            # What `cost/bytes` reports: the merge as written (its output dtype), not as held.
            set_output_bytes(self.model, sum(spec.nbytes for spec in plan.specs()))
        except EvomergeError as e:
            return Outcome(None, f"merge failed: {e}", time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - out of memory, a torch error: this trial fails, not the search
            self._release_memory()
            return Outcome(None, f"merge failed: {type(e).__name__}: {e}", time.perf_counter() - t0)
        values: dict[str, float] = {}
        examples: dict[str, dict] = {}
        for task in self.tasks:
            level = fidelity.for_task(task.name) if isinstance(fidelity, AnchoredLevel) else fidelity
            res = task.evaluate(self.model, self.tokenizer, level)  # never raises: failures are values
            if not res.ok:
                self._release_memory()  # an out-of-memory inside the task leaves cached blocks
                return Outcome(None, f"task {task.name} failed: {res.error}", time.perf_counter() - t0)
            values.update({f"{task.name}/{k}": v for k, v in res.values.items()})
            if "per_example" in res.details:
                examples[task.name] = res.details["per_example"]
        return Outcome(values, None, time.perf_counter() - t0, examples or None)
