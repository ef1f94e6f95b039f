"""Byte-level BPE: training by hand-computed examples, encoding against tiktoken, files."""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path

import pytest
import regex
import tiktoken
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tiktoken_ext.openai_public import r50k_pat_str

from llmcourse.datasets import DataUnavailableError, fetch
from llmcourse.errors import CourseError
from llmcourse.tokenizers import BPETokenizer, TokenizerError
from llmcourse.tokenizers.bpe import (
    MissingTokenizerFileError,
    TokenizerFileError,
    merge_pair,
    pre_split,
)

EOT = "<|endoftext|>"
VERDICT_VOCAB_SIZE = 1000
SMALL_TEXT = (
    "The cat sat on the mat. The dog sat on the log. A naïve café in Zürich; "
    "東京の猫は東京にいる。 Ψυχή, ψυχή! 😀😀 numbers 1234 and 12345, tabs\tand\nnew lines.\n"
) * 3


def read_data(name: str) -> str:
    try:
        return fetch(name).read_text(encoding="utf-8")
    except DataUnavailableError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def verdict_text() -> str:
    return read_data("the-verdict")


@pytest.fixture(scope="module")
def verdict_bpe(verdict_text: str) -> BPETokenizer:
    return BPETokenizer.train(verdict_text, VERDICT_VOCAB_SIZE)


@pytest.fixture(scope="module")
def small_bpe() -> BPETokenizer:
    return BPETokenizer.train(SMALL_TEXT, 300)


# --- Pre-tokenization -----------------------------------------------------------------------


@settings(deadline=None)
@given(st.text())
def test_pre_split_is_gpt2_split_and_covers_the_text(text: str) -> None:
    assert pre_split(text) == regex.findall(r50k_pat_str, text)
    assert "".join(pre_split(text)) == text


def test_pre_split_example() -> None:
    assert pre_split("I'll pay 42 dollars!!  Now") == [
        "I", "'ll", " pay", " 42", " dollars", "!!", " ", " Now",
    ]


# --- Training -------------------------------------------------------------------------------


def test_merge_pair_scans_left_to_right() -> None:
    assert merge_pair([97, 97, 97, 98, 97, 97], (97, 97), 256) == [256, 97, 98, 256]
    assert merge_pair([], (97, 97), 256) == []


def test_training_by_hand_example() -> None:
    # "aaabdaaabac": (a,a) is the most frequent pair (4). Then (aa,a) and (a,b) tie at 2 and the
    # smaller ids (97,98) win; then (aa,ab) (2); then every pair occurs once and (a,c) is smallest.
    tokenizer = BPETokenizer.train("aaabdaaabac", vocab_size=256 + 4, special_tokens=())
    assert tokenizer.merges == [((97, 97), 256), ((97, 98), 257), ((256, 257), 258),
                                ((97, 99), 259)]
    assert tokenizer.encode("aaabdaaabac") == [258, 100, 258, 259]


def test_training_counts_within_chunks_weighted_by_frequency() -> None:
    # Chunks "ab", " ab": (a,b) occurs twice, (" ",a) once, and the pair (b," ") across the
    # chunk boundary is never counted, so only two merges exist and training stops early.
    tokenizer = BPETokenizer.train("ab ab", vocab_size=256 + 3, special_tokens=())
    assert tokenizer.merges == [((97, 98), 256), ((32, 256), 257)]
    assert tokenizer.vocab_size == 258


def test_training_ignores_special_tokens_in_the_text() -> None:
    tokenizer = BPETokenizer.train(f"xy{EOT}xy", vocab_size=256 + 5, special_tokens=(EOT,))
    assert tokenizer.merges == [((120, 121), 256)]
    assert tokenizer.special_tokens == {EOT: 257}


def test_trained_on_the_verdict(verdict_text: str, verdict_bpe: BPETokenizer) -> None:
    n_special = len(verdict_bpe.special_tokens)
    assert n_special == 1
    assert len(verdict_bpe.merges) == VERDICT_VOCAB_SIZE - 256 - n_special
    assert verdict_bpe.vocab_size == VERDICT_VOCAB_SIZE
    assert [new_id for _, new_id in verdict_bpe.merges] == list(range(256, 999))
    assert verdict_bpe.special_tokens == {EOT: 999}
    ids = verdict_bpe.encode(verdict_text)
    assert len(ids) < len(verdict_text.encode("utf-8"))
    assert verdict_bpe.decode(ids) == verdict_text


