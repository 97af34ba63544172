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


def test_missing_model_directory(tmp_path, hub_cache):
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
    # Not a directory, so a Hub id: not in the (empty, offline) cache, with the command that fetches it.
    assert "org/model" in result.output and "not a local directory" in result.output
    assert "hf download org/model" in result.output


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


def test_the_console_entry_point_writes_the_whole_model_before_it_exits(untied_family, tmp_path):
    """``main`` leaves without the interpreter's teardown after a merge: the files must be complete
    (the same tensors as a merge in this process), the summary printed, and failures still exit 2."""
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    recipe = _write(tmp_path, untied_family)
    cmd = [sys.executable, "-c", "from evomerge.cli import main; main()", "merge", str(recipe)]
    done = subprocess.run([*cmd, "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    assert runner.invoke(app, ["merge", str(recipe), "--out", str(tmp_path / "b")]).exit_code == 0
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "config.json").read_text() == (tmp_path / "b" / "config.json").read_text()
    again = subprocess.run([*cmd, "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert again.returncode == 2 and "--force" in again.stderr + again.stdout
