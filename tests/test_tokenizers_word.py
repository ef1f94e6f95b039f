"""The word tokenizer on "The Verdict", checked against the numbers printed in the book."""

from __future__ import annotations

import re

import pytest

from llmcourse.data_files import fetch
from llmcourse.errors import CourseError, InputError, MissingFileError
from llmcourse.tokenizers import WordTokenizer
from llmcourse.tokenizers.word import split


@pytest.fixture(scope="module")
def verdict_text() -> str:
    try:
        return fetch("the-verdict").read_text(encoding="utf-8")
    except MissingFileError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def verdict_tokenizer(verdict_text: str) -> WordTokenizer:
    return WordTokenizer.from_text(verdict_text)


def test_split_keeps_punctuation_and_drops_whitespace() -> None:
    assert split('Hello, world. Is this-- a "test"?\n') == [
        "Hello", ",", "world", ".", "Is", "this", "--", "a", '"', "test", '"', "?",
    ]


def test_vocabulary_of_the_verdict(verdict_text: str, verdict_tokenizer: WordTokenizer) -> None:
    assert len(split(verdict_text)) == 4690  # the book's "number of tokens"
    assert verdict_tokenizer.vocab_size == 1130 + 2
    first = ["!", '"', "'", "(", ")", ",", "--", ".", ":", ";", "?", "A"]
    assert [verdict_tokenizer.vocab[token] for token in first] == list(range(12))
    last = ["younger", "your", "yourself", "<|endoftext|>", "<|unk|>"]
    assert [verdict_tokenizer.vocab[token] for token in last] == [1127, 1128, 1129, 1130, 1131]


def test_encode_decode_the_book_example(verdict_tokenizer: WordTokenizer) -> None:
    text = """"It's the last he painted, you know," Mrs. Gisburn said with pardonable pride."""
    ids = verdict_tokenizer.encode(text)
    assert ids == [1, 56, 2, 850, 988, 602, 533, 746, 5, 1126, 596, 5, 1, 67, 7, 38, 851, 1108,
                   754, 793, 7]
    assert verdict_tokenizer.decode(ids) == (
        """" It' s the last he painted, you know," Mrs. Gisburn said with pardonable pride."""
    )


def test_unknown_words_and_end_of_text(verdict_tokenizer: WordTokenizer) -> None:
    first, second = "Hello, do you like tea?", "In the sunlit terraces of the palace."
    text = " <|endoftext|> ".join([first, second])
    ids = verdict_tokenizer.encode(text)
    assert ids == [1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7]
    assert verdict_tokenizer.decode(ids) == (
        "<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces of the <|unk|>."
    )


def test_decode_round_trips_the_tokens_of_the_verdict(
    verdict_text: str, verdict_tokenizer: WordTokenizer
) -> None:
    decoded = verdict_tokenizer.decode(verdict_tokenizer.encode(verdict_text))
    assert split(decoded) == split(verdict_text)
    assert verdict_tokenizer.decode(verdict_tokenizer.encode("I had always thought him.")) == (
        "I had always thought him."
    )


@pytest.mark.parametrize("bad_id", [1132, -1, 10**6])
def test_decode_rejects_ids_outside_the_vocabulary(
    verdict_tokenizer: WordTokenizer, bad_id: int
) -> None:
    message = f"token id {bad_id} is not in the vocabulary; valid ids are 0..1131"
    with pytest.raises(InputError, match=re.escape(message)):
        verdict_tokenizer.decode([5, bad_id])


def test_vocabulary_must_have_unknown_token_and_dense_ids() -> None:
    with pytest.raises(CourseError, match=re.escape("no <|unk|> token")):
        WordTokenizer({"a": 0})
    with pytest.raises(ValueError, match=re.escape("ids must be exactly 0..1")):
        WordTokenizer({"a": 0, "<|unk|>": 2})
