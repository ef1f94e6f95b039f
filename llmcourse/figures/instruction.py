"""Figures of section 7.3, instruction fine-tuning: how a batch is masked. (The chapter draws
its loss curves with ``llmcourse.figures.training`` and the entries' lengths with
``llmcourse.figures.tokenization.token_length_figure``.)

- ``masking_grid_figure``: a batch drawn as a grid, positions across and entries down, the
  inputs above and the targets below, each cell coloured by its role: prompt, response, end
  token, padding, or ignored by the loss (-100). A dropdown switches prompt masking on and off.
  ``input_roles`` and ``target_roles`` compute the roles.

Everything is computed in Python and stored in the figure, so the dropdowns work in the static
book, without a kernel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from llmcourse.errors import InputError
from llmcourse.figures.display import layout_defaults
from llmcourse.instruction import IGNORE_INDEX, TokenizedEntry, collate
from llmcourse.tokenizers import GPT2_EOT_ID, Tokenizer
from llmcourse.tokenizers.files import end_of_text_id

ROLE_COLOURS = {  # role: colour, in the order of their numbers in the grid
    "prompt": "#8ab4f8",
    "response": "#81c995",
    "end token": "#f29900",
    "padding": "#dadce0",
    "ignored (-100)": "#5f6368",
}
ROLES = tuple(ROLE_COLOURS)
IGNORED = "ignored (-100)"
SERIES_COLOURS = ("#1a73e8", "#d93025", "#188038", "#9334e6", "#f29900")


# ----------------------------------------------------------------------------------------------
# Lengths


# ----------------------------------------------------------------------------------------------
# The masking of a batch


def input_roles(items: Sequence[TokenizedEntry], length: int) -> list[list[str]]:
    """The role of each of the first ``length`` input positions of each entry, as ``collate``
    lays them out: "prompt" (position < prompt length), "response" (the response header and
    the output), "end token" (the one appended after the text) and "padding" (the rest)."""
    roles = []
    for item in items:
        size = len(item.ids)
        roles.append([
            "prompt" if position < item.prompt_length
            else "response" if position < size
            else "end token" if position == size
            else "padding"
            for position in range(length)
        ])
    return roles


def target_roles(
    items: Sequence[TokenizedEntry], targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> list[list[str]]:
    """The role of each target (B, L): ``IGNORED`` where it is ``ignore_index``, otherwise the
    role of the token it asks for, the input one position further on."""
    if targets.dim() != 2 or targets.shape[0] != len(items):
        raise InputError(
            f"targets must have shape (B, L) with B = {len(items)} entries, got "
            f"{tuple(targets.shape)}"
        )
    predicted = [row[1:] for row in input_roles(items, targets.shape[1] + 1)]
    return [
        [IGNORED if target == ignore_index else role for target, role in zip(row, roles,
                                                                             strict=True)]
        for row, roles in zip(targets.tolist(), predicted, strict=True)
    ]


def _role_numbers(roles: list[list[str]]) -> list[list[int]]:
    return [[ROLES.index(role) for role in row] for row in roles]


def _role_colourscale() -> list[list[float | str]]:
    """A stepwise colour scale: role number k (of n) takes colour k over [k / n, (k + 1) / n]."""
    steps: list[list[float | str]] = []
    for index, colour in enumerate(ROLE_COLOURS.values()):
        steps += [[index / len(ROLES), colour], [(index + 1) / len(ROLES), colour]]
    return steps


def _piece(tokenizer: Tokenizer, token: int) -> str:
    return repr(tokenizer.decode([token]))


def _hover_texts(
    tokenizer: Tokenizer, ids: torch.Tensor, roles: list[list[str]], *, label: str,
    shown_ids: torch.Tensor | None = None,
) -> list[list[str]]:
    """Hover text of each cell: entry, position, the token (``shown_ids`` gives the token a
    masked target stands for) and its role."""
    shown_ids = ids if shown_ids is None else shown_ids
    texts = []
    for row, (values, shown, row_roles) in enumerate(
        zip(ids.tolist(), shown_ids.tolist(), roles, strict=True)
    ):
        texts.append([
            f"entry {row + 1}, position {position}<br>{label}: {value}"
            + (f" (stands for {_piece(tokenizer, token)})" if value < 0
               else f" = {_piece(tokenizer, value)}")
            + f"<br>{role}"
            for position, (value, token, role) in enumerate(zip(values, shown, row_roles,
                                                                strict=True))
        ])
    return texts


def masking_grid_figure(
    items: Sequence[TokenizedEntry],
    tokenizer: Tokenizer,
    *,
    pad_id: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    max_length: int | None = None,
    title: str = "What the loss sees: a batch's inputs and targets",
) -> go.Figure:
    """The batch ``collate(items, ...)`` makes, drawn as two grids (positions across, entries
    down): the inputs above, the targets below, each cell coloured by its role (``ROLES``).
    A dropdown shows the targets without and with prompt masking. Hovering a cell shows its
    token id and text."""
    if not items:
        raise InputError("give at least one entry to draw")
    if pad_id is None:  # the tokenizer's <|endoftext|>, which pads batches
        pad_id = end_of_text_id(tokenizer, default=GPT2_EOT_ID)
    settings = {"pad_id": pad_id, "ignore_index": ignore_index, "max_length": max_length}
    inputs, targets = collate(items, **settings)
    _, masked_targets = collate(items, mask_prompt=True, **settings)
    # the token each target stands for, masked or not: without prompt masking only the
    # padding after the end token is ignored, and it stands for pad_id
    next_tokens = targets.masked_fill(targets == ignore_index, pad_id)
    rows = [f"entry {index + 1}" for index in range(len(items))]
    heatmap = {"colorscale": _role_colourscale(), "zmin": -0.5, "zmax": len(ROLES) - 0.5,
               "showscale": False, "xgap": 1, "ygap": 1, "y": rows, "hoverinfo": "text"}

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("inputs", "targets (what each position must predict)"))
    fig.add_trace(go.Heatmap(
        z=_role_numbers(input_roles(items, inputs.shape[1])), name="inputs",
        hovertext=_hover_texts(tokenizer, inputs, input_roles(items, inputs.shape[1]),
                               label="input"), **heatmap,
    ), row=1, col=1)
    frames = {}
    for name, batch_targets in (("prompt masking off", targets), ("prompt masking on",
                                                                 masked_targets)):
        roles = target_roles(items, batch_targets, ignore_index)
        frames[name] = (_role_numbers(roles), _hover_texts(
            tokenizer, batch_targets, roles, label="target", shown_ids=next_tokens))
    first_z, first_text = frames["prompt masking off"]
    fig.add_trace(go.Heatmap(z=first_z, hovertext=first_text, name="targets", **heatmap),
                  row=2, col=1)
    for role, colour in ROLE_COLOURS.items():
        fig.add_trace(go.Scatter(
            x=[None], y=[None], mode="markers", name=role, showlegend=True,
            marker={"symbol": "square", "size": 12, "color": colour},
        ), row=1, col=1)
    fig.update_layout(
        updatemenus=[{
            "type": "dropdown", "x": 1.0, "xanchor": "right", "y": 1.12, "yanchor": "bottom",
            "buttons": [
                {"label": name, "method": "restyle",
                 "args": [{"z": [z], "hovertext": [text]}, [1]]}
                for name, (z, text) in frames.items()
            ],
        }],
        legend={"orientation": "h", "y": -0.18},
        height=260 + 60 * len(items),
        plot_bgcolor="white",
    )
    fig.update_yaxes(autorange="reversed")
    layout_defaults(fig, title=title, x_title=None, y_title="batch row")
    fig.update_xaxes(title_text="position", row=2, col=1)
    return fig


# ----------------------------------------------------------------------------------------------
# Task criteria against baselines


def criterion_success_figure(
    scores: Mapping[str, object],
    *,
    title: str = "Share of test instructions whose task criterion is met",
    model_name: str = "fine-tuned",
) -> go.Figure:
    """Grouped bars: for each task (and "all tasks"), the criterion success of the fine-tuned
    model and of each baseline of ``scores``, the table ``llmcourse.instruction_scores.
    scores_with_baselines`` makes for entries with tasks (the scored model named
    ``model_name``)."""
    fine_tuned = scores["fine_tuned"]
    if not isinstance(fine_tuned, Mapping) or fine_tuned.get("criterion_success") is None:
        raise InputError(
            "these scores have no task criteria (entries without a 'task', like the book's "
            "data): there is nothing to draw; compare ROUGE-L instead"
        )
    rows = {model_name: fine_tuned,
            **{name.replace("_", " "): row for name, row in scores["baselines"].items()}}
    tasks = list(fine_tuned["criterion_success_by_task"])
    groups = ["all tasks", *(task.replace("_", " ") for task in tasks)]
    fig = go.Figure()
    for index, (name, row) in enumerate(rows.items()):
        by_task = row.get("criterion_success_by_task", {})
        values = [row["criterion_success"], *(by_task.get(task, 0.0) for task in tasks)]
        fig.add_trace(go.Bar(
            x=groups, y=[100 * value for value in values], name=name,
            marker={"color": SERIES_COLOURS[index % len(SERIES_COLOURS)]},
            hovertemplate="%{x}: %{y:.1f}%<extra>" + name + "</extra>",
        ))
    fig.update_layout(barmode="group", height=420, yaxis={"range": [0, 100]},
                      legend={"orientation": "h", "y": -0.25})
    return layout_defaults(fig, title=title, x_title="task", y_title="criterion met (%)")
