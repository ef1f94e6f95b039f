"""Pretraining a GPT on a text corpus: from a registry name or a file to a trained checkpoint.

``pretrain`` strings together the course's pieces: GPT-2's tokenizer, a character split into
training and validation text, sliding windows as long as the context, the GPT, and the training
loop with its checkpoints. The ``llmcourse pretrain`` command is a thin layer over it.

Under torchrun it trains with DistributedDataParallel: ``batch_size`` is then the global batch,
split among the processes, and the run sees the same batches as a one-process run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from llmcourse import datasets
from llmcourse.data import SlidingWindowDataset, split_text
from llmcourse.distributed import current_context, distributed_loader
from llmcourse.errors import CourseError
from llmcourse.model import GPT, GPTConfig
from llmcourse.tokenizers import gpt2_tokenizer
from llmcourse.training import TrainingConfig, TrainingHistory, train


@dataclass
class PretrainingRun:
    """What to train on and how.

    ``corpus`` is a data registry name (``llmcourse data list``) or the path of a UTF-8 text
    file; only its first ``max_characters`` are used when that is set. The last
    ``val_fraction`` of the characters is held out for validation. Windows are ``context_length``
    tokens long and do not overlap. ``batch_size`` counts the windows of one optimizer step over
    all processes (it must be a multiple of their number).
    """

    corpus: str
    model: GPTConfig
    batch_size: int = 8
    val_fraction: float = 0.1
    max_characters: int | None = None
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(max_steps=100))


def read_corpus(corpus: str, max_characters: int | None = None) -> str:
    """The text of a registry data file or a local text file, cut to ``max_characters``."""
    names = {entry.name for entry in datasets.registry()}
    path = datasets.fetch(corpus) if corpus in names else Path(corpus)
    if not path.is_file():
        raise CourseError(
            f"corpus {corpus!r} is neither a data file of the registry "
            f"({', '.join(sorted(names))}) nor an existing text file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CourseError(f"{path} is not UTF-8 text ({error}); pass a plain text file") from None
    return text[:max_characters] if max_characters is not None else text


def make_loaders(text: str, run: PretrainingRun) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders of (inputs, targets) windows over ``text``: this process'
    share of every batch (all of it in a single process)."""
    tokenizer = gpt2_tokenizer()
    train_text, val_text = split_text(text, 1.0 - run.val_fraction)
    length = run.model.context_length
    train_set = SlidingWindowDataset.from_text(train_text, tokenizer, length, stride=length)
    val_set = SlidingWindowDataset.from_text(val_text, tokenizer, length, stride=length)
    seed, context = run.training.seed, current_context()
    train_loader = distributed_loader(train_set, run.batch_size, context, seed=seed)
    val_loader = distributed_loader(
        val_set, run.batch_size, context, seed=seed, shuffle=False, drop_last=False
    )
    return train_loader, val_loader


def pretrain(
    run: PretrainingRun,
    output_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    callbacks: tuple[object, ...] = (),
) -> tuple[GPT, TrainingHistory]:
    """Train a fresh GPT (or continue the checkpoint in ``output_dir`` when ``resume``) and
    save the final checkpoint in ``output_dir``. Returns the model and the run's history."""
    output_dir = Path(output_dir)
    if resume and not (output_dir / "training_state.pt").is_file():
        raise CourseError(
            f"nothing to resume: {output_dir} holds no training checkpoint; "
            "start without --resume"
        )
    text = read_corpus(run.corpus, run.max_characters)
    train_loader, val_loader = make_loaders(text, run)
    torch.manual_seed(run.training.seed)
    model = GPT(run.model)
    history = train(
        model,
        train_loader,
        val_loader,
        replace(run.training, checkpoint_dir=output_dir),
        callbacks=callbacks,
        resume_from=output_dir if resume else None,
    )
    return model, history
