"""Helpers for testing evomerge and code that extends it.

Importing ``evomerge.testing`` gives the tiny-model helpers (no download, made
in seconds; see ``evomerge.testing.models``). The conformance suites live in
submodules, one per extension point, and need pytest; import the one you need
into your own test module:

* ``evomerge.testing.methods`` - merge methods (``MethodSuite``)
* ``evomerge.testing.optimizers`` - optimisers (``OptimizerSuite``)
* ``evomerge.testing.evaluators`` - evaluator types (``EvaluatorSuite``)
* ``evomerge.testing.executors`` - executors (``ExecutorSuite``)
* ``evomerge.testing.ledgers`` - ledger kinds (``LedgerSuite``)
* ``evomerge.testing.spaces`` - search-space kinds (``SpaceSuite``)

Each suite is a class of pytest tests, parametrized by the implementation's
registered name; subclass it in a module named ``test_*.py``::

    import pytest
    from evomerge.testing.optimizers import OptimizerSuite

    @pytest.mark.parametrize("optimizer_name", ["my_optimizer"])
    class TestMyOptimizer(OptimizerSuite):
        pass
"""

from evomerge.testing.models import (
    llama_config,
    llama_state,
    make_family,
    make_vocab_family,
    mini_zoo_config,
    run_mergekit,
    save_model,
    save_word_tokenizer,
    tiny_char_lm,
)

__all__ = [
    "llama_config",
    "llama_state",
    "make_family",
    "make_vocab_family",
    "mini_zoo_config",
    "run_mergekit",
    "save_model",
    "save_word_tokenizer",
    "tiny_char_lm",
]
