"""Figures of chapter 2: the sliding window that cuts a token stream into inputs and targets.

The tokens of a short text are drawn as a grid of equal cells, ``tokens_per_row`` to a line,
and each line is drawn twice: the upper copy shows which tokens are in the current *input*
window, the lower copy which are in its *target* window, so the shift by one token is plain
to see. A slider moves the window over the text; a dropdown picks the stride, which changes
the positions the slider can reach. Every state is precomputed, so the figure works in the
static book without a kernel.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import plotly.graph_objects as go

from llmcourse.errors import InputError
from llmcourse.figures.display import layout_defaults
from llmcourse.figures.tokenization import Piece, token_label
from llmcourse.sliding_window import SlidingWindowDataset

IDLE_COLOUR = "#f1f3f4"
INPUT_COLOUR = "#8ab4f8"
TARGET_COLOUR = "#fbbc04"
IDLE, INPUT, TARGET = 0, 1, 2  # the cell values that pick the colours above
COLOUR_SCALE = [
    [0.0, IDLE_COLOUR], [1 / 3, IDLE_COLOUR],
    [1 / 3, INPUT_COLOUR], [2 / 3, INPUT_COLOUR],
    [2 / 3, TARGET_COLOUR], [1.0, TARGET_COLOUR],
]
GRID_ROWS_PER_LINE = 3  # inputs, targets, a blank row between two lines of text
MAX_LABEL_CHARACTERS = 9  # longer token labels are cut (hover shows the whole token)
ROW_HEIGHT_PX = 30


def cell_of(position: int, tokens_per_row: int) -> tuple[int, int]:
    """The (grid row of the inputs copy, column) of the token at ``position`` in the text.

    Its targets copy is one grid row below.
    """
    line, column = divmod(position, tokens_per_row)
    return GRID_ROWS_PER_LINE * line, column


def grid_rows(num_tokens: int, tokens_per_row: int) -> int:
    """How many grid rows ``num_tokens`` tokens take (no blank row after the last line)."""
    return GRID_ROWS_PER_LINE * math.ceil(num_tokens / tokens_per_row) - 1


def window_cells(
    num_tokens: int, tokens_per_row: int, start: int, max_length: int
) -> list[list[float | None]]:
    """The grid of cell values for the window starting at token ``start``.

    Inputs-copy cells of tokens ``start .. start + max_length - 1`` are ``INPUT``, targets-copy
    cells of tokens ``start + 1 .. start + max_length`` are ``TARGET``, other token cells are
    ``IDLE``; blank rows and the cells after the last token are ``None`` (not drawn).
    Shape: (grid_rows, tokens_per_row).
    """
    cells: list[list[float | None]] = [
        [None] * tokens_per_row for _ in range(grid_rows(num_tokens, tokens_per_row))
    ]
    for position in range(num_tokens):
        row, column = cell_of(position, tokens_per_row)
        in_inputs = start <= position < start + max_length
        in_targets = start + 1 <= position <= start + max_length
        cells[row][column] = INPUT if in_inputs else IDLE
        cells[row + 1][column] = TARGET if in_targets else IDLE
    return cells


def _short_label(piece: Piece) -> str:
    label = token_label(piece)
    if len(label) > MAX_LABEL_CHARACTERS:
        label = label[: MAX_LABEL_CHARACTERS - 1] + "…"
    return html.escape(label, quote=False)


def _token_grid(
    pieces: Sequence[Piece], ids: Sequence[int], tokens_per_row: int
) -> tuple[list[list[str]], list[list[str]]]:
    """The labels and the hover texts of every cell, (grid_rows, tokens_per_row) each."""
    rows = grid_rows(len(ids), tokens_per_row)
    labels = [[""] * tokens_per_row for _ in range(rows)]
    hovers = [[""] * tokens_per_row for _ in range(rows)]
    for position, (piece, token_id) in enumerate(zip(pieces, ids, strict=True)):
        row, column = cell_of(position, tokens_per_row)
        token = html.escape(repr(piece), quote=False)
        for offset, role in enumerate(("inputs", "targets")):
            labels[row + offset][column] = _short_label(piece)
            hovers[row + offset][column] = (
                f"<b>{role}</b> row<br>position {position}: {token}<br>id {token_id}"
            )
    return labels, hovers


def _slider(
    num_tokens: int, tokens_per_row: int, max_length: int, stride: int, starts: Sequence[int]
) -> dict:
    """A slider over the windows of one stride; each step recolours the grid (trace 0)."""
    steps = [
        {
            "label": str(start),
            "method": "restyle",
            "args": [{"z": [window_cells(num_tokens, tokens_per_row, start, max_length)]}, [0]],
        }
        for start in starts
    ]
    return {
        "active": 0,
        "steps": steps,
        "currentvalue": {"prefix": f"stride {stride}: the window starts at token "},
        "pad": {"t": 30},
    }


def _legend_entry(name: str, colour: str) -> go.Scatter:
    return go.Scatter(
        x=[None], y=[None], mode="markers", name=name,
        marker={"symbol": "square", "size": 14, "color": colour},
    )


def sliding_window_figure(
    pieces: Sequence[Piece],
    ids: Sequence[int],
    max_length: int,
    strides: Sequence[int] = (1,),
    *,
    tokens_per_row: int = 6,
    title: str = "Sliding window: inputs and their targets, shifted by one token",
) -> go.Figure:
    """The windows ``SlidingWindowDataset(ids, max_length, stride)`` cuts from a text.

    ``pieces[i]`` is what token ``ids[i]`` stands for (its text or bytes). A slider goes
    through the windows; with several ``strides``, a dropdown switches between them (the
    first is shown first). Hover over a cell to see the token, its position and its id.
    """
    if len(pieces) != len(ids):
        raise InputError(
            f"got {len(pieces)} pieces but {len(ids)} ids: pass one piece per id"
        )
    if not strides or tokens_per_row < 1:
        raise ValueError("pass at least one stride and a positive tokens_per_row")
    starts_by_stride = {
        stride: SlidingWindowDataset(ids, max_length, stride).starts for stride in strides
    }
    sliders = {
        stride: _slider(len(ids), tokens_per_row, max_length, stride, starts)
        for stride, starts in starts_by_stride.items()
    }
    labels, hovers = _token_grid(pieces, ids, tokens_per_row)
    first = strides[0]
    grid = go.Heatmap(
        z=window_cells(len(ids), tokens_per_row, starts_by_stride[first][0], max_length),
        text=labels,
        texttemplate="%{text}",
        textfont={"family": "DejaVu Sans Mono, Menlo, Consolas, monospace", "size": 12},
        customdata=hovers,
        hovertemplate="%{customdata}<extra></extra>",
        colorscale=COLOUR_SCALE,
        zmin=IDLE,
        zmax=TARGET,
        showscale=False,
        xgap=3,
        ygap=3,
    )
    fig = go.Figure([
        grid, _legend_entry("input window", INPUT_COLOUR),
        _legend_entry("target window", TARGET_COLOUR),
    ])
    if len(strides) > 1:
        buttons = [
            {
                "label": f"stride {stride}",
                "method": "update",
                "args": [
                    {"z": [sliders[stride]["steps"][0]["args"][0]["z"][0]]},
                    {"sliders": [sliders[stride]]},
                    [0],
                ],
            }
            for stride in strides
        ]
        fig.update_layout(updatemenus=[{
            "buttons": buttons, "direction": "down", "x": 0.0, "xanchor": "left",
            "y": 1.0, "yanchor": "bottom", "pad": {"b": 10},
        }])
    rows = grid_rows(len(ids), tokens_per_row)
    input_rows = range(0, rows, GRID_ROWS_PER_LINE)
    fig.update_yaxes(
        autorange="reversed",
        tickvals=[row + offset for row in input_rows for offset in (0, 1)],
        ticktext=["inputs", "targets"] * len(input_rows),
        showgrid=False,
        zeroline=False,
    )
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(
        sliders=[sliders[first]],
        height=220 + ROW_HEIGHT_PX * rows,
        plot_bgcolor="white",
        legend={"orientation": "h", "x": 0.2, "xanchor": "left", "y": 1.0, "yanchor": "bottom"},
        margin={"l": 70, "r": 10, "t": 110, "b": 10},
    )
    return layout_defaults(
        fig, title=title, x_title="tokens in reading order: left to right, line by line",
        y_title="window",
    )