def test_training_is_deterministic(verdict_text: str, verdict_bpe: BPETokenizer) -> None:
    assert BPETokenizer.train(verdict_text, VERDICT_VOCAB_SIZE).merges == verdict_bpe.merges


def test_training_rejects_a_vocabulary_smaller_than_the_bytes() -> None:
    with pytest.raises(TokenizerError, match=re.escape("at least 256 bytes + 1 special")):
        BPETokenizer.train("abc", vocab_size=256)


# --- Encoding -------------------------------------------------------------------------------


def test_merges_apply_in_rank_order_not_left_to_right() -> None:
    # "bc" was learned before "ab": in "abc" it must win although "ab" comes first in the text.
    tokenizer = BPETokenizer([(98, 99), (97, 98), (97, 256), (257, 257)], special_tokens=())
    assert tokenizer.encode("abc") == [258]
    assert tokenizer.encode_steps("abc") == [[97, 98, 99], [97, 256], [258]]
    # In "abab" only (a,b) is learned; then (ab,ab), learned later, applies to the result.
    assert tokenizer.encode_steps("abab") == [[97, 98, 97, 98], [257, 257], [259]]


@settings(deadline=None)
@given(st.text())
def test_round_trip_verdict_tokenizer(verdict_bpe: BPETokenizer, text: str) -> None:
    assume(EOT not in text)
    assert verdict_bpe.decode(verdict_bpe.encode(text)) == text


@settings(deadline=None)
@given(st.text())
def test_round_trip_small_tokenizer(small_bpe: BPETokenizer, text: str) -> None:
    assume(EOT not in text)
    assert small_bpe.decode(small_bpe.encode(text)) == text


def test_small_tokenizer_learned_tokens_that_cut_characters(small_bpe: BPETokenizer) -> None:
    """Byte-level merges ignore character boundaries, which the round trips above must survive."""
    assert small_bpe.vocab_size == 300
    assert len(small_bpe.merges) == 300 - 256 - 1

    def is_utf8(piece: bytes) -> bool:
        try:
            piece.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    assert not all(is_utf8(small_bpe.token_bytes(new_id)) for _, new_id in small_bpe.merges)


@settings(deadline=None, max_examples=50)
@given(st.text())
def test_encode_steps_ends_at_encode(small_bpe: BPETokenizer, text: str) -> None:
    assume(EOT not in text)
    steps = small_bpe.encode_steps(text)
    assert steps[0] == list(text.encode("utf-8"))
    assert steps[-1] == small_bpe.encode(text)
    assert all(len(after) < len(before) for before, after in pairwise(steps))


def test_encode_matches_tiktoken_with_the_same_merges(
    verdict_text: str, verdict_bpe: BPETokenizer
) -> None:
    """tiktoken, given our tokens as its ranks, is an independent implementation of encode."""
    token_bytes = [verdict_bpe.token_bytes(i) for i in range(256 + len(verdict_bpe.merges))]
    assert len(set(token_bytes)) == len(token_bytes)  # tiktoken needs one rank per byte string
    reference = tiktoken.Encoding(
        name="verdict-bpe",
        pat_str=r50k_pat_str,
        mergeable_ranks={piece: rank for rank, piece in enumerate(token_bytes)},
        special_tokens=verdict_bpe.special_tokens,
    )
    shakespeare = read_data("tinyshakespeare")[:100_000]
    unicode_text = SMALL_TEXT + " ÀÉÎõü ßæø \u00a0\u2028 x\r\n\r\n   end  "
    for text in (verdict_text, shakespeare, unicode_text, f"a{EOT}b {EOT}"):
        assert verdict_bpe.encode(text, "all") == reference.encode(text, allowed_special="all")


def test_decode_of_a_cut_character_uses_the_replacement_character(
    small_bpe: BPETokenizer,
) -> None:
    assert small_bpe.decode_bytes([0xC3]) == b"\xc3"
    assert small_bpe.decode([0xC3, 0x61]) == "\ufffda"


def test_decode_rejects_unknown_ids(small_bpe: BPETokenizer) -> None:
    with pytest.raises(TokenizerError, match=re.escape("token id 300 is not in the vocabulary")):
        small_bpe.decode([65, 300])
    with pytest.raises(TokenizerError, match=re.escape("valid ids are 0..299")):
        small_bpe.decode([-1])


# --- Special tokens -------------------------------------------------------------------------


