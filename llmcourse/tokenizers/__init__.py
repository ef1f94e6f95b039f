"""Tokenizers of chapter 1: text to integer ids and back.

- ``WordTokenizer``: words and punctuation looked up in a vocabulary; unknown words are lost.
- ``BPETokenizer``: byte-level byte-pair encoding trained from scratch; any text round-trips.
  ``BPETokenizer.from_gpt2_files`` reads GPT-2's own merges, ``to_tiktoken`` exports to tiktoken.
- ``gpt2_tokenizer()``: GPT-2's own BPE (tiktoken), the tokenizer of the rest of the course.
- ``Tokenizer``: the type of what the course needs of a tokenizer (encode and decode).
- ``encode_iterable``: the ids of a stream of text pieces, from either BPE, in constant memory.
"""

from llmcourse.tokenizers.bpe import BPETokenizer, encode_iterable
from llmcourse.tokenizers.gpt2 import GPT2_EOT_ID, GPT2_VOCAB_SIZE, gpt2_tokenizer
from llmcourse.tokenizers.protocol import Tokenizer
from llmcourse.tokenizers.word import WordTokenizer

__all__ = [
    "GPT2_EOT_ID",
    "GPT2_VOCAB_SIZE",
    "BPETokenizer",
    "Tokenizer",
    "WordTokenizer",
    "encode_iterable",
    "gpt2_tokenizer",
]
