"""Pretraining: loss and perplexity, the optimizer, and a training loop that can resume exactly.

``train`` runs a fixed number of optimizer steps over a data loader, epoch after epoch, with a
warmup + cosine learning-rate schedule, gradient clipping and a periodic evaluation of the loss
on training and validation batches. A checkpoint saved at step k lets a fresh process continue
with exactly the losses an uninterrupted run would have had: same batches in the same order, same
dropout masks, bit for bit.

How resuming stays exact:

- The order of an epoch's batches is drawn, when the epoch starts, from random number
  generators (the loader's own generator, or torch's global one). The loop records their states
  at each epoch start; to resume mid-epoch it restores them, draws the same order again and skips
  the batches already trained on.
- Evaluation restores every generator it touched, so how often the loop evaluates never changes
  which batches or dropout masks training sees.
- A checkpoint stores the states of torch's, Python's and NumPy's generators and of both loaders'
  generators; they are restored last, after the data position is rebuilt.

Under torchrun (see ``llmcourse.distributed``) the same loop trains with DistributedDataParallel:
it wraps the model, averages the reported losses over the processes, lets rank 0 alone show
progress and write checkpoints, and stores every process' generator states.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from llmcourse.checkpoints import load_checkpoint, save_checkpoint
from llmcourse.distributed import (
    average_over_processes,
    barrier,
    current_context,
    gather_from_processes,
    unwrap_model,
    wrap_model,
)
from llmcourse.errors import ConfigError, TrainingError
from llmcourse.model import GPT, IGNORE_INDEX, GPTConfig, count_parameters
from llmcourse.model_state import eval_mode, model_device
from llmcourse.schedules import warmup_cosine_scheduler
from llmcourse.tokenizers.files import Tokenizer

Batch = Sequence[torch.Tensor]  # (inputs, targets), each (B, T) int64


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or another KeyboardInterrupt) stopped ``train``: how far the run got and which
    of its steps the checkpoint on disk holds.

    ``steps_done`` optimizer steps of ``total_steps`` were done; ``checkpoint_step`` is the step
    of the run's last complete checkpoint in ``checkpoint_dir`` (None when the run wrote none,
    or saves nowhere); ``checkpoint_every`` is the run's setting. Still a KeyboardInterrupt, so
    code that catches those keeps working."""

    def __init__(
        self,
        steps_done: int,
        total_steps: int,
        checkpoint_dir: str | os.PathLike[str] | None,
        checkpoint_step: int | None,
        checkpoint_every: int | None = None,
    ):
        self.steps_done = steps_done
        self.total_steps = total_steps
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_step = checkpoint_step
        self.checkpoint_every = checkpoint_every
        if checkpoint_step is not None:
            where = (f"the last checkpoint, of step {checkpoint_step}, is in {checkpoint_dir}; "
                     f"continue with train(..., resume_from={str(checkpoint_dir)!r})")
        else:
            where = "no checkpoint of this run was written"
        super().__init__(f"training interrupted after step {steps_done} of {total_steps}; {where}")


# ---------------------------------------------------------------------------------------------
# Loss and perplexity


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
        with torch.no_grad(), _autocast(autocast_dtype, device):
            for inputs, targets in tqdm(batches, desc="evaluating", disable=not progress):
                targets = targets.to(device)
                _, loss = model(inputs.to(device), targets)
                losses.append(loss.item())
                if math.isnan(losses[-1]):
                    _check_has_targets(targets, "an evaluation batch")
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


# ---------------------------------------------------------------------------------------------
# Memory


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


