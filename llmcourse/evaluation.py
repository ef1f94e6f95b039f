"""A language model's loss on data: nats per token, perplexity and bits per byte.

``evaluate_loss`` is what the training loop measures every ``eval_every`` steps, and what a
chapter calls to score a model on held-out text.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from llmcourse.errors import ConfigError, TrainingError
from llmcourse.model import IGNORE_INDEX
from llmcourse.model_state import autocast, eval_mode, model_device
from llmcourse.sliding_window import Batch


def evaluate_loss(
    model: nn.Module,
    loader: Iterable[Batch],
    max_batches: int | None = None,
    *,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> float:
    """The mean of the per-batch cross-entropy losses (nats per token) over the first
    ``max_batches`` batches of ``loader`` (all of them when None).

    Runs in evaluation mode (dropout off) without gradients, and puts the model back in the mode
    it was in. ``model(inputs, targets)`` must return ``(logits, loss)``.
    """
    if max_batches is not None and max_batches < 1:
        raise ConfigError(f"max_batches must be >= 1 or None, got {max_batches}")
    device = model_device(model)
    losses = []
    with eval_mode(model):
        batches = itertools.islice(loader, max_batches)
        with torch.no_grad(), autocast(autocast_dtype, device):
            for inputs, targets in tqdm(batches, desc="evaluating", disable=not progress):
                targets = targets.to(device)
                _, loss = model(inputs.to(device), targets)
                losses.append(loss.item())
                if math.isnan(losses[-1]):
                    check_has_targets(targets, "an evaluation batch")
    if not losses:
        raise TrainingError("the loader yielded no batches to evaluate; check its dataset size")
    return sum(losses) / len(losses)


def bits_per_byte(loss: float, bytes_per_token: float) -> float:
    """A loss in nats per token as bits per UTF-8 byte of text: ``loss / ln 2 / bytes_per_token``.

    Losses per token of models with different tokenizers cannot be compared: a tokenizer with
    longer tokens has fewer, harder predictions to make. Bits per byte measure how well the
    model compresses the text itself, whatever the tokenizer.
    """
    if not bytes_per_token > 0:
        raise ConfigError(f"bytes_per_token must be > 0, got {bytes_per_token}")
    return float(loss) / math.log(2) / bytes_per_token


def bytes_per_token_of(loader: Iterable[Batch] | None) -> float | None:
    """The ``bytes_per_token`` of a loader's dataset (a ``SlidingWindowDataset`` made from
    text has it), or None when the loader does not know its text."""
    value = getattr(getattr(loader, "dataset", None), "bytes_per_token", None)
    return float(value) if value else None


def perplexity(loss: float | torch.Tensor) -> float:
    """exp(loss): the number of equally likely tokens the model's uncertainty amounts to."""
    try:
        return math.exp(float(loss))
    except OverflowError:
        return math.inf


def check_has_targets(targets: torch.Tensor, what: str) -> None:
    """Explain a NaN loss that comes from a batch whose targets are all ignored (-100): the
    mean over no target is 0 / 0. Called only once the loss is NaN, so it costs nothing else."""
    if not (targets != IGNORE_INDEX).any():
        raise TrainingError(
            f"{what} has no target to learn from: all its {targets.numel()} targets are "
            f"{IGNORE_INDEX} (ignored), so its loss is 0 / 0 = NaN; every token is padding, or "
            "prompt under prompt masking. Drop the examples that have no token to predict, or "
            "make room for their answers (a longer maximum length, a shorter prompt)"
        )
