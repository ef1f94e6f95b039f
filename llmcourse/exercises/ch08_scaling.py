"""Checkers of the appendix on multi-process training: the per-process batch size, the
averaging all-reduce of gradients, and an experiment on gradient noise against the batch size.

Each checker runs hand-picked cases first (small numbers that can be read in the failure
message), then seeded random ones, and stops at the first difference. A wrong answer that is
recognised as a typical mistake (a division that is never checked, a sum that is not divided)
gets a hint about that mistake.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

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
from llmcourse.exercises.inputs import expect_experiment, randint, seeded
from llmcourse.model import GPT, GPTConfig

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


# ----------------------------------------------------------------------------------------------
# ch08.gradient_noise: an experiment


class MeanOfRows:
    """``gradient_of(indices)``: the mean of the given rows of a fixed (N, P) matrix, the
    "gradient" of a model whose per-example gradients are those rows."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __call__(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        return self.rows[torch.as_tensor(list(map(int, indices)))].mean(dim=0)


class TinyGPTGradient:
    """``gradient_of(indices)``: the flattened gradient of a tiny GPT's mean loss on the given
    windows (computed with torch.autograd.grad, so that no .grad accumulates between calls)."""

    def __init__(self, model: GPT, windows: torch.Tensor):
        self.model, self.windows = model, windows

    def __call__(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        batch = self.windows[torch.as_tensor(list(map(int, indices)))]
        with torch.enable_grad():
            _, loss = self.model(batch[:, :-1], batch[:, 1:])
            gradients = torch.autograd.grad(loss, list(self.model.parameters()))
        return torch.cat([gradient.flatten() for gradient in gradients])


def _slope(batch_sizes: Sequence[float], noise: Sequence[float]) -> float:
    """The least-squares slope of log(noise) against log(batch size)."""
    xs = [math.log(size) for size in batch_sizes]
    ys = [math.log(value) for value in noise]
    x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
    covariance = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True))
    return covariance / sum((x - x_mean) ** 2 for x in xs)


def _noise_experiment(
    distance: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    *,
    average: Callable[[list[float]], float] | None = None,
    partial_batch: bool = False,
) -> Callable[..., tuple[list[float], float]]:
    """The experiment, right by default; each option makes it one typical wrong way."""
    distance = distance or (lambda gradient, full: float((gradient - full).pow(2).sum()))
    average = average or (lambda values: sum(values) / len(values))

    def experiment(gradient_of, num_examples, batch_sizes):
        full = gradient_of(list(range(num_examples)))
        noise = []
        for size in batch_sizes:
            last_start = num_examples if partial_batch else num_examples - size + 1
            batches = [list(range(start, min(start + size, num_examples)))
                       for start in range(0, last_start, size)]
            noise.append(average([distance(gradient_of(batch), full) for batch in batches]))
        return noise, _slope(batch_sizes, noise)

    return experiment


def reference_gradient_noise(
    gradient_of: Callable[[list[int]], torch.Tensor],
    num_examples: int,
    batch_sizes: list[int],
) -> tuple[list[float], float]:
    """For each batch size B: split examples 0 .. num_examples - 1 into consecutive batches of B
    (the incomplete last one dropped) and average, over the batches, the squared distance
    |g_batch - g_full|^2 between a batch's gradient and the gradient of all the examples; then
    the least-squares slope of log(noise) against log(B)."""
    return _noise_experiment()(gradient_of, num_examples, batch_sizes)


