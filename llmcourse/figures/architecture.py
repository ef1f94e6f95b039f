"""Figures of chapter 5, the GPT architecture.

- ``activation_figure``: ReLU and GELU (exact and tanh approximation) with their derivatives;
  ``gelu_approximation_figure``: how far the tanh approximation is from the exact GELU.
- ``gradient_magnitude_figure``: the mean absolute gradient of each layer of a deep network,
  with and without shortcut connections (log scale).
- ``transformer_block_figure`` and ``gpt_model_figure``: the data flow through a transformer
  block and through the whole model, drawn as boxes and arrows with the tensor shape on
  every arrow; hovering a box says what the step does and how many parameters it holds.
- ``model_size_figure``: parameters and weight memory of the GPT-2 sizes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots

from llmcourse.figures.display import layout_defaults
from llmcourse.model import PRESETS, GPTConfig, count_parameters, memory_bytes

RELU_COLOUR = "#d93025"
GELU_COLOUR = "#1a73e8"
EXACT_COLOUR = "#188038"
SHORTCUT_COLOURS = {"with shortcuts": "#1a73e8", "without shortcuts": "#d93025"}
BOX_COLOURS = {  # kind of stage: (fill, border)
    "tensor": ("#f1f3f4", "#5f6368"),
    "layer": ("#e8f0fe", "#1a73e8"),
    "attention": ("#fce8e6", "#d93025"),
    "feed-forward": ("#e6f4ea", "#188038"),
    "add": ("#fef7e0", "#f29900"),
}
GIGABYTE = 1e9  # bytes


# ----------------------------------------------------------------------------------------------
# Activation functions


def activation_curves(x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Values and derivatives at ``x`` (N,) of ReLU, exact GELU and GELU's tanh approximation.

    Returns {name: (values (N,), derivatives (N,))}; derivatives come from autograd (ReLU's
    derivative at 0 is taken as 0, PyTorch's convention).
    """
    functions = {
        "ReLU": torch.relu,
        "GELU (tanh approximation)": lambda t: F.gelu(t, approximate="tanh"),
        "GELU (exact, erf)": F.gelu,
    }
    curves = {}
    for name, function in functions.items():
        point = x.detach().double().clone().requires_grad_(True)
        values = function(point)
        (derivative,) = torch.autograd.grad(values.sum(), point)
        curves[name] = (values.detach(), derivative)
    return curves


def activation_figure(low: float = -4.0, high: float = 4.0, points: int = 401) -> go.Figure:
    """Two panels over [low, high]: ReLU and GELU (left) and their derivatives (right)."""
    x = torch.linspace(low, high, points, dtype=torch.float64)
    curves = activation_curves(x)
    colours = dict(zip(curves, (RELU_COLOUR, GELU_COLOUR, EXACT_COLOUR), strict=True))
    fig = make_subplots(
        rows=1, cols=2, horizontal_spacing=0.1,
        subplot_titles=("the function f(x)", "its derivative f'(x)"),
    )
    for name, (values, derivatives) in curves.items():
        dash = "dot" if "exact" in name else "solid"
        for column, y in ((1, values), (2, derivatives)):
            fig.add_trace(
                go.Scatter(
                    x=x.tolist(), y=y.tolist(), name=name, legendgroup=name,
                    showlegend=column == 1, mode="lines",
                    line={"color": colours[name], "dash": dash, "width": 2.5},
                    hovertemplate="x = %{x:.2f}<br>%{y:.4f}<extra>" + name + "</extra>",
                ),
                row=1, col=column,
            )
    fig.update_layout(height=420, legend={"orientation": "h", "y": -0.2})
    layout_defaults(fig, title="ReLU and GELU, and their slopes", x_title="input x", y_title=None)
    fig.update_yaxes(title_text="f(x)", row=1, col=1)
    fig.update_yaxes(title_text="f'(x)", row=1, col=2)
    return fig


def gelu_approximation_figure(
    low: float = -6.0, high: float = 6.0, points: int = 1201
) -> go.Figure:
    """The tanh approximation of GELU minus the exact GELU over [low, high], largest gap marked."""
    x = torch.linspace(low, high, points, dtype=torch.float64)
    difference = F.gelu(x, approximate="tanh") - F.gelu(x)
    largest = int(difference.abs().argmax())
    fig = go.Figure(go.Scatter(
        x=x.tolist(), y=difference.tolist(), mode="lines", name="tanh - exact",
        line={"color": GELU_COLOUR},
        hovertemplate="x = %{x:.2f}<br>difference %{y:.2e}<extra></extra>",
    ))
    fig.add_annotation(
        x=float(x[largest]), y=float(difference[largest]),
        text=f"largest gap: {float(difference[largest]):.2e} at x = {float(x[largest]):.2f}",
        showarrow=True, arrowhead=2, ax=60, ay=-30,
    )
    fig.update_yaxes(exponentformat="e")
    fig.update_layout(height=380, showlegend=False)
    return layout_defaults(
        fig,
        title="GELU: tanh approximation minus exact (erf) form",
        x_title="input x",
        y_title="gelu_tanh(x) - gelu(x)",
    )


