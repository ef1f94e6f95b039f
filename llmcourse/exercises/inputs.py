"""Seeded random inputs shared by the chapters' checkers, and the comparison of experiments.

Every helper takes its own ``torch.Generator`` (``seeded(n)``), so a checker's cases are the same
on every run and the global random state of the learner's notebook is left alone. The checkers
of experiments build tiny seeded models (``seeded_model``) and compare a learner's measurements
and the conclusion drawn from them with ``expect_experiment``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from llmcourse.exercises.core import Mismatch, describe, expect_equal

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)

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


# ----------------------------------------------------------------------------------------------
# Tiny models and the results of experiments


def seeded_model(build: Callable[[], ModuleT], seed: int) -> ModuleT:
    """``build()`` (say ``lambda: GPT(config)``) under ``torch.manual_seed(seed)``, in eval mode;
    the global random state of the learner's notebook is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.eval()


def expect_experiment(
    got: object,
    expected: tuple[Any, Any],
    *,
    case: str,
    label: Callable[[tuple[int, ...]], str],
    conclude: Callable[[Any], Any],
    conclusion: str,
    hint: str = "",
    conclusion_hint: Callable[[Any, Any, Any], str] | None = None,
    rel_tol: float = 1e-4,
    abs_tol: float = 1e-5,
) -> None:
    """Compare the result of an experiment, ``(measurements, answer)``, with the reference's.

    ``measurements`` is a list of numbers (or of tuples of numbers): every one must be a Python
    number (not a tensor) within ``rel_tol``/``abs_tol`` of the reference's; ``label(path)``
    names the measurement at ``path`` in a message ("the temperature 0.7"). Then the answer must
    be ``conclude(measurements)`` computed from the LEARNER's own measurements, so that only a
    conclusion drawn from the measured numbers passes, never one typed in by hand;
    ``conclusion`` names it in the messages, ``conclusion_hint(answer, derived, measurements)``
    may recognise a typical wrong answer.
    """
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise Mismatch(
            case, expected, got, f"return a pair: (the list of measurements, the {conclusion})",
            detail=f"expected a pair (measurements, {conclusion}), got "
            f"{type(got).__name__} {describe(got)}",
        )
    measured, answer = got
    _expect_measured(measured, expected[0], (), case, label, hint, rel_tol, abs_tol)
    derived = conclude(measured)
    if not _same_answer(answer, derived, rel_tol, abs_tol):
        specific = conclusion_hint(answer, derived, measured) if conclusion_hint else ""
        raise Mismatch(
            case, derived, answer,
            specific or f"compute the {conclusion} from the measurements your function made, in "
            "the function itself: the check runs it on other inputs, where the answer differs",
            detail=f"your measurements are right, and they give the {conclusion} "
            f"{describe(derived)}, but the function returned {describe(answer)}",
        )


def _expect_measured(
    got: object,
    expected: object,
    path: tuple[int, ...],
    case: str,
    label: Callable[[tuple[int, ...]], str],
    hint: str,
    rel_tol: float,
    abs_tol: float,
) -> None:
    if isinstance(expected, (list, tuple)):
        what = label(path) if path else "the measurements"
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            size = len(got) if isinstance(got, (list, tuple)) else None
            raise Mismatch(
                case, expected, got,
                hint or f"{what}: one entry per input, in the order of the inputs",
                detail=f"{what}: expected a list of {len(expected)} entries, got "
                + (f"{size} entries" if size is not None else f"{type(got).__name__} "
                   f"{describe(got)}"),
            )
        for position, (item, wanted) in enumerate(zip(got, expected, strict=True)):
            _expect_measured(item, wanted, (*path, position), case, label, hint, rel_tol, abs_tol)
        return
    what = label(path)
    if isinstance(got, torch.Tensor):
        raise Mismatch(
            case, expected, got, "return plain Python numbers: float(tensor) or tensor.item()",
            detail=f"{what}: expected a float, got a tensor {describe(got)}",
        )
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise Mismatch(
            case, expected, got, hint,
            detail=f"{what}: expected a number, got {type(got).__name__} {describe(got)}",
        )
    if not _close(got, expected, rel_tol, abs_tol):
        raise Mismatch(case, expected, got, hint,
                       detail=f"{what}: expected {expected:.6g}, got {got:.6g}")


