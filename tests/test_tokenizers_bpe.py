"""Byte-level BPE: training against a slow reference, encoding against tiktoken, files,
byte orders, export to tiktoken and streaming."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import pytest
import regex
import tiktoken
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tiktoken_ext import openai_public
from tiktoken_ext.openai_public import r50k_pat_str

from llmcourse.data_files import fetch
from llmcourse.errors import CheckpointError, CourseError, InputError, MissingFileError
from llmcourse.tokenizers import BPETokenizer
from llmcourse.tokenizers.bpe import Pair, encode_iterable, merge_pair, pre_split

EOT = "<|endoftext|>"
VERDICT_VOCAB_SIZE = 1000
STORIES_VOCAB_SIZE = 1000
COURSE_VOCAB_SIZE = 4096
TRAINING_CPU_SECONDS_BAR = 5.0  # for COURSE_VOCAB_SIZE on the 2 MiB TinyStories sample
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_tokenizer.py"
SMALL_TEXT = (
    "The cat sat on the mat. The dog sat on the log. A naïve café in Zürich; "
    "東京の猫は東京にいる。 Ψυχή, ψυχή! 😀😀 numbers 1234 and 12345, tabs\tand\nnew lines.\n"
) * 3


def read_data(name: str) -> str:
    try:
        return fetch(name).read_text(encoding="utf-8")
    except MissingFileError as error:
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


@pytest.fixture(scope="module")
def stories_text() -> str:
    return read_data("tinystories-2mib")


@pytest.fixture(scope="module")
def stories_bpe(stories_text: str) -> BPETokenizer:
    """A BPE of 1,000 tokens trained on TinyStories: the course tokenizer's kind, smaller."""
    return BPETokenizer.train(stories_text, STORIES_VOCAB_SIZE)


# Text that exercises pre-tokenization and byte-level merges: any character (hypothesis' own
# choice, often rare planes), plus emoji with modifiers, combining marks, runs of whitespace of
# several kinds, digits of several scripts, contractions and pieces of special tokens.
TRICKY_PIECES = [
    "😀", "👍🏽", "👨‍👩‍👧", "e\u0301", "\u0301\u0308", "東京", "Ψυχή", "naïve", " the", " cat", "I",
    " ", "  ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\x0b",
    "0", "42", " 1234567", "٣٤", "½", "'s", "'ll", "'", "l", "!!", "...", " ?",
    "<|", "endof", "text|>", EOT,
]
tricky_text = st.lists(
    st.sampled_from(TRICKY_PIECES) | st.characters(codec="utf-8"), max_size=60
).map("".join)


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


def reference_train(
    text: str, vocab_size: int, special_tokens: Sequence[str] = (EOT,)
) -> list[Pair]:
    """The merges BPETokenizer.train must learn, found by the package's first trainer: after
    each merge it scans every distinct chunk and recounts the pairs of those that changed."""
    alternatives = "|".join(map(regex.escape, sorted(special_tokens, key=len, reverse=True)))
    parts = regex.split(alternatives, text) if special_tokens else [text]
    words = Counter(tuple(chunk.encode("utf-8")) for part in parts for chunk in pre_split(part))
    pair_counts: Counter[Pair] = Counter()
    for word, count in words.items():
        _add_pair_counts(pair_counts, word, count)
    merges = []
    for new_id in range(256, vocab_size - len(special_tokens)):
        if not pair_counts:
            break
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        merges.append(best)
        merged_words = {}
        for word, count in words.items():
            merged = tuple(merge_pair(word, best, new_id)) if best[0] in word else word
            if merged != word:
                _add_pair_counts(pair_counts, word, -count)
                _add_pair_counts(pair_counts, merged, count)
            merged_words[merged] = count
        words = merged_words
    return merges


def _add_pair_counts(pair_counts: Counter[Pair], word: Sequence[int], weight: int) -> None:
    for pair in pairwise(word):
        pair_counts[pair] += weight
        if pair_counts[pair] == 0:
            del pair_counts[pair]


def trained_merges(text: str, vocab_size: int, special_tokens: Sequence[str] = (EOT,)) -> list:
    tokenizer = BPETokenizer.train(text, vocab_size, special_tokens)
    return [pair for pair, _ in tokenizer.merges]


