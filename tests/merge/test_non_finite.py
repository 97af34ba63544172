"""A merge whose output holds NaN or inf is refused, naming the tensor: on disk nothing is
written (and an existing output is left as it was); in memory the candidate fails."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import EvomergeError
from evomerge.io.compat import NonFiniteSourceError
from evomerge.merge.engine import NonFiniteMergeError, finite_flag, merge_to_disk
from evomerge.merge.in_memory import InMemoryMerger
from evomerge.recipe import Recipe
from evomerge.testing import llama_config, llama_state, save_model

TENSOR = "model.layers.0.mlp.up_proj.weight"
HUGE = 3.0e38  # finite in float32 (max 3.4e38); twice it is not


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``base``, ``expert`` (finite), ``huge`` (one value of 3e38 in TENSOR) and ``nan``
    (one NaN in TENSOR)."""
    root = tmp_path_factory.mktemp("nonfinite")
    config = llama_config(tied=False, layers=2)
    gen = torch.Generator().manual_seed(0)
    base = llama_state(config, gen)
    out = {"base": save_model(root / "base", base, config)}
    expert = {k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
    out["expert"] = save_model(root / "expert", expert, config)
    for name, value in (("huge", HUGE), ("nan", float("nan"))):
        state = {k: v.clone() for k, v in expert.items()}
        state[TENSOR][0, 0] = value
        out[name] = save_model(root / name, state, config)
    return out


def recipe(models, source: str, weight: float) -> Recipe:
    return Recipe.from_dict({
        "merge_method": "task_arithmetic", "base_model": str(models["base"]),
        "models": [{"model": str(models[source]), "parameters": {"weight": weight}}],
    })


def test_finite_flag_sees_nan_and_inf_in_every_float_dtype():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        t = torch.randn(7, 5).to(dtype)
        assert bool(finite_flag(t))
        for bad in (float("nan"), float("inf"), float("-inf")):
            u = t.clone()
            u[3, 2] = bad
            assert not bool(finite_flag(u)), (dtype, bad)
    assert finite_flag(torch.arange(4)) is None and finite_flag(torch.empty(0)) is None


@pytest.mark.parametrize(("source", "weight", "what"), [("nan", 0.5, "1 NaN"), ("huge", 2.0, "1 inf")])
def test_merge_to_disk_refuses_non_finite_output_and_writes_nothing(tmp_path, models, source, weight, what):
    out = tmp_path / "merged"
    # A NaN in a source is refused as it is read (naming the model), before the output check.
    with pytest.raises((NonFiniteMergeError, NonFiniteSourceError),
                       match=rf"non-finite values \({what} of 1536\) in tensor {TENSOR}\b"):
        merge_to_disk(recipe(models, source, weight), out)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary directory left beside it


def test_a_refused_merge_leaves_an_existing_output_untouched(tmp_path, models):
    out = tmp_path / "merged"
    merge_to_disk(recipe(models, "huge", 1.0), out)  # 3e38 itself is finite: written
    before = load_file(out / "model.safetensors")
    assert before[TENSOR][0, 0] == pytest.approx(HUGE, rel=1e-3)
    with pytest.raises(NonFiniteMergeError, match=TENSOR):
        merge_to_disk(recipe(models, "huge", 2.0), out, force=True)
    after = load_file(out / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_in_memory_merge_names_the_non_finite_tensor(models):
    merger = InMemoryMerger({str(models[m]): models[m] for m in ("base", "expert", "huge")})
    ok = merger.merge(recipe(models, "huge", 1.0))
    assert torch.isfinite(ok[TENSOR]).all()
    with pytest.raises(NonFiniteMergeError, match=rf"\(1 inf of 1536\) in tensor {TENSOR}\b"):
        merger.merge(recipe(models, "huge", 2.0))
    assert isinstance(NonFiniteMergeError("x"), EvomergeError)  # a user's problem, not a crash
    # Checked as stored: a finite float32 result copied into a float16 resident tensor overflows.
    resident = {k: v.half() for k, v in ok.items()}
    with pytest.raises(NonFiniteMergeError, match=rf"\(1 inf of 1536\) in tensor {TENSOR}\b"):
        merger.merge(recipe(models, "huge", 1.0), into=resident)


def test_the_merge_command_refuses_non_finite_output(tmp_path, models):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(models, "nan", 0.5).to_dict()))
    out = tmp_path / "merged"
    res = CliRunner().invoke(app, ["merge", str(path), "--out", str(out), "--quiet"])
    assert res.exit_code not in (0, None), res.output
    assert f"in tensor {TENSOR}" in res.output and "Traceback" not in res.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]

