"""The tokenizer a checkpoint carries: one file beside ``config.json``, read back as tiktoken.

A model only knows token ids; which text each id stands for is the tokenizer's business. So every
checkpoint directory holds its tokenizer in ``tokenizer.bpe.json`` (``BPETokenizer.save``'s
format: the merges, the special tokens and the order of the 256 byte tokens), and every loader
reads it from there. GPT-2's own BPE is written the same way, so a checkpoint never depends on
files outside its directory.

At run time a tokenizer is a ``tiktoken.Encoding``: GPT-2's (``gpt2_tokenizer()``) or a trained
``BPETokenizer`` exported with ``to_tiktoken()``. Both encode with tiktoken's fast engine and give
exactly the ids of the pure-Python ``BPETokenizer``.

A checkpoint saved before tokenizers were stored has no file; it gets GPT-2's tokenizer, the only
one the course used then, with a note.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path

import tiktoken

from llmcourse.errors import CheckpointError
from llmcourse.saving import write_text_atomic
from llmcourse.tokenizers.bpe import BPETokenizer
from llmcourse.tokenizers.gpt2 import gpt2_tokenizer
from llmcourse.tokenizers.word import END_OF_TEXT

TOKENIZER_FILE = "tokenizer.bpe.json"
# A model's embedding table may have more rows than the tokenizer has tokens only when its size
# is the tokenizer's rounded up to a multiple of this (it trains faster on GPUs: 50,304 rows for
# GPT-2's 50,257 tokens); any other difference is a mismatch.
EMBEDDING_ROWS_MULTIPLE = 64

SavableTokenizer = BPETokenizer | tiktoken.Encoding  # what a checkpoint can carry


def as_encoding(tokenizer: SavableTokenizer) -> tiktoken.Encoding:
    """``tokenizer`` as a ``tiktoken.Encoding`` (a ``BPETokenizer`` is exported once)."""
    if isinstance(tokenizer, tiktoken.Encoding):
        return tokenizer
    if isinstance(tokenizer, BPETokenizer):
        return tokenizer.to_tiktoken()
    raise TypeError(
        f"expected a BPETokenizer or a tiktoken.Encoding, got {type(tokenizer).__name__}"
    )


def as_bpe(tokenizer: SavableTokenizer) -> BPETokenizer:
    """``tokenizer`` as a ``BPETokenizer``: a tiktoken Encoding's merges are recovered from
    its ranks (see ``bpe_from_encoding``); the result is cached per Encoding object."""
    if isinstance(tokenizer, BPETokenizer):
        return tokenizer
    if isinstance(tokenizer, tiktoken.Encoding):
        return _cached_bpe_of(tokenizer)
    raise TypeError(
        f"expected a BPETokenizer or a tiktoken.Encoding, got {type(tokenizer).__name__}"
    )


_BPE_OF_ENCODING: dict[int, tuple[tiktoken.Encoding, BPETokenizer]] = {}


def _cached_bpe_of(encoding: tiktoken.Encoding) -> BPETokenizer:
    cached = _BPE_OF_ENCODING.get(id(encoding))
    if cached is None or cached[0] is not encoding:
        cached = (encoding, bpe_from_encoding(encoding))
        _BPE_OF_ENCODING[id(encoding)] = cached
    return cached[1]


def bpe_from_encoding(encoding: tiktoken.Encoding) -> BPETokenizer:
    """The ``BPETokenizer`` with the same ids as a byte-level BPE ``tiktoken.Encoding``.

    tiktoken stores only the rank (id) of each token's bytes. The merge that made a token is
    found by running BPE on its bytes with the lower-ranked tokens only: that stops at exactly
    two parts, the pair that was merged. The Encoding's ordinary tokens must be the 256 single
    bytes at ids 0..255 (in any order) and then one merge per id, as in GPT-2's and every
    tokenizer ``BPETokenizer.train`` makes; its special tokens must follow them.
    """
    n_ordinary = encoding.n_vocab - len(encoding.special_tokens_set)
    token_bytes = [encoding.decode_single_token_bytes(rank) for rank in range(n_ordinary)]
    ranks = {piece: rank for rank, piece in enumerate(token_bytes)}
    if sorted(len(piece) == 1 for piece in token_bytes[:256]) != [True] * 256:
        raise CheckpointError(
            f"tiktoken encoding {encoding.name!r} does not start with the 256 single bytes; "
            "only byte-level BPE encodings (like GPT-2's) can be stored as a BPETokenizer"
        )
    merges = [_merged_pair(piece, rank, ranks, encoding.name) for rank, piece in
              enumerate(token_bytes) if rank >= 256]
    specials = sorted(encoding.special_tokens_set, key=encoding.encode_single_token)
    if [encoding.encode_single_token(token) for token in specials] != list(
        range(n_ordinary, encoding.n_vocab)
    ):
        raise CheckpointError(
            f"the special tokens of tiktoken encoding {encoding.name!r} do not follow its "
            "ordinary tokens; a BPETokenizer numbers them right after the merges"
        )
    byte_order = [token_bytes[rank][0] for rank in range(256)]
    return BPETokenizer(merges, specials, byte_order=byte_order)


def _merged_pair(piece: bytes, rank: int, ranks: dict[bytes, int], name: str) -> tuple[int, int]:
    parts = [bytes([byte]) for byte in piece]
    while len(parts) > 2:
        candidates = [
            (ranks[joined], index)
            for index in range(len(parts) - 1)
            if (joined := parts[index] + parts[index + 1]) in ranks and ranks[joined] < rank
        ]
        if not candidates:
            break
        _, index = min(candidates)
        parts[index : index + 2] = [parts[index] + parts[index + 1]]
    if len(parts) != 2 or any(ranks.get(part, rank) >= rank for part in parts):
        raise CheckpointError(
            f"token {rank} ({piece!r}) of tiktoken encoding {name!r} is not the merge of two "
            "earlier tokens; its ranks do not follow merge order"
        )
    return ranks[parts[0]], ranks[parts[1]]


def tokenizer_fingerprint(tokenizer: SavableTokenizer) -> str:
    """A sha256 (hex) of the tokenizer's content (merges, byte order, special tokens): equal
    for two tokenizers exactly when they map text to the same ids."""
    return hashlib.sha256(_file_content(as_bpe(tokenizer)).encode("utf-8")).hexdigest()


def _file_content(tokenizer: BPETokenizer) -> str:
    return json.dumps(tokenizer.to_dict(), separators=(",", ":"))


def save_tokenizer(tokenizer: SavableTokenizer, directory: str | os.PathLike[str]) -> Path:
    """Write ``tokenizer`` to ``directory/tokenizer.bpe.json`` (atomically); returns the file's
    path."""
    return write_text_atomic(Path(directory) / TOKENIZER_FILE, _file_content(as_bpe(tokenizer)))


def load_tokenizer(
    directory: str | os.PathLike[str], *, vocab_size: int | None = None
) -> tiktoken.Encoding:
    """The tokenizer stored in a checkpoint ``directory``, as a ``tiktoken.Encoding``.

    Without a tokenizer file (a checkpoint from before tokenizers were stored, or a GPT-2
    checkpoint in the hub's layout) it is GPT-2's. With ``vocab_size`` (the model's), a
    tokenizer whose ids do not fit the model raises ``CheckpointError``.
    """
    path = Path(directory) / TOKENIZER_FILE
    if path.is_file():
        encoding = _encoding_of_file(str(path.resolve()), _modified(path))
    else:
        if (Path(directory) / "config.json").is_file() and not _is_hub_layout(Path(directory)):
            print(
                f"note: {directory} has no {TOKENIZER_FILE}; it was saved before checkpoints "
                "carried their tokenizer, so GPT-2's tokenizer is used",
                file=sys.stderr,
            )
        encoding = gpt2_tokenizer()
    if vocab_size is not None:
        check_vocab_fits(encoding, vocab_size, where=str(directory))
    return encoding


@functools.lru_cache(maxsize=8)
def _encoding_of_file(path: str, modified: tuple[int, int]) -> tiktoken.Encoding:
    """The Encoding of a tokenizer file, built once per file version (``modified``)."""
    return BPETokenizer.load(path).to_tiktoken()


def _modified(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_mtime_ns, status.st_size


def _is_hub_layout(directory: Path) -> bool:
    """Whether ``directory/config.json`` is a Hugging Face GPT-2 config (it names a model type)."""
    return '"model_type"' in (directory / "config.json").read_text(errors="replace")


def check_vocab_fits(
    tokenizer: SavableTokenizer, vocab_size: int, *, where: str = "the model"
) -> None:
    """Raise ``CheckpointError`` unless the tokenizer's ids are the model's token ids:
    ``vocab_size`` is the tokenizer's number of tokens, or that number rounded up to a multiple
    of ``EMBEDDING_ROWS_MULTIPLE``."""
    n_vocab = as_encoding(tokenizer).n_vocab
    rounded_up = -(-n_vocab // EMBEDDING_ROWS_MULTIPLE) * EMBEDDING_ROWS_MULTIPLE
    if vocab_size not in (n_vocab, rounded_up):
        raise CheckpointError(
            f"{where}: the tokenizer has {n_vocab:,} tokens but the model's vocabulary has "
            f"{vocab_size:,} rows; they were not trained together. Use the tokenizer saved "
            f"with the model (its {TOKENIZER_FILE}), or a model trained with this tokenizer"
        )


def end_of_text_id(tokenizer: SavableTokenizer, *, default: int | None = None) -> int:
    """The id of ``<|endoftext|>``, which ends a story or an answer and pads batches.

    ``default`` is returned for a tokenizer of another kind (any object with an ``encode``
    method, as tests and exercises use); without it such a tokenizer raises ``TypeError``."""
    if default is not None and not isinstance(tokenizer, BPETokenizer | tiktoken.Encoding):
        return default
    encoding = as_encoding(tokenizer)
    if END_OF_TEXT not in encoding.special_tokens_set:
        raise CheckpointError(
            f"the tokenizer {encoding.name!r} has no {END_OF_TEXT} token, which ends texts and "
            "pads batches; train it with special_tokens=('<|endoftext|>',)"
        )
    return encoding.encode_single_token(END_OF_TEXT)
