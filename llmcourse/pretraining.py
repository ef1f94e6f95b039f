"""Pretraining a GPT on a text corpus: from a registry name or a file to a trained checkpoint.

``pretrain`` strings together the course's pieces: a tokenizer (GPT-2's, or a BPE trained on
the corpus), the corpus tokenized once into a cache (``llmcourse.token_cache``) and split by
characters into training and validation text, sliding windows as long as the context, the GPT,
and the training loop with its checkpoints, which carry the tokenizer. The ``llmcourse pretrain``
command is a thin layer over it.

A run's ``tokenizer`` is one of:

- ``"gpt2"``: GPT-2's BPE (50,257 tokens);
- ``"bpe-N"``: a byte-level BPE of N tokens trained by ``BPETokenizer.train`` on the run's
  training text, once, then cached (the course tokenizer is ``bpe-4096`` on TinyStories);
- the path of a tokenizer file written by ``BPETokenizer.save``.

Under torchrun it trains with DistributedDataParallel: ``batch_size`` is then the global batch,
split among the processes, and the run sees the same batches as a one-process run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tiktoken
import torch
from torch.utils.data import DataLoader

from llmcourse import data_files
from llmcourse.checkpoints import CHECKPOINT_FILES, TRAINING_STATE_FILE
from llmcourse.distributed import current_context, distributed_loader
from llmcourse.errors import CheckpointError, ConfigError, DataError, MissingFileError
from llmcourse.model import GPT, GPTConfig
from llmcourse.saving import check_destination
from llmcourse.sliding_window import SlidingWindowDataset, split_text
from llmcourse.token_cache import TokenizedCorpus, tokenized_corpus
from llmcourse.tokenizers import BPETokenizer, gpt2_tokenizer
from llmcourse.tokenizers.files import check_vocab_fits
from llmcourse.training import TrainingConfig, TrainingHistory, train

TRAINED_TOKENIZER = re.compile(r"bpe-(\d+)")
# Bump when BPETokenizer.train would learn different merges, so cached tokenizers are not reused.
TOKENIZER_TRAINER_VERSION = 1


@dataclass
class PretrainingRun:
    """What to train on and how.

    ``corpus`` is a data registry name (``llmcourse data list``) or the path of a UTF-8 text
    file; only its first ``max_characters`` are used when that is set. The last
    ``val_fraction`` of the characters is held out for validation. Windows are ``context_length``
    tokens long and do not overlap. ``batch_size`` counts the windows of one optimizer step over
    all processes (it must be a multiple of their number). ``tokenizer`` is ``"gpt2"``,
    ``"bpe-N"`` or a tokenizer file (see the module's docstring); the model's ``vocab_size``
    must be its number of tokens.
    """

    corpus: str
    model: GPTConfig
    tokenizer: str = "gpt2"
    batch_size: int = 8
    val_fraction: float = 0.1
    max_characters: int | None = None
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(max_steps=100))

    def __post_init__(self) -> None:
        if not _is_whole_number(self.batch_size) or self.batch_size < 1:
            raise ConfigError(
                f"batch_size must be a whole number of windows, at least 1; got "
                f"{self.batch_size!r}"
            )
        if not isinstance(self.val_fraction, int | float) or not 0 < self.val_fraction < 1:
            raise ConfigError(
                f"val_fraction must lie strictly between 0 and 1 (the share of the corpus held "
                f"out for validation, such as 0.1), got {self.val_fraction!r}"
            )
        if self.max_characters is not None and (
            not _is_whole_number(self.max_characters) or self.max_characters < 1
        ):
            raise ConfigError(
                f"max_characters must be None (the whole corpus) or a whole number of at least "
                f"1, got {self.max_characters!r}"
            )


def _is_whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def corpus_path(corpus: str) -> Path:
    """The file of a registry data name (fetched if need be) or of a local text file."""
    names = {entry.name for entry in data_files.registry()}
    path = data_files.fetch(corpus) if corpus in names else Path(corpus)
    if not path.is_file():
        raise MissingFileError(
            f"corpus {corpus!r} is neither a data file of the registry "
            f"({', '.join(sorted(names))}) nor an existing text file"
        )
    return path


def read_corpus(corpus: str, max_characters: int | None = None) -> str:
    """The text of a registry data file or a local text file, cut to ``max_characters``."""
    path = corpus_path(corpus)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text ({error}); pass a plain text file") from None
    return text[:max_characters] if max_characters is not None else text


def run_tokenizer(run: PretrainingRun, *, progress: bool = True) -> tiktoken.Encoding:
    """The tokenizer ``run.tokenizer`` names; a ``bpe-N`` one is trained on the run's training
    text the first time and cached under ``<cache root>/tokenizers``."""
    spec = run.tokenizer
    if spec == "gpt2":
        return gpt2_tokenizer()
    if match := TRAINED_TOKENIZER.fullmatch(spec):
        return trained_tokenizer(run, int(match[1]), progress=progress).to_tiktoken()
    if Path(spec).is_file():
        return BPETokenizer.load(spec).to_tiktoken()
    raise ConfigError(
        f"tokenizer {spec!r} is not 'gpt2', not 'bpe-N' (a BPE of N tokens trained on the "
        "corpus, such as bpe-4096) and not an existing tokenizer file written by "
        "BPETokenizer.save"
    )


def trained_tokenizer(run: PretrainingRun, vocab_size: int, *, progress: bool = True
                      ) -> BPETokenizer:
    """A BPE of ``vocab_size`` tokens trained on the run's training text (never the
    validation text), from the cache when it was trained before."""
    path = corpus_path(run.corpus)
    key = json.dumps({
        "trainer": TOKENIZER_TRAINER_VERSION, "corpus_sha256": data_files.sha256_of(path),
        "vocab_size": vocab_size, "val_fraction": run.val_fraction,
        "max_characters": run.max_characters,
    }, sort_keys=True)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    cached = data_files.cache_root() / "tokenizers" / f"{path.stem}-bpe-{vocab_size}-{digest}.json"
    if cached.is_file():
        return BPETokenizer.load(cached)
    train_text, _ = split_text(read_corpus(run.corpus, run.max_characters),
                               1.0 - run.val_fraction)
    tokenizer = BPETokenizer.train(train_text, vocab_size, progress=progress)
    tokenizer.save(cached)  # atomically: a concurrent reader sees no half-written file
    return tokenizer


def run_corpus(run: PretrainingRun, tokenizer: tiktoken.Encoding, *, progress: bool = True
               ) -> TokenizedCorpus:
    """The run's corpus tokenized by ``tokenizer`` (which must fit the run's model), split into
    training and validation ids, through the token cache."""
    check_vocab_fits(tokenizer, run.model.vocab_size, where="the model of this run")
    return tokenized_corpus(corpus_path(run.corpus), tokenizer, val_fraction=run.val_fraction,
                            max_characters=run.max_characters, progress=progress)


def make_loaders(
    run: PretrainingRun,
    tokenizer: tiktoken.Encoding | None = None,
    *,
    progress: bool = True,
    corpus: TokenizedCorpus | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders of (inputs, targets) windows over the run's corpus
    (``corpus``, else ``run_corpus(run, tokenizer)``, where ``tokenizer`` defaults to
    ``run_tokenizer(run)``): this process' share of every batch (all of it in a single
    process). Each loader's dataset knows its bytes per token, so evaluation reports bits per
    byte."""
    if corpus is None:
        tokenizer = tokenizer if tokenizer is not None else run_tokenizer(run, progress=progress)
        corpus = run_corpus(run, tokenizer, progress=progress)
    length = run.model.context_length
    train_set, val_set = (
        SlidingWindowDataset(split.ids, length, length, bytes_per_token=split.bytes_per_token)
        for split in (corpus.train, corpus.val)
    )
    seed, context = run.training.seed, current_context()
    train_loader = distributed_loader(train_set, run.batch_size, context, seed=seed)
    val_loader = distributed_loader(
        val_set, run.batch_size, context, seed=seed, shuffle=False, drop_last=False
    )
    return train_loader, val_loader


