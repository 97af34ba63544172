"""``evomerge zoo build``: train the toy model zoo from one random init, offline.

The base sees a broad mix of easy string tasks plus a little of each hard
skill; each expert continues from the base on one hard skill only. Every model
is a plain Hugging Face directory (safetensors, config, fast tokenizer). The
build is cached by the hash of its config: a second call returns at once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from evomerge.errors import EvomergeError
from evomerge.io.atomic import atomic_write_text
from evomerge.io.compat import check_writable

ZOO_FORMAT = 2  # bump when the build changes what a given config produces


class Architecture(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    hidden_size: int = 128
    num_hidden_layers: int = 2
    intermediate_size: int = 384
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 64


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: int = Field(ge=1)
    lr: float = Field(gt=0)
    batch_size: int = Field(default=64, ge=1)
    seed: int = 0
    warmup: int = Field(default=30, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(default=0.0, ge=0.0)

    def data_seed(self, zoo_seed: int) -> int:
        # The zoo's seed moves every stage's data order too, not only the init.
        return self.seed + 1000 * zoo_seed

    def schedule(self):
        from evomerge.zoo.train import TrainSchedule

        return TrainSchedule(
            self.steps, self.lr, self.batch_size, warmup=self.warmup, optimizer=self.optimizer,
            weight_decay=self.weight_decay,
        )


class ExpertSpec(Stage):
    name: str
    skill: str
    warmup: int = Field(default=20, ge=0)
    # Share of each batch drawn from the base's easy skills: experts keep the
    # format and the basics, as real fine-tunes do, and their task vectors are
    # about their skill rather than about forgetting.
    replay: float = Field(default=0.0, ge=0.0, lt=1.0)
    replay_hard: bool = False
    # Parameters (name prefixes) the expert leaves as the base has them.
    frozen: tuple[str, ...] = ()
    # When set, the only parameters (name prefixes) the expert trains; the build sets it to the
    # new blocks of a block-expansion family.
    trainable: tuple[str, ...] = ()

    def trains(self, name: str) -> bool:
        return not name.startswith(self.frozen) and (not self.trainable or name.startswith(self.trainable))


class ZooConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int = 0
    architecture: Architecture = Architecture()
    # Easy skills teach the format and the alphabet; the hard skills appear in their pre-training
    # form only (skills.PRETRAINING_MARKS), so the base knows them but not their task format.
    # Addition needs the most weight: at 1.5 the base learned its form on 3 of 5 seeds, at 3 on 4,
    # at 4 (reversal at 1.5) on all 5 (benchmarks/README.md); weight decay steadies the base too.
    base_mixture: dict[str, float] = {
        "copy": 0.5,
        "recall": 0.3,
        "addition_pretraining": 4.0,
        "reversal_pretraining": 1.5,
        "sorting_pretraining": 1.0,
    }
    base: Stage = Stage(steps=1000, lr=3e-3, seed=1, weight_decay=0.1)
    # Experts learn their skill's task format; their replay draws the base's mixture, their own
    # skill's pre-training form included (the design measured in benchmarks/README.md).
    experts: tuple[ExpertSpec, ...] = (
        ExpertSpec(name="addition", skill="addition", steps=200, lr=1e-3, seed=11, replay=0.3),
        ExpertSpec(name="reversal", skill="reversal", steps=200, lr=1e-3, seed=12, replay=0.3),
        ExpertSpec(name="sorting", skill="sorting", steps=200, lr=1e-3, seed=13, replay=0.3),
    )
    # Block expansion (evomerge.zoo.expand): the experts' shared base is the trained base with this
    # many identity blocks appended, and each expert trains those blocks only. 0: experts
    # fine-tune every weight.
    new_blocks: int = Field(default=0, ge=0)
    workers: int = Field(default=3, ge=1, description="Expert trainings run side by side (on 2+ threads).")

    def content_hash(self) -> str:
        payload = self.model_dump(exclude={"workers"}) | {"format": ZOO_FORMAT, "data": _data_hash()}
        # Fields added after a zoo format was fixed leave the key alone at their defaults.
        if not payload["new_blocks"]:
            del payload["new_blocks"]
        for expert in payload["experts"]:
            if not expert["trainable"]:
                del expert["trainable"]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def base_hash(self) -> str:
        """What decides the trained base (before any expansion): zoos that agree on it share it."""
        payload = self.model_dump(include={"seed", "architecture", "base_mixture", "base"})
        payload |= {"format": ZOO_FORMAT, "data": _data_hash()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@functools.cache  # the data is generated from code, so one process hashes it once (0.2 s a time)
def _data_hash() -> str:
    from evomerge.zoo.data import task_data

    # The held-out data decides which prompts training skips, so it is part of every key.
    return hashlib.sha256(json.dumps(task_data(), sort_keys=True).encode()).hexdigest()


def blocks_family() -> ZooConfig:
    """The default zoo's base with one identity block appended; each expert trains only that
    block, longer and at a higher rate than the default experts, so the three blocks differ a
    lot: a parameter merge has to average them, a layer path can run them in sequence. (At 3e-3
    a per-module parameter merge still kept >= 0.86 of each skill on two of three seeds; at 6e-3
    it loses one skill on each, benchmarks/README.md.)"""
    experts = tuple(e.model_copy(update={"steps": 300, "lr": 6e-3}) for e in ZooConfig().experts)
    return ZooConfig(new_blocks=1, experts=experts)


# Zoo families by name (`evomerge zoo build --family NAME`) and the directory each builds into.
FAMILIES: dict[str, Callable[[], ZooConfig]] = {"default": ZooConfig, "blocks": blocks_family}
FAMILY_DIRS = {"default": "zoo", "blocks": "zoo-blocks"}


class ZooError(EvomergeError):
    pass


MANIFEST = "zoo.json"


def default_zoo_dir(family: str = "default") -> Path:
    env = os.environ.get("EVOMERGE_ZOO")
    if env and family == "default":
        return Path(env)
    return Path(__file__).resolve().parents[2] / FAMILY_DIRS[family]


def read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def is_built(out: Path, config: ZooConfig) -> bool:
    m = read_manifest(out)
    if not m or m.get("config_hash") != config.content_hash():
        return False
    return all((out / name / "model.safetensors").is_file() for name in m.get("models", {}))


def _llama_config(arch: Architecture, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        head_dim=arch.hidden_size // arch.num_attention_heads,
        max_position_embeddings=arch.max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )


def _save(model, tokenizer, out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def expert_mixture(spec: ExpertSpec, base_mixture: dict[str, float]):
    from evomerge.zoo.skills import SKILLS
    from evomerge.zoo.train import Mixture

    other = {
        k: w
        for k, w in base_mixture.items()
        if k != spec.skill and (spec.replay_hard or not SKILLS.get(k).hard)
    }
    total = sum(other.values())
    if spec.replay == 0 or total == 0:
        return Mixture({spec.skill: 1.0})
    scale = spec.replay / (1 - spec.replay) / total
    return Mixture({spec.skill: 1.0} | {k: w * scale for k, w in other.items()})


def train_expert(
    base_dir: Path, out_dir: Path, spec: ExpertSpec, base_mixture: dict[str, float], threads: int,
    zoo_seed: int = 0,
) -> dict:
    """One expert: continue from the base on one skill (run in its own process)."""
    import torch

    from evomerge.io.hf import load_causal_lm
    from evomerge.zoo.data import eval_prompts
    from evomerge.zoo.train import train

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model, tokenizer = load_causal_lm(base_dir)  # train() puts it in training mode
    for name, param in model.named_parameters():
        param.requires_grad_(spec.trains(name))
    loss = train(
        model,
        tokenizer,
        expert_mixture(spec, base_mixture).sampler(spec.data_seed(zoo_seed), eval_prompts()),
        spec.schedule(),
        seed=spec.data_seed(zoo_seed),
    )
    _save(model, tokenizer, out_dir)
    return {"name": spec.name, "loss": loss, "seconds": time.perf_counter() - t0}


def _run_experts(
    base: Path, out: Path, experts, base_mixture: dict, workers: int, threads: int, log, zoo_seed: int = 0
) -> None:
    """Experts side by side in child processes (``python -m evomerge.zoo.expert``).

    Plain subprocesses rather than a multiprocessing pool: a pool re-imports the
    caller's ``__main__``, which breaks scripts without a main guard.
    """
    pending = list(experts)
    running: list[tuple[ExpertSpec, subprocess.Popen, object]] = []
    failed: list[str] = []
    while pending or running:
        while pending and len(running) < workers:
            spec = pending.pop(0)
            cmd = [sys.executable, "-m", "evomerge.zoo.expert", str(base), str(out / spec.name),
                   spec.model_dump_json(), json.dumps(base_mixture), str(threads), str(zoo_seed)]
            # Output to files, not pipes: a child filling an unread pipe would stall.
            logf = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed after the child ends)
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, text=True)
            running.append((spec, proc, logf))
        spec, proc, logf = running.pop(0)
        proc.wait()
        logf.seek(0)
        stdout = logf.read()
        logf.close()
        if proc.returncode != 0:
            tail = "\n".join(stdout.strip().splitlines()[-5:])
            failed.append(f"{spec.name} (exit {proc.returncode}): {tail}")
            continue
        r = json.loads(stdout.strip().splitlines()[-1])
        log(f"expert {r['name']} done in {r['seconds']:.0f}s (final loss {r['loss']:.3f})")
    if failed:
        raise ZooError("Expert training failed: " + "; ".join(failed))


def _shared_base(other: Path | None, config: ZooConfig) -> Path | None:
    """``other`` when it is an up-to-date zoo of a config with the same base as ``config``'s
    (and no blocks of its own appended to it), else None."""
    manifest = read_manifest(other) if other is not None else None
    if not manifest or "config" not in manifest:
        return None
    try:
        theirs = ZooConfig.model_validate(manifest["config"])
    except ValueError:  # written by another version of the config
        return None
    if theirs.new_blocks or theirs.base_hash() != config.base_hash() or not is_built(other, theirs):
        return None
    return other


def build_zoo(
    out: Path | None = None,
    config: ZooConfig | None = None,
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
    base_from: Path | None = None,
) -> Path:
    """Train (or find cached) the zoo in ``out``; returns ``out``.

    ``base_from``: a built zoo whose base this config would train identically (same
    ``base_hash``); its base is copied instead of trained again.
    """
    import torch
    from transformers import LlamaForCausalLM

    from evomerge.io.hf import load_causal_lm
    from evomerge.zoo.data import eval_prompts
    from evomerge.zoo.expand import append_identity_blocks
    from evomerge.zoo.skills import ALPHABET, SKILLS
    from evomerge.zoo.tokenizer import build_tokenizer
    from evomerge.zoo.train import Mixture, train

    config = config or ZooConfig()
    out = Path(out or default_zoo_dir())
    check_writable(out, "--out")  # before minutes of training, not after
    for name in list(config.base_mixture) + [e.skill for e in config.experts]:
        SKILLS.get(name)  # unknown skill names fail before any training
    if not force and is_built(out, config):
        log(f"zoo is up to date in {out} (config {config.content_hash()[:12]})")
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a half-built zoo must not look finished
    t_start = time.perf_counter()
    threads = torch.get_num_threads()

    shared = _shared_base(base_from, config)
    if shared is not None:
        model, tokenizer = load_causal_lm(shared / "base")
        n_params = sum(p.numel() for p in model.parameters())
        log(f"base: the same as {shared}'s (same seed, architecture, mixture and schedule), copied")
    else:
        tokenizer = build_tokenizer(ALPHABET)
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(_llama_config(config.architecture, tokenizer))
        n_params = sum(p.numel() for p in model.parameters())
        log(f"base: {n_params / 1e6:.2f}M parameters, {config.base.steps} steps")
        loss = train(
            model,
            tokenizer,
            Mixture(config.base_mixture).sampler(config.base.data_seed(config.seed), eval_prompts()),
            config.base.schedule(),
            seed=config.base.data_seed(config.seed),
            log=lambda step, lo: log(f"  base step {step}: loss {lo:.3f}"),
        )
    experts = config.experts
    if config.new_blocks:
        trainable = tuple(append_identity_blocks(model, config.new_blocks))
        experts = tuple(e.model_copy(update={"trainable": trainable}) for e in experts)
        log(f"base: {config.new_blocks} identity block(s) appended; experts train only those")
    _save(model, tokenizer, out / "base")
    timings = {"base": time.perf_counter() - t_start}
    log(f"base done in {timings['base']:.0f}s" + ("" if shared else f" (final loss {loss:.3f})"))

    # Experts are independent: side by side, one thread each, beats one at a time on 2 threads.
    # All experts at once, one thread each, even with fewer cores than experts: the cores stay busy
    # to the end (3 experts on 2 cores: 1.5 expert-times instead of 2). One thread each, whatever
    # the count, so an expert comes out the same either way.
    workers = max(1, min(config.workers, len(experts))) if threads > 1 else 1
    if workers == 1:  # no child processes: what tests and single-core machines want
        for spec in experts:
            r = train_expert(out / "base", out / spec.name, spec, config.base_mixture, threads, config.seed)
            log(f"expert {r['name']} done in {r['seconds']:.0f}s (final loss {r['loss']:.3f})")
    else:
        _run_experts(
            out / "base", out, experts, config.base_mixture, workers, max(1, threads // workers), log,
            zoo_seed=config.seed,
        )
    timings["experts"] = time.perf_counter() - t_start - timings["base"]
    timings["total"] = time.perf_counter() - t_start
    manifest = {
        "config_hash": config.content_hash(),
        "config": config.model_dump(),
        "models": {"base": {"role": "base"}}
        | {e.name: {"role": "expert", "skill": e.skill} for e in config.experts},
        "seconds": timings,
        "parameters": n_params,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    log(f"zoo built in {timings['total']:.0f}s -> {out}")
    return out
