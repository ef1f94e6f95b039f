"""GPT-2's tokenizer built offline from the course's files, checked against Hugging Face's."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse.datasets import DataUnavailableError, fetch
from llmcourse.tokenizers import GPT2_EOT_ID, GPT2_VOCAB_SIZE, gpt2_tokenizer

LINES_PER_CORPUS = 300


@pytest.fixture(scope="module")
def encoding() -> tiktoken.Encoding:
    try:
        return gpt2_tokenizer()
    except DataUnavailableError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def hf_tokenizer(encoding: tiktoken.Encoding) -> Any:
    """Hugging Face's GPT-2 tokenizer (Rust `tokenizers` BPE) made from the same two files."""
    transformers = pytest.importorskip("transformers")
    vocab = json.loads(fetch("gpt2-encoder").read_text(encoding="utf-8"))
    merge_lines = fetch("gpt2-vocab").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split(" ")) for line in merge_lines]
    return transformers.GPT2Tokenizer(vocab=vocab, merges=merges)


def test_the_check_value(encoding: tiktoken.Encoding) -> None:
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces"
    assert encoding.encode(text, allowed_special={"<|endoftext|>"}) == [
        15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114,
    ]


def test_sizes_and_end_of_text(encoding: tiktoken.Encoding) -> None:
    assert encoding.n_vocab == GPT2_VOCAB_SIZE == 50257
    assert encoding.eot_token == GPT2_EOT_ID == 50256
    assert encoding.decode([GPT2_EOT_ID]) == "<|endoftext|>"
    with pytest.raises(ValueError, match="disallowed special token"):
        encoding.encode("<|endoftext|>")


def test_it_is_built_once(encoding: tiktoken.Encoding) -> None:
    assert gpt2_tokenizer() is encoding


@settings(deadline=None)
@given(st.text())
def test_round_trip(encoding: tiktoken.Encoding, text: str) -> None:
    assert encoding.decode(encoding.encode_ordinary(text)) == text


@pytest.mark.parametrize("corpus", ["the-verdict", "tinyshakespeare"])
def test_same_ids_as_hugging_face(
    encoding: tiktoken.Encoding, hf_tokenizer: Any, corpus: str
) -> None:
    lines = fetch(corpus).read_text(encoding="utf-8").splitlines(keepends=True)
    sample = random.Random(0).sample(lines, min(LINES_PER_CORPUS, len(lines)))
    for line in sample:
        assert encoding.encode_ordinary(line) == hf_tokenizer.encode(line), line


def test_same_ids_as_hugging_face_on_unicode_and_a_whole_text(
    encoding: tiktoken.Encoding, hf_tokenizer: Any
) -> None:
    texts = ["  naïve café   Zürich\n\n", "東京の猫 😀👍🏽", "Ψυχή 1234567 don't  it's\t\tx"]
    for text in [*texts, "\r\n  ", fetch("the-verdict").read_text(encoding="utf-8")]:
        assert encoding.encode_ordinary(text) == hf_tokenizer.encode(text), text
