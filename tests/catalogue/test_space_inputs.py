"""Bad search spaces given to `evomerge space show`: refused with exit 2 and one paragraph
naming the space file, the field and the fix (with "did you mean" for names), no traceback.

Catalogue entries covered (issue 15, deliverable 3, search side):
1. unknown merge method; 4. unknown space kind; 5. unknown parameter name (did you mean);
6. empty ranges and a density range outside [0, 1]; 8. malformed YAML, with the line;
9. unknown keys (did you mean); 10. a space with no genes (empty lists; a kind whose genome is
empty).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import yaml
from conftest import assert_refused, invoke

from evomerge.search.space import SPACE_KINDS, Space


def _space(tmp_path: Path, zoo: Path, **fields) -> Path:
    data = {"base_model": str(zoo / "base"), "models": [str(zoo / "add"), str(zoo / "rev")],
            "methods": ["ties"], "parameters": {"weight": {"low": 0, "high": 1},
                                                "density": {"low": 0.3, "high": 1}}}
    data.update(fields)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _show(path: Path):
    return invoke("space", "show", path)


def test_a_good_space_shows(tmp_path, zoo):
    assert _show(_space(tmp_path, zoo)).exit_code == 0


@pytest.mark.parametrize("fields, names", [
    ({"methods": ["task_arithmetc"]}, ["methods", "did you mean 'task_arithmetic'"]),
    ({"kind": "parametre"}, ["kind", "Did you mean: parameter"]),
    ({"parameters": {"weight": {"low": 0, "high": 1}, "densitty": {"low": 0, "high": 1}}},
     ["parameters.densitty", "did you mean 'density'"]),
    ({"parameters": {"weight": {"low": 0.8, "high": 0.2}}}, ["parameters.weight", "swap them"]),
    ({"parameters": {"weight": {"low": 0.5, "high": 0.5}}}, ["parameters.weight", "the range is empty"]),
    ({"parameters": {"weight": {"low": 0, "high": 1}, "density": {"low": -0.2, "high": 0.9}}},
     ["parameters.density", "within [0, 1]"]),
    ({"granularity": {"filter": ["mlp"]}}, ["granularity.filter", "did you mean 'filters'"]),
    ({"model": ["x"]}, ["model", "did you mean 'models'"]),
])
def test_bad_fields_are_named_with_the_fix(tmp_path, zoo, fields, names):
    path = _space(tmp_path, zoo, **fields)
    assert_refused(_show(path), path, *names)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("kind: layer\nmodels:\n  - a\n - b\nrepeats: 2\n")
    assert_refused(_show(path), path, "not valid YAML", "line 4")


def test_a_space_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("- just\n- a list\n")
    assert_refused(_show(path), path, "mapping")


@pytest.mark.parametrize("fields, names", [
    ({"models": []}, ["models", "at least 1"]),
    ({"methods": []}, ["methods", "at least 1"]),
    ({"parameters": {}}, ["parameters", "weight"]),
])
def test_a_space_with_empty_gene_lists_is_refused(tmp_path, zoo, fields, names):
    path = _space(tmp_path, zoo, **fields)
    assert_refused(_show(path), path, *names)


class _Fixed(Space):
    """A plugin kind whose genome is empty: everything fixed."""

    kind: Literal["fixed"] = "fixed"

    def genes(self):
        return []


def test_a_space_with_no_genes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(SPACE_KINDS._items, "fixed", _Fixed)
    path = tmp_path / "space.yaml"
    path.write_text("kind: fixed\n")
    assert_refused(_show(path), path, "no genes", "nothing to search", "evomerge merge")
