"""The Pareto front as pictures: a PNG (matplotlib) and an interactive HTML page (plotly).

Two objectives: one scatter. More: a panel per pair of objectives. Every trial
at the top fidelity is a grey point; front members are highlighted. In the PNG
they are labelled by trial number where a label has room: members that cluster
would print their labels over each other, so a label that would overlap one
already placed tries other sides of its point and is left out when none is
free (the title counts those). The HTML shows every label on hover; it embeds
plotly.js, so it opens offline.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np


def front_png(values: np.ndarray, mask: np.ndarray, labels: list[str], names: list[str], path) -> int:
    """``values``: one row per trial, one column per objective, in the objectives' own units.
    Returns how many members' labels were left out (in the most crowded panel)."""
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
        ax.set_xlabel(names[i])
        ax.set_ylabel(names[j])
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.tight_layout()  # before placing labels: their room depends on the final axes
    members = np.flatnonzero(mask)
    hidden = 0
    for ax, (i, j) in zip(axes.flat, pairs, strict=False):
        placed = place_labels(ax, values[members, i], values[members, j], [labels[k] for k in members])
        hidden = max(hidden, len(members) - len(placed))
    note = f"; {hidden} labels left out where crowded (front.html: all, on hover)" if hidden else ""
    fig.suptitle(f"Pareto front: {int(mask.sum())} of {len(mask)} trials{note}", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return hidden


# Sides of a point a label may take (offset in points, horizontal and vertical alignment),
# tried in this order.
_SIDES = [((3, 3), "left", "bottom"), ((3, -3), "left", "top"), ((-3, 3), "right", "bottom"),
          ((-3, -3), "right", "top"), ((0, 6), "center", "bottom"), ((0, -6), "center", "top"),
          ((6, 0), "left", "center"), ((-6, 0), "right", "center")]


def place_labels(ax, xs, ys, labels: list[str], fontsize: float = 7) -> list:
    """Annotate each point on the first side where its label overlaps no label placed before
    and stays inside the axes; points with no free side get none. Returns the placed texts."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = []
    placed = []
    for x, y, label in zip(xs, ys, labels, strict=True):
        for offset, ha, va in _SIDES:
            text = ax.annotate(label, (x, y), xytext=offset, textcoords="offset points",
                               fontsize=fontsize, ha=ha, va=va)
            box = text.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in taken):
                taken.append(box)
                placed.append(text)
                break
            text.remove()
    return placed


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
                # Labels on hover only: printed beside each member they crowd where members cluster.
                x=values[sel, 0], y=values[sel, 1], mode="markers", name=name,
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
