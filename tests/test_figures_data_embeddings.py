"""Figures of chapters 2 and 3: the sliding window, embedding projections, position effects."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pytest
import torch

from llmcourse.errors import InputError
from llmcourse.figures.data_sampling import (
    IDLE,
    INPUT,
    TARGET,
    grid_rows,
    sliding_window_figure,
    window_cells,
)
from llmcourse.figures.display import PROFILE_LABEL_NAME, figure_output
from llmcourse.figures.embeddings import (
    embedding_projection_figure,
    explained_variance,
    position_effect_figure,
    principal_axes,
    project,
)
from llmcourse.sliding_window import SlidingWindowDataset

# ----------------------------------------------------------------------------------------------
# Chapter 2: the sliding window


def test_window_cells_marks_inputs_and_shifted_targets():
    # 5 tokens, 3 per line: line 0 holds tokens 0-2, line 1 tokens 3-4; window of 2 at token 1.
    assert window_cells(num_tokens=5, tokens_per_row=3, start=1, max_length=2) == [
        [IDLE, INPUT, INPUT],  # inputs copy of line 0: tokens 1 and 2
        [IDLE, IDLE, TARGET],  # targets copy of line 0: token 2 ...
        [None, None, None],  # blank row between the lines
        [IDLE, IDLE, None],
        [TARGET, IDLE, None],  # ... and token 3
    ]
    assert grid_rows(5, 3) == 5
    assert grid_rows(6, 3) == 5
    assert grid_rows(7, 3) == 8


def token_positions(cells, value):
    """The text positions (line * per_row + column) of the cells holding ``value``."""
    per_row = len(cells[0])
    return sorted(
        (row // 3) * per_row + column
        for row, line in enumerate(cells)
        for column, cell in enumerate(line)
        if cell == value
    )


def small_window_figure(strides=(1, 3)):
    ids = list(range(100, 117))
    pieces = [f" w{i}" for i in range(len(ids))]
    return sliding_window_figure(pieces, ids, max_length=3, strides=strides, tokens_per_row=5)


def test_slider_steps_are_the_windows_of_the_dataset():
    fig = small_window_figure(strides=(1, 3))
    ids = list(range(100, 117))
    (slider,) = fig.layout.sliders
    expected_starts = list(SlidingWindowDataset(ids, max_length=3, stride=1).starts)
    assert [int(step.label) for step in slider.steps] == expected_starts
    for start, step in zip(expected_starts, slider.steps, strict=True):
        (cells,) = step.args[0]["z"]
        assert token_positions(cells, INPUT) == [start, start + 1, start + 2]
        assert token_positions(cells, TARGET) == [start + 1, start + 2, start + 3]
        assert list(step.args[1]) == [0]  # only the grid is recoloured
    assert [list(row) for row in fig.data[0].z] == window_cells(17, 5, 0, 3)


def test_stride_dropdown_swaps_in_the_slider_of_each_stride():
    fig = small_window_figure(strides=(1, 3))
    ids = list(range(100, 117))
    (menu,) = fig.layout.updatemenus
    assert [button.label for button in menu.buttons] == ["stride 1", "stride 3"]
    for stride, button in zip((1, 3), menu.buttons, strict=True):
        trace_update, layout_update, traces = button.args
        (slider,) = layout_update["sliders"]
        starts = list(SlidingWindowDataset(ids, max_length=3, stride=stride).starts)
        assert [int(step["label"]) for step in slider["steps"]] == starts
        assert trace_update["z"] == [window_cells(17, 5, 0, 3)]
        assert list(traces) == [0]
        assert f"stride {stride}" in slider["currentvalue"]["prefix"]


def test_one_stride_needs_no_dropdown():
    assert small_window_figure(strides=(4,)).layout.updatemenus == ()


def test_window_grid_shows_every_token_twice_with_its_id_on_hover():
    fig = small_window_figure()
    grid = fig.data[0]
    assert list(grid.text[0]) == ["·w0", "·w1", "·w2", "·w3", "·w4"]
    assert list(grid.text[1]) == list(grid.text[0])
    assert list(grid.text[2]) == [""] * 5
    assert "position 6" in grid.customdata[3][1] and "id 106" in grid.customdata[3][1]
    assert grid.customdata[4][1].startswith("<b>targets</b>")
    assert list(fig.layout.yaxis.ticktext) == ["inputs", "targets"] * 4
    assert [trace.name for trace in fig.data[1:]] == ["input window", "target window"]


def test_window_figure_is_labelled_and_serializable():
    fig = small_window_figure()
    assert fig.layout.title.text.startswith("Sliding window")
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert any(note.name == PROFILE_LABEL_NAME for note in fig.layout.annotations)
    assert "plotly-graph-div" in figure_output(fig).html


def test_window_figure_rejects_bad_input():
    with pytest.raises(InputError, match="one piece per id"):
        sliding_window_figure(["a"], [1, 2], max_length=1)
    with pytest.raises(ValueError, match="cannot fill one window"):
        sliding_window_figure(["a", "b"], [1, 2], max_length=2)


# ----------------------------------------------------------------------------------------------
# Chapter 3: principal directions


def points_on_a_tilted_plane():
    """Points spread mostly along (0.6, 0.8, 0), less along (0, 0, 1), not at all otherwise."""
    major = torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64)
    minor = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    along_major = torch.tensor([-3.0, -1.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    along_minor = torch.tensor([0.5, -1.5, 1.0, 0.0, 0.0], dtype=torch.float64)  # uncorrelated
    offset = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    return offset + along_major[:, None] * major + along_minor[:, None] * minor


def test_principal_axes_find_the_directions_of_largest_spread():
    vectors = points_on_a_tilted_plane()
    mean, axes = principal_axes(vectors, k=2)
    torch.testing.assert_close(mean, vectors.mean(dim=0))
    expected = torch.tensor([[0.6, 0.0], [0.8, 0.0], [0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(axes, expected, rtol=0, atol=1e-12)


def test_principal_axes_agree_with_the_covariance_eigenvectors():
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(40, 6, generator=generator) * torch.arange(6, 0, -1)
    mean, axes = principal_axes(vectors, k=3)
    centred = vectors.double() - vectors.double().mean(dim=0)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred)  # ascending order
    top = eigenvectors[:, [5, 4, 3]]
    torch.testing.assert_close(axes.abs(), top.abs(), rtol=0, atol=1e-9)
    torch.testing.assert_close(axes.T @ axes, torch.eye(3, dtype=torch.float64), atol=1e-12,
                               rtol=0)
    assert explained_variance(vectors, 3) == pytest.approx(
        float(eigenvalues[3:].sum() / eigenvalues.sum()), abs=1e-12
    )


def test_principal_axes_do_not_depend_on_the_order_of_the_vectors():
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn(30, 5, generator=generator)
    _, axes = principal_axes(vectors, k=2)
    _, shuffled_axes = principal_axes(vectors[torch.randperm(30, generator=generator)], k=2)
    torch.testing.assert_close(axes, shuffled_axes, rtol=0, atol=1e-10)
    largest = axes.abs().argmax(dim=0)
    assert (axes[largest, torch.arange(2)] > 0).all()  # the sign convention


def test_project_gives_the_coordinates_along_the_axes():
    vectors = points_on_a_tilted_plane()
    mean, axes = principal_axes(vectors, k=2)
    expected = torch.tensor(
        [[-3.0, 0.5], [-1.0, -1.5], [0.0, 1.0], [2.0, 0.0], [2.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(project(vectors, mean, axes), expected, rtol=0, atol=1e-12)
    assert explained_variance(vectors, 2) == pytest.approx(1.0, abs=1e-12)
    assert explained_variance(vectors, 1) == pytest.approx(18 / (18 + 3.5), abs=1e-12)


def test_principal_axes_reject_too_many_directions():
    with pytest.raises(ValueError, match="k must be between 1 and 3"):
        principal_axes(torch.zeros(3, 4), k=4)
    with pytest.raises(ValueError, match="matrix"):
        principal_axes(torch.zeros(3), k=1)


# ----------------------------------------------------------------------------------------------
# Chapter 3: the projection figure


def projection_snapshots(dims=2):
    first = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    return [("0", first[:, :dims]), ("10", 2 * first[:, :dims] - 1)]


def test_projection_figure_opens_on_the_last_snapshot_with_one_trace_per_group():
    labels, groups = ["a", "b", "c", "d"], ["x", "y", "x", "z"]
    hovers = [f"{label}: id {i}" for i, label in enumerate(labels)]
    fig = embedding_projection_figure(
        projection_snapshots(), labels, hovers, groups, title="Points"
    )
    assert [trace.name for trace in fig.data] == ["x", "y", "z"]
    assert all(isinstance(trace, go.Scatter) for trace in fig.data)
    first_group = fig.data[0]
    assert list(first_group.text) == ["a", "c"]
    assert list(first_group.hovertext) == ["a: id 0", "c: id 2"]
    assert list(first_group.x) == [-1.0, -1.0] and list(first_group.y) == [-1.0, 1.0]
    (slider,) = fig.layout.sliders
    assert slider.active == 1
    assert [step.label for step in slider.steps] == ["0", "10"]
    update, traces = slider.steps[0].args
    assert list(traces) == [0, 1, 2]
    assert update["x"] == [[0.0, 0.0], [1.0], [1.0]]
    assert update["y"] == [[0.0, 1.0], [0.0], [1.0]]
    low, high = fig.layout.xaxis.range
    assert low < -1.0 and high > 1.0  # covers every snapshot
    assert fig.layout.xaxis.title.text == "1st principal direction"


def test_projection_figure_in_three_dimensions():
    fig = embedding_projection_figure(
        projection_snapshots(dims=3), ["a", "b", "c", "d"], ["", "", "", ""], ["g"] * 4,
        title="Points in 3-D",
    )
    (trace,) = fig.data
    assert isinstance(trace, go.Scatter3d)
    assert list(trace.z) == [-1.0, -1.0, -1.0, 1.0]
    assert set(fig.layout.sliders[0].steps[0].args[0]) == {"x", "y", "z"}
    assert fig.layout.scene.zaxis.title.text == "3rd principal direction"


def test_projection_figure_rejects_mismatched_input():
    with pytest.raises(ValueError, match="one label"):
        embedding_projection_figure(projection_snapshots(), ["a"], ["a"], ["g"], title="t")
    with pytest.raises(ValueError, match="2 or 3 columns"):
        embedding_projection_figure(
            [("0", torch.zeros(4, 4))], ["a"] * 4, [""] * 4, ["g"] * 4, title="t"
        )


# ----------------------------------------------------------------------------------------------
# Chapter 3: what positions add


def test_position_effect_figure_shows_both_panels_on_one_scale():
    tokens = torch.tensor([[1.0, -2.0], [1.0, -2.0], [0.5, 0.0]])
    with_positions = tokens + torch.tensor([[0.0, 0.0], [3.0, 0.5], [-1.0, 1.0]])
    fig = position_effect_figure(["a", "b", "a"], tokens, with_positions)
    left, right = fig.data
    assert [list(row) for row in left.z] == tokens.tolist()
    assert [list(row) for row in right.z] == with_positions.tolist()
    assert list(left.y) == ["0: a", "1: b", "2: a"]
    assert left.coloraxis == right.coloraxis == "coloraxis"
    assert fig.layout.coloraxis.cmax == 4.0 and fig.layout.coloraxis.cmin == -4.0
    assert fig.layout.yaxis.title.text == "position: token"
    titles = {note.text: note for note in fig.layout.annotations}
    assert titles["tokens only"].yshift == titles["tokens + positions"].yshift == 18
    assert any(note.name == PROFILE_LABEL_NAME and not note.yshift for note in titles.values())
    assert not math.isnan(fig.layout.coloraxis.cmax)


def test_position_effect_figure_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        position_effect_figure(["a"], torch.zeros(1, 2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="one label per row"):
        position_effect_figure(["a"], torch.zeros(2, 2), torch.zeros(2, 2))
