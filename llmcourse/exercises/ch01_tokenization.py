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

import random
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

from llmcourse.exercises.core import (
    Case,
    Mismatch,
    Mistake,
    describe,
    exercise,
    expect_equal,
    run_cases,
)
from llmcourse.tokenizers.bpe import merge_pair as package_merge_pair
from llmcourse.tokenizers.word import END_OF_TEXT, UNKNOWN
from llmcourse.tokenizers.word import split as package_split

Pair = tuple[int, int]
Merge = tuple[Pair, int]  # ((left id, right id), merged id), as in BPETokenizer.merges
SPECIAL_TOKENS = (END_OF_TEXT, UNKNOWN)
N_RANDOM_CASES = 40
MULTI_DIGIT_HINT = (
    "ids can have several digits (12 is not 1 followed by 2): compare the ids as numbers, "
    "position by position, not as text"
)


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
    rng = random.Random(1)
    pieces = _WORDS + _SEPARATORS
    random_texts = [
        "".join(rng.choices(pieces, k=rng.randint(1, 12))) for _ in range(N_RANDOM_CASES)
    ]
    cases = [Case((text,), hint=hint) for hint, texts in groups for text in texts]
    cases += [Case((text,)) for text in random_texts]
    run_cases(answer, reference_split_words, cases, _expect_type_then_value)


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
    run_cases(
        answer, reference_build_vocab, [Case((tokens,)) for tokens in cases], _expect_vocab,
        mistakes=VOCAB_MISTAKES,
    )


VOCAB_MISTAKES = (
    Mistake(
        "special tokens numbered twice",
        lambda tokens: {
            token: token_id
            for token_id, token in enumerate([*sorted(set(tokens)), *SPECIAL_TOKENS])
        },
        "a special token that is already in tokens must not be numbered twice: leave it out "
        "of the ordinary tokens, it gets its id at the end",
    ),
    Mistake(
        "every occurrence numbered",
        lambda tokens: {
            token: token_id
            for token_id, token in enumerate([*sorted(tokens), *SPECIAL_TOKENS])
        },
        "number each distinct token once (use set(tokens)), so that the ids are 0, 1, ..., "
        "len(vocab) - 1 with no gaps",
    ),
)


def _expect_vocab(got: Any, expected: dict[str, int], *, case: str) -> None:
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
        raise Mismatch(
            case, expected, got,
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
        (MULTI_DIGIT_HINT, [[1, 12, 1, 2, 12, 1], [256, 25, 6, 25, 6, 256, 25]]),
    ]
    rng = random.Random(3)
    random_lists = [
        rng.choices(_random_alphabet(rng), k=rng.randint(0, 20)) for _ in range(N_RANDOM_CASES)
    ]
    cases = [Case((ids,), hint=hint) for hint, id_lists in groups for ids in id_lists]
    cases += [Case((ids,)) for ids in random_lists]
    run_cases(answer, reference_most_frequent_pair, cases, _expect_type_then_value)


# ----------------------------------------------------------------------------------------------
# ch01.merge_pair


@exercise(
    "ch01.merge_pair",
    title="Merge a pair into a new token",
    hint="walk through ids with an index: on a match append new_id and skip 2, else copy 1",
)
def check_merge_pair(answer: Callable[[list[int], Pair, int], list[int]]) -> None:
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
        (
            MULTI_DIGIT_HINT,
            [
                ([1, 12, 1, 2], (1, 2)), ([1, 21, 2], (1, 2)), ([11, 2, 1, 12, 1, 2], (1, 2)),
                ([256, 56, 2], (56, 2)),
            ],
        ),
    ]
    rng = random.Random(4)
    cases = [Case((ids, pair, 9), hint=hint) for hint, examples in groups for ids, pair in examples]
    for _ in range(N_RANDOM_CASES):
        alphabet = _random_alphabet(rng)
        ids = rng.choices(alphabet, k=rng.randint(0, 15))
        pair = (rng.choice(alphabet), rng.choice(alphabet))
        cases.append(Case((ids, pair, max(alphabet) + 1)))
    run_cases(
        answer, reference_merge_pair, cases, _expect_type_then_value, mistakes=[NOTHING_MERGED]
    )


NOTHING_MERGED = Mistake(
    "nothing merged",
    lambda ids, pair, new_id: list(ids),
    "nothing was merged: compare the pair as a tuple, tuple(ids[i:i + 2]) == pair (a list "
    "slice never equals a tuple)",
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
        (
            MULTI_DIGIT_HINT,
            [
                ([1, 12, 1, 2], [((1, 2), 256)]),
                ([3, 1, 21, 2], [((1, 2), 256)]),
                ([256, 56, 2, 3], [((56, 2), 300), ((300, 3), 301)]),
            ],
        ),
    ]
    rng = random.Random(5)
    cases = [
        Case((ids, merges), hint=hint) for hint, examples in groups for ids, merges in examples
    ]
    for _ in range(N_RANDOM_CASES):
        alphabet = _random_alphabet(rng)
        merges = _learn_merges(rng.choices(alphabet, k=30), max(alphabet) + 1, rng.randint(1, 6))
        cases.append(Case((rng.choices(alphabet, k=rng.randint(0, 16)), merges)))
    run_cases(answer, reference_apply_merges, cases, _expect_type_then_value)


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


def _random_alphabet(rng: random.Random) -> list[int]:
    """2 to 4 distinct ids: small ones (0, 1, ...) or multi-digit ones around 256, where a
    merge learned by byte-pair encoding gets its id."""
    size = rng.randint(2, 4)
    first = rng.choice([0, 250])
    return list(range(first, first + size))


def _expect_type_then_value(got: Any, expected: Any, *, case: str) -> None:
    """``expect_equal``, with a hint about the type when the answer returns another type (a
    list for a tuple...)."""
    if None not in (got, expected) and not isinstance(got, type(expected)):
        raise Mismatch(
            case, expected, got,
            f"return a {type(expected).__name__}, as the exercise asks",
            detail=f"expected {type(expected).__name__} {describe(expected)}, got "
            f"{type(got).__name__} {describe(got)}",
        )
    expect_equal(got, expected, case=case)