def test_overlapping_pairs_merge_left_to_right() -> None:
    # "aaa" holds (a, a) twice, but merging it leaves (aa, a): the next merge.
    assert trained_merges("aaa", 256 + 3, ()) == [(97, 97), (256, 97)]
    # "aaaaa": (a,a) 4 times -> [aa, aa, a]; then (aa,aa) and (aa,a) once each; (256,97) is
    # the smaller pair.
    assert trained_merges("aaaaa", 256 + 4, ()) == [(97, 97), (256, 97), (256, 257)]


@pytest.mark.parametrize(
    ("text", "vocab_size"),
    [
        (SMALL_TEXT, 400),
        ("aaaa aaa aa a aaaaaaa bababab abab " * 5, 300),  # overlaps and ties
        ("ab ba " * 4 + "abc cab bca " * 3, 300),  # ties: the smallest pair of ids wins
        ("xy yx zz " * 3, 300),  # stops early: no pair left
        ("", 260),
        (f"one{EOT}two {EOT}{EOT}three", 300),
    ],
)
def test_trainer_matches_the_reference(text: str, vocab_size: int) -> None:
    assert trained_merges(text, vocab_size) == reference_train(text, vocab_size)


def test_trainer_matches_the_reference_on_the_verdict(verdict_bpe: BPETokenizer,
                                                      verdict_text: str) -> None:
    expected = reference_train(verdict_text, VERDICT_VOCAB_SIZE)
    assert [pair for pair, _ in verdict_bpe.merges] == expected


def test_trainer_matches_the_reference_on_tinystories(
    stories_bpe: BPETokenizer, stories_text: str
) -> None:
    expected = reference_train(stories_text, STORIES_VOCAB_SIZE)
    assert [pair for pair, _ in stories_bpe.merges] == expected


@settings(deadline=None, max_examples=200)
@given(st.text(), st.integers(256, 400), st.sampled_from([(), (EOT,), ("a", "<|x|>")]))
def test_trainer_matches_the_reference_on_random_text(
    text: str, vocab_size: int, special_tokens: tuple[str, ...]
) -> None:
    vocab_size = max(vocab_size, 256 + len(special_tokens))
    assert trained_merges(text, vocab_size, special_tokens) == reference_train(
        text, vocab_size, special_tokens
    )


@settings(deadline=None, max_examples=200)
@given(st.text(alphabet="ab c", max_size=200), st.integers(256, 300))
def test_trainer_matches_the_reference_on_few_letters(text: str, vocab_size: int) -> None:
    """Few distinct bytes: many ties, runs of one letter (overlapping pairs), early stops."""
    assert trained_merges(text, vocab_size, ()) == reference_train(text, vocab_size, ())


def test_a_course_vocabulary_trains_in_seconds(stories_text: str) -> None:
    start = time.process_time()
    tokenizer = BPETokenizer.train(stories_text, COURSE_VOCAB_SIZE)
    seconds = time.process_time() - start
    assert tokenizer.vocab_size == COURSE_VOCAB_SIZE
    assert seconds < TRAINING_CPU_SECONDS_BAR, f"{seconds:.1f} CPU seconds"


def test_training_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    BPETokenizer.train(SMALL_TEXT, 270, progress=True)
    assert "BPE" in capsys.readouterr().err
    BPETokenizer.train(SMALL_TEXT, 270)
    assert capsys.readouterr().err == ""


def test_training_rejects_a_vocabulary_smaller_than_the_bytes() -> None:
    with pytest.raises(InputError, match=re.escape("at least 256 bytes + 1 special")):
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
    with pytest.raises(InputError, match=re.escape("token id 300 is not in the vocabulary")):
        small_bpe.decode([65, 300])
    with pytest.raises(InputError, match=re.escape("valid ids are 0..299")):
        small_bpe.decode([-1])



