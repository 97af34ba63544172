"""Merges onto an output vocabulary (`tokenizer_source`, the `tokenizer:` block) and
`chat_template` equal mergekit's, on tiny Llamas whose tokenizers differ (make_vocab_family:
extra ordinary and added tokens, shared tokens at other ids)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mergekit_ref import load_dir, run_mergekit
from transformers import AutoTokenizer

from evomerge.errors import CheckpointError, RecipeError
from evomerge.io.tokenizer import CHAT_TEMPLATES
from evomerge.merge.engine import merge_to_disk
from evomerge.recipe import Recipe
from evomerge.testing import make_vocab_family, save_word_tokenizer
from evomerge.testing.models import VOCAB_FAMILY


@pytest.fixture(scope="module", params=["untied", "tied"])
def fam(request, tmp_path_factory) -> dict[str, str]:
    paths = make_vocab_family(tmp_path_factory.mktemp(request.param), tied=request.param == "tied")
    return {k: str(v) for k, v in paths.items()}


CASES = {
    "union_ties": lambda m: {
        "merge_method": "ties", "base_model": m["base"], "tokenizer_source": "union",
        "models": [{"model": m[n], "parameters": {"weight": 0.5, "density": 0.7}} for n in ("base", "a", "b")],
    },
    "union_linear_no_base": lambda m: {
        "merge_method": "linear", "tokenizer": {"source": "union"},
        "models": [{"model": m[n], "parameters": {"weight": 0.5}} for n in ("a", "b")],
    },
    "tokens_and_padding": lambda m: {
        "merge_method": "task_arithmetic", "base_model": m["base"],
        "models": [{"model": m["a"], "parameters": {"weight": 0.7}}, {"model": m["b"], "parameters": {"weight": 0.4}}],
        "tokenizer": {"source": "union", "pad_to_multiple_of": 8, "tokens": {
            "<x>": {"source": m["b"]},
            "alpha": {"source": m["a"], "force": True},
            "gamma": {"source": {"kind": "zero"}},
            "w5": {"source": {"kind": "model_token", "model": m["b"], "token": "w7"}, "force": True},
            "<new>": {"source": {"kind": "model_token", "model": m["base"], "token_id": 3}},
        }},
    },
    "base_source": lambda m: {
        "merge_method": "linear", "base_model": m["base"], "tokenizer_source": "base",
        "models": [{"model": m[n], "parameters": {"weight": 0.5}} for n in ("base", "b")],
    },
    "model_source": lambda m: {
        "merge_method": "slerp", "base_model": m["a"], "tokenizer_source": m["b"],
        "models": [{"model": m["a"]}, {"model": m["b"]}], "parameters": {"t": 0.3},
    },
}


def _vocab(path: Path) -> dict[str, int]:
    return AutoTokenizer.from_pretrained(str(path)).get_vocab()


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_mergekit(case, fam, tmp_path):
    config = CASES[case](fam)
    expected = run_mergekit(config, tmp_path / "mk")
    out = merge_to_disk(Recipe.from_dict(config), tmp_path / "ev").out
    got = load_dir(out)
    theirs, ours = _vocab(tmp_path / "mk"), _vocab(out)
    # mergekit numbers the tokens it appends in hash order (a new order every run): the same
    # tokens, compared row by token; evomerge's ids are those of the base, then first mention.
    assert set(ours) == set(theirs)
    assert sorted(got) == sorted(expected)
    ids_ours = torch.tensor([ours[t] for t in ours])
    ids_theirs = torch.tensor([theirs[t] for t in ours])
    for name, ref in expected.items():
        assert got[name].shape == ref.shape and got[name].dtype == ref.dtype, name
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            pairs = [(got[name][ids_ours], ref[ids_theirs]), (got[name][len(ours):], ref[len(theirs):])]
        else:
            pairs = [(got[name], ref)]
        for a, b in pairs:
            assert (a - b).abs().max().item() <= 1e-6 if a.numel() else True, f"{case}: {name}"
    config_out = json.loads((out / "config.json").read_text())
    assert config_out["vocab_size"] == json.loads((tmp_path / "mk" / "config.json").read_text())["vocab_size"]
    assert config_out["vocab_size"] == got["model.embed_tokens.weight"].shape[0]


def test_union_vocabulary_and_rows_by_hand(fam, tmp_path):
    base, a, b = fam["base"], fam["a"], fam["b"]
    recipe = Recipe.from_dict({"merge_method": "linear", "base_model": base, "tokenizer_source": "union",
                               "models": [{"model": m, "parameters": {"weight": 1.0}} for m in (base, a, b)]})
    out = merge_to_disk(recipe, tmp_path / "ev").out
    vocab = _vocab(out)
    words, added = VOCAB_FAMILY["base"]
    # The base's ids, then the others' ordinary tokens, then their added tokens, in model order.
    expected_order = [*words, "alpha", "beta", "gamma", "<tool>", "<x>"]
    assert sorted(vocab, key=vocab.get) == expected_order
    got = load_dir(out)["model.embed_tokens.weight"]
    rows = {n: load_dir(Path(fam[n]))["model.embed_tokens.weight"] for n in ("base", "a", "b")}
    own = {n: {t: i for i, t in enumerate([*VOCAB_FAMILY[n][0], *VOCAB_FAMILY[n][1]])} for n in rows}

    def row(n, t):
        return rows[n][own[n][t]]
    # Everyone has w3: the plain mean of the three rows (linear, weights 1).
    w3 = (row("base", "w3") + row("a", "w3") + row("b", "w3")) / 3
    assert torch.allclose(got[vocab["w3"]], w3, atol=1e-7)
    # Only a has alpha: every model's row is a's.
    assert torch.allclose(got[vocab["alpha"]], row("a", "alpha"), atol=1e-7)
    # a and b have beta, the base lacks it: the base's row is their mean, so the merge is too.
    assert torch.allclose(got[vocab["beta"]], (row("a", "beta") + row("b", "beta")) / 2, atol=1e-7)


def test_mismatched_vocabularies_without_a_source_are_refused(fam, tmp_path):
    recipe = Recipe.from_dict({"merge_method": "linear", "models": [{"model": fam["a"]}, {"model": fam["b"]}]})
    with pytest.raises(CheckpointError, match="tokenizer_source: union"):
        merge_to_disk(recipe, tmp_path / "ev")


def test_union_needs_local_tokenizers(untied_family, tmp_path):
    recipe = Recipe.from_dict({"merge_method": "linear", "tokenizer_source": "union",
                               "models": [{"model": str(untied_family["base"])}, {"model": str(untied_family["expert0"])}]})
    with pytest.raises(CheckpointError, match="downloads nothing"):
        merge_to_disk(recipe, tmp_path / "ev")


def test_token_source_lacking_the_token_is_named(fam, tmp_path):
    recipe = Recipe.from_dict({"merge_method": "linear", "parameters": {"weight": 1.0},
                               "models": [{"model": fam["a"]}, {"model": fam["b"]}],
                               "tokenizer": {"tokens": {"<x>": {"source": fam["a"]}}}})
    with pytest.raises(RecipeError, match=r"tokenizer.tokens\['<x>'\].*lacks '<x>'"):
        merge_to_disk(recipe, tmp_path / "ev")


def test_tokenizer_source_and_block_together_are_refused():
    with pytest.raises(RecipeError, match="not both"):
        Recipe.from_dict({"merge_method": "linear", "models": [{"model": "a"}],
                          "tokenizer_source": "base", "tokenizer": {"source": "union"}})


# -- chat_template ---------------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": " Hi there "},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Add 2 and 3."},
]


@pytest.fixture(scope="module")
def template_tok(tmp_path_factory):
    path = save_word_tokenizer(tmp_path_factory.mktemp("tok"), ["<unk>", "<s>", "</s>", "w"])
    return AutoTokenizer.from_pretrained(str(path))


def test_exaone_template_by_hand(template_tok):
    # mergekit's exaone.jinja renders its own indentation into the prompt; this one does not.
    text = template_tok.apply_chat_template(CONVERSATION[1:3], chat_template=CHAT_TEMPLATES["exaone"],
                                            tokenize=False, add_generation_prompt=True)
    assert text == "[|system|][|endofturn|]\n[|user|] Hi there \n[|assistant|]Hello.[|endofturn|]\n[|assistant|]"


@pytest.mark.parametrize("name", sorted(set(CHAT_TEMPLATES) - {"exaone"}))
def test_named_templates_render_as_mergekits(name, template_tok):
    from importlib.resources import files

    from jinja2.exceptions import TemplateError
    from mergekit._data import chat_templates

    tok = template_tok
    theirs = files(chat_templates).joinpath(f"{name}.jinja").read_text()
    conversations = [CONVERSATION, CONVERSATION[1:], CONVERSATION[:3], [CONVERSATION[0], CONVERSATION[2]]]
    for messages in conversations:
        for prompt in (False, True):
            results = []
            for template in (CHAT_TEMPLATES[name], theirs):
                try:
                    results.append(tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                           add_generation_prompt=prompt))
                except TemplateError as err:
                    results.append(f"error: {err}")
            assert results[0] == results[1], (name, messages, prompt)


@pytest.mark.parametrize("template", ["chatml", "auto", "{% for m in messages %}{{ m['content'] }}{% endfor %}"])
def test_chat_template_matches_mergekit(template, fam, tmp_path):
    # "auto": the template most models carry; give b one (a copy of b with a template).
    config = CASES["union_ties"](fam)
    config["chat_template"] = template
    if template == "auto":
        (tmp_path / "b").mkdir()
        for f in Path(fam["b"]).iterdir():
            (tmp_path / "b" / f.name).write_bytes(f.read_bytes())
        save_word_tokenizer(tmp_path / "b", *VOCAB_FAMILY["b"], chat_template="{{ 'auto template ' }}{{ messages }}")
        config["models"][2]["model"] = str(tmp_path / "b")
    run_mergekit(config, tmp_path / "mk")
    out = merge_to_disk(Recipe.from_dict(config), tmp_path / "ev").out
    ours = AutoTokenizer.from_pretrained(str(out))
    theirs = AutoTokenizer.from_pretrained(str(tmp_path / "mk"))
    assert ours.chat_template is not None
    assert ours.apply_chat_template(CONVERSATION, tokenize=False) == theirs.apply_chat_template(CONVERSATION, tokenize=False)


def test_chat_template_without_a_vocabulary_source(untied_family, tmp_path):
    # The base's tokenizer files are copied with the template set (no tokenizer loads from them).
    recipe = Recipe.from_dict({"merge_method": "linear", "chat_template": "chatml", "parameters": {"weight": 1.0},
                               "models": [{"model": str(untied_family["base"])}, {"model": str(untied_family["expert0"])}]})
    out = merge_to_disk(recipe, tmp_path / "ev").out
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATES["chatml"] and config["model_max_length"] == 64


def test_an_unknown_template_name_is_refused(untied_family, tmp_path):
    recipe = Recipe.from_dict({"merge_method": "linear", "chat_template": "chatmll", "parameters": {"weight": 1.0},
                               "models": [{"model": str(untied_family["base"])}]})
    with pytest.raises(RecipeError, match="'chatmll' is neither a template name"):
        merge_to_disk(recipe, tmp_path / "ev")
    assert not (tmp_path / "ev").exists()  # refused before any compute


def test_in_memory_merger_builds_the_same_vocabulary(fam, tmp_path):
    from evomerge.merge.in_memory import InMemoryMerger

    recipe = Recipe.from_dict(CASES["tokens_and_padding"](fam))
    on_disk = load_dir(merge_to_disk(recipe, tmp_path / "ev").out)
    merger = InMemoryMerger({m: m for m in recipe.referenced_models()})
    in_memory = merger.merge(recipe)
    assert merger.output_config(recipe)["vocab_size"] == on_disk["model.embed_tokens.weight"].shape[0]
    for name, t in on_disk.items():
        assert torch.equal(in_memory[name], t), name
