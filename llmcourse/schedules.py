"""Learning-rate schedules: linear warmup, then cosine decay to a floor.

Early in training the weights are random and the gradients large and noisy, so the learning rate
climbs linearly from near zero over ``warmup_steps``; it then follows half a cosine down to
``min_lr`` at ``total_steps`` and stays there. Steps count optimizer updates from 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

from llmcourse.errors import ConfigError


def check_schedule_steps(*, warmup_steps: int, total_steps: int) -> None:
    """Raise ``ConfigError`` unless total_steps >= 1 and 0 <= warmup_steps <= total_steps."""
    if total_steps < 1:
        raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ConfigError(
            f"warmup_steps must lie in [0, total_steps={total_steps}], got {warmup_steps}; "
            "use fewer warmup steps or train for more steps"
        )


def warmup_cosine_lr(
    step: int, *, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float
) -> float:
    """The learning rate for optimizer update number ``step`` (0-based).

    - warmup, ``step < warmup_steps``: ``max_lr * (step + 1) / warmup_steps``, so the first
      update uses a small non-zero rate and update ``warmup_steps - 1`` uses ``max_lr``;
    - decay, ``warmup_steps <= step <= total_steps``: with
      ``progress = (step - warmup_steps) / (total_steps - warmup_steps)``,
      ``min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2``, from ``max_lr`` to ``min_lr``;
    - after ``total_steps``: ``min_lr``.
    """
    check_schedule_steps(warmup_steps=warmup_steps, total_steps=total_steps)
    if not 0.0 <= min_lr <= max_lr:
        raise ConfigError(f"need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class WarmupCosineMultiplier:
    """The schedule as a factor of the peak learning rate, for ``LambdaLR``.

    A dataclass rather than a closure so ``LambdaLR.state_dict()`` can save its fields (plain
    numbers) and a checkpoint restores the same schedule.
    """

    warmup_steps: int
    total_steps: int
    min_lr_ratio: float

    def __call__(self, step: int) -> float:
        return warmup_cosine_lr(
            step,
            max_lr=1.0,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            min_lr=self.min_lr_ratio,
        )


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> LambdaLR:
    """A scheduler that sets each parameter group's rate to its initial ``lr`` times the
    warmup-cosine factor. Call ``scheduler.step()`` after every ``optimizer.step()``; update
    ``s`` then runs at ``warmup_cosine_lr(s, max_lr=lr, min_lr=lr * min_lr_ratio, ...)``."""
    check_schedule_steps(warmup_steps=warmup_steps, total_steps=total_steps)
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(
            f"min_lr_ratio (the final learning rate as a fraction of the peak) must lie in "
            f"[0, 1], got {min_lr_ratio}"
        )
    return LambdaLR(optimizer, WarmupCosineMultiplier(warmup_steps, total_steps, min_lr_ratio))