def test_allowed_special_token_is_one_id(verdict_bpe: BPETokenizer) -> None:
    text = f"the end{EOT} A new"
    expected = verdict_bpe.encode("the end") + [999] + verdict_bpe.encode(" A new")
    assert verdict_bpe.encode(text, allowed_special={EOT}) == expected
    assert verdict_bpe.encode(text, allowed_special="all") == expected
    assert verdict_bpe.decode(expected) == text


@pytest.mark.parametrize("allowed", ["none_raise", set()])
def test_disallowed_special_token_raises(verdict_bpe: BPETokenizer, allowed: object) -> None:
    with pytest.raises(TokenizerError, match=re.escape(f"contains the special token '{EOT}'")):
        verdict_bpe.encode(f"hello {EOT}", allowed_special=allowed)


def test_only_the_allowed_special_tokens_pass() -> None:
    tokenizer = BPETokenizer([], special_tokens=("<|a|>", "<|b|>", "<|a|><|b|>"))
    assert tokenizer.special_tokens == {"<|a|>": 256, "<|b|>": 257, "<|a|><|b|>": 258}
    assert tokenizer.encode("x<|a|>", allowed_special={"<|a|>"}) == [120, 256]
    assert tokenizer.encode("<|a|><|b|>", allowed_special="all") == [258]  # longest wins
    with pytest.raises(TokenizerError, match=re.escape("special token '<|b|>'")):
        tokenizer.encode("<|a|>x<|b|>", allowed_special={"<|a|>"})


@pytest.mark.parametrize("allowed", [{"<|unk|>"}, EOT])
def test_unknown_allowed_special_is_an_error(verdict_bpe: BPETokenizer, allowed: object) -> None:
    with pytest.raises(TokenizerError, match="pass 'all', 'none_raise' or a set"):
        verdict_bpe.encode("hi", allowed_special=allowed)


@pytest.mark.parametrize("special_tokens", [EOT, ("", EOT), (EOT, EOT)])
def test_bad_special_tokens_are_rejected(special_tokens: object) -> None:
    with pytest.raises(TokenizerError, match="distinct, non-empty strings"):
        BPETokenizer([], special_tokens=special_tokens)


# --- Saving and loading ---------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path, verdict_text: str, verdict_bpe: BPETokenizer) -> None:
    path = tmp_path / "verdict-bpe.json"
    verdict_bpe.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == verdict_bpe.merges
    assert loaded.special_tokens == verdict_bpe.special_tokens
    for text in (verdict_text, SMALL_TEXT + EOT):
        assert loaded.encode(text, "all") == verdict_bpe.encode(text, "all")


def _write_json(path: Path, content: object) -> Path:
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


VALID_HEADER = {"format": "llmcourse-bpe", "version": 1}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"merges": [], "special_tokens": []}, "not a file written by BPETokenizer.save"),
        ({**VALID_HEADER, "version": 2, "merges": [], "special_tokens": []}, '"version": 1'),
        ({**VALID_HEADER, "special_tokens": []}, '"merges" (a list of [id, id] pairs)'),
        ({**VALID_HEADER, "merges": [[1, 2]], "special_tokens": [7]}, "a list of strings"),
        ({**VALID_HEADER, "merges": [[1, 2], [3, 257]], "special_tokens": []},
         "merge number 1 is (3, 257): it must be a pair of ids of existing tokens, each in 0..256"),
        ({**VALID_HEADER, "merges": [[1, 2, 3]], "special_tokens": []}, "merge number 0"),
        ({**VALID_HEADER, "merges": [[1, 2], [1, 2]], "special_tokens": []}, "merged twice"),
        ({**VALID_HEADER, "merges": [], "special_tokens": [EOT, EOT]}, "distinct"),
        ([1, 2], "not a file written by BPETokenizer.save"),
    ],
)
def test_load_rejects_malformed_files(tmp_path: Path, content: object, message: str) -> None:
    path = _write_json(tmp_path / "tokenizer.json", content)
    with pytest.raises(TokenizerFileError, match=re.escape(message)) as caught:
        BPETokenizer.load(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, CourseError)


def test_load_rejects_a_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text('{"format": "llmcourse-bpe", ', encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=re.escape(f"{path} is not a JSON file")):
        BPETokenizer.load(path)


def test_load_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingTokenizerFileError, match="no tokenizer file at") as caught:
        BPETokenizer.load(tmp_path / "missing.json")
    assert isinstance(caught.value, FileNotFoundError)
    assert isinstance(caught.value, CourseError)
