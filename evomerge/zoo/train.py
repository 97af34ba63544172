"""Training loop for the toy zoo: small batches of skill examples, loss on answers only."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from evomerge.zoo.skills import SKILLS, Example


@dataclass(frozen=True)
class Mixture:
    """Sampling weights over skills; prompts in ``exclude`` (the eval splits) are never drawn."""

    weights: dict[str, float]

    def sampler(self, seed: int, exclude: set[str]) -> Callable[[], Example]:
        rng = random.Random(seed)
        names = list(self.weights)
        w = [self.weights[n] for n in names]
        samples = [SKILLS.get(n).sample for n in names]

        def draw() -> Example:
            while True:
                ex = samples[rng.choices(range(len(names)), w)[0]](rng)
                if ex.prompt not in exclude:
                    return ex

        return draw


def encode_batch(
    tokenizer, examples: Sequence[Example]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (-100 on prompt and padding)."""
    # One tokenizer call per batch, not per example: a tenth of a base step was spent here.
    prompts = tokenizer([ex.prompt for ex in examples])["input_ids"]  # with <s>
    answers = tokenizer([ex.answer + "\n" for ex in examples], add_special_tokens=False)["input_ids"]
    width = max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))
    pad = tokenizer.pad_token_id
    ids, labels, mask = [], [], []
    for p, a in zip(prompts, answers, strict=True):
        n = len(p) + len(a)
        ids.append(p + a + [pad] * (width - n))
        labels.append([-100] * len(p) + a + [-100] * (width - n))
        mask.append([1] * n + [0] * (width - n))
    return torch.tensor(ids), torch.tensor(mask), torch.tensor(labels)


@dataclass(frozen=True)
class TrainSchedule:
    steps: int
    lr: float
    batch_size: int = 64
    warmup: int = 30
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # or "sgd" (with momentum 0.9)


def train(
    model,
    tokenizer,
    draw: Callable[[], Example],
    schedule: TrainSchedule,
    seed: int,
    log: Callable[[int, float], None] | None = None,
) -> float:
    """Train ``model`` in place; returns the mean loss of the last 10% of steps."""
    torch.manual_seed(seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if schedule.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=schedule.lr, momentum=0.9, weight_decay=schedule.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=schedule.lr, betas=(0.9, 0.98), weight_decay=schedule.weight_decay)

    def lr_at(step: int) -> float:
        if step < schedule.warmup:
            return (step + 1) / schedule.warmup
        t = (step - schedule.warmup) / max(1, schedule.steps - schedule.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    tail: list[float] = []
    for step in range(schedule.steps):
        ids, _, labels = encode_batch(tokenizer, [draw() for _ in range(schedule.batch_size)])
        # Right padding under causal attention: no mask needed, and the masked path is 2x slower.
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step >= schedule.steps * 0.9:
            tail.append(loss.item())
        if log is not None and (step % 100 == 0 or step == schedule.steps - 1):
            log(step, loss.item())
    model.eval()
    return sum(tail) / max(1, len(tail))
