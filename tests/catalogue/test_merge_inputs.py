"""Bad inputs to ``evomerge merge`` (issue 15's catalogue, the merge/checkpoint side).

Entries, one test each (all through the real command line, refused with exit 2
unless noted, the message naming the file, field or tensor and the fix, no
traceback, nothing written beside the output, an existing output untouched):

1. a model directory without weights;
2. a corrupt safetensors file (garbage header);
3. a truncated safetensors file;
4. a sharded checkpoint whose index names a tensor its shard does not hold;
5. sources of different architectures (llama and gpt2);
6. sources of different shapes (hidden size);
7. sources of different vocabularies (vocab_size), and of different tokenizers;
8. sources of different depths in a ``models:`` merge;
9. NaN in a source;
10. a pickle checkpoint without ``--allow-pickle`` (and with it: weights_only, no code runs);
12. out-of-range parameters: density outside [0, 1], negative weights where the method
    normalises by their sum, DELLA's epsilon, slerp's t, breadcrumbs' gamma;
13. an output that exists (without --force), an output that cannot be written;
14. a disk that fills while writing (exit 1, the file named, nothing left, the old output kept).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    assert_only,
    assert_refused,
    assert_untouched,
    invoke,
    snapshot,
    unwritable_dir,
)
from safetensors.torch import save_file

from evomerge.testing import llama_config, llama_state, make_family, save_model

TENSOR = "model.layers.1.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    return make_family(tmp_path_factory.mktemp("family"), tied=False, n_experts=2, layers=2, seed=3)


@pytest.fixture
def work(tmp_path, family) -> Path:
    """A folder with a copy of the expert to break (``bad``) and nothing else."""
    shutil.copytree(family["expert1"], tmp_path / "bad")
    return tmp_path


def write_recipe(folder: Path, family, bad: Path | str | None = None, **overrides) -> Path:
    recipe = {
        "merge_method": "ties",
        "base_model": str(family["base"]),
        "models": [
            {"model": str(family["expert0"]), "parameters": {"weight": 0.6, "density": 0.5}},
            {"model": str(bad or family["expert1"]), "parameters": {"weight": 0.4, "density": 0.5}},
        ],
    }
    recipe.update(overrides)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def merge(recipe: Path, out: Path, *extra):
    return invoke("merge", recipe, "--out", out, "--quiet", *extra)


def refused(work: Path, family, *must_name, exit_code: int = 2, **recipe) -> str:
    """Merge the recipe (with ``work/bad`` as the second expert) and check the refusal."""
    bad = recipe.pop("bad", work / "bad")
    path = write_recipe(work, family, bad, **recipe)
    before = {p.name for p in work.iterdir()}
    message = assert_refused(merge(path, work / "out"), *must_name, exit_code=exit_code)
    assert_only(work, *before)  # no output, no temporary directory beside it
    return message


# -- 1-4: unreadable checkpoints ----------------------------------------------------------------


def test_01_model_without_weights(work, family):
    (work / "bad" / "model.safetensors").unlink()
    refused(work, family, str(work / "bad"), "has no weights", "model.safetensors")


def test_02_corrupt_safetensors_header(work, family):
    (work / "bad" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!!!}" + b"\0" * 64)
    refused(work, family, str(work / "bad" / "model.safetensors"), "re-download")


def test_03_truncated_safetensors(work, family):
    f = work / "bad" / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    refused(work, family, str(f), "truncated", "re-download")


def test_04_index_names_a_tensor_its_shard_lacks(work, family):
    bad = work / "bad"
    state = llama_state(llama_config(tied=False, layers=2), torch.Generator().manual_seed(5))
    (bad / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {n: f for f, ns in shards.items() for n in ns}
    dropped = names[-1]
    for f, ns in shards.items():
        save_file({n: state[n] for n in ns if n != dropped}, str(bad / f))
    (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    refused(work, family, "model.safetensors.index.json", dropped, "model-00002-of-00002.safetensors",
            "re-download")


def test_04b_index_names_a_shard_that_is_missing(work, family):
    bad = work / "bad"
    os.replace(bad / "model.safetensors", bad / "model-00001-of-00002.safetensors")
    state_names = json.loads((bad / "config.json").read_text())  # any tensor name will do
    del state_names
    weight_map = {"model.norm.weight": "model-00002-of-00002.safetensors"}
    (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    refused(work, family, "model-00002-of-00002.safetensors", "re-download")


# -- 5-8: sources that do not fit together --------------------------------------------------------


def test_05_different_architectures(work, family):
    config = json.loads((work / "bad" / "config.json").read_text())
    config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (work / "bad" / "config.json").write_text(json.dumps(config))
    refused(work, family, "GPT2LMHeadModel", "LlamaForCausalLM", str(work / "bad"), "same base")


def _other_shape(work: Path, **shape) -> Path:
    shutil.rmtree(work / "bad")
    config = llama_config(tied=False, **({"layers": 2} | shape))
    return save_model(work / "bad", llama_state(config, torch.Generator().manual_seed(7)), config)


def test_06_different_hidden_size(work, family):
    _other_shape(work, hidden=48)
    refused(work, family, "hidden_size differs", str(work / "bad"), "=48", "model.embed_tokens.weight",
            "share an architecture")


def test_07_different_vocab_size(work, family):
    _other_shape(work, vocab=80)
    refused(work, family, "vocab_size", "80", "64", "tokenizer")


def test_07b_different_tokenizers(work, family):
    vocab = {chr(97 + i): i for i in range(20)}
    swapped = dict(vocab, a=1, b=0)
    for model, v in ((family["base"], vocab), (family["expert0"], vocab)):
        (Path(model) / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel", "vocab": v}}))
    (work / "bad" / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel", "vocab": swapped}}))
    try:
        refused(work, family, "tokenizer.json", str(work / "bad"), "'a'", "share one tokenizer")
    finally:
        for model in (family["base"], family["expert0"]):
            (Path(model) / "tokenizer.json").unlink()


def test_08_different_depths_in_a_models_merge(work, family):
    _other_shape(work, layers=3)
    refused(work, family, "num_hidden_layers", "3", "2", "slices:")


# -- 9-10: what a checkpoint holds ---------------------------------------------------------------


def test_09_nan_in_a_source(work, family):
    f = work / "bad" / "model.safetensors"
    from safetensors.torch import load_file

    state = load_file(str(f))
    state[TENSOR][3, 5] = float("nan")
    save_file(state, str(f))
    refused(work, family, str(work / "bad"), TENSOR, "NaN", "intact copy")


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_10_pickle_without_allow_pickle(work, family, monkeypatch):
    bad = work / "bad"
    from safetensors.torch import load_file

    state = load_file(str(bad / "model.safetensors"))
    (bad / "model.safetensors").unlink()
    torch.save(state, bad / "pytorch_model.bin")
    refused(work, family, str(bad), "pytorch_model.bin", "--allow-pickle")
    # With the flag it loads, with torch.load(weights_only=True) ...
    recipe = write_recipe(work, family, bad)
    assert merge(recipe, work / "out", "--allow-pickle").exit_code == 0
    shutil.rmtree(work / "out")
    # ... which runs no code from the file even then.
    torch.save({**state, "evil": _Evil()}, bad / "pytorch_model.bin")
    monkeypatch.chdir(work)
    assert_refused(merge(recipe, work / "out", "--allow-pickle"), "pytorch_model.bin", "weights_only",
                   "safetensors")
    assert not (work / "PWNED").exists() and not (work / "out").exists()


# -- 12: parameters out of range -------------------------------------------------------------------


@pytest.mark.parametrize(("method", "where", "params", "must_name"), [
    ("ties", 1, {"weight": 0.4, "density": 1.3}, ["models[1].parameters.density", "1.3", "[0, 1]"]),
    ("dare_ties", 0, {"weight": 0.4, "density": -0.2}, ["models[0].parameters.density", "-0.2", "[0, 1]"]),
    ("ties", 0, {"weight": -0.5, "density": 0.5}, ["models[0].parameters.weight", "-0.5", "normalize: false"]),
    ("della", 1, {"weight": 0.5, "density": 0.1, "epsilon": 0.2}, ["epsilon", "0.2", "density"]),
    ("della", 1, {"weight": 0.5, "density": 0.5, "epsilon": 1.5}, ["models[1].parameters.epsilon", "1.5"]),
    ("breadcrumbs", 1, {"weight": 0.5, "density": 0.9, "gamma": 1.2}, ["models[1].parameters.gamma", "1.2"]),
    ("dare_ties", 1, {"weight": 0.5, "density": [0.5, 1.4]}, ["models[1].parameters.density[1]", "1.4"]),
])
def test_12_parameter_out_of_range(work, family, method, where, params, must_name):
    path = write_recipe(work, family, merge_method=method)
    recipe = yaml.safe_load(path.read_text())
    recipe["models"][where]["parameters"] = params
    path.write_text(yaml.safe_dump(recipe))
    assert_refused(merge(path, work / "out"), *must_name)
    assert not (work / "out").exists()


def test_12b_global_parameter_out_of_range(work, family):
    refused(work, family, "parameters.density", "1.3", bad=family["expert1"], parameters={"density": 1.3})


def test_12c_slerp_t_out_of_range(work, family):
    refused(work, family, "parameters.t", "[0, 1]", bad=family["expert1"], merge_method="slerp",
            models=[{"model": str(family["expert0"])}], parameters={"t": 1.5})


def test_12d_negative_weights_allowed_where_the_method_allows_them(work, family):
    """Task arithmetic subtracts a task vector with a negative weight (forgetting): not refused."""
    path = write_recipe(work, family, family["expert1"], merge_method="task_arithmetic")
    recipe = yaml.safe_load(path.read_text())
    recipe["models"][1]["parameters"] = {"weight": -0.5}
    path.write_text(yaml.safe_dump(recipe))
    result = merge(path, work / "out")
    assert result.exit_code == 0, result.output


# -- 13-14: the output ---------------------------------------------------------------------------


def test_13_output_exists_without_force(work, family):
    recipe = write_recipe(work, family, family["expert1"])
    out = work / "out"
    assert merge(recipe, out).exit_code == 0
    before = snapshot(out)
    assert_refused(merge(recipe, out), str(out), "--force")
    assert_untouched(out, before)


@pytest.mark.parametrize("kind", ["read-only folder", "a file in the way"])
def test_13b_output_cannot_be_written(work, family, kind):
    recipe = write_recipe(work, family, family["expert1"])
    if kind == "a file in the way":
        (work / "afile").write_text("x")
        out = work / "afile" / "out"
    else:
        out = unwritable_dir(work) / "out"
    assert_refused(merge(recipe, out), str(out), "--out")
    assert not out.exists()


def test_14_disk_fills_while_writing(work, family, monkeypatch):
    """ENOSPC midway through the shards: exit 1, the file named, no temporary output left, an
    existing output untouched."""
    from evomerge.io import writer

    recipe = write_recipe(work, family, family["expert1"])
    out = work / "out"
    assert merge(recipe, out).exit_code == 0
    before = snapshot(out)
    real_write, calls = writer._Shard.write, []

    def filling(self, name, tensor):
        calls.append(name)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real_write(self, name, tensor)

    monkeypatch.setattr(writer._Shard, "write", filling)
    message = assert_refused(merge(recipe, out, "--force"), f"model.safetensors of {out}", "disk",
                             exit_code=1)
    assert "free space" in message
    assert len(calls) == 5  # it stopped at the failure
    assert_untouched(out, before)
    assert_only(work, "bad", "recipe.yaml", "out")
