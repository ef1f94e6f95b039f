"""Figures of chapter 1: tokens as coloured boxes, BPE merges step by step, token counts; and
``token_length_figure``, how long texts are in tokens, which chapter 7 draws for its data.

A token is drawn as a box as wide as its text, coloured by its id (the same token always has
the same colour), with its id and text (or bytes) on hover. Boxes flow left to right and wrap
into rows, like the text they come from. Spaces show as ``·``, new lines as ``↵``, tabs as
``→``, so that the leading space of a GPT-2 token such as ``" the"`` is visible.
"""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import tiktoken

from llmcourse.errors import InputError
from llmcourse.figures.display import layout_defaults
from llmcourse.tokenizers import BPETokenizer, WordTokenizer
from llmcourse.tokenizers.bpe import N_BYTES

ChapterTokenizer = WordTokenizer | BPETokenizer | tiktoken.Encoding
Piece = str | bytes  # what a token stands for: a word (WordTokenizer) or bytes (BPE)

# Light colours under black text; consecutive ids land far apart in the list.
PALETTE = (
    "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
    "#d9d9d9", "#bc80bd", "#ccebc5", "#ffed6f", "#a6cee3", "#fdbf6f", "#cab2d6", "#b2df8a",
)
VISIBLE_WHITESPACE = str.maketrans({" ": "·", "\n": "↵", "\t": "→", "\r": "␍"})
ROW_WIDTH = 64  # characters of box text per row before the boxes wrap
BOX_PADDING = 1.0  # characters of space around the text inside a box
BOX_GAP = 0.3  # characters between two boxes
ROW_HEIGHT_PX = 34
FONT = {"family": "DejaVu Sans Mono, Menlo, Consolas, monospace", "size": 13, "color": "black"}
HIGHLIGHT_COLOUR, HIGHLIGHT_WIDTH = "#202124", 3.0  # the border of newly merged tokens


def token_colour(token_id: int) -> str:
    """The colour of token ``token_id``, as ``#rrggbb``: always the same for the same id."""
    return PALETTE[(token_id * 7) % len(PALETTE)]


def token_label(piece: Piece) -> str:
    """The text shown inside the box of a token: bytes decoded, whitespace made visible."""
    text = piece.decode("utf-8", errors="replace") if isinstance(piece, bytes) else piece
    return text.translate(VISIBLE_WHITESPACE)


def token_hover(piece: Piece, token_id: int) -> str:
    """The hover text of a token (plotly's HTML subset): its id, then its text and bytes."""
    lines = [f"<b>id {token_id}</b>"]
    if isinstance(piece, bytes):
        lines += [
            f"text {piece.decode('utf-8', errors='replace')!r}",
            f"bytes {' '.join(f'{byte:02x}' for byte in piece)} (hex)",
        ]
    else:
        lines.append(f"token {piece!r}")
    return "<br>".join([lines[0], *(html.escape(line, quote=False) for line in lines[1:])])


def token_pieces(tokenizer: ChapterTokenizer, text: str) -> tuple[list[Piece], list[int]]:
    """The tokens of ``text`` (what each stands for) and their ids, with any of the chapter's
    tokenizers: the two arguments ``token_colour_figure`` takes first.

    A word tokenizer gives words (``<|unk|>`` for unknown ones), a BPE tokenizer bytes.
    Special tokens written in ``text`` are encoded as special tokens.
    """
    if isinstance(tokenizer, WordTokenizer):
        ids = tokenizer.encode(text)
        return [tokenizer.id_to_token[token_id] for token_id in ids], ids
    if isinstance(tokenizer, BPETokenizer):
        ids = tokenizer.encode(text, allowed_special="all")
        return [tokenizer.token_bytes(token_id) for token_id in ids], ids
    if isinstance(tokenizer, tiktoken.Encoding):
        ids = tokenizer.encode(text, allowed_special="all")
        return [tokenizer.decode_single_token_bytes(token_id) for token_id in ids], ids
    raise InputError(
        f"cannot draw the tokens of a {type(tokenizer).__name__}: pass a WordTokenizer, a "
        "BPETokenizer or a tiktoken Encoding such as gpt2_tokenizer()"
    )


@dataclass(frozen=True)
class BoxLayout:
    """Where the token boxes go: box ``i`` spans ``starts[i] .. starts[i] + widths[i]`` (in
    characters) on row ``rows[i]`` (0 is the top row)."""

    starts: list[float]
    widths: list[float]
    rows: list[int]

    @property
    def n_rows(self) -> int:
        return max(self.rows, default=0) + 1

    @property
    def width(self) -> float:
        """Where the rightmost box ends, in characters."""
        return max((s + w for s, w in zip(self.starts, self.widths, strict=True)), default=0.0)


