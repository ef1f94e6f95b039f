"""Checkers of section 7.1, LoRA: the low-rank update, the adapted layer, its size, merging.

Each checker runs hand-picked cases first (small inputs whose numbers can be read in the
failure message), then seeded random ones. When an answer is wrong, it is also compared with
the typical wrong answers of the exercise (no ``alpha / rank`` scale, ``A`` and ``B`` swapped,
dropout on the wrong tensor...): a match replaces the exercise's general hint with one about
that very mistake (``Mistake`` and ``run_cases`` of the exercise engine).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.exercises.core import (
    LabelledArgs,
    Mistake,
    exercise,
    expect_close,
    expect_equal,
    run_cases,
)
from llmcourse.exercises.inputs import measurement_compare, randint, seeded
from llmcourse.lora import LoRALinear

expect_float = functools.partial(expect_close, atol=1e-5, rtol=1e-5)


def random_layer_sizes(generator: torch.Generator, max_features: int) -> tuple[int, int, int]:
    """A random (rank, in, out): rank in [1, 8], in and out in [2, max_features]."""
    return (
        randint(generator, 1, 8),
        randint(generator, 2, max_features),
        randint(generator, 2, max_features),
    )


def _matrix(rows: list[list[float]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def drop_every_third_feature(x: torch.Tensor) -> torch.Tensor:
    """A dropout with a fixed mask, so answers can be compared: zero the features 0, 3, 6...
    of the last dimension and scale the others by 1.5 (as ``nn.Dropout(p=1/3)`` scales)."""
    keep = torch.arange(x.shape[-1]) % 3 != 0
    return x * keep.to(x.dtype) * 1.5


def identity(x: torch.Tensor) -> torch.Tensor:
    """No dropout (what ``nn.Identity()`` and ``nn.Dropout`` in evaluation mode do)."""
    return x


# ----------------------------------------------------------------------------------------------
# ch07.lora_delta


def reference_lora_delta(
    lora_a: torch.Tensor, lora_b: torch.Tensor, alpha: float
) -> torch.Tensor:
    """The update LoRA adds to a weight (out, in): ``(alpha / rank) * B @ A`` with ``A``
    (rank, in) and ``B`` (out, rank)."""
    rank = lora_a.shape[0]
    return (alpha / rank) * (lora_b @ lora_a)


DELTA_MISTAKES = (
    Mistake(
        "no_scale",
        lambda a, b, alpha: b @ a,
        "you return B @ A without the scale: multiply it by alpha / rank",
    ),
    Mistake(
        "scale_alpha_only",
        lambda a, b, alpha: alpha * (b @ a),
        "the scale is alpha / rank, not alpha alone (rank = lora_a.shape[0])",
    ),
    Mistake(
        "scale_rank_over_alpha",
        lambda a, b, alpha: a.shape[0] / alpha * (b @ a),
        "the scale is alpha / rank, not rank / alpha",
    ),
    Mistake(
        "rank_from_the_wrong_dimension",
        lambda a, b, alpha: alpha / a.shape[1] * (b @ a),
        "the rank is the number of ROWS of A (lora_a.shape[0]); lora_a.shape[1] is the "
        "number of input features",
    ),
    Mistake(
        "transposed",
        lambda a, b, alpha: alpha / a.shape[0] * (a.T @ b.T),
        "that is the transpose: the update has the weight's shape (out, in), which is "
        "B (out, rank) @ A (rank, in)",
    ),
)


def _delta_cases() -> list[LabelledArgs]:
    a = _matrix([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])  # (rank 2, in 3)
    b = _matrix([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]])  # (out 3, rank 2)
    generator = seeded(70)
    cases: list[LabelledArgs] = [
        (f"lora_a={a.tolist()} (rank 2, in 3), lora_b={b.tolist()} (out 3, rank 2), alpha=8",
         (a, b, 8.0)),
        (f"lora_a={a.tolist()}, lora_b={b[:2].tolist()} (out 2, rank 2), alpha=1",
         (a, b[:2], 1.0)),
        ("rank 1: lora_a=[[1., 2.]], lora_b=[[3.], [4.]], alpha=2",
         (_matrix([[1.0, 2.0]]), _matrix([[3.0], [4.0]]), 2.0)),
        ("lora_b at zero, as at the start of training (the update is zero)",
         (a, torch.zeros(4, 2), 16.0)),
    ]
    for dtype in (torch.float32, torch.float32, torch.float64):
        rank, n_in, n_out = random_layer_sizes(generator, max_features=20)
        alpha = float(randint(generator, 1, 32))
        cases.append((
            f"random {dtype} lora_a ({rank}, {n_in}), lora_b ({n_out}, {rank}), alpha={alpha:g}",
            (torch.randn(rank, n_in, generator=generator, dtype=dtype),
             torch.randn(n_out, rank, generator=generator, dtype=dtype), alpha),
        ))
    return cases


@exercise(
    "ch07.lora_delta",
    title="The LoRA update of a weight matrix",
    hint="(alpha / rank) * lora_b @ lora_a, with rank = lora_a.shape[0]; the result has the "
    "weight's shape (out, in)",
)
def check_lora_delta(answer: object) -> None:
    run_cases(answer, reference_lora_delta, _delta_cases(), expect_float, mistakes=DELTA_MISTAKES)


# ----------------------------------------------------------------------------------------------
# ch07.lora_forward


def reference_lora_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    alpha: float,
    dropout: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """A linear layer with a LoRA adapter on x (..., in): ``x W^T + b`` plus
    ``(alpha / rank) * (dropout(x) A^T) B^T``; (..., out)."""
    base = x @ weight.T
    if bias is not None:
        base = base + bias
    scale = alpha / lora_a.shape[0]
    return base + scale * ((dropout(x) @ lora_a.T) @ lora_b.T)


def _base(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x @ weight.T + (bias if bias is not None else 0)


def _forward_with(
    *, scale: Callable[[float, torch.Tensor], float] | None = None, transposed: bool = False,
    dropout_on: str = "adapter input",
) -> Callable[..., torch.Tensor]:
    """A LoRA forward pass with one thing done wrong (see ``FORWARD_MISTAKES``)."""

    def forward(x, weight, bias, a, b, alpha, dropout):
        factor = scale(alpha, a) if scale is not None else alpha / a.shape[0]
        adapter_input = dropout(x) if dropout_on in ("adapter input", "both paths") else x
        base_input = dropout(x) if dropout_on == "both paths" else x
        delta = (b @ a).T if transposed else b @ a  # transposed: (in, out) used as (out, in)
        update = factor * (adapter_input @ delta.T)
        if dropout_on == "adapter output":
            update = dropout(update)
        elif dropout_on == "whole output":
            return dropout(_base(base_input, weight, bias) + update)
        return _base(base_input, weight, bias) + update

    return forward


FORWARD_MISTAKES = (
    Mistake(
        "no_scale",
        _forward_with(scale=lambda alpha, a: 1.0),
        "the adapter's output is multiplied by alpha / rank: the scale is missing",
    ),
    Mistake(
        "scale_alpha_only",
        _forward_with(scale=lambda alpha, a: alpha),
        "the scale is alpha / rank, not alpha alone (rank = lora_a.shape[0])",
    ),
    Mistake(
        "scale_rank_over_alpha",
        _forward_with(scale=lambda alpha, a: a.shape[0] / alpha),
        "the scale is alpha / rank, not rank / alpha",
    ),
    Mistake(
        "transposed_update",
        _forward_with(transposed=True),
        "A and B are used transposed: x (..., in) first meets A (rank, in) as x @ A.T, "
        "giving (..., rank), then B (out, rank) as @ B.T, giving (..., out)",
    ),
    Mistake(
        "dropout_on_the_adapter_output",
        _forward_with(dropout_on="adapter output"),
        "apply dropout to the adapter's INPUT, dropout(x) @ A.T, not to its output",
    ),
    Mistake(
        "dropout_on_the_whole_output",
        _forward_with(dropout_on="whole output"),
        "apply dropout to the adapter's input only, dropout(x) @ A.T; the layer's output "
        "itself is not dropped",
    ),
    Mistake(
        "dropout_on_both_paths",
        _forward_with(dropout_on="both paths"),
        "the frozen base layer sees x itself; only the adapter's input goes through dropout",
    ),
    Mistake(
        "no_dropout",
        _forward_with(dropout_on="nowhere"),
        "call the dropout function on the adapter's input: dropout(x) @ A.T",
    ),
)


def _forward_cases() -> list[LabelledArgs]:
    x = _matrix([[1.0, 2.0, 0.0], [0.0, -1.0, 1.0]])  # (2 tokens, in 3)
    weight = _matrix([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0]])  # (out 3, in 3)
    bias = torch.tensor([0.5, 0.0, -1.0])
    a = _matrix([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])  # (rank 2, in 3)
    b = _matrix([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]])  # (out 3, rank 2)
    readable = (f"x={x.tolist()}, weight={weight.tolist()}, bias={bias.tolist()}, "
                f"lora_a={a.tolist()}, lora_b={b.tolist()}, alpha=8")
    generator = seeded(71)
    cases: list[LabelledArgs] = [
        (readable + ", dropout=identity (no dropout)", (x, weight, bias, a, b, 8.0, identity)),
        (readable + ", dropout=drop_every_third_feature (zeroes features 0, 3, 6... and "
         "scales the others by 1.5)", (x, weight, bias, a, b, 8.0, drop_every_third_feature)),
        ("bias=None (a layer without bias), the readable x, weight, lora_a, lora_b, alpha=2, "
         "no dropout", (x, weight, None, a, b, 2.0, identity)),
        ("lora_b at zero, as at the start of training: the output is the base layer's",
         (x, weight, bias, a, torch.zeros(3, 2), 16.0, identity)),
    ]
    for shape, n_out, dtype in (((2, 5), 4, torch.float32), ((2, 3, 6), 9, torch.float32),
                                ((4, 8), 8, torch.float64)):
        n_in, rank = shape[-1], randint(generator, 1, 4)
        alpha = float(randint(generator, 1, 16))
        dropout = drop_every_third_feature if len(shape) == 3 else identity
        cases.append((
            f"random {dtype} x {shape}, weight ({n_out}, {n_in}), bias ({n_out},), lora_a "
            f"({rank}, {n_in}), lora_b ({n_out}, {rank}), alpha={alpha:g}, "
            f"dropout={dropout.__name__}",
            (torch.randn(shape, generator=generator, dtype=dtype),
             torch.randn(n_out, n_in, generator=generator, dtype=dtype),
             torch.randn(n_out, generator=generator, dtype=dtype),
             torch.randn(rank, n_in, generator=generator, dtype=dtype),
             torch.randn(n_out, rank, generator=generator, dtype=dtype), alpha, dropout),
        ))
    return cases


@exercise(
    "ch07.lora_forward",
    title="A linear layer with a LoRA adapter",
    hint="x @ weight.T + bias (when there is one) + (alpha / rank) * (dropout(x) @ lora_a.T) "
    "@ lora_b.T",
)
def check_lora_forward(answer: object) -> None:
    run_cases(
        answer, reference_lora_forward, _forward_cases(), expect_float, mistakes=FORWARD_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch07.lora_param_count


def reference_lora_param_count(shapes: Sequence[tuple[int, int]], rank: int) -> int:
    """Trainable numbers of rank-``rank`` adapters on linear layers whose weights have the
    given (out, in) shapes: ``A`` (rank, in) plus ``B`` (out, rank) for each."""
    return sum(rank * (n_in + n_out) for n_out, n_in in shapes)


COUNT_MISTAKES = (
    Mistake(
        "full_matrix",
        lambda shapes, rank: sum(rank * n_in * n_out for n_out, n_in in shapes),
        "an adapter is two thin matrices, A (rank, in) and B (out, rank): rank * (in + out) "
        "numbers, not rank * in * out",
    ),
    Mistake(
        "frozen_weight_counted",
        lambda shapes, rank: sum(n_in * n_out + rank * (n_in + n_out) for n_out, n_in in shapes),
        "count only the adapters: the (out, in) weight stays frozen and does not train",
    ),
    Mistake(
        "rank_ignored",
        lambda shapes, rank: sum(n_in + n_out for n_out, n_in in shapes),
        "each of A and B has `rank` rows or columns: multiply (in + out) by the rank",
    ),
    Mistake(
        "only_a",
        lambda shapes, rank: sum(rank * n_in for n_out, n_in in shapes),
        "count both matrices: A (rank, in) AND B (out, rank)",
    ),
    Mistake(
        "only_b",
        lambda shapes, rank: sum(rank * n_out for n_out, n_in in shapes),
        "count both matrices: A (rank, in) AND B (out, rank)",
    ),
    Mistake(
        "first_layer_only",
        lambda shapes, rank: rank * (shapes[0][0] + shapes[0][1]) if shapes else 0,
        "add up the adapters of EVERY layer in the list",
    ),
)


GPT2_BLOCK_SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]  # (out, in) each


def _count_cases() -> list[LabelledArgs]:
    generator = seeded(72)
    cases: list[LabelledArgs] = [
        ("shapes=[(4, 3)], rank=2", ([(4, 3)], 2)),
        ("shapes=[(4, 3), (2, 5)], rank=1", ([(4, 3), (2, 5)], 1)),
        ("shapes=[] (no layer), rank=8", ([], 8)),
        (f"one GPT-2 block: shapes={GPT2_BLOCK_SHAPES}, rank=16", (GPT2_BLOCK_SHAPES, 16)),
        ("the 12 blocks of GPT-2 small, rank=8", (GPT2_BLOCK_SHAPES * 12, 8)),
    ]
    for _ in range(3):
        shapes = [(randint(generator, 1, 500), randint(generator, 1, 500))
                  for _ in range(randint(generator, 1, 6))]
        rank = randint(generator, 1, 64)
        cases.append((f"shapes={shapes}, rank={rank}", (shapes, rank)))
    return cases


@exercise(
    "ch07.lora_param_count",
    title="How many numbers LoRA trains",
    hint="for each (out, in) shape: A has rank * in numbers and B has out * rank; add them up",
)
def check_lora_param_count(answer: object) -> None:
    run_cases(
        answer, reference_lora_param_count, _count_cases(), expect_equal, mistakes=COUNT_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch07.merge_weight


def reference_merge_weight(
    weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, alpha: float
) -> torch.Tensor:
    """The weight (out, in) of a plain linear layer equal to the adapted one:
    ``W + (alpha / rank) * B @ A``."""
    return weight + reference_lora_delta(lora_a, lora_b, alpha)


MERGE_MISTAKES = (
    Mistake(
        "no_scale",
        lambda w, a, b, alpha: w + b @ a,
        "the update added to the weight is scaled: W + (alpha / rank) * B @ A",
    ),
    Mistake(
        "scale_alpha_only",
        lambda w, a, b, alpha: w + alpha * (b @ a),
        "the scale is alpha / rank, not alpha alone (rank = lora_a.shape[0])",
    ),
    Mistake(
        "transposed_update",
        lambda w, a, b, alpha: w + alpha / a.shape[0] * (a.T @ b.T),
        "the update has the weight's shape (out, in): B (out, rank) @ A (rank, in), not its "
        "transpose",
    ),
    Mistake(
        "subtracted",
        lambda w, a, b, alpha: w - alpha / a.shape[0] * (b @ a),
        "merging ADDS the update to the weight (subtracting it is how you unmerge)",
    ),
    Mistake(
        "update_only",
        lambda w, a, b, alpha: alpha / a.shape[0] * (b @ a),
        "return the frozen weight plus the update, not the update alone",
    ),
)


def _merge_cases() -> list[LabelledArgs]:
    weight = _matrix([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    a = _matrix([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
    b = _matrix([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]])
    generator = seeded(73)
    cases: list[LabelledArgs] = [
        (f"weight={weight.tolist()}, lora_a={a.tolist()}, lora_b={b.tolist()}, alpha=8",
         (weight, a, b, 8.0)),
        ("lora_b at zero: merging changes nothing", (weight, a, torch.zeros(3, 2), 4.0)),
        ("a (2, 3) weight, rank 1: lora_a=[[1., 0., -1.]], lora_b=[[2.], [1.]], alpha=3",
         (weight[:2], _matrix([[1.0, 0.0, -1.0]]), _matrix([[2.0], [1.0]]), 3.0)),
    ]
    for dtype in (torch.float32, torch.float64):
        rank, n_in, n_out = random_layer_sizes(generator, max_features=24)
        alpha = float(randint(generator, 1, 32))
        cases.append((
            f"random {dtype} weight ({n_out}, {n_in}), rank {rank}, alpha={alpha:g}",
            (torch.randn(n_out, n_in, generator=generator, dtype=dtype),
             torch.randn(rank, n_in, generator=generator, dtype=dtype),
             torch.randn(n_out, rank, generator=generator, dtype=dtype), alpha),
        ))
    return cases


@exercise(
    "ch07.merge_weight",
    title="Merge the adapter into the weight",
    hint="weight + (alpha / rank) * lora_b @ lora_a, a new (out, in) matrix",
)
def check_merge_weight(answer: object) -> None:
    run_cases(answer, reference_merge_weight, _merge_cases(), expect_float, mistakes=MERGE_MISTAKES)


# ----------------------------------------------------------------------------------------------
# Experiment exercises: a measured result and the conclusion drawn from it
#
# An experiment's answer returns a dict of measurements plus one conclusion computed from them.
# ``measurement_compare`` checks the measurements against the reference's run on the same
# inputs, then checks that the conclusion is the one the learner's OWN numbers give. The cases
# are chosen so that the conclusion differs between them: a conclusion typed in by hand fails.


# ----------------------------------------------------------------------------------------------
# ch07.lora_rank_sweep: an experiment, rank against fit


ENOUGH_FRACTION = 0.01  # a rank is "enough" when its loss is at most 1% of the frozen layer's


def _enough_rank(result: dict) -> int | None:
    """The smallest rank whose loss is at most 1% of the frozen layer's, or None."""
    return next(
        (rank for rank in sorted(result["loss"])
         if result["loss"][rank] <= ENOUGH_FRACTION * result["frozen"]),
        None,
    )


