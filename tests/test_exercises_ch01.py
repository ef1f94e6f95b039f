"""Chapter 1 exercise checkers: each accepts the reference and rejects typical wrong answers."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from llmcourse.exercises import check
from llmcourse.exercises.ch01_tokenization import (
    reference_apply_merges,
    reference_build_vocab,
    reference_merge_pair,
    reference_most_frequent_pair,
    reference_split_words,
)
from llmcourse.tokenizers import BPETokenizer, WordTokenizer
from llmcourse.tokenizers.word import END_OF_TEXT, UNKNOWN

PUNCTUATION = r"""[,.:;?_!"()']"""


def run_check(exercise_id: str, answer: object) -> tuple[str, str]:
    """The status and the message with its hint of a non-strict check of ``answer``."""
    result = check(exercise_id, answer, strict=False)
    return result.status, result.message_with_hint


def assert_rejected(exercise_id: str, answer: object, *expected_phrases: str) -> None:
    status, message = run_check(exercise_id, answer)
    assert status == "failed", message
    for phrase in expected_phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"


# --- References agree with the package ------------------------------------------------------


def test_references_agree_with_the_word_tokenizer() -> None:
    text = 'I HAD always thought Jack--"a cheap genius"--would paint. <|endoftext|> Zebra, apple!'
    tokens = reference_split_words(text)
    assert tokens[:6] == ["I", "HAD", "always", "thought", "Jack", "--"]
    assert reference_build_vocab(tokens) == WordTokenizer.from_text(text).vocab


def test_references_agree_with_bpe_training_and_encoding() -> None:
    word = "aaabdaaabac"  # one chunk of the pre-split, so training sees one list of bytes
    tokenizer = BPETokenizer.train(word, vocab_size=256 + 3 + 1)
    ids = list(word.encode())
    assert reference_most_frequent_pair(ids) == tokenizer.merges[0][0] == (97, 97)
    assert reference_merge_pair(ids, (97, 97), 256) == [256, 97, 98, 100, 256, 97, 98, 97, 99]
    assert reference_apply_merges(ids, tokenizer.merges) == tokenizer.encode(word)


def test_reference_most_frequent_pair_rules() -> None:
    assert reference_most_frequent_pair([]) is None
    assert reference_most_frequent_pair([3]) is None
    assert reference_most_frequent_pair([7, 7, 7, 1, 2]) == (7, 7)  # overlapping: counted twice
    assert reference_most_frequent_pair([5, 6, 1, 2]) == (1, 2)  # tie: the smallest pair


# --- ch01.split_words ---------------------------------------------------------------------------


def test_split_words_accepts_reference() -> None:
    assert run_check("ch01.split_words", reference_split_words)[0] == "passed"


def test_split_words_not_attempted() -> None:
    def split_words(text):
        raise NotImplementedError

    assert run_check("ch01.split_words", split_words)[0] == "not attempted"


def test_split_words_rejects_keeping_whitespace() -> None:
    def keeps_whitespace(text):
        return re.split(rf"({PUNCTUATION}|--|\s)", text)

    assert_rejected("ch01.split_words", keeps_whitespace, "no whitespace tokens", "'Hello world'")


def test_split_words_rejects_empty_strings() -> None:
    def keeps_empty_strings(text):
        return [piece for piece in re.split(rf"({PUNCTUATION}|--|\s)", text) if piece != " "]

    assert_rejected("ch01.split_words", keeps_empty_strings, "no empty strings")


def test_split_words_rejects_whitespace_split_only() -> None:
    def whitespace_only(text):
        return text.split()

    assert_rejected("ch01.split_words", whitespace_only, "token of its own", "'Hello, world.'")


def test_split_words_rejects_dropped_punctuation() -> None:
    def drops_punctuation(text):
        return [piece for piece in re.split(rf"{PUNCTUATION}|--|\s", text) if piece.strip()]

    assert_rejected("ch01.split_words", drops_punctuation, "capturing group")


def test_split_words_rejects_single_dash_tokens() -> None:
    def splits_every_dash(text):
        return [piece for piece in re.split(r"""([,.:;?_!"()'-]|\s)""", text) if piece.strip()]

    assert_rejected("ch01.split_words", splits_every_dash, "'--' is one token", "genius--though")


def test_split_words_rejects_missing_double_dash() -> None:
    def forgets_double_dash(text):
        return [piece for piece in re.split(rf"({PUNCTUATION}|\s)", text) if piece.strip()]

    assert_rejected("ch01.split_words", forgets_double_dash, "'--' is one token")


# --- ch01.build_vocab ---------------------------------------------------------------------------


def test_build_vocab_accepts_reference() -> None:
    assert run_check("ch01.build_vocab", reference_build_vocab)[0] == "passed"


def test_build_vocab_rejects_unsorted_tokens() -> None:
    def first_seen_order(tokens):
        specials = (END_OF_TEXT, UNKNOWN)
        ordinary = list(dict.fromkeys(token for token in tokens if token not in specials))
        return {token: i for i, token in enumerate([*ordinary, END_OF_TEXT, UNKNOWN])}

    assert_rejected("ch01.build_vocab", first_seen_order, "sorted order", "['cat', 'a', 'sat']")


def test_build_vocab_rejects_case_insensitive_sorting() -> None:
    def sorted_ignoring_case(tokens):
        ordinary = sorted(set(tokens) - {END_OF_TEXT, UNKNOWN}, key=str.lower)
        return {token: i for i, token in enumerate([*ordinary, END_OF_TEXT, UNKNOWN])}

    assert_rejected("ch01.build_vocab", sorted_ignoring_case, "sorted order", "'Zebra'")


def test_build_vocab_rejects_specials_at_the_start() -> None:
    def specials_first(tokens):
        ordinary = sorted(set(tokens) - {END_OF_TEXT, UNKNOWN})
        return {token: i for i, token in enumerate([END_OF_TEXT, UNKNOWN, *ordinary])}

    assert_rejected("ch01.build_vocab", specials_first, "take the last two ids")


def test_build_vocab_rejects_swapped_specials() -> None:
    def unknown_before_end_of_text(tokens):
        ordinary = sorted(set(tokens) - {END_OF_TEXT, UNKNOWN})
        return {token: i for i, token in enumerate([*ordinary, UNKNOWN, END_OF_TEXT])}

    assert_rejected("ch01.build_vocab", unknown_before_end_of_text, "take the last two ids")


def test_build_vocab_rejects_missing_specials() -> None:
    def no_specials(tokens):
        return {token: i for i, token in enumerate(sorted(set(tokens)))}

    assert_rejected(
        "ch01.build_vocab", no_specials, "add the special tokens", "has no <|endoftext|>"
    )


def test_build_vocab_rejects_duplicates() -> None:
    def numbers_duplicates(tokens):
        return {token: i for i, token in enumerate([*sorted(tokens), END_OF_TEXT, UNKNOWN])}

    assert_rejected("ch01.build_vocab", numbers_duplicates, "number each distinct token once")


def test_build_vocab_rejects_numbering_specials_twice() -> None:
    def specials_twice(tokens):
        return {token: i for i, token in enumerate([*sorted(set(tokens)), END_OF_TEXT, UNKNOWN])}

    assert_rejected("ch01.build_vocab", specials_twice, "must not be numbered twice")


# --- ch01.most_frequent_pair --------------------------------------------------------------------


def counts_of(ids, positions):
    return Counter((ids[i], ids[i + 1]) for i in positions)


def smallest_of_most_frequent(counts):
    return min(counts, key=lambda pair: (-counts[pair], pair), default=None)


def test_most_frequent_pair_accepts_reference() -> None:
    assert run_check("ch01.most_frequent_pair", reference_most_frequent_pair)[0] == "passed"


def test_most_frequent_pair_rejects_missing_last_pair() -> None:
    def off_by_one_at_end(ids):
        return smallest_of_most_frequent(counts_of(ids, range(len(ids) - 2)))

    assert_rejected(
        "ch01.most_frequent_pair", off_by_one_at_end, "the last pair", "ids = [4, 4]"
    )


def test_most_frequent_pair_rejects_every_other_position() -> None:
    def steps_by_two(ids):
        return smallest_of_most_frequent(counts_of(ids, range(0, len(ids) - 1, 2)))

    assert_rejected("ch01.most_frequent_pair", steps_by_two, "not at every other position")


def test_most_frequent_pair_rejects_non_overlapping_counts() -> None:
    def counts_without_overlap(ids):
        counts, position = Counter(), 0
        while position < len(ids) - 1:
            pair = (ids[position], ids[position + 1])
            counts[pair] += 1
            position += 2 if pair[0] == pair[1] else 1
        return smallest_of_most_frequent(counts)

    assert_rejected("ch01.most_frequent_pair", counts_without_overlap, "overlapping occurrences")


def test_most_frequent_pair_rejects_first_seen_tie_break() -> None:
    def first_seen_on_tie(ids):
        counts = Counter(zip(ids, ids[1:], strict=False))
        return counts.most_common(1)[0][0] if counts else None

    assert_rejected("ch01.most_frequent_pair", first_seen_on_tie, "on a tie", "[5, 6, 1, 2]")


def test_most_frequent_pair_rejects_largest_on_tie() -> None:
    def largest_on_tie(ids):
        counts = Counter(zip(ids, ids[1:], strict=False))
        return max(counts, key=lambda pair: (counts[pair], pair), default=None)

    assert_rejected("ch01.most_frequent_pair", largest_on_tie, "return the smallest pair")


def test_most_frequent_pair_rejects_wrap_around() -> None:
    def wraps_around(ids):
        if len(ids) < 2:
            return None
        return smallest_of_most_frequent(Counter(zip(ids, ids[1:] + ids[:1], strict=True)))

    assert_rejected("ch01.most_frequent_pair", wraps_around, "does not wrap around")


def test_most_frequent_pair_rejects_list_result() -> None:
    def returns_list(ids):
        pair = reference_most_frequent_pair(ids)
        return None if pair is None else list(pair)

    assert_rejected("ch01.most_frequent_pair", returns_list, "return a tuple", "got list")


# --- ch01.merge_pair ----------------------------------------------------------------------------


def test_merge_pair_accepts_reference() -> None:
    assert run_check("ch01.merge_pair", reference_merge_pair)[0] == "passed"


def test_merge_pair_rejects_overlapping_merges() -> None:
    def right_to_left(ids, pair, new_id):
        return reference_merge_pair(ids[::-1], pair[::-1], new_id)[::-1]

    assert_rejected("ch01.merge_pair", right_to_left, "skip both ids", "[7, 7, 7]")


def test_merge_pair_rejects_not_skipping_the_merged_id() -> None:
    def advances_by_one(ids, pair, new_id):
        merged, position = [], 0
        while position < len(ids):
            merged.append(new_id if tuple(ids[position : position + 2]) == pair else ids[position])
            position += 1
        return merged

    assert_rejected("ch01.merge_pair", advances_by_one, "move on past both")


def test_merge_pair_rejects_dropping_the_last_id() -> None:
    def off_by_one_at_end(ids, pair, new_id):
        merged, position = [], 0
        while position < len(ids) - 1:
            if (ids[position], ids[position + 1]) == pair:
                merged.append(new_id)
                position += 2
            else:
                merged.append(ids[position])
                position += 1
        return merged

    assert_rejected("ch01.merge_pair", off_by_one_at_end, "the final id", "ids = [1, 2, 3]")


def test_merge_pair_rejects_first_occurrence_only() -> None:
    def first_only(ids, pair, new_id):
        for position in range(len(ids) - 1):
            if (ids[position], ids[position + 1]) == pair:
                return [*ids[:position], new_id, *ids[position + 2 :]]
        return list(ids)

    assert_rejected("ch01.merge_pair", first_only, "every occurrence")


def test_merge_pair_rejects_list_to_tuple_comparison() -> None:
    def compares_list_with_tuple(ids, pair, new_id):
        merged, position = [], 0
        while position < len(ids):
            if ids[position : position + 2] == pair:  # a list never equals a tuple
                merged.append(new_id)
                position += 2
            else:
                merged.append(ids[position])
                position += 1
        return merged

    assert_rejected("ch01.merge_pair", compares_list_with_tuple, "nothing was merged")


def test_merge_pair_rejects_changing_the_input() -> None:
    def in_place(ids, pair, new_id):
        ids[:] = reference_merge_pair(ids, pair, new_id)
        return ids

    assert_rejected(
        "ch01.merge_pair", in_place, "your function changed its argument `ids` in place"
    )


# --- ch01.apply_merges --------------------------------------------------------------------------


def test_apply_merges_accepts_reference() -> None:
    assert run_check("ch01.apply_merges", reference_apply_merges)[0] == "passed"


def test_apply_merges_rejects_reverse_order() -> None:
    def last_merge_first(ids, merges):
        return reference_apply_merges(ids, merges[::-1])

    assert_rejected("ch01.apply_merges", last_merge_first, "learned first is applied first")


def test_apply_merges_rejects_leftmost_pair_first() -> None:
    def leftmost_known_pair_first(ids, merges):
        new_ids = dict(merges)
        ids = list(ids)
        position = 0
        while position < len(ids) - 1:
            pair = (ids[position], ids[position + 1])
            if pair in new_ids:
                ids[position : position + 2] = [new_ids[pair]]
                position = max(position - 1, 0)
            else:
                position += 1
        return ids

    assert_rejected(
        "ch01.apply_merges", leftmost_known_pair_first, "not the leftmost pair first"
    )


def test_apply_merges_rejects_only_pairs_of_the_original_ids() -> None:
    def ignores_new_pairs(ids, merges):
        present = set(zip(ids, ids[1:], strict=False))
        return reference_apply_merges(ids, [merge for merge in merges if merge[0] in present])

    assert_rejected("ch01.apply_merges", ignores_new_pairs, "a later merge uses")


def test_apply_merges_rejects_first_occurrence_only() -> None:
    def first_occurrence_only(ids, merges):
        ids = list(ids)
        for pair, new_id in merges:
            for position in range(len(ids) - 1):
                if (ids[position], ids[position + 1]) == pair:
                    ids[position : position + 2] = [new_id]
                    break
        return ids

    assert_rejected("ch01.apply_merges", first_occurrence_only, "every occurrence")


# --- Answers written differently from the references, and text-based shortcuts ----------------


def split_words_with_findall(text: str) -> list[str]:
    return re.findall(r"""--|[,.:;?_!"()']|[^\s,.:;?_!"()']+?(?=--|[\s,.:;?_!"()']|$)""", text)


def build_vocab_with_a_loop(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token in sorted(set(tokens)):
        if token not in (END_OF_TEXT, UNKNOWN):
            vocab[token] = len(vocab)
    vocab[END_OF_TEXT] = len(vocab)
    vocab[UNKNOWN] = len(vocab)
    return vocab


def most_frequent_pair_with_a_dict(ids: list[int]) -> tuple[int, int] | None:
    counts: dict[tuple[int, int], int] = {}
    for i in range(len(ids) - 1):
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    return sorted(pair for pair, count in counts.items() if count == best)[0]


def merge_pair_with_a_while_loop(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    merged, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def apply_merges_with_a_dict(ids: list[int], merges: list) -> list[int]:
    for pair, new_id in dict(merges).items():
        ids = merge_pair_with_a_while_loop(ids, pair, new_id)
    return ids


@pytest.mark.parametrize(
    ("exercise_id", "answer"),
    [
        ("ch01.split_words", split_words_with_findall),
        ("ch01.build_vocab", build_vocab_with_a_loop),
        ("ch01.most_frequent_pair", most_frequent_pair_with_a_dict),
        ("ch01.merge_pair", merge_pair_with_a_while_loop),
        ("ch01.apply_merges", apply_merges_with_a_dict),
    ],
)
def test_answers_written_differently_pass(exercise_id: str, answer: object) -> None:
    status, message = run_check(exercise_id, answer)
    assert status == "passed", message


def merge_pair_on_text(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    text = " ".join(map(str, ids)).replace(f"{pair[0]} {pair[1]}", str(new_id))
    return [int(token) for token in text.split()]


def most_frequent_pair_on_digits(ids: list[int]) -> tuple[int, int] | None:
    digits = "".join(map(str, ids))
    counts = Counter(zip(digits, digits[1:], strict=False))
    if not counts:
        return None
    pair = min(counts, key=lambda pair: (-counts[pair], pair))
    return int(pair[0]), int(pair[1])


def apply_merges_on_text(ids: list[int], merges: list) -> list[int]:
    for pair, new_id in merges:
        ids = merge_pair_on_text(ids, pair, new_id)
    return ids


@pytest.mark.parametrize(
    ("exercise_id", "answer"),
    [
        ("ch01.merge_pair", merge_pair_on_text),
        ("ch01.most_frequent_pair", most_frequent_pair_on_digits),
        ("ch01.apply_merges", apply_merges_on_text),
    ],
)
def test_text_based_shortcuts_fail_on_multi_digit_ids(exercise_id: str, answer: object) -> None:
    assert_rejected(exercise_id, answer, "12 is not 1 followed by 2")


@pytest.mark.parametrize(
    "exercise_id",
    ["ch01.split_words", "ch01.build_vocab", "ch01.most_frequent_pair", "ch01.merge_pair",
     "ch01.apply_merges"],
)
def test_an_answer_that_raises_is_an_error_naming_the_case(exercise_id: str) -> None:
    def broken(*args):
        raise KeyError("oops")

    status, message = run_check(exercise_id, broken)
    assert status == "error"
    assert "KeyError" in message and " for " in message
