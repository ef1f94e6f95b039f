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
    Case,
    LabelledArgs,
    Mismatch,
    Mistake,
    describe,
    exercise,
    expect_close,
    run_cases,
)
from llmcourse.exercises.inputs import randint, seeded

# ----------------------------------------------------------------------------------------------
# References


def reference_per_process_batch(global_batch_size: int, world_size: int) -> int:
    """global_batch_size / world_size; ValueError for an empty or indivisible global batch."""
    return per_process_batch_size(global_batch_size, world_size)


def reference_allreduce_mean(gradients: list[torch.Tensor]) -> list[torch.Tensor]:
    """The element-wise mean of the ranks' gradients (each of one shape), once per rank."""
    mean = torch.stack(gradients).mean(dim=0)
    return [mean.clone() for _ in gradients]


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


PER_PROCESS_MISTAKES = (
    Mistake(
        "true division",
        lambda global_batch_size, world_size: global_batch_size / world_size,
        "return an int: integer division // gives 4, true division / gives 4.0",
    ),
    Mistake(
        "inverse",
        lambda global_batch_size, world_size: world_size // global_batch_size,
        "each process reads global_batch_size / world_size examples, not the inverse",
    ),
)


def _batch_case(global_batch_size: int, world_size: int) -> Case:
    """A case; the hint of a global batch the answer must refuse says why it must."""
    hint = ""
    if global_batch_size < 1:
        hint = EMPTY_BATCH_HINT
    elif global_batch_size % world_size:
        hint = NOT_DIVISIBLE_HINT
    return Case((global_batch_size, world_size), hint=hint)


@exercise(
    "ch08.per_process_batch",
    title="Split the global batch among the processes",
    hint="return global_batch_size // world_size, after raising ValueError when "
    "global_batch_size < 1 or when global_batch_size % world_size != 0",
)
def check_per_process_batch(answer: object) -> None:
    valid = [(8, 1), (8, 2), (8, 8), (64, 8), (12, 3), (1, 1), (32, 4), (1024, 16)]
    invalid = [(9, 2), (8, 3), (4, 8), (0, 2), (-4, 2), (0, 1)]
    generator = seeded(8)
    random_sizes = [(randint(generator, 1, 96), randint(generator, 1, 8)) for _ in range(40)]
    run_cases(
        answer, reference_per_process_batch,
        [_batch_case(*sizes) for sizes in valid + invalid + random_sizes],
        mistakes=PER_PROCESS_MISTAKES,
    )


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


def _allreduce_case(gradients: list[torch.Tensor]) -> LabelledArgs:
    shown = ", ".join(describe(gradient) for gradient in gradients[:3])
    more = ", ..." if len(gradients) > 3 else ""
    return f"{len(gradients)} rank(s) with gradients [{shown}{more}]", (gradients,)


ALLREDUCE_MISTAKES = (
    Mistake(
        "sum", lambda gradients: [torch.stack(gradients).sum(dim=0) for _ in gradients], SUM_HINT
    ),
    Mistake("local", lambda gradients: [gradient.clone() for gradient in gradients], LOCAL_HINT),
    Mistake(
        "element mean",
        lambda gradients: [gradient.mean().expand_as(gradient) for gradient in gradients],
        ELEMENT_MEAN_HINT,
    ),
)


def _expect_rank_means(got: object, expected: list[torch.Tensor], *, case: str) -> None:
    """Compare one tensor per rank (within 1e-6), then check that every rank got the same."""
    if not isinstance(got, (list, tuple)):
        raise Mismatch(
            case, expected, got, "return a list with one tensor per rank",
            detail=f"expected a list of {len(expected)} tensors (one per rank), "
            f"got {type(got).__name__} {describe(got)}",
        )
    if len(got) != len(expected):
        raise Mismatch(
            case, expected, got, "return one tensor per rank, in rank order",
            detail=f"expected {len(expected)} tensors (one per rank), got {len(got)}",
        )
    for rank, (tensor, wanted) in enumerate(zip(got, expected, strict=True)):
        try:
            expect_close(tensor, wanted, atol=1e-6, rtol=1e-6, case=case)
        except Mismatch as mismatch:
            detail = f"on rank {rank}, {mismatch.detail}"
            raise Mismatch(case, wanted, tensor, detail=detail) from None
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
    generator = seeded(8)
    for _ in range(8):
        ranks = randint(generator, 2, 8)
        shape = tuple(randint(generator, 1, 5) for _ in range(randint(generator, 1, 3)))
        cases.append([torch.randn(shape, generator=generator) for _ in range(ranks)])
    run_cases(
        answer, reference_allreduce_mean, [_allreduce_case(gradients) for gradients in cases],
        _expect_rank_means, mistakes=ALLREDUCE_MISTAKES,
    )
