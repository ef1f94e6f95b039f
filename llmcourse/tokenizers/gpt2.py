"""GPT-2's own BPE tokenizer, through tiktoken, built from the course's local data files.

``tiktoken.get_encoding("gpt2")`` downloads OpenAI's ``vocab.bpe`` (the 50,000 merges) and
``encoder.json`` (token -> id) when first used. Here the same two files come from
``llmcourse.data_files.fetch``, which uses a mirror or cache when there is one, so the tokenizer
also works offline and gives exactly the same ids.
"""

from __future__ import annotations

import functools

import tiktoken
import tiktoken.load
from tiktoken_ext.openai_public import r50k_pat_str

from llmcourse import data_files
from llmcourse.tokenizers.bpe import CheckedEncoding

GPT2_EOT_ID = 50256  # id of <|endoftext|>, the last id
GPT2_VOCAB_SIZE = 50257  # 256 bytes + 50,000 merges + <|endoftext|>


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> tiktoken.Encoding:
    """GPT-2's tokenizer (vocabulary of 50,257 tokens); built once, then shared.

    Its pre-tokenization pattern is tiktoken's own for GPT-2 (``r50k_pat_str``).
    """
    vocab_bpe, encoder_json = data_files.get("gpt2-vocab"), data_files.get("gpt2-encoder")
    mergeable_ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data_files.fetch(vocab_bpe.name)),
        encoder_json_file=str(data_files.fetch(encoder_json.name)),
        vocab_bpe_hash=vocab_bpe.sha256,
        encoder_json_hash=encoder_json.sha256,
    )
    return CheckedEncoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=mergeable_ranks,
        special_tokens={"<|endoftext|>": GPT2_EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )
