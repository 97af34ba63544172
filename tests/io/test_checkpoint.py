"""Checkpoint reading: single and sharded safetensors, pickle refusal, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from evomerge.errors import CheckpointError, OutputExistsError
from evomerge.io import Checkpoint, CheckpointWriter, TensorSpec


def _dir(tmp_path, name="m", config=None):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config or {"model_type": "llama"}))
    return d


def test_reads_sharded_safetensors_lazily(tmp_path):
    d = _dir(tmp_path)
    a, b = torch.randn(3, 4), torch.randn(5)
    save_file({"a": a}, str(d / "s1.safetensors"))
    save_file({"b": b}, str(d / "s2.safetensors"))
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})
    )
    ck = Checkpoint(d)
    assert sorted(ck.tensor_names()) == ["a", "b"]
    assert ck.shape("a") == (3, 4) and ck.dtype("b") == torch.float32
    assert torch.equal(ck.get("a"), a) and torch.equal(ck.get("b"), b)


def test_missing_shard_is_named(tmp_path):
    d = _dir(tmp_path)
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "gone.safetensors"}})
    )
    with pytest.raises(CheckpointError, match="gone.safetensors"):
        Checkpoint(d)


def test_pickle_is_refused_unless_allowed(tmp_path):
    d = _dir(tmp_path)
    t = torch.randn(2, 2)
    torch.save({"w": t}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        Checkpoint(d)
    assert torch.equal(Checkpoint(d, allow_pickle=True).get("w"), t)


def test_pickle_with_code_is_not_executed(tmp_path):
    d = _dir(tmp_path)

    class Evil:
        def __reduce__(self):
            return (exec, ("open('pwned', 'w').write('x')",))

    torch.save({"w": Evil()}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        Checkpoint(d, allow_pickle=True)
    assert not (tmp_path / "pwned").exists()


def test_not_a_model_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        Checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        Checkpoint(tmp_path / "empty")
    d = _dir(tmp_path, "noweights")
    with pytest.raises(CheckpointError, match="has no weights"):
        Checkpoint(d)


def test_truncated_safetensors_is_reported(tmp_path):
    d = _dir(tmp_path)
    save_file({"a": torch.randn(64, 64)}, str(d / "model.safetensors"))
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Checkpoint(d)


def test_writer_streams_shards_and_index(tmp_path):
    tensors = {
        f"t{i}": torch.randn(16, 16).to(dt)
        for i, dt in enumerate([torch.float32, torch.bfloat16, torch.float16] * 3)
    }
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    out = tmp_path / "out"
    with CheckpointWriter(out, specs, max_shard_bytes=2000) as w:
        for name in reversed(list(tensors)):  # any order
            w.write(name, tensors[name])
        w.write_json("config.json", {"model_type": "llama"})
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ck = Checkpoint(out)
    for name, t in tensors.items():
        assert torch.equal(ck.get(name), t)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_writer_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    specs = [TensorSpec("a", (2,), torch.float32), TensorSpec("b", (2,), torch.float32)]
    with pytest.raises(RuntimeError), CheckpointWriter(out, specs) as w:
        w.write("a", torch.zeros(2))
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CheckpointError, match="never written"), CheckpointWriter(out, specs) as w:
        w.write("a", torch.zeros(2))
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_existing_output_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    specs = [TensorSpec("a", (2,), torch.float32)]
    with pytest.raises(OutputExistsError, match="--force"), CheckpointWriter(out, specs):
        pass
    assert (out / "keep").exists()
    with CheckpointWriter(out, specs, force=True) as w:
        w.write("a", torch.ones(2))
    assert not (out / "keep").exists()
    assert torch.equal(load_file(str(out / "model.safetensors"))["a"], torch.ones(2))
