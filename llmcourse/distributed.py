"""Multi-process training with torchrun and DistributedDataParallel (DDP).

``torchrun --nproc_per_node=N script.py`` starts N copies of a script and tells each one, through
environment variables, who it is: ``RANK`` (0 to N-1), ``LOCAL_RANK`` (its number on this
machine, which picks its GPU), ``WORLD_SIZE`` (N) and ``MASTER_ADDR``/``MASTER_PORT`` (where the
processes meet). Every process then

1. joins the process group (``init_distributed``): NCCL between GPUs, gloo between CPU processes;
2. holds a whole copy of the model, wrapped in DDP (``wrap_model``): during ``backward()`` DDP
   averages the gradients over the processes, so every copy takes the same optimizer step and
   the copies stay identical;
3. reads its own share of every batch (``distributed_loader``).

The number of processes changes how the work is split, not what is computed:

- The *global* batch (the examples of one optimizer step, over all processes) is the same for
  any N: each process reads global_batch_size / N of its examples. DDP's average of the
  per-process mean-loss gradients is then the gradient of the mean loss over the global batch,
  as in one process, up to float rounding. (This needs the same number of target tokens in
  every share: true for fixed-length windows, not for batches with masked, ignored targets.)
- ``train`` reports the loss of every step and every evaluation averaged over the processes
  (an all-reduce), so all processes hold the same history, equal to the one-process history up
  to float rounding. Evaluation is shared too: each process measures its share of the same
  batches.
- Dropout: process r seeds torch with ``seed + r``, so the processes drop different units of
  their different examples, and process 0 draws what a one-process run draws. With dropout on,
  a run of N processes therefore differs from a one-process run in its dropout masks; with
  dropout 0 it differs by float rounding only.
- Only rank 0 shows the progress bar, prints and writes checkpoints; the others wait at a
  barrier until the checkpoint is complete. A checkpoint holds the plain model's weights (no
  ``module.`` prefix) and every process' random state, and resumes with the same N.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from llmcourse.errors import ConfigError, DataError

BACKENDS = ("nccl", "gloo")


@dataclass(frozen=True)
class DistributedContext:
    """Who this process is in a multi-process run.

    ``rank`` counts the processes from 0 (rank 0 is the main one), ``world_size`` is their
    number, ``local_rank`` the process' number on its machine, ``device`` where it trains
    (``cuda:LOCAL_RANK`` under NCCL, the CPU under gloo) and ``backend`` "nccl", "gloo", or None
    for a single process (no process group).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ---------------------------------------------------------------------------------------------
# The process group


def init_distributed(backend: str | None = None) -> DistributedContext:
    """Join the process group torchrun describes in the environment; returns this process' place.

    Without torchrun (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) nothing is set up and the
    single-process context comes back, so a script runs unchanged with or without torchrun.
    ``backend`` None picks NCCL when CUDA GPUs are present and gloo otherwise. Under NCCL each
    process takes GPU ``LOCAL_RANK`` as its current device. Calling it again returns the context
    of the group already set up.
    """
    if dist.is_initialized():
        return current_context()
    world_size = _environment_int("WORLD_SIZE", default=1)
    if world_size <= 1:
        return current_context()
    required = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    missing = [name for name in required if name not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE is {world_size} but {', '.join(missing)} not set; start the processes "
            "with torchrun --nproc_per_node=N, which sets all of them"
        )
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    device = _device_for(backend, _environment_int("LOCAL_RANK"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=_environment_int("RANK"), world_size=world_size)
    return current_context()


def current_context() -> DistributedContext:
    """The context of the process group ``init_distributed`` set up; without one, a single
    process on the first GPU if there is one, else on the CPU."""
    if not dist.is_initialized():
        return DistributedContext(device=_single_process_device())
    backend = dist.get_backend()
    if backend == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def is_main_process() -> bool:
    """True in rank 0, and in a single process: the one that logs and saves."""
    return current_context().is_main


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if this process is in one. Call it once, when training is done."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _environment_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(
            f"the environment variable {name} must be an integer, got {value!r}; let torchrun "
            "set it"
        ) from None


def _device_for(backend: str, local_rank: int) -> torch.device:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    if backend == "gloo":
        return torch.device("cpu")
    gpus = torch.cuda.device_count()
    if local_rank >= gpus:
        raise ConfigError(
            f"NCCL needs one GPU per process, but LOCAL_RANK is {local_rank} and this machine "
            f"has {gpus} GPU(s); start at most {gpus} processes per machine "
            "(torchrun --nproc_per_node), or use the gloo backend on CPUs"
        )
    return torch.device("cuda", local_rank)


def _single_process_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# The model