@pytest.mark.parametrize("ids", [[65, -1], [300], [10**20]])
def test_the_tiktoken_export_refuses_ids_outside_the_vocabulary(
    small_bpe: BPETokenizer, ids: list[int]
) -> None:
    """tiktoken alone raises OverflowError or KeyError; the export names the id and the range."""
    encoding = small_bpe.to_tiktoken()
    bad = ids[-1]
    message = f"token id {bad} is not in the vocabulary; valid ids are 0..299"
    for decode in (encoding.decode, encoding.decode_bytes, encoding.decode_tokens_bytes,
                   encoding.decode_with_offsets):
        with pytest.raises(InputError, match=re.escape(message)) as raised:
            decode(ids)
        assert isinstance(raised.value, CourseError)
    with pytest.raises(InputError, match=re.escape(message)):
        encoding.decode_single_token_bytes(bad)
    with pytest.raises(InputError, match=re.escape("token ids must be integers, got 1.5")):
        encoding.decode([1.5])
    assert encoding.decode([72, 105]) == "Hi"  # valid ids decode as before


# --- Special tokens -------------------------------------------------------------------------


def test_allowed_special_token_is_one_id(verdict_bpe: BPETokenizer) -> None:
    text = f"the end{EOT} A new"
    expected = verdict_bpe.encode("the end") + [999] + verdict_bpe.encode(" A new")
    assert verdict_bpe.encode(text, allowed_special={EOT}) == expected
    assert verdict_bpe.encode(text, allowed_special="all") == expected
    assert verdict_bpe.decode(expected) == text


@pytest.mark.parametrize("allowed", ["none_raise", set()])
def test_disallowed_special_token_raises(verdict_bpe: BPETokenizer, allowed: object) -> None:
    with pytest.raises(InputError, match=re.escape(f"contains the special token '{EOT}'")):
        verdict_bpe.encode(f"hello {EOT}", allowed_special=allowed)


def test_only_the_allowed_special_tokens_pass() -> None:
    tokenizer = BPETokenizer([], special_tokens=("<|a|>", "<|b|>", "<|a|><|b|>"))
    assert tokenizer.special_tokens == {"<|a|>": 256, "<|b|>": 257, "<|a|><|b|>": 258}
    assert tokenizer.encode("x<|a|>", allowed_special={"<|a|>"}) == [120, 256]
    assert tokenizer.encode("<|a|><|b|>", allowed_special="all") == [258]  # longest wins
    with pytest.raises(InputError, match=re.escape("special token '<|b|>'")):
        tokenizer.encode("<|a|>x<|b|>", allowed_special={"<|a|>"})


@pytest.mark.parametrize("allowed", [{"<|unk|>"}, EOT])
def test_unknown_allowed_special_is_an_error(verdict_bpe: BPETokenizer, allowed: object) -> None:
    with pytest.raises(InputError, match="pass 'all', 'none_raise' or a set"):
        verdict_bpe.encode("hi", allowed_special=allowed)


@pytest.mark.parametrize("special_tokens", [EOT, ("", EOT), (EOT, EOT)])
def test_bad_special_tokens_are_rejected(special_tokens: object) -> None:
    with pytest.raises(InputError, match="distinct, non-empty strings"):
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
        ({**VALID_HEADER, "version": 3, "merges": [], "special_tokens": []},
         '"version": 1 or 2'),
        ({**VALID_HEADER, "merges": [], "special_tokens": [], "byte_order": "abc"},
         '"byte_order" (a list of the 256 byte values)'),
        ({**VALID_HEADER, "merges": [], "special_tokens": [], "byte_order": [0, 1]},
         "byte_order=[0, 1] is not an order of the bytes"),
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
    with pytest.raises(CheckpointError, match=re.escape(message)) as caught:
        BPETokenizer.load(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, CourseError)


def test_load_rejects_a_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text('{"format": "llmcourse-bpe", ', encoding="utf-8")
    with pytest.raises(CheckpointError, match=re.escape(f"{path} is not a JSON file")):
        BPETokenizer.load(path)


def test_load_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="no tokenizer file at") as caught:
        BPETokenizer.load(tmp_path / "missing.json")
    assert isinstance(caught.value, FileNotFoundError)
    assert isinstance(caught.value, CourseError)


