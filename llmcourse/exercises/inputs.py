"""Seeded random inputs shared by the chapters' checkers.

Every helper takes its own ``torch.Generator`` (``seeded(n)``), so a checker's cases are the same
on every run and the global random state of the learner's notebook is left alone.
"""

from __future__ import annotations

import torch

MAX_GPT2_ID = 50256  # the largest GPT-2 token id (<|endoftext|>)


def seeded(seed: int) -> torch.Generator:
    """A torch random generator with its own seed (the global one is left alone)."""
    return torch.Generator().manual_seed(seed)


def randint(generator: torch.Generator, low: int, high: int) -> int:
    """A random integer in [low, high], both included."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def randn(
    generator: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A tensor of ``shape`` with standard normal values."""
    return torch.randn(*shape, generator=generator, dtype=dtype)


def random_ids(
    generator: torch.Generator, shape: tuple[int, ...], vocab_size: int = MAX_GPT2_ID + 1
) -> torch.Tensor:
    """An int64 tensor of ``shape`` with token ids in [0, vocab_size)."""
    return torch.randint(0, vocab_size, shape, generator=generator)


def random_mask(generator: torch.Generator, n_queries: int, n_keys: int) -> torch.Tensor:
    """A (n_queries, n_keys) bool mask, about half True, with at least one True in every row."""
    mask = torch.rand(n_queries, n_keys, generator=generator) < 0.5
    allowed = torch.randint(0, n_keys, (n_queries,), generator=generator)
    mask[torch.arange(n_queries), allowed] = True
    return mask


def shape_text(tensor: torch.Tensor) -> str:
    """The shape of ``tensor`` as in the chapters' prose: "(2, 3)"."""
    return "(" + ", ".join(str(size) for size in tensor.shape) + ")"
