"""Identity blocks: the expanded model computes what the original did, and trains only there."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from evomerge.zoo.expand import append_identity_blocks


def _tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config).eval()


def test_appended_blocks_leave_the_function_unchanged_and_survive_a_reload(tmp_path):
    model = _tiny()
    ids = torch.randint(0, 40, (2, 9))
    before = model(ids).logits
    assert append_identity_blocks(model, 2) == ["model.layers.2.", "model.layers.3."]
    assert model.config.num_hidden_layers == 4 and len(model.model.layers) == 4
    assert torch.allclose(model(ids).logits, before, atol=1e-6)
    # A block is a real copy (not the last layer shared), with its own index for the KV cache.
    block = model.model.layers[3]
    assert block.self_attn.layer_idx == 3
    assert block.mlp.up_proj.weight.data_ptr() != model.model.layers[1].mlp.up_proj.weight.data_ptr()
    assert torch.equal(block.mlp.up_proj.weight, model.model.layers[1].mlp.up_proj.weight)
    model.save_pretrained(tmp_path)
    again = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.allclose(again(ids).logits, before, atol=1e-6)
    assert torch.allclose(again.generate(ids, max_new_tokens=3, do_sample=False),
                          _tiny().generate(ids, max_new_tokens=3, do_sample=False))


def test_training_moves_the_new_block_once_its_output_projections_have(tmp_path):
    model = _tiny()
    append_identity_blocks(model, 1)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("model.layers.2."))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 40, (2, 9))
    for _ in range(2):  # step 1 moves o_proj/down_proj off zero; step 2 reaches the rest
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved and all(k.startswith("model.layers.2.") for k in moved)
    assert "model.layers.2.mlp.up_proj.weight" in moved and "model.layers.2.self_attn.q_proj.weight" in moved
