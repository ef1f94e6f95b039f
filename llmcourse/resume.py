"""Exact resumption of a training run: random states, the data position, the saved state.

A checkpoint saved at step k lets a fresh process continue with exactly the losses an
uninterrupted run would have had: same batches in the same order, same dropout masks, bit for
bit.

- The order of an epoch's batches is drawn, when the epoch starts, from random number
  generators (the loader's own generator, or torch's global one). ``BatchStream`` records their
  states at each epoch start; to resume mid-epoch it restores them, draws the same order again
  and skips the batches already trained on.
- ``preserved_rng`` puts back every generator a block touched, so how often the loop evaluates
  never changes which batches or dropout masks training sees.
- ``save_run`` stores the states of torch's, Python's and NumPy's generators and of both
  loaders' generators, for every process of a distributed run; ``resume_run`` restores them
  last, after the data position is rebuilt, once ``check_same_run`` has compared the settings.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from llmcourse.checkpoints import load_checkpoint, save_checkpoint
from llmcourse.distributed import barrier, current_context, gather_from_processes
from llmcourse.errors import TrainingError
from llmcourse.model import GPT
from llmcourse.model_state import model_device
from llmcourse.sliding_window import Batch
from llmcourse.tokenizers.files import SavableTokenizer

if TYPE_CHECKING:
    from llmcourse.training import TrainingConfig



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


def seed_everything(seed: int, loaders: Iterable[object], rank: int) -> None:
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
        self.batches_per_epoch = batches_per_epoch(loader)
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


def batches_per_epoch(loader: Iterable[Batch]) -> int:
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


def save_run(
    model: GPT,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    stream: BatchStream,
    history: dict[str, Any],
    config: TrainingConfig,
    loaders: tuple[object, ...],
    tokenizer: SavableTokenizer | None,
    run_settings: Mapping[str, Any] | None,
) -> None:
    """Rank 0 writes the checkpoint, with every process' generator states; the others wait."""
    rng_by_rank = gather_from_processes(rng_states(*loaders))
    if current_context().is_main:
        training_state = {
            "settings": config.run_settings(),
            "run": dict(run_settings) if run_settings is not None else None,
            "history": history,
            "data": stream.state_dict(),
            "rng": rng_by_rank[0],
            "rng_of_other_ranks": rng_by_rank[1:],
        }
        save_checkpoint(config.checkpoint_dir, model, optimizer, scheduler, training_state,
                        tokenizer=tokenizer)
    barrier()


def resume_run(
    path: str | os.PathLike[str],
    model: GPT,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    stream: BatchStream,
    config: TrainingConfig,
    loaders: tuple[object, ...],
    run_settings: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Load a checkpoint into the run's objects; returns the history so far (as saved, a
    ``TrainingHistory.to_dict()``). Every process of a distributed run loads the same checkpoint
    and gets back its own generator states."""
    checkpoint = load_checkpoint(path, device=model_device(model))
    state = checkpoint.training_state
    if state is None or checkpoint.optimizer_state is None or checkpoint.scheduler_state is None:
        raise TrainingError(
            f"the checkpoint at {path} holds a model only, not the state needed to resume "
            "training; load it with load_model, or resume from a checkpoint the loop saved"
        )
    check_same_run(model, checkpoint.model, config, run_settings, state, path)
    rng_by_rank = [state["rng"], *state.get("rng_of_other_ranks", [])]
    context = current_context()
    check_same_world_size(len(rng_by_rank), context.world_size, path)
    model.load_state_dict(checkpoint.model.state_dict())
    optimizer.load_state_dict(checkpoint.optimizer_state)
    scheduler.load_state_dict(checkpoint.scheduler_state)
    stream.load_state_dict(state["data"])
    set_rng_states(rng_by_rank[context.rank], *loaders)  # last: the data position drew numbers
    return state["history"]


def check_same_world_size(
    saved_world_size: int, world_size: int, path: str | os.PathLike[str]
) -> None:
    if saved_world_size != world_size:
        raise TrainingError(
            f"the checkpoint at {path} was saved by a run of {saved_world_size} process(es), "
            f"but this run has {world_size}; resume with the same number "
            f"(torchrun --nproc_per_node={saved_world_size}, or no torchrun for 1) so that "
            "every process gets back its random state"
        )


def check_same_run(
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
