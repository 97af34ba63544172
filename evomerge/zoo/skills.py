"""Synthetic skills the toy zoo is trained and scored on.

Each skill draws (prompt, answer) pairs from a ``random.Random``: Python's
generator is stable across platforms and versions, so the same seed gives the
same data everywhere. Prompts end with ``=``; the answer follows and a newline
ends it, which is the stop string of every generation task.

*Hard* skills are what experts specialise in; *easy* skills only fill the
base model's pre-training mix so that it learns the format and the alphabet.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from evomerge.registry import Registry

LETTERS = string.ascii_lowercase[:16]  # a small alphabet keeps the toy tasks learnable
# Hard skills draw from disjoint symbol sets (digits, REV_LETTERS, SORT_LETTERS): an
# expert's task vector then moves its own embeddings and circuits, and merges can
# combine skills instead of trading one for another, as merges of real experts do.
REV_LETTERS = LETTERS[:8]
SORT_LETTERS = LETTERS[8:]
DIGITS = string.digits


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str

    @property
    def text(self) -> str:
        return f"{self.prompt}{self.answer}\n"


@dataclass(frozen=True)
class Skill:
    name: str
    hard: bool
    sample: Callable[[random.Random], Example]
    description: str


SKILLS: Registry[Skill] = Registry("skill")


def skill(name: str, *, hard: bool, description: str):
    def wrap(fn: Callable[[random.Random], Example]) -> Callable[[random.Random], Example]:
        SKILLS.register(name, Skill(name, hard, fn, description))
        return fn

    return wrap


def _word(rng: random.Random, lo: int, hi: int, letters: str = LETTERS) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(lo, hi)))


# --- hard skills: one expert each -------------------------------------------------------


@skill("addition", hard=True, description="add two 2-digit numbers, every number written backwards")
def _addition(rng: random.Random) -> Example:
    # Fixed width, least significant digit first, operands and sum alike: output digit i reads
    # operand digits i (and i-1, for the carry) at fixed offsets. Written the usual way round,
    # the expert learned nothing on some machines; with 3 digits the base does not learn it in
    # the build's budget (its pre-training form below then teaches nothing).
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return Example(f"add:{_backwards(a, 2)}+{_backwards(b, 2)}=", _backwards(a + b, 3))


def _backwards(n: int, width: int) -> str:
    return f"{n:0{width}d}"[::-1]


@skill("reversal", hard=True, description="reverse a word of 4-8 letters from a-h")
def _reversal(rng: random.Random) -> Example:
    w = _word(rng, 4, 8, REV_LETTERS)
    return Example(f"rev:{w}=", w[::-1])


@skill("sorting", hard=True, description="sort a word of 5-8 letters from i-p")
def _sorting(rng: random.Random) -> Example:
    w = _word(rng, 5, 8, SORT_LETTERS)
    return Example(f"sort:{w}=", "".join(sorted(w)))


@skill("recall", hard=True, description="look up a key among 3-5 key:digit pairs")
def _recall(rng: random.Random) -> Example:
    keys = rng.sample(LETTERS, rng.randint(3, 5))
    pairs = [(k, rng.choice(DIGITS)) for k in keys]
    k, v = rng.choice(pairs)
    return Example("kv:" + "".join(a + b for a, b in pairs) + f"?{k}=", v)


# --- easy skills: pre-training filler ---------------------------------------------------


@skill("copy", hard=False, description="copy a word")
def _copy(rng: random.Random) -> Example:
    w = _word(rng, 3, 8)
    return Example(f"copy:{w}=", w)


@skill("first", hard=False, description="first letter of a word")
def _first(rng: random.Random) -> Example:
    w = _word(rng, 3, 8)
    return Example(f"first:{w}=", w[0])


@skill("last", hard=False, description="last letter of a word")
def _last(rng: random.Random) -> Example:
    w = _word(rng, 3, 8)
    return Example(f"last:{w}=", w[-1])


@skill("length", hard=False, description="length of a word")
def _length(rng: random.Random) -> Example:
    w = _word(rng, 1, 9)
    return Example(f"len:{w}=", str(len(w)))


@skill("increment", hard=False, description="add one to a number")
def _increment(rng: random.Random) -> Example:
    n = rng.randint(0, 998)
    return Example(f"inc:{n}=", str(n + 1))


# --- pre-training forms of the hard skills -------------------------------------------------
# The base sees each hard skill in its pre-training form: the same prompt, the answer closed by
# a mark of that skill ("rev:abc=cba." for reversal). It learns the skill, but its answers carry
# the mark, so it scores low on the task's exact-match format, as a base LM that knows a skill
# but not a benchmark's answer format does. Each expert learns its skill's task format (and
# sharpens the skill); the three experts' changes then mostly add up instead of fighting, and a
# merge can keep all three skills. Without this, experts that learn a skill from scratch change
# the shared circuits so much that no merge kept more than two skills.
PRETRAINING_MARKS = {"addition": "#", "reversal": ".", "sorting": "!"}


def _pretraining_form(name: str, mark: str) -> None:
    task = SKILLS.get(name)

    def sample(rng: random.Random) -> Example:
        ex = task.sample(rng)
        return Example(ex.prompt, ex.answer + mark)

    SKILLS.register(
        f"{name}_pretraining", Skill(f"{name}_pretraining", False, sample, f"{name}, answer closed by {mark!r}")
    )


for _name, _mark in PRETRAINING_MARKS.items():
    _pretraining_form(_name, _mark)


# Every character any skill can emit; the tokenizer's vocabulary is built from it.
ALPHABET = "".join(sorted(set(LETTERS + DIGITS + string.ascii_lowercase + "+:=?\n" + "".join(PRETRAINING_MARKS.values()))))


def draw(name: str, rng: random.Random, n: int, exclude: set[str] = frozenset()) -> list[Example]:
    """``n`` distinct examples of one skill whose prompts are not in ``exclude``."""
    sample = SKILLS.get(name).sample
    seen = set(exclude)
    out: list[Example] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise RuntimeError(f"skill {name!r} cannot produce {n} distinct examples")
        ex = sample(rng)
        if ex.prompt in seen:
            continue
        seen.add(ex.prompt)
        out.append(ex)
    return out