def _close(got: float, expected: float, rel_tol: float, abs_tol: float) -> bool:
    if math.isnan(expected) or math.isnan(got):
        return math.isnan(expected) and math.isnan(got)
    return math.isclose(got, expected, rel_tol=rel_tol, abs_tol=abs_tol)


def _same_answer(got: object, expected: object, rel_tol: float, abs_tol: float) -> bool:
    """Equal with the same type (an int is not a float, True is not 1); floats within the
    tolerances."""
    if isinstance(expected, float) and isinstance(got, float):
        return _close(got, expected, rel_tol, abs_tol)
    return type(got) is type(expected) and got == expected


def _close_measurement(got: object, expected: object, atol: float, rtol: float) -> bool:
    """Whether ``got`` equals ``expected``: floats within atol + rtol * |expected| (an int is
    accepted for a float), dicts key by key, anything else exactly."""
    if isinstance(expected, float):
        return (
            isinstance(got, (int, float)) and not isinstance(got, bool)
            and abs(got - expected) <= atol + rtol * abs(expected)
        )
    if isinstance(expected, dict):
        return isinstance(got, dict) and got.keys() == expected.keys() and all(
            _close_measurement(got[key], value, atol, rtol) for key, value in expected.items()
        )
    return type(got) is type(expected) and got == expected


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key!r}: {_shown(item)}" for key, item in value.items()) + "}"
    return repr(value)


def measurement_compare(
    conclusion: str, rule: Callable[[dict], object], rule_text: str, *,
    atol: float = 1e-5, rtol: float = 1e-4,
) -> Callable[..., None]:
    """A ``compare`` for experiment results: a dict with the reference's keys, its measurements
    close to the reference's, and ``got[conclusion] == rule(got)``, the conclusion of the
    learner's own numbers (``rule_text`` says the rule in words, for the hint)."""

    def compare(got: object, expected: dict, *, case: str, hint: str = "") -> None:
        if not isinstance(got, dict) or got.keys() != expected.keys():
            keys = ", ".join(repr(key) for key in expected)
            raise Mismatch(
                case, expected, got, hint,
                detail=f"expected a dict with the keys {keys}, got {describe(got)}",
            )
        for key, wanted in expected.items():
            if key != conclusion and not _close_measurement(got[key], wanted, atol, rtol):
                raise Mismatch(
                    case, wanted, got[key], hint,
                    detail=f"{key!r}: expected {_shown(wanted)}, got {_shown(got[key])}",
                )
        try:
            own = rule(got)
        except Exception:  # numbers the rule cannot read: the comparison below reports them
            own = expected[conclusion]
        if got[conclusion] != own or type(got[conclusion]) is not type(own):
            raise Mismatch(
                case, own, got[conclusion],
                f"compute {conclusion!r} from your measurements ({rule_text}), do not type it "
                "in: it must change when the numbers change",
                detail=f"{conclusion!r} is {_shown(got[conclusion])}, but your own numbers "
                f"give {_shown(own)}",
            )
        if got[conclusion] != expected[conclusion]:
            raise Mismatch(
                case, expected[conclusion], got[conclusion], hint,
                detail=f"{conclusion!r}: expected {_shown(expected[conclusion])}, "
                f"got {_shown(got[conclusion])}",
            )

    return compare


def expect_inputs_and_targets(
    got: object, expected: tuple[torch.Tensor, torch.Tensor], *, case: str, hint: str = ""
) -> None:
    """Raise ``Mismatch`` unless ``got`` is a pair (inputs, targets) of tensors equal to
    ``expected``'s (exact values and dtypes); the message says which of the two differs."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise Mismatch(
            case, expected, got, hint,
            detail=f"expected a pair (inputs, targets) of tensors, got {describe(got)}",
        )
    for name, got_part, expected_part in zip(("inputs", "targets"), got, expected, strict=True):
        try:
            expect_equal(got_part, expected_part, case=case, hint=hint)
        except Mismatch as mismatch:
            raise Mismatch(
                case, expected_part, got_part, hint, detail=f"in the {name}, {mismatch.detail}"
            ) from None
