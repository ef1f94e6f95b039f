"""Byte-level byte-pair encoding (BPE), trained from scratch the way GPT-2's tokenizer was.

Any text is a sequence of UTF-8 bytes, so the 256 byte values are the base vocabulary and no
text is ever out of vocabulary. Training repeatedly finds the most frequent pair of adjacent
tokens and merges it into a new token; encoding replays the merges, earliest learned first.

Before pairs are counted, text is cut into chunks with GPT-2's pattern (a word with its leading
space, a number, a run of punctuation, whitespace) and merges never cross a chunk boundary:
" dog" is the same token in " dog." and " dog!", and no token glues a word to the next one.

Token ids: 0..255 are the bytes, 256.. the merges in the order they were learned, then the
special tokens such as ``<|endoftext|>``, which merges never produce. A tokenizer trained here
numbers the bytes by value; GPT-2's own files (``BPETokenizer.from_gpt2_files``) give them the
ids 0..255 in another order, which ``byte_order`` records.

``to_tiktoken`` exports a tokenizer to tiktoken, which encodes the same ids much faster, and
``encode_iterable`` encodes a stream of text pieces with either, in constant memory.
"""

from __future__ import annotations

import functools
import heapq
import json
import operator
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import regex  # installed with tiktoken; unlike `re`, it knows the classes \p{L} and \p{N}
import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str
from tqdm.auto import tqdm

from llmcourse.errors import CheckpointError, InputError, MissingFileError
from llmcourse.saving import write_text_atomic
from llmcourse.tokenizers.word import END_OF_TEXT

Pair = tuple[int, int]
N_BYTES = 256
IDENTITY_BYTE_ORDER = tuple(range(N_BYTES))
FILE_FORMAT = "llmcourse-bpe"
# Version 2 adds "byte_order". A tokenizer whose bytes are numbered by value does not need it
# and is still written as version 1, which older versions of the package read.
FILE_VERSION = 2
READABLE_FILE_VERSIONS = (1, 2)
MAX_CACHED_CHUNKS = 1 << 17  # encoded chunks kept by a tokenizer; the cache restarts when full

# GPT-2's pre-tokenization pattern: English contractions, then letters (\p{L}), numbers (\p{N})
# or other symbols, each optionally after one space; then whitespace. `\s+(?!\S)` leaves the
# last space of a run to start the next word.
GPT2_SPLIT_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
# A letter or digit followed by whitespace. GPT-2's pattern (and tiktoken's later ones) never
# puts both in one chunk, and no chunk before them depends on the text after them: text cut
# just after such a letter or digit encodes as its two parts do (see ``encode_iterable``).
# (?r) searches from the end of the text.
_WORD_BEFORE_WHITESPACE = regex.compile(r"(?r)[\p{L}\p{N}](?=\s)")

