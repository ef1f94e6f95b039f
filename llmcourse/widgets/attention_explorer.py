"""A live attention explorer for Jupyter: type a sentence, pick a layer and a head, see where
each token looks.

The heatmap is an HTML table (rows: queries, columns: keys, darker blue: more weight; hover a
cell for its tokens and weight), so the explorer needs no plotly in the widget and its saved
state still shows in the static book. Changing the text runs the model again; changing the
layer or head only redraws. It needs a running kernel.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import ipywidgets as widgets
import torch

from llmcourse.errors import InputError
from llmcourse.figures.attention import text_attention
from llmcourse.figures.tokenization import ChapterTokenizer
from llmcourse.model import GPT
from llmcourse.tokenizers import gpt2_tokenizer

DEFAULT_TEXT = "Your journey starts with one step, and every step starts a new journey."
MAX_TOKENS = 32  # longer texts are cut: a bigger table is unreadable
# The colour scale, three stops of plotly's "Blues" (the book's heatmaps): weight 0, 0.5, 1.
COLOUR_STOPS = ((247, 251, 255), (107, 174, 214), (8, 48, 107))
FONT = "font-family: 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-size: 12px;"


def weight_colour(weight: float) -> str:
    """The background of a cell of weight 0 to 1, as ``rgb(r, g, b)``: white, through light
    blue at 0.5, to dark blue (weights outside [0, 1] are clipped)."""
    position = 2 * min(max(float(weight), 0.0), 1.0)  # 0 to 2: which pair of stops, and where
    lower = min(int(position), 1)
    share = position - lower
    low, high = COLOUR_STOPS[lower], COLOUR_STOPS[lower + 1]
    red, green, blue = (round(a + share * (b - a)) for a, b in zip(low, high, strict=True))
    return f"rgb({red}, {green}, {blue})"


def attention_table_html(matrix: torch.Tensor, labels: Sequence[str], caption: str) -> str:
    """An HTML heatmap of one attention matrix (T, T): a row per query, a column per key.

    Each cell's tooltip names the query, the key and the weight.
    """
    if matrix.dim() != 2 or tuple(matrix.shape) != (len(labels), len(labels)):
        raise InputError(
            f"expected a ({len(labels)}, {len(labels)}) matrix for {len(labels)} tokens, "
            f"got shape {tuple(matrix.shape)}"
        )
    names = [html.escape(label) for label in labels]
    header = "".join(
        f'<th style="writing-mode: vertical-rl; transform: rotate(180deg); padding: 2px;">'
        f"{name}</th>"
        for name in names
    )
    rows = []
    for query, (name, weights) in enumerate(zip(names, matrix.tolist(), strict=True)):
        cells = "".join(
            f'<td title="query {query} {name} → key {key} {names[key]}: {weight:.3f}" '
            f'style="background: {weight_colour(weight)}; width: 18px; height: 18px;"></td>'
            for key, weight in enumerate(weights)
        )
        label = f'<th style="text-align: right; padding-right: 4px;">{name}</th>'
        rows.append(f"<tr>{label}{cells}</tr>")
    return (
        f'<div style="{FONT}"><b>{html.escape(caption)}</b>'
        f'<table style="border-collapse: separate; border-spacing: 1px;">'
        f"<tr><th></th>{header}</tr>{''.join(rows)}</table>"
        "<i>rows: queries (the token being updated) · columns: keys (the tokens it reads) · "
        "darker: more weight</i></div>"
    )


def attention_explorer(
    model: GPT,
    tokenizer: ChapterTokenizer | None = None,
    text: str = DEFAULT_TEXT,
    *,
    max_tokens: int = MAX_TOKENS,
) -> widgets.VBox:
    """A text box, a layer and a head picker, and the heatmap of that head's attention.

    The text is encoded with ``tokenizer`` (GPT-2's by default) and run through
    ``llmcourse.model.attention_weights``; only its first ``max_tokens`` tokens are shown.
    """
    tokenizer = tokenizer if tokenizer is not None else gpt2_tokenizer()
    config = model.config
    text_box = widgets.Text(
        value=text, description="text", continuous_update=False,
        layout=widgets.Layout(width="100%"),
    )
    layer_picker = widgets.Dropdown(
        options=[(f"layer {layer}", layer) for layer in range(config.n_layer)], description="layer"
    )
    head_picker = widgets.Dropdown(
        options=[(f"head {head}", head) for head in range(config.n_head)], description="head"
    )
    heatmap = widgets.HTML()
    state: dict[str, object] = {}

    def run_model(change: object = None) -> None:
        try:
            state["labels"], state["weights"] = text_attention(
                model, tokenizer, text_box.value, max_tokens=max_tokens
            )
            state["total"] = len(tokenizer.encode(text_box.value, allowed_special="all"))
        except InputError as error:
            state.clear()
            heatmap.value = f"<i>{html.escape(str(error))}</i>"
            return
        redraw()

    def redraw(change: object = None) -> None:
        if not state:
            return
        labels, weights = state["labels"], state["weights"]
        layer, head = layer_picker.value, head_picker.value
        caption = f"layer {layer}, head {head}: {len(labels)} tokens"
        if state["total"] > len(labels):
            caption += f" (the first {len(labels)} of {state['total']})"
        heatmap.value = attention_table_html(weights[layer, head], labels, caption)

    text_box.observe(run_model, names="value")
    layer_picker.observe(redraw, names="value")
    head_picker.observe(redraw, names="value")
    run_model()
    return widgets.VBox([text_box, widgets.HBox([layer_picker, head_picker]), heatmap])