def _out_of_memory_error(model: nn.Module, batch: Batch, error: BaseException
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


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass
class TrainingConfig:
    """Settings of a training run. Give exactly one of ``max_steps`` and ``epochs``.

    - ``learning_rate`` is the peak rate: reached after ``warmup_steps`` linear steps, then
      decayed along a cosine to ``learning_rate * min_lr_ratio`` at the last step
      (``warmup_steps=0, min_lr_ratio=1.0`` keeps it constant).
    - ``weight_decay`` applies to matrices and embeddings only, not to biases and LayerNorm.
    - ``grad_clip`` caps the global gradient norm (None: no clipping).
    - Every ``eval_every`` steps, and after the last one, the loss is measured on
      ``eval_batches`` batches of the training and the validation loader (None: all of them).
    - ``seed`` seeds dropout and reseeds the loaders' generators, so it alone fixes the batch order
      (a ``distributed_loader`` draws its order from the seed it was given).
    - ``autocast_dtype=torch.bfloat16`` runs forward pass and loss in bfloat16 autocast
      (weights and optimizer stay float32); None trains in float32.
    - ``fused_optimizer``: True requires the fused AdamW kernel, False never uses it, None uses
      it when the parameters' device supports it.
    - ``checkpoint_dir``: where to save a checkpoint every ``checkpoint_every`` steps (None: only
      after the last step); each save replaces the previous one.
    """

    learning_rate: float = 4e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    max_steps: int | None = None
    epochs: int | None = None
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    eval_every: int = 100
    eval_batches: int | None = 10
    seed: int = 0
    autocast_dtype: torch.dtype | None = None
    fused_optimizer: bool | None = None
    progress: bool = True
    checkpoint_every: int | None = None
    checkpoint_dir: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        if (self.max_steps is None) == (self.epochs is None):
            raise ConfigError(
                "give exactly one of max_steps and epochs (the run's length), got "
                f"max_steps={self.max_steps}, epochs={self.epochs}"
            )
        _require(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _require(all(0 <= b < 1 for b in self.betas), f"betas must lie in [0, 1), got {self.betas}")
        _require(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _require(
            0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}"
        )
        for name in ("max_steps", "epochs", "eval_batches", "checkpoint_every"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"{name} must be >= 1 or None, got {value}")
        _require(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        _require(
            self.grad_clip is None or self.grad_clip > 0,
            f"grad_clip must be > 0 or None, got {self.grad_clip}",
        )
        _require(
            self.autocast_dtype in (None, torch.bfloat16),
            f"autocast_dtype must be None or torch.bfloat16, got {self.autocast_dtype} "
            "(float16 would need loss scaling, which this loop does not do)",
        )
        _require(
            self.checkpoint_every is None or self.checkpoint_dir is not None,
            "checkpoint_every needs a checkpoint_dir to save into",
        )

    def total_steps(self, batches_per_epoch: int) -> int:
        """The number of optimizer steps of the run."""
        if self.max_steps is not None:
            return self.max_steps
        return self.epochs * batches_per_epoch

    def run_settings(self) -> dict[str, Any]:
        """The settings that decide the losses of a run (a resumed run must share them), as
        plain values. Evaluation, progress and checkpoint settings do not change the losses."""
        ignored = {"eval_every", "eval_batches", "progress", "checkpoint_every", "checkpoint_dir"}
        settings = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ignored}
        settings["betas"] = list(self.betas)
        settings["autocast_dtype"] = str(self.autocast_dtype) if self.autocast_dtype else None
        return settings


FINE_TUNING_SETTINGS: dict[str, Any] = dict(
    learning_rate=5e-5,
    weight_decay=0.1,
    warmup_steps=0,
    min_lr_ratio=1.0,
    grad_clip=None,
    eval_every=5,
    eval_batches=5,
    seed=123,
)


def fine_tuning_config(epochs: int, **settings: Any) -> TrainingConfig:
    """The book's fine-tuning recipe as a ``TrainingConfig`` of ``epochs`` epochs: AdamW at a
    constant learning rate of 5e-5 (no warmup, no decay), weight decay 0.1, no gradient
    clipping, the losses measured every 5 steps on 5 batches, seed 123 (``FINE_TUNING_SETTINGS``).
    Unlike the book, weight decay applies to matrices and embeddings only. ``settings``
    override any field (``learning_rate``, ``eval_every``, ``autocast_dtype``,
    ``checkpoint_dir`` ...)."""
    return TrainingConfig(epochs=epochs, **{**FINE_TUNING_SETTINGS, **settings})


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# ---------------------------------------------------------------------------------------------
# Optimizer


def weight_decay_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split the trainable parameters into (decayed, not decayed).

    Matrices and embedding tables (2-D and up) are decayed; biases and LayerNorm gains and shifts
    (1-D) are not: shrinking them towards zero has no regularising effect worth having. A tied
    matrix appears once.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [p for p in trainable if p.dim() >= 2], [p for p in trainable if p.dim() < 2]


def make_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (see ``weight_decay_groups``),
    using the fused kernel (one pass over all parameters) as ``config.fused_optimizer`` asks."""
    decayed, not_decayed = weight_decay_groups(model)
    groups = [
        {"params": params, "weight_decay": decay}
        for params, decay in ((decayed, config.weight_decay), (not_decayed, 0.0))
        if params
    ]
    fused = _choose_fused(config.fused_optimizer, decayed + not_decayed)
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.betas, fused=fused)


def fused_adamw_unsupported_reason(parameters: Iterable[torch.Tensor]) -> str | None:
    """Why the fused AdamW kernel cannot update these parameters, or None when it can.

    Tries one fused step on a one-element tensor of each (device, dtype) pair present.
    """
    for device, dtype in sorted({(p.device, p.dtype) for p in parameters}, key=str):
        probe = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
        probe.grad = torch.zeros_like(probe)
        try:
            torch.optim.AdamW([probe], fused=True).step()
        except RuntimeError as error:
            return f"fused AdamW does not support {dtype} parameters on {device} ({error})"
    return None


def _choose_fused(requested: bool | None, parameters: list[nn.Parameter]) -> bool:
    if requested is False:
        return False
    reason = fused_adamw_unsupported_reason(parameters)
    if reason is None:
        return True
    if requested:
        raise ConfigError(f"{reason}; set fused_optimizer=None to fall back to the default")
    warnings.warn(f"using the default AdamW: {reason}", RuntimeWarning, stacklevel=3)
    return False


# ---------------------------------------------------------------------------------------------
# Random number generator states


def rng_states(*loaders: object) -> dict[str, Any]:
    """The states of every random number generator training draws from: torch's (CPU and CUDA),
    Python's, NumPy's, and each loader's own ``generator`` (None where it has none).

    Plain tensors, lists and numbers, so a checkpoint holding them loads with weights_only=True.
    """
    version, internal, gauss_next = random.getstate()
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "keys": keys.tolist(),
            "position": position,
            "has_gauss": has_gauss,
            "cached_gaussian": cached_gaussian,
        },
        "loaders": [_state_of(_generator_of(loader)) for loader in loaders],
    }


def set_rng_states(states: dict[str, Any], *loaders: object) -> None:
    """Restore states from ``rng_states`` (the loaders in the same order)."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    python = states["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    numpy = states["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np.array(numpy["keys"], dtype=np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    for loader, state in zip(loaders, states["loaders"], strict=True):
        generator = _generator_of(loader)
        if generator is not None and state is not None:
            generator.set_state(state)


@contextmanager
def preserved_rng(*loaders: object) -> Iterator[None]:
    """Run a block, then put every generator (including the loaders') back as it was."""
    states = rng_states(*loaders)
    try:
        yield
    finally:
        set_rng_states(states, *loaders)


def _generator_of(loader: object) -> torch.Generator | None:
    return getattr(loader, "generator", None)


def _state_of(generator: torch.Generator | None) -> torch.Tensor | None:
    return generator.get_state() if generator is not None else None


def _seed_everything(seed: int, loaders: Iterable[object], rank: int) -> None:
    torch.manual_seed(seed + rank)  # each process of a distributed run its own dropout masks
    for loader in loaders:
        generator = _generator_of(loader)
        if generator is not None:
            generator.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# The stream of training batches


class BatchStream:
    """The training batches, epoch after epoch, keeping the position so a run can resume.

    Before each epoch it calls ``set_epoch(epoch)`` on samplers that have it (a
    ``DistributedSampler`` derives its order from it) and records the generator states that the
    epoch's shuffled order is drawn from.
    """

    def __init__(self, loader: Iterable[Batch]):
        self.loader = loader
        self.batches_per_epoch = _batches_per_epoch(loader)
        self.epoch = 0
        self.batch_in_epoch = 0
        self.epoch_start_rng: dict[str, Any] | None = None
        self._iterator: Iterator[Batch] | None = None

    def next_batch(self) -> Batch:
        if self._iterator is None:
            self._start_epoch()
        try:
            batch = next(self._iterator)
        except StopIteration:
            raise TrainingError(
                f"the training loader stopped after {self.batch_in_epoch} batches although its "
                f"len() is {self.batches_per_epoch}"
            ) from None
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.batches_per_epoch:
            self.epoch, self.batch_in_epoch, self._iterator = self.epoch + 1, 0, None
        return batch

    def _start_epoch(self) -> None:
        set_epoch = getattr(getattr(self.loader, "sampler", None), "set_epoch", None)
        if set_epoch is not None:
            set_epoch(self.epoch)
        self.epoch_start_rng = rng_states(self.loader)
        self._iterator = iter(self.loader)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "batches_per_epoch": self.batches_per_epoch,
            "epoch_start_rng": self.epoch_start_rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at a saved position: replay the epoch's start and skip the batches already
        used. Changes the generator states; restore the run's own states afterwards."""
        if state["batches_per_epoch"] != self.batches_per_epoch:
            raise TrainingError(
                f"the training loader has {self.batches_per_epoch} batches per epoch, but the "
                f"checkpointed run had {state['batches_per_epoch']}; use the same data, "
                "batch size and drop_last to resume"
            )
        self.epoch, self.batch_in_epoch = state["epoch"], 0
        if state["batch_in_epoch"] == 0:
            return
        set_rng_states(state["epoch_start_rng"], self.loader)
        for _ in range(state["batch_in_epoch"]):
            self.next_batch()


def _batches_per_epoch(loader: Iterable[Batch]) -> int:
    try:
        count = len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise TrainingError(
            "the training loader must have a len() (a DataLoader over a map-style dataset) so "
            "the loop knows where each epoch ends"
        ) from None
    if count < 1:
        raise TrainingError(
            "the training loader yields no batches; use more data or a smaller batch"
        )
    return count


# ---------------------------------------------------------------------------------------------
# History and callbacks


@dataclass
class EvalRecord:
    """One evaluation: mean losses (nats per token) after optimizer step ``step``; ``lr`` is the
    learning rate of that step; ``val_loss`` is None when training has no validation loader.
    ``val_bits_per_byte`` is the validation loss in bits per byte of text, when the validation
    data knows its bytes per token (see ``bits_per_byte``)."""

    step: int
    tokens_seen: int
    train_loss: float
    val_loss: float | None
    lr: float
    val_bits_per_byte: float | None = None


@dataclass
class TrainingHistory:
    """What a run did: the loss and learning rate of every step (``steps`` counts from 1), the
    evaluations, the number of tokens trained on and the wall-clock time taken (evaluation and
    checkpointing included)."""

    steps: list[int] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    evals: list[EvalRecord] = field(default_factory=list)
    tokens_seen: int = 0
    elapsed_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def record_step(self, loss: float, lr: float, tokens: int) -> None:
        self.steps.append(len(self.steps) + 1)
        self.train_losses.append(loss)
        self.learning_rates.append(lr)
        self.tokens_seen += tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingHistory:
        evals = [EvalRecord(**record) for record in values["evals"]]
        return cls(**{**values, "evals": evals})


@dataclass(frozen=True)
class StepState:
    """The loop's state after an optimizer step, as callbacks see it."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    tokens_seen: int
    elapsed_seconds: float


class TrainingCallback:
    """Hooks the training loop calls. Subclass and override the ones you need; any object with
    some of these methods works too (a live plot only needs ``on_step`` or ``on_eval``)."""

    def on_step(self, state: StepState) -> None:
        """After every optimizer step."""

    def on_eval(self, record: EvalRecord) -> None:
        """After every evaluation."""

    def on_end(self, history: TrainingHistory) -> None:
        """Once, when the last step is done."""


def _notify(callbacks: Iterable[object], event: str, payload: object) -> None:
    for callback in callbacks:
        method = getattr(callback, event, None)
        if method is not None:
            method(payload)


# ---------------------------------------------------------------------------------------------
# The training loop


def train(
    model: GPT,
    train_loader: Iterable[Batch],
    val_loader: Iterable[Batch] | None,
    config: TrainingConfig,
    *,
    callbacks: Iterable[object] = (),
    resume_from: str | os.PathLike[str] | None = None,
    tokenizer: Tokenizer | None = None,
    run_settings: Mapping[str, Any] | None = None,
) -> TrainingHistory:
    """Train ``model`` on ``train_loader``'s (inputs, targets) batches as ``config`` says.

    With ``resume_from`` (a checkpoint directory saved by an earlier run with the same settings,
    data and model shape) it continues that run: the model's weights, the optimizer, schedule,
    data position, history and random states are restored, and the remaining steps give exactly
    the losses the uninterrupted run would have given. Returns the whole run's history.
    ``tokenizer``, the one that made the data, is saved with every checkpoint.
    ``run_settings`` (plain JSON values) describe what else decides the run, such as the data
    (a fingerprint of its token ids), the tokenizer and the batch size; they are saved with
    every checkpoint beside ``config.run_settings()``, and resuming compares both with the
    checkpoint's, raising ``TrainingError`` that names each difference.

    A KeyboardInterrupt (Ctrl-C) comes out as ``TrainingInterrupted``, which says which step the
    last checkpoint holds. A step that runs out of memory raises ``TrainingError``
    with an estimate of what the step needs (``estimate_training_memory``); a batch whose
    targets are all ignored (-100) raises ``TrainingError`` instead of training on a NaN loss.

    In a process group set up by ``init_distributed`` it trains ``model`` (which may already be
    wrapped in DDP) with DistributedDataParallel; give it loaders from ``distributed_loader``.
    Callbacks run in every process: check ``is_main_process()`` in those that should act once.
    """
    callbacks = list(callbacks)
    loaders = (train_loader, val_loader)
    context = current_context()
    trained = wrap_model(model, context)  # DDP in a multi-process run, the model itself otherwise
    model = unwrap_model(trained)
    stream = BatchStream(train_loader)
    total_steps = config.total_steps(stream.batches_per_epoch)
    optimizer = make_optimizer(model, config)
    scheduler = warmup_cosine_scheduler(
        optimizer,
        warmup_steps=config.warmup_steps,
        total_steps=total_steps,
        min_lr_ratio=config.min_lr_ratio,
    )
    if resume_from is None:
        history = TrainingHistory()
        _seed_everything(config.seed, loaders, context.rank)
    else:
        history = _resume(resume_from, model, optimizer, scheduler, stream, config, loaders,
                          run_settings)
    device = model_device(model)
    start = time.perf_counter() - history.elapsed_seconds
    # The step the checkpoint on disk holds: the resumed one when this run saves where it
    # resumed from; then each save that completes.
    saved_step = (
        len(history.steps)
        if resume_from is not None and config.checkpoint_dir is not None
        and _same_path(resume_from, config.checkpoint_dir)
        else None
    )
    bar = tqdm(
        total=total_steps,
        initial=len(history.steps),
        desc="training",
        unit="step",
        disable=not (config.progress and context.is_main),
    )
    try:
        with bar:
            while len(history.steps) < total_steps:
                epoch = stream.epoch
                batch = stream.next_batch()
                try:
                    loss, lr = train_step(trained, optimizer, scheduler, batch, config, device)
                except RuntimeError as error:  # torch.OutOfMemoryError is one
                    if not is_out_of_memory(error):
                        raise
                    raise _out_of_memory_error(model, batch, error) from None
                loss = average_over_processes(loss)  # the global batch's loss
                history.record_step(loss, lr, tokens=batch[0].numel() * context.world_size)
                history.elapsed_seconds = time.perf_counter() - start
                step = len(history.steps)
                _notify(callbacks, "on_step", _step_state(history, total_steps, epoch))
                if step % config.eval_every == 0 or step == total_steps:
                    record = _evaluate(model, loaders, config, history)
                    _notify(callbacks, "on_eval", record)
                bar.update()
                bar.set_postfix(_progress_summary(history))
                if config.checkpoint_dir is not None and _checkpoint_due(config, step,
                                                                         total_steps):
                    _save_run(model, optimizer, scheduler, stream, history, config, loaders,
                              tokenizer, run_settings)
                    saved_step = step
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            len(history.steps), total_steps, config.checkpoint_dir, saved_step,
            config.checkpoint_every,
        ) from None
    _notify(callbacks, "on_end", history)
    return history


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: Batch,
    config: TrainingConfig,
    device: torch.device,
) -> tuple[float, float]:
    """One optimizer update on one batch; returns (loss before the update, learning rate used)."""
    model.train()
    inputs, targets = (tensor.to(device) for tensor in batch)
    lr = optimizer.param_groups[0]["lr"]
    with _autocast(config.autocast_dtype, device):
        _, loss = model(inputs, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    scheduler.step()
    value = loss.item()  # waits for the device; the NaN check below adds no other wait
    if math.isnan(value):
        _check_has_targets(targets, "a training batch")
    return value, lr


def _check_has_targets(targets: torch.Tensor, what: str) -> None:
    """Explain a NaN loss that comes from a batch whose targets are all ignored (-100): the
    mean over no target is 0 / 0. Called only once the loss is NaN, so it costs nothing else."""
    if not (targets != IGNORE_INDEX).any():
        raise TrainingError(
            f"{what} has no target to learn from: all its {targets.numel()} targets are "
            f"{IGNORE_INDEX} (ignored), so its loss is 0 / 0 = NaN; every token is padding, or "
            "prompt under prompt masking. Drop the examples that have no token to predict, or "
            "make room for their answers (a longer maximum length, a shorter prompt)"
        )


def _same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _autocast(dtype: torch.dtype | None, device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def _progress_summary(history: TrainingHistory) -> dict[str, str]:
    """The latest step's loss and the latest validation loss, for the progress bar."""
    summary = {"loss": f"{history.train_losses[-1]:.3f}"}
    if history.evals and history.evals[-1].val_loss is not None:
        summary["val_loss"] = f"{history.evals[-1].val_loss:.3f}"
    if history.evals and history.evals[-1].val_bits_per_byte is not None:
        summary["val_bpb"] = f"{history.evals[-1].val_bits_per_byte:.3f}"
    return summary


def _step_state(history: TrainingHistory, total_steps: int, epoch: int) -> StepState:
    return StepState(
        step=history.steps[-1],
        total_steps=total_steps,
        epoch=epoch,
        loss=history.train_losses[-1],
        lr=history.learning_rates[-1],
        tokens_seen=history.tokens_seen,
        elapsed_seconds=history.elapsed_seconds,
    )


def _evaluate(
    model: nn.Module,
    loaders: tuple[Iterable[Batch], Iterable[Batch] | None],
    config: TrainingConfig,
    history: TrainingHistory,
) -> EvalRecord:
    """Measure the losses and append the record to the history; no generator state changes.

    In a distributed run every process measures its share of the batches and the losses are
    averaged over the processes."""
    with preserved_rng(*loaders):
        losses = [
            evaluate_loss(model, loader, config.eval_batches, autocast_dtype=config.autocast_dtype)
            if loader is not None
            else None
            for loader in loaders
        ]
    train_loss, val_loss = (
        average_over_processes(loss) if loss is not None else None for loss in losses
    )
    bytes_per_token = bytes_per_token_of(loaders[1])
    record = EvalRecord(
        step=history.steps[-1],
        tokens_seen=history.tokens_seen,
        train_loss=train_loss,
        val_loss=val_loss,
        lr=history.learning_rates[-1],
        val_bits_per_byte=(
            bits_per_byte(val_loss, bytes_per_token)
            if val_loss is not None and bytes_per_token is not None
            else None
        ),
    )
    history.evals.append(record)
    return record


def _checkpoint_due(config: TrainingConfig, step: int, total_steps: int) -> bool:
    periodic = config.checkpoint_every is not None and step % config.checkpoint_every == 0
    return periodic or step == total_steps


def _save_run(
    model: GPT,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    stream: BatchStream,
    history: TrainingHistory,
    config: TrainingConfig,
    loaders: tuple[object, ...],
    tokenizer: Tokenizer | None,
    run_settings: Mapping[str, Any] | None,
) -> None:
    """Rank 0 writes the checkpoint, with every process' generator states; the others wait."""
    rng_by_rank = gather_from_processes(rng_states(*loaders))
    if current_context().is_main:
        training_state = {
            "settings": config.run_settings(),
            "run": dict(run_settings) if run_settings is not None else None,
            "history": history.to_dict(),
            "data": stream.state_dict(),
            "rng": rng_by_rank[0],
            "rng_of_other_ranks": rng_by_rank[1:],
        }
        save_checkpoint(config.checkpoint_dir, model, optimizer, scheduler, training_state,
                        tokenizer=tokenizer)
    barrier()


def _resume(
    path: str | os.PathLike[str],
    model: GPT,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    stream: BatchStream,
    config: TrainingConfig,
    loaders: tuple[object, ...],
    run_settings: Mapping[str, Any] | None,
) -> TrainingHistory:
    """Load a checkpoint into the run's objects; returns the history so far. Every process of a
    distributed run loads the same checkpoint and gets back its own generator states."""
    checkpoint = load_checkpoint(path, device=model_device(model))
    state = checkpoint.training_state
    if state is None or checkpoint.optimizer_state is None or checkpoint.scheduler_state is None:
        raise TrainingError(
            f"the checkpoint at {path} holds a model only, not the state needed to resume "
            "training; load it with load_model, or resume from a checkpoint the loop saved"
        )
    _check_same_run(model, checkpoint.model, config, run_settings, state, path)
    rng_by_rank = [state["rng"], *state.get("rng_of_other_ranks", [])]
    context = current_context()
    _check_same_world_size(len(rng_by_rank), context.world_size, path)
    model.load_state_dict(checkpoint.model.state_dict())
    optimizer.load_state_dict(checkpoint.optimizer_state)
    scheduler.load_state_dict(checkpoint.scheduler_state)
    stream.load_state_dict(state["data"])
    set_rng_states(rng_by_rank[context.rank], *loaders)  # last: the data position drew numbers
    return TrainingHistory.from_dict(state["history"])


def _check_same_world_size(
    saved_world_size: int, world_size: int, path: str | os.PathLike[str]
) -> None:
    if saved_world_size != world_size:
        raise TrainingError(
            f"the checkpoint at {path} was saved by a run of {saved_world_size} process(es), "
            f"but this run has {world_size}; resume with the same number "
            f"(torchrun --nproc_per_node={saved_world_size}, or no torchrun for 1) so that "
            "every process gets back its random state"
        )


def _check_same_run(
    model: GPT,
    saved_model: GPT,
    config: TrainingConfig,
    run_settings: Mapping[str, Any] | None,
    state: dict[str, Any],
    path: str | os.PathLike[str],
) -> None:
    """Raise ``TrainingError`` naming every setting in which this run differs from the
    checkpointed one (training settings, then ``run_settings``), or the model's config.
    A checkpoint saved without run settings (an older one) is resumed with a printed note."""
    settings, saved = config.run_settings(), dict(state["settings"])
    if run_settings is not None:
        if state.get("run") is None:
            if current_context().is_main:
                print(f"note: {path} was saved without a fingerprint of its data and run "
                      "settings (an older checkpoint); resuming without checking them",
                      file=sys.stderr, flush=True)
        else:
            settings.update(run_settings)
            saved.update(state["run"])
    changed = sorted(name for name in settings if settings[name] != saved.get(name))
    if changed:
        differences = "; ".join(
            f"{name}: saved {saved.get(name)!r}, now {settings[name]!r}" for name in changed
        )
        raise TrainingError(
            f"cannot resume from {path}: this run differs from the checkpointed one "
            f"({differences}); resume with the checkpointed run's settings and data, or start "
            "a new run (--overwrite, or another --out)"
        )
    if model.config != saved_model.config:
        raise TrainingError(
            f"the model's config {model.config} differs from the checkpoint's "
            f"{saved_model.config} at {path}; build the model with the checkpoint's config"
        )
