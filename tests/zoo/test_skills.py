from __future__ import annotations

import random

from evomerge.zoo.skills import ALPHABET, SKILLS, draw
from evomerge.zoo.tokenizer import build_tokenizer


def test_skills_answer_correctly():
    rng = random.Random(0)
    for _ in range(50):
        a = SKILLS.get("addition").sample(rng)
        x, y = a.prompt.removeprefix("add:").removesuffix("=").split("+")
        assert len(x) == len(y) == 2 and len(a.answer) == 3
        assert int(a.answer[::-1]) == int(x[::-1]) + int(y[::-1])
        r = SKILLS.get("reversal").sample(rng)
        assert r.answer == r.prompt.removeprefix("rev:").removesuffix("=")[::-1]
        s = SKILLS.get("sorting").sample(rng)
        assert s.answer == "".join(sorted(s.prompt.removeprefix("sort:").removesuffix("=")))
        k = SKILLS.get("recall").sample(rng)
        body, key = k.prompt.removeprefix("kv:").removesuffix("=").split("?")
        assert dict(zip(body[::2], body[1::2], strict=True))[key] == k.answer


def test_pretraining_forms_close_the_task_answer_with_their_skill_mark():
    from evomerge.zoo.skills import PRETRAINING_MARKS

    assert len(set(PRETRAINING_MARKS.values())) == len(PRETRAINING_MARKS)  # one mark per skill
    for name, mark in PRETRAINING_MARKS.items():
        task, pre = SKILLS.get(name), SKILLS.get(f"{name}_pretraining")
        assert task.hard and not pre.hard
        t, p = task.sample(random.Random(3)), pre.sample(random.Random(3))
        assert p.prompt == t.prompt and p.answer == t.answer + mark


def test_draw_is_deterministic_distinct_and_excludes():
    a = draw("reversal", random.Random(5), 100)
    b = draw("reversal", random.Random(5), 100)
    assert a == b and len({e.prompt for e in a}) == 100
    c = draw("reversal", random.Random(6), 50, exclude={e.prompt for e in a})
    assert not {e.prompt for e in c} & {e.prompt for e in a}


def test_char_tokenizer_round_trips_every_skill():
    tok = build_tokenizer(ALPHABET)
    rng = random.Random(1)
    for name in SKILLS.names():
        ex = SKILLS.get(name).sample(rng)
        ids = tok(ex.text)["input_ids"]
        assert ids[0] == tok.bos_token_id and len(ids) == len(ex.text) + 1
        assert tok.decode(ids, skip_special_tokens=True) == ex.text

