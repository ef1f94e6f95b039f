"""A live tokenizer playground for Jupyter: type text, see its tokens from several tokenizers.

Each tokenizer's tokens appear as coloured boxes (the colours of the book's token figures),
with the token's id on hover and the number of tokens in the heading. It needs a running
kernel: in the static book only the state it was saved with is shown.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import ipywidgets as widgets

from llmcourse.data_files import fetch
from llmcourse.figures.tokenization import (
    ChapterTokenizer,
    Piece,
    token_colour,
    token_label,
    token_pieces,
)
from llmcourse.tokenizers import BPETokenizer, WordTokenizer, gpt2_tokenizer

DEFAULT_TEXT = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of the palace."
BPE_VOCAB_SIZE = 1000  # the chapter's BPE tokenizer trained on "The Verdict"


def chapter_tokenizers() -> dict[str, ChapterTokenizer]:
    """The chapter's three tokenizers: word-level and BPE trained on "The Verdict", and GPT-2."""
    verdict = fetch("the-verdict").read_text(encoding="utf-8")
    return {
        "word tokenizer (The Verdict)": WordTokenizer.from_text(verdict),
        f"BPE, {BPE_VOCAB_SIZE} tokens (The Verdict)": BPETokenizer.train(verdict, BPE_VOCAB_SIZE),
        "GPT-2": gpt2_tokenizer(),
    }


def tokens_html(name: str, pieces: Sequence[Piece], ids: Sequence[int]) -> str:
    """HTML for one tokenizer's result: a heading with the token count, then one coloured box
    per token whose tooltip gives its id."""
    boxes = "".join(
        f'<span title="id {token_id}" style="background: {token_colour(token_id)}; '
        'color: black; border: 1px solid white; border-radius: 3px; padding: 1px 3px; '
        f'margin: 1px; display: inline-block; white-space: pre;">'
        f"{html.escape(token_label(piece))}</span>"
        for piece, token_id in zip(pieces, ids, strict=True)
    )
    return (
        f"<div style=\"font-family: 'DejaVu Sans Mono', Menlo, Consolas, monospace;\">"
        f"<b>{html.escape(name)}</b>: {len(ids)} tokens<br>{boxes}</div>"
    )


def tokenizer_playground(
    tokenizers: Mapping[str, ChapterTokenizer] | None = None, text: str = DEFAULT_TEXT
) -> widgets.VBox:
    """A text box and, below it, the tokens of its text from each tokenizer, updated as you type.

    ``tokenizers`` maps a display name to a ``WordTokenizer``, ``BPETokenizer`` or tiktoken
    encoding; by default, the chapter's three (``chapter_tokenizers()``, which trains the BPE
    tokenizer: a second or two).
    """
    tokenizers = dict(tokenizers) if tokenizers is not None else chapter_tokenizers()
    text_box = widgets.Textarea(
        value=text,
        description="text",
        continuous_update=True,
        layout=widgets.Layout(width="100%", height="5em"),
    )
    results = {name: widgets.HTML() for name in tokenizers}

    def show_tokens(change: object = None) -> None:
        for name, tokenizer in tokenizers.items():
            results[name].value = tokens_html(name, *token_pieces(tokenizer, text_box.value))

    text_box.observe(show_tokens, names="value")
    show_tokens()
    return widgets.VBox([text_box, *results.values()])
