"""Gradients are read by one rule (evomerge.recipe.gradient_at), in the plan and in path sources."""

from __future__ import annotations

import pytest

from evomerge.recipe import ConditionalParameter, gradient_at, gradient_position


def test_numbers_interpolate_and_other_values_step():
    assert gradient_at([0.0, 1.0, 0.0], 0.25) == pytest.approx(0.5)
    assert gradient_at([0, 10], 1.0) == 10
    assert gradient_at(["a", "b", "c"], 0.7) == "b"
    assert gradient_at([True, False], 0.4) is True


def test_positions_span_the_slice():
    assert [gradient_position(j, 3) for j in range(3)] == [0.0, 0.5, 1.0]
    assert gradient_position(0, 1) == 1.0


def test_filters():
    assert ConditionalParameter(value=1, filter="mlp").applies_to("model.layers.0.mlp.up_proj.weight")
    assert not ConditionalParameter(value=1, filter="mlp").applies_to("model.layers.0.self_attn.q_proj.weight")
    assert ConditionalParameter(value=1).applies_to("x") and ConditionalParameter(value=1, filter="*").applies_to("x")
