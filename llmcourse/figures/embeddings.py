"""Figures of chapter 3: embedding tables seen through a projection, and what positions add.

An embedding table has far more than three columns, so to look at it we project its rows onto
the directions along which they vary most (principal component analysis, PCA): the top right
singular vectors of the centred rows. The projection keeps as much of the spread between the
points as a flat picture can, and ``explained_variance`` says how much that is.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from llmcourse.figures.display import layout_defaults

GROUP_COLOURS = (
    "#1a73e8", "#d93025", "#188038", "#f29900", "#9334e6", "#12b5cb", "#e8710a", "#5f6368",
)
MARGIN = 0.08  # of the data's range, added on each side of fixed axis ranges


def principal_axes(vectors: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean (C,) of ``vectors`` (N, C) and its ``k`` principal directions as columns (C, k).

    The directions are orthonormal, sorted by the variance along them (largest first). An SVD
    leaves the sign of each direction free; here the largest entry (in absolute value) of
    every direction is made positive, so the same vectors always give the same picture.
    """
    if vectors.dim() != 2:
        raise ValueError(f"vectors must be a matrix (N, C), got shape {tuple(vectors.shape)}")
    if not 1 <= k <= min(vectors.shape):
        raise ValueError(
            f"cannot find {k} principal directions of {vectors.shape[0]} vectors of size "
            f"{vectors.shape[1]}: k must be between 1 and {min(vectors.shape)}"
        )
    vectors = vectors.detach().double()
    mean = vectors.mean(dim=0)
    _, _, right_vectors = torch.linalg.svd(vectors - mean, full_matrices=False)
    axes = right_vectors[:k].T  # (C, k)
    largest = axes.abs().argmax(dim=0)  # (k,)
    signs = axes[largest, torch.arange(k)].sign()
    return mean, axes * signs


