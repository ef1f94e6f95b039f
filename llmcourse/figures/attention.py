"""Figures of attention: weight heatmaps per layer and head, and why the scores are scaled.

An attention heatmap has one row per query token (the token whose new vector is computed,
top to bottom in reading order) and one column per key token (the token it reads from, left to
right). Cell (i, j) is the weight token i gives to token j: each row is a probability
distribution and sums to 1; under a causal mask everything right of the diagonal is 0.

``attention_heatmap_figure`` takes the weights of a whole model, every layer and head, and
precomputes one heatmap per (layer, head): a dropdown picks the layer and a slider the head,
so the figure works in the static book, without a kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from llmcourse.errors import InputError
from llmcourse.figures.display import layout_defaults
from llmcourse.figures.tokenization import ChapterTokenizer, token_label
from llmcourse.model import GPT, attention_weights
from llmcourse.model_state import eval_mode, model_device

COLOUR_SCALE = "Blues"
VALUES_SHOWN_UP_TO = 12  # tokens: longer sequences show no numbers in the cells
CELL_PX = 34  # height of one row of the heatmap, in pixels
ZERO_WIDTH_SPACE = "\u200b"
HOVER = "query: %{y}<br>key: %{x}<br>weight: %{z:.3f}<extra></extra>"


# ----------------------------------------------------------------------------------------------
# Inputs


def stack_layers(weights: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The attention weights of a model as one float tensor (L, H, T, T) on the CPU.

    Accepts a tensor (L, H, T, T), or one tensor per layer, each (H, T, T) or (1, H, T, T):
    the list ``llmcourse.model.attention_weights`` returns for a batch of one sequence.
    """
    if isinstance(weights, torch.Tensor):
        stacked = weights
    else:
        layers = [layer[0] if layer.dim() == 4 and len(layer) == 1 else layer for layer in weights]
        if not layers or any(layer.dim() != 3 for layer in layers):
            shapes = [tuple(layer.shape) for layer in weights]
            raise InputError(
                f"expected one (H, T, T) tensor per layer, got shapes {shapes}; for a batch, "
                "pick one sequence: [layer[b] for layer in weights]"
            )
        if len({layer.shape for layer in layers}) > 1:
            shapes = [tuple(layer.shape) for layer in layers]
            raise InputError(f"every layer must have the same shape, got {shapes}")
        stacked = torch.stack(layers)
    if stacked.dim() != 4 or stacked.shape[-1] != stacked.shape[-2] or 0 in stacked.shape:
        raise InputError(
            f"expected attention weights of shape (layers, heads, T, T), got "
            f"{tuple(stacked.shape)}"
        )
    return stacked.detach().float().cpu()


def distinct_labels(labels: Sequence[str]) -> list[str]:
    """``labels`` made distinct without changing how they look, for plotly's category axes.

    A label seen before gets zero-width spaces appended (one more for each repeat): the second
    "the" of a sentence stays a column of its own instead of merging with the first.
    """
    seen: dict[str, int] = {}
    distinct = []
    for label in labels:
        repeats = seen.get(label, 0)
        seen[label] = repeats + 1
        distinct.append(label + ZERO_WIDTH_SPACE * repeats)
    return distinct


def _check_labels(labels: Sequence[str], n_tokens: int) -> list[str]:
    if len(labels) != n_tokens:
        raise InputError(
            f"got {len(labels)} token labels for attention over {n_tokens} tokens: "
            "pass one label per token"
        )
    return distinct_labels([str(label) for label in labels])


# ----------------------------------------------------------------------------------------------
# Heatmaps


def attention_trace(
    matrix: torch.Tensor, labels: Sequence[str], *, show_values: bool | None = None, **options
) -> go.Heatmap:
    """One heatmap of attention weights ``matrix`` (T queries, S keys) between 0 and 1.

    ``labels`` names the keys (S of them); the queries are the last T of them, as with a
    causal mask over cached keys. ``show_values`` writes each weight in its cell (the default:
    only up to ``VALUES_SHOWN_UP_TO`` tokens). Other keyword ``options`` go to ``go.Heatmap``.
    """
    keys = _check_labels(labels, matrix.shape[-1])
    queries = keys[len(keys) - matrix.shape[-2] :]
    show_values = len(keys) <= VALUES_SHOWN_UP_TO if show_values is None else show_values
    text_options = {"texttemplate": "%{z:.2f}", "textfont": {"size": 10}} if show_values else {}
    return go.Heatmap(
        z=matrix.detach().float().cpu().tolist(),
        x=keys,
        y=queries,
        zmin=0.0,
        zmax=1.0,
        colorscale=COLOUR_SCALE,
        colorbar={"title": {"text": "weight"}},
        hovertemplate=HOVER,
        xgap=1,
        ygap=1,
        **text_options,
        **options,
    )


