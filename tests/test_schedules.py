"""Warmup + cosine learning-rate schedule: formula values, edge cases, the LambdaLR scheduler."""

from __future__ import annotations

import io
import math
from itertools import pairwise

import pytest
import torch

from llmcourse.errors import ConfigError, CourseError
from llmcourse.schedules import warmup_cosine_lr, warmup_cosine_scheduler

MAX_LR, MIN_LR = 1e-3, 1e-4
SCHEDULE = dict(max_lr=MAX_LR, warmup_steps=10, total_steps=110, min_lr=MIN_LR)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1e-4),  # warmup start: max_lr * 1 / 10
        (4, 5e-4),  # max_lr * 5 / 10
        (9, 1e-3),  # warmup end reaches the peak
        (10, 1e-3),  # cosine start: progress 0
        (35, 1e-4 + 0.9e-3 * (1 + math.sqrt(0.5)) / 2),  # progress 1/4: cos(pi/4)
        (60, 1e-4 + 0.9e-3 / 2),  # mid-cosine: progress 1/2, halfway between peak and floor
        (85, 1e-4 + 0.9e-3 * (1 - math.sqrt(0.5)) / 2),  # progress 3/4
        (110, 1e-4),  # end of the schedule
        (500, 1e-4),  # and after it
    ],
)
def test_warmup_cosine_values(step: int, expected: float) -> None:
    assert warmup_cosine_lr(step, **SCHEDULE) == pytest.approx(expected, rel=1e-12, abs=0)


def test_schedule_rises_during_warmup_and_then_never_rises() -> None:
    rates = [warmup_cosine_lr(step, **SCHEDULE) for step in range(130)]
    warmup, decay = rates[:10], rates[9:]
    assert all(a < b for a, b in pairwise(warmup))
    assert all(a >= b for a, b in pairwise(decay))
    assert min(rates) == pytest.approx(MIN_LR, rel=1e-12)


def test_no_warmup_starts_at_the_peak() -> None:
    lr = warmup_cosine_lr(0, max_lr=2.0, warmup_steps=0, total_steps=4, min_lr=0.0)
    assert lr == 2.0
    assert warmup_cosine_lr(2, max_lr=2.0, warmup_steps=0, total_steps=4, min_lr=0.0) == (
        pytest.approx(1.0, rel=1e-12)
    )


def test_warmup_as_long_as_the_run_ends_at_the_floor() -> None:
    schedule = dict(max_lr=1.0, warmup_steps=4, total_steps=4, min_lr=0.25)
    assert [warmup_cosine_lr(s, **schedule) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 0.25, 0.25]


@pytest.mark.parametrize(
    "bad",
    [
        dict(warmup_steps=11, total_steps=10),
        dict(warmup_steps=-1),
        dict(total_steps=0, warmup_steps=0),
        dict(min_lr=2e-3),
        dict(min_lr=-1e-5),
    ],
)
def test_contradictory_settings_are_rejected(bad: dict) -> None:
    with pytest.raises(ConfigError) as error:
        warmup_cosine_lr(0, **{**SCHEDULE, **bad})
    assert isinstance(error.value, CourseError) and isinstance(error.value, ValueError)


def test_scheduler_sets_each_group_to_its_lr_times_the_schedule() -> None:
    weights, biases = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([{"params": [weights], "lr": 2.0}, {"params": [biases], "lr": 0.5}])
    scheduler = warmup_cosine_scheduler(optimizer, warmup_steps=3, total_steps=12, min_lr_ratio=0.1)
    for step in range(15):
        for group, peak in zip(optimizer.param_groups, (2.0, 0.5), strict=True):
            expected = warmup_cosine_lr(
                step, max_lr=peak, warmup_steps=3, total_steps=12, min_lr=0.1 * peak
            )
            assert group["lr"] == pytest.approx(expected, rel=1e-12)
        optimizer.step()
        scheduler.step()


def test_scheduler_state_restores_the_schedule_through_a_safe_load() -> None:
    def fresh(total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
        scheduler = warmup_cosine_scheduler(
            optimizer, warmup_steps=2, total_steps=total_steps, min_lr_ratio=0.0
        )
        return optimizer, scheduler

    optimizer, scheduler = fresh(total_steps=10)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    # A scheduler built with another length follows the saved schedule once loaded.
    resumed_optimizer, resumed_scheduler = fresh(total_steps=1000)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed_scheduler.load_state_dict(saved["scheduler"])
    for _ in range(8):
        assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
        for opt, sched in ((optimizer, scheduler), (resumed_optimizer, resumed_scheduler)):
            opt.step()
            sched.step()
    assert resumed_optimizer.param_groups[0]["lr"] == 0.0  # past step 10: the floor


def test_scheduler_rejects_a_ratio_outside_zero_one() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        warmup_cosine_scheduler(optimizer, warmup_steps=0, total_steps=5, min_lr_ratio=1.5)
