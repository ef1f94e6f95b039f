"""Checkers of the exercises of chapter 1, tokenization.

- ``ch01.split_words``: split text into words and punctuation marks, dropping whitespace;
- ``ch01.build_vocab``: number the sorted distinct tokens, then the two special tokens;
- ``ch01.most_frequent_pair``: the adjacent pair of ids that byte-pair encoding merges next;
- ``ch01.merge_pair``: replace each occurrence of a pair by a new id, left to right;
- ``ch01.apply_merges``: encode by replaying learned merges in the order they were learned.

Each checker runs the learner's function and the reference below on small hand-made cases,
grouped by the mistake they reveal (each group with its own hint), then on seeded random cases.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

from llmcourse.exercises.core import Mismatch, attempt, describe, exercise, expect_equal
from llmcourse.tokenizers.bpe import merge_pair as package_merge_pair
from llmcourse.tokenizers.word import END_OF_TEXT, UNKNOWN
from llmcourse.tokenizers.word import split as package_split

Pair = tuple[int, int]
Merge = tuple[Pair, int]  # ((left id, right id), merged id), as in BPETokenizer.merges
SPECIAL_TOKENS = (END_OF_TEXT, UNKNOWN)
N_RANDOM_CASES = 40


# ----------------------------------------------------------------------------------------------
# References


def reference_split_words(text: str) -> list[str]:
    """Words and punctuation marks of ``text``; see ``llmcourse.tokenizers.word.split``."""
    return package_split(text)


def reference_build_vocab(tokens: Sequence[str]) -> dict[str, int]:
    """Sorted distinct tokens numbered from 0, then ``<|endoftext|>`` and ``<|unk|>``."""
    ordinary = sorted(set(tokens) - set(SPECIAL_TOKENS))
    return {token: token_id for token_id, token in enumerate([*ordinary, *SPECIAL_TOKENS])}


def reference_most_frequent_pair(ids: Sequence[int]) -> Pair | None:
    """The most frequent adjacent pair; ties go to the smallest pair; None for < 2 ids."""
    counts = Counter(pairwise(ids))
    return min(counts, key=lambda pair: (-counts[pair], pair), default=None)


def reference_merge_pair(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """``ids`` with each occurrence of ``pair`` replaced by ``new_id``, scanning left to right."""
    return package_merge_pair(ids, pair, new_id)


def reference_apply_merges(ids: Sequence[int], merges: Sequence[Merge]) -> list[int]:
    """``ids`` after each merge of ``merges``, applied in order to the whole list."""
    merged = list(ids)
    for pair, new_id in merges:
        merged = package_merge_pair(merged, pair, new_id)
    return merged


# ----------------------------------------------------------------------------------------------
# ch01.split_words

_WORDS = ["the", "Cat", "It", "s", "well-known", "a", "Z", "1908", "naïve"]
_SEPARATORS = [" ", "  ", "\n", "\t", ",", ".", ":", ";", "?", "_", "!", '"', "(", ")", "'", "--",
               "-"]


@exercise(
    "ch01.split_words",
    title="Split text into words and punctuation",
    hint="re.split with a capturing group keeps the separators; then drop the pieces that are "
    "empty or only whitespace",
)
def check_split_words(answer: Callable[[str], list[str]]) -> None:
    groups = [
        (
            "split on any whitespace (spaces, tabs, new lines) and drop it: the result has no "
            "whitespace tokens and no empty strings",
            ["Hello world", "  spaces  around  ", "tabs\tand\nnew lines\n"],
        ),
        (
            'each of , . : ; ? _ ! " ( ) \' is a token of its own, even when glued to a word: '
            "put the marks in a capturing group of re.split so they are kept",
            ["Hello, world.", 'He said: "yes!" (really?)', "it's_here;", "Mrs. Gisburn's"],
        ),
        (
            "the double dash '--' is one token, while a single '-' stays inside its word "
            "('well-known' is one token)",
            ["a cheap genius--though a good fellow", "well-known", "a -- b", "---"],
        ),
        (
            "empty text, or text with only whitespace, has no tokens: return []",
            ["", "   ", "\n"],
        ),
        ("punctuation with no words is still split into tokens", ["...", "?!", "a"]),
    ]
    for hint, texts in groups:
        cases = [(f"text = {describe(text)}", (text,)) for text in texts]
        _run_with_type_check(answer, reference_split_words, cases, hint=hint)
    rng = random.Random(1)
    pieces = _WORDS + _SEPARATORS
    random_texts = [
        "".join(rng.choices(pieces, k=rng.randint(1, 12))) for _ in range(N_RANDOM_CASES)
    ]
    cases = [(f"text = {describe(text)}", (text,)) for text in random_texts]
    _run_with_type_check(answer, reference_split_words, cases)


# ----------------------------------------------------------------------------------------------
# ch01.build_vocab


@exercise(
    "ch01.build_vocab",
    title="Build a vocabulary",
    hint="number sorted(set(tokens)) from 0, then add '<|endoftext|>' and '<|unk|>'",
)
def check_build_vocab(answer: Callable[[list[str]], dict[str, int]]) -> None:
    cases = [
        ["cat", "a", "sat"],
        ["the", "cat", "the", "mat", "the"],
        ["The", "the", ",", "Zebra", "apple", "--", "."],
        [],
        ["a", END_OF_TEXT, "b", UNKNOWN, "a"],
    ]
    rng = random.Random(2)
    vocabulary = [*_WORDS, *_SEPARATORS[4:], END_OF_TEXT, UNKNOWN]
    cases += [rng.choices(vocabulary, k=rng.randint(0, 25)) for _ in range(N_RANDOM_CASES)]
    for tokens in cases:
        case = f"tokens = {describe(tokens)}"
        expected = reference_build_vocab(list(tokens))
        got = attempt(answer, list(tokens), case=case)
        _expect_vocab(got, expected, tokens, case=case)


def _expect_vocab(got: Any, expected: dict[str, int], tokens: list[str], *, case: str) -> None:
    """Compare two vocabularies, with a hint for the most likely reason they differ."""
    if not isinstance(got, dict):
        raise Mismatch(case, expected, got, "return a dict that maps each token to its id")
    missing_specials = [token for token in SPECIAL_TOKENS if token not in got]
    if missing_specials:
        raise Mismatch(
            case, expected, got,
            f"add the special tokens {END_OF_TEXT!r} and {UNKNOWN!r} after the ordinary tokens",
            detail=f"the vocabulary has no {' and no '.join(missing_specials)}",
        )
    extra, missing = got.keys() - expected.keys(), expected.keys() - got.keys()
    if extra or missing:
        raise Mismatch(
            case, expected, got,
            "the vocabulary holds every distinct token of tokens, and only those",
            detail=f"missing tokens {describe(sorted(missing))}, unexpected keys "
            f"{describe(sorted(extra, key=repr))}",
        )
    if not all(isinstance(token_id, int) for token_id in got.values()):
        raise Mismatch(case, expected, got, "the ids must be integers: 0, 1, 2, ...")
    if sorted(got.values()) != list(range(len(expected))):
        if any(token in SPECIAL_TOKENS for token in tokens):
            hint = (
                "a special token that is already in tokens must not be numbered twice: leave it "
                "out of the ordinary tokens, it gets its id at the end"
            )
        else:
            hint = "number each distinct token once (use set(tokens)), so that the ids are 0, 1, "
            hint += "..., len(vocab) - 1 with no gaps"
        raise Mismatch(
            case, expected, got, hint,
            detail=f"the ids are {describe(sorted(got.values()))}, not 0..{len(expected) - 1}",
        )
    order = sorted(got, key=got.__getitem__)
    if order[-2:] != list(SPECIAL_TOKENS):
        raise Mismatch(
            case, expected, got,
            f"the special tokens take the last two ids: {END_OF_TEXT!r}, then {UNKNOWN!r}",
            detail=f"the last two ids are given to {describe(order[-2:])}",
        )
    if order[:-2] != sorted(order[:-2]):
        raise Mismatch(
            case, expected, got,
            "number the tokens in sorted order, Python's default string order (sorted(...)), in "
            "which punctuation comes before 'Z' and 'Z' before 'a'",
            detail=f"the ordinary tokens are numbered in the order {describe(order[:-2])}",
        )
    expect_equal(got, expected, case=case)


# ----------------------------------------------------------------------------------------------
# ch01.most_frequent_pair


@exercise(
    "ch01.most_frequent_pair",
    title="Find the most frequent adjacent pair",
    hint="count Counter(zip(ids, ids[1:])), then pick the highest count, the smallest pair on ties",
)
def check_most_frequent_pair(answer: Callable[[list[int]], Pair | None]) -> None:
    groups = [
        ("fewer than 2 ids have no pair: return None", [[], [4]]),
        ("return the pair as a tuple (left id, right id)", [[1, 2, 1, 2, 3], [3, 8, 3, 8, 3, 8]]),
        (
            "count the pair at every position i from 0 to len(ids) - 2: the last pair "
            "(ids[-2], ids[-1]) counts too",
            [[4, 4], [1, 2, 3, 4, 3, 4], [9, 5, 6, 7, 5, 6]],
        ),
        (
            "count the pair starting at every position, not at every other position: "
            "[5, 1, 2, 1, 2] holds (1, 2) twice",
            [[5, 1, 2, 1, 2], [0, 3, 4, 8, 3, 4]],
        ),
        (
            "overlapping occurrences count separately: [7, 7, 7] holds the pair (7, 7) twice",
            [[1, 2, 1, 2, 9, 9, 9, 9], [2, 6, 6, 6, 6, 2, 3, 2, 3]],
        ),
        (
            "on a tie, return the smallest pair: compare the first ids, then the second ids "
            "(the rule of BPETokenizer.train), not the first or last pair seen",
            [[5, 6, 1, 2], [3, 9, 3, 2, 8, 1, 8, 1, 3, 9, 3, 2], [6, 6, 2, 6, 6, 2, 1, 7]],
        ),
        (
            "the list does not wrap around: (ids[-1], ids[0]) is not a pair",
            [[1, 2, 1, 9, 1], [0, 5, 6, 0]],
        ),
    ]
    for hint, id_lists in groups:
        cases = [(f"ids = {describe(ids)}", (ids,)) for ids in id_lists]
        _run_with_type_check(answer, reference_most_frequent_pair, cases, hint=hint)
    rng = random.Random(3)
    random_lists = [
        rng.choices(range(rng.randint(1, 5)), k=rng.randint(0, 20)) for _ in range(N_RANDOM_CASES)
    ]
    cases = [(f"ids = {describe(ids)}", (ids,)) for ids in random_lists]
    _run_with_type_check(answer, reference_most_frequent_pair, cases)


# ----------------------------------------------------------------------------------------------
# ch01.merge_pair


@exercise(
    "ch01.merge_pair",
    title="Merge a pair into a new token",
    hint="walk through ids with an index: on a match append new_id and skip 2, else copy 1",
)
def check_merge_pair(answer: Callable[[list[int], Pair, int], list[int]]) -> None:
    _check_input_unchanged(answer)
    groups = [
        (
            "replace the two ids of an occurrence by the single new_id, then move on past both",
            [([3, 1, 2], (1, 2)), ([0, 4, 1, 2], (1, 2))],
        ),
        (
            "keep the ids after the last merge: the final id, when it is not merged, is part of "
            "the result",
            [([1, 2, 3], (1, 2)), ([1, 2, 3, 4], (2, 3)), ([1, 2, 3], (2, 3))],
        ),
        (
            "replace every occurrence, not only the first",
            [([1, 2, 0, 1, 2, 0, 1, 2], (1, 2)), ([5, 5, 6, 5, 5], (5, 5))],
        ),
        (
            "after a merge, skip both ids of the pair, so that merges never overlap; scan left "
            "to right: [7, 7, 7] with the pair (7, 7) gives [new_id, 7]",
            [([7, 7, 7], (7, 7)), ([7, 7, 7, 7], (7, 7)), ([1, 7, 7, 7, 2], (7, 7))],
        ),
        (
            "when the pair does not occur, return the ids unchanged (as a new list)",
            [([], (1, 2)), ([1], (1, 2)), ([2, 1], (1, 2)), ([1, 3, 2], (1, 2))],
        ),
    ]
    for hint, examples in groups:
        cases = [_merge_case(ids, pair, new_id=9) for ids, pair in examples]
        _run_with_type_check(
            answer, reference_merge_pair, cases, hint=hint, diagnose=_nothing_merged
        )
    rng = random.Random(4)
    cases = []
    for _ in range(N_RANDOM_CASES):
        ids = rng.choices(range(3), k=rng.randint(0, 15))
        cases.append(_merge_case(ids, (rng.randrange(3), rng.randrange(3)), new_id=3))
    _run_with_type_check(answer, reference_merge_pair, cases, diagnose=_nothing_merged)


def _nothing_merged(got: Any, expected: list[int], arguments: tuple[Any, ...]) -> str:
    """A hint for an answer that merged nothing where it should have merged."""
    ids = arguments[0]
    if got == ids and expected != ids:
        return (
            "nothing was merged: compare the pair as a tuple, tuple(ids[i:i + 2]) == pair "
            "(a list slice never equals a tuple)"
        )
    return ""


def _merge_case(ids: list[int], pair: Pair, new_id: int) -> tuple[str, tuple[Any, ...]]:
    return f"ids = {ids}, pair = {pair}, new_id = {new_id}", (ids, pair, new_id)


def _check_input_unchanged(answer: Callable[[list[int], Pair, int], list[int]]) -> None:
    ids = [1, 2, 3, 1, 2]
    case = f"ids = {ids}, pair = (1, 2), new_id = 9"
    attempt(answer, ids, (1, 2), 9, case=case)
    if ids != [1, 2, 3, 1, 2]:
        raise Mismatch(
            case, [1, 2, 3, 1, 2], ids,
            "leave ids unchanged: build and return a new list",
            detail=f"the function changed its input ids to {describe(ids)}",
        )


# ----------------------------------------------------------------------------------------------
# ch01.apply_merges


@exercise(
    "ch01.apply_merges",
    title="Encode by replaying merges in order",
    hint="for each (pair, new_id) in merges, in order: ids = merge_pair(ids, pair, new_id)",
)
def check_apply_merges(answer: Callable[[list[int], list[Merge]], list[int]]) -> None:
    groups = [
        (
            "with no merge, or with merges whose pairs do not occur, the ids stay as they are",
            [([1, 2, 3], []), ([], [((1, 2), 9)]), ([3, 2, 1], [((1, 2), 9)])],
        ),
        (
            "apply each merge to every occurrence of its pair",
            [([1, 2, 3, 1, 2], [((1, 2), 9)]), ([1, 2, 3, 4, 1, 2], [((1, 2), 9), ((3, 4), 10)])],
        ),
        (
            "the merge learned first is applied first, wherever it is in the list: not the "
            "leftmost pair first, nor the last merge first",
            [
                ([1, 2, 3], [((2, 3), 9), ((1, 2), 10)]),
                ([1, 2, 3, 4], [((3, 4), 9), ((2, 3), 10), ((1, 2), 11)]),
            ],
        ),
        (
            "a merge can create a pair that a later merge uses: go through all the merges in "
            "order, also those whose pair is not in the original ids",
            [
                ([1, 2, 3], [((1, 2), 9), ((9, 3), 10)]),
                ([4, 4, 4, 4], [((4, 4), 9), ((9, 9), 10)]),
                ([1, 2, 2, 3], [((1, 2), 9), ((2, 3), 10), ((9, 10), 11)]),
            ],
        ),
    ]
    for hint, examples in groups:
        cases = [_apply_case(ids, merges) for ids, merges in examples]
        _run_with_type_check(answer, reference_apply_merges, cases, hint=hint)
    rng = random.Random(5)
    cases = []
    for _ in range(N_RANDOM_CASES):
        alphabet = range(rng.randint(2, 4))
        merges = _learn_merges(rng.choices(alphabet, k=30), len(alphabet), rng.randint(1, 6))
        cases.append(_apply_case(rng.choices(alphabet, k=rng.randint(0, 16)), merges))
    _run_with_type_check(answer, reference_apply_merges, cases)


def _apply_case(ids: list[int], merges: list[Merge]) -> tuple[str, tuple[Any, ...]]:
    return f"ids = {ids}, merges = {merges}", (ids, merges)


def _learn_merges(ids: list[int], first_new_id: int, n_merges: int) -> list[Merge]:
    """Merges that BPE training learns from ``ids``, the way the chapter trains them."""
    merges = []
    for new_id in range(first_new_id, first_new_id + n_merges):
        pair = reference_most_frequent_pair(ids)
        if pair is None:
            break
        merges.append((pair, new_id))
        ids = reference_merge_pair(ids, pair, new_id)
    return merges


# ----------------------------------------------------------------------------------------------
# Shared


def _run_with_type_check(
    answer: Callable[..., Any],
    reference: Callable[..., Any],
    cases: list[tuple[str, tuple[Any, ...]]],
    *,
    hint: str = "",
    diagnose: Callable[[Any, Any, tuple[Any, ...]], str] | None = None,
) -> None:
    """Like ``run_cases``, with two more specific hints.

    A result of the wrong type (a list for a tuple...) gets a hint about the type rather than
    the group's ``hint``; ``diagnose(got, expected, arguments)``, when given, may return a hint
    that replaces the group's for a wrong result.
    """
    for case, arguments in cases:
        expected = reference(*copy.deepcopy(arguments))
        got = attempt(answer, *copy.deepcopy(arguments), case=case)
        if got is not None and expected is not None and not isinstance(got, type(expected)):
            raise Mismatch(
                case, expected, got,
                f"return a {type(expected).__name__}, as the exercise asks",
                detail=f"expected {type(expected).__name__} {describe(expected)}, got "
                f"{type(got).__name__} {describe(got)}",
            )
        specific_hint = diagnose(got, expected, arguments) if diagnose else ""
        expect_equal(got, expected, case=case, hint=specific_hint or hint)
