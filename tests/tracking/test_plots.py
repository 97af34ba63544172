"""The front plot keeps its labels readable where front members cluster."""

from __future__ import annotations

import json
import re

import numpy as np


def _axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    return plt, fig, ax


def test_clustered_members_get_labels_that_do_not_overlap():
    from evomerge.tracking.plots import place_labels

    plt, fig, ax = _axes()
    rng = np.random.default_rng(0)
    xs, ys = 0.5 + 0.01 * rng.standard_normal(40), 0.5 + 0.01 * rng.standard_normal(40)
    placed = place_labels(ax, xs, ys, [f"#{100 + k}" for k in range(40)])
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in placed]
    assert 1 <= len(placed) < 40  # a tight cluster cannot label every member
    assert not any(a.overlaps(b) for n, a in enumerate(boxes) for b in boxes[n + 1:])
    assert len(ax.texts) == len(placed)  # the labels tried and left out are gone
    plt.close(fig)


def test_members_apart_are_all_labelled():
    from evomerge.tracking.plots import place_labels

    plt, fig, ax = _axes()
    xs = np.linspace(0.1, 0.9, 8)
    placed = place_labels(ax, xs, 1 - xs, [f"#{k}" for k in range(8)])
    assert [t.get_text() for t in placed] == [f"#{k}" for k in range(8)]
    plt.close(fig)


def test_the_png_says_how_many_labels_it_left_out_and_the_html_shows_all_on_hover(tmp_path):
    from evomerge.tracking.plots import front_html, front_png

    rng = np.random.default_rng(1)
    values = np.concatenate([0.5 + 0.005 * rng.standard_normal((30, 2)), rng.random((10, 2))])
    mask = np.zeros(40, dtype=bool)
    mask[:30] = True
    labels = [f"#{k}" for k in range(40)]
    assert front_png(values, mask, labels, ["a", "b"], tmp_path / "front.png") > 0
    assert (tmp_path / "front.png").stat().st_size > 10_000
    assert front_png(values, ~mask, labels, ["a", "b"], tmp_path / "apart.png") == 0
    front_html(values, mask, labels, ["a", "b"], ["x"] * 40, tmp_path / "front.html")
    html = (tmp_path / "front.html").read_text()
    figure = json.loads(re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", html, re.S).group(1))
    front = next(t for t in figure if t["name"] == "Pareto front")
    assert front["mode"] == "markers"  # no printed labels to crowd
    assert sorted(h.split("<br>")[0] for h in front["hovertext"]) == sorted(labels[:30])