# ----------------------------------------------------------------------------------------------
# Gradients with and without shortcuts


def gradient_magnitude_figure(
    magnitudes: Mapping[str, Sequence[float]], *, title: str | None = None
) -> go.Figure:
    """One line per network: the mean absolute gradient of each layer's weight, layer 1 first.

    ``magnitudes`` maps a name ("with shortcuts") to one positive number per layer. The y axis
    is logarithmic, so gradients that shrink by a constant factor per layer fall on a line.
    """
    if not magnitudes:
        raise ValueError("pass at least one network's gradient magnitudes")
    fig = go.Figure()
    for name, values in magnitudes.items():
        values = [float(value) for value in values]
        if any(value <= 0 for value in values):
            raise ValueError(f"gradient magnitudes must be positive for a log scale: {name}")
        fig.add_trace(go.Scatter(
            x=list(range(1, len(values) + 1)), y=values, name=name, mode="lines+markers",
            line={"color": SHORTCUT_COLOURS.get(name)},
            hovertemplate="layer %{x}<br>mean |gradient| %{y:.3g}<extra>" + name + "</extra>",
        ))
    fig.update_yaxes(type="log", exponentformat="power")
    fig.update_xaxes(dtick=1)
    fig.update_layout(height=420)
    return layout_defaults(
        fig,
        title=title or "How much gradient reaches each layer",
        x_title="layer (1 = nearest the input)",
        y_title="mean |gradient| of the layer's weights",
    )


# ----------------------------------------------------------------------------------------------
# Data-flow diagrams


@dataclass(frozen=True)
class Stage:
    """One box of a data-flow diagram.

    ``label`` is written in the box; ``shape`` is the shape of the tensor the box outputs,
    written on the arrow below it ("" for the last box); ``hover`` says what the step does;
    ``kind`` picks the colour (a key of ``BOX_COLOURS``).
    """

    label: str
    shape: str
    hover: str
    kind: str = "layer"


@dataclass(frozen=True)
class Shortcut:
    """A shortcut line from the output of stage ``start`` to the addition at stage ``end``."""

    start: int
    end: int


BOX_WIDTH = 4.0
BOX_HEIGHT = 0.62
STEP = 1.25  # vertical distance between two boxes
LANE_X = 3.3  # where the shortcut lines run, right of the boxes
ADD_RADIUS = 0.28


def flow_diagram(
    stages: Sequence[Stage], shortcuts: Sequence[Shortcut], *, title: str
) -> go.Figure:
    """Boxes from top to bottom joined by arrows labelled with shapes, plus shortcut lines."""
    for shortcut in shortcuts:
        if not 0 <= shortcut.start < shortcut.end < len(stages):
            raise ValueError(f"a shortcut must go down to a later stage, got {shortcut}")
        if stages[shortcut.end].kind != "add":
            raise ValueError(f"a shortcut ends at an addition, not at {stages[shortcut.end]}")
    fig = go.Figure()
    centres = [-STEP * index for index in range(len(stages))]
    for index, (stage, y) in enumerate(zip(stages, centres, strict=True)):
        _draw_stage(fig, stage, y)
        if index + 1 < len(stages):
            _draw_arrow(fig, y, centres[index + 1], stage.shape, stages[index + 1].kind == "add")
    for shortcut in shortcuts:
        _draw_shortcut(fig, centres[shortcut.start], centres[shortcut.end])
    fig.add_trace(go.Scatter(  # invisible points that carry the hover text of each box
        x=[0.0] * len(stages), y=centres, mode="markers",
        marker={"size": 40, "opacity": 0}, showlegend=False,
        hovertext=[f"<b>{stage.label}</b><br>{stage.hover}" for stage in stages],
        hoverinfo="text",
    ))
    fig.update_xaxes(visible=False, range=[-3.2, 5.6])
    fig.update_yaxes(visible=False, range=[centres[-1] - 0.7, 0.7], scaleanchor="x")
    fig.update_layout(
        height=int(110 + 62 * STEP * len(stages)), width=640, plot_bgcolor="white",
        margin={"l": 10, "r": 10, "t": 70, "b": 10},
    )
    return layout_defaults(fig, title=title, x_title=None, y_title=None)


