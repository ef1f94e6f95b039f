"""Checks of command-line option values, run before a command does any work.

argparse checks that a value has the right type; these check its range and name the option in
a one-line message, so ``--lr -1`` fails at once, and not after a model was loaded or inside
PyTorch with a traceback.
"""

from __future__ import annotations

import argparse
import math

import torch

from llmcourse.devices import check_device
from llmcourse.errors import ConfigError
from llmcourse.generation import Sampling


def at_least(option: str, value: int | None, minimum: int = 1) -> None:
    """An integer option, when given, is ``minimum`` or more."""
    if value is not None and value < minimum:
        raise ConfigError(f"{option} must be at least {minimum}, got {value}")


def positive_number(option: str, value: float | None) -> None:
    """A number option, when given, is finite and above 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{option} must be a positive number, got {value}")


def non_negative_number(option: str, value: float | None) -> None:
    """A number option, when given, is finite and 0 or more."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{option} must be 0 or a positive number, got {value}")


def between(option: str, value: float | None, low: float, high: float, *,
            include_low: bool = False, include_high: bool = False, meaning: str = "") -> None:
    """A number option, when given, lies between ``low`` and ``high`` (ends included as
    asked); ``meaning`` says what the value is, for the message."""
    if value is None:
        return
    above = value >= low if include_low else value > low
    below = value <= high if include_high else value < high
    if not (above and below):  # also refuses NaN, for which every comparison is false
        interval = f"{'[' if include_low else '('}{low:g}, {high:g}{']' if include_high else ')'}"
        raise ConfigError(f"{option} must lie in {interval}{meaning}, got {value}")


def sampling(args: argparse.Namespace, device: str = "cpu") -> Sampling:
    """The decoding options of ``generate`` and ``chat`` (-n, -t, -k, -p and --seed), checked,
    as a ``Sampling`` whose generator, when --seed is given, lives on ``device``."""
    at_least("--max-new-tokens", args.max_new_tokens)
    non_negative_number("--temperature", args.temperature)
    at_least("--top-k", args.top_k)
    between("--top-p", args.top_p, 0, 1, include_high=True,
            meaning=" (the probability mass to sample from; 1 keeps every token)")
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device).manual_seed(args.seed)
    return Sampling(args.temperature, args.top_k, args.top_p, generator=generator)


def device(value: str) -> None:
    """A ``--device`` this machine has (see ``llmcourse.devices.check_device``)."""
    check_device(value, option="--device")
