"""Tokenizers of chapter 1: text to integer ids and back.

- ``WordTokenizer``: words and punctuation looked up in a vocabulary; unknown words are lost.
- ``BPETokenizer``: byte-level byte-pair encoding trained from scratch; any text round-trips.
- ``gpt2_tokenizer()``: GPT-2's own BPE (tiktoken), the tokenizer of the rest of the course.
"""

from llmcourse.tokenizers.bpe import BPETokenizer
from llmcourse.tokenizers.gpt2 import GPT2_EOT_ID, GPT2_VOCAB_SIZE, gpt2_tokenizer
from llmcourse.tokenizers.word import TokenizerError, WordTokenizer

__all__ = [
    "GPT2_EOT_ID",
    "GPT2_VOCAB_SIZE",
    "BPETokenizer",
    "TokenizerError",
    "WordTokenizer",
    "gpt2_tokenizer",
]