def test_a_version_1_file_still_loads(tmp_path: Path) -> None:
    path = _write_json(tmp_path / "old.json", {**VALID_HEADER, "merges": [[97, 98]],
                                               "special_tokens": [EOT]})
    tokenizer = BPETokenizer.load(path)
    assert tokenizer.encode("abab") == [256, 256]
    assert tokenizer.byte_order == tuple(range(256))


def test_bytes_in_value_order_are_saved_as_version_1(small_bpe: BPETokenizer) -> None:
    """Files that need nothing of version 2 stay readable by older versions of the package."""
    assert small_bpe.to_dict() == {
        "format": "llmcourse-bpe",
        "version": 1,
        "merges": [list(pair) for pair, _ in small_bpe.merges],
        "special_tokens": [EOT],
    }


# --- Byte order -----------------------------------------------------------------------------

REVERSED_BYTES = list(range(255, -1, -1))


@pytest.fixture(scope="module")
def reversed_bpe() -> BPETokenizer:
    """Token i is the byte 255 - i; the merges make "ab" and " ab"."""
    a, b, space = (255 - ord(character) for character in "ab ")
    return BPETokenizer([(a, b), (space, 256)], special_tokens=(EOT,), byte_order=REVERSED_BYTES)


def test_byte_order_gives_the_bytes_their_ids(reversed_bpe: BPETokenizer) -> None:
    assert reversed_bpe.token_bytes(0) == b"\xff"
    assert reversed_bpe.token_bytes(255 - ord("a")) == b"a"
    assert reversed_bpe.token_bytes(256) == b"ab"
    assert reversed_bpe.token_bytes(257) == b" ab"
    assert reversed_bpe.special_tokens == {EOT: 258}
    assert reversed_bpe.encode("ab ab c") == [256, 257, 255 - ord(" "), 255 - ord("c")]
    assert reversed_bpe.encode_steps("ab") == [[255 - ord("a"), 255 - ord("b")], [256]]


@settings(deadline=None, max_examples=50)
@given(tricky_text)
def test_byte_order_round_trip_and_tiktoken(reversed_bpe: BPETokenizer, text: str) -> None:
    ids = reversed_bpe.encode(text, "all")
    assert reversed_bpe.decode(ids) == text
    assert reversed_bpe.to_tiktoken().encode(text, allowed_special="all") == ids


def test_byte_order_is_saved_as_version_2(tmp_path: Path, reversed_bpe: BPETokenizer) -> None:
    path = tmp_path / "reversed.json"
    reversed_bpe.save(path)
    content = json.loads(path.read_text(encoding="utf-8"))
    assert content["version"] == 2
    assert content["byte_order"] == REVERSED_BYTES
    loaded = BPETokenizer.load(path)
    assert loaded.byte_order == tuple(REVERSED_BYTES)
    assert loaded.merges == reversed_bpe.merges
    assert loaded.encode("ab ab c") == reversed_bpe.encode("ab ab c")


@pytest.mark.parametrize(
    "byte_order", [list(range(255)), [0, *range(255)], "abc", [*range(255), 255.0], [True] * 256]
)
def test_bad_byte_orders_are_rejected(byte_order: object) -> None:
    with pytest.raises(InputError, match="the 256 byte values 0..255, each once"):
        BPETokenizer([], byte_order=byte_order)


# --- Export to tiktoken ---------------------------------------------------------------------


def test_tiktoken_export(stories_bpe: BPETokenizer) -> None:
    encoding = stories_bpe.to_tiktoken(name="stories-1k")
    assert encoding.name == "stories-1k"
    assert encoding.n_vocab == stories_bpe.vocab_size == STORIES_VOCAB_SIZE
    assert encoding.special_tokens_set == {EOT}
    assert encoding.eot_token == stories_bpe.special_tokens[EOT]
    assert [encoding.decode_single_token_bytes(i) for i in range(encoding.n_vocab)] == [
        stories_bpe.token_bytes(i) for i in range(stories_bpe.vocab_size)
    ]
    assert stories_bpe.to_tiktoken(name="stories-1k") is encoding  # built once