def _draw_stage(fig: go.Figure, stage: Stage, y: float) -> None:
    fill, border = BOX_COLOURS[stage.kind]
    if stage.kind == "add":
        fig.add_shape(
            type="circle", x0=-ADD_RADIUS, x1=ADD_RADIUS, y0=y - ADD_RADIUS, y1=y + ADD_RADIUS,
            fillcolor=fill, line={"color": border, "width": 2},
        )
        fig.add_annotation(x=0, y=y, text="<b>+</b>", showarrow=False, font={"size": 18})
        fig.add_annotation(
            x=-ADD_RADIUS - 0.1, y=y, text=stage.label, showarrow=False, xanchor="right",
            font={"size": 12, "color": "#5f6368"},
        )
        return
    half = BOX_WIDTH / 2
    fig.add_shape(
        type="rect", x0=-half, x1=half, y0=y - BOX_HEIGHT / 2, y1=y + BOX_HEIGHT / 2,
        fillcolor=fill, line={"color": border, "width": 2},
    )
    fig.add_annotation(x=0, y=y, text=stage.label, showarrow=False, font={"size": 13})


def _draw_arrow(fig: go.Figure, y_from: float, y_to: float, shape: str, to_add: bool) -> None:
    top = y_from - BOX_HEIGHT / 2
    bottom = y_to + (ADD_RADIUS if to_add else BOX_HEIGHT / 2)
    fig.add_annotation(
        x=0, y=bottom, ax=0, ay=top, xref="x", yref="y", axref="x", ayref="y",
        showarrow=True, arrowhead=2, arrowwidth=1.5, arrowcolor="#5f6368", text="",
    )
    if shape:
        fig.add_annotation(
            x=0.12, y=(top + bottom) / 2, text=shape, showarrow=False, xanchor="left",
            font={"size": 12, "family": "monospace", "color": "#3c4043"},
        )


def _draw_shortcut(fig: go.Figure, y_start: float, y_add: float) -> None:
    """A line that leaves the arrow below the start box, runs down the lane, enters the +."""
    fork = y_start - BOX_HEIGHT / 2 - 0.15
    fig.add_shape(
        type="path", path=f"M 0 {fork} L {LANE_X} {fork} L {LANE_X} {y_add} L {ADD_RADIUS} {y_add}",
        line={"color": BOX_COLOURS["add"][1], "width": 2, "dash": "dash"},
    )
    fig.add_annotation(
        x=ADD_RADIUS, y=y_add, ax=ADD_RADIUS + 0.6, ay=y_add, xref="x", yref="y",
        axref="x", ayref="y", showarrow=True, arrowhead=2, arrowcolor=BOX_COLOURS["add"][1],
        text="",
    )
    fig.add_annotation(
        x=LANE_X + 0.1, y=(fork + y_add) / 2, text="shortcut", textangle=90, showarrow=False,
        font={"size": 12, "color": BOX_COLOURS["add"][1]},
    )


def _shape(*sizes: int | str) -> str:
    return "(" + ", ".join(str(size) for size in sizes) + ")"


def _count(number: int) -> str:
    return f"{number:,} parameters"


def block_stages(config: GPTConfig, batch: int, tokens: int) -> list[Stage]:
    """The stages of one transformer block of ``config`` on a batch (batch, tokens, n_embd)."""
    C, H = config.n_embd, config.n_head
    x = _shape(batch, tokens, C)
    norm = _count(2 * C)
    qkv = 3 * C * C + (3 * C if config.qkv_bias else 0)
    return [
        Stage("input x", x, "the block's input: one vector of C numbers per token", "tensor"),
        Stage("LayerNorm 1", x, f"normalise each token's vector, then scale and shift; {norm}"),
        Stage(
            f"causal multi-head attention ({H} heads)", x,
            f"queries, keys, values: ({batch}, {H}, {tokens}, {C // H}) per head; each token "
            f"mixes in the earlier ones; {_count(qkv + C * C + C)}", "attention",
        ),
        Stage("dropout", x, "zeroes random values while training (off here)"),
        Stage("x + attention", x, "add the attention's output to the block's input", "add"),
        Stage("LayerNorm 2", x, f"normalise again before the feed-forward network; {norm}"),
        Stage(
            f"linear {C} → {4 * C}", _shape(batch, tokens, 4 * C),
            f"expand each token's vector 4 times; {_count(C * 4 * C + 4 * C)}", "feed-forward",
        ),
        Stage("GELU", _shape(batch, tokens, 4 * C), "a smooth non-linearity, value by value",
              "feed-forward"),
        Stage(
            f"linear {4 * C} → {C}", x,
            f"project back to C numbers; {_count(4 * C * C + C)}", "feed-forward",
        ),
        Stage("dropout", x, "zeroes random values while training (off here)"),
        Stage("x + feed-forward", x, "add the feed-forward output", "add"),
        Stage("output", "", "same shape as the input: blocks can be stacked", "tensor"),
    ]


