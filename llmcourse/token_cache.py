"""A corpus tokenized once and kept on disk as flat arrays of token ids (like nanoGPT's train.bin).

Tokenizing the TinyStories sample takes seconds; a corpus of gigabytes takes long and does not
fit in memory as Python lists. ``tokenized_corpus`` streams the text through the tokenizer in
pieces of constant size, writes the ids of the training and the validation part to two files of
``uint16`` (``uint32`` for vocabularies over 65,536 tokens), and memory-maps them: training reads
window by window, and a second run does not tokenize again.

The split is by characters, as ``llmcourse.sliding_window.split_text`` splits a string: of the first
``max_characters`` characters, the last ``val_fraction`` are the validation text. The cache entry
is keyed by the corpus file's sha256, the tokenizer's fingerprint, ``val_fraction`` and
``max_characters``, so a changed file or tokenizer never reuses stale ids. Entries are written
by a staged swap (``llmcourse.saving``), so a reader never sees half an entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken
from tqdm.auto import tqdm

from llmcourse import data_files
from llmcourse.errors import ConfigError, DataError
from llmcourse.saving import recover, staged_directory
from llmcourse.tokenizers.bpe import encode_iterable
from llmcourse.tokenizers.files import SavableTokenizer, as_encoding, tokenizer_fingerprint

CACHE_VERSION = 1
META_FILE = "meta.json"
SPLITS = ("train", "val")
READ_CHARACTERS = 1 << 20  # characters read from the corpus file at a time
WRITE_TOKENS = 1 << 16  # token ids buffered before they are appended to a file
HASH_TOKENS = 1 << 22  # token ids read at a time for a fingerprint


@dataclass(frozen=True)
class TokenizedSplit:
    """The token ids of one part of a corpus (a read-only memory map) and its size in bytes of
    UTF-8 text, for bits per byte."""

    ids: np.ndarray  # (n_tokens,) uint16 or uint32
    text_bytes: int

    @property
    def bytes_per_token(self) -> float | None:
        return self.text_bytes / len(self.ids) if len(self.ids) else None


@dataclass(frozen=True)
class TokenizedCorpus:
    train: TokenizedSplit
    val: TokenizedSplit
    directory: Path

    def fingerprint(self) -> str:
        """A sha256 of the token ids (both parts, in order; its first 16 hex digits) and the
        number of tokens of each part, as ``"<hash>: <train> + <val> tokens"``: equal exactly
        when two runs train and validate on the same ids. Reads every id once."""
        digest = hashlib.sha256()
        for split in (self.train, self.val):
            digest.update(f"{split.ids.dtype.name}:{len(split.ids)};".encode())
            for start in range(0, len(split.ids), HASH_TOKENS):
                digest.update(np.ascontiguousarray(split.ids[start:start + HASH_TOKENS]).data)
        return f"{digest.hexdigest()[:16]}: {len(self.train.ids)} + {len(self.val.ids)} tokens"


def tokenized_corpus(
    path: str | os.PathLike[str],
    tokenizer: SavableTokenizer,
    *,
    val_fraction: float = 0.1,
    max_characters: int | None = None,
    progress: bool = True,
) -> TokenizedCorpus:
    """The training and validation ids of the UTF-8 text file ``path``, from the cache when
    they are there, else tokenized now (streaming) and cached."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if max_characters is not None and max_characters < 1:
        raise ConfigError(f"max_characters must be >= 1 or None, got {max_characters}")
    path = Path(path)
    directory = _cache_directory(path, tokenizer, val_fraction, max_characters)
    recover(directory)  # a publication that a crash interrupted
    if not (directory / META_FILE).is_file():
        _build(path, as_encoding(tokenizer), directory, val_fraction, max_characters, progress)
    return _open(directory)


def _cache_directory(
    path: Path, tokenizer: SavableTokenizer, val_fraction: float, max_characters: int | None
) -> Path:
    key = json.dumps(
        {
            "version": CACHE_VERSION,
            "corpus_sha256": data_files.sha256_of(path),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "val_fraction": val_fraction,
            "max_characters": max_characters,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return data_files.cache_root() / "tokens" / f"{path.stem}-{digest}"


def _build(
    path: Path,
    encoding: tiktoken.Encoding,
    directory: Path,
    val_fraction: float,
    max_characters: int | None,
    progress: bool,
) -> None:
    n_characters = _count_characters(path, max_characters)
    cut = int((1.0 - val_fraction) * n_characters)  # the cut of split_text
    dtype = np.uint16 if encoding.n_vocab <= 1 << 16 else np.uint32
    # A concurrent writer that publishes the same entry first wins; this copy is dropped.
    with staged_directory(directory, keep_existing=True) as staging:
        meta = {"dtype": np.dtype(dtype).name, "characters": n_characters}
        bar = tqdm(total=n_characters, unit="char", unit_scale=True,
                   desc=f"tokenizing {path.name}", disable=not progress)
        with bar:
            for split, (begin, end) in zip(SPLITS, ((0, cut), (cut, n_characters)), strict=True):
                pieces = _text_pieces(path, begin, end, bar)
                meta[split] = _write_ids(encoding, pieces, staging / f"{split}.bin", dtype)
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _count_characters(path: Path, max_characters: int | None) -> int:
    count = 0
    for piece in _read_pieces(path):
        count += len(piece)
        if max_characters is not None and count >= max_characters:
            return max_characters
    return count


def _read_pieces(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", newline="") as file:
            while piece := file.read(READ_CHARACTERS):
                yield piece
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text ({error}); pass a plain text file") from None


def _text_pieces(path: Path, begin: int, end: int, bar: tqdm) -> Iterator[str]:
    """The characters ``begin:end`` of the file, in pieces of at most ``READ_CHARACTERS``."""
    position = 0
    for piece in _read_pieces(path):
        piece_begin, piece_end = max(begin - position, 0), min(end - position, len(piece))
        if piece_begin < piece_end:
            bar.update(piece_end - piece_begin)
            yield piece[piece_begin:piece_end]
        position += len(piece)
        if position >= end:
            return


def _write_ids(
    encoding: tiktoken.Encoding, pieces: Iterator[str], path: Path, dtype: type
) -> dict:
    """Tokenize the stream of text ``pieces`` into ``path``; returns the counts."""
    text_bytes = 0

    def counted(stream: Iterator[str]) -> Iterator[str]:
        nonlocal text_bytes
        for piece in stream:
            text_bytes += len(piece.encode("utf-8"))
            yield piece

    n_tokens = 0
    buffer: list[int] = []
    with open(path, "wb") as file:
        for token in encode_iterable(encoding, counted(pieces), allowed_special="all"):
            buffer.append(token)
            if len(buffer) >= WRITE_TOKENS:
                n_tokens += _append(file, buffer, dtype)
        n_tokens += _append(file, buffer, dtype)
    return {"tokens": n_tokens, "text_bytes": text_bytes}


def _append(file: io.BufferedWriter, buffer: list[int], dtype: type) -> int:
    count = len(buffer)
    np.asarray(buffer, dtype=dtype).tofile(file)
    buffer.clear()
    return count


def _open(directory: Path) -> TokenizedCorpus:
    meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    splits = {}
    for split in SPLITS:
        n_tokens = meta[split]["tokens"]
        ids = (
            np.memmap(directory / f"{split}.bin", dtype=meta["dtype"], mode="r", shape=(n_tokens,))
            if n_tokens
            else np.zeros(0, dtype=meta["dtype"])
        )
        splits[split] = TokenizedSplit(ids, meta[split]["text_bytes"])
    return TokenizedCorpus(splits["train"], splits["val"], directory)
