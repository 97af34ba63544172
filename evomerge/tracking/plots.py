"""The Pareto front as pictures: a PNG (matplotlib) and an interactive HTML page (plotly).

Two objectives: one scatter. More: a panel per pair of objectives. Every trial
at the top fidelity is a grey point; front members are highlighted and
labelled by trial number. The HTML embeds plotly.js, so it opens offline.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np


def front_png(values: np.ndarray, mask: np.ndarray, labels: list[str], names: list[str], path) -> None:
    """``values``: one row per trial, one column per objective, in the objectives' own units."""
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in worker threads and CI
    import matplotlib.pyplot as plt

    pairs = list(combinations(range(len(names)), 2)) or [(0, 0)]
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, (i, j) in zip(axes.flat, pairs, strict=False):
        ax.scatter(values[~mask, i], values[~mask, j], s=12, c="0.7", label="trials")
        ax.scatter(values[mask, i], values[mask, j], s=28, c="tab:red", label="Pareto front")
        for k in np.flatnonzero(mask):
            ax.annotate(labels[k], (values[k, i], values[k, j]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel(names[i])
        ax.set_ylabel(names[j])
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Pareto front: {int(mask.sum())} of {len(mask)} trials")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def front_html(values: np.ndarray, mask: np.ndarray, labels: list[str], names: list[str],
               hover: list[str], path) -> None:
    import plotly.graph_objects as go

    colors = np.where(mask, "crimson", "lightgray").tolist()
    text = [f"{lab}<br>{h}" for lab, h in zip(labels, hover, strict=True)]
    if len(names) == 2:
        fig = go.Figure()
        for on, name in ((False, "trials"), (True, "Pareto front")):
            sel = mask == on
            fig.add_trace(go.Scatter(
                x=values[sel, 0], y=values[sel, 1], mode="markers+text" if on else "markers",
                name=name, text=[labels[k] for k in np.flatnonzero(sel)], textposition="top center",
                hovertext=[text[k] for k in np.flatnonzero(sel)], hoverinfo="text",
                marker={"color": "crimson" if on else "lightgray", "size": 9 if on else 6},
            ))
        fig.update_layout(xaxis_title=names[0], yaxis_title=names[1])
    else:
        fig = go.Figure(go.Splom(
            dimensions=[{"label": n, "values": values[:, i]} for i, n in enumerate(names)],
            hovertext=text, hoverinfo="text", marker={"color": colors, "size": 6},
            diagonal_visible=False, showupperhalf=False,
        ))
    fig.update_layout(title=f"Pareto front: {int(mask.sum())} of {len(mask)} trials (red)")
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
