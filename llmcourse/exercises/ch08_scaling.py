"""Checkers of the appendix on multi-process training: the per-process batch size and the
averaging all-reduce of gradients.

Each checker runs hand-picked cases first (small numbers that can be read in the failure
message), then seeded random ones, and stops at the first difference. A wrong answer that is
recognised as a typical mistake (a division that is never checked, a sum that is not divided)
gets a hint about that mistake.
"""

from __future__ import annotations

import torch

from llmcourse.distributed import per_process_batch_size
from llmcourse.exercises.core import (
    Mismatch,
    attempt,
    describe,
    exercise,
    expect_close,
    expect_equal,
)

# ----------------------------------------------------------------------------------------------
# References


def reference_per_process_batch(global_batch_size: int, world_size: int) -> int:
    """global_batch_size / world_size; ValueError for an empty or indivisible global batch."""
    return per_process_batch_size(global_batch_size, world_size)


def reference_allreduce_mean(gradients: list[torch.Tensor]) -> list[torch.Tensor]:
    """The element-wise mean of the ranks' gradients (each of one shape), once per rank."""
    mean = torch.stack(gradients).mean(dim=0)
    return [mean.clone() for _ in gradients]


def _random_int(generator: torch.Generator, low: int, high: int) -> int:
    """A random integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


# ----------------------------------------------------------------------------------------------
# ch08.per_process_batch

NOT_DIVISIBLE_HINT = (
    "when global_batch_size % world_size != 0 the processes would read different numbers of "
    "examples: raise ValueError instead of rounding"
)
EMPTY_BATCH_HINT = (
    "a global batch needs at least one example: raise ValueError when global_batch_size < 1 "
    "(0 % world_size is 0, so the divisibility test alone lets it through)"
)


def _expect_value_error(answer: object, global_batch_size: int, world_size: int) -> None:
    case = f"global_batch_size={global_batch_size}, world_size={world_size}"
    empty = global_batch_size < 1
    hint = EMPTY_BATCH_HINT if empty else NOT_DIVISIBLE_HINT
    why = "an empty global batch" if empty else "it does not split evenly"
    try:
        got = attempt(answer, global_batch_size, world_size, case=case)
    except ValueError:
        return
    except Exception as error:  # the wrong kind of error: a mistake to explain, not a crash
        raise Mismatch(
            case, "ValueError", error, hint,
            detail=f"expected a ValueError ({why}), but it raised {type(error).__name__}: "
            f"{error}; raise ValueError, which the course's command line reports as a message",
        ) from None
    raise Mismatch(
        case, "ValueError", got, hint,
        detail=f"expected a ValueError ({why}), but it returned {describe(got)}",
    )


def _expect_batch(answer: object, global_batch_size: int, world_size: int) -> None:
    case = f"global_batch_size={global_batch_size}, world_size={world_size}"
    got = attempt(answer, global_batch_size, world_size, case=case)
    expected = reference_per_process_batch(global_batch_size, world_size)
    hint = ""
    if isinstance(got, float) and got == expected:
        hint = "return an int: integer division // gives 4, true division / gives 4.0"
    elif got == world_size // global_batch_size:
        hint = "each process reads global_batch_size / world_size examples, not the inverse"
    expect_equal(got, expected, case=case, hint=hint)


@exercise(
    "ch08.per_process_batch",
    title="Split the global batch among the processes",
    hint="return global_batch_size // world_size, after raising ValueError when "
    "global_batch_size < 1 or when global_batch_size % world_size != 0",
)
def check_per_process_batch(answer: object) -> None:
    valid = [(8, 1), (8, 2), (8, 8), (64, 8), (12, 3), (1, 1), (32, 4), (1024, 16)]
    invalid = [(9, 2), (8, 3), (4, 8), (0, 2), (-4, 2), (0, 1)]
    for global_batch_size, world_size in valid:
        _expect_batch(answer, global_batch_size, world_size)
    for global_batch_size, world_size in invalid:
        _expect_value_error(answer, global_batch_size, world_size)
    generator = torch.Generator().manual_seed(8)
    for _ in range(40):
        world_size = _random_int(generator, 1, 8)
        global_batch_size = _random_int(generator, 1, 96)
        if global_batch_size % world_size:
            _expect_value_error(answer, global_batch_size, world_size)
        else:
            _expect_batch(answer, global_batch_size, world_size)


# ----------------------------------------------------------------------------------------------
# ch08.allreduce_mean

SUM_HINT = (
    "an all-reduce with SUM adds the gradients; DDP then divides by the number of ranks, so "
    "every rank gets the mean: divide the sum by len(gradients)"
)
LOCAL_HINT = (
    "each rank's gradient comes from its own share of the batch; after the all-reduce every "
    "rank must hold the average over ALL ranks, not its own gradient"
)
ELEMENT_MEAN_HINT = (
    "average over the ranks, element by element (stack the gradients and take the mean over "
    "the new first dimension), not over the elements of each gradient"
)


def _case_description(gradients: list[torch.Tensor]) -> str:
    shown = ", ".join(describe(gradient) for gradient in gradients[:3])
    more = ", ..." if len(gradients) > 3 else ""
    return f"{len(gradients)} rank(s) with gradients [{shown}{more}]"


def _recognise_mistake(got: object, gradients: list[torch.Tensor]) -> str:
    if not isinstance(got, (list, tuple)) or len(got) != len(gradients):
        return ""
    if not all(isinstance(t, torch.Tensor) and t.shape == gradients[0].shape for t in got):
        return ""
    total = torch.stack(gradients).sum(dim=0)
    if all(torch.allclose(t, total) for t in got):
        return SUM_HINT
    if all(torch.allclose(t, g) for t, g in zip(got, gradients, strict=True)):
        return LOCAL_HINT
    if all(torch.allclose(t, g.mean().expand_as(g)) for t, g in zip(got, gradients, strict=True)):
        return ELEMENT_MEAN_HINT
    return ""


def _check_allreduce(answer: object, gradients: list[torch.Tensor]) -> None:
    case = _case_description(gradients)
    inputs = [gradient.clone() for gradient in gradients]
    got = attempt(answer, inputs, case=case)
    expected = reference_allreduce_mean(gradients)
    hint = _recognise_mistake(got, gradients)
    if not isinstance(got, (list, tuple)):
        raise Mismatch(
            case, expected, got, hint or "return a list with one tensor per rank",
            detail=f"expected a list of {len(gradients)} tensors (one per rank), "
            f"got {type(got).__name__} {describe(got)}",
        )
    if len(got) != len(gradients):
        raise Mismatch(
            case, expected, got, "return one tensor per rank, in rank order",
            detail=f"expected {len(gradients)} tensors (one per rank), got {len(got)}",
        )
    for rank, (tensor, wanted) in enumerate(zip(got, expected, strict=True)):
        try:
            expect_close(tensor, wanted, atol=1e-6, rtol=1e-6, case=case, hint=hint)
        except Mismatch as mismatch:
            raise Mismatch(case, wanted, tensor, hint,
                           detail=f"on rank {rank}, {mismatch.detail}") from None
    for rank, tensor in enumerate(got[1:], start=1):
        if not torch.equal(tensor, got[0]):
            raise Mismatch(
                case, got[0], tensor,
                "compute the mean once and give every rank that same result: the model copies "
                "stay identical only if every rank applies exactly the same gradient",
                detail=f"rank {rank}'s result differs from rank 0's (by rounding, at least)",
            )


@exercise(
    "ch08.allreduce_mean",
    title="Average the gradients of all ranks (all-reduce)",
    hint="stack the ranks' gradients, take the mean over the ranks (dim=0), and return that "
    "mean once for every rank",
)
def check_allreduce_mean(answer: object) -> None:
    cases = [
        [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])],
        [torch.tensor([0.5, -1.0]), torch.tensor([1.5, 0.0]), torch.tensor([0.0, -2.0]),
         torch.tensor([2.0, -1.0])],
        [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0, 0.0], [1.0, -4.0]])],
        [torch.tensor([4.0, -6.0])],  # one rank: nothing to average with
        [torch.tensor(2.0), torch.tensor(-3.0), torch.tensor(7.0)],  # 0-d gradients (a scalar)
        [torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([2.0, 4.0],
                                                                     dtype=torch.float64)],
    ]
    generator = torch.Generator().manual_seed(8)
    for _ in range(8):
        ranks = _random_int(generator, 2, 8)
        shape = tuple(_random_int(generator, 1, 5) for _ in range(_random_int(generator, 1, 3)))
        cases.append([torch.randn(shape, generator=generator) for _ in range(ranks)])
    for gradients in cases:
        _check_allreduce(answer, gradients)