def test_tiktoken_ranks_follow_merge_order(stories_bpe: BPETokenizer) -> None:
    """tiktoken builds each token from lower-ranked ones: a merged token ranks after its parts."""
    encoding = stories_bpe.to_tiktoken()
    for (left, right), new_id in stories_bpe.merges:
        rank = encoding.encode_single_token(stories_bpe.token_bytes(new_id))
        assert rank == new_id > max(left, right)


def test_tiktoken_pattern_cuts_like_pre_split() -> None:
    text = "I'll pay 42 dollars!!  Now\n\n  you're   done 😀\t\r\n"
    assert regex.findall(r50k_pat_str, text) == pre_split(text)


@settings(deadline=None)
@given(tricky_text)
def test_tiktoken_export_gives_the_same_ids(stories_bpe: BPETokenizer, text: str) -> None:
    encoding = stories_bpe.to_tiktoken()
    ids = stories_bpe.encode(text, allowed_special="all")
    assert encoding.encode(text, allowed_special="all") == ids
    assert encoding.decode(ids) == text


@settings(deadline=None, max_examples=30)
@given(st.integers(0, 2_000_000), st.integers(1, 20_000))
def test_tiktoken_export_on_the_corpus(
    stories_bpe: BPETokenizer, stories_text: str, start: int, length: int
) -> None:
    text = stories_text[start : start + length]
    ids = stories_bpe.to_tiktoken().encode(text, allowed_special="all")
    assert ids == stories_bpe.encode(text, allowed_special="all")


@settings(deadline=None, max_examples=50)
@given(st.text())
def test_tiktoken_export_of_the_verdict_tokenizer(verdict_bpe: BPETokenizer, text: str) -> None:
    assume(EOT not in text)
    assert verdict_bpe.to_tiktoken().encode(text) == verdict_bpe.encode(text)


def test_tiktoken_export_and_special_tokens() -> None:
    tokenizer = BPETokenizer.train(SMALL_TEXT, 300, special_tokens=(EOT, "<|pad|>"))
    encoding = tokenizer.to_tiktoken()
    text = f"cat{EOT} sat<|pad|>"
    for allowed in ("all", {EOT, "<|pad|>"}):
        assert encoding.encode(text, allowed_special=allowed) == tokenizer.encode(text, allowed)
    with pytest.raises(ValueError, match="disallowed special token"):
        encoding.encode(text, allowed_special={EOT})
    with pytest.raises(InputError, match="contains the special token '<|pad|>'"):
        tokenizer.encode(text, allowed_special={EOT})
    with pytest.raises(ValueError, match="disallowed special token"):
        encoding.encode(text)
    with pytest.raises(InputError, match="contains the special token"):
        tokenizer.encode(text)


def test_tiktoken_export_refuses_two_tokens_with_the_same_bytes() -> None:
    a, b, c = b"abc"
    tokenizer = BPETokenizer([(a, b), (256, c), (b, c), (a, 258)], special_tokens=())
    assert tokenizer.token_bytes(257) == tokenizer.token_bytes(259) == b"abc"
    with pytest.raises(InputError, match=re.escape("tokens 257 and 259 both stand for b'abc'")):
        tokenizer.to_tiktoken()


# --- Streaming ------------------------------------------------------------------------------


