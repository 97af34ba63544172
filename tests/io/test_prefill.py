"""The output prefill: the recipe is read on its thread (Recipe.load), and the writer adopts what it made."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file

from evomerge.io import CheckpointWriter, TensorSpec
from evomerge.io.prefill import _output_bytes, guess_output_bytes, start_output_prefill


def _recipe(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_slices_recipe_with_out_dtype_alias_is_sized_in_that_dtype(untied_family, tmp_path):
    base, expert = untied_family["base"], untied_family["expert0"]
    os.symlink(expert, tmp_path / "expert0")  # found relative to the recipe's folder
    path = _recipe(
        tmp_path,
        f"""
merge_method: passthrough
slices:
  - sources: [{{model: {base}, layer_range: [0, 2]}}]
  - sources: [{{model: expert0, layer_range: [1, 3]}}]
dtype: float32
out_dtype: bf16
""",
    )
    float32 = _output_bytes(base, None)
    guess = guess_output_bytes(path)
    assert guess == _output_bytes(base, 2) and float32 // 2 < guess < float32

    prefill = start_output_prefill(path, tmp_path / "out", force=False)
    assert prefill is not None
    prefill.wait()
    assert prefill.nbytes == guess and prefill.file.stat().st_size == guess
    prefill.discard()
    assert not prefill.tmp_dir.exists()


def test_models_recipe_without_dtype_is_sized_as_stored(untied_family, tmp_path):
    path = _recipe(
        tmp_path,
        f"""
merge_method: linear
models:
  - {{model: {untied_family["expert0"]}, parameters: {{weight: 0.5}}}}
  - {{model: {untied_family["expert1"]}, parameters: {{weight: 0.5}}}}
""",
    )
    assert guess_output_bytes(path) == _output_bytes(untied_family["expert0"], None)


def test_a_prefill_that_wrote_nothing_is_adopted_by_the_writer(tmp_path):
    path = _recipe(tmp_path, "merge_method: no_such_method\nmodels: []\n")  # unreadable recipe
    out = tmp_path / "out"
    prefill = start_output_prefill(path, out, force=False)
    assert prefill is not None
    prefill.wait()
    assert prefill.nbytes == 0 and not prefill.file.exists()
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    with CheckpointWriter(out, [TensorSpec("w", (2, 3), torch.float32)], prefill=prefill) as writer:
        writer.write("w", t)
    prefill.discard()  # as the CLI does afterwards: the adopted directory is the output now
    assert torch.equal(load_file(str(out / "model.safetensors"))["w"], t)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "recipe.yaml"]


def test_a_prefilled_shard_is_overwritten_and_cut_to_size(untied_family, tmp_path):
    path = _recipe(tmp_path, f"merge_method: linear\nmodels: [{{model: {untied_family['base']}}}]\n")
    out = tmp_path / "out"
    prefill = start_output_prefill(path, out, force=False)
    assert prefill is not None
    t = torch.ones(4, dtype=torch.float16)
    with CheckpointWriter(out, [TensorSpec("w", (4,), torch.float16)], prefill=prefill) as writer:
        writer.write("w", t)
    assert prefill.nbytes > 0
    assert torch.equal(load_file(str(out / "model.safetensors"))["w"], t)
    assert (out / "model.safetensors").stat().st_size < 1000


def test_no_prefill_for_an_existing_output_without_force(tmp_path):
    (tmp_path / "out").mkdir()
    assert start_output_prefill(_recipe(tmp_path, "{}"), tmp_path / "out", force=False) is None
