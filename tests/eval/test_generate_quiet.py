"""Decoding passes the KV cache under the name the installed transformers expects: transformers 5
warns on every run when it is handed ``past_key_values`` (noise in `evomerge eval` and searches)."""

from __future__ import annotations

import warnings

from evomerge.eval.generate import greedy_generate


def test_greedy_decoding_warns_about_nothing(lm):
    model, tok = lm
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = greedy_generate(model, tok, ["rev:ab=", "sort:dcba="], max_new_tokens=4, stop=["\n"])
    assert len(out) == 2