def transformer_block_figure(config: GPTConfig, batch: int = 2, tokens: int = 4) -> go.Figure:
    """The data flow through one pre-norm transformer block, with the tensor shapes."""
    return flow_diagram(
        block_stages(config, batch, tokens),
        [Shortcut(0, 4), Shortcut(4, 10)],
        title=f"A transformer block (C = {config.n_embd}, {config.n_head} heads): "
        f"shapes for B = {batch}, T = {tokens}",
    )


def gpt_model_figure(config: GPTConfig, batch: int = 2, tokens: int = 4) -> go.Figure:
    """The data flow through the whole GPT, from token ids to logits, with the tensor shapes."""
    C, V = config.n_embd, config.vocab_size
    x = _shape(batch, tokens, C)
    output = "tied: the token embedding matrix, reused" if config.tie_embeddings else (
        _count(C * V)
    )
    stages = [
        Stage("token ids", _shape(batch, tokens), "integers below the vocabulary size", "tensor"),
        Stage(f"token embedding ({V:,} × {C})", x, f"one row per token id; {_count(V * C)}"),
        Stage(
            f"+ position embedding ({config.context_length} × {C})", x,
            f"row t is added to the token at position t; {_count(config.context_length * C)}",
        ),
        Stage("dropout", x, "zeroes random values while training (off here)"),
        Stage(
            f"{config.n_layer} × transformer block", x,
            "each block: LayerNorm, attention, shortcut, LayerNorm, feed-forward, shortcut",
            "attention",
        ),
        Stage("final LayerNorm", x, f"normalise the last block's output; {_count(2 * C)}"),
        Stage(f"output layer (linear {C} → {V:,})", _shape(batch, tokens, V),
              f"one score per vocabulary entry; {output}", "feed-forward"),
        Stage("logits", "", "next-token scores for every position", "tensor"),
    ]
    return flow_diagram(
        stages, [],
        title=f"The GPT model ({config.n_layer} layers, C = {C}): "
        f"shapes for B = {batch}, T = {tokens}",
    )


# ----------------------------------------------------------------------------------------------
# Model sizes


def model_size_figure(
    names: Sequence[str] = ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"),
) -> go.Figure:
    """Parameters (tied and untied output layer) and weight memory (float32, bfloat16) of each
    named preset of ``llmcourse.model.PRESETS``, computed from the shapes alone."""
    unknown = [name for name in names if name not in PRESETS]
    if unknown:
        raise ValueError(f"unknown presets {unknown}; choose among {list(PRESETS)}")
    tied = [count_parameters(PRESETS[name]) for name in names]
    untied = [
        count_parameters(GPTConfig.preset(name, tie_embeddings=False)) for name in names
    ]
    fig = make_subplots(
        rows=1, cols=2, horizontal_spacing=0.12,
        subplot_titles=("parameters (millions)", "memory of the weights (GB)"),
    )
    for label, counts, colour in (
        ("tied output layer (as GPT-2)", tied, "#1a73e8"),
        ("separate output layer", untied, "#8ab4f8"),
    ):
        fig.add_trace(go.Bar(
            x=list(names), y=[count / 1e6 for count in counts], name=label,
            marker_color=colour, legendgroup="parameters", legendgrouptitle_text="parameters",
            customdata=counts, text=[f"{count / 1e6:,.0f}M" for count in counts],
            textposition="outside",
            hovertemplate="%{x}: %{customdata:,} parameters<extra>" + label + "</extra>",
        ), row=1, col=1)
    for dtype, colour in ((torch.float32, "#188038"), (torch.bfloat16, "#81c995")):
        sizes = [memory_bytes(count, dtype) / GIGABYTE for count in tied]
        label = f"{str(dtype).removeprefix('torch.')} ({memory_bytes(1, dtype)} bytes each)"
        fig.add_trace(go.Bar(
            x=list(names), y=sizes, name=label, marker_color=colour,
            legendgroup="memory", legendgrouptitle_text="memory (tied)",
            text=[f"{size:.2f}" for size in sizes], textposition="outside",
            hovertemplate="%{x}: %{y:.2f} GB<extra>" + label + "</extra>",
        ), row=1, col=2)
    fig.update_layout(barmode="group", height=460, legend={"groupclick": "toggleitem"})
    layout_defaults(
        fig, title="The four GPT-2 sizes: parameters and weight memory", x_title="model",
        y_title=None,
    )
    fig.update_yaxes(title_text="millions of parameters", row=1, col=1)
    fig.update_yaxes(title_text="gigabytes (10⁹ bytes)", row=1, col=2)
    return fig
