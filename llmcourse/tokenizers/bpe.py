"""Byte-level byte-pair encoding (BPE), trained from scratch the way GPT-2's tokenizer was.

Any text is a sequence of UTF-8 bytes, so the 256 byte values are the base vocabulary and no
text is ever out of vocabulary. Training repeatedly finds the most frequent pair of adjacent
tokens and merges it into a new token; encoding replays the merges, earliest learned first.

Before pairs are counted, text is cut into chunks with GPT-2's pattern (a word with its leading
space, a number, a run of punctuation, whitespace) and merges never cross a chunk boundary:
" dog" is the same token in " dog." and " dog!", and no token glues a word to the next one.

Token ids: 0..255 are the bytes, 256.. the merges in the order they were learned, then the
special tokens such as ``<|endoftext|>``, which merges never produce.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Literal

import regex  # installed with tiktoken; unlike `re`, it knows the classes \p{L} and \p{N}
from tqdm.auto import tqdm

from llmcourse.errors import CourseError
from llmcourse.tokenizers.word import END_OF_TEXT, TokenizerError

Pair = tuple[int, int]
N_BYTES = 256
FILE_FORMAT = "llmcourse-bpe"
FILE_VERSION = 1

# GPT-2's pre-tokenization pattern: English contractions, then letters (\p{L}), numbers (\p{N})
# or other symbols, each optionally after one space; then whitespace. `\s+(?!\S)` leaves the
# last space of a run to start the next word.
GPT2_SPLIT_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


class TokenizerFileError(TokenizerError):
    """A saved tokenizer file that is not valid JSON or not in the expected layout."""


class MissingTokenizerFileError(CourseError, FileNotFoundError):
    """A tokenizer file that does not exist."""


def pre_split(text: str) -> list[str]:
    """Cut ``text`` into the chunks that BPE merges within; joined, they give ``text`` back."""
    return GPT2_SPLIT_PATTERN.findall(text)


def merge_pair(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right."""
    merged = []
    position = 0
    while position < len(ids):
        if tuple(ids[position : position + 2]) == pair:
            merged.append(new_id)
            position += 2
        else:
            merged.append(ids[position])
            position += 1
    return merged


