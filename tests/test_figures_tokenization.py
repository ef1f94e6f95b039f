"""Chapter 1 figures and the tokenizer playground: boxes, hover ids, slider steps, counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmcourse.errors import CourseError, InputError
from llmcourse.figures.display import has_profile_label
from llmcourse.figures.tokenization import (
    BOX_GAP,
    PALETTE,
    bpe_merge_steps_figure,
    layout_boxes,
    token_colour,
    token_colour_figure,
    token_count_figure,
    token_hover,
    token_label,
    token_pieces,
)
from llmcourse.tokenizers import BPETokenizer, WordTokenizer, gpt2_tokenizer
from llmcourse.widgets.tokenizer_playground import tokenizer_playground

TRAINING_TEXT = "the cat sat on the mat. the hat sat on the cat. that is that.\n" * 5
GPT2_CHECK_TEXT = "Hello, do you like tea? <|endoftext|> In the sunlit terraces"
GPT2_CHECK_IDS = [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114]


@pytest.fixture(scope="module")
def small_bpe() -> BPETokenizer:
    return BPETokenizer.train(TRAINING_TEXT, vocab_size=256 + 20 + 1)


@pytest.fixture(scope="module")
def word_tokenizer() -> WordTokenizer:
    return WordTokenizer.from_text(TRAINING_TEXT)


@pytest.fixture
def gpt2(data_mirror: Path):
    return gpt2_tokenizer()


# --- Pieces, labels, colours --------------------------------------------------------------------


def test_token_pieces_of_the_word_tokenizer(word_tokenizer: WordTokenizer) -> None:
    pieces, ids = token_pieces(word_tokenizer, "the dog sat.")
    vocab = word_tokenizer.vocab
    assert ids == [vocab["the"], vocab["<|unk|>"], vocab["sat"], vocab["."]]
    assert pieces == ["the", "<|unk|>", "sat", "."]


def test_token_pieces_of_bpe_are_bytes_that_join_to_the_text(small_bpe: BPETokenizer) -> None:
    text = "the cat, naïve<|endoftext|>that"
    pieces, ids = token_pieces(small_bpe, text)
    assert ids == small_bpe.encode(text, allowed_special="all")
    assert b"".join(pieces) == text.encode()
    assert ids[pieces.index(b"<|endoftext|>")] == small_bpe.special_tokens["<|endoftext|>"]


def test_token_pieces_of_gpt2(gpt2) -> None:
    pieces, ids = token_pieces(gpt2, GPT2_CHECK_TEXT)
    assert ids == GPT2_CHECK_IDS
    assert pieces[:4] == [b"Hello", b",", b" do", b" you"]
    assert pieces[-2:] == [b" terr", b"aces"]


def test_token_pieces_rejects_other_objects() -> None:
    with pytest.raises(InputError, match="WordTokenizer, a BPETokenizer") as error:
        token_pieces(str.split, "a b")
    assert isinstance(error.value, CourseError)


def test_token_label_shows_whitespace_and_decodes_bytes() -> None:
    assert token_label(b" the") == "·the"
    assert token_label("a\tb\n") == "a→b↵"
    assert token_label(b"\xc3") == "\ufffd"  # half of a two-byte character


def test_token_hover_gives_id_text_and_escaped_bytes() -> None:
    assert token_hover(b" \xc3\xa9", 300) == "<b>id 300</b><br>text ' é'<br>bytes 20 c3 a9 (hex)"
    assert token_hover("<|unk|>", 7) == "<b>id 7</b><br>token '&lt;|unk|&gt;'"


def test_token_colour_depends_only_on_the_id() -> None:
    assert token_colour(464) == token_colour(464)
    assert token_colour(0) == PALETTE[0]
    assert len({token_colour(token_id) for token_id in range(len(PALETTE))}) == len(PALETTE)


def test_layout_boxes_wraps_rows() -> None:
    layout = layout_boxes(["ab", "c", "defg"], row_width=5)
    # widths: text + 1 character of padding; "c" would end at 3.3 + 2 = 5.3 > 5, so it wraps
    assert layout.widths == [3.0, 2.0, 5.0]
    assert layout.starts == [0.0, 0.0, 0.0]
    assert layout.rows == [0, 1, 2]
    assert layout.n_rows == 3
    assert layout_boxes(["a", "b"], row_width=10).starts == [0.0, 2.0 + BOX_GAP]
    assert layout_boxes(["猫a"], row_width=10).widths == [4.0]  # a wide character counts 2


# --- Figures --------------------------------------------------------------------------------------


def test_token_colour_figure_has_one_box_per_token_with_ids_on_hover() -> None:
    pieces, ids = ["Hello", ",", "<|unk|>", b" world"], [15496, 11, 50, 995]
    fig = token_colour_figure(pieces, ids, "Four tokens")
    (bar,) = fig.data
    assert len(bar.x) == len(bar.base) == len(bar.y) == 4
    assert list(bar.text) == ["Hello", ",", "&lt;|unk|&gt;", "·world"]
    assert [hover.split("<br>")[0] for hover in bar.hovertext] == [
        "<b>id 15496</b>", "<b>id 11</b>", "<b>id 50</b>", "<b>id 995</b>"
    ]
    assert list(bar.marker.color) == [token_colour(token_id) for token_id in ids]
    assert fig.layout.title.text == "Four tokens"
    assert has_profile_label(fig)


def test_token_colour_figure_rejects_mismatched_lengths() -> None:
    with pytest.raises(InputError, match="got 2 pieces but 3 ids"):
        token_colour_figure(["a", "b"], [1, 2, 3], "mismatch")


def test_token_colour_figure_grows_with_rows() -> None:
    short = token_colour_figure(["word"], [1], "one row")
    long = token_colour_figure(["word"] * 40, [1] * 40, "several rows")
    assert max(long.data[0].y) == 3  # 40 boxes of 5 + 0.3 characters: 12 per 64-wide row
    assert long.layout.height > short.layout.height


def test_bpe_merge_steps_figure_has_one_slider_step_per_merge(small_bpe: BPETokenizer) -> None:
    text = "the cat sat"
    steps = small_bpe.encode_steps(text)
    fig = bpe_merge_steps_figure(small_bpe, text, "Merges")
    assert len(steps) > 3
    assert len(fig.data) == 2 * len(steps)  # boxes and a note per step
    slider_steps = fig.layout.sliders[0].steps
    assert [step.label for step in slider_steps] == [str(k) for k in range(len(steps))]
    for k, step in enumerate(slider_steps):
        visible = step.args[0]["visible"]
        assert [i for i, shown in enumerate(visible) if shown] == [2 * k, 2 * k + 1]
    assert [trace.visible for trace in fig.data[:2]] == [True, True]
    assert not any(trace.visible for trace in fig.data[2:])
    boxes = fig.data[0::2]
    for bar, ids in zip(boxes, steps, strict=True):
        assert [int(hover.split("</b>")[0].split()[-1]) for hover in bar.hovertext] == ids
    assert steps[-1] == small_bpe.encode(text)
    assert fig.layout.title.text == "Merges"


def test_bpe_merge_steps_figure_outlines_and_names_each_new_token(
    small_bpe: BPETokenizer,
) -> None:
    text = "the cat"
    steps = small_bpe.encode_steps(text)
    fig = bpe_merge_steps_figure(small_bpe, text, "Merges")
    notes = fig.data[1::2]
    assert notes[0].text == ("the 7 bytes of the text, before any merge",)
    (first_pair, first_id), = [
        merge for merge in small_bpe.merges if merge[1] in steps[1] and merge[1] not in steps[0]
    ]
    left, right = (small_bpe.token_bytes(i).decode() for i in first_pair)
    merged = small_bpe.token_bytes(first_id).decode()
    assert notes[1].text[0].startswith(
        f"step 1: '{token_label(left)}' + '{token_label(right)}' → '{token_label(merged)}' "
        f"(id {first_id}, merge number {first_id - 256} in training)"
    )
    widths = fig.data[2].marker.line.width
    assert [w == 3.0 for w in widths] == [token_id == first_id for token_id in steps[1]]


def test_figures_of_empty_text(small_bpe: BPETokenizer) -> None:
    assert len(token_colour_figure([], [], "No tokens").data[0].x) == 0
    fig = bpe_merge_steps_figure(small_bpe, "", "No merges")
    assert len(fig.data) == 2 and len(fig.layout.sliders[0].steps) == 1
    assert fig.data[1].text == ("the 0 bytes of the text, before any merge",)


def test_token_count_figure_groups_bars_by_text() -> None:
    counts = {"The Verdict": {"word": 10, "GPT-2": 12}, "new text": {"word": 3, "GPT-2": 5}}
    fig = token_count_figure(counts, "Token counts")
    assert [trace.name for trace in fig.data] == ["word", "GPT-2"]
    assert list(fig.data[0].x) == ["The Verdict", "new text"]
    assert list(fig.data[0].y) == [10, 3] and list(fig.data[1].y) == [12, 5]
    assert fig.layout.barmode == "group"
    assert fig.layout.title.text == "Token counts"
    assert fig.layout.yaxis.title.text == "number of tokens"


# --- Playground -------------------------------------------------------------------------------


def test_tokenizer_playground_updates_every_tokenizer(
    word_tokenizer: WordTokenizer, small_bpe: BPETokenizer
) -> None:
    playground = tokenizer_playground({"word": word_tokenizer, "bpe": small_bpe}, text="the cat")
    text_box, word_view, bpe_view = playground.children
    assert "<b>word</b>: 2 tokens" in word_view.value
    text_box.value = "the dog sat"
    vocab = word_tokenizer.vocab
    assert "<b>word</b>: 3 tokens" in word_view.value
    assert f'title="id {vocab["<|unk|>"]}"' in word_view.value
    assert "&lt;|unk|&gt;" in word_view.value
    bpe_ids = small_bpe.encode("the dog sat")
    assert f"<b>bpe</b>: {len(bpe_ids)} tokens" in bpe_view.value
    assert bpe_view.value.count('title="id ') == len(bpe_ids)
    assert all(f'title="id {token_id}"' in bpe_view.value for token_id in bpe_ids)
