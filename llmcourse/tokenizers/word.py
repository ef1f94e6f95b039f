"""A word-level tokenizer: split text on whitespace and punctuation, then look words up.

This is the simplest tokenizer that turns text into integer ids. Its vocabulary is every
distinct word and punctuation mark of one training text, sorted, plus two special tokens:

- ``<|endoftext|>`` marks the boundary between two unrelated texts;
- ``<|unk|>`` stands for every word the vocabulary does not contain.

Its weakness, which byte-pair encoding fixes, is that ``<|unk|>`` loses information: a word
never seen in training can never be decoded again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from llmcourse.errors import InputError

END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<|unk|>"

# The capturing group keeps the punctuation marks as tokens of their own; whitespace is
# captured too and dropped afterwards.
SPLIT_PATTERN = re.compile(r"""([,.:;?_!"()']|--|\s)""")
# Decoding joins tokens with spaces; this removes the space in front of punctuation.
SPACE_BEFORE_PUNCTUATION = re.compile(r"""\s+([,.:;?!"()'])""")


class WordTokenizer:
    """Maps words and punctuation marks to ids through a fixed vocabulary.

    ``vocab`` maps each token string to its id; ids must be ``0 .. len(vocab) - 1`` and the
    vocabulary must contain ``<|unk|>``. Usually built with ``WordTokenizer.from_text``.
    """

    def __init__(self, vocab: dict[str, int]) -> None:
        if UNKNOWN not in vocab:
            raise InputError(f"the vocabulary has no {UNKNOWN} token; add it to the vocab")
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise InputError(
                f"vocabulary ids must be exactly 0..{len(vocab) - 1}, each used once"
            )
        self.vocab = dict(vocab)
        self.id_to_token = {token_id: token for token, token_id in vocab.items()}

    @classmethod
    def from_text(cls, text: str) -> WordTokenizer:
        """A tokenizer whose vocabulary is every distinct token of ``text`` plus the specials.

        Ordinary tokens get ids in sorted (code point) order, then ``<|endoftext|>`` and
        ``<|unk|>`` take the last two ids.
        """
        words = sorted(set(split(text)) - {END_OF_TEXT, UNKNOWN})
        tokens = [*words, END_OF_TEXT, UNKNOWN]
        return cls({token: token_id for token_id, token in enumerate(tokens)})

    @property
    def vocab_size(self) -> int:
        """Number of tokens in the vocabulary, special tokens included."""
        return len(self.vocab)

    def split(self, text: str) -> list[str]:
        """The tokens of ``text`` as strings, before they are looked up in the vocabulary."""
        return split(text)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; words missing from the vocabulary become ``<|unk|>``."""
        unknown_id = self.vocab[UNKNOWN]
        return [self.vocab.get(token, unknown_id) for token in split(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``: tokens joined by spaces, without spaces before punctuation."""
        tokens = []
        for token_id in ids:
            if token_id not in self.id_to_token:
                raise InputError(
                    f"token id {token_id} is not in the vocabulary; valid ids are "
                    f"0..{self.vocab_size - 1}"
                )
            tokens.append(self.id_to_token[token_id])
        return SPACE_BEFORE_PUNCTUATION.sub(r"\1", " ".join(tokens))


def split(text: str) -> list[str]:
    """Split ``text`` into words and punctuation marks, dropping the whitespace.

    >>> split('Hello, world. Is this-- a test?')
    ['Hello', ',', 'world', '.', 'Is', 'this', '--', 'a', 'test', '?']
    """
    return [piece for piece in SPLIT_PATTERN.split(text) if piece.strip()]
