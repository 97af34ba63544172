"""Fixtures for evaluator tests: a tiny random char-level Llama and task files in tmp dirs."""

from __future__ import annotations

import pytest

from evomerge.testing import tiny_char_lm


@pytest.fixture(scope="session")
def lm():
    return tiny_char_lm(seed=3)