GRADIENT_NOISE_MISTAKES = (
    Mistake(
        "distance_not_squared",
        _noise_experiment(lambda gradient, full: float((gradient - full).norm())),
        "square the distance: the noise is |g_batch - g_full|^2, the sum of the squared "
        "differences (without the square the slope is half as steep)",
    ),
    Mistake(
        "not_centred",
        _noise_experiment(lambda gradient, full: float(gradient.pow(2).sum())),
        "measure how far each batch's gradient is from the gradient of ALL the examples: "
        "subtract g_full before squaring",
    ),
    Mistake(
        "mean_over_the_elements",
        _noise_experiment(lambda gradient, full: float((gradient - full).pow(2).mean())),
        "sum the squared differences over the elements of the gradient (the squared length of "
        "the difference), do not average them",
    ),
    Mistake(
        "sum_over_the_batches",
        _noise_experiment(average=sum),
        "average the squared distances over the batches (divide by their number), do not sum "
        "them: there are fewer batches of a larger size",
    ),
    Mistake(
        "keeps_the_incomplete_batch",
        _noise_experiment(partial_batch=True),
        "drop the last batch when it has fewer than B examples: range(0, num_examples - B + 1, "
        "B) gives the start of every full batch",
    ),
)


def _noise_conclusion_hint(batch_sizes: list[int]):
    def hint(answer, derived, noise) -> str:
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            ends = (math.log(noise[-1]) - math.log(noise[0])) / (
                math.log(batch_sizes[-1]) - math.log(batch_sizes[0]))
            if math.isclose(answer, ends, rel_tol=1e-6):
                return "fit a least-squares line through ALL the points (log B, log noise), " \
                       "not through the first and the last only"
            swapped = _slope(noise, batch_sizes) if len(set(noise)) > 1 else None  # x, y swapped
            if swapped is not None and math.isclose(answer, swapped, rel_tol=1e-6):
                return "the slope of log(noise) against log(B): log(B) is x, log(noise) is y"
        return "compute the exponent from your own measurements, in the function: the " \
               "least-squares slope of log(noise) against log(batch size)"

    return hint


def _noise_cases() -> list[LabelledArgs]:
    generator = seeded(81)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(82)
        model = GPT(GPTConfig(vocab_size=32, context_length=8, n_layer=1, n_head=2, n_embd=16))
    windows = torch.randint(0, 32, (16, 9), generator=generator)
    rows = torch.randn(24, 5, generator=generator) + torch.tensor([3.0, -1.0, 0.0, 2.0, 1.0])
    return [
        ("per-example gradients: 24 random rows of 5 numbers, num_examples=24, batch sizes "
         "[1, 2, 3, 4, 6, 8, 12]", (MeanOfRows(rows), 24, [1, 2, 3, 4, 6, 8, 12])),
        ("the same rows, num_examples=20, batch sizes [1, 3, 6] (20 is no multiple of 3 or 6)",
         (MeanOfRows(rows), 20, [1, 3, 6])),
        ("a tiny GPT on 16 random windows of 8 tokens, num_examples=16, batch sizes [1, 2, 4, 8]",
         (TinyGPTGradient(model, windows), 16, [1, 2, 4, 8])),
        ("the tiny GPT, num_examples=12, batch sizes [5, 2] (in that order)",
         (TinyGPTGradient(model, windows), 12, [5, 2])),
    ]


@exercise(
    "ch08.gradient_noise",
    title="Experiment: gradient noise against the batch size",
    hint="full = gradient_of(list(range(num_examples))); for each B, the batches "
    "list(range(s, s + B)) for s in range(0, num_examples - B + 1, B), and the mean over them "
    "of float(((gradient_of(batch) - full) ** 2).sum()); then the least-squares slope of "
    "log(noise) against log(B)",
    time_limit=60.0,
)
def check_gradient_noise(answer: object) -> None:
    for description, args in _noise_cases():
        batch_sizes = args[2]
        compare = functools.partial(
            expect_experiment,
            label=lambda path, sizes=batch_sizes: (
                f"the noise at batch size {sizes[path[0]]}" if path else "the noise values"),
            conclude=lambda noise, sizes=batch_sizes: _slope(sizes, noise),
            conclusion="exponent", conclusion_hint=_noise_conclusion_hint(batch_sizes),
        )
        run_cases(
            answer, reference_gradient_noise, [(description, args)], compare,
            mistakes=GRADIENT_NOISE_MISTAKES,
        )
