"""An example of a user's Python objective: ``zoo_probe:digit_confidence``.

Any ``module:function(model, tokenizer) -> {name: value}`` works; this one
measures how much probability the model puts on a digit right after ``add:``
prompts, a cheap proxy for "the model knows answers here are numbers".
"""

import torch

PROMPTS = ["add:21+43=", "add:50+99=", "add:01+70=", "add:88+88="]  # the zoo's format: backwards


@torch.inference_mode()
def digit_confidence(model, tokenizer, fidelity=None):
    prompts = PROMPTS[: fidelity or len(PROMPTS)]
    digits = [tokenizer.convert_tokens_to_ids(d) for d in "0123456789"]
    device = next(model.parameters()).device
    total = 0.0
    for p in prompts:
        ids = torch.tensor([tokenizer(p)["input_ids"]], device=device)
        probs = model(input_ids=ids).logits[0, -1].float().softmax(-1)
        total += probs[digits].sum().item()
    return {"digit_confidence": total / len(prompts)}
