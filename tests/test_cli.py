"""The command line, as a user runs it."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from evomerge.cli import app

runner = CliRunner()


def _write(tmp_path, family, name="r.yaml", **extra):
    recipe = {
        "merge_method": "ties",
        "base_model": str(family["base"]),
        "models": [
            {"model": str(family["expert0"]), "parameters": {"weight": 1.0, "density": 0.5}}
        ],
        **extra,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "merge" in result.output and "recipe" in result.output


def test_merge_writes_a_model_and_refuses_to_overwrite(untied_family, tmp_path):
    recipe = _write(tmp_path, untied_family)
    out = tmp_path / "out"
    result = runner.invoke(app, ["merge", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").exists() and (out / "evomerge_recipe.yaml").exists()
    assert (out / "mergekit_config.yml").exists() and (out / "tokenizer_config.json").exists()
    again = runner.invoke(app, ["merge", str(recipe), "--out", str(out)])
    assert again.exit_code == 2
    assert "--force" in again.output
    forced = runner.invoke(
        app, ["merge", str(recipe), "--out", str(out), "--force", "--dtype", "bfloat16"]
    )
    assert forced.exit_code == 0, forced.output


def test_bad_recipe_exits_nonzero_with_one_clear_error(untied_family, tmp_path):
    recipe = _write(tmp_path, untied_family, merge_method="tie")
    result = runner.invoke(app, ["merge", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "Did you mean: ties" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_missing_model_directory(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "merge_method": "linear",
                "models": [{"model": "org/model", "parameters": {"weight": 1}}],
            }
        )
    )
    result = runner.invoke(app, ["merge", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "local directories only" in result.output


def test_cuda_request_without_cuda_is_refused(untied_family, tmp_path):
    import torch

    recipe = _write(tmp_path, untied_family)
    result = runner.invoke(
        app, ["merge", str(recipe), "--out", str(tmp_path / "out"), "--device", "cuda"]
    )
    if torch.cuda.is_available():
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 2 and "CUDA is not available" in result.output


def test_recipe_show_prints_hash_and_mergekit_form(untied_family, tmp_path):
    recipe = _write(tmp_path, untied_family, seed=3)
    result = runner.invoke(app, ["recipe", "show", str(recipe), "--mergekit"])
    assert result.exit_code == 0, result.output
    assert (
        "# hash: " in result.output
        and "merge_method: ties" in result.output
        and "seed" not in result.output
    )
