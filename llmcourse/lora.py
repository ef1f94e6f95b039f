"""Low-rank adaptation (LoRA): fine-tune a large frozen linear layer through a small update.

A linear layer computes ``y = x W^T + b`` with ``W`` of shape (out, in). LoRA freezes ``W`` and
learns the update as a product of two thin matrices,

    y = x W^T + b + scaling * dropout(x) A^T B^T,   A: (rank, in), B: (out, rank),

with ``scaling = alpha / rank``. ``A`` starts random (Kaiming-uniform, as in peft) and ``B`` at
zero, so training starts from exactly the pretrained model. A rank-16 adapter on a 768 x 2304
matrix trains 16 * (768 + 2304) = 49,152 numbers instead of 1,769,472.

``LoRALinear`` is an ``nn.Linear`` that keeps the wrapped layer's ``weight`` and ``bias`` under
their own names, so ``transformer.h.0.attn.c_attn.weight`` keeps its name and pretrained weights
still load by name; the adapter adds ``lora_a`` and ``lora_b`` beside them. After training,
``merge`` folds ``scaling * B A`` into ``W``; ``lora_models.merge_lora`` does it for a whole
model and gives back plain ``nn.Linear`` layers: a model exactly as fast as the original.
Applying LoRA to a model is ``llmcourse.lora_models``; the adapter file is
``llmcourse.lora_adapters``.

The LoRA paper, peft, this module and, since September 2025, the book's code scale by
``alpha / rank``: the same ``alpha`` and ``rank`` give the same update, so the book's
``alpha=16, rank=16`` (a scale of 1) is ``alpha=16, rank=16`` here. The book's appendix as first
published multiplied by ``alpha`` alone: there ``alpha=16, rank=16`` is a scale of 16, that is
``alpha=256, rank=16`` here; the two conventions give the same scale only at rank 1. Parameter
counts are the same either way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.errors import ConfigError


class LoRALinear(nn.Linear):
    """A frozen linear layer plus a trainable low-rank update.

    ``base``'s ``weight`` (out, in) and ``bias`` (out,) become this layer's own (the same tensors,
    frozen); the adapter adds ``lora_a`` (groups * rank, in) and ``lora_b`` (out, rank).

    ``groups`` > 1 splits the output into that many equal slices, each with its own ``A``: an
    adapter on GPT-2's fused query/key/value matrix with ``groups=3`` is exactly three separate
    adapters on three (in, in) projections, as a model with separate query, key and value
    layers (the book's) would get.

    ``disabled`` switches the adapter off (the base layer's output alone); ``merge()`` folds the
    update into ``weight`` and ``unmerge()`` takes it out again.
    """

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, groups: int = 1
    ):
        _check_settings(base, rank, alpha, dropout, groups)
        weight = base.weight
        super().__init__(
            base.in_features, base.out_features, bias=base.bias is not None,
            device="meta", dtype=weight.dtype,
        )
        self.weight = weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank = rank
        self.alpha = alpha
        self.groups = groups
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_a = nn.Parameter(
            torch.empty(groups * rank, self.in_features, device=weight.device, dtype=weight.dtype)
        )
        self.lora_b = nn.Parameter(
            torch.zeros(self.out_features, rank, device=weight.device, dtype=weight.dtype)
        )
        # As peft (and nn.Linear): uniform in +-1/sqrt(in), since the fan-in of A is `in`.
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.merged = False
        self._disabled = False

    @property
    def disabled(self) -> bool:
        """Whether the adapter is switched off (the layer computes ``x W^T + b`` only)."""
        return self._disabled

    @disabled.setter
    def disabled(self, value: bool) -> None:
        if value and self.merged:
            raise ConfigError(
                "cannot disable a merged adapter: its update is inside the weight; call "
                "unmerge() first (disable_adapters(model) does this for you)"
            )
        self._disabled = bool(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)."""
        result = F.linear(x, self.weight, self.bias)
        if self.merged or self._disabled:
            return result
        return result + self.scaling * self.adapter_output(self.lora_dropout(x))

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        """The unscaled update ``x A^T B^T`` (per output group): (..., in) -> (..., out)."""
        hidden = x @ self.lora_a.T  # (..., groups * rank)
        if self.groups == 1:
            return hidden @ self.lora_b.T
        hidden = hidden.unflatten(-1, (self.groups, self.rank))  # (..., G, rank)
        b = self.lora_b.view(self.groups, self.out_features // self.groups, self.rank)
        return torch.einsum("...gr,gor->...go", hidden, b).flatten(-2)  # (..., out)

    def delta_weight(self) -> torch.Tensor:
        """The update ``scaling * B A`` as a (out, in) matrix added to ``weight``."""
        a = self.lora_a.view(self.groups, self.rank, self.in_features)
        b = self.lora_b.view(self.groups, self.out_features // self.groups, self.rank)
        return self.scaling * (b @ a).reshape(self.out_features, self.in_features)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update to ``weight`` (in place); the adapter then costs nothing per token."""
        if self.merged:
            return
        if self._disabled:
            raise ConfigError("cannot merge a disabled adapter; set disabled = False first")
        self.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of ``weight`` again (equal to before ``merge`` up to rounding)."""
        if not self.merged:
            return
        self.weight -= self.delta_weight()
        self.merged = False

    def merged_weight(self) -> torch.Tensor:
        """``weight`` with the update in it, without changing the layer (a new tensor)."""
        with torch.no_grad():
            return self.weight.clone() if self.merged else self.weight + self.delta_weight()

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}{groups}"


def _check_settings(base: nn.Module, rank: int, alpha: float, dropout: float, groups: int) -> None:
    if isinstance(base, LoRALinear):
        raise ConfigError("this layer already has a LoRA adapter; apply LoRA once per layer")
    if not isinstance(base, nn.Linear):
        raise ConfigError(f"LoRA wraps nn.Linear layers, got {type(base).__name__}")
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"rank must be a positive integer, got {rank!r}")
    if alpha <= 0:
        raise ConfigError(f"alpha must be > 0, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must lie in [0, 1), got {dropout}")
    if groups < 1 or base.out_features % groups:
        raise ConfigError(
            f"groups must divide the layer's {base.out_features} outputs, got {groups}"
        )