class BPETokenizer:
    """A byte-level BPE tokenizer: an ordered list of merges plus special tokens.

    ``merges[i]`` is the pair of token ids that merge into the new token ``256 + i``; both ids
    must already exist. ``special_tokens`` get the ids after the merges, in the given order.
    """

    def __init__(self, merges: Iterable[Pair], special_tokens: Sequence[str] = (END_OF_TEXT,)):
        self.merges: list[tuple[Pair, int]] = []  # ((left id, right id), merged id), in order
        self._merge_ids: dict[Pair, int] = {}
        self._token_bytes = [bytes([byte]) for byte in range(N_BYTES)]
        for pair in merges:
            self._add_merge(pair)
        if (
            isinstance(special_tokens, str)
            or not all(isinstance(token, str) and token for token in special_tokens)
            or len(set(special_tokens)) != len(special_tokens)
        ):
            raise TokenizerError(
                f"special_tokens={special_tokens!r}: pass a sequence of distinct, non-empty "
                f"strings, such as ({END_OF_TEXT!r},)"
            )
        first_id = len(self._token_bytes)
        self.special_tokens = {token: first_id + i for i, token in enumerate(special_tokens)}
        self._token_bytes += [token.encode("utf-8") for token in special_tokens]
        # One capturing group, so that splitting keeps the special tokens; longest first, so
        # that a special token wins over a shorter one inside it. (?!) matches nothing.
        by_length = sorted(special_tokens, key=len, reverse=True)
        self._special_pattern = regex.compile(
            "(" + ("|".join(map(regex.escape, by_length)) or "(?!)") + ")"
        )
        self._chunk_cache: dict[str, list[int]] = {}

    def _add_merge(self, pair: Pair) -> None:
        new_id = len(self._token_bytes)
        if not (len(pair) == 2 and all(type(i) is int and 0 <= i < new_id for i in pair)):
            raise TokenizerError(
                f"merge number {len(self.merges)} is {pair!r}: it must be a pair of ids of "
                f"existing tokens, each in 0..{new_id - 1}"
            )
        pair = (pair[0], pair[1])
        if pair in self._merge_ids:
            raise TokenizerError(f"the pair {pair} is merged twice; each pair is merged once")
        self.merges.append((pair, new_id))
        self._merge_ids[pair] = new_id
        self._token_bytes.append(self._token_bytes[pair[0]] + self._token_bytes[pair[1]])

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Sequence[str] = (END_OF_TEXT,),
        progress: bool = False,
    ) -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        Each step merges the most frequent adjacent pair, counted within the chunks of
        ``pre_split`` and weighted by how often each chunk occurs; ties go to the smallest pair
        of ids. Training stops early, with a smaller vocabulary, if no pair is left to merge.
        Special tokens in ``text`` are cut out and take no part in training.
        """
        n_merges = vocab_size - N_BYTES - len(special_tokens)
        if n_merges < 0:
            raise TokenizerError(
                f"vocab_size={vocab_size} is too small: it must be at least {N_BYTES} bytes + "
                f"{len(special_tokens)} special tokens = {N_BYTES + len(special_tokens)}"
            )
        ordinary_parts = cls((), special_tokens)._split_on_specials(text)[::2]
        chunk_counts = Counter(chunk for part in ordinary_parts for chunk in pre_split(part))
        words = {tuple(chunk.encode("utf-8")): count for chunk, count in chunk_counts.items()}
        pair_counts: Counter[Pair] = Counter()
        for word, count in words.items():
            _add_pair_counts(pair_counts, word, count)
        merges = []
        for new_id in tqdm(range(N_BYTES, N_BYTES + n_merges), desc="BPE", disable=not progress):
            if not pair_counts:
                break
            best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
            merges.append(best)
            words = _merge_in_words(words, best, new_id, pair_counts)
        return cls(merges, special_tokens)

    @property
    def vocab_size(self) -> int:
        """Number of token ids: 256 bytes + merges + special tokens."""
        return len(self._token_bytes)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes that token ``token_id`` stands for."""
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(
                f"token id {token_id} is not in the vocabulary; valid ids are "
                f"0..{self.vocab_size - 1}"
            )
        return self._token_bytes[token_id]

    def encode(
        self,
        text: str,
        allowed_special: Literal["none_raise", "all"] | Collection[str] = "none_raise",
    ) -> list[int]:
        """Token ids of ``text``.

        A special token's string in ``text`` becomes that token's single id if it is in
        ``allowed_special`` (a set of special tokens, or ``"all"``); any other special token's
        string raises ``TokenizerError``, so text from users cannot smuggle in special tokens.
        """
        allowed = self._allowed_specials(allowed_special)
        ids = []
        for index, part in enumerate(self._split_on_specials(text)):
            if index % 2 == 0:  # ordinary text
                ids += [token for chunk in pre_split(part) for token in self._encode_chunk(chunk)]
            elif part in allowed:
                ids.append(self.special_tokens[part])
            else:
                raise TokenizerError(
                    f"the text contains the special token {part!r}; pass "
                    f"allowed_special={{{part!r}}} (or 'all') to encode it as a special token"
                )
        return ids

    def encode_steps(self, text: str) -> list[list[int]]:
        """The token ids of ``text`` before any merge, then after each merge that applies.

        Merges apply one at a time, lowest rank (earliest learned) first, in all chunks at
        once; the last list equals ``encode(text)``. ``text`` must hold no special token.
        """
        if len(self._split_on_specials(text)) > 1:
            raise TokenizerError("encode_steps takes ordinary text; remove the special tokens")
        chunks = [list(chunk.encode("utf-8")) for chunk in pre_split(text)]
        steps = [[token for chunk in chunks for token in chunk]]
        while (pair := self._lowest_rank_pair(chunks)) is not None:
            chunks = [merge_pair(chunk, pair, self._merge_ids[pair]) for chunk in chunks]
            steps.append([token for chunk in chunks for token in chunk])
        return steps

    def _encode_chunk(self, chunk: str) -> list[int]:
        """Merge the bytes of one chunk as GPT-2 does: the lowest-rank pair first, repeatedly."""
        if chunk not in self._chunk_cache:
            ids = list(chunk.encode("utf-8"))
            while (pair := self._lowest_rank_pair([ids])) is not None:
                ids = merge_pair(ids, pair, self._merge_ids[pair])
            self._chunk_cache[chunk] = ids
        return self._chunk_cache[chunk]

    def _lowest_rank_pair(self, chunks: Iterable[Sequence[int]]) -> Pair | None:
        """The adjacent pair in ``chunks`` that was learned first; None if none was learned."""
        pairs = {pair for chunk in chunks for pair in pairwise(chunk)}
        return min(pairs & self._merge_ids.keys(), key=self._merge_ids.__getitem__, default=None)

    def _split_on_specials(self, text: str) -> list[str]:
        """``text`` cut around special tokens: ordinary text at even indices, specials at odd."""
        return self._special_pattern.split(text)

    def _allowed_specials(self, allowed_special: str | Collection[str]) -> set[str]:
        if allowed_special in ("all", "none_raise"):
            return set(self.special_tokens) if allowed_special == "all" else set()
        if isinstance(allowed_special, str) or not set(allowed_special) <= set(self.special_tokens):
            raise TokenizerError(
                f"allowed_special={allowed_special!r}: pass 'all', 'none_raise' or a set of this "
                f"tokenizer's special tokens, which are {list(self.special_tokens)}"
            )
        return set(allowed_special)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of the tokens ``ids``, concatenated."""
        return b"".join(self.token_bytes(token_id) for token_id in ids)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``. Bytes that are not valid UTF-8 (``ids`` may cut a character
        of several bytes in two) become the replacement character U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def save(self, path: str | Path) -> None:
        """Write the merges and special tokens to ``path`` as JSON; ``load`` reads them back."""
        content = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "merges": [list(pair) for pair, _ in self.merges],
            "special_tokens": list(self.special_tokens),
        }
        Path(path).write_text(json.dumps(content), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """The tokenizer that ``save`` wrote to ``path``."""
        path = Path(path)
        if not path.is_file():
            raise MissingTokenizerFileError(f"no tokenizer file at {path}; write one with save()")
        try:
            content = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise TokenizerFileError(f"{path} is not a JSON file ({error})") from None
        if not (
            isinstance(content, dict)
            and content.get("format") == FILE_FORMAT
            and content.get("version") == FILE_VERSION
            and isinstance(content.get("merges"), list)
            and isinstance(content.get("special_tokens"), list)
            and all(isinstance(pair, list) for pair in content["merges"])
            and all(isinstance(token, str) for token in content["special_tokens"])
        ):
            raise TokenizerFileError(
                f'{path} is not a file written by BPETokenizer.save: it needs "format": '
                f'"{FILE_FORMAT}", "version": {FILE_VERSION}, "merges" (a list of [id, id] '
                f'pairs) and "special_tokens" (a list of strings)'
            )
        try:
            return cls([tuple(pair) for pair in content["merges"]], content["special_tokens"])
        except TokenizerError as error:
            raise TokenizerFileError(f"{path} holds an invalid tokenizer: {error}") from None


def _add_pair_counts(pair_counts: Counter[Pair], word: Sequence[int], weight: int) -> None:
    """Add ``weight`` to the count of each adjacent pair in ``word``, dropping zero counts."""
    for pair in pairwise(word):
        pair_counts[pair] += weight
        if pair_counts[pair] == 0:
            del pair_counts[pair]


def _merge_in_words(
    words: dict[tuple[int, ...], int], pair: Pair, new_id: int, pair_counts: Counter[Pair]
) -> dict[tuple[int, ...], int]:
    """Merge ``pair`` in every word (chunk bytes -> count) and update ``pair_counts``.

    Only the words that change are recounted, which is what makes training fast.
    """
    merged_words = {}
    for word, count in words.items():
        if pair[0] in word and pair[1] in word:  # a cheap test before the real merge
            merged = tuple(merge_pair(word, pair, new_id))
            if merged != word:
                _add_pair_counts(pair_counts, word, -count)
                _add_pair_counts(pair_counts, merged, count)
                word = merged
        merged_words[word] = count
    return merged_words
