"""Priors from the sources: the average, task arithmetic at weights 1, each expert alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from space_helpers import ps_data

from evomerge.search.priors import NoPriors, source_points
from evomerge.search.space import ParameterSpace
from evomerge.search.space.joint import JointSpace
from evomerge.search.space.layer import LayerSpace


def _weights_and_method(space, x) -> tuple[str, list[float], list[float]]:
    r = space.decode(x).model_dump(exclude_none=True)
    models = r["models"] if r.get("models") else r["slices"][0]["sources"]
    params = [m["parameters"] for m in models if Path(m["model"]).name.startswith("expert")]
    weights = [p["weight"] for p in params]
    densities = [p["density"] for p in params if "density" in p]
    return r["merge_method"], weights, densities


def test_parameter_space_priors_decode_to_the_obvious_merges(untied_family):
    space = ParameterSpace.model_validate(ps_data(untied_family, methods=["ties", "task_arithmetic"]))
    points = source_points(space)
    assert [label for label, _ in points] == ["average", "task_arithmetic", "expert:expert0", "expert:expert1"]
    got = {label: _weights_and_method(space, x) for label, x in points}
    assert got["average"][:2] == ("task_arithmetic", [0.5, 0.5])
    assert got["task_arithmetic"][:2] == ("task_arithmetic", [1.0, 1.0])
    assert got["expert:expert0"][:2] == ("task_arithmetic", [1.0, 0.0])
    assert got["expert:expert1"][:2] == ("task_arithmetic", [0.0, 1.0])


def test_ranges_clip_keep_fractions_keep_everything_and_duplicates_go(untied_family):
    experts = [str(untied_family[f"expert{i}"]) for i in range(3)]
    data = ps_data(untied_family, methods=["ties"], models=experts,
                   parameters={"weight": {"low": 0.1, "high": 0.5}, "density": {"low": 0.2, "high": 0.9}},
                   granularity={"layers_per_group": 1, "filters": ["mlp"]})
    space = ParameterSpace.model_validate(data)
    points = dict(source_points(space))
    method, weights, densities = _weights_and_method(space, points["task_arithmetic"])
    assert method == "ties"  # the only method offered
    assert all(v["value"] == 0.5 for w in weights for v in w)  # weight 1 clipped to the range's top
    assert all(v["value"] == 0.9 for d in densities for v in d)  # keep as much as the range allows
    _, alone, _ = _weights_and_method(space, points["expert:expert0"])
    assert [v["value"] for v in alone[0]] == [0.5, 0.5] and [v["value"] for v in alone[1]] == [0.1, 0.1]
    _, average, _ = _weights_and_method(space, points["average"])
    assert all(v["value"] == pytest.approx(1 / 3, abs=1e-6) for w in average for v in w)
    two = ParameterSpace.model_validate(ps_data(untied_family, parameters={"weight": {"low": 0.0, "high": 0.5}}))
    labels = [label for label, _ in source_points(two)]  # 1/2 and 1 clip to the same point: given once
    assert labels == ["average", "expert:expert0", "expert:expert1"]


def test_joint_spaces_get_priors_and_layer_spaces_are_refused(untied_family):
    joint = JointSpace.model_validate({
        "kind": "joint", "parameter": ps_data(untied_family),
        "layer": {"kind": "slices", "models": ["merged", str(untied_family["expert2"])], "slices": 2},
    })
    points = source_points(joint)
    assert len(points) == 4 and all(len(x) == joint.dimension for _, x in points)
    assert all((x[joint.parameter.dimension:] == 0.5).all() for _, x in points)
    layer = LayerSpace.model_validate({"models": [str(untied_family["expert0"])], "num_layers": 3})
    with pytest.raises(NoPriors, match="no weight gene"):
        source_points(layer)
