"""What the course needs of a tokenizer, as a type: text to token ids and back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Tokenizer(Protocol):
    """Text to token ids and back, with control over special tokens such as
    ``<|endoftext|>``: tiktoken's ``Encoding`` (GPT-2's tokenizer) and the course's
    ``BPETokenizer`` both fit. (Chapter 1's ``WordTokenizer`` has no special-token options.)"""

    def encode(
        self, text: str, *, allowed_special: object = ..., disallowed_special: object = ...
    ) -> list[int]: ...

    def decode(self, tokens: Sequence[int]) -> str: ...