def _rank_sweep(
    base: nn.Linear, inputs: torch.Tensor, targets: torch.Tensor, ranks: list[int], steps: int,
    lr: float, *, train_base: bool = False, count: Callable[[LoRALinear], int] | None = None,
) -> dict:
    """The experiment of ``reference_lora_rank_sweep``, with one thing done wrong on request."""
    with torch.no_grad():
        frozen = F.mse_loss(base(inputs), targets).item()
    losses, trainable = {}, {}
    for rank in ranks:
        torch.manual_seed(0)
        layer = LoRALinear(copy.deepcopy(base), rank=rank, alpha=rank)
        if train_base:
            layer.weight.requires_grad_(True)
        parameters = [p for p in layer.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(parameters, lr=lr)
        for _ in range(steps):
            loss = F.mse_loss(layer(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            losses[rank] = F.mse_loss(layer(inputs), targets).item()
        trainable[rank] = count(layer) if count else sum(p.numel() for p in parameters)
    result = {"frozen": frozen, "loss": losses, "trainable": trainable}
    result["enough"] = _enough_rank(result)
    return result


def reference_lora_rank_sweep(
    base: nn.Linear, inputs: torch.Tensor, targets: torch.Tensor, ranks: list[int], steps: int,
    lr: float,
) -> dict:
    """For each rank: a rank-``rank`` adapter (alpha = rank) on a copy of the frozen ``base``,
    trained for ``steps`` full-batch Adam steps (learning rate ``lr``) on the mean squared error
    between its outputs on ``inputs`` and ``targets``. Returns ``{"frozen": the base layer's
    loss, "loss": {rank: loss after training}, "trainable": {rank: numbers trained}, "enough":
    the smallest rank whose loss is at most 1% of the frozen loss, or None}``."""
    return _rank_sweep(base, inputs, targets, ranks, steps, lr)


def _untrained_sweep(base, inputs, targets, ranks, steps, lr):
    return _rank_sweep(base, inputs, targets, ranks, 0, lr)


RANK_SWEEP_MISTAKES = (
    Mistake(
        "base_trained",
        lambda base, inputs, targets, ranks, steps, lr: _rank_sweep(
            base, inputs, targets, ranks, steps, lr, train_base=True),
        "train the adapter only (lora_a and lora_b): the base layer's weight stays frozen, "
        "otherwise every rank can fit anything and the experiment measures nothing",
    ),
    Mistake(
        "not_trained",
        _untrained_sweep,
        "train each adapter for `steps` Adam steps before measuring its loss: an untrained "
        "adapter (B = 0) changes nothing",
    ),
    Mistake(
        "full_matrix_counted",
        lambda base, inputs, targets, ranks, steps, lr: _rank_sweep(
            base, inputs, targets, ranks, steps, lr,
            count=lambda layer: layer.rank * layer.in_features * layer.out_features),
        "an adapter trains rank * (in + out) numbers (A and B), not rank * in * out",
    ),
    Mistake(
        "frozen_weights_counted",
        lambda base, inputs, targets, ranks, steps, lr: _rank_sweep(
            base, inputs, targets, ranks, steps, lr,
            count=lambda layer: sum(p.numel() for p in layer.parameters())),
        "count the trained numbers only, lora_a and lora_b: the frozen weight and bias do "
        "not train",
    ),
)


def _low_rank_task(
    generator: torch.Generator, n_features: int, true_rank: int, examples: int
) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A base layer, inputs, and targets of the base layer plus an update of rank
    ``true_rank`` (orthonormal directions, all of weight 1)."""
    base = nn.Linear(n_features, n_features)
    with torch.no_grad():
        base.weight.copy_(0.3 * torch.randn(n_features, n_features, generator=generator))
        base.bias.copy_(0.1 * torch.randn(n_features, generator=generator))
        left, _ = torch.linalg.qr(torch.randn(n_features, true_rank, generator=generator))
        right, _ = torch.linalg.qr(torch.randn(n_features, true_rank, generator=generator))
        inputs = torch.randn(examples, n_features, generator=generator)
        targets = inputs @ (base.weight + left @ right.T).T + base.bias
    return base, inputs, targets


def _rank_sweep_cases() -> list[LabelledArgs]:
    generator = seeded(79)
    cases: list[LabelledArgs] = []
    for true_rank, ranks in ((1, [1, 2, 4]), (3, [1, 2, 4, 8]), (4, [1, 2])):
        base, inputs, targets = _low_rank_task(generator, 8, true_rank, 64)
        cases.append((
            f"a Linear(8, 8) base, 64 inputs, targets from an update of rank {true_rank}, "
            f"ranks={ranks}, steps=100, lr=0.05",
            (base, inputs, targets, ranks, 100, 0.05),
        ))
    return cases


@exercise(
    "ch07.lora_rank_sweep",
    title="Experiment: how much rank does a task need?",
    hint="for each rank: torch.manual_seed(0), LoRALinear(copy.deepcopy(base), rank, "
    "alpha=rank), Adam on lora_a and lora_b, `steps` steps of F.mse_loss(layer(inputs), "
    "targets), then the loss once more without gradients",
    time_limit=120.0,
)
def check_lora_rank_sweep(answer: object) -> None:
    # Adapters started differently end at (nearly) the same best fit: the tolerance allows it.
    compare = measurement_compare(
        "enough", _enough_rank,
        "the smallest rank whose loss is at most frozen / 100, None when there is none",
        atol=2e-3, rtol=0.05,
    )
    run_cases(
        answer, reference_lora_rank_sweep, _rank_sweep_cases(), compare,
        mistakes=RANK_SWEEP_MISTAKES,
    )