def _token_axes(fig: go.Figure) -> None:
    """Category axes in reading order: queries top to bottom, keys left to right."""
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", tickangle=-45)


def attention_matrix_figure(
    matrix: torch.Tensor, labels: Sequence[str], *, title: str
) -> go.Figure:
    """A single heatmap of attention weights ``matrix`` (T, T) over tokens named ``labels``."""
    if matrix.dim() != 2:
        raise InputError(
            f"expected one attention matrix (T, T), got shape {tuple(matrix.shape)}"
        )
    fig = go.Figure(attention_trace(matrix, labels))
    _token_axes(fig)
    fig.update_layout(height=220 + CELL_PX * matrix.shape[0], width=260 + CELL_PX * len(labels))
    return layout_defaults(fig, title=title, x_title="key (attended to)", y_title="query")


def attention_panels_figure(
    panels: Sequence[tuple[str, torch.Tensor]], labels: Sequence[str], *, title: str
) -> go.Figure:
    """Attention matrices side by side, each (T, T), with a subtitle each and one colour bar.

    For example the weights before and after a causal mask: ``[("no mask", w), ("causal
    mask", masked_w)]``.
    """
    if not panels:
        raise InputError("pass at least one (subtitle, matrix) panel")
    fig = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[name for name, _ in panels],
        horizontal_spacing=0.12,
    )
    for column, (_, matrix) in enumerate(panels, start=1):
        fig.add_trace(attention_trace(matrix, labels, showscale=column == 1), row=1, col=column)
    _token_axes(fig)
    for subtitle in fig.layout.annotations:
        subtitle.yshift = 22  # above the profile label
    n_tokens = len(labels)
    fig.update_layout(
        height=290 + CELL_PX * n_tokens, width=180 + len(panels) * 40 * n_tokens,
        margin={"t": 120},
    )
    layout_defaults(fig, title=title, x_title="key (attended to)", y_title=None)
    fig.update_yaxes(title_text="query", row=1, col=1)
    return fig


def attention_heatmap_figure(
    weights: torch.Tensor | Sequence[torch.Tensor],
    labels: Sequence[str],
    *,
    title: str = "Attention weights",
    show_values: bool | None = None,
) -> go.Figure:
    """The attention of every layer and head of a model over one sequence, one at a time.

    ``weights`` is (L, H, T, T), or a list with one (H, T, T) or (1, H, T, T) tensor per layer
    (what ``llmcourse.model.attention_weights`` returns for one sequence); ``labels`` names the T
    tokens. A dropdown picks the layer and a slider the head (numbered from 0, like
    ``model.transformer.h[layer]``); every heatmap is precomputed, one trace each, so the
    controls work in a static page. Layer 0, head 0 is shown first.
    """
    stacked = stack_layers(weights)
    n_layers, n_heads, n_tokens, _ = stacked.shape
    fig = go.Figure([
        attention_trace(
            stacked[layer, head], labels, show_values=show_values,
            name=f"layer {layer}, head {head}", visible=layer == 0 and head == 0,
        )
        for layer in range(n_layers)
        for head in range(n_heads)
    ])

    def visible(layer: int, head: int) -> list[bool]:
        return [index == layer * n_heads + head for index in range(n_layers * n_heads)]

    def head_slider(layer: int) -> dict:
        return {
            "active": 0,
            "currentvalue": {"prefix": f"layer {layer}, head "},
            "pad": {"t": 60},
            "steps": [
                {
                    "label": str(head),
                    "method": "restyle",
                    "args": [{"visible": visible(layer, head)}],
                }
                for head in range(n_heads)
            ],
        }

    if n_layers > 1:
        fig.update_layout(updatemenus=[{
            "buttons": [
                {
                    "label": f"layer {layer}",
                    "method": "update",
                    "args": [{"visible": visible(layer, 0)}, {"sliders": [head_slider(layer)]}],
                }
                for layer in range(n_layers)
            ],
            "direction": "down", "x": 0.0, "xanchor": "left", "y": 1.0, "yanchor": "bottom",
            "pad": {"b": 10},
        }])
    fig.update_layout(
        sliders=[head_slider(0)],
        height=330 + CELL_PX * n_tokens,
        margin={"t": 110},
    )
    _token_axes(fig)
    return layout_defaults(fig, title=title, x_title="key (attended to)", y_title="query")


