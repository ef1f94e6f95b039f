"""The optimizer of every training run: AdamW with weight decay on matrices only."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from llmcourse.errors import ConfigError

if TYPE_CHECKING:
    from llmcourse.training import TrainingConfig


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