def resume_settings(run: PretrainingRun, corpus: TokenizedCorpus) -> dict[str, Any]:
    """What a resumed run must share with the checkpointed one besides
    ``run.training.run_settings()``: the corpus, how much of it and how it is split, the
    tokenizer, the batch size, the context length, and a fingerprint of the token ids
    (``TokenizedCorpus.fingerprint``), which changes with the text the run trains on."""
    return {
        "corpus": run.corpus,
        "max_characters": run.max_characters,
        "val_fraction": run.val_fraction,
        "tokenizer": run.tokenizer,
        "batch_size": run.batch_size,
        "context_length": run.model.context_length,
        "tokens": corpus.fingerprint(),
    }


def check_output(output_dir: str | os.PathLike[str], *, resume: bool, overwrite: bool) -> None:
    """Check, before any work, that a run may save into ``output_dir``: with ``resume`` it must
    hold a run's checkpoint (with its training state); without, it must be new or empty, or
    hold a checkpoint that ``overwrite`` allows replacing. Raises a ``CourseError`` otherwise
    (``CheckpointError`` for a file or a directory of other files)."""
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other: continue the run in the "
                          "output directory, or replace it")
    output_dir = Path(output_dir)
    check_destination(
        output_dir, what="a checkpoint", own_names=CHECKPOINT_FILES, replace=resume or overwrite,
        remedy="pass --resume to continue its run or --overwrite to replace it",
        error=CheckpointError,
    )
    if resume and not (output_dir / TRAINING_STATE_FILE).is_file():
        raise MissingFileError(
            f"nothing to resume: {output_dir} holds no training checkpoint; "
            "start without --resume"
        )


def pretrain(
    run: PretrainingRun,
    output_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: tuple[object, ...] = (),
) -> tuple[GPT, TrainingHistory]:
    """Train a fresh GPT (or continue the checkpoint in ``output_dir`` when ``resume``) and
    save the final checkpoint, with its tokenizer, in ``output_dir``. A checkpoint already in
    ``output_dir`` is continued with ``resume`` or replaced with ``overwrite``, never else (see
    ``check_output``). Resuming refuses a run that differs from the checkpointed one in its
    training settings or its ``resume_settings`` (data, tokenizer, batch size ...). Returns the
    model and the run's history."""
    output_dir = Path(output_dir)
    check_output(output_dir, resume=resume, overwrite=overwrite)
    tokenizer = run_tokenizer(run, progress=run.training.progress)
    corpus = run_corpus(run, tokenizer, progress=run.training.progress)
    train_loader, val_loader = make_loaders(run, corpus=corpus)
    torch.manual_seed(run.training.seed)
    model = GPT(run.model)
    history = train(
        model,
        train_loader,
        val_loader,
        replace(run.training, checkpoint_dir=output_dir),
        callbacks=callbacks,
        resume_from=output_dir if resume else None,
        tokenizer=tokenizer,
        run_settings=resume_settings(run, corpus),
    )
    return model, history