# ----------------------------------------------------------------------------------------------
# Weights of a model on a text


@torch.no_grad()
def text_attention(
    model: GPT, tokenizer: ChapterTokenizer, text: str, *, max_tokens: int | None = None
) -> tuple[list[str], torch.Tensor]:
    """The tokens of ``text`` and the attention the model gives them: (labels, weights).

    ``labels`` are the tokens' texts with spaces shown as ``·``; ``weights`` (L, H, T, T)
    comes from ``llmcourse.model.attention_weights`` in evaluation mode (no dropout; the model's
    mode is restored afterwards). Only the first ``max_tokens`` tokens are used, and at most
    the model's context length. ``tokenizer`` is a tiktoken encoding such as
    ``gpt2_tokenizer()``.
    """
    ids = tokenizer.encode(text, allowed_special="all")
    limit = model.config.context_length if max_tokens is None else max_tokens
    ids = ids[: min(limit, model.config.context_length)]
    if not ids:
        raise InputError("the text has no tokens: type at least one word")
    labels = [token_label(tokenizer.decode_single_token_bytes(token_id)) for token_id in ids]
    with eval_mode(model):
        weights = attention_weights(model, torch.tensor([ids], device=model_device(model)))
    return labels, stack_layers(weights)


# ----------------------------------------------------------------------------------------------
# Why the scores are scaled


def softmax_peak_probability(
    dims: Sequence[int], *, n_keys: int = 16, trials: int = 200, scaled: bool, seed: int = 0
) -> list[float]:
    """The mean largest weight of softmax(q·k) over ``n_keys`` random keys, for each dimension.

    q and the keys have ``d`` independent standard normal entries, so q·k has variance d: the
    scores spread out as d grows, and the softmax puts nearly all the weight on one key.
    With ``scaled`` the scores are divided by sqrt(d) first, which keeps their variance at 1.
    Averaged over ``trials`` random draws (seeded: the same numbers every run).
    """
    generator = torch.Generator().manual_seed(seed)
    peaks = []
    for dim in dims:
        queries = torch.randn(trials, 1, dim, generator=generator)
        keys = torch.randn(trials, n_keys, dim, generator=generator)
        scores = (queries @ keys.transpose(1, 2)).squeeze(1)  # (trials, n_keys)
        if scaled:
            scores = scores / math.sqrt(dim)
        peaks.append(float(torch.softmax(scores, dim=-1).max(dim=-1).values.mean()))
    return peaks


def softmax_saturation_figure(
    dims: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    *,
    n_keys: int = 16,
    trials: int = 200,
    seed: int = 0,
) -> go.Figure:
    """The largest softmax weight against the head dimension, with and without 1/sqrt(d).

    A dotted line marks 1/n_keys, the weight of each key under uniform attention.
    """
    fig = go.Figure()
    for scaled, name in [(False, "softmax(q·k)"), (True, "softmax(q·k / √d)")]:
        peaks = softmax_peak_probability(
            dims, n_keys=n_keys, trials=trials, scaled=scaled, seed=seed
        )
        fig.add_trace(go.Scatter(
            x=list(dims), y=peaks, mode="lines+markers", name=name,
            hovertemplate="d = %{x}<br>largest weight %{y:.3f}<extra>" + name + "</extra>",
        ))
    fig.add_hline(
        y=1 / n_keys, line_dash="dot", line_color="grey",
        annotation_text=f"uniform: 1/{n_keys}", annotation_position="bottom right",
    )
    fig.update_xaxes(type="log", tickvals=list(dims))
    fig.update_yaxes(range=[0, 1.05])
    fig.update_layout(legend={"x": 0.02, "y": 0.98}, height=420)
    return layout_defaults(
        fig,
        title=f"Largest attention weight over {n_keys} random keys",
        x_title="dimension d of queries and keys (log scale)",
        y_title="largest softmax weight (mean)",
    )
