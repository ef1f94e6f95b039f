"""Small facts about a module that many parts of the package need: the device its parameters
live on, a block in which it runs in evaluation mode, and a block under autocast."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the module's first parameter (the course's models keep all on one)."""
    return next(model.parameters()).device


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``model`` in evaluation mode (dropout off), then put it back in the
    mode it was in, also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def autocast(dtype: torch.dtype | None, device: torch.device) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``'s type, or a no-op context when ``dtype`` is None."""
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)
