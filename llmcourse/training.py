"""The training loop: settings, one optimizer step, the run with its history and callbacks.

``train`` runs a fixed number of optimizer steps over a data loader, epoch after epoch, with a
warmup + cosine learning-rate schedule, gradient clipping and a periodic evaluation of the loss
on training and validation batches (``llmcourse.evaluation``). It saves checkpoints from which a
later run continues exactly (``llmcourse.resume``), builds its optimizer with
``llmcourse.optimizer`` and explains an out-of-memory step with ``llmcourse.training_memory``.

Under torchrun (see ``llmcourse.distributed``) the same loop trains with DistributedDataParallel:
it wraps the model, averages the reported losses over the processes, lets rank 0 alone show
progress and write checkpoints, and stores every process' generator states.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from llmcourse.distributed import (
    average_over_processes,
    current_context,
    unwrap_model,
    wrap_model,
)
from llmcourse.errors import ConfigError
from llmcourse.evaluation import bits_per_byte, bytes_per_token_of, check_has_targets, evaluate_loss
from llmcourse.model import GPT
from llmcourse.model_state import autocast, model_device
from llmcourse.optimizer import make_optimizer
from llmcourse.resume import (
    BatchStream,
    preserved_rng,
    resume_run,
    save_run,
    seed_everything,
)
from llmcourse.schedules import warmup_cosine_scheduler
from llmcourse.sliding_window import Batch
from llmcourse.tokenizers.files import SavableTokenizer
from llmcourse.training_memory import is_out_of_memory, out_of_memory_error


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
    tokenizer: SavableTokenizer | None = None,
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
        seed_everything(config.seed, loaders, context.rank)
    else:
        history = TrainingHistory.from_dict(resume_run(
            resume_from, model, optimizer, scheduler, stream, config, loaders, run_settings
        ))
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
                    raise out_of_memory_error(model, batch, error) from None
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
                    save_run(model, optimizer, scheduler, stream, history.to_dict(), config,
                             loaders, tokenizer, run_settings)
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
    with autocast(config.autocast_dtype, device):
        _, loss = model(inputs, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    scheduler.step()
    value = loss.item()  # waits for the device; the NaN check below adds no other wait
    if math.isnan(value):
        check_has_targets(targets, "a training batch")
    return value, lr


def _same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


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