def wrap_model(model: nn.Module, context: DistributedContext) -> nn.Module:
    """The model, moved to the context's device and wrapped in DDP, in a multi-process run.

    In a single process the model comes back unchanged, where it is; a model already wrapped in
    DDP comes back as it is. DDP copies rank 0's weights to every process when it wraps.
    """
    if not context.is_distributed or isinstance(model, DistributedDataParallel):
        return model
    model.to(context.device)
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper (the model itself when not wrapped): the one to save,
    so that the weights' names carry no ``module.`` prefix."""
    return model.module if isinstance(model, DistributedDataParallel) else model


# ---------------------------------------------------------------------------------------------
# Values shared between processes


def average_over_processes(value: float) -> float:
    """The mean of ``value`` over all processes (all-reduce); ``value`` itself in one process."""
    context = current_context()
    if not context.is_distributed:
        return value
    total = torch.tensor(value, dtype=torch.float64, device=context.device)
    dist.all_reduce(total)
    return total.item() / context.world_size


def gather_from_processes(value: Any) -> list[Any]:
    """Every process' ``value``, in rank order, in every process; ``[value]`` in one process.

    The values travel pickled between the processes of this run; use it for small objects.
    """
    context = current_context()
    if not context.is_distributed:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


# ---------------------------------------------------------------------------------------------
# The data


class GlobalBatchSampler(Sampler[int]):
    """The indices one process reads: its slice of every global batch of an epoch.

    An epoch's order is a permutation of the ``dataset_size`` indices drawn from (seed, epoch)
    (0, 1, 2... without ``shuffle``). Global batch k is ``order[k*G : (k+1)*G]`` for a global
    batch size G, and process r reads its r-th contiguous slice of G / world_size indices. The
    slices of all processes put together are the global batch, whatever the number of processes.

    With ``drop_last`` a final global batch shorter than G is dropped. Without it, that batch is
    padded with indices from the start of the order until it splits evenly among the processes
    (as ``DistributedSampler`` does); only that batch can then depend on the number of processes.
    Call ``set_epoch`` before each epoch (the training loop does) to get a new order.
    """

    def __init__(
        self,
        dataset_size: int,
        global_batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.per_process_batch_size = per_process_batch_size(global_batch_size, world_size)
        self.dataset_size = dataset_size
        self.global_batch_size = global_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_order(self) -> list[int]:
        """The epoch's order of all the dataset's indices; the same in every process."""
        if not self.shuffle:
            return list(range(self.dataset_size))
        # NumPy mixes the pair (seed, epoch) into one generator seed: unlike seed + epoch, no two
        # pairs share an order by accident.
        generator = np.random.default_rng([self.seed, self.epoch])
        return generator.permutation(self.dataset_size).tolist()

    def global_batches(self) -> list[list[int]]:
        """The epoch's global batches of indices (a short last one padded, see above)."""
        order, size = self.epoch_order(), self.global_batch_size
        batches = [order[start : start + size] for start in range(0, len(order), size)]
        if batches and len(batches[-1]) < size:
            if self.drop_last:
                batches.pop()
            else:
                padding = -len(batches[-1]) % self.world_size
                batches[-1] += [order[i % len(order)] for i in range(padding)]
        return batches

    def __iter__(self) -> Iterator[int]:
        for batch in self.global_batches():
            share = len(batch) // self.world_size
            yield from batch[self.rank * share : (self.rank + 1) * share]

    def __len__(self) -> int:
        full, rest = divmod(self.dataset_size, self.global_batch_size)
        last_share = 0 if self.drop_last else math.ceil(rest / self.world_size)
        return full * self.per_process_batch_size + last_share


def per_process_batch_size(global_batch_size: int, world_size: int) -> int:
    """global_batch_size / world_size: the examples each process reads per step."""
    if global_batch_size < 1:
        raise ConfigError(f"the global batch size must be >= 1, got {global_batch_size}")
    if global_batch_size % world_size:
        raise ConfigError(
            f"a global batch of {global_batch_size} examples does not split evenly among "
            f"{world_size} processes; choose a global batch size that is a multiple of "
            f"{world_size} (each process reads global batch size / number of processes)"
        )
    return global_batch_size // world_size


def distributed_loader(
    dataset: Dataset,
    global_batch_size: int,
    context: DistributedContext,
    *,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
) -> DataLoader:
    """A loader of this process' share of every global batch (see ``GlobalBatchSampler``).

    Each batch holds global_batch_size / world_size examples; step k's batches of all processes
    together are the k-th global batch, the same examples in any number of processes. In one
    process it batches like ``create_dataloader``, with the order drawn from (seed, epoch).
    """
    if drop_last and len(dataset) < global_batch_size:
        raise DataError(
            f"the dataset has {len(dataset)} examples, fewer than one global batch of "
            f"{global_batch_size}, and drop_last=True would leave no batch at all; lower the "
            "batch size or the stride"
        )
    sampler = GlobalBatchSampler(
        len(dataset),
        global_batch_size,
        rank=context.rank,
        world_size=context.world_size,
        seed=seed,
        shuffle=shuffle,
        drop_last=drop_last,
    )
    return DataLoader(
        dataset,
        batch_size=sampler.per_process_batch_size,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
    )