def cut_at(text: str, positions: list[int]) -> list[str]:
    """``text`` cut at ``positions`` (taken modulo its length + 1), empty pieces included."""
    cuts = sorted(position % (len(text) + 1) for position in positions)
    return [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@settings(deadline=None)
@given(tricky_text, st.lists(st.integers(0, 1000), max_size=8))
def test_streaming_gives_the_ids_of_the_whole_text(
    stories_bpe: BPETokenizer, text: str, positions: list[int]
) -> None:
    pieces = cut_at(text, positions)
    expected = stories_bpe.encode(text, allowed_special="all")
    assert list(stories_bpe.encode_iterable(pieces, allowed_special="all")) == expected
    encoding = stories_bpe.to_tiktoken()
    assert list(encode_iterable(encoding, iter(pieces), allowed_special="all")) == expected


@pytest.mark.parametrize(
    "pieces",
    [
        ["x'l", "l go"],  # the contraction 'll is one chunk only once its second l is there
        ["hello <|endof", "text|> wor", "ld"],  # a special token cut in two
        ["hello ", "<|endoftext|>", " world"],
        ["a", "b", " ", "c", "", " d  ", "  e\n", "\n"],
        ["  ", "x"],
        [],
    ],
)
def test_streaming_examples(stories_bpe: BPETokenizer, pieces: list[str]) -> None:
    text = "".join(pieces)
    expected = stories_bpe.encode(text, allowed_special="all")
    assert list(stories_bpe.encode_iterable(pieces, allowed_special="all")) == expected


def test_streaming_finds_special_tokens_with_spaces_inside() -> None:
    tokenizer = BPETokenizer.train(SMALL_TEXT, 300, special_tokens=("<|end of text|>",))
    text = "the end <|end of text|> the start <|end of"
    for positions in ([12], [13, 17], [9, 20], [40]):
        pieces = cut_at(text, positions)
        assert list(tokenizer.encode_iterable(pieces, "all")) == tokenizer.encode(text, "all")


def test_streaming_refuses_special_tokens_that_are_not_allowed(
    stories_bpe: BPETokenizer,
) -> None:
    pieces = ["once upon a time <|endof", "text|> the end"]
    with pytest.raises(InputError, match="contains the special token"):
        list(stories_bpe.encode_iterable(pieces))
    with pytest.raises(ValueError, match="disallowed special token"):
        list(encode_iterable(stories_bpe.to_tiktoken(), pieces))
    expected = stories_bpe.encode("".join(pieces), allowed_special={EOT})
    assert list(stories_bpe.encode_iterable(pieces, allowed_special={EOT})) == expected


def tiktoken_pattern(encoding_name: str) -> str:
    """The pre-tokenization pattern of one of tiktoken's OpenAI encodings, read without
    downloading its ranks (their loader is replaced by one that returns none)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openai_public, "load_tiktoken_bpe", lambda *args, **kwargs: {})
        return getattr(openai_public, encoding_name)()["pat_str"]


@pytest.mark.parametrize("encoding_name", ["cl100k_base", "o200k_base"])
@settings(deadline=None, max_examples=50)
@given(text=tricky_text, positions=st.lists(st.integers(0, 1000), max_size=8))
def test_streaming_with_the_patterns_of_later_tiktoken_encodings(
    stories_bpe: BPETokenizer, encoding_name: str, text: str, positions: list[int]
) -> None:
    """Any encoding with an ``encode`` method streams, here tiktoken's GPT-4 patterns (with
    this tokenizer's ranks, so that nothing needs downloading)."""
    n_ordinary = stories_bpe.vocab_size - len(stories_bpe.special_tokens)
    encoding = tiktoken.Encoding(
        encoding_name,
        pat_str=tiktoken_pattern(encoding_name),
        mergeable_ranks={stories_bpe.token_bytes(i): i for i in range(n_ordinary)},
        special_tokens=stories_bpe.special_tokens,
    )
    expected = encoding.encode(text, allowed_special="all")
    streamed = encode_iterable(encoding, cut_at(text, positions), allowed_special="all")
    assert list(streamed) == expected


def test_streaming_holds_little_memory(stories_bpe: BPETokenizer, stories_text: str) -> None:
    """4 MB of text in pieces of 1,000 characters: memory holds a few pieces, not the text."""
    encoding = stories_bpe.to_tiktoken()
    sample = stories_text[:1_000_000]
    n_tokens = len(encoding.encode(sample, allowed_special="all"))
    pieces = (sample[start : start + 1000] for _ in range(4) for start in range(0, 10**6, 1000))
    tracemalloc.start()
    try:
        count = sum(1 for _ in encode_iterable(encoding, pieces, allowed_special="all"))
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 4 * n_tokens
    assert peak_bytes < 200_000


# --- The benchmark --------------------------------------------------------------------------


def test_quick_benchmark_reports_and_writes_json(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    json_path = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--json", str(json_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "ratio training" in completed.stdout
    results = json.loads(json_path.read_text())
    assert results["checks"]["same_ids_as_tiktoken_export"] is True