def project(vectors: torch.Tensor, mean: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """Coordinates (N, k) of ``vectors`` (N, C) along ``axes`` (C, k), around ``mean`` (C,)."""
    return (vectors.detach().double() - mean) @ axes


def explained_variance(vectors: torch.Tensor, k: int) -> float:
    """The fraction (0 to 1) of the spread of ``vectors`` (N, C) that ``k`` directions keep."""
    centred = vectors.detach().double() - vectors.detach().double().mean(dim=0)
    singular_values = torch.linalg.svdvals(centred)
    return float((singular_values[:k] ** 2).sum() / (singular_values**2).sum())


def _axis_ranges(snapshots: Sequence[tuple[str, torch.Tensor]]) -> list[list[float]]:
    """One [low, high] per coordinate, covering every snapshot with a margin."""
    everything = torch.cat([points for _, points in snapshots])
    low, high = everything.min(dim=0).values, everything.max(dim=0).values
    pad = MARGIN * (high - low).clamp(min=1e-9)
    return [[float(a), float(b)] for a, b in zip(low - pad, high + pad, strict=True)]


def _coordinates(points: torch.Tensor, members: list[int]) -> dict[str, list[float]]:
    names = ("x", "y", "z")[: points.shape[1]]
    return {name: points[members, axis].tolist() for axis, name in enumerate(names)}


def embedding_projection_figure(
    snapshots: Sequence[tuple[str, torch.Tensor]],
    labels: Sequence[str],
    hovers: Sequence[str],
    groups: Sequence[str],
    *,
    title: str,
) -> go.Figure:
    """Labelled points of one projection per snapshot, with a slider between the snapshots.

    ``snapshots`` holds (step name, points (N, 2 or 3)) pairs, all projected on the same axes
    (see ``principal_axes`` and ``project``); the figure opens on the last one. Point ``i`` is
    labelled ``labels[i]``, shows ``hovers[i]`` on hover and is coloured by ``groups[i]``
    (one legend entry per group, in order of first appearance).
    """
    if not snapshots:
        raise ValueError("pass at least one (name, points) snapshot")
    dims = {points.shape[1] for _, points in snapshots}
    if len(dims) != 1 or dims - {2, 3}:
        raise ValueError(f"every snapshot must have 2 or 3 columns, the same, got {sorted(dims)}")
    if not len(labels) == len(hovers) == len(groups) == len(snapshots[0][1]):
        raise ValueError("pass one label, one hover text and one group per point")
    three_d = dims == {3}
    group_names = list(dict.fromkeys(groups))
    members = {name: [i for i, group in enumerate(groups) if group == name] for name in group_names}
    last_points = snapshots[-1][1]
    scatter = go.Scatter3d if three_d else go.Scatter
    fig = go.Figure([
        scatter(
            **_coordinates(last_points, members[name]),
            mode="markers+text",
            name=name,
            text=[labels[i] for i in members[name]],
            hovertext=[hovers[i] for i in members[name]],
            hoverinfo="text",
            textposition="top center",
            marker={"size": 5 if three_d else 9, "color": GROUP_COLOURS[n % len(GROUP_COLOURS)]},
        )
        for n, name in enumerate(group_names)
    ])
    steps = []
    for step_name, points in snapshots:
        coordinates = [_coordinates(points, members[name]) for name in group_names]
        update = {axis: [c[axis] for c in coordinates] for axis in coordinates[0]}
        steps.append({
            "label": step_name, "method": "restyle",
            "args": [update, list(range(len(group_names)))],
        })
    ranges = _axis_ranges(snapshots)
    fig.update_layout(
        sliders=[{
            "active": len(steps) - 1, "steps": steps, "pad": {"t": 40},
            "currentvalue": {"prefix": "training step: "},
        }],
        height=650 if three_d else 600,
        margin={"l": 10, "r": 10, "t": 110, "b": 10},
        legend={
            "title": {"text": "word class"}, "orientation": "h",
            "x": 0.0, "xanchor": "left", "y": 1.06, "yanchor": "bottom",
        },
    )
    axis_titles = ["1st principal direction", "2nd principal direction", "3rd principal direction"]
    if three_d:
        fig.update_layout(scene={
            **{
                f"{name}axis": {"range": axis_range, "title": {"text": axis_title}}
                for name, axis_range, axis_title in zip("xyz", ranges, axis_titles, strict=True)
            },
            "aspectmode": "cube",
        })
        return layout_defaults(fig, title=title, x_title=None, y_title=None)
    fig.update_xaxes(range=ranges[0])
    fig.update_yaxes(range=ranges[1])
    return layout_defaults(fig, title=title, x_title=axis_titles[0], y_title=axis_titles[1])


def position_effect_figure(
    labels: Sequence[str],
    token_vectors: torch.Tensor,
    input_vectors: torch.Tensor,
    *,
    title: str = "Token vectors without and with their positions",
) -> go.Figure:
    """Two heatmaps of one sequence: token embeddings (T, C) and token + position (T, C).

    Row ``t`` is the token at position ``t`` (``labels[t]``); columns are the embedding's
    dimensions. Both panels share one colour scale, centred on zero.
    """
    if token_vectors.shape != input_vectors.shape or token_vectors.dim() != 2:
        raise ValueError(
            "token_vectors and input_vectors must both be (T, C) matrices of the same shape, "
            f"got {tuple(token_vectors.shape)} and {tuple(input_vectors.shape)}"
        )
    if len(labels) != token_vectors.shape[0]:
        raise ValueError(f"pass one label per row: {token_vectors.shape[0]}, got {len(labels)}")
    rows = [f"{position}: {label}" for position, label in enumerate(labels)]
    largest = float(torch.cat([token_vectors, input_vectors]).abs().max())
    fig = make_subplots(
        rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
        subplot_titles=("tokens only", "tokens + positions"),
    )
    for column, (name, vectors) in enumerate(
        (("token", token_vectors), ("token + position", input_vectors)), start=1
    ):
        fig.add_trace(
            go.Heatmap(
                z=vectors.detach().tolist(),
                y=rows,
                coloraxis="coloraxis",
                name=name,
                hovertemplate="%{y}<br>dimension %{x}: %{z:.3f}<extra>" + name + "</extra>",
            ),
            row=1, col=column,
        )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_annotations(yshift=18)  # the panel titles, above the line of the profile label
    fig.update_layout(
        coloraxis={"colorscale": "RdBu", "cmin": -largest, "cmax": largest,
                   "colorbar": {"title": {"text": "value"}}},
        height=160 + 28 * len(rows),
        margin={"l": 10, "r": 10, "t": 110, "b": 10},
    )
    layout_defaults(fig, title=title, x_title="embedding dimension", y_title=None)
    fig.update_yaxes(title_text="position: token", row=1, col=1)
    return fig