def display_width(label: str) -> int:
    """Columns that ``label`` takes in a monospace font: wide (East Asian) characters take 2."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in label)


def layout_boxes(labels: Sequence[str], row_width: float = ROW_WIDTH) -> BoxLayout:
    """Place one box per label, left to right, starting a new row when a box would overflow."""
    starts, widths, rows = [], [], []
    position, row = 0.0, 0
    for label in labels:
        width = display_width(label) + BOX_PADDING
        if position > 0 and position + width > row_width:
            position, row = 0.0, row + 1
        starts.append(position)
        widths.append(width)
        rows.append(row)
        position += width + BOX_GAP
    return BoxLayout(starts, widths, rows)


def token_boxes(
    pieces: Sequence[Piece], ids: Sequence[int], highlight_id: int | None = None
) -> tuple[go.Bar, BoxLayout]:
    """One horizontal bar per token, at its place in the rows; ``highlight_id``'s boxes get a
    thick border."""
    if len(pieces) != len(ids):
        raise InputError(
            f"got {len(pieces)} pieces but {len(ids)} ids: pass one piece (the token's text or "
            "bytes) per id"
        )
    labels = [token_label(piece) for piece in pieces]
    layout = layout_boxes(labels)
    is_highlighted = [token_id == highlight_id for token_id in ids]
    bar = go.Bar(
        orientation="h",
        base=layout.starts,
        x=layout.widths,
        y=layout.rows,
        width=0.8,
        marker={
            "color": [token_colour(token_id) for token_id in ids],
            "line": {
                "color": [HIGHLIGHT_COLOUR if hit else "white" for hit in is_highlighted],
                "width": [HIGHLIGHT_WIDTH if hit else 1.0 for hit in is_highlighted],
            },
        },
        text=[html.escape(label, quote=False) for label in labels],
        textposition="inside",
        insidetextanchor="middle",
        textangle=0,
        textfont=FONT,
        hovertext=[token_hover(piece, i) for piece, i in zip(pieces, ids, strict=True)],
        hoverinfo="text",
        name="tokens",
    )
    return bar, layout


def _style_token_axes(fig: go.Figure, n_rows: int, row_width: float) -> None:
    """Hide the axes, put row 0 at the top, and size the figure to its rows."""
    fig.update_xaxes(visible=False, range=[-0.5, row_width + 0.5])
    fig.update_yaxes(visible=False, range=[n_rows - 0.5, -1.5])  # reversed: row 0 on top
    fig.update_layout(
        height=110 + ROW_HEIGHT_PX * (n_rows + 1),
        margin={"l": 10, "r": 10, "t": 70, "b": 10},
        plot_bgcolor="white",
        showlegend=False,
        uniformtext={"minsize": FONT["size"], "mode": "show"},
        bargap=0,
    )


def token_colour_figure(pieces: Sequence[Piece], ids: Sequence[int], title: str) -> go.Figure:
    """The tokens of a text as coloured boxes, with each token's id and text on hover.

    ``pieces[i]`` is what token ``ids[i]`` stands for: a string (a word tokenizer's token) or
    bytes (a BPE token); ``token_pieces(tokenizer, text)`` gives both.
    """
    bar, layout = token_boxes(pieces, ids)
    fig = go.Figure(bar)
    _style_token_axes(fig, layout.n_rows, max(ROW_WIDTH, layout.width))
    return layout_defaults(fig, title=title, x_title=None, y_title=None)


def bpe_merge_steps_figure(tokenizer: BPETokenizer, text: str, title: str) -> go.Figure:
    """How BPE encodes ``text``: a slider over the merges, from bytes to the final tokens.

    Step 0 shows the bytes of ``text``; step ``k`` the tokens after the ``k``-th merge that
    applies (``BPETokenizer.encode_steps``), with the tokens it created outlined and a note
    naming the merged pair; the last step equals ``tokenizer.encode(text)``. Each step is a
    pair of traces (boxes, note) that the slider shows while hiding the others, so the figure
    works without a kernel and without plotly animation frames.
    """
    steps = tokenizer.encode_steps(text)
    fig = go.Figure()
    row_width, n_rows = float(ROW_WIDTH), 1
    for step, ids in enumerate(steps):
        new_id = _merged_id(steps[step - 1], ids) if step else None
        bar, layout = token_boxes([tokenizer.token_bytes(i) for i in ids], ids, new_id)
        note = go.Scatter(
            x=[0], y=[-1], mode="text", text=[_merge_note(tokenizer, step, ids, new_id)],
            textposition="middle right", textfont={**FONT, "size": 14}, hoverinfo="skip",
        )
        for trace in (bar, note):
            trace.update(name=f"step {step}", visible=step == 0)
            fig.add_trace(trace)
        n_rows = max(n_rows, layout.n_rows)
        row_width = max(row_width, layout.width)
    _style_token_axes(fig, n_rows, row_width)
    slider_steps = [
        {
            "label": str(step),
            "method": "restyle",
            "args": [{"visible": [trace.name == f"step {step}" for trace in fig.data]}],
        }
        for step in range(len(steps))
    ]
    fig.update_layout(
        height=fig.layout.height + 70,  # room for the slider
        sliders=[{
            "active": 0, "currentvalue": {"prefix": "merges applied: "}, "pad": {"t": 10},
            "steps": slider_steps,
        }],
    )
    return layout_defaults(fig, title=title, x_title=None, y_title=None)


def _merged_id(before: Sequence[int], after: Sequence[int]) -> int:
    """The token id that one merge step created: the one in ``after`` but not in ``before``."""
    (new_id,) = set(after) - set(before)
    return new_id


def _merge_note(
    tokenizer: BPETokenizer, step: int, ids: Sequence[int], new_id: int | None
) -> str:
    """The sentence above the boxes of one step."""
    if new_id is None:
        return f"the {len(ids)} bytes of the text, before any merge"
    (left, right), _ = tokenizer.merges[new_id - N_BYTES]
    parts = [token_label(tokenizer.token_bytes(i)) for i in (left, right, new_id)]
    return html.escape(
        f"step {step}: '{parts[0]}' + '{parts[1]}' → '{parts[2]}' (id {new_id}, "
        f"merge number {new_id - N_BYTES} in training): {len(ids)} tokens",
        quote=False,
    )


def token_count_figure(counts: Mapping[str, Mapping[str, int]], title: str) -> go.Figure:
    """Grouped bars: ``counts[text][tokenizer]`` tokens for each text and each tokenizer."""
    tokenizer_names = list(dict.fromkeys(name for by_name in counts.values() for name in by_name))
    texts = list(counts)
    fig = go.Figure()
    for name in tokenizer_names:
        values = [counts[text].get(name) for text in texts]
        fig.add_bar(
            name=name,
            x=texts,
            y=values,
            text=[f"{value:,}" if value is not None else "" for value in values],
            textposition="outside",
            hovertemplate=f"{html.escape(name)}<br>%{{x}}: %{{y:,}} tokens<extra></extra>",
        )
    fig.update_layout(barmode="group", legend_title_text="tokenizer")
    return layout_defaults(fig, title=title, x_title="text", y_title="number of tokens")


# ----------------------------------------------------------------------------------------------
# How long texts are in tokens

LENGTH_COLOURS = ("#1a73e8", "#f29900", "#188038", "#9334e6", "#d93025")


def token_length_figure(
    lengths: Mapping[str, Sequence[int]],
    limit: int | None = None,
    *,
    limit_label: str = "context length",
    items: str = "entries",
    colours: Mapping[str, str] | None = None,
    title: str = "How long the entries are, in GPT-2 tokens",
) -> go.Figure:
    """Overlaid histograms (bins of 4 tokens) of the token counts in ``lengths``, one per name,
    each named with its count and mean. ``limit``, when given, is marked by a vertical line
    labelled ``limit_label`` (a context length: longer texts get cut; a padded length).
    ``items`` names what is counted ("entries", "messages"); ``colours`` may fix a colour per
    name."""
    if not lengths or not all(lengths.values()):
        raise InputError("give at least one non-empty list of lengths to draw")
    colours = colours or {}
    fig = go.Figure()
    for index, (name, values) in enumerate(lengths.items()):
        colour = colours.get(name, LENGTH_COLOURS[index % len(LENGTH_COLOURS)])
        fig.add_trace(go.Histogram(
            x=list(values), opacity=0.6, xbins={"start": 0, "size": 4}, marker={"color": colour},
            name=f"{name} ({len(values)} {items}, mean {sum(values) / len(values):.0f})",
            hovertemplate="%{x} tokens: %{y} " + items + "<extra>" + name + "</extra>",
        ))
    longest = max(max(values) for values in lengths.values())
    fig.update_xaxes(range=[0, max(longest, limit or 0) + 5])
    if limit is not None:
        fig.add_vline(
            x=limit, line={"color": "black", "dash": "dash"},
            annotation_text=f"{limit_label}: {limit}", annotation_position="top left",
        )
    fig.update_layout(barmode="overlay", height=400, legend={"orientation": "h", "y": -0.2})
    singular = {"entries": "entry"}.get(items, items.removesuffix("s"))
    return layout_defaults(fig, title=title, x_title=f"tokens per {singular}", y_title=items)
