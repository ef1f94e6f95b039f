"""How much memory a training step needs, and a clear error when a step runs out of it."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from llmcourse.errors import ConfigError, TrainingError
from llmcourse.model import GPTConfig, count_parameters
from llmcourse.model_state import model_device
from llmcourse.sliding_window import Batch

GIB = 1 << 30
# Values that autograd keeps for the backward pass, per token and layer, in units of n_embd:
# the inputs of both LayerNorms and their outputs (4), the query/key/value projection (3), the
# attention output and its projection's input (2), the residual stream twice (2) and the MLP's
# 4x-wide hidden layer before and after GELU (8): about 19.
ACTIVATIONS_PER_LAYER = 19
# Per token and vocabulary entry: the logits, their float32 copy for the loss, the log-softmax
# and the logits' gradient.
ACTIVATIONS_PER_VOCAB_ENTRY = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """A rough estimate of the memory, in bytes, one training step of a GPT holds: the weights,
    their gradients, AdamW's two moments, and the activations kept for the backward pass."""

    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        """The total and its parts in GiB, as words: "about 3.2 GiB (weights 0.5, ...)"."""
        parts = ", ".join(
            f"{name} {value / GIB:.1f}"
            for name, value in (
                ("weights", self.weights), ("gradients", self.gradients),
                ("AdamW state", self.optimizer), ("activations", self.activations),
            )
        )
        return f"about {self.total / GIB:.1f} GiB ({parts} GiB)"


def estimate_training_memory(
    config: GPTConfig,
    batch_size: int,
    sequence_length: int | None = None,
    *,
    parameters: int | None = None,
    trainable: int | None = None,
    bytes_per_value: int = 4,
) -> MemoryEstimate:
    """A rough estimate of the memory one training step of ``GPT(config)`` needs, for batches
    of ``batch_size`` sequences of ``sequence_length`` tokens (default: the context length).

    It is a back-of-the-envelope formula, not a measurement: float32 weights (4 bytes per
    parameter), gradients of the trainable ones (4 bytes each), AdamW's two moments (8 bytes
    per trainable parameter), and activations of ``bytes_per_value`` bytes each: about
    ``ACTIVATIONS_PER_LAYER * n_embd`` values per token and layer plus
    ``ACTIVATIONS_PER_VOCAB_ENTRY * vocab_size`` per token for the logits and the loss. The
    allocator's overhead, temporary buffers and fragmentation come on top. ``parameters``
    (default: ``count_parameters(config)``) and ``trainable`` (default: all of them) count a
    model whose parameters differ from the plain GPT's, such as one with LoRA adapters.
    """
    sequence_length = config.context_length if sequence_length is None else sequence_length
    if batch_size < 1 or sequence_length < 1:
        raise ConfigError(
            f"batch_size and sequence_length must be >= 1, got {batch_size} and "
            f"{sequence_length}"
        )
    parameters = count_parameters(config) if parameters is None else parameters
    trainable = parameters if trainable is None else trainable
    per_token = (config.n_layer * ACTIVATIONS_PER_LAYER * config.n_embd
                 + ACTIVATIONS_PER_VOCAB_ENTRY * config.vocab_size)
    return MemoryEstimate(
        weights=4 * parameters,
        gradients=4 * trainable,
        optimizer=8 * trainable,
        activations=batch_size * sequence_length * per_token * bytes_per_value,
    )


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocator's refusal: ``torch.OutOfMemoryError`` (a GPU's) or a
    RuntimeError whose message says memory could not be allocated (the CPU's)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        words in message for words in (
            "out of memory", "can't allocate memory", "cannot allocate memory",
            "could not allocate", "failed to allocate",
        )
    )


def out_of_memory_error(model: nn.Module, batch: Batch, error: BaseException
                         ) -> TrainingError:
    """The error that replaces an allocator's: what the step needed, by estimate, and what
    to lower."""
    batch_size, sequence_length = batch[0].shape[:2]
    shape = f"a batch of {batch_size} sequences of {sequence_length} tokens"
    config = getattr(model, "config", None)
    if isinstance(config, GPTConfig):
        parameters = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        estimate = estimate_training_memory(
            config, batch_size, sequence_length, parameters=parameters, trainable=trainable
        )
        need = f"{shape} needs {estimate.describe()}, by a rough estimate"
    else:
        need = f"{shape} needs more memory than there is"
    device = model_device(model)
    return TrainingError(
        f"out of memory on {device} in a training step{_requested(str(error))}: {need}; "
        "lower the batch size (--batch-size) or the context length (--context-length): the "
        "activations grow with both"
    )


def _requested(message: str) -> str:
    """" (it asked for 12.5 GiB more)" from an allocator's message, or "" if it says no size."""
    found = re.search(r"tried to allocate (\d+) bytes", message, re.IGNORECASE)
    if found:
        return f" (it asked for {int(found[1]) / GIB:.1f} GiB more)"
    found = re.search(r"tried to allocate ([\d.]+ ?[KMGT]i?B)", message, re.IGNORECASE)
    return f" (it asked for {found[1]} more)" if found else ""