# GPT-2's encoder.json and vocab.bpe write each byte as one printable character: the printable
# Latin-1 bytes as themselves, the 68 others (controls, space, no-break and soft hyphen) as the
# characters from U+0100 on, in byte order; a space is "Ġ" (U+0120).
_GPT2_PRINTABLE_BYTES = frozenset(
    [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
)


class CheckedEncoding(tiktoken.Encoding):
    """A ``tiktoken.Encoding`` whose decoding refuses an id outside the vocabulary with a
    ``InputError`` that names the id and the valid range, where tiktoken raises an
    OverflowError (a negative id) or a KeyError (an id too large). The ids are looked at only
    once tiktoken has failed, so decoding valid ids costs what it costs in tiktoken.

    ``gpt2_tokenizer()`` and ``BPETokenizer.to_tiktoken()`` make these."""

    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        try:
            return super().decode_bytes(tokens)
        except (OverflowError, KeyError, TypeError):
            problem = invalid_token_id(tokens, self.n_vocab)
            if problem is None:
                raise
        raise InputError(problem)

    def decode(self, tokens: Sequence[int], errors: str = "replace") -> str:
        return self.decode_bytes(tokens).decode("utf-8", errors=errors)

    def decode_single_token_bytes(self, token: int) -> bytes:
        try:
            return super().decode_single_token_bytes(token)
        except (OverflowError, KeyError, TypeError):
            problem = invalid_token_id([token], self.n_vocab)
            if problem is None:
                raise
        raise InputError(problem)


def invalid_token_id(tokens: Iterable[object], vocab_size: int) -> str | None:
    """What is wrong with the first id of ``tokens`` that is not an integer in
    [0, ``vocab_size``), as a message; None when every id is one."""
    for token in tokens:
        try:
            value = operator.index(token)
        except TypeError:
            return f"token ids must be integers, got {token!r} ({type(token).__name__})"
        if not 0 <= value < vocab_size:
            return (f"token id {value} is not in the vocabulary; valid ids are "
                    f"0..{vocab_size - 1}")
    return None


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
    ``byte_order[i]`` is the byte (0..255) that token ``i`` stands for, for ``i`` in 0..255: a
    permutation of the 256 byte values; by default each byte is its own id.
    """

    def __init__(
        self,
        merges: Iterable[Pair],
        special_tokens: Sequence[str] = (END_OF_TEXT,),
        byte_order: Sequence[int] | None = None,
    ):
        self.byte_order = _checked_byte_order(byte_order)
        # The id of each byte value, as a bytes.translate table: UTF-8 bytes -> base token ids.
        self._byte_ids = bytes(sorted(range(N_BYTES), key=self.byte_order.__getitem__))
        self.merges: list[tuple[Pair, int]] = []  # ((left id, right id), merged id), in order
        self._merge_ids: dict[Pair, int] = {}
        self._token_bytes = [bytes([byte]) for byte in self.byte_order]
        for pair in merges:
            self._add_merge(pair)
        if (
            isinstance(special_tokens, str)
            or not all(isinstance(token, str) and token for token in special_tokens)
            or len(set(special_tokens)) != len(special_tokens)
        ):
            raise InputError(
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
        self._tiktoken_encodings: dict[str, tiktoken.Encoding] = {}

    def _add_merge(self, pair: Pair) -> None:
        new_id = len(self._token_bytes)
        if not (len(pair) == 2 and all(type(i) is int and 0 <= i < new_id for i in pair)):
            raise InputError(
                f"merge number {len(self.merges)} is {pair!r}: it must be a pair of ids of "
                f"existing tokens, each in 0..{new_id - 1}"
            )
        pair = (pair[0], pair[1])
        if pair in self._merge_ids:
            raise InputError(f"the pair {pair} is merged twice; each pair is merged once")
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
        Special tokens in ``text`` are cut out and take no part in training. Bytes keep their
        value as id. ``progress`` shows a progress bar of the merges.

        Each distinct chunk is counted once; after a merge, only the chunks that contain the
        merged pair are updated, and a heap finds the next pair: a 4,096-token vocabulary of
        the 2 MiB TinyStories sample takes under a second (``benchmarks/README.md``).
        """
        n_merges = vocab_size - N_BYTES - len(special_tokens)
        if n_merges < 0:
            raise InputError(
                f"vocab_size={vocab_size} is too small: it must be at least {N_BYTES} bytes + "
                f"{len(special_tokens)} special tokens = {N_BYTES + len(special_tokens)}"
            )
        ordinary_parts = cls((), special_tokens)._split_on_specials(text)[::2]
        chunk_counts = Counter(chunk for part in ordinary_parts for chunk in pre_split(part))
        pairs = _PairIndex(
            [list(chunk.encode("utf-8")) for chunk in chunk_counts], list(chunk_counts.values())
        )
        merges = []
        for new_id in tqdm(range(N_BYTES, N_BYTES + n_merges), desc="BPE", disable=not progress):
            best = pairs.most_frequent()
            if best is None:
                break
            merges.append(best)
            pairs.merge(best, new_id)
        return cls(merges, special_tokens)

    @classmethod
    def from_gpt2_files(
        cls, encoder_json_path: str | Path, vocab_bpe_path: str | Path
    ) -> BPETokenizer:
        """GPT-2's tokenizer, read from OpenAI's ``encoder.json`` and ``vocab.bpe``.

        ``encoder.json`` maps each token, written with GPT-2's byte characters (a space is
        "Ġ"), to its id; ``vocab.bpe`` lists the merges, one "left right" pair a line, after a
        "#version" line. The single bytes must have the ids 0..255 (GPT-2's are in a permuted
        order), merge ``i`` must make token ``256 + i``, and the remaining entries of
        ``encoder.json`` (``<|endoftext|>``) become the special tokens, in id order. The ids
        from ``encode`` are then those of tiktoken's GPT-2 encoding.
        """
        encoder_path, merges_path = Path(encoder_json_path), Path(vocab_bpe_path)
        encoder = _read_gpt2_encoder(encoder_path)
        merge_lines = _read_gpt2_merges(merges_path)
        byte_order = _gpt2_byte_order(encoder, encoder_path)
        merges = [
            _gpt2_merge(encoder, line, N_BYTES + index, encoder_path, merges_path)
            for index, line in enumerate(merge_lines)
        ]
        special_tokens = _gpt2_special_tokens(encoder, N_BYTES + len(merges), encoder_path)
        try:
            return cls(merges, special_tokens, byte_order)
        except InputError as error:
            raise CheckpointError(
                f"{encoder_path} and {merges_path} do not make a tokenizer: {error}"
            ) from None

    @property
    def vocab_size(self) -> int:
        """Number of token ids: 256 bytes + merges + special tokens."""
        return len(self._token_bytes)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes that token ``token_id`` stands for."""
        if not 0 <= token_id < self.vocab_size:
            raise InputError(
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
        string raises ``InputError``, so text from users cannot smuggle in special tokens.
        """
        allowed = self._allowed_specials(allowed_special)
        ids = []
        for index, part in enumerate(self._split_on_specials(text)):
            if index % 2 == 0:  # ordinary text
                ids += [token for chunk in pre_split(part) for token in self._encode_chunk(chunk)]
            elif part in allowed:
                ids.append(self.special_tokens[part])
            else:
                raise InputError(
                    f"the text contains the special token {part!r}; pass "
                    f"allowed_special={{{part!r}}} (or 'all') to encode it as a special token"
                )
        return ids

    def encode_iterable(
        self,
        pieces: Iterable[str],
        allowed_special: Literal["none_raise", "all"] | Collection[str] = "none_raise",
    ) -> Iterator[int]:
        """The ids of ``encode("".join(pieces), allowed_special)``, one at a time, reading the
        pieces as they come and holding only a few words of them (see ``encode_iterable``)."""
        return encode_iterable(self, pieces, allowed_special)

    def encode_steps(self, text: str) -> list[list[int]]:
        """The token ids of ``text`` before any merge, then after each merge that applies.

        Merges apply one at a time, lowest rank (earliest learned) first, in all chunks at
        once; the last list equals ``encode(text)``. ``text`` must hold no special token.
        """
        if len(self._split_on_specials(text)) > 1:
            raise InputError("encode_steps takes ordinary text; remove the special tokens")
        chunks = [self._byte_token_ids(chunk) for chunk in pre_split(text)]
        steps = [[token for chunk in chunks for token in chunk]]
        while (pair := self._lowest_rank_pair(chunks)) is not None:
            chunks = [merge_pair(chunk, pair, self._merge_ids[pair]) for chunk in chunks]
            steps.append([token for chunk in chunks for token in chunk])
        return steps

    def _byte_token_ids(self, text: str) -> list[int]:
        """The ids of the single-byte tokens of ``text``'s UTF-8 bytes, before any merge."""
        return list(text.encode("utf-8").translate(self._byte_ids))

    def _encode_chunk(self, chunk: str) -> list[int]:
        """Merge the bytes of one chunk as GPT-2 does: the lowest-rank pair first, repeatedly."""
        if chunk not in self._chunk_cache:
            ids = self._byte_token_ids(chunk)
            while (pair := self._lowest_rank_pair([ids])) is not None:
                ids = merge_pair(ids, pair, self._merge_ids[pair])
            if len(self._chunk_cache) >= MAX_CACHED_CHUNKS:
                self._chunk_cache.clear()
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
            raise InputError(
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

    def to_tiktoken(self, name: str = "llmcourse-bpe") -> tiktoken.Encoding:
        """This tokenizer as a ``tiktoken.Encoding`` called ``name``: the same ids, encoded
        by tiktoken's compiled engine; built on the first call, then reused.

        Each ordinary token's rank is its id, which is merge order: a merged token ranks after
        both of its parts, as tiktoken needs. Its pre-tokenization pattern is tiktoken's for
        GPT-2 (``r50k_pat_str``), which cuts text into the same chunks as ``pre_split``.
        Like ``encode``, its ``encode`` refuses special tokens unless they are allowed.
        """
        if name not in self._tiktoken_encodings:
            self._tiktoken_encodings[name] = CheckedEncoding(
                name=name,
                pat_str=r50k_pat_str,
                mergeable_ranks=self._mergeable_ranks(),
                special_tokens=dict(self.special_tokens),
                explicit_n_vocab=self.vocab_size,
            )
        return self._tiktoken_encodings[name]

    def _mergeable_ranks(self) -> dict[bytes, int]:
        """The id of each ordinary token, keyed by its bytes, which must differ from token to
        token: tiktoken knows a token by its bytes only."""
        ordinary = self._token_bytes[: N_BYTES + len(self.merges)]
        ranks = {piece: token_id for token_id, piece in enumerate(ordinary)}
        if len(ranks) < len(ordinary):
            token_id = next(i for i, piece in enumerate(ordinary) if ranks[piece] != i)
            raise InputError(
                f"tokens {token_id} and {ranks[ordinary[token_id]]} both stand for "
                f"{ordinary[token_id]!r}, and tiktoken needs each token's bytes to be unique; "
                "encode with this BPETokenizer instead"
            )
        return ranks

    def to_dict(self) -> dict[str, Any]:
        """The tokenizer as plain JSON values: what ``save`` writes and ``load`` reads."""
        content: dict[str, Any] = {
            "format": FILE_FORMAT,
            "version": 1 if self.byte_order == IDENTITY_BYTE_ORDER else FILE_VERSION,
            "merges": [list(pair) for pair, _ in self.merges],
            "special_tokens": list(self.special_tokens),
        }
        if self.byte_order != IDENTITY_BYTE_ORDER:
            content["byte_order"] = list(self.byte_order)
        return content

    def save(self, path: str | Path) -> None:
        """Write the merges, special tokens and byte order to ``path`` as JSON; ``load`` reads
        them back. The file is replaced atomically: it holds the old content or all of the new."""
        write_text_atomic(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """The tokenizer that ``save`` wrote to ``path`` (file version 1 or 2)."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"no tokenizer file at {path}; write one with save()")
        try:
            content = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path} is not a JSON file ({error})") from None
        if not (
            isinstance(content, dict)
            and content.get("format") == FILE_FORMAT
            and content.get("version") in READABLE_FILE_VERSIONS
            and isinstance(content.get("merges"), list)
            and isinstance(content.get("special_tokens"), list)
            and isinstance(content.get("byte_order", []), list)
            and all(isinstance(pair, list) for pair in content["merges"])
            and all(isinstance(token, str) for token in content["special_tokens"])
        ):
            raise CheckpointError(
                f'{path} is not a file written by BPETokenizer.save: it needs "format": '
                f'"{FILE_FORMAT}", "version": 1 or 2, "merges" (a list of [id, id] '
                f'pairs), "special_tokens" (a list of strings) and, in version 2, optionally '
                f'"byte_order" (a list of the 256 byte values)'
            )
        try:
            return cls(
                [tuple(pair) for pair in content["merges"]],
                content["special_tokens"],
                content.get("byte_order"),
            )
        except InputError as error:
            raise CheckpointError(f"{path} holds an invalid tokenizer: {error}") from None


def _checked_byte_order(byte_order: Sequence[int] | None) -> tuple[int, ...]:
    """``byte_order`` as a tuple, the identity when None; a permutation of 0..255 or an error."""
    if byte_order is None:
        return IDENTITY_BYTE_ORDER
    order = tuple(byte_order)
    if not (all(type(byte) is int for byte in order) and sorted(order) == [*IDENTITY_BYTE_ORDER]):
        raise InputError(
            f"byte_order={byte_order!r} is not an order of the bytes: pass the 256 byte "
            "values 0..255, each once, in the order of their token ids (or None for 0..255)"
        )
    return order


# ---------------------------------------------------------------------------------------------
# Training


class _PairIndex:
    """The adjacent pairs of a set of words (token ids), kept up to date as pairs are merged.

    ``words[i]`` is a chunk's token ids and ``weights[i]`` how often the chunk occurs in the
    text. A pair's count is its number of adjacent positions in all words, each weighted by its
    word's weight; overlapping positions count separately ("aaa" holds (a, a) twice). The index
    keeps the words that hold each pair, and a heap of (-count, pair) with an entry for each
    pair's current count: the heap's smallest valid entry is the most frequent pair, the
    smallest pair of ids among equals. Entries of older counts stay in the heap and are
    skipped when they come up.
    """

    def __init__(self, words: list[list[int]], weights: list[int]):
        self._words = words
        self._weights = weights
        self._counts: dict[Pair, int] = {}
        self._words_with: dict[Pair, set[int]] = {}
        for index, word in enumerate(words):
            for pair in pairwise(word):
                self._counts[pair] = self._counts.get(pair, 0) + weights[index]
                self._words_with.setdefault(pair, set()).add(index)
        self._heap = [(-count, pair) for pair, count in self._counts.items()]
        heapq.heapify(self._heap)

    def most_frequent(self) -> Pair | None:
        """The pair with the largest count, ties to the smallest ids; None when no pair is left."""
        while self._heap:
            negative_count, pair = self._heap[0]
            if self._counts.get(pair) == -negative_count:
                return pair
            heapq.heappop(self._heap)
        return None

    def merge(self, pair: Pair, new_id: int) -> None:
        """Replace ``pair`` by ``new_id`` in every word that holds it (``merge_pair``'s left to
        right rule) and update the counts of the pairs that changed."""
        for index in list(self._words_with[pair]):
            self._replace_word(index, merge_pair(self._words[index], pair, new_id))

    def _replace_word(self, index: int, new_word: list[int]) -> None:
        """Make ``new_word`` word number ``index``; update the counts, the index and the heap
        for the pairs whose number of positions in the word changed."""
        changes: dict[Pair, int] = {}  # pair -> change of its number of positions in the word
        for pair in pairwise(self._words[index]):
            changes[pair] = changes.get(pair, 0) - 1
        for pair in pairwise(new_word):
            changes[pair] = changes.get(pair, 0) + 1
        self._words[index] = new_word
        weight = self._weights[index]
        new_pairs = set(pairwise(new_word))
        for pair, change in changes.items():
            if change == 0:
                continue
            if pair in new_pairs:
                self._words_with.setdefault(pair, set()).add(index)
            else:
                self._words_with[pair].discard(index)
            self._set_count(pair, self._counts.get(pair, 0) + change * weight)

    def _set_count(self, pair: Pair, count: int) -> None:
        if count:
            self._counts[pair] = count
            heapq.heappush(self._heap, (-count, pair))
        else:  # no word holds the pair any more
            del self._counts[pair]
            del self._words_with[pair]


# ---------------------------------------------------------------------------------------------
# GPT-2's files


def gpt2_byte_characters() -> list[str]:
    """The character that stands for each byte value (index) in GPT-2's files, and in the
    vocabularies of Hugging Face's byte-level BPE: "Ġ" for a space, "Ċ" for a newline."""
    characters = []
    n_moved = 0  # bytes written as a character from U+0100 on, so far
    for byte in range(N_BYTES):
        if byte in _GPT2_PRINTABLE_BYTES:
            characters.append(chr(byte))
        else:
            characters.append(chr(N_BYTES + n_moved))
            n_moved += 1
    return characters


def _read_gpt2_encoder(path: Path) -> dict[str, int]:
    """The token -> id map of an ``encoder.json``."""
    if not path.is_file():
        raise MissingFileError(
            f"no encoder.json at {path}; GPT-2's is llmcourse.data_files.fetch('gpt2-encoder')"
        )
    try:
        encoder = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not a JSON file ({error})") from None
    if not (
        isinstance(encoder, dict)
        and all(type(token_id) is int for token_id in encoder.values())
    ):
        raise CheckpointError(
            f"{path} is not a GPT-2 encoder.json: it must be one JSON object mapping each "
            'token to its integer id, such as {"!": 0, ...}'
        )
    return encoder


def _read_gpt2_merges(path: Path) -> list[tuple[int, str, str]]:
    """The merges of a ``vocab.bpe``: (line number, left token, right token), in order."""
    if not path.is_file():
        raise MissingFileError(
            f"no vocab.bpe at {path}; GPT-2's is llmcourse.data_files.fetch('gpt2-vocab')"
        )
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{path} is not a UTF-8 text file ({error})") from None
    if not lines[0].startswith("#version"):
        raise CheckpointError(
            f'{path} is not a GPT-2 vocab.bpe: its first line must be "#version: ...", '
            f"found {lines[0][:40]!r}"
        )
    merges = []
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            if line == "" and number == len(lines):  # the final newline
                break
            raise CheckpointError(
                f'{path}, line {number}: {line[:40]!r} is not a merge; each line after the '
                'first must be two tokens separated by one space, such as "Ġ t"'
            )
        merges.append((number, parts[0], parts[1]))
    return merges


def _gpt2_byte_order(encoder: dict[str, int], path: Path) -> list[int]:
    """The byte of each id 0..255 in ``encoder``, which must give the single bytes those ids."""
    ids = [encoder.get(character) for character in gpt2_byte_characters()]
    if sorted(i for i in ids if i is not None) != list(IDENTITY_BYTE_ORDER):
        raise CheckpointError(
            f"{path} does not give the 256 single bytes the ids 0..255, each once, as GPT-2's "
            "encoder.json does; pass GPT-2's encoder.json (llmcourse.data_files.fetch"
            "('gpt2-encoder'))"
        )
    byte_order = [0] * N_BYTES
    for byte, token_id in enumerate(ids):
        byte_order[token_id] = byte
    return byte_order


def _gpt2_merge(
    encoder: dict[str, int],
    line: tuple[int, str, str],
    expected_id: int,
    encoder_path: Path,
    merges_path: Path,
) -> Pair:
    """The pair of ids of one line of ``vocab.bpe``; its merged token must be ``expected_id``."""
    number, left, right = line
    for token in (left, right, left + right):
        if token not in encoder:
            raise CheckpointError(
                f"{merges_path}, line {number}: the token {token!r} is not in {encoder_path}; "
                "pass the encoder.json and vocab.bpe of the same tokenizer"
            )
    if encoder[left + right] != expected_id:
        raise CheckpointError(
            f"{merges_path}, line {number}: the merged token {left + right!r} has id "
            f"{encoder[left + right]} in {encoder_path}, but merge number "
            f"{expected_id - N_BYTES} must make token {expected_id} (the merges' tokens follow "
            "the 256 bytes in the order of vocab.bpe); pass files of the same tokenizer"
        )
    return encoder[left], encoder[right]


def _gpt2_special_tokens(encoder: dict[str, int], first_id: int, path: Path) -> list[str]:
    """The tokens of ``encoder`` after the merged ones, in id order; their ids must follow on
    from ``first_id`` and no other entry may be left over."""
    specials = sorted(
        (token for token, token_id in encoder.items() if token_id >= first_id),
        key=encoder.__getitem__,
    )
    if [encoder[token] for token in specials] != list(
        range(first_id, first_id + len(specials))
    ) or len(encoder) != first_id + len(specials):
        raise CheckpointError(
            f"{path} has {len(encoder):,} entries: the 256 bytes and the merged tokens must have "
            f"the ids 0..{first_id - 1}, each once, and the special tokens the ids from "
            f"{first_id} on, without gaps; pass the encoder.json that goes with the vocab.bpe"
        )
    return specials


# ---------------------------------------------------------------------------------------------
# Streaming


def encode_iterable(
    encoding: Any,
    pieces: Iterable[str],
    allowed_special: Literal["all"] | Collection[str] | None = None,
    special_tokens: Collection[str] | None = None,
) -> Iterator[int]:
    """The ids of ``encoding.encode("".join(pieces))``, produced while reading the pieces.

    ``encoding`` is any tokenizer with an ``encode(text)`` method that cuts text into chunks
    with GPT-2's pattern (or tiktoken's later ones) before encoding them: a ``BPETokenizer``, a
    ``tiktoken.Encoding``. ``allowed_special`` is passed on to ``encode`` when given; by default
    ``encode`` applies its own rule (both refuse special tokens). ``special_tokens`` are the
    strings that ``encoding`` treats as special tokens, by default its ``special_tokens_set``
    (tiktoken) or ``special_tokens`` (``BPETokenizer``).

    Text is held back from the last letter or digit followed by whitespace on, and encoded
    when the next piece comes: no chunk spans such a point, so the ids equal those of the
    whole text, wherever the pieces are cut, even inside a word or a special token. Memory
    holds one piece and the held-back text, usually a few words; a text without whitespace is
    held back whole.
    """
    encode = _encode_function(encoding, allowed_special)
    if special_tokens is None:
        special_tokens = getattr(encoding, "special_tokens_set", None)
    if special_tokens is None:
        special_tokens = getattr(encoding, "special_tokens", ())
    longest_special = max(map(len, special_tokens), default=0)
    held_back = ""
    for piece in pieces:
        # The cut points held back so far each fell inside a special token; only those near
        # the end were refused for want of text, and are tried again.
        search_from = max(len(held_back) - longest_special, 0)
        held_back += piece
        cut = _last_cut(held_back, search_from, special_tokens)
        if cut:
            yield from encode(held_back[:cut])
            held_back = held_back[cut:]
    yield from encode(held_back)


def _encode_function(encoding: Any, allowed_special: Any) -> Callable[[str], list[int]]:
    if allowed_special is None:
        return encoding.encode
    return functools.partial(encoding.encode, allowed_special=allowed_special)


def _last_cut(text: str, search_from: int, special_tokens: Collection[str]) -> int:
    """The last position from ``search_from`` on where ``text`` can be cut without changing its
    encoding: after a letter or digit followed by whitespace, not inside a possible special
    token. 0 when there is none."""
    for match in _WORD_BEFORE_WHITESPACE.finditer(text, max(search_from - 1, 0)):
        cut = match.end()
        if not _may_cut_special_token(text, cut, special_tokens):
            return cut
    return 0


def _may_cut_special_token(text: str, cut: int, special_tokens: Collection[str]) -> bool:
    """Whether a special token may run across position ``cut`` of ``text``: one of them starts
    before it and the text after it continues the token (or ends before the token does)."""
    return any(
        text[cut - split : cut] == token[:split]
        and token[split:].startswith(text[cut : cut + len(token) - split])
        for token in special_tokens
        for split in range(1, min(len(token), cut + 1))
    )
